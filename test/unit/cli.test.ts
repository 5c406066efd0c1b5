import { describe, expect, it } from 'vitest';
import { parseCommand } from '../../src/cli';

describe('kiln command line', () => {
  it('understands every command', () => {
    expect(parseCommand([])).toEqual({ command: 'help' });
    expect(parseCommand(['--help'])).toEqual({ command: 'help' });
    expect(parseCommand(['sign', 'get', '/v1/ping'])).toEqual({
      command: 'sign',
      method: 'GET',
      path: '/v1/ping',
      body: '',
    });
    expect(parseCommand(['sign', 'POST', '/v1/projects', '{"name":"x"}'])).toMatchObject({ body: '{"name":"x"}' });
    expect(parseCommand(['audit'])).toEqual({ command: 'audit' });
    expect(parseCommand(['audit', '--user', 'usr_1'])).toEqual({ command: 'audit', userId: 'usr_1' });
    expect(parseCommand(['demo'])).toEqual({ command: 'demo' });
  });

  it.each([
    [['build'], 'kiln: unknown command "build" (sign, audit, demo or help)'],
    [['sign'], 'kiln sign: METHOD is missing'],
    [['sign', 'FETCH', '/v1/ping'], 'kiln sign: METHOD "FETCH" is not one of GET, POST, PUT, PATCH, DELETE, HEAD'],
    [['sign', 'GET'], 'kiln sign: PATH is missing'],
    [['sign', 'GET', 'http://localhost:3000/v1/ping'], 'must start with / (the path and query, without the host)'],
    [['sign', 'POST', '/v1/projects', '{"a":'], 'kiln sign: BODY is not valid JSON'],
    [['sign', 'POST', '/v1/projects', '{"a":', '1}'], 'unexpected argument "1}" after BODY'],
    [['audit', '--usr', 'u'], 'kiln audit: unknown argument "--usr"'],
    [['audit', '--user'], 'kiln audit: --user needs a user id'],
    [['audit', '--user', 'a b'], 'user id "a b" is not 1-128 letters'],
    [['audit', '--user', 'u', 'v'], 'unexpected argument "v"'],
    [['demo', 'now'], 'kiln demo: takes no arguments, got "now"'],
  ])('%j → says which argument and why', (argv, expected) => {
    const parsed = parseCommand(argv);
    expect('error' in parsed && parsed.error).toContain(expected);
  });
});
