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
 *     games-empty          "No games yet." / "No games with level ≥ N." when the list is empty.
 *   Level filter (what the page subscribes to)
 *     filter-level, filter-apply (Enter submits), filter-clear
 *                          with a number N the page follows the scope
 *                          {"id":"games-filter","collection":"games","where":{"level":{"$gte":N}}} instead of
 *                          the whole collection; an empty value (or Clear) goes back to the whole collection.
 *                          The list shows what the client holds: a document moving out of the filter (a
 *                          `removed` from the server) disappears, one moving in appears, live. Kept in this
 *                          tab's sessionStorage["eventsync.levelFilter"] (a reload keeps it).
 *     filter-state         "Showing every game" / "Showing games with level ≥ N"; attributes data-level (N, or
 *                          "" for the whole collection) and data-state: "pending" (the change is not synced
 *                          yet: sent, or waiting for a connection), "synced", "error".
 *   Open a game by id (a lookup by id, whatever the filter)
 *     open-id, open-submit subscribes the scope {"id":"open-<id>","collection":"games","ids":["<id>"]} and shows
 *                          the document. Opening another id replaces it. (An id over 123 characters gets a
 *                          shortened subscription id: "open-<start>-<hash>", since those are ≤ 128.)
 *     open-message         data-kind: "pending" ("Opening …"), "not-found" ("No game with id "x" …": the scope
 *                          is dropped again), "error"; empty once the game is shown.
 *     opened               container (hidden unless a game is open); data-id, data-state "loading" | "open";
 *                          opened-id, opened-version (follows live changes), opened-data (JSON),
 *                          opened-outside (shown when the game does not match the level filter: it is then
 *                          held only by the open scope and left out of the games list), opened-deleted,
 *                          opened-edit (select it in Details), opened-close (unsubscribes the scope: a game
 *                          outside the filter leaves the client).
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
 *     detail-removed       shown when the selected game left the client's subscriptions (a `removed`: it no
 *                          longer matches the filter, or its open-by-id scope was closed) — not a delete.
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
 *                          Deduplicated by seq; keeps the newest 500. A write that moved a game out of the
 *                          subscriptions arrives as `removed` instead of its event: it is logged too (the
 *                          event read from GET /api/events), with data-left="true" and class "left".
 *     log-count            number of entries.
 *   Messages
 *     notice               last write result / error message (data-kind="ok" | "error").
 *     fatal                shown if /client/eventsync.js cannot be loaded.
 *   window.eventsyncUI = { client, select(id), setLevelFilter(n|null), openGame(id), closeGame() } for
 *   debugging/tests.
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
const FILTER_KEY = 'eventsync.levelFilter';
const FILTER_ID = 'games-filter';
// Only ever held for the moment a filter N is replaced by a filter M (see applySubscriptions).
const FILTER_BRIDGE_ID = 'games-filter-prev';
const DOC_ID = /^[A-Za-z0-9_\-.:@]{1,128}$/;

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
// ids of documents that left every subscription (a `removed`), until they come back; for detail-removed
const removedIds = new Set();

// What the page subscribes to. `levelFilter`: null (the whole collection) or N (level ≥ N); `filterSync`
// says whether the client's subscriptions are there yet. `opened`: the game opened by id, or null.
let levelFilter = savedFilter();
let filterSync = { state: 'pending', error: null, gen: 0, awaitSync: true }; // until the first synced
let opened = null; // {id, subId, state: 'loading' | 'open', awaitSync}
let openMessage = { kind: '', text: '' };
// games whose open scope is being closed: kept out of the list (when outside the filter) until the server
// has removed them, so that they do not flash into it meanwhile
const closingIds = new Map(); // id -> count

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

function savedFilter() {
  try {
    const raw = sessionStorage.getItem(FILTER_KEY);
    const n = raw === null || raw === '' ? NaN : Number(raw);
    return Number.isFinite(n) ? n : null;
  } catch { return null; }
}

function saveFilter(n) {
  try {
    if (n === null) sessionStorage.removeItem(FILTER_KEY);
    else sessionStorage.setItem(FILTER_KEY, String(n));
  } catch { /* private mode */ }
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
  const opts = { url: location.origin, transport, subscribe: wantedSubscriptions(), token: () => currentToken() };
  const forced = new URLSearchParams(location.search).get('client');
  if (forced) opts.clientId = forced;
  const c = new EventSyncClient(opts);
  client = c;
  clientTransport = transport;
  window.eventsyncUI.client = c;
  on(c, 'status', () => { if (c === client) renderStatus(); });
  on(c, 'change', (ch) => {
    if (c !== client) return;
    if (ch && ch.collection === COLLECTION) {
      if (ch.removed) removedIds.add(ch.id);
      else removedIds.delete(ch.id);
    }
    scheduleRender();
  });
  on(c, 'synced', (m) => { if (c === client) { onSynced(m); scheduleRender(); } });
  on(c, 'event', (ev) => { if (c === client) { logEvent(ev); scheduleRender(); } });
  on(c, 'removed', (m) => { if (c === client) logRemoved(m); });
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
  // The new client starts with the wanted set in its hello (or SSE opening): its first full `synced`
  // settles what was still pending with the old one.
  filterSync = { state: 'pending', error: null, gen: ++filterSync.gen, awaitSync: true };
  if (opened && opened.state === 'loading') opened.awaitSync = true;
  removedIds.clear();
  closingIds.clear();
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
  renderFilter();
  renderList();
  renderVector();
  renderDetail();
  renderOpened();
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
  const items = docs().filter(listed);
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
  $('games-empty').textContent = levelFilter === null ? 'No games yet.' : `No games with level ≥ ${levelFilter}.`;
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

/* ---------------------------------------------------------------- subscriptions: level filter, open by id */

const subIdOf = (sub) => (typeof sub === 'string' ? sub : sub.id);
const sameSub = (a, b) => compact(a) === compact(b);
const isStopped = (e) => e && (e.message === 'disconnected' || e.code === 'removed');

function filterScope(n) {
  return { id: FILTER_ID, collection: COLLECTION, where: { level: { $gte: n } } };
}

/** The page's base subscription: the whole collection, or the level filter's scope. */
function wantedBase() {
  return levelFilter === null ? COLLECTION : filterScope(levelFilter);
}

/** "open-<id>"; a subscription id has at most 128 characters, so a long document id is shortened (with a
 *  hash of the whole id, so that two long ids sharing a start still differ). */
function openSubId(id) {
  const full = `open-${id}`;
  if (full.length <= 128) return full;
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < id.length; i++) { h ^= id.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
  return `open-${id.slice(0, 110)}-${h.toString(16).padStart(8, '0')}`;
}

function openScope(o) {
  return { id: o.subId, collection: COLLECTION, ids: [o.id] };
}

/** What a new client subscribes to (its hello / SSE opening). */
function wantedSubscriptions() {
  return [wantedBase(), ...(opened ? [openScope(opened)] : [])];
}

/** The level filter, evaluated locally the way the server does `$gte` (numbers only; on an array, any
 *  element). Only used to leave the opened game out of the list when it does not match: everything else
 *  the client holds is there because the filter scope (or the whole collection) took it. */
function matchesFilter(data) {
  if (levelFilter === null) return true;
  const v = data ? data.level : undefined;
  const ok = (x) => typeof x === 'number' && x >= levelFilter;
  return Array.isArray(v) ? ok(v) || v.some(ok) : ok(v);
}

function listed(d) {
  const openOnly = (opened && d.id === opened.id) || closingIds.has(d.id);
  return !(openOnly && !matchesFilter(d.data));
}

/** Ends an open scope (the open game `o`): outside the filter, the server then sends its `removed`. */
function unsubscribeOpen(c, o, what) {
  closingIds.set(o.id, (closingIds.get(o.id) || 0) + 1);
  const done = () => {
    const n = (closingIds.get(o.id) || 1) - 1;
    if (n > 0) closingIds.set(o.id, n); else closingIds.delete(o.id);
    scheduleRender();
  };
  c.removeSubscription(o.subId).then(done, (e) => {
    done();
    if (c === client && !isStopped(e)) notify(`Could not ${what} game ${o.id}: ${errorText(e)}`, 'error');
  });
}

/**
 * Changes the client's base subscription to `wanted` in place, without a reconnect: on a live WebSocket
 * each step is a `subscribe`/`unsubscribe` message (the server answers with only the difference); on SSE,
 * which has no back channel, all the steps are made synchronously, so the client reopens its stream once,
 * with the final set, and that catch-up is again only the difference. Removing first would make the
 * server send `removed` for everything the old subscription brought and then snapshot it all again, so the
 * new subscription is always added before the old one goes:
 *   whole → filter, filter → whole: add the new one, remove the old one (only what leaves is `removed`);
 *   filter N → filter M (the same id, "games-filter"): a bridge holds the old filter under another id while
 *   "games-filter" is replaced, then goes: add bridge(N), remove games-filter, add games-filter(M),
 *   remove bridge — the documents in both filters never leave, those only in M arrive, those only in N are
 *   `removed` at the end.
 * Returns the promises of the steps.
 */
function changeBase(c, wanted) {
  const subs = c.subscriptions();
  const has = (id) => subs.some((x) => subIdOf(x) === id);
  const current = subs.find((x) => x === COLLECTION) ?? subs.find((x) => typeof x === 'object' && x.id === FILTER_ID) ?? null;
  const bridge = has(FILTER_BRIDGE_ID); // left over by a step that failed
  const ops = [];
  const add = (sub) => ops.push(c.addSubscription(sub));
  const remove = (id) => ops.push(c.removeSubscription(id));
  if (!current) add(wanted);
  else if (subIdOf(current) !== subIdOf(wanted)) { add(wanted); remove(subIdOf(current)); }
  else if (!sameSub(current, wanted)) {
    if (!bridge) add({ ...current, id: FILTER_BRIDGE_ID });
    remove(FILTER_ID);
    add(wanted);
    remove(FILTER_BRIDGE_ID);
    return ops;
  }
  if (bridge) remove(FILTER_BRIDGE_ID);
  return ops;
}

/** Sets the level filter: a number N (level ≥ N) or null (the whole collection). */
async function setLevelFilter(value) {
  const n = value === null || value === undefined || value === '' ? null : Number(value);
  if (n !== null && !Number.isFinite(n)) {
    filterSync = { state: 'error', error: `not a number: ${value}`, gen: ++filterSync.gen };
    renderFilter();
    return;
  }
  $('filter-level').value = n === null ? '' : String(n);
  if (n === levelFilter && filterSync.state !== 'error') { renderAll(); return; } // already so (or on its way)
  const gen = ++filterSync.gen;
  levelFilter = n;
  saveFilter(n);
  filterSync = { state: 'pending', error: null, gen };
  renderAll();
  if (!client) return; // the next client starts with it
  const c = client;
  const results = await Promise.allSettled(changeBase(c, wantedBase()));
  if (c !== client || gen !== filterSync.gen) return; // a newer change (or client) took over
  const failed = results.filter((r) => r.status === 'rejected' && !isStopped(r.reason));
  if (failed.length) {
    const text = failed.map((r) => errorText(r.reason)).join('; ');
    filterSync = { state: 'error', error: text, gen };
    notify(`Could not change the filter: ${text}`, 'error');
    // never stay without a subscription to the games
    const subs = c.subscriptions();
    if (!subs.some((x) => x === COLLECTION || (typeof x === 'object' && x.id === FILTER_ID))) {
      c.addSubscription(COLLECTION).catch(() => {});
      levelFilter = null;
      saveFilter(null);
    }
  } else if (results.some((r) => r.status === 'rejected' && r.reason.message === 'disconnected')) {
    filterSync = { state: 'pending', error: null, gen, awaitSync: true }; // the next connection settles it
  } else {
    filterSync = { state: 'synced', error: null, gen };
  }
  scheduleRender();
}

/** A `synced` of the current client: a full one (not a single subscription's) settles what waited for a
 *  connection. */
function onSynced(m) {
  if (m && m.subscription) return;
  if (filterSync.state === 'pending' && filterSync.awaitSync) filterSync = { state: 'synced', error: null, gen: filterSync.gen };
  if (opened && opened.state === 'loading' && opened.awaitSync) settleOpen(opened);
}

function renderFilter() {
  const out = $('filter-state');
  const { state, error } = filterSync;
  out.dataset.level = levelFilter === null ? '' : String(levelFilter);
  out.dataset.state = state;
  const what = levelFilter === null ? 'every game' : `games with level ≥ ${levelFilter}`;
  if (state === 'error') out.textContent = `Filter not applied: ${error}`;
  else if (state === 'pending') {
    const waiting = !client || client.status !== 'live' ? ' (when connected)' : '';
    out.textContent = `Subscribing to ${what}…${waiting}`;
  } else out.textContent = `Showing ${what}`;
  $('filter-clear').disabled = levelFilter === null && state !== 'error';
}

function onFilterSubmit(ev) {
  ev.preventDefault();
  const raw = $('filter-level').value.trim();
  setLevelFilter(raw === '' ? null : raw);
}

function onFilterClear() {
  $('filter-level').value = '';
  setLevelFilter(null);
}

/** Opens the game `id` in the "Open a game by id" panel (replacing the open one). */
async function openGame(rawId) {
  const id = String(rawId ?? '').trim();
  if (!DOC_ID.test(id) || id.startsWith('.')) {
    openMessage = { kind: 'error', text: `"${id}" is not a game id (1–128 of A–Z a–z 0–9 _ - . : @, not starting with ".").` };
    renderOpened();
    return;
  }
  if (opened && opened.id === id) { renderOpened(); return; }
  const prev = opened;
  opened = { id, subId: openSubId(id), state: 'loading', awaitSync: false };
  openMessage = { kind: 'pending', text: `Opening game "${id}"…` };
  renderAll();
  if (!client) { opened.awaitSync = true; return; }
  const c = client;
  const o = opened;
  const adding = c.addSubscription(openScope(o)); // added before the old one goes (see changeBase)
  if (prev) unsubscribeOpen(c, prev, 'close');
  try {
    await adding;
  } catch (e) {
    if (c !== client || o !== opened) return;
    if (isStopped(e)) { o.awaitSync = true; return; } // kept for the next connection
    opened = null;
    openMessage = { kind: 'error', text: `Could not open game "${id}": ${errorText(e)}` };
    scheduleRender();
    return;
  }
  if (c !== client || o !== opened) return;
  settleOpen(o);
}

/** The open scope's catch-up is done: the client holds the game, or it does not exist. */
function settleOpen(o) {
  if (o !== opened) return;
  if (getDoc(o.id)) {
    o.state = 'open';
    openMessage = { kind: '', text: '' };
  } else {
    // nothing to follow: drop the scope again (a game created later with that id is not shown)
    opened = null;
    if (client) unsubscribeOpen(client, o, 'close');
    openMessage = { kind: 'not-found', text: `No game with id "${o.id}" (it does not exist, or it was deleted).` };
  }
  scheduleRender();
}

function closeGame() {
  if (!opened) return;
  const o = opened;
  opened = null;
  openMessage = { kind: '', text: '' };
  if (client) unsubscribeOpen(client, o, 'close');
  renderAll();
}

function renderOpened() {
  const msg = $('open-message');
  msg.textContent = openMessage.text;
  msg.dataset.kind = openMessage.kind;
  const box = $('opened');
  show(box, !!opened);
  if (!opened) { delete box.dataset.id; delete box.dataset.state; return; }
  const d = getDoc(opened.id);
  if (d && opened.state === 'loading') { opened.state = 'open'; openMessage = { kind: '', text: '' }; msg.textContent = ''; msg.dataset.kind = ''; }
  box.dataset.id = opened.id;
  box.dataset.state = opened.state;
  $('opened-id').textContent = opened.id;
  $('opened-version').textContent = d ? String(d.version) : '—';
  $('opened-data').textContent = d ? JSON.stringify(d.data ?? {}, null, 2) : '';
  show($('opened-data'), !!d);
  show($('opened-deleted'), !d && opened.state === 'open');
  show($('opened-outside'), !!d && !matchesFilter(d.data));
  $('opened-edit').disabled = !d;
}

function onOpenSubmit(ev) {
  ev.preventDefault();
  openGame($('open-id').value);
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
  show($('detail-deleted'), !d && !removedIds.has(detail.id));
  show($('detail-removed'), !d && removedIds.has(detail.id));
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

/** A write that moved a game out of the client's scopes comes as `removed` (with the event's seq) instead
 *  of the event: the log shows that event (read from GET /api/events), marked as having left. */
async function logRemoved(m) {
  if (!m || m.collection !== COLLECTION || m.seq === undefined || loggedSeqs.has(m.seq)) return;
  let ev = null;
  try {
    const q = `collection=${encodeURIComponent(m.collection)}&id=${encodeURIComponent(m.id)}&after=${m.seq - 1}&limit=1`;
    const res = await fetch(`/api/events?${q}`, { headers: authHeaders() });
    if (res.ok) ev = ((await res.json()).items || []).find((e) => e.seq === m.seq) || null;
  } catch { /* the entry below says what is known */ }
  logEvent(ev || { seq: m.seq, collection: m.collection, id: m.id, version: m.version, op: 'removed', client_id: '—' }, { left: true });
}

function logEvent(ev, { left = false } = {}) {
  if (!ev || ev.seq === undefined || loggedSeqs.has(ev.seq)) return;
  loggedSeqs.add(ev.seq);
  const mine = client && ev.client_id === client.clientId;
  const li = el('li', { 'data-testid': 'log-entry', class: `log-entry op-${ev.op}${mine ? ' mine' : ''}${left ? ' left' : ''}`, value: ev.seq });
  if (left) li.dataset.left = 'true';
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
    el('code', { class: 'patch' }, left ? el('span', { class: 'left-note' }, 'left your subscriptions · ') : null, compact(ev.patch ?? [])),
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
  $('filter-form').addEventListener('submit', onFilterSubmit);
  $('filter-clear').addEventListener('click', onFilterClear);
  $('open-form').addEventListener('submit', onOpenSubmit);
  $('opened-close').addEventListener('click', closeGame);
  $('opened-edit').addEventListener('click', () => { if (opened) select(opened.id); });
}

async function boot() {
  window.eventsyncUI = { client: null, select, setLevelFilter, openGame, closeGame };
  const t = savedTransport();
  $(`transport-${t}`).checked = true;
  $('token').value = savedToken();
  $('filter-level').value = levelFilter === null ? '' : String(levelFilter);
  wire();
  renderAll();
  try {
    ({ EventSyncClient } = await import('/client/eventsync.js'));
  } catch (e) {
    const f = $('fatal');
    f.textContent = `Could not load the sync client (/client/eventsync.js): ${e && e.message ? e.message : e}`;
    show(f, true);
    for (const id of ['connect', 'disconnect', 'sync', 'create-submit', 'filter-apply', 'open-submit']) $(id).disabled = true;
    return;
  }
  connect();
  loadHistory();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
