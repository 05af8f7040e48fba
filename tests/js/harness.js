// Starts the real logstream binary on an ephemeral port for the JS-client tests.
'use strict';
const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');

const SECRET = 'js-test-secret-0123456789abcdef';
const API_KEY = 'js-api-key';
const ADMIN_KEY = 'js-admin-key';
const BIN = process.env.LOGSTREAM_BIN || path.join(__dirname, '..', '..', 'target', 'debug', 'logstream');

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

// HS256 token signed with the test secret (no JWT library needed for this).
function token(sub, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + 3600, ...extra }));
  const sig = crypto.createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// `dev: true` starts it in development mode (it makes its own keys, kept in `dataDir`).
// Each server keeps its state (history, sessions) in `dataDir`, a new directory unless given:
// a restart with the same `dataDir` (and `port`) is the same server again.
function startServer(sets = {}, { dev = false, dataDir, port = 0 } = {}) {
  const args = ['serve', '--host', '127.0.0.1', '--port', String(port)];
  for (const [k, v] of Object.entries(sets)) args.push('--set', `${k}=${v}`);
  const dir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'logstream-js-'));
  const keys = dev
    ? {}
    : { LOGSTREAM_JWT_SECRET: SECRET, LOGSTREAM_API_KEY: API_KEY, LOGSTREAM_ADMIN_KEY: ADMIN_KEY };
  const env = {
    ...process.env,
    ...keys,
    LOGSTREAM_DATA_DIR: dir,
    LOGSTREAM_PLUGINS_DIR: path.join(__dirname, '..', '..', 'plugins'),
    RUST_LOG: 'warn',
  };
  const child = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start')), 60000);
    child.on('error', reject);
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      const m = line.match(/^logstream listening on (\S+)/);
      if (m) {
        clearTimeout(timer);
        const url = m[1];
        const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
        resolve({
          url,
          child,
          exited,
          dataDir: dir,
          port: Number(new URL(url).port),
          async status(deviceId, status, key = API_KEY) {
            const r = await fetch(`${url}/api/devices/${encodeURIComponent(deviceId)}/status`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', 'x-api-key': key },
              body: JSON.stringify({ status }),
            });
            return r.status;
          },
          async ingest(logs, key = API_KEY) {
            const r = await fetch(`${url}/api/logs`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', 'x-api-key': key },
              body: JSON.stringify(logs),
            });
            return { status: r.status, body: await r.json() };
          },
          stop() { child.kill('SIGKILL'); },
          // SIGTERM, resolved once it has exited.
          async terminate() { child.kill('SIGTERM'); return exited; },
        });
      }
    });
  });
}

// Resolve with the first `n` payloads of `event` on `socket`.
function collect(socket, event, n, ms = 10000) {
  return new Promise((resolve, reject) => {
    const out = [];
    const timer = setTimeout(() => reject(new Error(`only ${out.length}/${n} ${event} in ${ms} ms`)), ms);
    socket.on(event, (...args) => {
      out.push(args.length === 1 ? args[0] : args);
      if (out.length === n) { clearTimeout(timer); resolve(out); }
    });
  });
}

function once(emitter, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} in ${ms} ms`)), ms);
    emitter.once(event, (v) => { clearTimeout(timer); resolve(v); });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { startServer, token, collect, once, sleep, API_KEY, ADMIN_KEY };
