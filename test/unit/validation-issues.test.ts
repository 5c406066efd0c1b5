import { describe, expect, it } from 'vitest';
import { issuesFrom, type SchemaError } from '../../src/domain/validation-issues';

const e = (keyword: string, instancePath: string, params: Record<string, unknown> = {}): SchemaError => ({
  keyword,
  instancePath,
  params,
  message: `ajv says ${keyword}`,
});

describe('validation issues for people', () => {
  it('a choice of values is one issue naming them, not one per branch', () => {
    const states = ['queued', 'building', 'deployed'];
    const errors = [...states.map((s) => e('const', '/state', { allowedValue: s })), e('anyOf', '/state')];
    expect(issuesFrom(errors, 'query')).toEqual([
      { path: 'query.state', message: 'must be one of queued, building, deployed' },
    ]);
  });

  it('a choice of types reads as one', () => {
    const errors = [
      e('type', '/reason', { type: 'string' }),
      e('type', '/reason', { type: 'null' }),
      e('anyOf', '/reason'),
    ];
    expect(issuesFrom(errors, 'body')).toEqual([{ path: 'body.reason', message: 'must be a string or null' }]);
  });

  it('a choice whose matching branch failed a check of its own reports that check', () => {
    // "string or null" given a string too long: not "must be a string or null".
    const tooLong = [
      e('maxLength', '/name', { limit: 64 }),
      e('type', '/name', { type: 'null' }),
      e('anyOf', '/name'),
      e('type', '/limit', { type: 'integer' }),
    ];
    expect(issuesFrom(tooLong, 'body')).toEqual([
      { path: 'body.name', message: 'must be at most 64 characters long' },
      { path: 'body.limit', message: 'must be an integer' },
    ]);
    // "object or null" with a field not allowed, and with a required one missing.
    const settings = [
      e('additionalProperties', '/settings', { additionalProperty: 'a' }),
      e('required', '/settings', { missingProperty: 'url' }),
      e('type', '/settings', { type: 'null' }),
      e('anyOf', '/settings'),
    ];
    expect(issuesFrom(settings, 'body')).toEqual([
      { path: 'body.settings.a', message: 'is not an allowed field' },
      { path: 'body.settings.url', message: 'is required' },
    ]);
  });

  it('one issue per field: the first failure of a field is the one reported', () => {
    const errors = [e('minLength', '/userId', { limit: 1 }), e('pattern', '/userId', { pattern: '^[a-z]+$' })];
    expect(issuesFrom(errors, 'body')).toEqual([{ path: 'body.userId', message: 'must not be empty' }]);
  });

  it.each([
    [e('enum', '/interval', { allowedValues: ['hour', 'day'] }), 'must be one of hour, day'],
    [e('minLength', '/name', { limit: 3 }), 'must be at least 3 characters long'],
    [e('maxLength', '/name', { limit: 1 }), 'must be at most 1 character long'],
    [e('maxLength', '/name', { limit: 255 }), 'must be at most 255 characters long'],
    [e('minimum', '/amount', { limit: 1 }), 'must be at least 1'],
    [e('maximum', '/limit', { limit: 100 }), 'must be at most 100'],
    [e('minItems', '/items', { limit: 1 }), 'must have at least 1 item'],
    [e('maxItems', '/items', { limit: 100 }), 'must have at most 100 items'],
    [e('format', '/from', { format: 'date-time' }), 'must be a date-time in RFC 3339 form (2026-12-01T00:00:00Z)'],
    [e('pattern', '/id', { pattern: '^[a-z]+$' }), 'must match the pattern ^[a-z]+$'],
    [e('type', '/n', { type: 'integer' }), 'must be an integer'],
    [e('const', '/v', { allowedValue: 2 }), 'must be 2'],
    [e('if', '/x'), 'ajv says if'],
  ])('%j → %s', (error, message) => {
    expect(issuesFrom([error], 'body')).toEqual([{ path: `body${error.instancePath.replaceAll('/', '.')}`, message }]);
  });
});
