import { describe, expect, it } from 'vitest';
import { DATABASE_URL } from '../helpers/env';
import { sharedKilns } from '../helpers/kiln-process';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Ready = { status: string; instances?: { live: number; dead: number } };
type Instance = { id: string; state: string; health: Record<string, unknown> };
type Dashboard = { pipeline: { liveInstances: number; deadInstances: number }; instances: Instance[] };

const json = async <T>(url: string) => {
  const res = await fetch(url);
  expect(res.status, url).toBe(200);
  return (await res.json()) as T;
};

describe('each process’s line in service_instances, read by /readyz and the live page', () => {
  const kilns = sharedKilns({ INSTANCE_LEASE_S: '3' });

  it('counts this process live, with its health on the live page', async () => {
    const kiln = await kilns.start();
    expect((await json<Ready>(`${kiln.url}/readyz`)).instances).toEqual({ live: 1, dead: 0 });
    const page = await json<Dashboard>(`${kiln.url}/dashboard/data`);
    expect(page.instances).toHaveLength(1);
    expect(page.instances[0]).toMatchObject({ state: 'live', health: { store: 'up', runnerConcurrency: 0 } });
    expect(kiln.output()).toContain(page.instances[0].id);
    await kiln.stop('SIGTERM');
  });

  it.runIf(DATABASE_URL)(
    'marks a killed process dead within its lease, and says so in the log of another',
    async () => {
      const survivor = await kilns.start();
      const victim = await kilns.start();
      const before = await json<Ready>(`${survivor.url}/readyz`);
      expect(before.instances).toEqual({ live: 2, dead: 0 });
      const victimId = /"instanceId":"([^"]+)"/.exec(victim.output())?.[1];
      expect(victimId).toBeDefined();

      await victim.stop('SIGKILL');
      const killedAt = Date.now();
      let ready = before;
      while (ready.instances?.dead !== 1 && Date.now() - killedAt < 10_000) {
        await sleep(200);
        ready = await json<Ready>(`${survivor.url}/readyz`);
      }
      // Read dead once its lease (3 s) has passed since its last renewal (at most a third of it before the kill).
      expect(ready.instances).toEqual({ live: 1, dead: 1 });
      expect(Date.now() - killedAt).toBeLessThan(5_000);
      const page = await json<Dashboard>(`${survivor.url}/dashboard/data`);
      expect(page.pipeline).toMatchObject({ liveInstances: 1, deadInstances: 1 });
      expect(page.instances.find((i) => i.id === victimId)).toMatchObject({ state: 'dead' });
      // The survivor marks it within one of its own renewals (every second) and logs it for the on-call engineer.
      const deadline = Date.now() + 3_000;
      while (!survivor.output().includes(`"deadInstanceId":"${victimId}"`) && Date.now() < deadline) await sleep(100);
      expect(survivor.output()).toContain(`"deadInstanceId":"${victimId}"`);
    },
  );
});
