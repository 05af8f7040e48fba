// logstream live tail. Plain JavaScript, no dependencies: a small Socket.IO v4 client over
// one WebSocket (the handful of packets this page needs), a bounded buffer of entries, a
// virtualized list that renders only the rows in view, a volume histogram, the filter kept
// in the URL, keyboard shortcuts, and for an admin token an operator's view. Log data is only
// ever set as text, never as HTML.
'use strict';

const MAX_ENTRIES = 100000;      // kept in the buffer; the oldest go first
const ROW = 22;                  // px, as in style.css
const $ = (id) => document.getElementById(id);

// ---- A minimal Socket.IO client (WebSocket transport, namespace "/") -------------------
// Events are handed on in the order they came, also when one waits for its binary
// attachments (`45<n>-[…]` then n binary frames: gzip batches) to be decompressed.
const MAX_ATTACHMENTS = 8;
class Sio {
  constructor(auth, on) { this.auth = auth; this.on = on; this.ws = null; this.closedByUs = false; this.chain = Promise.resolve(); }
  connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/socket.io/?EIO=4&transport=websocket`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let pending = null;   // { args, want, got: [] } while attachments are arriving
    const deliver = (args, attachments) => {
      this.chain = this.chain
        .then(() => Promise.all(args.map((a) => resolvePlaceholder(a, attachments))))
        .then((resolved) => { if (this.ws === ws) this.on.event(resolved[0], resolved.slice(1)); })
        .catch((e) => this.on.bad(String(e && e.message || e)));
    };
    ws.onmessage = (m) => {
      if (typeof m.data !== 'string') {
        if (!pending) return;
        pending.got.push(m.data);
        if (pending.got.length === pending.want) { const p = pending; pending = null; deliver(p.args, p.got); }
        return;
      }
      const t = m.data;
      if (t === '2') { ws.send('3'); return; }                          // ping → pong
      if (t[0] === '0') { ws.send('40' + JSON.stringify(this.auth())); return; } // open
      if (t.startsWith('40')) { this.on.connect(); return; }
      if (t.startsWith('44')) {
        let msg = t.slice(2); try { msg = JSON.parse(msg).message; } catch (_) {}
        // Only a refused token ends the session; "busy" or a connection limit is retried.
        this.refused = /auth|token|expired|signature|malformed/i.test(String(msg));
        this.on.refused(msg, this.refused);
        return;
      }
      if (t.startsWith('41')) { ws.close(); return; }
      const binary = /^45(\d+)-/.exec(t);
      if (t.startsWith('42') || binary) {
        let body = (binary ? t.slice(binary[0].length) : t.slice(2)).replace(/^\d+/, '');
        let args; try { args = JSON.parse(body); } catch (_) { return; }
        if (!Array.isArray(args) || typeof args[0] !== 'string') return;
        const want = binary ? Number(binary[1]) : 0;
        if (want === 0) deliver(args, []);
        else if (want <= MAX_ATTACHMENTS) pending = { args, want, got: [] };
        else ws.close();
      }
    };
    ws.onclose = () => { if (this.ws === ws) this.on.close(this.closedByUs || this.refused); };
  }
  emit(event, data) { if (this.ws && this.ws.readyState === 1) this.ws.send('42' + JSON.stringify([event, data])); }
  close() { this.closedByUs = true; if (this.ws) this.ws.close(); }
}

// Whether this browser can inflate gzip batches (DecompressionStream: every current one).
const GZIP = typeof DecompressionStream === 'function';

// An argument as sent: a `{_placeholder, num}` stands for attachment `num`, here the gzip of
// a JSON value (a gzip log:batch).
async function resolvePlaceholder(arg, attachments) {
  if (!arg || arg._placeholder !== true || typeof arg.num !== 'number') return arg;
  const data = attachments[arg.num];
  if (!data) throw new Error('an event without its attachment');
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream('gzip'));
  return JSON.parse(await new Response(stream).text());
}

// ---- State -------------------------------------------------------------------------------
const state = {
  token: sessionStorage.getItem('logstream.token') || '',
  sio: null,
  entries: [],          // { kind: 'log'|'note', log?, text?, search }
  dropped: 0,           // entries discarded from the front of the buffer
  view: [],             // indices into entries that pass the view filter
  offset: null,         // last offset received (for resume)
  subscribed: false,
  paused: false,
  newSincePause: 0,
  selected: -1,
  include: '', exclude: '', highlight: null,
  levels: new Set(),
  devices: new Map(),   // deviceId → status ('' for a device seen only in logs)
  backoff: 500,
  // Logs received per second by level, and drops reported, for the last VOLUME_SECONDS.
  volume: new Map(),    // second → { TRACE: n, …, dropped: n }
};

const VOLUME_SECONDS = 300;
const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'];
// More than any server grants: the page gets the most (`max_client_rate_limit`).
const ASK_RATE = 1000000;

// ---- Connection --------------------------------------------------------------------------
function setStatus(s, text) { const el = $('status'); el.dataset.state = s; el.textContent = text || s; }

function connect() {
  if (state.sio) state.sio.close();
  setStatus('connecting');
  const sio = new Sio(() => ({ token: state.token }), {
    connect: () => { state.backoff = 500; setStatus('live', 'connected'); subscribe(true); },
    refused: (msg, final) => {
      if (final) signOut(`the server refused the token: ${msg}`);
      else notice(`the server refused the connection: ${msg}; retrying`, true);
    },
    close: (final) => {
      state.subscribed = false;
      if (final || state.sio !== sio) return;
      setStatus('offline', `offline, retrying in ${(state.backoff / 1000).toFixed(1)} s`);
      setTimeout(() => { if (state.sio === sio) connect(); }, state.backoff);
      state.backoff = Math.min(state.backoff * 2, 10000);
    },
    event: onEvent,
    bad: (why) => notice(`a message could not be read: ${why}`, true),
  });
  state.sio = sio;
  sio.connect();
}

function listOf(id) { return $(id).value.split(',').map((s) => s.trim()).filter(Boolean); }

function subscription() {
  const filter = $('f-filter').value;
  const sub = { resume: true, rateLimit: ASK_RATE };
  // Batches as gzip: a fifth of the bytes on a slow link.
  if (GZIP) { sub.batch = true; sub.encoding = 'gzip'; }
  if (filter === 'default') {
    const devices = listOf('f-devices'), tags = listOf('f-tags'), keywords = listOf('f-keywords');
    if (devices.length) sub.deviceIds = devices;
    if (state.levels.size) sub.levels = [...state.levels];
    if (tags.length) sub.tags = tags;
    if (keywords.length) sub.keywords = keywords;
  } else {
    sub.filter = filter;
    const text = $('f-params').value.trim();
    sub.params = text ? JSON.parse(text) : {};
  }
  const transforms = [...document.querySelectorAll('#f-transforms input:checked')].map((c) => ({ name: c.value }));
  if (transforms.length) sub.transform = transforms;
  return sub;
}

// fresh: a new connection. With an offset, resume after it (nothing missed, nothing twice);
// otherwise backfill with `tail`.
function subscribe(fresh) {
  let sub;
  try { sub = subscription(); } catch (e) { notice(`params are not JSON: ${e.message}`, true); return; }
  if (fresh && state.offset) sub.since = state.offset;
  else {
    const n = parseInt($('f-tail').value, 10);
    if (n > 0) sub.tail = Math.min(n, 1000);
  }
  state.resuming = !!sub.since;
  state.sio.emit('log:subscribe', sub);
}

// ---- Events ------------------------------------------------------------------------------
function onEvent(name, args) {
  switch (name) {
    case 'log:new': addLogs([args[0]], args[1]); break;
    case 'log:batch': addLogs(args[0] || [], args[1]); break;
    case 'log:subscribed': {
      state.subscribed = true;
      schedule();
      const s = args[0] || {};
      if (state.resuming) {
        notice(s.recovered === false ? 'reconnected, but some logs were no longer in the server\'s history' : `reconnected; ${s.replayed || 0} missed logs replayed`, s.recovered === false);
      }
      break;
    }
    case 'log:dropped': {
      const d = args[0] || {};
      const text = `${d.count} logs dropped: ${String(d.reason || '').replace(/_/g, ' ')}`;
      countVolume('dropped', Number(d.count) || 0);
      note(text);
      notice(text);
      break;
    }
    case 'error': {
      const e = args[0] || {};
      notice(`error [${e.code}]: ${e.message}`, true);
      break;
    }
    case 'device:status': {
      const s = args[0] || {};
      // Bounded: a flood of device ids cannot grow the panel without end.
      if (state.devices.has(s.deviceId) || state.devices.size < 2000) state.devices.set(s.deviceId, s.status);
      if (!state.devicesFrame) state.devicesFrame = requestAnimationFrame(() => { state.devicesFrame = 0; renderDevices(); });
      break;
    }
    case 'system:stats': {
      const s = args[0] || {};
      const fmt = (x) => (typeof x === 'number' ? x.toFixed(0) : '?');
      $('stats').textContent = `${s.connections ?? '?'} clients · ${fmt(s.logsInPerSec)} logs/s in · ${fmt(s.deliveriesPerSec)} out/s`;
      break;
    }
    case 'auth:expired': notice('the token expires soon: sign in again with a fresh one', true); break;
    default: break;
  }
}

function searchText(log) { return `${log.deviceId} ${log.level} ${log.message}`.toLowerCase(); }

function push(entry) {
  state.entries.push(entry);
  // Trimmed a tenth at a time, so that a full buffer costs O(1) per log on average.
  if (state.entries.length > MAX_ENTRIES + MAX_ENTRIES / 10) {
    const cut = state.entries.length - MAX_ENTRIES;
    state.entries.splice(0, cut);
    state.dropped += cut;
    state.selected -= cut;
    state.view = state.view.map((i) => i - cut).filter((i) => i >= 0);
  }
  const i = state.entries.length - 1;
  if (visible(entry)) {
    state.view.push(i);
    if (state.paused) state.newSincePause++;
  }
}

function addLogs(logs, offset) {
  for (const log of logs) {
    if (!log || typeof log !== 'object') continue;
    push({ kind: 'log', log, search: searchText(log) });
    countVolume(LEVELS.includes(log.level) ? log.level : 'INFO', 1);
    seeDevice(log.deviceId);
  }
  if (typeof offset === 'string') state.offset = offset;
  schedule();
}

// A device seen in a log joins the panel (bounded, as for statuses).
function seeDevice(id) {
  if (typeof id !== 'string' || state.devices.has(id) || state.devices.size >= 2000) return;
  state.devices.set(id, '');
  if (!state.devicesFrame) state.devicesFrame = requestAnimationFrame(() => { state.devicesFrame = 0; renderDevices(); });
}

function countVolume(key, n) {
  const second = Math.floor(Date.now() / 1000);
  let bucket = state.volume.get(second);
  if (!bucket) {
    bucket = {};
    state.volume.set(second, bucket);
    for (const s of state.volume.keys()) { if (s <= second - VOLUME_SECONDS) state.volume.delete(s); else break; }
  }
  bucket[key] = (bucket[key] || 0) + n;
}

// Stacked bars, one per second, by level; drops in grey above them.
function renderVolume() {
  const canvas = $('histogram');
  if (!canvas || $('app').hidden) return;
  const width = canvas.clientWidth;
  if (canvas.width !== width) canvas.width = width;
  const height = canvas.height;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  const now = Math.floor(Date.now() / 1000);
  let max = 1;
  const total = (b) => LEVELS.reduce((n, l) => n + (b[l] || 0), 0) + (b.dropped || 0);
  for (const b of state.volume.values()) max = Math.max(max, total(b));
  const css = getComputedStyle(document.documentElement);
  const colour = (name) => css.getPropertyValue(`--${name}`).trim() || '#888';
  const bar = width / VOLUME_SECONDS;
  for (const [second, b] of state.volume) {
    const x = width - (now - second + 1) * bar;
    if (x + bar < 0) continue;
    let y = height;
    for (const key of [...LEVELS, 'dropped']) {
      const n = b[key] || 0;
      if (!n) continue;
      const h = Math.max(1, (n / max) * (height - 2));
      ctx.fillStyle = colour(key === 'dropped' ? 'dim' : key.toLowerCase());
      ctx.fillRect(x, y - h, Math.max(1, bar - 0.5), h);
      y -= h;
    }
  }
  const last = state.volume.get(now - 1) || {};
  const drops = last.dropped ? ` · ${last.dropped} dropped` : '';
  $('volume-now').textContent = `${total(last) - (last.dropped || 0)} logs/s${drops} · peak ${max}/s`;
}
setInterval(renderVolume, 1000);

function note(text) { push({ kind: 'note', text, search: text.toLowerCase() }); schedule(); }

function notice(text, isError) {
  const box = $('notices');
  const el = document.createElement('div');
  el.className = isError ? 'notice err' : 'notice';
  el.textContent = text;
  box.prepend(el);
  while (box.children.length > 3) box.lastChild.remove();
}

// ---- View filter, highlight, virtualized rendering ---------------------------------------
function visible(entry) {
  if (state.include && !entry.search.includes(state.include)) return false;
  if (state.exclude && entry.search.includes(state.exclude)) return false;
  return true;
}

function refilter() {
  state.view = [];
  state.entries.forEach((e, i) => { if (visible(e)) state.view.push(i); });
  schedule();
}

let frame = 0;
function schedule() { if (!frame) frame = requestAnimationFrame(render); }

function render() {
  frame = 0;
  const list = $('list');
  $('spacer').style.height = `${state.view.length * ROW}px`;
  if (!state.paused) list.scrollTop = list.scrollHeight;
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
  const last = Math.min(state.view.length, first + Math.ceil(list.clientHeight / ROW) + 10);
  const rows = $('rows');
  rows.style.transform = `translateY(${first * ROW}px)`;
  const frag = document.createDocumentFragment();
  for (let v = first; v < last; v++) frag.appendChild(row(state.view[v]));
  rows.replaceChildren(frag);
  $('counts').textContent = `${state.view.length} shown · ${state.entries.length} kept${state.dropped ? ` · ${state.dropped} oldest discarded` : ''}`;
  $('empty').hidden = !(state.subscribed && state.view.length === 0);
  const badge = $('newbadge');
  badge.hidden = !state.paused;
  badge.textContent = `${state.newSincePause} new`;
  $('pause').textContent = state.paused ? 'resume' : 'pause';
}

function cell(cls, text) { const s = document.createElement('span'); s.className = cls; s.textContent = text; return s; }

function highlighted(text) {
  const span = document.createElement('span');
  span.className = 'm';
  const re = state.highlight;
  if (!re) { span.textContent = text; return span; }
  let at = 0;
  re.lastIndex = 0;
  for (let m = re.exec(text); m && m[0].length; m = re.exec(text)) {
    span.append(text.slice(at, m.index));
    const mark = document.createElement('mark');
    mark.textContent = m[0];
    span.append(mark);
    at = m.index + m[0].length;
  }
  span.append(text.slice(at));
  return span;
}

function row(i) {
  const entry = state.entries[i];
  const div = document.createElement('div');
  div.className = 'r' + (i === state.selected ? ' sel' : '') + (entry.kind === 'note' ? ' note' : '');
  div.dataset.index = String(i + state.dropped); // stays right when the buffer is trimmed
  if (entry.kind === 'note') {
    div.append(cell('t', ''), cell('d', ''), cell('l', '—'), cell('m', entry.text));
    return div;
  }
  const log = entry.log;
  const time = typeof log.timestamp === 'string' ? log.timestamp.replace(/^.*T/, '').replace(/Z$/, '') : '';
  div.append(cell('t', time), cell('d', String(log.deviceId ?? '')), cell(`l l-${log.level}`, String(log.level ?? '')), highlighted(String(log.message ?? '')));
  return div;
}

function select(i) {
  state.selected = i;
  const entry = state.entries[i];
  $('detail').textContent = entry ? (entry.kind === 'log' ? JSON.stringify(entry.log, null, 2) : entry.text) : '';
  schedule();
}

function renderDevices() {
  const ul = $('devices');
  const items = [...state.devices.entries()].sort((a, b) => a[0].localeCompare(b[0])).slice(0, 500);
  ul.replaceChildren(...items.map(([id, status]) => {
    const li = document.createElement('li');
    const shown = status === '' ? 'seen' : String(status);
    li.append(cell('', id), cell(status === 'online' ? 'online' : status === '' ? 'seen' : 'offline', shown));
    return li;
  }));
}

// ---- Controls ----------------------------------------------------------------------------
function pause(on) {
  state.paused = on;
  if (!on) state.newSincePause = 0;
  schedule();
}

function signOut(reason) {
  if (state.sio) state.sio.close();
  state.sio = null;
  sessionStorage.removeItem('logstream.token');
  state.token = '';
  setStatus('offline');
  $('app').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  const err = $('signin-error');
  err.hidden = !reason;
  err.textContent = reason || '';
}

async function loadFilters() {
  try {
    const r = await fetch('/api/filters', { headers: { Authorization: `Bearer ${state.token}` } });
    if (!r.ok) return;
    const { data } = await r.json();
    const select = $('f-filter');
    select.replaceChildren(...data.filters.map((f) => { const o = document.createElement('option'); o.value = f; o.textContent = f; return o; }));
    $('f-transforms').replaceChildren(...data.transforms.map((t) => {
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox'; box.value = t;
      label.append(box, document.createTextNode(t));
      return label;
    }));
  } catch (_) { /* the picker keeps `default` */ }
}

function start() {
  $('signin').hidden = true;
  $('app').hidden = false;
  $('signout').hidden = false;
  $('operator-toggle').hidden = !isAdmin(state.token);
  loadFilters().then(readUrl);
  readUrl();
  connect();
}

// ---- The filter in the URL: /?devices=a,b&levels=ERROR&tags=db&q=timeout&filter=regex&params={…}
function readUrl() {
  const q = new URLSearchParams(location.search);
  const set = (id, key) => { if (q.has(key)) $(id).value = q.get(key); };
  set('f-devices', 'devices'); set('f-tags', 'tags'); set('f-keywords', 'q'); set('f-params', 'params');
  if (q.has('levels')) {
    state.levels = new Set(q.get('levels').split(',').map((l) => l.trim().toUpperCase()).filter((l) => LEVELS.includes(l)));
    for (const b of document.querySelectorAll('#f-levels .chip')) b.classList.toggle('on', state.levels.has(b.dataset.level));
  }
  const filter = q.get('filter');
  if (filter && [...$('f-filter').options].some((o) => o.value === filter)) $('f-filter').value = filter;
  filterChanged();
}

function writeUrl() {
  const q = new URLSearchParams();
  const filter = $('f-filter').value;
  if (filter === 'default') {
    if ($('f-devices').value.trim()) q.set('devices', $('f-devices').value.trim());
    if (state.levels.size) q.set('levels', [...state.levels].join(','));
    if ($('f-tags').value.trim()) q.set('tags', $('f-tags').value.trim());
    if ($('f-keywords').value.trim()) q.set('q', $('f-keywords').value.trim());
  } else {
    q.set('filter', filter);
    if ($('f-params').value.trim()) q.set('params', $('f-params').value.trim());
  }
  const text = q.toString();
  history.replaceState(null, '', text ? `/?${text}` : '/');
}

// The built-in filter's fields mean nothing to a named filter: shown disabled, not lit.
function filterChanged() {
  const named = $('f-filter').value !== 'default';
  $('f-params-label').hidden = !named;
  $('f-default').classList.toggle('off', named);
  for (const el of $('f-default').querySelectorAll('input, button')) el.disabled = named;
}

// ---- The operator's view (an admin token) -------------------------------------------------
function isAdmin(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)).role === 'admin';
  } catch (_) { return false; }
}

async function api(path, init) {
  const r = await fetch(path, { ...init, headers: { Authorization: `Bearer ${state.token}` } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${r.status}`);
  return body.data;
}

function bytes(n) {
  if (typeof n !== 'number') return '?';
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

function tableRows(id, rows) { $(id).querySelector('tbody').replaceChildren(...rows); }
function tr(cells, action) {
  const row = document.createElement('tr');
  for (const c of cells) { const td = document.createElement('td'); td.textContent = c == null ? '' : String(c); row.append(td); }
  const td = document.createElement('td');
  if (action) td.append(action);
  row.append(td);
  return row;
}
function button(text, onClick) { const b = document.createElement('button'); b.type = 'button'; b.textContent = text; b.addEventListener('click', onClick); return b; }

async function refreshOperator() {
  if ($('operator').hidden) return;
  try {
    const [conns, plugins, stats, health] = await Promise.all([api('/api/ws/connections'), api('/api/plugins'), api('/api/ws/stats'), api('/api/ws/health')]);
    const list = conns.connections || conns;
    tableRows('op-connections', list.map((c) => tr([
      c.userId, ((c.subscription || {}).deviceIds || ['all']).join(', '), c.transport || '?', c.ip, c.instance, c.messageCount,
      bytes(c.queuedBytes), c.dropped ?? 0,
      String(c.connectedAt || '').replace('T', ' ').replace(/\..*$/, ''),
    ], button('disconnect', async () => { await api(`/api/ws/connections/${encodeURIComponent(c.id)}`, { method: 'DELETE' }).catch(opError); refreshOperator(); }))));
    tableRows('op-plugins', (plugins.plugins || []).map((p) => tr([
      p.name, p.kind, p.status, p.subscriptions, p.calls, p.failures,
    ], p.name === 'default' ? null : button(p.status === 'disabled' ? 'enable' : 'disable', async () => {
      // Disabling ends its subscriptions (they are told); enabling serves again, fresh.
      await api(`/api/plugins/${encodeURIComponent(p.name)}/${p.status === 'disabled' ? 'enable' : 'disable'}`, { method: 'POST' }).catch(opError);
      refreshOperator();
    }))));
    renderFigures({ ...stats, bus: (health || {}).bus });
    $('op-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    $('op-error').hidden = true;
  } catch (e) { opError(e); }
}
// `/api/ws/stats` (and the health's bus and history) as name / value pairs, one level of
// nesting flattened ("drops rateLimit"); per-user counts are the connections table's.
function renderFigures(figures) {
  const items = [];
  const add = (name, value) => {
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) if (typeof v !== 'object' || v === null) items.push([`${name} ${k}`, v]);
    } else items.push([name, Array.isArray(value) ? value.length : value]);
  };
  for (const [k, v] of Object.entries(figures)) if (k !== 'byUser' && v !== undefined) add(k, v);
  const fmt = (v) => (typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(1) : String(v));
  $('op-stats').replaceChildren(...items.slice(0, 80).map(([k, v]) => {
    const div = document.createElement('div');
    div.append(cell('k', k), cell('v', fmt(v)));
    return div;
  }));
}

function opError(e) { $('op-error').hidden = false; $('op-error').textContent = String(e && e.message || e); }
setInterval(refreshOperator, 2000);

// ---- Keyboard ----------------------------------------------------------------------------
function move(by) {
  if (!state.view.length) return;
  const at = state.view.indexOf(state.selected);
  const next = at < 0 ? (by > 0 ? 0 : state.view.length - 1) : Math.min(state.view.length - 1, Math.max(0, at + by));
  if (!state.paused) pause(true);
  select(state.view[next]);
  const list = $('list');
  const top = next * ROW;
  if (top < list.scrollTop || top + ROW > list.scrollTop + list.clientHeight) list.scrollTop = top - list.clientHeight / 2;
}

document.addEventListener('keydown', (e) => {
  const field = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
  if (e.key === 'Escape') { if (field) e.target.blur(); $('help').hidden = true; document.body.classList.remove('detail-open'); return; }
  if (field || e.ctrlKey || e.metaKey || e.altKey || $('app').hidden) return;
  switch (e.key) {
    case '/': e.preventDefault(); $('f-keywords').focus(); break;
    case ' ': e.preventDefault(); pause(!state.paused); break;
    case 'j': move(1); break;
    case 'k': move(-1); break;
    case 'Enter': if (state.selected >= 0) { document.body.classList.add('detail-open'); $('detail').scrollIntoView({ block: 'nearest' }); } break;
    case '?': $('help').hidden = !$('help').hidden; break;
    default: return;
  }
});

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem('logstream.token', token);
  start();
});

$('devtoken').addEventListener('click', async () => {
  const r = await fetch('/api/dev/token');
  if (!r.ok) return;
  $('token').value = (await r.json()).data.token;
  $('signin-form').requestSubmit();
});

$('signout').addEventListener('click', () => signOut(''));

$('filters').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!state.sio) return;
  // A new subscription: start over from its backfill, following, with a clean slate.
  state.entries = []; state.view = []; state.dropped = 0; state.offset = null; state.selected = -1;
  state.paused = false; state.newSincePause = 0; state.subscribed = false;
  $('notices').replaceChildren();
  $('detail').textContent = 'click a row';
  writeUrl();
  subscribe(false);
  schedule();
});

$('f-levels').addEventListener('click', (e) => {
  const b = e.target.closest('.chip');
  if (!b) return;
  b.classList.toggle('on');
  if (b.classList.contains('on')) state.levels.add(b.dataset.level); else state.levels.delete(b.dataset.level);
});

$('f-filter').addEventListener('change', filterChanged);
$('help-toggle').addEventListener('click', () => { $('help').hidden = !$('help').hidden; });
$('operator-toggle').addEventListener('click', () => { $('operator').hidden = !$('operator').hidden; refreshOperator(); });

$('v-include').addEventListener('input', (e) => { state.include = e.target.value.toLowerCase(); refilter(); });
$('v-exclude').addEventListener('input', (e) => { state.exclude = e.target.value.toLowerCase(); refilter(); });
$('v-highlight').addEventListener('input', (e) => {
  try { state.highlight = e.target.value ? new RegExp(e.target.value, 'gi') : null; e.target.classList.remove('bad'); }
  catch (_) { state.highlight = null; e.target.classList.add('bad'); }
  schedule();
});

$('pause').addEventListener('click', () => pause(!state.paused));
$('newbadge').addEventListener('click', () => pause(false));
$('follow').addEventListener('click', () => pause(false));
$('clear').addEventListener('click', () => { state.entries = []; state.view = []; state.dropped = 0; state.selected = -1; state.newSincePause = 0; schedule(); });

$('list').addEventListener('scroll', () => {
  const list = $('list');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - ROW;
  if (!atBottom && !state.paused && state.view.length * ROW > list.clientHeight) pause(true);
  schedule();
});
$('list').addEventListener('click', (e) => {
  const r = e.target.closest('.r');
  if (r) {
    select(parseInt(r.dataset.index, 10) - state.dropped);
    // On a narrow screen the detail is a sheet over the list.
    document.body.classList.add('detail-open');
  }
});
$('detail-close').addEventListener('click', () => document.body.classList.remove('detail-open'));
window.addEventListener('resize', schedule);

// ---- Start -------------------------------------------------------------------------------
fetch('/api/dev/token').then((r) => { $('devtoken').hidden = !r.ok; }).catch(() => {});
if (state.token) start(); else signOut('');
