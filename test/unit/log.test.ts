import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BatchedDestination, prettyLine } from '../../src/log';

const LOG_MODULE = new URL('../../src/log.ts', import.meta.url).pathname;

describe('BatchedDestination', () => {
  let dir: string;
  let file: string;
  let fd: number;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-log-'));
    file = join(dir, 'out.log');
    fd = openSync(file, 'w');
  });
  afterEach(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  const written = () => readFileSync(file, 'utf8');

  it('holds lines briefly, then writes all of them in order', async () => {
    const destination = new BatchedDestination(fd);
    const logger = pino({ level: 'info' }, destination);
    for (let i = 0; i < 50; i++) logger.info({ i }, 'line');
    expect(written()).toBe('');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const lines = written()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { i: number; msg: string });
    expect(lines.map((l) => l.i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(lines.every((l) => l.msg === 'line')).toBe(true);
  });

  it('writes at once when much is pending, and on flush', () => {
    const destination = new BatchedDestination(fd);
    const big = `${'x'.repeat(70 * 1024)}\n`;
    destination.write(big);
    expect(written()).toBe(big);
    destination.write('short\n');
    let flushed = false;
    destination.flush(() => {
      flushed = true;
    });
    expect(flushed).toBe(true);
    expect(written()).toBe(`${big}short\n`);
  });

  it('keeps the process alive when the reader of its stdout has gone (EPIPE)', async () => {
    // A process logging through createLogger whose stdout pipe the parent closes at once: the writes fail with EPIPE,
    // which must stop the logging, not crash the process (it exits 0 after writing well past the pipe's end).
    const script = `import { createLogger } from ${JSON.stringify(LOG_MODULE)};
      const logger = createLogger('info');
      let i = 0;
      const timer = setInterval(() => { for (let j = 0; j < 200; j++) logger.info({ i: i++ }, 'x'.repeat(200)); }, 5);
      setTimeout(() => { clearInterval(timer); logger.flush(() => process.exit(0)); }, 600);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.stdout.destroy();
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});

describe('lines for people (LOG_FORMAT=pretty)', () => {
  it('puts the request id first, then time, level, message and the other fields', () => {
    const json = JSON.stringify({
      level: 30,
      time: Date.UTC(2026, 11, 5, 14, 3, 7, 250),
      pid: 42,
      requestId: 'req_abc',
      correlationId: 'cor 1',
      msg: 'request completed',
      statusCode: 201,
      route: '/v1/builds',
    });
    expect(prettyLine(json)).toBe(
      '[req_abc] 14:03:07.250 INFO  request completed  correlationId="cor 1" statusCode=201 route=/v1/builds\n',
    );
  });

  it('a line without a request id starts with the time; an error’s stack follows on its own lines', () => {
    const error = new Error('boom');
    const line = prettyLine(
      JSON.stringify({
        level: 50,
        time: 0,
        msg: 'failed',
        err: { type: 'Error', message: 'boom', stack: error.stack },
      }),
    );
    expect(line.startsWith('00:00:00.000 ERROR failed  err=boom\n    Error: boom')).toBe(true);
    expect(line.endsWith('\n')).toBe(true);
    expect(prettyLine('not json\n')).toBe('not json\n');
  });

  it('a process logging with createLogger(level, "pretty") writes such lines', async () => {
    const script = `import { createLogger } from ${JSON.stringify(LOG_MODULE)};
      const logger = createLogger('info', 'pretty');
      logger.child({ requestId: 'req_1' }).info({ n: 1 }, 'hello');`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
    });
    await new Promise((resolve) => child.on('close', resolve));
    expect(out).toMatch(/^\[req_1\] \d\d:\d\d:\d\d\.\d{3} INFO {2}hello {2}n=1\n$/);
  });
});

describe('pretty lines cannot be forged', () => {
  it('quotes a message or request id holding a newline or an escape', () => {
    const line = prettyLine(JSON.stringify({ level: 30, time: 0, requestId: 'r\n1', msg: 'a\nfake line\u001b[2J' }));
    expect(line.split('\n')).toHaveLength(2);
    expect(line).toContain('"a\\nfake line\\u001b[2J"');
  });
});
