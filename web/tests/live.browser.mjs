// The live page in a real browser: Debian's chromium, headless, driven by playwright-core.
// Run by weir/tests/browser.rs, which starts `weir run` and produces records into Kafka when
// this script prints READY. Checks: "Hello …!" lines appear within 5 s of READY; a name made
// of HTML shows as text; the vital signs and the dead-letter panel move; the dead letters'
// values show only once the admin token is typed in; the page runs under its CSP with no
// violation. Saves a screenshot.
//
//   WEIR_URL=http://127.0.0.1:PORT/ WEIR_SCREENSHOT=out.png WEIR_XSS_GREETING='Hello <b>x</b>!' \
//   WEIR_ADMIN_TOKEN=… node web/tests/live.browser.mjs

import { chromium } from 'playwright-core';

const url = process.env.WEIR_URL;
const screenshot = process.env.WEIR_SCREENSHOT;
const xssText = process.env.WEIR_XSS_GREETING;
const adminToken = process.env.WEIR_ADMIN_TOKEN;
const executablePath = process.env.WEIR_CHROMIUM || '/usr/bin/chromium';
if (!url || !screenshot || !xssText || !adminToken) {
  console.error('set WEIR_URL, WEIR_SCREENSHOT, WEIR_XSS_GREETING and WEIR_ADMIN_TOKEN');
  process.exit(2);
}

function fail(message) {
  console.error('FAIL: ' + message);
  process.exitCode = 1;
  throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const alerts = [];
  page.on('dialog', async (d) => { alerts.push(d.message()); await d.dismiss(); });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // a CSP violation is reported on the console
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) errors.push(m.text()); });
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith(url.replace(/\/$/, ''))) external.push(r.url()); });

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 10000 });
  const before = await page.evaluate(() => ({
    clean: document.getElementById('clean').textContent,
    dead: document.getElementById('dead').textContent,
  }));
  console.log('READY');

  const t0 = Date.now();
  await page.waitForSelector('#greetings li', { timeout: 5000 })
    .catch(() => fail('no greeting within 5 s of the records being produced'));
  const firstAfter = Date.now() - t0;
  console.log(`first greeting after ${firstAfter} ms`);
  const greetings = await page.$$eval('#greetings li', (lis) => lis.map((li) => li.textContent));
  if (!greetings.every((g) => /^Hello .+!$/.test(g) || g.startsWith('…'))) fail('unexpected lines: ' + JSON.stringify(greetings));

  // the HTML name is shown as its own text and creates no element
  await page.waitForFunction((t) => [...document.querySelectorAll('#greetings li')].some((li) => li.textContent === t), xssText, { timeout: 10000 })
    .catch(() => fail('the greeting with the HTML name did not appear as text'));
  const injected = await page.$$eval('#greetings img, #greetings script, #dlq-rows img', (els) => els.length);
  if (injected !== 0) fail(`${injected} element(s) were created from record text`);
  if (alerts.length) fail('a dialog opened: ' + alerts.join(', '));

  // the vital signs move, and the dead-letter panel shows the bad records
  await page.waitForFunction((b) => document.getElementById('clean').textContent !== b.clean &&
    document.getElementById('dead').textContent !== b.dead, before, { timeout: 10000 })
    .catch(() => fail('the vital signs did not move'));
  // counts by reason show to anybody; the dead letters themselves only with the token
  await page.waitForFunction(() => document.querySelectorAll('#reasons li').length > 0 &&
    !document.getElementById('dlq-token').hidden, null, { timeout: 10000 })
    .catch(() => fail('the dead-letter counts or the token form did not show'));
  if (await page.$$eval('#dlq-rows tr', (trs) => trs.length) !== 0) fail('dead letters shown without the token');
  await page.fill('#token', 'not-the-token');
  await page.click('#dlq-token button');
  await page.waitForTimeout(2500);
  if (await page.$$eval('#dlq-rows tr', (trs) => trs.length) !== 0) fail('dead letters shown with a wrong token');
  await page.fill('#token', adminToken);
  await page.click('#dlq-token button');
  await page.waitForFunction(() => document.querySelectorAll('#dlq-rows tr').length > 0 &&
    document.getElementById('dlq-token').hidden, null, { timeout: 10000 })
    .catch(() => fail('the dead-letter panel stayed empty with the token'));
  // the charts of the last 10 minutes: drawn, above zero where records flowed, and moving
  const points = (id) => page.$eval('#chart-' + id + ' polyline', (p) => p.getAttribute('points'));
  await page.waitForFunction(() => ['in', 'clean', 'dead', 'lag'].every((id) =>
    document.querySelector('#chart-' + id + ' polyline').getAttribute('points').split(' ').length >= 3), null, { timeout: 10000 })
    .catch(() => fail('a chart has no line'));
  for (const id of ['in', 'clean', 'dead']) {
    const ys = (await points(id)).split(' ').map((p) => Number(p.split(',')[1]));
    if (!ys.some((y) => y < 57)) fail('the ' + id + ' chart never rose above zero: ' + ys.join(' '));
  }
  const drawn = await points('in');
  await page.waitForFunction((b) => document.querySelector('#chart-in polyline').getAttribute('points') !== b, drawn, { timeout: 10000 })
    .catch(() => fail('the records/s chart does not move'));
  const vitals = await page.evaluate(() => Object.fromEntries(['rate', 'clean', 'dead', 'lag', 'window', 'rows', 'clients', 'version']
    .map((id) => [id, document.getElementById(id).textContent])));
  console.log('vitals ' + JSON.stringify(vitals));
  // the running topology's version: the first 12 hex digits of its hash, as /api/topology has it
  const version = await (await fetch(url.replace(/\/$/, '') + '/api/topology')).json();
  if (!vitals.version.startsWith(version.version.hash.slice(0, 12) + ' (loaded ')) fail('the page shows version ' + JSON.stringify(vitals.version) + ', the server ' + version.version.hash);
  const deadRow = await page.$eval('#dlq-rows tr', (tr) => tr.textContent);
  console.log('latest dead letter: ' + deadRow);

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('screenshot ' + screenshot);
  if (external.length) fail('the page fetched from elsewhere: ' + external.join(', '));
  if (errors.length) fail('page errors: ' + errors.join('; '));
  console.log('PASS');
} catch (e) {
  if (!process.exitCode) { console.error('FAIL: ' + e.message); process.exitCode = 1; }
} finally {
  await browser.close();
}
