// logstream live tail. Plain JavaScript, no dependencies: a small Socket.IO v4 client over
// one WebSocket (the handful of packets this page needs), a bounded buffer of entries, and a
// virtualized list that renders only the rows in view. Log data is only ever set as text,
// never as HTML.
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
  devices: new Map(),   // deviceId → status
  backoff: 500,
};

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
  const sub = { resume: true };
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
      const s = args[0] || {};
      if (state.resuming) {
        notice(s.recovered === false ? 'reconnected, but some logs were no longer in the server\'s history' : `reconnected; ${s.replayed || 0} missed logs replayed`, s.recovered === false);
      }
      break;
    }
    case 'log:dropped': {
      const d = args[0] || {};
      const text = `${d.count} logs dropped: ${String(d.reason || '').replace(/_/g, ' ')}`;
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
      $('stats').textContent = `${s.total ?? '?'} clients · ${fmt(s.logsInPerSec)} logs/s in · ${fmt(s.deliveriesPerSec)} out/s`;
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
  }
  if (typeof offset === 'string') state.offset = offset;
  schedule();
}

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
    li.append(cell('', id), cell(status === 'online' ? 'online' : 'offline', String(status)));
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
  loadFilters();
  connect();
}

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
  // A new subscription: start over from its backfill.
  state.entries = []; state.view = []; state.dropped = 0; state.offset = null; state.selected = -1;
  subscribe(false);
  schedule();
});

$('f-levels').addEventListener('click', (e) => {
  const b = e.target.closest('.chip');
  if (!b) return;
  b.classList.toggle('on');
  if (b.classList.contains('on')) state.levels.add(b.dataset.level); else state.levels.delete(b.dataset.level);
});

$('f-filter').addEventListener('change', () => { $('f-params-label').hidden = $('f-filter').value === 'default'; });

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
  if (r) select(parseInt(r.dataset.index, 10) - state.dropped);
});
window.addEventListener('resize', schedule);

// ---- Start -------------------------------------------------------------------------------
fetch('/api/dev/token').then((r) => { $('devtoken').hidden = !r.ok; }).catch(() => {});
if (state.token) start(); else signOut('');
