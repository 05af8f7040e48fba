// The official socket.io-client over TLS (WebSocket and long-polling) against the server
// serving HTTPS and WSS with a certificate of a CA made here, given to the client as `ca`.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const https = require('node:https');
const { execFileSync } = require('node:child_process');
const { io } = require('socket.io-client');
const { startServer, token, collect, once, API_KEY } = require('./harness');

function pki() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logstream-js-tls-'));
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=js test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  fs.writeFileSync(path.join(dir, 's.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost',
    '-keyout', 's.key', '-out', 's.csr');
  openssl('x509', '-req', '-in', 's.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-extfile', 's.ext', '-out', 's.pem');
  return { dir, ca: fs.readFileSync(path.join(dir, 'ca.pem')) };
}

// POST logs over HTTPS with the test CA (the harness's fetch trusts the public roots only).
function ingest(url, ca, logs) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify(logs);
    const req = https.request(`${url}/api/logs`, {
      method: 'POST', ca,
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY, 'content-length': Buffer.byteLength(body) },
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
    req.on('error', reject);
    req.end(body);
  });
}

test('socket.io-client over WSS and HTTPS long-polling with a private CA', async (t) => {
  const { dir, ca } = pki();
  const server = await startServer({ tls_cert: path.join(dir, 's.pem'), tls_key: path.join(dir, 's.key') });
  t.after(() => { server.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
  assert.match(server.url, /^https:\/\//);
  const url = server.url.replace('127.0.0.1', 'localhost');
  for (const transports of [['websocket'], ['polling']]) {
    const socket = io(url, { auth: { token: token('js-tls') }, transports, ca });
    t.after(() => socket.close());
    socket.on('connect', () => socket.emit('log:subscribe', { deviceIds: [`tls-${transports[0]}`] }));
    await once(socket, 'log:subscribed');
    const received = collect(socket, 'log:new', 1);
    assert.strictEqual(await ingest(url, ca, [{ deviceId: `tls-${transports[0]}`, message: 'over tls' }]), 202);
    const [log] = await received;
    assert.strictEqual(log.message, 'over tls');
    socket.close();
  }
  // Without the CA the client is refused by its own TLS check.
  const stranger = io(url, { auth: { token: token('js-tls') }, transports: ['websocket'], reconnection: false });
  t.after(() => stranger.close());
  const error = await once(stranger, 'connect_error');
  assert.ok(error, 'no connection without trusting the CA');
});
