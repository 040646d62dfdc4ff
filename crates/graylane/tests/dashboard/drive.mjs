// Drives the graylane dashboard in Debian's chromium, as a person would, against a real
// `graylane serve` started by crates/graylane/tests/dashboard.rs (which passes the URLs and
// tokens in the environment and reads this script's output).
//
// Output: one `ok N - what` line per check, `not ok N - what` and the error on the first
// failure (exit 1), and `dashboard: all N checks passed` at the end (exit 0).
//
// The server is stopped and started again by the Rust test in the middle (to see the
// "connection lost" banner come and go): this script prints `@@stop-server` and waits for
// `stopped` on stdin, then `@@start-server` and waits for `started`.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.log(`not ok - the environment variable ${name} is not set (run this through cargo test --test dashboard)`);
    process.exit(2);
  }
  return v;
};

const URL_ = env('DASHBOARD_URL'); // http://127.0.0.1:PORT/
const PROXY = env('PROXY_URL'); // http://127.0.0.1:PORT
const VIEWER = env('VIEWER_TOKEN');
const OPERATOR = env('OPERATOR_TOKEN');
const ADMIN = env('ADMIN_TOKEN');
const SHOTS = env('SCREENSHOT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// Every wait is bounded: one UI expectation, one whole run.
const WAIT_MS = 15000;
const RUN_MS = 240000;
setTimeout(() => {
  console.log(`not ok - the whole run took longer than ${RUN_MS / 1000} s`);
  process.exit(1);
}, RUN_MS).unref();

// ----- the protocol with the Rust test -----

const lines = [];
const waiters = [];
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const w = waiters.shift();
  if (w) w(line.trim());
  else lines.push(line.trim());
});
async function ask(command, answer, ms = 60000) {
  console.log(`@@${command}`);
  const line = lines.length ? lines.shift() : await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer to @@${command} within ${ms} ms`)), ms);
    waiters.push((l) => { clearTimeout(t); resolve(l); });
  });
  if (line !== answer) throw new Error(`@@${command}: expected ${answer}, got ${line}`);
}

// ----- checks -----

let n = 0;
async function check(name, fn) {
  n += 1;
  const started = Date.now();
  try {
    await fn();
  } catch (err) {
    console.log(`not ok ${n} - ${name}`);
    console.log(String(err && err.stack ? err.stack : err));
    throw err;
  }
  console.log(`ok ${n} - ${name} (${Date.now() - started} ms)`);
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** Polls fn until it returns a truthy value (bounded), and returns it. */
async function until(what, fn, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ----- talking to the server directly (another person, and the proxy) -----

async function api(method, p, token, body) {
  const resp = await fetch(new URL(p, URL_), {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10000),
  });
  return { status: resp.status, json: await resp.json().catch(() => null) };
}

/** How many of `users` distinct users the proxy sends to `version` of payment. */
async function share(version, users = 200, headers = {}) {
  let count = 0;
  for (let i = 0; i < users; i += 1) {
    const resp = await fetch(`${PROXY}/api/payment/x`, {
      headers: { 'x-user-id': `share-user-${i}`, ...headers },
      signal: AbortSignal.timeout(10000),
    });
    await resp.arrayBuffer();
    assert(resp.status === 200, `proxy answered ${resp.status}`);
    if (resp.headers.get('x-graylane-version') === version) count += 1;
  }
  return count;
}

// ----- the browser -----

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'graylane-dashboard-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    colorScheme: 'light',
    timeout: 60000,
  });
} catch (err) {
  console.log(`not ok - chromium (${CHROMIUM}) did not start: ${err.message}`);
  process.exit(1);
}
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(WAIT_MS);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));

const $ = (sel) => page.locator(sel);
const textOf = async (sel) => (await $(sel).textContent()) ?? '';
const expectText = (sel, fragment, ms = WAIT_MS) =>
  until(`${sel} to contain ${JSON.stringify(fragment)}`, async () => (await textOf(sel)).includes(fragment), ms);

async function signIn(token, who) {
  await page.goto(URL_);
  await $('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expectText('#who', who);
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await $('#signin').waitFor({ state: 'visible' });
}

async function openRelease(service) {
  await page.goto(`${URL_}#/releases/${service}`);
  await $('#release-step').waitFor();
}

/** Clicks an action button, checks what the confirmation says, confirms. */
async function act(selector, says, reason = '') {
  await $(selector).click();
  await $('#confirm').waitFor({ state: 'visible' });
  if (says) await expectText('#confirm-text', says);
  if (reason) await $('#confirm-reason').fill(reason);
  await $('#confirm-ok').click();
  await $('#confirm').waitFor({ state: 'hidden' });
}

/** Counts the canvas pixels close to a version's colour (the line was drawn). */
async function pixelsOf(canvasSel, seriesIndex) {
  return page.evaluate(([sel, i]) => {
    const canvas = document.querySelector(sel);
    const probe = document.createElement('canvas').getContext('2d');
    probe.fillStyle = getComputedStyle(document.documentElement).getPropertyValue(`--series-${i}`).trim();
    probe.fillRect(0, 0, 1, 1);
    const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let p = 0; p < data.length; p += 4) {
      if (data[p + 3] > 200 && Math.abs(data[p] - r) + Math.abs(data[p + 1] - g) + Math.abs(data[p + 2] - b) < 40) count += 1;
    }
    return count;
  }, [canvasSel, seriesIndex]);
}

const points = async (id) => Number(await $(`#${id}`).getAttribute('data-points'));

try {
  await check('a wrong token is refused with a clear message', async () => {
    await page.goto(URL_);
    await $('#signin').waitFor({ state: 'visible' });
    await $('#token').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expectText('#signin-message', 'That token was refused');
    await expectText('#signin-message', 'not one of the configured admin tokens');
    assert(await $('#nav').isHidden(), 'the sections stay hidden');
    assert(!(await page.evaluate(() => sessionStorage.getItem('graylane.token'))), 'a refused token is not kept');
  });

  await check('a kept token the server no longer accepts leads back to sign-in with a message', async () => {
    await page.evaluate(() => sessionStorage.setItem('graylane.token', 'an-expired-token'));
    await page.reload();
    await expectText('#signin-message', 'no longer accepts');
    assert(await $('#signin').isVisible(), 'the sign-in form is shown');
    assert(!(await page.evaluate(() => sessionStorage.getItem('graylane.token'))), 'the refused token is forgotten');
  });

  await check('a viewer signs in (token in sessionStorage only) and sees every release', async () => {
    await signIn(VIEWER, 'vera · viewer');
    const stored = await page.evaluate(() => [sessionStorage.getItem('graylane.token'), localStorage.length]);
    assert(stored[0] === VIEWER && stored[1] === 0, `token kept in sessionStorage only: ${stored}`);
    const card = $('article[data-service="payment"]');
    await until('the payment card at step 1 of 4', async () => (await card.textContent()).includes('step 1 of 4'));
    const text = await card.textContent();
    for (const part of ['canary', 'progressing', 'stable 100%', 'canary 0%', 'Analysis:', 'Waiting for a person to promote']) {
      assert(text.includes(part), `the card shows ${part}: ${text}`);
    }
    await $('article[data-service="search"]').waitFor();
    await until('the experiment card with its SRM badge', async () => /SRM (ok|alert)/.test(await $('article[data-service="search"]').textContent()));
  });

  await check('an adaptive release\'s step plan shows each change of weight with its figures, and the budget spent', async () => {
    await openRelease('orders');
    await expectText('#plan-note', 'Adaptive: 20% to 100%');
    // Healthy at 20%, it clears and grows by grow² (all its data is at that weight).
    await until('the growth to 80% in the plan', async () => (await textOf('#step-plan')).includes('canary 80%'), 90000);
    const grow = await textOf('#step-plan li:nth-child(2)');
    for (const part of ['grow', 'every check clear: 20% → 80%', 'grow 2², proven at this weight', 'error_rate:']) {
      assert(grow.includes(part), `the growth shows ${part}: ${grow}`);
    }
    assert((await textOf('#step-plan li:first-child')).includes('canary 20%'), 'the path starts at start');
    // The test now makes the candidate fail every request: it looks worse, its requests are
    // spent, and the budget (or the failed analysis) stops it.
    await until('the release to stop', async () => (await textOf('#release-summary')).includes('aborted'), 30000);
    await until('the stop in the plan', async () => (await textOf('#step-plan li:last-child')).includes('canary 0%'));
    const stop = await textOf('#step-plan li:last-child');
    assert(/budget_spent|analysis_failed/.test(stop) && stop.includes('error_rate:'), `the stop names its figures: ${stop}`);
    await until('the spent budget', async () => {
      const spent = /exposure budget (\d+) of 40 requests spent/.exec(await textOf('#plan-note'));
      return spent && Number(spent[1]) > 0;
    });
    await page.goto(`${URL_}#/releases`);
  });

  await check('a viewer sees no action buttons, no slider and no revert', async () => {
    await page.getByRole('link', { name: 'payment' }).click();
    await $('#release-step').waitFor();
    await expectText('#transitions', 'start');
    assert(await $('.actions').count() === 0, 'no actions panel');
    assert(await $('button[data-action]').count() === 0, 'no action button');
    assert(await $('#weight-slider').count() === 0, 'no slider');
    await page.getByRole('link', { name: 'Configuration' }).click();
    await until('the revisions', async () => (await $('.revisions tbody tr').count()) >= 2);
    assert(await $('button[data-revert]').count() === 0, 'no revert button');
  });

  await check('a forged action with the viewer token is refused with 403', async () => {
    const answer = await page.evaluate(async (token) => {
      const resp = await fetch('/api/v1/releases/payment/promote', {
        method: 'POST', headers: { Authorization: `Bearer ${token}` },
      });
      return { status: resp.status, body: await resp.json() };
    }, VIEWER);
    assert(answer.status === 403 && answer.body.code === 'forbidden' && answer.body.required_role === 'operator',
      `403 forbidden: ${JSON.stringify(answer)}`);
    const r = await api('GET', '/api/v1/releases/payment', VIEWER);
    assert(r.json.step === 0, `nothing changed: step ${r.json.step}`);
    await signOut();
  });

  await check('an operator sees live charts per version, updating', async () => {
    await signIn(OPERATOR, 'otto · operator');
    await openRelease('payment');
    for (const id of ['chart-rps', 'chart-errors', 'chart-p50', 'chart-p99']) {
      await until(`${id} to draw points`, async () => (await points(id)) > 0, 20000);
    }
    await expectText('#chart-rps', 'stable');
    await expectText('#chart-rps', 'canary'); // forced test traffic reaches the canary at 0%
    // Each version's line is on the canvases, in its colour (summed over the four charts:
    // a young series is a few pixels wide in a 15-minute window).
    const drawn = async (i) => {
      let sum = 0;
      for (const id of ['chart-rps', 'chart-errors', 'chart-p50', 'chart-p99']) sum += await pixelsOf(`#${id} canvas`, i);
      return sum;
    };
    const stablePixels = await until('stable drawn on the charts', async () => drawn(0));
    const canaryPixels = await until('canary drawn on the charts', async () => drawn(1));
    const before = await points('chart-rps');
    await until('the chart to grow by polling', async () => (await points('chart-rps')) > before, 6000);
    console.log(`# requests chart: ${before}+ points; ${stablePixels} stable and ${canaryPixels} canary pixels drawn`);
    await expectText('#analysis-decision', 'Latest decision');
  });

  await check('promote (confirmed) moves the step, and the real traffic split follows', async () => {
    const before = await share('canary');
    assert(before === 0, `step 1 (0%): no user on canary, got ${before}`);
    await act('button[data-action="promote"]', 'from step 1 to step 2 of 4', 'dashboard test');
    await expectText('#action-result', 'done');
    await expectText('#release-step', 'step 2 of 4');
    await expectText('#release-weights', 'canary 20%');
    const plan = await $('#step-plan').innerText();
    for (const want of ['Step 1', 'canary 0%', 'canary 20%', 'now · pause manual', 'canary 50%', 'Step 4', 'canary 100%']) {
      assert(plan.includes(want), `the step plan shows "${want}": ${JSON.stringify(plan)}`);
    }
    const current = await $('#step-plan li[aria-current="step"]').innerText();
    assert(current.includes('Step 2'), `step 2 is marked current: ${JSON.stringify(current)}`);
    const after = await share('canary');
    assert(after >= 20 && after <= 60, `about 20% of 200 users on canary, got ${after}`);
    console.log(`# canary users of 200: ${before} before, ${after} after promote`);
  });

  await check('the weight slider (keyboard too) sets the weight after confirmation', async () => {
    await $('#weight-slider').fill('35');
    assert(await $('#weight-number').inputValue() === '35', 'the number follows the slider');
    await $('#weight-slider').focus();
    await page.keyboard.press('ArrowRight');
    assert(await $('#weight-number').inputValue() === '36', 'the arrow key moves the slider');
    await page.keyboard.press('ArrowLeft');
    // Polling must not undo what the person chose before confirming.
    await page.waitForTimeout(2500);
    assert(await $('#weight-slider').inputValue() === '35', 'the slider keeps the chosen value while polling');
    await act('#weight-apply', '35% of payment', 'slider');
    await expectText('#release-weights', 'canary 35%');
    await expectText('#release-weights', 'set by hand');
    const after = await share('canary');
    assert(after >= 45 && after <= 95, `about 35% of 200 users on canary, got ${after}`);
    console.log(`# canary users of 200 at 35%: ${after}`);
  });

  await check('an action the state no longer allows shows the API\'s sentence and changes nothing', async () => {
    await $('button[data-action="pause"]').click();
    await $('#confirm').waitFor({ state: 'visible' });
    // Someone else pauses the release while this dialog is open.
    const other = await api('POST', '/api/v1/releases/payment/pause', OPERATOR, { reason: 'someone else' });
    assert(other.status === 200, `the other pause: ${JSON.stringify(other)}`);
    await $('#confirm-ok').click();
    await expectText('#action-result', 'makes no sense');
    await expectText('#action-result', 'allowed now');
    const r = await api('GET', '/api/v1/releases/payment', VIEWER);
    assert(r.json.state === 'paused' && r.json.step === 1 && r.json.weights.canary === 35, `unchanged: ${JSON.stringify(r.json)}`);
    await until('the resume button', async () => $('button[data-action="resume"]').isVisible());
    await act('button[data-action="resume"]', 'goes on');
    await expectText('#release-summary', 'progressing');
  });

  await check('screenshots of the release page (1280 px, 390 px, dark)', async () => {
    await expectText('#transitions', 'someone else');
    await page.waitForTimeout(1500); // one more series poll
    const wide = path.join(SHOTS, 'release-page.png');
    await page.screenshot({ path: wide, fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(500);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    assert(overflow <= 391, `nothing wider than a 390 px phone: ${overflow}`);
    await page.screenshot({ path: path.join(SHOTS, 'release-page-390.png'), fullPage: true });
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.waitForTimeout(1500);
    await page.screenshot({ path: path.join(SHOTS, 'release-page-dark.png'), fullPage: true });
    await page.emulateMedia({ colorScheme: 'light' });
    console.log(`# screenshot: ${wide}`);
  });

  await check('abort sends every user, forced test traffic too, to stable', async () => {
    await act('button[data-action="abort"]', 'goes to stable at once', 'dashboard abort');
    await expectText('#release-summary', 'aborted');
    await expectText('#action-result', 'done');
    assert(await $('button[data-action="retry"]').isVisible(), 'retry is offered');
    assert(await $('button[data-action="abort"]').isHidden(), 'abort is not offered again');
    const canary = await share('canary', 100);
    const forced = await share('canary', 5, { 'x-release-phase': 'canary' });
    assert(canary === 0 && forced === 0, `all on stable: ${canary} users, ${forced} forced`);
    await expectText('#transitions', 'dashboard abort');
  });

  await check('when the admin API stops, a banner says so and the actions wait; the page recovers by itself', async () => {
    assert(await $('button[data-action="retry"]').isEnabled(), 'retry can be clicked');
    await ask('stop-server', 'stopped');
    await until('the connection-lost banner', async () => (await $('#banner').isVisible())
      && (await textOf('#banner')).includes('Connection to the admin API lost'));
    assert(await $('button[data-action="retry"]').isDisabled(), 'no action while the API is gone');
    assert((await $('button[data-action="retry"]').getAttribute('title')).includes('does not answer'),
      'the disabled button says why');
    await ask('start-server', 'started');
    await until('the banner to go away', async () => $('#banner').isHidden(), 20000);
    await until('retry to be offered again', async () => $('button[data-action="retry"]').isEnabled());
    const before = await points('chart-rps');
    await until('the charts to update again', async () => (await points('chart-rps')) !== before, 10000);
    await expectText('#release-summary', 'aborted');
    await signOut();
  });

  await check('an admin sees an experiment\'s variants, exposures and SRM check', async () => {
    await signIn(ADMIN, 'ada · admin');
    await page.getByRole('link', { name: 'Experiments' }).click();
    await $('#srm').waitFor();
    await expectText('#srm', 'SRM');
    for (const variant of ['control', 'treatment']) {
      await until(`exposures of ${variant}`, async () => Number(await textOf(`tr[data-variant="${variant}"] .exposures`)) > 0);
    }
  });

  await check('a diff between two revisions', async () => {
    await page.getByRole('link', { name: 'Configuration' }).click();
    await until('revisions 1 and 2', async () => (await $('.revisions tbody tr').count()) === 2);
    await expectText('#config-yaml', 'catalog');
    await $('#diff-from').selectOption('1');
    await $('#diff-to').selectOption('2');
    await page.getByRole('button', { name: 'Show diff' }).click();
    await expectText('#config-diff', '+++ revision 2');
    const added = await $('#config-diff .add').allTextContents();
    assert(added.some((l) => l.includes('catalog')), `the added service in green: ${added}`);
  });

  await check('revert shows a dry-run preview first, then applies', async () => {
    await $('button[data-revert="1"]').click();
    await $('#confirm').waitFor({ state: 'visible' });
    await expectText('#confirm-text', 'dry run');
    const removed = await $('#confirm-preview .del').allTextContents();
    assert(removed.some((l) => l.includes('catalog')), `the preview removes catalog: ${removed}`);
    const during = await api('GET', '/api/v1/config/revisions', VIEWER);
    assert(during.json.current === 2, `the dry run applied nothing: current ${during.json.current}`);
    await $('#confirm-ok').click();
    await expectText('#config-result', 'Reverted: revision 3');
    await until('the YAML without catalog', async () => !(await textOf('#config-yaml')).includes('catalog'));
    await until('three revisions', async () => (await $('.revisions tbody tr').count()) === 3);
  });

  await check('the audit log filters by service, actor and kind', async () => {
    await page.getByRole('link', { name: 'Audit log' }).click();
    await until('entries', async () => (await $('.audit tbody tr[data-seq]').count()) > 3);
    // The server filters (so that entries older than the newest 500 are found): each choice is
    // a search with it, and the table shows that search's answer.
    const choose = async (select, value, param) => {
      const searched = page.waitForResponse((r) => {
        const u = new URL(r.url());
        return u.pathname === '/api/v1/audit' && u.searchParams.get(param) === value && r.ok();
      }, { timeout: WAIT_MS });
      await $(select).selectOption(value);
      await searched;
    };
    const column = (name) => $(`.audit tbody td.${name}`).allTextContents();
    await choose('#filter-actor', 'otto', 'actor');
    await until('only otto', async () => {
      const actors = await column('actor');
      return actors.length >= 4 && actors.every((a) => a === 'otto');
    });
    await expectText('#audit-count', `${(await column('actor')).length} matching entries`);
    await choose('#filter-kind', 'abort', 'action');
    await until('one abort by otto', async () => {
      const [actors, actions] = [await column('actor'), await column('action')];
      return actors.join() === 'otto' && actions.join() === 'abort';
    });
    await expectText('#audit-count', '1 matching entry.');
    await choose('#filter-service', 'search', 'service');
    await expectText('.audit tbody', 'No entry matches');
    await expectText('#audit-count', '0 matching entries');
    await page.getByRole('button', { name: 'Show all' }).click();
    await until('every entry again', async () => new Set(await column('actor')).size > 1);
    await expectText('#audit-count', 'latest entries');
  });

  await check('keyboard: the sections are reachable with Tab, focus is visible', async () => {
    await page.goto(`${URL_}#/releases`);
    await $('article[data-service="payment"]').waitFor();
    const seen = [];
    for (let i = 0; i < 12; i += 1) {
      await page.keyboard.press('Tab');
      seen.push(await page.evaluate(() => {
        const el = document.activeElement;
        const outline = getComputedStyle(el).outlineStyle;
        return `${el.tagName}:${el.textContent.trim().slice(0, 20)}:${outline}`;
      }));
    }
    for (const name of ['Releases', 'Configuration', 'Audit log', 'payment']) {
      assert(seen.some((s) => s.includes(`:${name}:`)), `Tab reaches ${name}: ${seen.join(' | ')}`);
    }
    assert(seen.filter((s) => s.startsWith('A:')).every((s) => !s.endsWith(':none')), `focus is visible: ${seen.join(' | ')}`);
  });

  await check('an error rate of 100% tops the error-rate axis at 100%', async () => {
    await ask('fail-canary', 'failing');
    await openRelease('search');
    // Version b of the experiment is the canary upstream, which now answers every request
    // with a 500.
    await until('the chart to show b failing every request', async () => {
      const legend = await textOf('#chart-errors .legend');
      return /b\s*100%/.test(legend);
    }, 20000);
    const top = await $('#chart-errors').getAttribute('data-top');
    assert(top === '1', `the error-rate axis tops at 100%, not ${Number(top) * 100}%`);
  });

  await check('no script error on any page', async () => {
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  });
} catch (err) {
  try {
    await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true });
    console.log(`# failure screenshot: ${path.join(SHOTS, 'failure.png')}`);
  } catch { /* the browser may be gone */ }
  await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}

await context.close();
fs.rmSync(profile, { recursive: true, force: true });
console.log(`dashboard: all ${n} checks passed`);
process.exit(0);
