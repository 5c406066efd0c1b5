import { existsSync } from 'node:fs';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, sharedKilns } from '../helpers/kiln-process';

/**
 * /docs in a real browser (Debian's Chromium, driven by playwright-core): a newcomer pastes the secret and every
 * "Try it out" is signed in the page (static/docs-signing.js, Web Crypto) and accepted by a real Kiln process.
 */
const CHROMIUM = '/usr/bin/chromium';

/** Open an operation, press "Try it out", fill its parameters, press Execute; the status Kiln answered. */
async function tryItOut(page: Page, operationId: string, parameters: Record<string, string> = {}): Promise<string> {
  const block = page.locator(`#${operationId}`);
  if (!(await block.locator('.try-out__btn, .execute').count())) await block.locator('.opblock-summary').click();
  const tryOut = block.locator('button.try-out__btn', { hasText: 'Try it out' });
  if (await tryOut.count()) await tryOut.click();
  for (const [name, value] of Object.entries(parameters)) {
    await block.locator(`tr[data-param-name="${name}"] input`).fill(value);
  }
  await block.locator('button.execute').click();
  const status = block.locator('.live-responses-table tr.response .response-col_status').first();
  await status.waitFor({ timeout: 15_000 });
  const text = (await status.textContent())?.trim() ?? '';
  await block.locator('button.btn-clear').click();
  return text;
}

describe.skipIf(!existsSync(CHROMIUM) || DATABASE_URL !== undefined)('/docs in headless Chromium', () => {
  const kilns = sharedKilns();
  let browser: Browser;
  let kiln: KilnProcess;
  let page: Page;

  beforeAll(async () => {
    kiln = await kilns.start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
    page = await browser.newPage();
    await page.goto(`${kiln.url}/docs`);
    await page.locator('#operations-signing-get_v1_ping').waitFor({ timeout: 20_000 });
  });
  afterAll(async () => {
    await browser?.close();
  });

  it('without a secret, a /v1 request gets 401 and the page says it is not signing', async () => {
    await page.locator('#kiln-secret').fill('');
    expect(await page.locator('#kiln-signing-status').textContent()).toContain('Not signing');
    expect(await tryItOut(page, 'operations-signing-get_v1_ping')).toBe('401');
  });

  it('with the pasted secret, "Try it out" is signed and accepted: a GET, a query with commas, a POST with a body', async () => {
    await page.locator('#kiln-secret').fill(TEST_SECRET);
    expect(await page.locator('#kiln-signing-status').textContent()).toContain('Signing /v1 requests');
    expect(await tryItOut(page, 'operations-signing-get_v1_ping')).toBe('200');
    // The example body of POST /v1/projects is in the editor already.
    expect(await tryItOut(page, 'operations-projects-post_v1_projects')).toBe('201');
    // A query with a comma (sent as %2C), signed over its canonical form.
    expect(
      await tryItOut(page, 'operations-projects-get_v1_projects_batch', { ids: 'prj_storefront,prj_missing' }),
    ).toBe('200');
    // Each request had its own nonce: the same operation again is not a replay.
    expect(await tryItOut(page, 'operations-signing-get_v1_ping')).toBe('200');
    // What the browser created is there for a signed client too.
    const created = await page.evaluate(`(async () => {
      const secret = document.querySelector('#kiln-secret').value.trim();
      const path = '/v1/projects/prj_storefront';
      const headers = await window.kilnDocsSigning.sign({ key: secret, method: 'GET', path, body: '' });
      return (await fetch(path, { headers })).status;
    })()`);
    expect(created).toBe(200);
  });

  it('never sends the secret itself', async () => {
    await page.locator('#kiln-secret').fill(TEST_SECRET);
    const sent: string[] = [];
    page.on('request', (request) => {
      sent.push(JSON.stringify(request.headers()) + (request.postData() ?? '') + request.url());
    });
    expect(await tryItOut(page, 'operations-signing-get_v1_ping')).toBe('200');
    expect(sent.length).toBeGreaterThan(0);
    for (const request of sent) expect(request).not.toContain(TEST_SECRET);
  });
});
