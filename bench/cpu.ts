// Where the CPU goes during a benchmark, from /proc: a process's own CPU seconds, every process of a name
// (PostgreSQL's backends, Redis), the machine's, and a meter that adds up each part over the slices of one side of a
// comparison (see `during` in lib.ts), so a result can say how many microseconds of each a request cost.
import { readdir, readFile } from 'node:fs/promises';
import type { During } from './lib';

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat; 0 when it is gone. */
export async function cpuSeconds(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** The pids of every process whose command name is `name` (postgres, redis-server). */
async function pidsNamed(name: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const comm = await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '');
    if (comm.trim() === name) pids.push(Number(entry));
  }
  return pids;
}

/** The machine's CPU seconds so far: busy (everything but idle and iowait) and iowait, from /proc/stat. */
export async function machineCpu(): Promise<{ busy: number; iowait: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0];
  const [user, nice, system, _idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return { busy: (user + nice + system + irq + softirq + steal) / 100, iowait: iowait / 100 };
}

/** CPU seconds so far of several processes together. */
export async function cpuOf(pids: number[]): Promise<number> {
  let total = 0;
  for (const pid of pids) total += await cpuSeconds(pid);
  return total;
}

/** CPU seconds so far of every process named `name`, by pid (connections come and go during a run). */
export async function cpuByPid(name: string): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  for (const pid of await pidsNamed(name)) out.set(pid, await cpuSeconds(pid));
  return out;
}

/** CPU seconds used between two readings: a process that appeared in between counts all of its own. */
export function cpuBetween(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0;
  for (const [pid, seconds] of after) total += seconds - (before.get(pid) ?? 0);
  return total;
}

/** CPU seconds one side of a comparison used, by part, over every slice it ran. */
export interface CpuUse {
  /** The server measured (Kiln, or the baseline). */
  server: number;
  postgres: number;
  redis: number;
  /** This process: the load generator. */
  generator: number;
}

/** A meter of one side: pass `during` to its runs; `used` adds up what each part spent while they ran. */
export function cpuMeter(serverPid: number): { during: During; used: CpuUse } {
  const used: CpuUse = { server: 0, postgres: 0, redis: 0, generator: 0 };
  const read = async () => ({
    server: await cpuSeconds(serverPid),
    postgres: await cpuByPid('postgres'),
    redis: await cpuByPid('redis-server'),
    generator: process.cpuUsage(),
  });
  const during: During = () => {
    const before = read();
    return async () => {
      const [b, a] = [await before, await read()];
      const generator = process.cpuUsage(b.generator);
      used.server += a.server - b.server;
      used.postgres += cpuBetween(b.postgres, a.postgres);
      used.redis += cpuBetween(b.redis, a.redis);
      used.generator += (generator.user + generator.system) / 1e6;
    };
  };
  return { during, used };
}

/** Microseconds of each part per request: a meter's total over the requests its side served. */
export function perRequestUs(used: CpuUse, requests: number): CpuUse {
  const us = (s: number) => Math.round((s / requests) * 1e6);
  return {
    server: us(used.server),
    postgres: us(used.postgres),
    redis: us(used.redis),
    generator: us(used.generator),
  };
}
