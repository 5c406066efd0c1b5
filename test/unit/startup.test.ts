import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config';
import { explainStartFailure, redactUrl, StartError, startStep } from '../../src/startup';

const coded = (code: string, message = `failed with ${code}`) => Object.assign(new Error(message), { code });
const pg = { kind: 'postgres', url: 'postgres://kiln:pw@db.internal:6432/kiln' } as const;
const redis = { kind: 'redis', url: 'rediss://default:pw@cache:6380' } as const;

describe('start-up failure messages', () => {
  it('finds the code under Kiln’s own wrappers and inside an AggregateError', () => {
    const wrapped = new Error('database unavailable', {
      cause: new AggregateError([coded('ECONNREFUSED'), coded('ECONNREFUSED')], 'connect failed'),
    });
    expect(explainStartFailure(pg, wrapped)).toBe(
      'PostgreSQL at postgres://kiln:***@db.internal:6432/kiln: nothing accepts connections at db.internal:6432 (connection refused): start PostgreSQL there, or fix DATABASE_URL',
    );
  });

  it.each([
    ['3D000', 'database "kiln" does not exist; create it with `createdb -h db.internal -p 6432 -U kiln kiln`'],
    ['28P01', 'check the user and password in DATABASE_URL'],
    ['42501', 'the user needs the right to create the schema'],
    ['53300', 'lower DATABASE_POOL_SIZE or raise max_connections'],
    ['ENOTFOUND', 'the host db.internal cannot be resolved (ENOTFOUND): fix the host name'],
    ['ETIMEDOUT', 'db.internal:6432 cannot be reached (ETIMEDOUT)'],
  ])('PostgreSQL %s → says what to do', (code, expected) => {
    const message = explainStartFailure(pg, coded(code));
    expect(message.startsWith('PostgreSQL at postgres://kiln:***@db.internal:6432/kiln: ')).toBe(true);
    expect(message).toContain(expected);
    expect(message).not.toContain(':pw@');
  });

  it('keeps an unknown cause’s own words', () => {
    expect(explainStartFailure(pg, new Error('the moon is in the wrong phase'))).toBe(
      'PostgreSQL at postgres://kiln:***@db.internal:6432/kiln: the moon is in the wrong phase',
    );
    expect(explainStartFailure({ kind: 'embedded', dataDir: '/data/pgdata' }, new Error('disk full'))).toBe(
      'the embedded database in /data/pgdata: disk full',
    );
  });

  it('Redis: refused, wrong password, unknown host', () => {
    expect(explainStartFailure(redis, coded('ECONNREFUSED'))).toBe(
      'Redis at rediss://default:***@cache:6380: nothing accepts connections at cache:6380 (connection refused): start Redis there, or fix REDIS_URL (or unset it: nonces and rate limits are then kept in the database)',
    );
    expect(explainStartFailure(redis, new Error('WRONGPASS invalid username-password pair'))).toContain(
      'check the user and password in REDIS_URL',
    );
    expect(explainStartFailure({ kind: 'redis', url: 'redis://cache' }, coded('ENOTFOUND'))).toContain(
      'the host cache cannot be resolved',
    );
  });

  it('listening: in use, privileged port, unknown address', () => {
    const step = { kind: 'listen', host: '0.0.0.0', port: 80 } as const;
    expect(explainStartFailure(step, coded('EADDRINUSE'))).toBe(
      'listening on 0.0.0.0:80: the port is already in use (another Kiln?): stop that process, or set PORT to a free port',
    );
    expect(explainStartFailure(step, coded('EACCES'))).toContain('set PORT above 1023');
    expect(explainStartFailure(step, coded('EADDRNOTAVAIL'))).toContain('fix HOST');
  });

  it('startStep tags a failure with its step once, and passes a success through', async () => {
    await expect(startStep(pg, async () => 7)).resolves.toBe(7);
    const failed = await startStep(pg, () => startStep(redis, () => Promise.reject(coded('ECONNREFUSED')))).catch(
      (error: unknown) => error,
    );
    expect(failed).toBeInstanceOf(StartError);
    expect((failed as StartError).step).toBe(redis);
  });

  it('redacts only the password', () => {
    expect(redactUrl('postgres://u:p@h:1/d?sslmode=require')).toBe('postgres://u:***@h:1/d?sslmode=require');
    expect(redactUrl('redis://h:6379')).toBe('redis://h:6379');
    expect(redactUrl('not a url')).toBe('(an unparsable URL)');
    expect(redactUrl('postgres://u@h/d?password=p&sslmode=require&authToken=t')).toBe(
      'postgres://u@h/d?password=***&sslmode=require&authToken=***',
    );
  });
});

describe('a URL that does not parse', () => {
  it('is refused without echoing it (its password is often why)', () => {
    let error: unknown;
    try {
      loadConfig({ DATABASE_URL: 'postgres://kiln:p#ss@db/kiln' });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('DATABASE_URL');
    expect((error as Error).message).toContain('%23');
    expect((error as Error).message).not.toContain('p#ss');
  });
});
