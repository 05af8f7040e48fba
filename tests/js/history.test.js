// History and resume with the official socket.io-client: offsets as the last argument,
// `since` (exactly what was missed, then live), `tail`, offsets the history no longer holds,
// a restart (new epoch), and sessions resumed through `auth` on reconnect.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { io } = require('socket.io-client');
const { startServer, token, once, sleep } = require('./harness');

function connect(server, auth, opts = {}) {
  const socket = io(server.url, { auth, transports: ['websocket'], reconnection: false, ...opts });
  return once(socket, 'connect').then(() => socket);
}

// Collect (entry, offset) pairs of `log:new` until `n` arrived.
function pairs(socket, n, ms = 10000) {
  return new Promise((resolve, reject) => {
    const out = [];
    const timer = setTimeout(() => reject(new Error(`only ${out.length}/${n} logs in ${ms} ms`)), ms);
    const on = (entry, offset) => {
      out.push([entry, offset]);
      if (out.length === n) { clearTimeout(timer); socket.off('log:new', on); resolve(out); }
    };
    socket.on('log:new', on);
  });
}

const logs = (device, from, n) => Array.from({ length: n }, (_, i) => ({ deviceId: device, message: `${device}-${from + i}` }));

test('offsets come as the last argument; plain subscriptions stay one-argument', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  const resumable = await connect(server, { token: token('r') });
  const plain = await connect(server, { token: token('p') });
  t.after(() => { resumable.close(); plain.close(); });
  const ack = await resumable.emitWithAck('log:subscribe', { deviceIds: ['d'], resume: true });
  assert.strictEqual(ack.success, true);
  assert.strictEqual(typeof ack.session, 'string');
  await plain.emitWithAck('log:subscribe', { deviceIds: ['d'] });
  const plainArgs = new Promise((r) => plain.once('log:new', (...args) => r(args)));
  const got = pairs(resumable, 3);
  await server.ingest(logs('d', 0, 3));
  const received = await got;
  const offsets = received.map(([, o]) => o);
  assert.ok(offsets.every((o) => /^[0-9a-f]+:\d+-\d+$/.test(o)), offsets.join(' '));
  assert.strictEqual(new Set(offsets).size, 3);
  assert.strictEqual((await plainArgs).length, 1, 'the seed shape: one argument');

  // Batch mode: (entries, offset of the last).
  const batcher = await connect(server, { token: token('b') });
  t.after(() => batcher.close());
  await batcher.emitWithAck('log:subscribe', { deviceIds: ['d'], batch: true, resume: true });
  const batch = new Promise((r) => batcher.once('log:batch', (entries, offset) => r([entries, offset])));
  await server.ingest(logs('d', 3, 2));
  const [entries, last] = await batch;
  assert.ok(entries.length >= 1 && /^[0-9a-f]+:\d+-\d+$/.test(last));
});

test('since: exactly what matched while away, then live, no gap and no duplicate', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  let socket = await connect(server, { token: token('u') });
  await socket.emitWithAck('log:subscribe', { deviceIds: ['mine'], resume: true });
  const first = pairs(socket, 5);
  await server.ingest(logs('mine', 0, 5));
  const offset = (await first)[4][1];
  socket.close();

  // Away: 100 logs for this device, 30 for another.
  for (let i = 0; i < 10; i++) {
    await server.ingest([...logs('mine', 5 + i * 10, 10), ...logs('other', i * 3, 3)]);
  }
  socket = await connect(server, { token: token('u') });
  t.after(() => socket.close());
  const replayed = pairs(socket, 100);
  const subscribed = once(socket, 'log:subscribed');
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['mine'], since: offset });
  assert.strictEqual(ack.recovered, true, JSON.stringify(ack));
  assert.strictEqual(ack.replayed, 100);
  assert.strictEqual((await subscribed).recovered, true);
  const got = (await replayed).map(([e]) => e.message);
  assert.deepStrictEqual(got, logs('mine', 5, 100).map((l) => l.message));
  // Then live.
  const live = pairs(socket, 1);
  await server.ingest(logs('mine', 105, 1));
  assert.strictEqual((await live)[0][0].message, 'mine-105');
  await sleep(200);

  // A malformed offset names the field.
  const bad = await socket.emitWithAck('log:subscribe', { since: 'yesterday' });
  assert.strictEqual(bad.success, false);
  assert.strictEqual(bad.error.field, 'since');
});

test('tail: the last N matching logs, then live', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  await server.ingest([...logs('a', 0, 20), ...logs('b', 0, 20)]);
  const socket = await connect(server, { token: token('u') });
  t.after(() => socket.close());
  const got = pairs(socket, 6);
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['a'], tail: 5 });
  assert.strictEqual(ack.replayed, 5);
  await server.ingest(logs('a', 20, 1));
  assert.deepStrictEqual((await got).map(([e]) => e.message), ['a-15', 'a-16', 'a-17', 'a-18', 'a-19', 'a-20']);
});

test('an offset older than the history kept: recovered false, and live goes on', async (t) => {
  const server = await startServer({ rate_limit: 100000, history_max_logs: 100 });
  t.after(() => server.stop());
  const socket = await connect(server, { token: token('u') });
  t.after(() => socket.close());
  await socket.emitWithAck('log:subscribe', { deviceIds: ['d'], resume: true });
  const first = pairs(socket, 1);
  await server.ingest(logs('d', 0, 1));
  const [[, offset]] = await first;
  await socket.emitWithAck('log:unsubscribe');
  // A 202 means accepted, not yet in the history: a watcher sees when all 150 are there (a
  // subscribe that overtook them would rightly still find the offset and recover).
  const watcher = await connect(server, { token: token('w') });
  t.after(() => watcher.close());
  await watcher.emitWithAck('log:subscribe', { deviceIds: ['d'] });
  const routed = pairs(watcher, 150);
  for (let i = 0; i < 3; i++) await server.ingest(logs('d', 1 + i * 50, 50));
  await routed;
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['d'], since: offset });
  assert.strictEqual(ack.success, true);
  assert.strictEqual(ack.recovered, false);
  const live = pairs(socket, 1);
  await server.ingest(logs('d', 200, 1));
  assert.strictEqual((await live)[0][0].message, 'd-200');
});

test('after a restart an old offset is from another epoch: recovered false', async (t) => {
  let server = await startServer({ rate_limit: 100000 });
  let socket = await connect(server, { token: token('u') });
  await socket.emitWithAck('log:subscribe', { resume: true });
  const first = pairs(socket, 1);
  await server.ingest(logs('d', 0, 1));
  const [[, offset]] = await first;
  socket.close();
  server.stop();
  server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  await server.ingest(logs('d', 1, 3));
  socket = await connect(server, { token: token('u') });
  t.after(() => socket.close());
  const ack = await socket.emitWithAck('log:subscribe', { since: offset });
  assert.strictEqual(ack.recovered, false, 'never a wrong replay');
  assert.strictEqual(ack.replayed, 0);
});

test('a dropped transport reconnects with auth as a function and resumes its session without a gap', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  let session = null;
  let offset = null;
  const got = [];
  const socket = io(server.url, {
    auth: (cb) => cb({ token: token('roamer'), session, offset }),
    transports: ['websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  t.after(() => socket.close());
  socket.on('log:new', (entry, off) => { got.push(entry.message); offset = off; });
  const subscribedEvents = [];
  socket.on('log:subscribed', (s) => subscribedEvents.push(s));
  await once(socket, 'connect');
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['d'], resume: true });
  session = ack.session;
  assert.ok(session);
  await server.ingest(logs('d', 0, 10));
  while (got.length < 10) await sleep(20);

  // The transport drops; logs keep coming while the client is away.
  const reconnected = once(socket.io, 'reconnect', 5000);
  socket.io.engine.close();
  await server.ingest(logs('d', 10, 20));
  await reconnected;
  while (subscribedEvents.length < 2) await sleep(20);
  const resumed = subscribedEvents[1];
  assert.strictEqual(resumed.recovered, true, JSON.stringify(resumed));
  assert.strictEqual(resumed.session, session);
  await server.ingest(logs('d', 30, 5));
  const deadline = Date.now() + 5000;
  while (got.length < 35 && Date.now() < deadline) await sleep(20);
  assert.deepStrictEqual(got, logs('d', 0, 35).map((l) => l.message), 'every log once, in order');

  // An explicit unsubscribe ends the session: a reconnect does not bring it back.
  await socket.emitWithAck('log:unsubscribe');
  const err = once(socket, 'error', 5000);
  const again = once(socket.io, 'reconnect', 5000);
  socket.io.engine.close();
  await again;
  assert.strictEqual((await err).code, 'session_expired');
});

test('a replay larger than the socket queue waits for room instead of dropping', async (t) => {
  const server = await startServer({ rate_limit: 100000, socket_queue: 8 });
  t.after(() => server.stop());
  await server.ingest(logs('big', 0, 1));
  const first = await connect(server, { token: token('u') });
  const got1 = pairs(first, 1);
  await first.emitWithAck('log:subscribe', { deviceIds: ['big'], tail: 1 });
  const [[, offset]] = await got1;
  first.close();
  for (let i = 0; i < 4; i++) await server.ingest(logs('big', 1 + i * 100, 100));
  const socket = await connect(server, { token: token('u') });
  t.after(() => socket.close());
  const dropped = [];
  socket.on('log:dropped', (d) => dropped.push(d));
  const got = pairs(socket, 400);
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['big'], since: offset });
  assert.strictEqual(ack.recovered, true);
  assert.strictEqual(ack.replayed, 400);
  assert.deepStrictEqual((await got).map(([e]) => e.message), logs('big', 1, 400).map((l) => l.message));
  await sleep(1200);
  assert.deepStrictEqual(dropped, []);
});

test("an admin's disconnect ends the session: the client cannot resume it", async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  const socket = await connect(server, { token: token('kicked') });
  const ack = await socket.emitWithAck('log:subscribe', { deviceIds: ['d'], resume: true });
  const r = await fetch(`${server.url}/api/ws/connections/${socket.id}`, {
    method: 'DELETE',
    headers: { 'x-api-key': require('./harness').ADMIN_KEY },
  });
  assert.strictEqual(r.status, 200);
  socket.close();
  const again = io(server.url, {
    auth: { token: token('kicked'), session: ack.session },
    transports: ['websocket'],
    reconnection: false,
  });
  t.after(() => again.close());
  const err = await once(again, 'error');
  assert.strictEqual(err.code, 'session_expired');
});
