import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, sharedKilns } from '../helpers/kiln-process';
import { alive, sleep, waitFor } from '../helpers/wait';

/**
 * The live page in a real browser: Debian's Chromium driven by playwright-core (nothing downloaded). Kiln runs the
 * fixture build command, so builds really queue, run (reporting progress), deploy and fail.
 */
const CHROMIUM = '/usr/bin/chromium';
const ROOT = new URL('../..', import.meta.url).pathname;
const BUILD_COMMAND = `node ${join(ROOT, 'test/fixtures/dashboard-build.mjs')}`;
const SCREENSHOT = join(ROOT, 'docs/dashboard.png');

type Build = { id: string; state: string };

type Api = ReturnType<typeof createKilnClient>;

/**
 * Wait until the element's text is `expected` (the page refreshes itself every 2 s). Polled from here: a predicate
 * evaluated in the page would need `unsafe-eval`, which the page's CSP refuses.
 */
async function waitForText(page: Page, selector: string, expected: string | RegExp, timeout = 15_000): Promise<void> {
  const deadline = Date.now() + timeout;
  let actual: string | null = null;
  for (;;) {
    actual = (await page.locator(selector).first().textContent())?.trim() ?? null;
    if (actual !== null && (typeof expected === 'string' ? actual === expected : expected.test(actual))) return;
    if (Date.now() > deadline) throw new Error(`${selector}: expected "${expected}", still "${actual}"`);
    await sleep(100);
  }
}

/**
 * In the embedded pass only: the page is the same whatever the database, its data is tested on both adapters by
 * test/integration/dashboard.test.ts, and a browser is the slowest thing the suite starts.
 */
describe.skipIf(!existsSync(CHROMIUM) || DATABASE_URL !== undefined)('the live page in headless Chromium', () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
  });

  describe('with builds in every state', () => {
    // A short lease: the process renews its line (and its health) every second.
    const kilns = sharedKilns({ RUNNER_CONCURRENCY: '2', BUILD_COMMAND, INSTANCE_LEASE_S: '3' });
    let kiln: KilnProcess;
    let api: Api;
    const ids: Record<string, string> = {};
    const newBuild = async (projectId: string, userId: string, metadata: Record<string, unknown> = {}) => {
      const project = await api('POST', '/v1/projects', { id: projectId, ownerId: userId, name: projectId });
      expect(project.status).toBe(201);
      const res = await api<Build>('POST', '/v1/builds', { projectId, userId, metadata, estimatedCredits: 120 });
      expect(res.status).toBe(201);
      return res.body.id;
    };
    const stateOf = async (id: string) => (await api<Build>('GET', `/v1/builds/${id}`)).body.state;
    const until = (id: string, states: string[]) =>
      waitFor(`${id} in ${states.join('/')}`, async () => {
        const state = await stateOf(id);
        return states.includes(state) ? state : undefined;
      });

    beforeAll(async () => {
      kiln = await kilns.start();
      api = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
      for (const [userId, credits] of [
        ['user_ana', 5_000],
        ['user_ben', 2_500],
      ] as const) {
        const grant = { userId, credits, reason: 'monthly plan', source: 'purchase' };
        expect((await api('POST', '/v1/credits/grant', grant)).status).toBe(200);
      }
      // Builds that end at once: four deploy, one fails (exit code 1).
      const quick = await Promise.all([
        newBuild('marketing-site', 'user_ana', { credits: 42 }),
        newBuild('blog', 'user_ben', { credits: 67 }),
        newBuild('api-docs', 'user_ana', { fail: true }),
        newBuild('checkout', 'user_ana', { credits: 18 }),
        newBuild('portfolio', 'user_ben', { credits: 85 }),
      ]);
      ids.deployed = quick[0];
      ids.failed = quick[2];
      for (const id of quick) await until(id, ['deployed', 'failed']);
      expect(await stateOf(ids.failed)).toBe('failed');
      // Two builds that hold both runner slots, reporting progress, then three that must wait; one is cancelled.
      ids.running = await newBuild('storefront', 'user_ana', {
        hold: true,
        progress: 0.45,
        phase: 'compile',
        message: 'Compiling the site',
      });
      ids.running2 = await newBuild('docs', 'user_ben', {
        hold: true,
        progress: 0.8,
        phase: 'deploy',
        message: 'Publishing the preview',
      });
      for (const id of [ids.running, ids.running2]) {
        await until(id, ['building']);
        await waitFor(`progress of ${id}`, async () => {
          const events = await api<{ events: { type: string }[] }>('GET', `/v1/builds/${id}/events`);
          return events.body.events.some((e) => e.type === 'progress') ? true : undefined;
        });
      }
      ids.queued = await newBuild('admin-panel', 'user_ana');
      ids.queued2 = await newBuild('mobile-web', 'user_ben');
      ids.cancelled = await newBuild('landing-page', 'user_ana');
      expect((await api('POST', `/v1/builds/${ids.cancelled}/cancel`, { reason: 'superseded' })).status).toBe(200);
      // Credits through the credits API: a hold released, one committed with a refund, one left active.
      const reserve = async (userId: string, estimatedCredits: number) => {
        const res = await api<{ reservationId: string }>('POST', '/v1/credits/reserve', { userId, estimatedCredits });
        expect(res.status).toBe(201);
        return res.body.reservationId;
      };
      const released = await reserve('user_ben', 300);
      expect((await api('POST', '/v1/credits/release', { reservationId: released, reason: 'abandoned' })).status).toBe(
        200,
      );
      const committed = await reserve('user_ana', 200);
      expect((await api('POST', '/v1/credits/commit', { reservationId: committed, actualCredits: 150 })).status).toBe(
        200,
      );
      await reserve('user_ana', 90);
      // A few client errors for the table of errors by route, and a full audit.
      expect((await api('GET', '/v1/builds/bld_missing')).status).toBe(404);
      expect((await api('PATCH', `/v1/builds/${ids.deployed}`, { state: 'building' })).status).toBe(409);
      expect((await api('GET', '/v1/credits/audit')).status).toBe(200);
    }, 120_000);

    afterAll(async () => {
      // Stop the commands still running; the queued builds go first so none starts. A cancel reaches the runner
      // through the wake-up bus, so wait for the held commands to end (by the pids they wrote) before Kiln is killed.
      for (const id of [ids.queued, ids.queued2, ids.queued3, ids.running, ids.running2]) {
        if (id && api) await api('POST', `/v1/builds/${id}/cancel`, { reason: 'test over' }).catch(() => undefined);
      }
      for (const id of [ids.running, ids.running2]) {
        const pid =
          id && Number(await readFile(join(kilns.env.DATA_DIR, 'builds', id, 'hold.pid'), 'utf8').catch(() => ''));
        if (!pid) continue;
        const ended = await waitFor(
          `the command of ${id} to end`,
          async () => (alive(pid) ? undefined : true),
          10_000,
        ).catch(() => false);
        if (!ended) process.kill(pid, 'SIGKILL');
      }
    });

    // One page through the whole story: it renders the figures, updates itself, and is what docs/dashboard.png shows.
    it('renders the real figures, updates by itself when a build is queued, and writes docs/dashboard.png', async () => {
      const page: Page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const dataRequests: string[] = [];
      page.on('request', (r) => dataRequests.push(r.url()));
      await page.goto(`${kiln.url}/dashboard`);
      await waitForText(page, '#queue-depth', '2');
      await waitForText(page, '#status', 'live');
      expect(await page.locator('#pipeline').textContent()).toContain(ids.queued);
      await waitForText(page, '#building-count', '2');
      const running = page.locator(`#active [data-build-id="${ids.running}"]`);
      expect(await running.textContent()).toContain('45 %');
      expect(await running.textContent()).toContain('compile');
      expect(await running.textContent()).toContain('storefront');
      expect(await page.locator(`#active [data-build-id="${ids.running2}"]`).textContent()).toContain('80 %');
      expect(await page.locator(`#recent tr[data-build-id="${ids.failed}"]`).textContent()).toContain('failed');
      expect(await page.locator(`#recent tr[data-build-id="${ids.failed}"]`).textContent()).toContain('exit_code');
      expect(await page.locator(`#recent tr[data-build-id="${ids.cancelled}"]`).textContent()).toContain('cancelled');
      expect(await page.locator(`#recent tr[data-build-id="${ids.deployed}"]`).textContent()).toContain('deployed');
      expect(await page.locator('#success-rate').textContent()).toBe('80 %');
      expect(await page.locator('#outcomes').textContent()).toContain('exit_code');
      // Consumed: the four deployed builds' reported credits and the commit through the credits API.
      expect(await page.locator('#consumed').textContent()).toBe(String(42 + 67 + 18 + 85 + 150));
      expect(await page.locator('#credits').textContent()).toContain('granted7,500');
      expect(await page.locator('#audit').textContent()).toBe('balanced');
      expect(await page.locator('#routes').textContent()).toContain('GET /v1/builds/:id');
      // This process's line: live, with what it says of itself (the two builds its runner holds).
      await waitForText(page, '#instances tr:first-child td:nth-child(4)', '2 / 2');
      expect(await page.locator('#instances tr:first-child td:nth-child(2)').textContent()).toBe('live');
      expect(await page.locator('#banner').isHidden()).toBe(true);
      expect(await page.locator('#token-form').isHidden()).toBe(true);
      expect(dataRequests.some((url) => url.endsWith('/dashboard/data'))).toBe(true);

      // A build queued through the API appears without a reload.
      await page.evaluate('window.kilnTestMarker = 42');
      ids.queued3 = await newBuild('status-page', 'user_ben');
      await waitForText(page, '#queue-depth', '3');
      await page.locator(`#recent tr[data-build-id="${ids.queued3}"]`).waitFor({ timeout: 10_000 });
      expect(await page.evaluate('window.kilnTestMarker')).toBe(42);

      // The whole page, 1280 wide, after one more refresh (fresh ages).
      await sleep(2_500);
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      expect(existsSync(SCREENSHOT)).toBe(true);
      await page.close();
    });

    it('fits a phone (390 × 844) in one column, without horizontal overflow', async () => {
      const context = await browser.newContext({
        viewport: { width: 390, height: 844 },
        deviceScaleFactor: 2,
        isMobile: true,
        hasTouch: true,
      });
      try {
        const phone = await context.newPage();
        await phone.goto(`${kiln.url}/dashboard`);
        await waitForText(phone, '#status', 'live');
        const layout = (await phone.evaluate(`({
          scrollWidth: document.documentElement.scrollWidth,
          width: window.innerWidth,
          columns: getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length,
        })`)) as { scrollWidth: number; width: number; columns: number };
        expect(layout.scrollWidth).toBeLessThanOrEqual(layout.width);
        expect(layout.columns).toBe(1);
        if (process.env.KILN_DASHBOARD_PHONE_PNG) {
          await writeFile(process.env.KILN_DASHBOARD_PHONE_PNG, await phone.screenshot({ fullPage: true }));
        }
      } finally {
        await context.close();
      }
    });

    it('says so when Kiln cannot be reached, and recovers', async () => {
      const lost = await browser.newPage();
      try {
        await lost.goto(`${kiln.url}/dashboard`);
        await waitForText(lost, '#status', 'live');
        const shown = await lost.locator('#queue-depth').textContent();
        await lost.route('**/dashboard/data', (route) => route.abort());
        await waitForText(lost, '#status', 'cannot reach Kiln');
        expect(await lost.locator('#banner').textContent()).toContain('Cannot reach Kiln');
        expect(await lost.locator('#queue-depth').textContent()).toBe(shown); // the last figures stay
        await lost.unroute('**/dashboard/data');
        await waitForText(lost, '#status', 'live');
        expect(await lost.locator('#banner').isHidden()).toBe(true);
      } finally {
        await lost.close();
      }
    });
  });

  describe('with METRICS_TOKEN set', () => {
    const TOKEN = 'dash-browser-token-0123456789';
    const kilns = sharedKilns({ BUILD_EXECUTOR: 'external', METRICS_TOKEN: TOKEN });
    let kiln: KilnProcess;
    beforeAll(async () => {
      kiln = await kilns.start();
    });

    it('asks for the token, refuses a wrong one, and shows the figures once it is entered', async () => {
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        await page.goto(`${kiln.url}/dashboard`);
        await page.locator('#token-form').waitFor({ state: 'visible', timeout: 10_000 });
        await waitForText(page, '#status', 'token needed');
        expect(await page.locator('#queue-depth').textContent()).toBe('–');
        await page.fill('#token-input', 'not-the-token');
        await page.click('#token-form button');
        await waitForText(page, '#token-note', /refused/);
        await page.fill('#token-input', TOKEN);
        await page.click('#token-form button');
        await waitForText(page, '#status', 'live');
        await waitForText(page, '#queue-depth', '0');
        expect(await page.locator('#token-form').isHidden()).toBe(true);
        // Kept for this tab: a reload needs no token again.
        await page.reload();
        await waitForText(page, '#status', 'live');
      } finally {
        await context.close();
      }
    });

    it('takes the token from the URL fragment, never sending it, and clears it from the address', async () => {
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        const sent: { url: string; authorization?: string }[] = [];
        page.on('request', (r) => sent.push({ url: r.url(), authorization: r.headers().authorization }));
        await page.goto(`${kiln.url}/dashboard#token=${TOKEN}`);
        await waitForText(page, '#status', 'live');
        await waitForText(page, '#queue-depth', '0');
        expect(await page.evaluate('location.hash')).toBe('');
        expect(sent.every((r) => !r.url.includes(TOKEN))).toBe(true);
        expect(sent.some((r) => r.url.endsWith('/dashboard/data') && r.authorization === `Bearer ${TOKEN}`)).toBe(true);
      } finally {
        await context.close();
      }
    });
  });
});
