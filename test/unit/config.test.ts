import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config';

describe('config', () => {
  it('gives the SPEC defaults for an empty environment', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      port: 8081,
      host: '127.0.0.1',
      databaseUrl: undefined,
      redisUrl: undefined,
      dataDir: './.kiln',
      hmacSecrets: [],
      hmacMode: 'dual',
      signatureHeaderPrefix: 'x-sheen',
      idempotencyTtlS: 86_400,
      idempotencyRequired: false,
      timestampToleranceS: 120,
      nonceTtlS: 600,
      rateLimitUserPerMin: 600,
      rateLimitIpPerMin: 1200,
      reservationTtlS: 1800,
      buildExecutor: 'command',
      buildTimeoutS: 1800,
      runnerConcurrency: 2,
      logLevel: 'info',
      bodyLimitBytes: 1_048_576,
    });
  });

  it('budgets memory by mode: above SPEC 8’s 200 MB aim on PostgreSQL, more when PGlite lives in the process', () => {
    expect(loadConfig({}).memoryBudgetMb).toBe(768);
    expect(loadConfig({ DATABASE_URL: 'postgres://h/db', HMAC_SECRET: 'x'.repeat(16) }).memoryBudgetMb).toBe(256);
    expect(loadConfig({ MEMORY_BUDGET_MB: '512' }).memoryBudgetMb).toBe(512);
    expect(() => loadConfig({ MEMORY_BUDGET_MB: '8' })).toThrow(/MEMORY_BUDGET_MB/);
  });

  it.each([
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['REDIS_URL', 'nonsense'],
    ['REDIS_URL', 'http://localhost:6379'],
    ['DATABASE_URL', 'mysql://localhost/x'],
    ['HMAC_MODE', 'v3'],
    ['HMAC_V1_UNTIL', 'next tuesday'],
    ['IDEMPOTENCY_REQUIRED', 'maybe'],
    ['RATE_LIMIT_USER_PER_MIN', '-1'],
    ['RUNNER_CONCURRENCY', '1.5'],
    ['LOG_LEVEL', 'loud'],
    ['BUILD_EXECUTOR', 'docker'],
    ['DATABASE_SCHEMA', 'Robert"); drop table'],
    ['SIGNATURE_HEADER_PREFIX', 'x sheen'],
    ['HMAC_SECRET', 'short'],
    ['CREDIT_PACKAGES', 'nope'],
    ['CREDIT_PACKAGES', '[{"name":"x","price":0,"credits":1}]'],
    ['CREDIT_PACKAGES', '[]'],
    ['BUILD_LEASE_S', '0'],
    ['CREDITS_PER_BUILD_MINUTE', 'ten'],
  ])('refuses %s=%s with an error naming the variable', (name, value) => {
    let caught: unknown;
    try {
      loadConfig({ [name]: value });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as ConfigError).variable).toBe(name);
    expect((caught as ConfigError).message).toContain(name);
  });

  it('parses given values', () => {
    const config = loadConfig({
      PORT: '9000',
      DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/test',
      REDIS_URL: 'redis://127.0.0.1:6379',
      HMAC_SECRET: 'a-secret-of-sixteen+',
      HMAC_SECRETS: 'another-secret-16chars, a-secret-of-sixteen+',
      HMAC_MODE: 'v2',
      HMAC_V1_UNTIL: '2026-12-31T00:00:00Z',
      IDEMPOTENCY_REQUIRED: 'true',
      RATE_LIMIT_IP_PER_MIN: '0',
      SIGNATURE_HEADER_PREFIX: 'X-Kiln',
    });
    expect(config.port).toBe(9000);
    expect(config.hmacSecrets).toEqual(['a-secret-of-sixteen+', 'another-secret-16chars']);
    expect(config.hmacMode).toBe('v2');
    expect(config.hmacV1Until?.toISOString()).toBe('2026-12-31T00:00:00.000Z');
    expect(config.idempotencyRequired).toBe(true);
    expect(config.rateLimitIpPerMin).toBe(0);
    expect(config.signatureHeaderPrefix).toBe('x-kiln');
  });

  it('reads a credit package catalog', () => {
    const config = loadConfig({ CREDIT_PACKAGES: '[{"name":"solo","price":5,"credits":100}]' });
    expect(config.creditPackages).toEqual([{ name: 'solo', price: 5, credits: 100 }]);
    expect(loadConfig({}).creditPackages.map((p) => p.name)).toEqual(['starter', 'pro', 'team']);
  });

  it('treats an empty variable as unset', () => {
    expect(loadConfig({ PORT: '', REDIS_URL: '  ' })).toMatchObject({ port: 8081, redisUrl: undefined });
  });

  it.each([
    [
      { TIMESTAMP_TOLERANCE_S: '301' },
      'NONCE_TTL_S',
      /at least twice TIMESTAMP_TOLERANCE_S \(2 × 301 = 602 s\), got 600/,
    ],
    [{ NONCE_TTL_S: '200' }, 'NONCE_TTL_S', /2 × 120 = 240 s\), got 200/],
    [{ RESERVATION_TTL_S: '30' }, 'RESERVATION_TTL_S', /greater than BUILD_LEASE_S \(30 s\), got 30/],
    [{ RESERVATION_TTL_S: '60', BUILD_LEASE_S: '90' }, 'RESERVATION_TTL_S', /greater than BUILD_LEASE_S \(90 s\)/],
  ])('refuses the unsafe combination %o, naming %s', (env, variable, message) => {
    expect(() => loadConfig(env)).toThrowError(ConfigError);
    try {
      loadConfig(env);
    } catch (error) {
      expect((error as ConfigError).variable).toBe(variable);
      expect((error as ConfigError).message).toMatch(message);
    }
  });

  it('accepts the limits of those combinations', () => {
    expect(loadConfig({ TIMESTAMP_TOLERANCE_S: '300', NONCE_TTL_S: '600' }).nonceTtlS).toBe(600);
    expect(loadConfig({ RESERVATION_TTL_S: '31' }).reservationTtlS).toBe(31);
  });

  it('bounds request statements and the wait for a connection', () => {
    expect(loadConfig({})).toMatchObject({ databaseStatementTimeoutS: 30, databasePoolTimeoutMs: 2000 });
    expect(() => loadConfig({ DATABASE_POOL_TIMEOUT_MS: '10' })).toThrowError(/DATABASE_POOL_TIMEOUT_MS/);
  });
});
