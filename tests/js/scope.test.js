// Who sees what, with the official socket.io-client: device scopes in tokens, enforced by the
// server whatever the client subscribes to; tokens that expire, and tokens refreshed in time.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { io } = require('socket.io-client');
const { startServer, token, collect, once, sleep } = require('./harness');

function connect(server, tok) {
  const socket = io(server.url, { auth: { token: tok }, transports: ['websocket'], reconnection: false });
  return once(socket, 'connect').then(() => socket);
}

// Every `log:new` device id that arrives within `ms`.
async function devicesWithin(socket, ms) {
  const seen = [];
  const on = (log) => seen.push(log.deviceId);
  socket.on('log:new', on);
  await sleep(ms);
  socket.off('log:new', on);
  return seen;
}

test('a token scoped to plant-a/* sees plant-a only, whatever it subscribes to', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  const ann = await connect(server, token('ann', { devices: ['plant-a/*'] }));
  const admin = await connect(server, token('root', { role: 'admin' }));
  t.after(() => { ann.close(); admin.close(); });

  // Everything: narrowed to plant-a.
  assert.strictEqual((await ann.emitWithAck('log:subscribe', {})).success, true);
  assert.strictEqual((await admin.emitWithAck('log:subscribe', {})).success, true);
  // Explicit devices outside the scope: refused, naming the device; the old one stays.
  const refused = await ann.emitWithAck('log:subscribe', { deviceIds: ['plant-a/1', 'plant-b/x'] });
  assert.strictEqual(refused.success, false);
  assert.strictEqual(refused.error.code, 'forbidden');
  assert.strictEqual(refused.error.field, 'deviceIds');
  assert.match(refused.error.message, /plant-b\/x/);

  const adminGot = collect(admin, 'log:new', 2);
  const annSees = devicesWithin(ann, 800);
  await server.ingest([
    { deviceId: 'plant-b/1', message: 'b1' },
    { deviceId: 'plant-a/1', message: 'a1' },
  ]);
  assert.deepStrictEqual(await annSees, ['plant-a/1']);
  assert.deepStrictEqual((await adminGot).map((l) => l.deviceId), ['plant-b/1', 'plant-a/1']);

  // A named filter that matches everything cannot widen the scope.
  const ack = await ann.emitWithAck('log:subscribe', { filter: 'regex', params: { pattern: '.*' } });
  assert.strictEqual(ack.success, true, JSON.stringify(ack));
  const viaRegex = devicesWithin(ann, 800);
  await server.ingest([
    { deviceId: 'plant-b/2', message: 'b2' },
    { deviceId: 'plant-a/2', message: 'a2' },
  ]);
  assert.deepStrictEqual(await viaRegex, ['plant-a/2']);

  // Device status only for devices in scope; the admin hears both.
  const statuses = [];
  ann.on('device:status', (s) => statuses.push(s.deviceId));
  const adminStatuses = collect(admin, 'device:status', 2);
  assert.strictEqual(await server.status('plant-b/1', 'offline'), 202);
  assert.strictEqual(await server.status('plant-a/1', 'online'), 202);
  assert.strictEqual((await adminStatuses).length, 2);
  await sleep(300);
  assert.deepStrictEqual(statuses, ['plant-a/1']);
});

test('with default_device_scope empty, a token without devices sees nothing and is told', async (t) => {
  const server = await startServer({ default_device_scope: '' });
  t.after(() => server.stop());
  const bob = await connect(server, token('bob'));
  t.after(() => bob.close());
  const ack = await bob.emitWithAck('log:subscribe', {});
  assert.strictEqual(ack.success, false);
  assert.strictEqual(ack.error.code, 'forbidden');
  assert.match(ack.error.message, /no devices/);
  const seen = devicesWithin(bob, 500);
  await server.ingest({ deviceId: 'd', message: 'x' });
  assert.deepStrictEqual(await seen, []);
  // A token that names its devices still works there.
  const carol = await connect(server, token('carol', { devices: ['d'] }));
  t.after(() => carol.close());
  assert.strictEqual((await carol.emitWithAck('log:subscribe', {})).success, true);
});

test('an expiring token is warned, then disconnected; a refreshed one stays', async (t) => {
  const server = await startServer({ auth_expiry_notice_ms: 1500 });
  t.after(() => server.stop());
  const soon = () => Math.floor(Date.now() / 1000) + 3;
  const late = await connect(server, token('late', { exp: soon() }));
  const keen = await connect(server, token('keen', { exp: soon(), devices: ['a/*', 'b/*'] }));
  t.after(() => { late.close(); keen.close(); });
  assert.strictEqual((await keen.emitWithAck('log:subscribe', {})).success, true);
  const keenWarned = once(keen, 'auth:expired', 4000);
  const lateWarned = once(late, 'auth:expired', 4000);
  const lateGone = once(late, 'disconnect', 6000);

  await keenWarned;
  // Another user's token does not refresh this connection.
  const wrong = await keen.emitWithAck('auth:refresh', { token: token('mallory') });
  assert.strictEqual(wrong.success, false);
  assert.strictEqual(wrong.error.code, 'forbidden');
  // A fresh token for the same user, narrower: applies at once.
  const fresh = await keen.emitWithAck('auth:refresh', { token: token('keen', { devices: ['a/*'] }) });
  assert.strictEqual(fresh.success, true, JSON.stringify(fresh));
  assert.deepStrictEqual(fresh.devices, ['a/*']);

  const warned = await lateWarned;
  assert.ok(warned.expiresAt > 0 && warned.secondsLeft <= 2, JSON.stringify(warned));
  assert.strictEqual(await lateGone, 'io server disconnect');
  await sleep(2500); // past the first token's exp
  assert.strictEqual(keen.connected, true);
  const seen = devicesWithin(keen, 800);
  await server.ingest([{ deviceId: 'b/1', message: 'x' }, { deviceId: 'a/1', message: 'y' }]);
  assert.deepStrictEqual(await seen, ['a/1']);
});

test('replays obey the scope too: tail and since never reach outside it', async (t) => {
  const server = await startServer({ rate_limit: 100000 });
  t.after(() => server.stop());
  await server.ingest([
    { deviceId: 'plant-a/1', message: 'a1' },
    { deviceId: 'plant-b/1', message: 'b1' },
    { deviceId: 'plant-a/2', message: 'a2' },
  ]);
  const ann = await connect(server, token('ann', { devices: ['plant-a/*'] }));
  t.after(() => ann.close());
  const seen = devicesWithin(ann, 800);
  const ack = await ann.emitWithAck('log:subscribe', { tail: 10 });
  assert.strictEqual(ack.replayed, 2, JSON.stringify(ack));
  assert.deepStrictEqual(await seen, ['plant-a/1', 'plant-a/2']);
});
