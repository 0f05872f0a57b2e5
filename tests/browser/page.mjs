// Drives the operator page in Debian's headless chromium and prints what it saw as one JSON
// object on stdout; tests/page.rs starts the bridge, seeds activity and checks that JSON.
//
//   node tests/browser/page.mjs <bridge url> <token> <event id> <screenshot path>
//
// Exits non-zero (with the reason on stderr) when the page misbehaves: a request leaves the
// bridge's origin, the token lands anywhere but sessionStorage, a filter does not narrow, ...
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, token, eventId, screenshot] = process.argv.slice(2);
if (!url || !token || !eventId || !screenshot) {
  console.error('usage: page.mjs <bridge url> <token> <event id> <screenshot path>');
  process.exit(2);
}
const origin = new URL(url).origin;
const check = (ok, message) => { if (!ok) throw new Error(message); };

const profile = mkdtempSync(join(tmpdir(), 'scim-bridge-page-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1440, height: 1000 },
  acceptDownloads: true,
});

try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(10_000);
  const outside = [];
  const consoleErrors = [];
  await page.route('**/*', (route) => {
    const target = route.request().url();
    if (target.startsWith(origin + '/') || target.startsWith('blob:') || target.startsWith('data:')) return route.continue();
    outside.push(target);
    return route.abort();
  });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  const answer = await page.goto(url + '/');
  check(answer.ok(), `GET / answered ${answer.status()}`);
  const csp = answer.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'none'"), `no restrictive CSP: ${csp}`);
  await page.locator('#signin').waitFor({ state: 'visible' });
  check(await page.locator('#app').isHidden(), 'the page shows data before sign-in');

  // Sign in: the token goes to sessionStorage only.
  await page.fill('#token', token);
  await page.click('#signin-form button');
  await page.locator('#apps tbody tr[data-app-id]').first().waitFor();
  await page.locator('#logs tbody tr.log').first().waitFor();
  const storage = await page.evaluate(() => ({
    session: Object.keys(sessionStorage).map((k) => [k, sessionStorage.getItem(k)]),
    local: Object.keys(localStorage).length,
    cookie: document.cookie,
    field: document.querySelector('#token').value,
  }));
  check(storage.session.some(([, v]) => v === token), 'the token is not in sessionStorage');
  check(storage.local === 0 && storage.cookie === '', 'the token reached localStorage or a cookie');
  check(storage.field === '', 'the token stays in the sign-in field');
  check((await context.cookies()).length === 0, 'the bridge set a cookie');

  const apps = await page.$$eval('#apps tbody tr[data-app-id]', (rows) => rows.map((r) => ({
    id: r.dataset.appId,
    cells: [...r.cells].map((c) => c.innerText.trim()),
  })));
  const readLogs = () => page.$$eval('#logs tbody tr.log', (rows) => rows.map((r) => ({
    id: r.dataset.id,
    status: r.dataset.status,
    cells: [...r.cells].map((c) => c.innerText.trim()),
  })));
  const allLogs = await readLogs();

  // An entry's steps.
  const pushed = page.locator('#logs tbody tr.log[data-status="success"]').first();
  await pushed.click();
  await page.locator('#entry').waitFor({ state: 'visible' });
  await page.locator('#steps tbody tr').first().waitFor();
  const steps = await page.$$eval('#steps tbody tr', (rows) => rows.map((r) => [...r.cells].map((c) => c.innerText.trim())));
  const entryFields = await page.locator('#entry-fields').innerText();

  // The status filter narrows the log.
  await page.selectOption('#filters select[name=status]', 'deferred');
  await page.click('#filters button.primary');
  await page.waitForFunction(() => [...document.querySelectorAll('#logs tbody tr.log')].every((r) => r.dataset.status === 'deferred')
    && document.querySelectorAll('#logs tbody tr.log').length > 0);
  const deferredLogs = await readLogs();
  check(deferredLogs.length < allLogs.length, 'the status filter did not narrow the log');

  // The CSV export of the filtered view downloads with the token, not with a link.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csvPath = join(profile, 'export.csv');
  await download.saveAs(csvPath);
  const csvLines = readFileSync(csvPath, 'utf8').trim().split('\n');

  // The first app's attribute mapping, and a preview of what it makes of a principal.
  await page.locator('#mapping tbody tr').first().waitFor();
  const mapping = await page.$$eval('#mapping tbody tr', (rows) => rows.map((r) => [...r.cells].map((c) => c.innerText.trim())));
  await page.fill('#preview-principal', JSON.stringify({ userPrincipalName: 'Grace@Contoso.com', mail: 'grace@contoso.com', displayName: 'Grace Hopper' }));
  await page.click('#preview-form button');
  await page.waitForFunction(() => document.querySelector('#preview').textContent.includes('userName'));
  const preview = await page.locator('#preview').innerText();

  // Activation lookup.
  await page.fill('#eventId', eventId);
  await page.click('#lookup button');
  await page.locator('#activation-apps tbody tr[data-app-id]').first().waitFor();
  const activation = {
    summary: await page.locator('#activation-summary').innerText(),
    apps: await page.$$eval('#activation-apps tbody tr[data-app-id]', (rows) => rows.map((r) => ({
      id: r.dataset.appId,
      cells: [...r.cells].map((c) => c.innerText.trim()),
    }))),
  };

  // Back to the whole log with an entry open, for the screenshot.
  await page.click('#reset');
  await page.waitForFunction((n) => document.querySelectorAll('#logs tbody tr.log').length >= n, allLogs.length);
  await page.locator('#logs tbody tr.log[data-status="success"]').first().click();
  await page.locator('#steps tbody tr').first().waitFor();
  await page.screenshot({ path: screenshot, fullPage: true });

  // A reload keeps the session; signing out forgets the token.
  await page.reload();
  await page.locator('#logs tbody tr.log').first().waitFor();
  await page.click('#signout');
  const afterSignOut = await page.evaluate(() => Object.keys(sessionStorage).length);
  check(afterSignOut === 0, 'signing out left the token in sessionStorage');
  check(await page.locator('#signin').isVisible(), 'signing out did not show the sign-in form');

  check(outside.length === 0, `requests left the bridge's origin: ${outside.join(', ')}`);
  check(consoleErrors.length === 0, `errors in the page: ${consoleErrors.join('; ')}`);
  console.log(JSON.stringify({ apps, allLogs, deferredLogs, steps, entryFields, activation, csvLines, mapping, preview }));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
