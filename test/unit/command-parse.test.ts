import { describe, expect, it } from 'vitest';
import { MAX_BUILD_CREDITS } from '../../src/domain/build-pricing';
import { parseLine } from '../../src/runner/executors/command';

const result = (fields: Record<string, unknown>) => parseLine(JSON.stringify({ type: 'result', ...fields }));

describe('parseLine: a command result line', () => {
  it('keeps credits in 0..MAX_BUILD_CREDITS and a preview URL', () => {
    expect(MAX_BUILD_CREDITS).toBe(10_000_000);
    expect(result({ credits: 0 })).toEqual({ result: { credits: 0 } });
    expect(result({ credits: MAX_BUILD_CREDITS, previewUrl: '/previews/b1/' })).toEqual({
      result: { credits: MAX_BUILD_CREDITS, previewUrl: '/previews/b1/' },
    });
    expect(result({ previewUrl: 'https://preview.example.com/b1?x=1#top' })).toEqual({
      result: { previewUrl: 'https://preview.example.com/b1?x=1#top' },
    });
    expect(result({})).toEqual({ result: {} });
    expect(result({ credits: null, previewUrl: null })).toEqual({ result: {} });
  });

  it.each([
    [3_000_000_000, 'credits 3000000000 out of range 0..10000000; ignored'],
    [MAX_BUILD_CREDITS + 1, 'credits 10000001 out of range 0..10000000; ignored'],
    [-5, 'credits -5 out of range 0..10000000; ignored'],
    [1e21, 'credits 1e+21 out of range 0..10000000; ignored'],
    [1.5, 'credits 1.5 is not an integer in 0..10000000; ignored'],
    ['12', 'credits "12" is not an integer in 0..10000000; ignored'],
    [{ n: 1 }, 'credits {"n":1} is not an integer in 0..10000000; ignored'],
  ])('ignores credits %j, says so in a log event, and keeps the rest of the result', (credits, message) => {
    expect(result({ credits, previewUrl: '/previews/b1/' })).toEqual({
      result: { previewUrl: '/previews/b1/' },
      event: { type: 'log', message },
    });
  });

  it('ignores a number JSON cannot hold as an integer (1e400 is Infinity)', () => {
    expect(parseLine('{"type":"result","credits":1e400}')).toEqual({
      result: {},
      event: { type: 'log', message: 'credits Infinity is not an integer in 0..10000000; ignored' },
    });
  });

  it.each([
    ['//evil.example.com/x', '//evil.example.com/x'],
    ['//evil.example.com', '//evil.example.com'],
    ['https://', 'https://'],
    ['http:///path', 'http:///path'],
    ['javascript:alert(1)', 'javascript:alert(1)'],
    ['ftp://example.com/', 'ftp://example.com/'],
    ['/v1/credits/grant', '/v1/credits/grant'],
    ['/previews/../v1/builds', '/previews/../v1/builds'],
    ['/previews/%2e%2e/x', '/previews/%2e%2e/x'],
    ['/previews/a\\b', '/previews/a\\b'],
    ['https://a b', 'https://a b'],
    ['2100 characters', `/previews/${'a'.repeat(2100)}`],
    ['a number', 42],
  ])('ignores the previewUrl %s and keeps the credits', (_name, previewUrl) => {
    const parsed = result({ credits: 17, previewUrl });
    expect(parsed.result).toEqual({ credits: 17 });
    expect(parsed.event?.type).toBe('log');
    expect(parsed.event?.message).toMatch(
      /^previewUrl .* is not an http:\/\/ or https:\/\/ URL or a path under \/previews\/; ignored$/,
    );
  });

  it('says everything it ignored in one event', () => {
    expect(result({ credits: -1, previewUrl: '//x' })).toEqual({
      result: {},
      event: {
        type: 'log',
        message:
          'credits -1 out of range 0..10000000; ignored; previewUrl "//x" is not an http:// or https:// URL or a path under /previews/; ignored',
      },
    });
  });

  it('turns other lines into events as before', () => {
    expect(parseLine('not json')).toEqual({ event: { type: 'log', message: 'not json' } });
    expect(parseLine('{"type":"log","message":"hi"}')).toEqual({ event: { type: 'log', message: 'hi' } });
    expect(parseLine('{"type":"progress","phase":"p","progress":0.5}')).toEqual({
      event: { type: 'progress', phase: 'p', message: undefined, progress: 0.5 },
    });
  });
});
