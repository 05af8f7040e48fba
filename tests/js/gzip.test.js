// `encoding: "gzip"`: the official socket.io-client receives each log:batch as a binary
// attachment, the gzip of the JSON array, and decodes it with zlib (as the page does with
// DecompressionStream); resumable subscriptions still get the offset as the last argument.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const zlib = require('node:zlib');
const { io } = require('socket.io-client');
const { startServer, token, collect, once } = require('./harness');

const logs = (device, n) => Array.from({ length: n }, (_, i) => ({ deviceId: device, level: 'INFO', message: `line ${i} of a fairly ordinary log message` }));

test('log:batch as a gzip binary attachment, plain and resumable', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  const socket = io(server.url, { auth: { token: token('gz') }, transports: ['websocket'] });
  t.after(() => socket.close());
  socket.on('connect', () => socket.emit('log:subscribe', { deviceIds: ['gz'], batch: true, encoding: 'gzip' }));
  const ack = await once(socket, 'log:subscribed');
  assert.strictEqual(ack.encoding, 'gzip');
  const batches = collect(socket, 'log:batch', 1);
  await server.ingest(logs('gz', 20));
  const [payload] = await batches;
  assert.ok(Buffer.isBuffer(payload), `a binary attachment, got ${typeof payload}`);
  const entries = JSON.parse(zlib.gunzipSync(payload).toString());
  assert.strictEqual(entries.length, 20);
  assert.strictEqual(entries[19].message, 'line 19 of a fairly ordinary log message');
  assert.ok(payload.length * 2 < Buffer.byteLength(JSON.stringify(entries)), 'smaller than its JSON');

  // Resumable: (attachment, offset).
  const resumable = io(server.url, { auth: { token: token('gz2') }, transports: ['websocket'] });
  t.after(() => resumable.close());
  resumable.on('connect', () => resumable.emit('log:subscribe', { deviceIds: ['gz2'], batch: true, encoding: 'gzip', resume: true }));
  await once(resumable, 'log:subscribed');
  const withOffset = collect(resumable, 'log:batch', 1);
  await server.ingest(logs('gz2', 5));
  const [[data, offset]] = await withOffset;
  assert.strictEqual(JSON.parse(zlib.gunzipSync(data).toString()).length, 5);
  assert.match(offset, /^[0-9a-f]+:\d+-\d+$/);

  // Without batch it is refused, saying why; without encoding, payloads stay JSON.
  const plain = io(server.url, { auth: { token: token('gz3') }, transports: ['websocket'] });
  t.after(() => plain.close());
  await once(plain, 'connect');
  const refused = await plain.emitWithAck('log:subscribe', { deviceIds: ['gz3'], encoding: 'gzip' });
  assert.strictEqual(refused.error.code, 'invalid_subscription');
  assert.strictEqual(refused.error.field, 'encoding');
  await plain.emitWithAck('log:subscribe', { deviceIds: ['gz3'], batch: true });
  const json = collect(plain, 'log:batch', 1);
  await server.ingest(logs('gz3', 2));
  const [array] = await json;
  assert.ok(Array.isArray(array) && array.length === 2);
});
