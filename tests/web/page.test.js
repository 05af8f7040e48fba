// The live-tail page in a real headless Chromium (Debian's `chromium`), driven by
// playwright-core, against the real server: sign in, subscribe, rows for ingested logs,
// filters, pause and resume with the "N new" badge, a drop notice, device status, the entry
// detail, log text that is never HTML, 100 000 lines in a virtualized list, and a screenshot.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const path = require('node:path');
const fs = require('node:fs');
const { chromium } = require('playwright-core');
const { startServer, token, ADMIN_KEY } = require('../js/harness');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(__dirname, '..', '..', 'target', 'tmp', 'page-test');

async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a sandboxed CI container; and no calls to Google's services on a closed network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

const logs = (device, level, prefix, n) => Array.from({ length: n }, (_, i) => ({ deviceId: device, level, message: `${prefix}-${i}` }));

async function messages(page) {
  return page.$$eval('#rows .r:not(.note) .m', (els) => els.map((e) => e.textContent));
}

test('the live-tail page, end to end', async (t) => {
  // A live rate the page cannot raise (it asks for the most the server grants).
  const server = await startServer({ rate_limit: 50, max_client_rate_limit: 50 });
  t.after(() => server.stop());
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // Frames the page receives: its batches come as gzip binary attachments.
  const frames = { text: [], binary: 0 };
  page.on('websocket', (ws) => ws.on('framereceived', (f) => {
    if (typeof f.payload === 'string') frames.text.push(f.payload); else frames.binary++;
  }));

  // Sign in.
  await page.goto(server.url);
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', token('page-user'));
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#status[data-state=live]');

  // Rows appear for ingested logs.
  await server.ingest([...logs('pump-1', 'INFO', 'hello', 3), { deviceId: 'pump-2', level: 'ERROR', message: 'overheated' }]);
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'overheated'));
  assert.deepStrictEqual(await messages(page), ['hello-0', 'hello-1', 'hello-2', 'overheated']);
  assert.strictEqual(await page.textContent('#rows .r:last-child .l'), 'ERROR');
  assert.ok(frames.binary >= 1, 'the logs came as a gzip attachment');
  assert.ok(frames.text.some((t) => /^451-\["log:batch",\{"_placeholder":true,"num":0\}/.test(t)), frames.text.join('\n'));
  assert.ok(!frames.text.some((t) => t.includes('hello-0')), 'and not as JSON text');

  // The filter bar re-subscribes: one device, ERROR and WARN only.
  await page.fill('#f-devices', 'pump-2');
  await page.click('#f-levels [data-level=ERROR]');
  await page.click('#f-levels [data-level=WARN]');
  await page.fill('#f-tail', '0');
  await page.click('#apply');
  await page.waitForFunction(() => document.querySelectorAll('#rows .r').length === 0);
  await new Promise((r) => setTimeout(r, 300));
  await server.ingest([
    { deviceId: 'pump-1', level: 'ERROR', message: 'not mine' },
    { deviceId: 'pump-2', level: 'INFO', message: 'too quiet' },
    { deviceId: 'pump-2', level: 'WARN', message: 'pressure high' },
  ]);
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'pressure high'));
  assert.deepStrictEqual(await messages(page), ['pressure high']);

  // Pause: logs keep arriving into the buffer, the badge counts them; resume follows again.
  await page.click('#pause');
  await server.ingest(logs('pump-2', 'WARN', 'while-paused', 5));
  await page.waitForFunction(() => document.querySelector('#newbadge').textContent === '5 new');
  assert.strictEqual(await page.isVisible('#newbadge'), true);
  await page.click('#newbadge');
  await page.waitForSelector('#newbadge', { state: 'hidden' });
  assert.strictEqual((await messages(page)).length, 6);

  // Over the rate limit (50/s): a drop notice, inline and on top.
  await server.ingest(logs('pump-2', 'ERROR', 'burst', 80));
  await page.waitForFunction(() => [...document.querySelectorAll('.notice')].some((n) => /logs dropped: rate limit/.test(n.textContent)), null, { timeout: 5000 });
  const noteRows = await page.$$eval('#rows .r.note .m', (els) => els.map((e) => e.textContent));
  assert.ok(noteRows.some((n) => /\d+ logs dropped: rate limit/.test(n)), noteRows.join('|'));

  // Device status panel.
  assert.strictEqual(await server.status('pump-2', 'online'), 202);
  await page.waitForFunction(() => /pump-2\s*online/.test(document.querySelector('#devices').textContent));

  // Log text is text: markup in a message is shown, not run.
  await page.fill('#f-devices', '');
  await page.click('#f-levels [data-level=ERROR]');
  await page.click('#f-levels [data-level=WARN]');
  await page.click('#apply');
  await new Promise((r) => setTimeout(r, 300));
  await server.ingest([{ deviceId: 'evil', level: 'WARN', message: '<img src=x onerror="window.pwned=1">' }]);
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent.startsWith('<img')));
  assert.strictEqual(await page.$$eval('#rows img', (els) => els.length), 0);
  assert.strictEqual(await page.evaluate(() => window.pwned), undefined);

  // The whole entry, pass-through fields included, on click; highlight by regex.
  await server.ingest([{ deviceId: 'pump-9', level: 'INFO', message: 'valve 7 opened', plant: 'north', attempt: 2 }]);
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'valve 7 opened'));
  await page.click('#rows .r:last-child');
  const detail = JSON.parse(await page.textContent('#detail'));
  assert.strictEqual(detail.plant, 'north');
  assert.strictEqual(detail.attempt, 2);
  await page.fill('#v-highlight', 'valve \\d');
  await page.waitForFunction(() => document.querySelector('#rows mark')?.textContent === 'valve 7');

  // The server drops the connection; logs arrive meanwhile; the page reconnects and resumes
  // from its last offset: they are shown, once.
  const conns = await (await fetch(`${server.url}/api/ws/connections`, { headers: { 'x-api-key': ADMIN_KEY } })).json();
  const id = (conns.data.connections || conns.data)[0].id;
  const del = await fetch(`${server.url}/api/ws/connections/${id}`, { method: 'DELETE', headers: { 'x-api-key': ADMIN_KEY } });
  assert.strictEqual(del.status, 200);
  await server.ingest([{ deviceId: 'pump-9', level: 'INFO', message: 'while away 1' }, { deviceId: 'pump-9', level: 'INFO', message: 'while away 2' }]);
  await page.waitForFunction(() => /reconnected; 2 missed logs replayed/.test(document.querySelector('#notices').textContent), null, { timeout: 15000 });
  await page.waitForSelector('#status[data-state=live]');
  const after = await messages(page);
  assert.deepStrictEqual(after.slice(-2), ['while away 1', 'while away 2']);
  assert.strictEqual(after.filter((m) => m === 'valve 7 opened').length, 1, 'nothing twice');

  fs.mkdirSync(SHOTS, { recursive: true });
  const shot = path.join(SHOTS, 'page.png');
  await page.screenshot({ path: shot });
  assert.ok(fs.statSync(shot).size > 10000, 'a screenshot was saved');
  console.log(`screenshot: ${shot}`);
  assert.deepStrictEqual(errors, []);
});

test('100 000 lines stay responsive: the list renders only what is in view', async (t) => {
  const server = await startServer({ rate_limit: 1000000 });
  t.after(() => server.stop());
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await page.goto(server.url);
  await page.fill('#token', token('bulk'));
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#status[data-state=live]');
  await new Promise((r) => setTimeout(r, 300));
  const started = Date.now();
  for (let b = 0; b < 20; b++) {
    const { status } = await server.ingest(Array.from({ length: 5000 }, (_, i) => ({ deviceId: `d${i % 50}`, message: `line ${b * 5000 + i}` })));
    assert.strictEqual(status, 202);
  }
  // Every line is either in the list or counted in a drop notice (a page that cannot keep up
  // is told so by the server, never silently behind).
  const tally = () => page.evaluate(() => {
    const shown = state.entries.filter((e) => e.kind === 'log').length;
    const dropped = state.entries.filter((e) => e.kind === 'note')
      .reduce((n, e) => n + (parseInt(e.text, 10) || 0), 0);
    return { shown, dropped };
  });
  await page.waitForFunction(() => {
    const shown = state.entries.filter((e) => e.kind === 'log').length;
    const dropped = state.entries.filter((e) => e.kind === 'note').reduce((n, e) => n + (parseInt(e.text, 10) || 0), 0);
    return shown + dropped === 100000;
  }, null, { timeout: 120000, polling: 250 });
  const { shown, dropped } = await tally();
  const took = Date.now() - started;
  const domRows = await page.$$eval('#rows .r', (els) => els.length);
  assert.ok(domRows < 100, `virtualized: ${domRows} rows in the DOM`);
  assert.ok(shown > 0, 'lines arrived');
  // Filtering what is shown over 100 000 entries.
  const t0 = Date.now();
  await page.fill('#v-include', 'line 9999');
  await page.waitForFunction(() => /^\d+ shown/.test(document.querySelector('#counts').textContent) && document.querySelectorAll('#rows .r').length < 20);
  const filterMs = Date.now() - t0;
  const heap = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize : 0));
  console.log(`100000 lines: ${shown} shown, ${dropped} reported dropped, in ${took} ms; ${domRows} DOM rows; filter over them in ${filterMs} ms; JS heap ${(heap / 1048576).toFixed(1)} MB`);
});

test('a screenshot of a busy stream (for the README)', async (t) => {
  const server = await startServer({ rate_limit: 1000 });
  t.after(() => server.stop());
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 640 } });
  await page.goto(server.url);
  await page.fill('#token', token('operator'));
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#status[data-state=live]');
  await new Promise((r) => setTimeout(r, 300));
  const devices = ['pump-01', 'pump-02', 'valve-17', 'gateway-a', 'sensor-88'];
  const levels = ['INFO', 'INFO', 'DEBUG', 'WARN', 'INFO', 'ERROR', 'INFO', 'WARN'];
  const texts = ['pressure 4.2 bar', 'heartbeat ok', 'read 128 registers', 'temperature 81°C above threshold',
    'flow 12.5 l/min', 'modbus timeout after 3 retries', 'firmware 2.4.1 running', 'battery 18%'];
  for (const d of devices) await server.status(d, d === 'sensor-88' ? 'offline' : 'online');
  const batch = Array.from({ length: 40 }, (_, i) => ({ deviceId: devices[i % 5], level: levels[i % 8], message: texts[(i * 3) % 8], site: 'north' }));
  await server.ingest(batch);
  await page.waitForFunction(() => /^40 shown/.test(document.querySelector('#counts').textContent));
  await page.fill('#v-highlight', 'timeout|\\d+°C');
  await page.click('#rows .r:nth-last-child(3)');
  fs.mkdirSync(SHOTS, { recursive: true });
  const shot = path.join(SHOTS, 'overview.png');
  await page.screenshot({ path: shot });
  assert.ok(fs.statSync(shot).size > 10000);
  console.log(`screenshot: ${shot}`);
});

test('a page of another origin gets neither the development token nor a socket', async (t) => {
  const http = require('node:http');
  const os = require('node:os');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'logstream-dev-'));
  const server = await startServer({}, { dev: true, dataDir });
  t.after(() => { server.stop(); fs.rmSync(dataDir, { recursive: true, force: true }); });
  // The server's own page gets it (same origin).
  const browser = await launch();
  t.after(() => browser.close());
  const own = await browser.newPage();
  await own.goto(server.url);
  const mine = await own.evaluate(async () => (await fetch('/api/dev/token')).json());
  assert.ok(mine.data && mine.data.token, JSON.stringify(mine));
  const devToken = mine.data.token;

  // Another local origin: a page served on another port, as any local web app would be.
  const evil = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end('<!doctype html><title>elsewhere</title>');
  });
  await new Promise((r) => evil.listen(0, '127.0.0.1', r));
  t.after(() => evil.close());
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${evil.address().port}/`);
  const target = server.url;
  const stolen = await page.evaluate(async (url) => {
    try {
      const r = await fetch(`${url}/api/dev/token`);
      return { read: true, status: r.status, body: await r.text() };
    } catch (e) {
      return { read: false, error: String(e) };
    }
  }, target);
  assert.equal(stolen.read, false, `the token was readable across origins: ${JSON.stringify(stolen)}`);
  // Even with the token in hand, a socket from that origin is refused.
  const answer = await page.evaluate(({ url, token }) => new Promise((resolve) => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    ws.onmessage = (m) => {
      if (m.data.startsWith('0')) ws.send(`40${JSON.stringify({ token })}`);
      else if (m.data.startsWith('4')) { resolve(m.data); ws.close(); }
    };
    ws.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 5000);
  }), { url: target, token: devToken });
  assert.match(answer, /^44.*Origin not allowed/, answer);
});

test('the server crashes and restarts: the page resumes with nothing missed', async (t) => {
  const first = await startServer({});
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(first.url);
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', token('restart-user'));
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#status[data-state=live]');
  await first.ingest(logs('pump-1', 'INFO', 'before', 3));
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'before-2'));

  // SIGKILL, as in a crash; then the same server again (port and data directory), which
  // takes logs before the page is back.
  first.stop();
  await first.exited;
  await page.waitForSelector('#status[data-state=offline]');
  const second = await startServer({}, { dataDir: first.dataDir, port: first.port });
  t.after(() => second.stop());
  await second.ingest(logs('pump-1', 'WARN', 'while-down', 2));
  await page.waitForFunction(() => /reconnected/.test(document.querySelector('#notices').textContent), null, { timeout: 20000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'while-down-1'), null, { timeout: 10000 });
  const notices = await page.textContent('#notices');
  assert.doesNotMatch(notices, /no longer/, notices);
  assert.match(notices, /reconnected; \d+ missed logs replayed/, notices);
  await second.ingest(logs('pump-1', 'INFO', 'after', 1));
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'after-0'));
  assert.deepStrictEqual(await messages(page), ['before-0', 'before-1', 'before-2', 'while-down-0', 'while-down-1', 'after-0']);
  assert.deepStrictEqual(errors, []);
});

// Each state is saved for docs/ (README's screenshots): DOCS_SHOTS=docs/screenshots to refresh.
const DOCS = process.env.DOCS_SHOTS || SHOTS;
async function shoot(page, name) {
  fs.mkdirSync(DOCS, { recursive: true });
  const file = path.join(DOCS, `${name}.png`);
  await page.screenshot({ path: file });
  assert.ok(fs.statSync(file).size > 5000, file);
}

async function signIn(page, url, tok) {
  await page.goto(url);
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', tok);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#status[data-state=live]');
}

test('the page, round 2: every line of a burst, the defects people saw, histogram, URL, keys', async (t) => {
  // The seed's default live rate (100/s): the page asks for more.
  const server = await startServer({ stats_interval_ms: 200 });
  t.after(() => server.stop());
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await page.emulateMedia({ colorScheme: 'dark' });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await signIn(page, server.url, token('people'));

  // Nothing yet: a hint, not a blank area.
  await page.waitForSelector('#empty:not([hidden])');
  assert.match(await page.textContent('#empty'), /waiting for matching logs/);

  // 400 logs in one request: all 400 shown (81 were, at 100/s), none dropped.
  await server.ingest(logs('burst', 'INFO', 'b', 400));
  await page.waitForFunction(() => /^400 shown/.test(document.querySelector('#counts').textContent), null, { timeout: 10000 });
  assert.strictEqual(await page.$$eval('#rows .r.note', (els) => els.length), 0, 'no drop notes');
  assert.ok(await page.isHidden('#empty'));

  // The header counts clients ("? clients" before).
  await page.waitForFunction(() => /^\d+ clients/.test(document.querySelector('#stats').textContent), null, { timeout: 5000 });
  // Devices seen in logs are listed, not only those that sent a status.
  await page.waitForFunction(() => /burst\s*seen/.test(document.querySelector('#devices').textContent));
  // The volume histogram drew the burst.
  await page.waitForFunction(() => /\d+ logs\/s/.test(document.querySelector('#volume-now').textContent), null, { timeout: 5000 });
  const painted = await page.evaluate(() => {
    const c = document.querySelector('#histogram');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
    return n;
  });
  assert.ok(painted > 0, 'bars drawn');
  await shoot(page, 'burst-and-histogram');

  // Keyboard: j selects (and pauses), Enter shows the detail, space resumes, ? helps.
  await page.click('#top .brand');
  await page.keyboard.press('j');
  await page.waitForFunction(() => /"message": "b-0"/.test(document.querySelector('#detail').textContent));
  await page.keyboard.press('j');
  await page.waitForFunction(() => /"message": "b-1"/.test(document.querySelector('#detail').textContent));
  await page.keyboard.press('k');
  await page.waitForFunction(() => /"message": "b-0"/.test(document.querySelector('#detail').textContent));
  assert.strictEqual(await page.textContent('#pause'), 'resume', 'moving pauses the follow');
  await page.keyboard.press(' ');
  await page.waitForFunction(() => document.querySelector('#pause').textContent === 'pause');
  await page.keyboard.press('?');
  await page.waitForSelector('#help:not([hidden])');
  await shoot(page, 'keyboard-help');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#help', { state: 'hidden' });
  await page.keyboard.press('/');
  assert.strictEqual(await page.evaluate(() => document.activeElement.id), 'f-keywords');
  await page.keyboard.press('Escape');

  // A bad params text leaves an error notice; apply while paused, with a detail open: the
  // next successful apply follows again, clears the notice and the detail, counts no "new".
  await page.selectOption('#f-filter', 'regex');
  assert.ok(await page.isDisabled('#f-levels [data-level=ERROR]'), 'chips mean nothing to a named filter');
  await page.fill('#f-params', '{not json');
  await page.click('#apply');
  await page.waitForFunction(() => /params are not JSON/.test(document.querySelector('#notices').textContent));
  await page.selectOption('#f-filter', 'default');
  assert.ok(!(await page.isDisabled('#f-levels [data-level=ERROR]')));
  await page.click('#pause');
  await page.fill('#f-devices', 'pump-2');
  await page.click('#f-levels [data-level=ERROR]');
  await page.fill('#f-keywords', 'timeout');
  await page.fill('#f-tail', '100');
  await page.click('#apply');
  await page.waitForFunction(() => document.querySelector('#pause').textContent === 'pause');
  assert.strictEqual(await page.textContent('#notices'), '', 'old notices gone');
  assert.strictEqual(await page.textContent('#detail'), 'click a row', 'old detail gone');
  assert.ok(await page.isHidden('#newbadge'));
  await page.waitForSelector('#empty:not([hidden])');
  await shoot(page, 'waiting-for-matching-logs');

  // The filter is in the URL; reloaded, the view is the same.
  const query = new URL(page.url()).searchParams;
  assert.deepStrictEqual([query.get('devices'), query.get('levels'), query.get('q')], ['pump-2', 'ERROR', 'timeout']);
  await page.reload();
  await page.waitForSelector('#status[data-state=live]');
  assert.strictEqual(await page.inputValue('#f-devices'), 'pump-2');
  assert.ok(await page.$eval('#f-levels [data-level=ERROR]', (b) => b.classList.contains('on')));
  await new Promise((r) => setTimeout(r, 300));
  await server.ingest([
    { deviceId: 'pump-2', level: 'ERROR', message: 'modbus timeout' },
    { deviceId: 'pump-2', level: 'INFO', message: 'modbus timeout but info' },
    { deviceId: 'pump-1', level: 'ERROR', message: 'timeout elsewhere' },
  ]);
  await page.waitForFunction(() => [...document.querySelectorAll('#rows .m')].some((e) => e.textContent === 'modbus timeout'));
  await new Promise((r) => setTimeout(r, 300));
  assert.deepStrictEqual(await messages(page), ['modbus timeout']);

  // A shared link opens the same view.
  const shared = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await shared.goto(`${server.url}/?devices=burst&levels=INFO`);
  await shared.fill('#token', token('colleague'));
  await shared.click('#signin-form button[type=submit]');
  await shared.waitForSelector('#status[data-state=live]');
  assert.strictEqual(await shared.inputValue('#f-devices'), 'burst');
  await shared.close();

  // A phone: the message column is readable and a tapped row's detail shows.
  await page.setViewportSize({ width: 390, height: 760 });
  await page.click('#f-levels [data-level=ERROR]');
  await page.fill('#f-devices', '');
  await page.fill('#f-keywords', '');
  await page.click('#apply');
  await page.waitForFunction(() => document.querySelectorAll('#rows .r').length > 5);
  const layout = () => page.evaluate(() => {
    const rect = (e) => (e ? Math.round(e.getBoundingClientRect().width) : -1);
    const rows = [...document.querySelectorAll('#rows .r:not(.note)')];
    return { m: rows.map((r) => rect(r.querySelector('.m'))), r: rect(rows[0]), list: rect(document.querySelector('#list')), body: document.body.className, w: innerWidth };
  });
  await page.waitForFunction(() => {
    const w = [...document.querySelectorAll('#rows .r:not(.note) .m')].map((e) => e.getBoundingClientRect().width);
    return w.length && Math.min(...w) > 120;
  }, null, { timeout: 5000 }).catch(async () => assert.fail(`message column at 390px: ${JSON.stringify(await layout())}`));
  await page.click('#rows .r:last-child');
  await page.waitForSelector('#detail', { state: 'visible' });
  await shoot(page, 'phone');
  await page.click('#detail-close');

  // Light theme, following the browser.
  await page.setViewportSize({ width: 1280, height: 760 });
  await page.emulateMedia({ colorScheme: 'light' });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.strictEqual(bg, 'rgb(255, 255, 255)');
  await shoot(page, 'light');
  await page.emulateMedia({ colorScheme: 'dark' });
  assert.notStrictEqual(await page.evaluate(() => getComputedStyle(document.body).backgroundColor), 'rgb(255, 255, 255)');
  assert.deepStrictEqual(errors, []);
});

test('the operator view: connections, plugins, instances, refreshed live, for an admin token only', async (t) => {
  const server = await startServer({});
  t.after(() => server.stop());
  const browser = await launch();
  t.after(() => browser.close());
  // Not an admin: no operator button.
  const user = await browser.newPage();
  await signIn(user, server.url, token('plain-user'));
  assert.ok(await user.isHidden('#operator-toggle'));
  const admin = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  await admin.emulateMedia({ colorScheme: 'dark' });
  const errors = [];
  admin.on('pageerror', (e) => errors.push(String(e)));
  await signIn(admin, server.url, token('ops', { role: 'admin' }));
  await admin.click('#operator-toggle');
  await admin.waitForFunction(() => document.querySelectorAll('#op-connections tbody tr').length >= 2, null, { timeout: 10000 });
  const users = await admin.$$eval('#op-connections tbody tr td:first-child', (els) => els.map((e) => e.textContent).sort());
  assert.deepStrictEqual(users, ['ops', 'plain-user']);
  const plugins = await admin.$$eval('#op-plugins tbody tr td:first-child', (els) => els.map((e) => e.textContent));
  assert.ok(plugins.includes('default') && plugins.includes('regex'), plugins.join(','));
  await admin.waitForFunction(() => /total\s*2/.test(document.querySelector("#op-stats").textContent) && /bus history\s*disk/.test(document.querySelector('#op-stats').textContent), null, { timeout: 10000 });
  await shoot(admin, 'operator');
  // Disable a plugin from the view, and enable it again; the built-in filter cannot be.
  const regexRow = () => admin.locator('#op-plugins tbody tr', { hasText: 'regex' });
  await regexRow().locator('button', { hasText: 'disable' }).click();
  await admin.waitForFunction(() => [...document.querySelectorAll('#op-plugins tbody tr')].some((r) => /^regex/.test(r.textContent) && /disabled/.test(r.textContent)), null, { timeout: 10000 });
  await regexRow().locator('button', { hasText: 'enable' }).click();
  await admin.waitForFunction(() => [...document.querySelectorAll('#op-plugins tbody tr')].some((r) => /^regex/.test(r.textContent) && /active/.test(r.textContent)), null, { timeout: 10000 });
  const refused = await fetch(`${server.url}/api/plugins/default/disable`, { method: 'POST', headers: { 'x-api-key': ADMIN_KEY } });
  assert.strictEqual(refused.status, 403);
  // Each connection shows its transport, queued bytes and drops.
  const cells = await admin.$$eval('#op-connections thead th', (els) => els.map((e) => e.textContent));
  assert.deepStrictEqual(cells.slice(0, 8), ['user', 'devices', 'transport', 'address', 'instance', 'delivered', 'queued', 'dropped']);
  await admin.waitForFunction(() => [...document.querySelectorAll('#op-connections tbody tr')].some((r) => /websocket/.test(r.textContent)), null, { timeout: 10000 });

  // Refreshed live: a third connection shows without a click.
  const third = await browser.newPage();
  await signIn(third, server.url, token('late-comer'));
  await admin.waitForFunction(() => [...document.querySelectorAll('#op-connections tbody tr')].some((r) => /late-comer/.test(r.textContent)), null, { timeout: 10000 });
  // Disconnect the other user from the view: its page goes offline, then comes back.
  const plainRow = admin.locator('#op-connections tbody tr', { hasText: 'plain-user' });
  await plainRow.locator('button').click();
  await user.waitForSelector('#status:not([data-state=live])', { timeout: 10000 });
  await user.waitForSelector('#status[data-state=live]', { timeout: 15000 });
  assert.deepStrictEqual(errors, []);
});
