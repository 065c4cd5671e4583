/*
 * EventSync chat — one room on the collection `messages` (documents {text, name, at}), built on the JS
 * client (/client/eventsync.js): the last 20 messages on connect, then new ones live (the scope
 * {"id":"recent","collection":"messages","latest":20}); who is online (the presence channel `messages`,
 * state {name}); "<name> is typing…" (broadcasts {kind:"typing", typing:true|false}, refreshed at most
 * once a second while typing, forgotten 3 s after the last refresh).
 *
 * Contract for tests (data-testid):
 *   sign-in, sign-in-form   shown while signed out; name (required, ≤ 40 characters), token (a JWT for a
 *                           server run with --auth jwt; an empty name then takes the token's subject),
 *                           sign-in-submit. Name and token are kept in this tab's sessionStorage (the token
 *                           under the Games page's key, "eventsync.token"); a reload signs in again.
 *   transport, transport-ws, transport-sse
 *                           the transport (this tab's sessionStorage, or ?transport=ws|sse); changing it
 *                           while signed in reconnects on the other one.
 *   status                  the client's status: offline | connecting | syncing | live (data-status too).
 *   me                      the name signed in with; sign-out leaves the room and disconnects.
 *   room                    shown while signed in:
 *     messages              the list, oldest first (by `at`, then id); each entry data-testid="message" with
 *                           data-id, data-name, class "mine" for this name's, data-pending="true" until the
 *                           server has it, data-failed="true" if it was refused; children
 *                           [data-field="name"], [data-field="text"], time.
 *     message-count         number of entries; messages-empty when none.
 *     typing                "" | "ann is typing…" | "ann and bob are typing…" | "ann, bob and N more are typing…".
 *     chat-input, send      the composer (Enter sends); an empty message is not sent.
 *   online-panel            shown while signed in:
 *     online                the members, one entry per client (by name), data-testid="member" with
 *                           data-name, data-client-id, data-self="true" for this tab (text "(you)").
 *     online-count          number of entries.
 *   notice                  the last error (data-kind="error") or information.
 *   window.eventsyncChat = { client, signIn(name, token?), signOut() } for debugging/tests.
 */

const COLLECTION = 'messages';
const CHANNEL = 'messages';
const RECENT = { id: 'recent', collection: COLLECTION, latest: 20 };
const TYPING_TTL_MS = 3000; // a typing indicator without a refresh for this long goes away
const TYPING_REFRESH_MS = 1000; // while typing, a refresh at most this often
const NAME_MAX = 40;
const TEXT_MAX = 2000;
const KEYS = { name: 'eventsync.chat.name', signedIn: 'eventsync.chat.signedIn', transport: 'eventsync.chat.transport', token: 'eventsync.token' };

const $ = (id) => document.getElementById(id);
const show = (node, on) => { node.hidden = !on; };

let EventSyncClient = null;
let client = null;
let me = null; // {name, token}
const offs = []; // the current client's listeners, to drop with it
const typingPeers = new Map(); // member id -> {name, until}
const myTyping = { on: false, sentAt: 0 };
let typingTimer = null;
const sent = new Map(); // id -> {data, failed}: messages sent from this page, until the server has them
const rows = new Map(); // id -> <li>
let renderQueued = false;
let renderDown = false;

/* ---------------------------------------------------------------- storage */

function load(key) {
  try { return sessionStorage.getItem(key) || ''; } catch { return ''; }
}
function save(key, value) {
  try {
    if (value) sessionStorage.setItem(key, value);
    else sessionStorage.removeItem(key);
  } catch { /* private mode */ }
}

function chosenTransport() {
  return document.querySelector('input[name="transport"]:checked')?.value === 'sse' ? 'sse' : 'ws';
}

/** The subject of a JWT (read, not verified: only to name the user), or ''. */
function tokenSubject(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const sub = JSON.parse(atob(b64)).sub;
    return typeof sub === 'string' ? sub : '';
  } catch { return ''; }
}

/* ---------------------------------------------------------------- notices */

function notify(text, kind = 'info') {
  const n = $('notice');
  n.textContent = text;
  n.dataset.kind = kind;
}
function clearNotice() { notify(''); }

const errorText = (e) => (e && (e.message || (e.error && e.error.message))) || String(e);

/* ---------------------------------------------------------------- the client */

function dropClient() {
  for (const off of offs.splice(0)) off();
  if (client) {
    try { client.leave(CHANNEL); } catch { /* not joined */ }
    client.disconnect();
  }
  client = null;
  window.eventsyncChat.client = null;
  typingPeers.clear();
  myTyping.on = false;
}

function on(c, name, fn) {
  c.on(name, fn);
  offs.push(() => c.off(name, fn));
}

function makeClient() {
  dropClient();
  const transport = chosenTransport();
  const token = me.token;
  const c = new EventSyncClient({
    url: location.origin,
    transport,
    subscribe: [RECENT],
    // A fixed token: refused, the client stops (no retry loop) until the user signs in again.
    token: token || undefined,
  });
  client = c;
  window.eventsyncChat.client = c;
  on(c, 'status', () => renderStatus());
  on(c, 'change', (ch) => { if (ch.collection === COLLECTION) scheduleRender(); });
  on(c, 'synced', () => scheduleRender());
  on(c, 'presence', (m) => {
    if (m.event === 'leave') typingPeers.delete(m.member.member);
    if (m.event === 'sync' || m.event === 'reset') typingPeers.clear();
    renderOnline();
    renderTyping();
  });
  on(c, 'broadcast', onBroadcast);
  on(c, 'unauthenticated', (e) => {
    notify(`The server refused the token (${errorText(e)}). This server runs with --auth jwt: sign out and sign in with a valid token.`, 'error');
  });
  on(c, 'error', (e) => {
    if (e && (e.code === 'forbidden' || e.code === 'invalid_subscription')) notify(errorText(e), 'error');
  });
  c.connect();
  c.join(CHANNEL, { name: me.name }).then(
    () => renderOnline(),
    (e) => {
      if (c !== client || e.code === 'disconnected' || e.code === 'left') return;
      notify(`Could not join the room: ${errorText(e)}`, 'error');
    },
  );
  renderAll();
  return c;
}

/* ---------------------------------------------------------------- sign in / out */

function signIn(name, token = '') {
  token = String(token || '').trim();
  name = String(name || '').trim() || tokenSubject(token);
  if (!name) {
    notify('Enter a name.', 'error');
    $('name').focus();
    return false;
  }
  if (name.length > NAME_MAX) name = name.slice(0, NAME_MAX);
  me = { name, token };
  save(KEYS.name, name);
  save(KEYS.token, token);
  save(KEYS.signedIn, '1');
  $('name').value = name;
  clearNotice();
  makeClient();
  $('chat-input').focus();
  return true;
}

function signOut() {
  dropClient();
  me = null;
  save(KEYS.signedIn, '');
  sent.clear();
  for (const li of rows.values()) li.remove();
  rows.clear();
  renderAll();
  $('name').focus();
}

function onSignIn(ev) {
  ev.preventDefault();
  signIn($('name').value, $('token').value);
}

/* ---------------------------------------------------------------- sending, typing */

function newId() {
  const r = new Uint8Array(6);
  crypto.getRandomValues(r);
  return `m-${Date.now().toString(36)}-${Array.from(r, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function onSend(ev) {
  ev.preventDefault();
  if (!client) return;
  const input = $('chat-input');
  const text = input.value.trim().slice(0, TEXT_MAX);
  if (!text) return;
  const id = newId();
  const data = { text, name: me.name, at: Date.now() };
  sent.set(id, { data, failed: false });
  input.value = '';
  setTyping(false);
  const c = client;
  c.create(COLLECTION, data, { id }).then((r) => {
    if (c !== client) return;
    if (!r.ok) {
      const s = sent.get(id);
      if (s) s.failed = true;
      notify(`Your message was not sent: ${errorText(r)}`, 'error');
    }
    scheduleRender();
  });
  scheduleRender(true);
}

/** Tells the others this tab is typing (or stopped); a no-op when nothing changed and no refresh is due. */
function setTyping(typing) {
  if (!client) return;
  const now = Date.now();
  if (typing && myTyping.on && now - myTyping.sentAt < TYPING_REFRESH_MS) return;
  if (!typing && !myTyping.on) return;
  myTyping.on = typing;
  myTyping.sentAt = now;
  try {
    client.broadcast(CHANNEL, { kind: 'typing', typing });
  } catch {
    // not joined (signing out)
  }
}

function onInput() {
  setTyping($('chat-input').value.trim() !== '');
}

function onBroadcast(m) {
  const d = m.data;
  if (!d || typeof d !== 'object' || d.kind !== 'typing') return;
  const id = m.from.member;
  if (d.typing) {
    const name = String((m.from.state && m.from.state.name) || m.from.user || 'someone');
    typingPeers.set(id, { name, until: Date.now() + TYPING_TTL_MS });
  } else typingPeers.delete(id);
  renderTyping();
}

/* ---------------------------------------------------------------- rendering */

function scheduleRender(scrollDown = false) {
  renderDown = renderDown || scrollDown;
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    const down = renderDown;
    renderQueued = false;
    renderDown = false;
    renderMessages(down);
  });
}

function renderAll() {
  const signedIn = !!me;
  show($('sign-in'), !signedIn);
  show($('room'), signedIn);
  show($('online-panel'), signedIn);
  show($('sign-out'), signedIn);
  show($('me-box'), signedIn);
  $('me').textContent = signedIn ? me.name : '';
  renderStatus();
  renderMessages(true);
  renderOnline();
  renderTyping();
}

function renderStatus() {
  const s = (client && client.status) || 'offline';
  const node = $('status');
  node.textContent = s;
  node.dataset.status = s;
}

/** What to list: the documents held, the messages this page sent and the writes still queued (from an
 *  earlier load of this tab), each once, oldest first. */
function messageList() {
  if (!client) return [];
  const byId = new Map();
  for (const d of client.documents(COLLECTION)) byId.set(d.id, { id: d.id, data: d.data, pending: false, failed: false });
  for (const [id, s] of sent) {
    if (byId.has(id)) sent.delete(id); // the server has it
    else byId.set(id, { id, data: s.data, pending: !s.failed, failed: s.failed });
  }
  for (const w of client.pendingWrites()) {
    if (w.op === 'create' && w.collection === COLLECTION && w.id && !byId.has(w.id)) {
      byId.set(w.id, { id: w.id, data: w.data, pending: true, failed: false });
    }
  }
  const at = (m) => (typeof m.data?.at === 'number' ? m.data.at : 0);
  return [...byId.values()].sort((a, b) => at(a) - at(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function timeText(at) {
  if (typeof at !== 'number') return '';
  return new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function fillRow(li, m) {
  const data = m.data || {};
  const name = typeof data.name === 'string' ? data.name : '?';
  const text = typeof data.text === 'string' ? data.text : JSON.stringify(data.text ?? '');
  li.dataset.id = m.id;
  li.dataset.name = name;
  li.classList.toggle('mine', !!me && name === me.name);
  if (m.pending) li.dataset.pending = 'true'; else delete li.dataset.pending;
  if (m.failed) li.dataset.failed = 'true'; else delete li.dataset.failed;
  const [nameNode, timeNode, textNode] = li.children;
  nameNode.textContent = name;
  timeNode.textContent = m.failed ? 'not sent' : m.pending ? 'sending…' : timeText(data.at);
  if (typeof data.at === 'number') timeNode.dateTime = new Date(data.at).toISOString();
  textNode.textContent = text;
}

function newRow() {
  const li = document.createElement('li');
  li.className = 'message';
  li.setAttribute('data-testid', 'message');
  const name = document.createElement('span');
  name.className = 'msg-name';
  name.dataset.field = 'name';
  const time = document.createElement('time');
  time.className = 'msg-time';
  const text = document.createElement('span');
  text.className = 'msg-text';
  text.dataset.field = 'text';
  li.append(name, time, text);
  return li;
}

function renderMessages(scrollDown) {
  const list = $('messages');
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = messageList();
  const seen = new Set();
  let prev = null;
  for (const m of items) {
    seen.add(m.id);
    let li = rows.get(m.id);
    if (!li) {
      li = newRow();
      rows.set(m.id, li);
    }
    fillRow(li, m);
    const want = prev ? prev.nextSibling : list.firstChild;
    if (li !== want) list.insertBefore(li, want);
    prev = li;
  }
  for (const [id, li] of rows) {
    if (!seen.has(id)) { li.remove(); rows.delete(id); }
  }
  $('message-count').textContent = String(items.length);
  show($('messages-empty'), !!me && items.length === 0);
  if (scrollDown || nearBottom) list.scrollTop = list.scrollHeight;
}

function renderOnline() {
  const list = $('online');
  const members = client ? client.members(CHANNEL) : [];
  // One entry per client: a session of it that ended without the server noticing yet may still be listed.
  const byClient = new Map();
  for (const m of members) {
    const had = byClient.get(m.client_id);
    if (!had || m.self) byClient.set(m.client_id, m);
  }
  const entries = [...byClient.values()].sort((a, b) => {
    if (a.self !== b.self) return a.self ? -1 : 1;
    const na = String(a.state.name || ''), nb = String(b.state.name || '');
    return na.localeCompare(nb) || (a.client_id < b.client_id ? -1 : 1);
  });
  const lis = entries.map((m) => {
    const li = document.createElement('li');
    li.className = 'member';
    li.setAttribute('data-testid', 'member');
    const name = String(m.state.name || m.user || m.client_id);
    li.dataset.name = name;
    li.dataset.clientId = m.client_id;
    if (m.self) li.dataset.self = 'true';
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'member-name';
    label.textContent = name;
    li.append(dot, label);
    if (m.self) {
      const you = document.createElement('span');
      you.className = 'muted';
      you.textContent = ' (you)';
      li.append(you);
    }
    if (m.user && m.user !== name) li.title = `signed in as ${m.user}`;
    return li;
  });
  list.replaceChildren(...lis);
  $('online-count').textContent = String(entries.length);
}

function renderTyping() {
  const now = Date.now();
  for (const [id, t] of typingPeers) if (t.until <= now) typingPeers.delete(id);
  const names = [...new Set([...typingPeers.values()].map((t) => t.name))].sort((a, b) => a.localeCompare(b));
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
  const node = $('typing');
  if (node.textContent !== text) node.textContent = text;
  // Expire the indicators on time, without a timer while nobody types.
  if (typingPeers.size && !typingTimer) {
    typingTimer = setInterval(() => {
      renderTyping();
      if (!typingPeers.size) { clearInterval(typingTimer); typingTimer = null; }
    }, 250);
  }
}

/* ---------------------------------------------------------------- boot */

function wire() {
  $('sign-in-form').addEventListener('submit', onSignIn);
  $('sign-out').addEventListener('click', signOut);
  $('composer').addEventListener('submit', onSend);
  $('chat-input').addEventListener('input', onInput);
  for (const r of document.querySelectorAll('input[name="transport"]')) {
    r.addEventListener('change', () => {
      save(KEYS.transport, chosenTransport());
      if (me) makeClient();
    });
  }
}

async function boot() {
  window.eventsyncChat = { client: null, signIn, signOut };
  const params = new URLSearchParams(location.search);
  const t = params.get('transport') || load(KEYS.transport) || 'ws';
  $(`transport-${t === 'sse' ? 'sse' : 'ws'}`).checked = true;
  $('name').value = params.get('name') || load(KEYS.name);
  $('token').value = load(KEYS.token);
  wire();
  renderAll();
  try {
    ({ EventSyncClient } = await import('/client/eventsync.js'));
  } catch (e) {
    const f = $('fatal');
    f.textContent = `Could not load the sync client (/client/eventsync.js): ${errorText(e)}`;
    show(f, true);
    $('sign-in-submit').disabled = true;
    return;
  }
  if (load(KEYS.signedIn) && $('name').value.trim()) signIn($('name').value, $('token').value);
  else $('name').focus();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
