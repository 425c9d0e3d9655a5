// Opens the gateway's approval page in the distribution's headless Chromium, keeps a
// screenshot, enters an owner token and presses a button, then prints what happened as one
// JSON line. Used by tests/tests/gateway_page.rs; never talks to anything but the URL given.
//
//   node approve-page.js <approval_url> <owner_token> <screenshot.png> <approve|deny>
//
// An owner token of `-` types nothing (a sign-in link's page carries its own credential).
//
// CHROMIUM overrides the browser binary (default /usr/bin/chromium).
'use strict';
const { chromium } = require('playwright-core');

async function main() {
  const [url, token, screenshot, button] = process.argv.slice(2);
  if (!url || token === undefined || !screenshot || !['approve', 'deny', 'approve-24h', 'approve-always'].includes(button)) {
    throw new Error('usage: approve-page.js <approval_url> <owner_token> <screenshot.png> <approve|deny|approve-24h|approve-always>');
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
    const first = await page.goto(url, { waitUntil: 'load' });
    const headers = first.headers();
    const permitText = await page.innerText('#permit');
    const styled = await page.evaluate(() => getComputedStyle(document.querySelector('pre')).backgroundColor);
    await page.screenshot({ path: screenshot, fullPage: true });
    // Errors on the page itself (a CSP violation would be one), before the decision.
    const pageProblems = problems.slice();
    const tokenFields = await page.locator('#owner_token').count();
    const signedIn = await page.locator('#signed-in').count() ? await page.innerText('#signed-in') : null;
    if (token !== '-') await page.fill('#owner_token', token);
    const [answer] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      page.click('#' + button),
    ]);
    const afterText = await page.innerText('body');
    await page.screenshot({ path: screenshot.replace(/\.png$/, '-after.png'), fullPage: true });
    process.stdout.write(JSON.stringify({
      status: first.status(),
      csp: headers['content-security-policy'] || null,
      referrerPolicy: headers['referrer-policy'] || null,
      setCookie: await first.headerValue('set-cookie'),
      permitText,
      tokenFields,
      signedIn,
      styled,
      afterStatus: answer ? answer.status() : null,
      afterText,
      problems: pageProblems,
    }) + '\n');
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
