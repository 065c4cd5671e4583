/*
 * EventSync browser UI — plain ES module, no build step. Uses the JS client at /client/eventsync.js.
 *
 * Test hooks (data-testid; the element id is the same unless noted):
 *   Connection
 *     transport            <fieldset> with two radios: transport-ws (value "ws"), transport-sse (value "sse").
 *                          The choice is stored in localStorage["eventsync.transport"]; the page connects on
 *                          load with it. Changing it while connected reconnects with the new transport (a new
 *                          EventSyncClient is created for a new transport, so client-id may change).
 *     connect, disconnect  buttons.
 *     status               text = client.status exactly: offline | connecting | syncing | live
 *                          (also in attribute data-status).
 *     client-id            text = client.clientId.
 *     token, token-apply   the token (a JWT, for a server run with --auth jwt), kept in this tab's
 *                          sessionStorage["eventsync.token"]; "Use" hands it to the client (a live WebSocket
 *                          session is re-authenticated in place) and to the page's own REST calls.
 *     auth-banner          shown when the server refuses the token (data-reason="unauthenticated") or a
 *                          subscription (data-reason="forbidden"); hidden again once the client is live
 *                          after an unauthenticated refusal.
 *   Games
 *     create-name, create-gold, create-level, create-experience, create-id (optional id), create-submit
 *                          (Enter in any field submits). Numbers are sent as integers; empty → 0. After a
 *                          successful create the form is back to its defaults (name "", gold 0, level 1,
 *                          experience 0, id ""), except fields edited while the create was pending.
 *     games-list           <ul role=listbox>; rows: data-testid="game-row" data-id=<id> data-version=<v>,
 *                          tabindex=0, select with click / Enter / Space (ArrowUp/Down move between rows).
 *                          Cells inside a row: data-field="name" | "gold" | "level" | "experience" | "version".
 *     games-count          number of games in the list.
 *   Detail (of the selected row)
 *     detail               container (hidden until a row is selected); detail-id; detail-data (JSON).
 *     detail-version       text = the version being edited (the one shown when opened / last refreshed).
 *                          It does NOT follow remote changes: when a newer version arrives, detail-stale
 *                          appears with a detail-refresh button ("Load latest"). After your own successful
 *                          update it moves to the new version.
 *     update-name, update-gold, update-level, update-experience, update-submit
 *                          sends a merge patch of the fields changed vs. the loaded values, with
 *                          expectedVersion = detail-version.
 *     delete               deletes the selected game (expectedVersion = detail-version).
 *     detail-deleted       shown when the selected game was deleted.
 *     conflict             shown on a version conflict: "Conflict: game X is at version N (you edited
 *                          version M); current values: name=…, gold=…, level=…, experience=…";
 *                          attributes data-current-version, data-edited-version; conflict-text;
 *                          conflict-reload loads the current values + version into the form.
 *   Sync
 *     sync                 button: await client.sync().
 *     sync-result          "synced at seq N: S snapshots, E events" (attributes data-seq, data-snapshots,
 *                          data-events) or "sync failed: …".
 *     vector               the client's state vector: one data-testid="vector-entry" per document with
 *                          data-collection, data-id, data-version; attribute data-json = JSON of vector().
 *   Event log
 *     event-log            <ol>, newest (highest seq) first; entries data-testid="log-entry" data-seq=<seq>
 *                          data-id data-op data-client-id; cells (class): ts, seq, op, doc ("collection/id vN",
 *                          full text in its title), who (client id, "(you)" for this client's writes;
 *                          class "mine" on the entry), patch (compact JSON). On page load it shows the last
 *                          HISTORY events of the collection from GET /api/events, then the live ones.
 *                          Deduplicated by seq; keeps the newest 500.
 *     log-count            number of entries.
 *   Messages
 *     notice               last write result / error message (data-kind="ok" | "error").
 *     fatal                shown if /client/eventsync.js cannot be loaded.
 *   window.eventsyncUI = { client, select(id) } for debugging/tests.
 *
 * The JS client keeps one client id per tab (in sessionStorage: a reload keeps it, another tab or a
 * duplicated tab gets its own), and its documents, vector and offline queue with it. Open the page as
 * /?client=<id> to use a specific client id. Writes made while offline are queued by the client and sent on
 * reconnect (the notice says "queued"); their result arrives only then.
 */

const COLLECTION = 'games';
const FIELDS = ['name', 'gold', 'level', 'experience'];
const NUMERIC = new Set(['gold', 'level', 'experience']);
const LOG_MAX = 500;
const HISTORY = 50; // events loaded from the REST API on page load
const STORE_KEY = 'eventsync.transport';
const TOKEN_KEY = 'eventsync.token';

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
};
const compact = (v) => JSON.stringify(v);
const show = (node, on) => { node.hidden = !on; };

let EventSyncClient = null;
let client = null;
let clientTransport = null;
const unsubscribers = [];

// detail state: which document, the version and values the form was loaded from
const detail = { id: null, version: null, base: null };
let conflictState = null; // {id, currentVersion, editedVersion, data}
const loggedSeqs = new Set();

/* ---------------------------------------------------------------- transport & connection */

function chosenTransport() {
  const r = document.querySelector('input[name="transport"]:checked');
  return r && r.value === 'sse' ? 'sse' : 'ws';
}

function savedTransport() {
  try { return localStorage.getItem(STORE_KEY) === 'sse' ? 'sse' : 'ws'; } catch { return 'ws'; }
}

function saveTransport(t) {
  try { localStorage.setItem(STORE_KEY, t); } catch { /* private mode */ }
}

function savedToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

function saveToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* private mode */ }
}

/** The token the page uses now: the field's (what "Use" stored). */
function currentToken() {
  return savedToken() || null;
}

/** Headers for the page's own REST calls. */
function authHeaders() {
  const t = currentToken();
  return t ? { authorization: `Bearer ${t}` } : {};
}

function showAuthBanner(reason, text) {
  const b = $('auth-banner');
  b.textContent = text;
  b.dataset.reason = reason;
  show(b, true);
}

function hideAuthBanner(reason) {
  const b = $('auth-banner');
  if (!reason || b.dataset.reason === reason) show(b, false);
}

function onTokenApply(ev) {
  ev.preventDefault();
  const t = $('token').value.trim();
  saveToken(t);
  hideAuthBanner();
  if (client) client.setToken(() => currentToken());
  notify(t ? 'Token set.' : 'Token cleared.');
  loadHistory();
}

function on(c, name, fn) {
  if (typeof c.on !== 'function') return;
  const off = c.on(name, fn);
  unsubscribers.push(() => {
    if (typeof off === 'function') off();
    else if (typeof c.off === 'function') c.off(name, fn);
  });
}

function dropClient() {
  if (!client) return;
  const old = client;
  while (unsubscribers.length) { try { unsubscribers.pop()(); } catch { /* ignore */ } }
  try { old.disconnect(); } catch { /* ignore */ }
  client = null;
  clientTransport = null;
}

function makeClient(transport) {
  dropClient();
  // The client asks for the token at each connection, so "Use" also applies to the next one.
  const opts = { url: location.origin, transport, subscribe: [COLLECTION], token: () => currentToken() };
  const forced = new URLSearchParams(location.search).get('client');
  if (forced) opts.clientId = forced;
  const c = new EventSyncClient(opts);
  client = c;
  clientTransport = transport;
  window.eventsyncUI.client = c;
  on(c, 'status', () => { if (c === client) renderStatus(); });
  on(c, 'change', () => { if (c === client) scheduleRender(); });
  on(c, 'synced', () => { if (c === client) scheduleRender(); });
  on(c, 'event', (ev) => { if (c === client) { logEvent(ev); scheduleRender(); } });
  on(c, 'conflict', (info) => { if (c === client) onConflictEvent(info); });
  on(c, 'error', (err) => {
    if (c !== client) return;
    notify(`Error: ${errorText(err)}`, 'error');
    if (err && err.code === 'forbidden') showAuthBanner('forbidden', `Refused: ${err.message}`);
  });
  on(c, 'unauthenticated', (err) => {
    if (c !== client) return;
    showAuthBanner('unauthenticated', `The server refused the token (${err.message}). Enter a valid token above and press Use.`);
  });
  on(c, 'status', (st) => { if (c === client && st === 'live') hideAuthBanner('unauthenticated'); });
  return c;
}

function connect() {
  if (!EventSyncClient) return;
  const transport = chosenTransport();
  saveTransport(transport);
  if (!client || clientTransport !== transport) makeClient(transport);
  else if (client.status && client.status !== 'offline') { renderStatus(); return; }
  try {
    const p = client.connect();
    if (p && typeof p.catch === 'function') p.catch((e) => notify(`Connect failed: ${errorText(e)}`, 'error'));
  } catch (e) {
    notify(`Connect failed: ${errorText(e)}`, 'error');
  }
  renderStatus();
  renderAll();
}

function disconnect() {
  if (!client) return;
  try { client.disconnect(); } catch (e) { notify(`Disconnect failed: ${errorText(e)}`, 'error'); }
  renderStatus();
}

function renderStatus() {
  const status = (client && client.status) || 'offline';
  const s = $('status');
  s.textContent = status;
  s.dataset.status = status;
  $('client-id').textContent = (client && client.clientId) || '—';
  $('connect').disabled = false;
  $('disconnect').disabled = status === 'offline';
}

/* ---------------------------------------------------------------- messages */

function errorText(e) {
  if (!e) return 'unknown error';
  if (typeof e === 'string') return e;
  if (e.error) return errorText(e.error);
  const code = e.code ? `${e.code}: ` : '';
  return `${code}${e.message || compact(e)}`;
}

function queuedNotice() {
  if (client && client.status === 'offline') notify('Offline: the write is queued and will be sent when connected.');
}

function notify(text, kind = 'ok') {
  const n = $('notice');
  n.textContent = text;
  n.dataset.kind = kind;
}

/* ---------------------------------------------------------------- rendering */

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  // not requestAnimationFrame: it never fires in a hidden tab, and a background page must stay current too
  setTimeout(() => { renderQueued = false; renderAll(); }, 16);
}

function renderAll() {
  renderStatus();
  renderList();
  renderVector();
  renderDetail();
}

function docs() {
  if (!client) return [];
  try { return client.documents(COLLECTION) || []; } catch { return []; }
}

function getDoc(id) {
  if (!client || id == null) return null;
  try { return client.document(COLLECTION, id) || null; } catch { return null; }
}

function fmt(v) {
  if (v === undefined || v === null) return '';
  return typeof v === 'object' ? compact(v) : String(v);
}

const rowNodes = new Map();

function buildRow(id) {
  const li = el('li', {
    'data-testid': 'game-row', role: 'option', tabindex: '0', 'aria-selected': 'false', class: 'game-row',
  });
  li.dataset.id = id;
  for (const f of [...FIELDS, 'version']) {
    li.append(el('span', { class: `cell cell-${f}`, 'data-field': f, 'data-label': f === 'experience' ? 'XP' : f }));
  }
  li.addEventListener('click', () => select(id));
  li.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ' || e.key === 'Spacebar') { e.preventDefault(); select(id); }
    else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      const next = e.key === 'ArrowDown' ? li.nextElementSibling : li.previousElementSibling;
      if (next) next.focus();
    }
  });
  return li;
}

function renderList() {
  const list = $('games-list');
  const items = docs();
  const seen = new Set();
  items.forEach((d, i) => {
    seen.add(d.id);
    let li = rowNodes.get(d.id);
    if (!li) { li = buildRow(d.id); rowNodes.set(d.id, li); }
    const data = d.data || {};
    li.dataset.version = String(d.version);
    for (const f of FIELDS) li.querySelector(`[data-field="${f}"]`).textContent = fmt(data[f]);
    li.querySelector('[data-field="version"]').textContent = `v${d.version}`;
    const selected = d.id === detail.id;
    li.setAttribute('aria-selected', String(selected));
    li.classList.toggle('selected', selected);
    li.setAttribute('aria-label', `${fmt(data.name) || d.id}, gold ${fmt(data.gold)}, level ${fmt(data.level)}, experience ${fmt(data.experience)}, version ${d.version}`);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  for (const [id, li] of rowNodes) {
    if (!seen.has(id)) { li.remove(); rowNodes.delete(id); }
  }
  $('games-count').textContent = String(items.length);
  show($('games-empty'), items.length === 0);
}

function renderVector() {
  const box = $('vector');
  let vec = {};
  if (client) { try { vec = client.vector() || {}; } catch { vec = {}; } }
  box.dataset.json = compact(vec);
  const rows = [];
  for (const [collection, ids] of Object.entries(vec)) {
    for (const [id, version] of Object.entries(ids || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const tr = el('tr', { 'data-testid': 'vector-entry' },
        el('td', {}, collection), el('td', { class: 'id' }, id), el('td', { class: 'num' }, String(version)));
      tr.dataset.collection = collection;
      tr.dataset.id = id;
      tr.dataset.version = String(version);
      rows.push(tr);
    }
  }
  if (!rows.length) {
    box.replaceChildren(el('p', { class: 'muted' }, 'empty — {}'));
    return;
  }
  const table = el('table', {},
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'collection'), el('th', { scope: 'col' }, 'document'),
      el('th', { scope: 'col', class: 'num' }, 'version'))),
    el('tbody', {}, ...rows));
  box.replaceChildren(table);
}

/* ---------------------------------------------------------------- detail & forms */

function select(id) {
  const d = getDoc(id);
  if (!d) return;
  detail.id = id;
  conflictState = null;
  loadIntoForm(d.version, d.data || {});
  renderList();
  renderDetail();
  const row = rowNodes.get(id);
  if (row && document.activeElement !== row && !row.contains(document.activeElement)) row.focus();
}

function loadIntoForm(version, data) {
  detail.version = version;
  detail.base = {};
  for (const f of FIELDS) {
    detail.base[f] = data[f];
    $(`update-${f}`).value = data[f] === undefined || data[f] === null ? '' : String(data[f]);
  }
  $('detail-data').textContent = JSON.stringify(data, null, 2);
}

function renderDetail() {
  const has = detail.id !== null;
  show($('detail'), has);
  show($('detail-none'), !has);
  if (!has) return;
  const d = getDoc(detail.id);
  $('detail-id').textContent = detail.id;
  $('detail-version').textContent = String(detail.version);
  show($('detail-deleted'), !d);
  const stale = !!d && d.version !== detail.version;
  show($('detail-stale'), stale && !conflictState);
  if (stale) $('detail-stale-text').textContent = `A newer version (v${d.version}) has arrived.`;
  $('update-submit').disabled = !d;
  $('delete').disabled = !d;
  renderConflict();
}

function renderConflict() {
  const box = $('conflict');
  if (!conflictState || conflictState.id !== detail.id) { show(box, false); return; }
  const { id, currentVersion, editedVersion, data } = conflictState;
  const values = data
    ? FIELDS.map((f) => `${f}=${fmt(data[f])}`).join(', ')
    : 'the game has been deleted';
  $('conflict-text').textContent =
    `Conflict: game ${id} is at version ${currentVersion} (you edited version ${editedVersion}); current values: ${values}`;
  box.dataset.currentVersion = String(currentVersion);
  box.dataset.editedVersion = String(editedVersion);
  show($('conflict-reload'), !!data);
  show(box, true);
}

async function currentOf(id, currentVersion) {
  const local = getDoc(id);
  if (local && (currentVersion == null || local.version >= currentVersion)) {
    return { version: local.version, data: local.data || {} };
  }
  try {
    const r = await fetch(`/api/${COLLECTION}/${encodeURIComponent(id)}`, { headers: authHeaders() });
    if (r.ok) {
      const doc = await r.json();
      return { version: doc.version, data: doc.data || {} };
    }
    if (r.status === 404) return { version: currentVersion, data: null };
  } catch { /* fall through */ }
  return local ? { version: local.version, data: local.data || {} } : { version: currentVersion, data: null };
}

async function showConflict(id, currentVersion, editedVersion) {
  if (id !== detail.id) {
    notify(`Conflict on game ${id}: it is at version ${currentVersion}.`, 'error');
    return;
  }
  const cur = await currentOf(id, currentVersion);
  conflictState = {
    id,
    currentVersion: currentVersion ?? cur.version,
    editedVersion,
    data: cur.data,
    fetchedVersion: cur.version,
  };
  notify(`Version conflict on game ${id}.`, 'error');
  renderDetail();
}

function onConflictEvent(info) {
  if (!info) return;
  const id = info.id;
  // The write's own result usually reports it first; only show it here if not already shown.
  if (id === detail.id && (!conflictState || conflictState.id !== id)) {
    const cv = info.currentVersion ?? info.error?.current_version;
    showConflict(id, cv, info.error?.expected_version ?? detail.version);
  }
}

function readFields(prefix) {
  const out = {};
  for (const f of FIELDS) {
    const raw = $(`${prefix}-${f}`).value.trim();
    if (NUMERIC.has(f)) {
      if (raw === '') { out[f] = null; continue; }
      const n = Number(raw);
      out[f] = Number.isFinite(n) ? Math.trunc(n) : raw;
    } else {
      out[f] = raw;
    }
  }
  return out;
}

/** Normalize a write's outcome: resolved result, or a thrown error. */
function outcome(res) {
  if (res && typeof res === 'object' && 'ok' in res) return res;
  if (res && typeof res === 'object' && (res.version !== undefined || res.id !== undefined)) return { ok: true, ...res };
  return { ok: true };
}
function failure(e) {
  const err = e && (e.error || e);
  return { ok: false, error: err && typeof err === 'object' ? err : { message: String(e) } };
}
function conflictVersion(err) {
  if (!err) return undefined;
  return err.current_version ?? err.currentVersion;
}

async function onCreate(ev) {
  ev.preventDefault();
  if (!client) return;
  const v = readFields('create');
  const data = { name: v.name };
  for (const f of ['gold', 'level', 'experience']) data[f] = v[f] === null ? 0 : v[f];
  const id = $('create-id').value.trim();
  const form = $('create-form');
  const submitted = new Map([...form.querySelectorAll('input')].map((i) => [i, i.value]));
  queuedNotice();
  const btn = $('create-submit');
  btn.disabled = true;
  let r;
  try { r = outcome(await client.create(COLLECTION, data, id ? { id } : {})); } catch (e) { r = failure(e); }
  btn.disabled = false;
  if (r.ok) {
    notify(`Created game ${r.id ?? id} (v${r.version ?? 1}${r.seq ? `, seq ${r.seq}` : ''}).`);
    // back to the defaults; a field edited while the create was pending (e.g. queued offline) is kept
    for (const [input, value] of submitted) if (input.value === value) input.value = input.defaultValue;
    $('create-name').focus();
  } else {
    notify(`Create failed: ${errorText(r.error)}`, 'error');
  }
  renderAll();
}

async function onUpdate(ev) {
  ev.preventDefault();
  if (!client || detail.id === null) return;
  const v = readFields('update');
  const patch = {};
  for (const f of FIELDS) {
    const before = detail.base[f] === undefined ? null : detail.base[f];
    const after = NUMERIC.has(f) ? v[f] : (v[f] === '' && before === null ? null : v[f]);
    if (after !== before) patch[f] = after;
  }
  if (!Object.keys(patch).length) { notify('Nothing changed.'); return; }
  const id = detail.id;
  const edited = detail.version;
  queuedNotice();
  const btn = $('update-submit');
  btn.disabled = true;
  let r;
  try { r = outcome(await client.update(COLLECTION, id, patch, { expectedVersion: edited })); } catch (e) { r = failure(e); }
  btn.disabled = false;
  if (r.ok) {
    conflictState = null;
    notify(`Updated game ${id} to v${r.version}${r.seq ? ` (seq ${r.seq})` : ''}.`);
    if (detail.id === id) {
      const d = getDoc(id);
      const version = r.version ?? (d && d.version) ?? edited;
      const data = d && d.version === version ? (d.data || {}) : { ...(d ? d.data : {}), ...detail.base, ...patch };
      loadIntoForm(version, data);
    }
  } else if (r.error && r.error.code === 'version_conflict') {
    await showConflict(id, conflictVersion(r.error), edited);
  } else {
    notify(`Update failed: ${errorText(r.error)}`, 'error');
  }
  renderAll();
}

async function onDelete() {
  if (!client || detail.id === null) return;
  const id = detail.id;
  const edited = detail.version;
  queuedNotice();
  const btn = $('delete');
  btn.disabled = true;
  let r;
  try { r = outcome(await client.remove(COLLECTION, id, { expectedVersion: edited })); } catch (e) { r = failure(e); }
  btn.disabled = false;
  if (r.ok) {
    notify(`Deleted game ${id}${r.seq ? ` (seq ${r.seq})` : ''}.`);
    if (detail.id === id) { detail.id = null; detail.version = null; conflictState = null; }
    $('create-name').focus();
  } else if (r.error && r.error.code === 'version_conflict') {
    await showConflict(id, conflictVersion(r.error), edited);
  } else {
    notify(`Delete failed: ${errorText(r.error)}`, 'error');
  }
  renderAll();
}

function onConflictReload() {
  if (!conflictState || !conflictState.data) return;
  loadIntoForm(conflictState.fetchedVersion ?? conflictState.currentVersion, conflictState.data);
  conflictState = null;
  renderDetail();
  notify('Loaded the current values; edit and save again.');
  $('update-name').focus();
}

function onDetailRefresh() {
  const d = getDoc(detail.id);
  if (!d) return;
  loadIntoForm(d.version, d.data || {});
  renderDetail();
  $('update-name').focus();
}

/* ---------------------------------------------------------------- sync & event log */

async function onSync() {
  const out = $('sync-result');
  if (!client) { out.textContent = 'sync failed: not connected'; return; }
  const btn = $('sync');
  btn.disabled = true;
  out.textContent = 'syncing…';
  try {
    const m = (await client.sync()) || {};
    out.textContent = `synced at seq ${m.seq}: ${m.snapshots ?? 0} snapshots, ${m.events ?? 0} events`;
    out.dataset.seq = String(m.seq);
    out.dataset.snapshots = String(m.snapshots ?? 0);
    out.dataset.events = String(m.events ?? 0);
    out.dataset.kind = 'ok';
  } catch (e) {
    out.textContent = `sync failed: ${errorText(e)}`;
    out.dataset.kind = 'error';
  } finally {
    btn.disabled = false;
  }
  scheduleRender();
}

function timeOf(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts ?? '');
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** A text as two spans: the head (cut with an ellipsis when the cell is too narrow) and the tail (kept). */
function clipped(text, tail = 6) {
  const cut = text.length > tail * 2 ? text.length - tail : text.length;
  return [el('span', { class: 'clip-head' }, text.slice(0, cut)), el('span', { class: 'clip-tail' }, text.slice(cut))];
}

/** The last HISTORY events of the collection, so that the log is not empty after a (re)load. */
async function loadHistory() {
  try {
    const health = await fetch('/api/health');
    if (!health.ok) throw new Error(`GET /api/health: HTTP ${health.status}`);
    const last = Number((await health.json()).last_seq) || 0;
    if (last <= 0) return;
    const after = Math.max(0, last - HISTORY);
    const res = await fetch(`/api/events?collection=${encodeURIComponent(COLLECTION)}&after=${after}&limit=${HISTORY}`, { headers: authHeaders() });
    if (res.status === 401 || res.status === 403) return; // the banner says why once the client connects
    if (!res.ok) throw new Error(`GET /api/events: HTTP ${res.status}`);
    const body = await res.json();
    for (const ev of Array.isArray(body.items) ? body.items : []) logEvent(ev);
  } catch (e) {
    notify(`Could not load the recent events: ${errorText(e)}`, 'error');
  }
}

function logEvent(ev) {
  if (!ev || ev.seq === undefined || loggedSeqs.has(ev.seq)) return;
  loggedSeqs.add(ev.seq);
  const mine = client && ev.client_id === client.clientId;
  const li = el('li', { 'data-testid': 'log-entry', class: `log-entry op-${ev.op}${mine ? ' mine' : ''}`, value: ev.seq });
  li.dataset.seq = String(ev.seq);
  li.dataset.id = String(ev.id);
  li.dataset.op = String(ev.op);
  li.dataset.clientId = String(ev.client_id);
  const docText = `${ev.collection}/${ev.id}`;
  const who = String(ev.client_id);
  li.append(
    el('time', { class: 'ts', datetime: ev.ts, title: ev.ts }, timeOf(ev.ts)),
    el('span', { class: 'seq', title: `seq ${ev.seq}` }, `#${ev.seq}`),
    el('span', { class: `op op-${ev.op}` }, String(ev.op)),
    // a long id is shortened in the middle (its start, "…", its last characters), so that ids sharing a
    // prefix (UUIDv7: a timestamp) stay distinguishable; the full text is in the title
    el('span', { class: 'doc', title: `${docText} v${ev.version}` }, ...clipped(docText), el('span', { class: 'ver' }, ` v${ev.version}`)),
    el('span', { class: 'who', title: `client ${who}${mine ? ' (this tab)' : ''}` }, ...clipped(who), mine ? el('span', { class: 'you' }, ' (you)') : null),
    el('code', { class: 'patch' }, compact(ev.patch ?? [])),
  );
  // newest (highest seq) first; catch-up events may arrive out of global order
  const log = $('event-log');
  let before = null;
  for (const child of log.children) {
    if (Number(child.dataset.seq) < ev.seq) { before = child; break; }
  }
  log.insertBefore(li, before);
  while (log.children.length > LOG_MAX) {
    const last = log.lastElementChild;
    loggedSeqs.delete(Number(last.dataset.seq));
    last.remove();
  }
  $('log-count').textContent = String(log.children.length);
}

/* ---------------------------------------------------------------- boot */

function wire() {
  $('connect').addEventListener('click', connect);
  $('disconnect').addEventListener('click', disconnect);
  for (const r of document.querySelectorAll('input[name="transport"]')) {
    r.addEventListener('change', () => {
      saveTransport(chosenTransport());
      if (client && client.status && client.status !== 'offline') connect();
    });
  }
  $('create-form').addEventListener('submit', onCreate);
  $('update-form').addEventListener('submit', onUpdate);
  $('delete').addEventListener('click', onDelete);
  $('conflict-reload').addEventListener('click', onConflictReload);
  $('detail-refresh').addEventListener('click', onDetailRefresh);
  $('sync').addEventListener('click', onSync);
  $('token-form').addEventListener('submit', onTokenApply);
}

async function boot() {
  window.eventsyncUI = { client: null, select };
  const t = savedTransport();
  $(`transport-${t}`).checked = true;
  $('token').value = savedToken();
  wire();
  renderAll();
  try {
    ({ EventSyncClient } = await import('/client/eventsync.js'));
  } catch (e) {
    const f = $('fatal');
    f.textContent = `Could not load the sync client (/client/eventsync.js): ${e && e.message ? e.message : e}`;
    show(f, true);
    for (const id of ['connect', 'disconnect', 'sync', 'create-submit']) $(id).disabled = true;
    return;
  }
  connect();
  loadHistory();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
