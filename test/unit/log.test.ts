import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BatchedDestination } from '../../src/log';

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
});
