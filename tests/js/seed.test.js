// The seed's own test script (task 06, "使用 Socket.IO 客户端测试"), run against logstream
// with the official socket.io-client, plus the contract details a browser client relies on.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { io } = require('socket.io-client');
const { startServer, token, collect, once, sleep } = require('./harness');

test('the seed test script receives the seed curl log', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  // As in the seed: default transports (polling, then upgrade), auth.token.
  const socket = io(server.url, { auth: { token: token('seed-user') } });
  t.after(() => socket.close());
  const subscribed = once(socket, 'log:subscribed');
  socket.on('connect', () => {
    socket.emit('log:subscribe', { deviceIds: ['device-001'], levels: ['ERROR', 'WARN'] });
  });
  const ack = await subscribed;
  assert.strictEqual(ack.success, true);
  const received = collect(socket, 'log:new', 1);
  const { status, body } = await server.ingest({
    deviceId: 'device-001', timestamp: '2025-01-03T10:00:00Z', level: 'ERROR', message: 'Test error log',
  });
  assert.strictEqual(status, 202);
  assert.deepStrictEqual(body, { success: true, accepted: 1 });
  const [log] = await received;
  assert.strictEqual(log.deviceId, 'device-001');
  assert.strictEqual(log.message, 'Test error log');
  assert.strictEqual(log.level, 'ERROR');
  assert.strictEqual(log.timestamp, '2025-01-03T10:00:00Z');
});

test('connect_error carries the seed messages', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  for (const [auth, expected] of [[{}, 'Authentication required'], [{ token: 'x.y.z' }, 'Authentication failed']]) {
    const socket = io(server.url, { auth, reconnection: false, transports: ['websocket'] });
    const err = await once(socket, 'connect_error');
    assert.strictEqual(err.message, expected);
    socket.close();
  }
});

test('polling-only clients get batches, pause and resume with acknowledgements', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  const socket = io(server.url, { auth: { token: token('u') }, transports: ['polling'] });
  t.after(() => socket.close());
  await once(socket, 'connect');
  const ack = await socket.timeout(5000).emitWithAck('log:subscribe', { deviceIds: ['d'], batch: true });
  assert.strictEqual(ack.success, true);
  assert.strictEqual(ack.batch, true);
  assert.deepStrictEqual(await socket.timeout(5000).emitWithAck('log:pause'), { success: true, paused: true });
  const logs = Array.from({ length: 80 }, (_, i) => ({ deviceId: 'd', message: String(i) }));
  await server.ingest(logs);
  let early = 0;
  socket.on('log:batch', (b) => { early += b.length; });
  await sleep(300);
  assert.strictEqual(early, 0, 'nothing while paused');
  socket.off('log:batch');
  const got = [];
  const done = new Promise((resolve) => socket.on('log:batch', (b) => { got.push(...b); if (got.length >= 80) resolve(); }));
  await socket.timeout(5000).emitWithAck('log:resume');
  await done;
  assert.deepStrictEqual(got.map((l) => Number(l.message)), Array.from({ length: 80 }, (_, i) => i));
});

test('a bad subscription answers error { code, message } and keeps the connection', async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const socket = io(server.url, { auth: { token: token('u') }, transports: ['websocket'] });
  t.after(() => socket.close());
  await once(socket, 'connect');
  const err = once(socket, 'error');
  socket.emit('log:subscribe', { levels: ['VERBOSE'] });
  const e = await err;
  assert.strictEqual(e.code, 'invalid_params');
  assert.strictEqual(e.field, 'params');
  assert.match(e.message, /levels\[0\]/);
  assert.ok(socket.connected);
});

test('SIGTERM: every accepted log arrives, then a clean transport close', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  const socket = io(server.url, { auth: { token: token('u') }, transports: ['websocket'], reconnection: false });
  t.after(() => socket.close());
  await once(socket, 'connect');
  await socket.timeout(5000).emitWithAck('log:subscribe', { deviceIds: ['d'] });
  const received = collect(socket, 'log:new', 300);
  const disconnected = once(socket, 'disconnect', 15000);
  await server.ingest(Array.from({ length: 300 }, (_, i) => ({ deviceId: 'd', message: String(i) })));
  server.child.kill('SIGTERM');
  const logs = await received;
  assert.deepStrictEqual(logs.map((l) => Number(l.message)), Array.from({ length: 300 }, (_, i) => i));
  assert.strictEqual(await disconnected, 'transport close');
  const { code } = await server.exited;
  assert.strictEqual(code, 0);
});
