// EventSync JavaScript client — one ES module, no build step, for browsers and Node >= 20.
// Speaks the sync protocol of docs/PROTOCOL.md over WebSocket or Server-Sent Events.

/** An error while applying an RFC 6902 patch. */
export class PatchError extends Error {
  constructor(message, index) {
    super(message);
    this.name = 'PatchError';
    this.index = index;
  }
}

function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!deepEqual(a[i], b[i])) return false;
    return true;
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k) || !deepEqual(a[k], b[k])) return false;
  }
  return true;
}

/** Splits an RFC 6901 JSON Pointer into unescaped tokens. */
export function parsePointer(path) {
  if (typeof path !== 'string') throw new PatchError(`invalid path ${JSON.stringify(path)}`);
  if (path === '') return [];
  if (path[0] !== '/') throw new PatchError(`invalid path ${JSON.stringify(path)}`);
  return path
    .slice(1)
    .split('/')
    .map((t) => {
      if (/~[^01]|~$/.test(t)) throw new PatchError(`invalid escape in path ${JSON.stringify(path)}`);
      return t.replace(/~1/g, '/').replace(/~0/g, '~');
    });
}

function arrayIndex(arr, token, forAdd) {
  if (forAdd && token === '-') return arr.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new PatchError(`invalid array index ${JSON.stringify(token)}`);
  const i = Number(token);
  if (forAdd ? i > arr.length : i >= arr.length) throw new PatchError(`array index ${i} out of bounds`);
  return i;
}

function hasOwn(o, k) {
  return Object.prototype.hasOwnProperty.call(o, k);
}

function getAt(doc, tokens) {
  let cur = doc;
  for (const t of tokens) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(cur, t, false)];
    else if (isObject(cur) && hasOwn(cur, t)) cur = cur[t];
    else throw new PatchError(`path /${tokens.join('/')} does not exist`);
  }
  return cur;
}

function parentOf(doc, tokens) {
  const parent = getAt(doc, tokens.slice(0, -1));
  if (parent === null || typeof parent !== 'object') throw new PatchError('parent is not a container');
  return parent;
}

// Each helper returns the new root (the root itself may be replaced).
function addAt(doc, tokens, value) {
  if (tokens.length === 0) return value;
  const parent = parentOf(doc, tokens);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, true), 0, value);
  else parent[last] = value;
  return doc;
}

function removeAt(doc, tokens) {
  if (tokens.length === 0) throw new PatchError('cannot remove the root');
  const parent = parentOf(doc, tokens);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, false), 1);
  else if (hasOwn(parent, last)) delete parent[last];
  else throw new PatchError(`path does not exist: ${last}`);
  return doc;
}

function replaceAt(doc, tokens, value) {
  if (tokens.length === 0) return value;
  const parent = parentOf(doc, tokens);
  const last = tokens[tokens.length - 1];
  if (Array.isArray(parent)) parent[arrayIndex(parent, last, false)] = value;
  else if (hasOwn(parent, last)) parent[last] = value;
  else throw new PatchError(`path does not exist: ${last}`);
  return doc;
}

/**
 * Applies an RFC 6902 JSON Patch to a copy of `doc` and returns the result; `doc` is not changed.
 * Throws PatchError when an operation fails (with `index`, the failing operation).
 */
export function applyPatch(doc, patch) {
  if (!Array.isArray(patch)) throw new PatchError('a JSON Patch must be an array');
  let out = clone(doc);
  patch.forEach((op, index) => {
    try {
      if (!isObject(op) || typeof op.op !== 'string') throw new PatchError('invalid operation');
      const path = parsePointer(op.path);
      const needValue = () => {
        if (!hasOwn(op, 'value')) throw new PatchError(`'${op.op}' needs a value`);
        return clone(op.value);
      };
      switch (op.op) {
        case 'add':
          out = addAt(out, path, needValue());
          break;
        case 'remove':
          out = removeAt(out, path);
          break;
        case 'replace':
          out = replaceAt(out, path, needValue());
          break;
        case 'move': {
          const from = parsePointer(op.from);
          if (from.length < path.length && from.every((t, i) => t === path[i])) {
            throw new PatchError('cannot move a value into itself');
          }
          const value = getAt(out, from);
          out = removeAt(out, from);
          out = addAt(out, path, value);
          break;
        }
        case 'copy': {
          const value = clone(getAt(out, parsePointer(op.from)));
          out = addAt(out, path, value);
          break;
        }
        case 'test':
          if (!deepEqual(getAt(out, path), needValue())) throw new PatchError('test failed');
          break;
        default:
          throw new PatchError(`unknown op ${JSON.stringify(op.op)}`);
      }
    } catch (e) {
      throw new PatchError(`patch operation ${index} failed: ${e.message}`, index);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// The message rules (pure): a replica state is {docs: {c: {id: data}}, vector: {c: {id: version}}}.

export function emptyState() {
  return { docs: {}, vector: {}, lastSeq: 0 };
}

function get2(m, a, b) {
  return m[a] && hasOwn(m[a], b) ? m[a][b] : undefined;
}

function set2(m, a, b, v) {
  (m[a] || (m[a] = {}))[b] = v;
}

function del2(m, a, b) {
  if (!m[a]) return;
  delete m[a][b];
  if (Object.keys(m[a]).length === 0) delete m[a];
}

export function localVersion(state, collection, id) {
  return get2(state.vector, collection, id) || 0;
}

function setVersion(state, collection, id, version) {
  if (version === 0) del2(state.vector, collection, id);
  else set2(state.vector, collection, id, version);
}

const isNat = (v) => Number.isSafeInteger(v) && v >= 0;
const isStr = (v) => typeof v === 'string' && v.length > 0;

/** Checks that a server message has the shape the rules need; returns an error string or null. */
export function validateMessage(m) {
  if (!isObject(m) || typeof m.type !== 'string') return 'not a message object';
  switch (m.type) {
    case 'snapshot':
      if (!isStr(m.collection) || !isStr(m.id) || !isNat(m.version) || typeof m.deleted !== 'boolean') {
        return 'malformed snapshot';
      }
      if (!m.deleted && !isObject(m.data)) return 'snapshot without data';
      return null;
    case 'event':
      if (!isStr(m.collection) || !isStr(m.id) || !isNat(m.version) || m.version < 1 || !isNat(m.seq)) {
        return 'malformed event';
      }
      if (!['create', 'update', 'delete'].includes(m.op) || !Array.isArray(m.patch)) return 'malformed event';
      return null;
    case 'synced':
      if (!isNat(m.seq) || !isObject(m.state_vector)) return 'malformed synced';
      if (m.subscription !== undefined && m.subscription !== null && !isStr(m.subscription)) return 'malformed synced';
      return null;
    case 'removed':
      if (!isStr(m.collection) || !isStr(m.id) || !isNat(m.version)) return 'malformed removed';
      if (m.seq !== undefined && m.seq !== null && !isNat(m.seq)) return 'malformed removed';
      return null;
    case 'unsubscribed':
      if (!isStr(m.id)) return 'malformed unsubscribed';
      return null;
    case 'result':
      if (typeof m.op_id !== 'string' || typeof m.ok !== 'boolean') return 'malformed result';
      return null;
    case 'authenticated':
      if (m.expires_at !== null && m.expires_at !== undefined && !isNat(m.expires_at)) return 'malformed authenticated';
      return null;
    case 'error':
    case 'pong':
      return null;
    case 'stream':
      if (!isStr(m.stream)) return 'malformed stream';
      return null;
    case 'presence':
      if (!isStr(m.channel) || !PRESENCE_EVENTS.has(m.event)) return 'malformed presence';
      if (m.event === 'sync') {
        if (!Array.isArray(m.members) || !m.members.every(isMember)) return 'malformed presence';
      } else if (!isMember(m.member)) return 'malformed presence';
      return null;
    case 'broadcast':
      if (!isStr(m.channel) || !isMember(m.from) || !hasOwn(m, 'data')) return 'malformed broadcast';
      return null;
    default:
      return `unknown message type ${JSON.stringify(m.type)}`;
  }
}

/** Drops a document and its vector entry (it left every scope); returns the change, or null when
 *  the state had nothing of it. */
function forget(state, collection, id, version) {
  const had = get2(state.docs, collection, id) !== undefined || get2(state.vector, collection, id) !== undefined;
  if (!had) return null;
  const v = version === undefined ? localVersion(state, collection, id) : version;
  del2(state.docs, collection, id);
  del2(state.vector, collection, id);
  return { collection, id, version: v, data: undefined, deleted: false, removed: true, source: 'removed' };
}

/**
 * Applies one server message to `state` (mutated) by the protocol's rules. Returns
 * {kind: 'applied' | 'duplicate' | 'gap' | 'invalid' | 'synced' | 'ignored', change?, reason?}.
 * `change` is {collection, id, version, data, deleted, source} (plus `removed: true` and
 * `source: 'removed'` for a `removed`: the document left every scope — not a delete).
 */
export function applyMessage(state, m) {
  const bad = validateMessage(m);
  if (bad) return { kind: 'invalid', reason: bad };
  if (m.type === 'snapshot') {
    const { collection, id, version } = m;
    if (m.deleted) del2(state.docs, collection, id);
    else set2(state.docs, collection, id, clone(m.data));
    setVersion(state, collection, id, version);
    const data = m.deleted ? undefined : clone(m.data);
    return { kind: 'applied', change: { collection, id, version, data, deleted: m.deleted, source: 'snapshot' } };
  }
  if (m.type === 'event') {
    const { collection, id, version } = m;
    const local = localVersion(state, collection, id);
    if (version <= local) return { kind: 'duplicate' };
    const freshCreate = m.op === 'create' && local === 0;
    if (version !== local + 1 && !freshCreate) return { kind: 'gap', local, version };
    let next;
    try {
      if (m.op === 'create') next = applyPatch({}, m.patch);
      else if (m.op === 'update') {
        const cur = get2(state.docs, collection, id);
        if (cur === undefined) throw new PatchError('an update of a document the client does not have');
        next = applyPatch(cur, m.patch);
      } else next = undefined;
      if (next !== undefined && !isObject(next)) throw new PatchError("the patch's result is not an object");
    } catch (e) {
      // The local copy is not what the server had: forget it so that a resync sends it whole.
      del2(state.docs, collection, id);
      del2(state.vector, collection, id);
      return { kind: 'invalid', reason: `event seq ${m.seq} (${collection}/${id} v${version}): ${e.message}`, forgot: { collection, id } };
    }
    if (next === undefined) del2(state.docs, collection, id);
    else set2(state.docs, collection, id, next);
    setVersion(state, collection, id, version);
    state.lastSeq = Math.max(state.lastSeq || 0, m.seq);
    return {
      kind: 'applied',
      change: { collection, id, version, data: clone(next), deleted: m.op === 'delete', source: 'event' },
    };
  }
  if (m.type === 'removed') {
    if (isNat(m.seq)) state.lastSeq = Math.max(state.lastSeq || 0, m.seq);
    const change = forget(state, m.collection, m.id, m.version);
    return change ? { kind: 'applied', change } : { kind: 'ignored' };
  }
  if (m.type === 'synced') {
    state.lastSeq = Math.max(state.lastSeq || 0, m.seq);
    return { kind: 'synced' };
  }
  return { kind: 'ignored' };
}

// ---------------------------------------------------------------------------------------------
// Subscriptions: a collection name (a string, whose subscription id is the name) or a scope object
// {id, collection, ids?, prefix?, where?, latest?}.

const SCOPE_KEYS = new Set(['id', 'collection', 'ids', 'prefix', 'where', 'latest']);

function subscriptionError(message) {
  return Object.assign(new Error(`invalid subscription: ${message}`), { code: 'invalid_subscription' });
}

/** Checks a subscription's shape and returns a copy of it; throws an Error with
 *  `code: 'invalid_subscription'` (the server checks the rest, e.g. the filter). */
export function normalizeSubscription(s) {
  if (typeof s === 'string') {
    if (!s) throw subscriptionError('an empty collection name');
    return s;
  }
  if (!isObject(s)) throw subscriptionError('a subscription is a collection name or a scope object');
  for (const k of Object.keys(s)) if (!SCOPE_KEYS.has(k)) throw subscriptionError(`unknown field '${k}'`);
  if (!isStr(s.id)) throw subscriptionError('a scope needs a string id');
  if (!isStr(s.collection)) throw subscriptionError('a scope needs a string collection');
  if (s.ids !== undefined && !(Array.isArray(s.ids) && s.ids.every((i) => typeof i === 'string'))) {
    throw subscriptionError('ids must be an array of strings');
  }
  if (s.prefix !== undefined && typeof s.prefix !== 'string') throw subscriptionError('prefix must be a string');
  if (s.where !== undefined && !isObject(s.where)) throw subscriptionError('where must be an object');
  if (s.latest !== undefined && !isNat(s.latest)) throw subscriptionError('latest must be a non-negative integer');
  const out = {};
  for (const k of Object.keys(s)) if (s[k] !== undefined) out[k] = clone(s[k]);
  return out;
}

/** A subscription's id: a scope's own, a collection's name. */
export function subscriptionId(s) {
  return typeof s === 'string' ? s : s.id;
}

/** The collection a subscription follows (part of). */
export function subscriptionCollection(s) {
  return typeof s === 'string' ? s : s.collection;
}

// ---------------------------------------------------------------------------------------------
// Presence: the server's bounds (src/sync/presence.rs), checked here before sending so that a refusal
// the server could not tie to its message does not happen.

export const PRESENCE_LIMITS = Object.freeze({
  stateBytes: 1024, // a member's state, as JSON
  dataBytes: 4096, // a broadcast's data, as JSON
  channels: 16, // per session
  rate: 20, // presence updates and broadcasts per second per session (twice as many in a burst)
});

function jsonBytes(v) {
  const text = JSON.stringify(v);
  return text === undefined ? 0 : new TextEncoder().encode(text).length;
}

function presenceError(message, code = 'invalid_message') {
  return Object.assign(new Error(message), { code });
}

function channelError(channel) {
  if (!isStr(channel)) return 'a channel is a collection name or "collection/id"';
  return null;
}

function stateError(state) {
  if (!isObject(state)) return 'a presence state must be an object';
  const n = jsonBytes(state);
  if (n > PRESENCE_LIMITS.stateBytes) return `state: at most ${PRESENCE_LIMITS.stateBytes} bytes of JSON, not ${n}`;
  return null;
}

const PRESENCE_EVENTS = new Set(['sync', 'join', 'update', 'leave']);

function isMember(x) {
  return isObject(x) && isStr(x.member) && typeof x.client_id === 'string' &&
    (x.user === undefined || x.user === null || typeof x.user === 'string') &&
    (x.state === undefined || isObject(x.state));
}

// An SSE opening whose vector is larger than this (as JSON) is registered with POST /sync/sse
// rather than put in the URL.
const SSE_QUERY_VECTOR_MAX = 4096;

// ---------------------------------------------------------------------------------------------

/** A Storage-like in-memory store (getItem / setItem / removeItem). */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(a);
  else for (let i = 0; i < bytes; i++) a[i] = Math.floor(Math.random() * 256);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function newOpId() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === 'function') return globalThis.crypto.randomUUID();
  return randomHex(16);
}

/** globalThis[name] ('sessionStorage' / 'localStorage') if it is there and usable, else null. */
function webStorage(name) {
  try {
    const s = globalThis[name];
    if (s && typeof s.getItem === 'function') return s;
  } catch {
    // storage access can throw (e.g. disabled cookies)
  }
  return null;
}

// Write results that mean "try again later, same op_id".
const RETRY_CODES = new Set(['overloaded', 'rate_limited', 'shutting_down', 'too_many_writes', 'unavailable']);

const CLIENT_ID_KEY = 'eventsync:clientId';

// ---------------------------------------------------------------------------------------------
// One client id per browser tab. The id lives in sessionStorage (per tab, kept across reloads of the
// tab). A browser copies sessionStorage into a duplicated tab (and into a window.open() popup), so
// each page also "claims" its id in localStorage (shared by the tabs of an origin) under
// `eventsync:<clientId>:owner` = {token, at}: a page that finds its id claimed by another live page
// (a different token, refreshed less than CLAIM_TTL_MS ago) is a copy and takes a new id. A page
// releases its claims on `pagehide` (so a reload keeps the id) and refreshes them every
// CLAIM_BEAT_MS (background tabs may run timers only once a minute, hence the long TTL).

export const CLAIM_TTL_MS = 3 * 60_000;
const CLAIM_BEAT_MS = 30_000;
const PAGE_TOKEN = randomHex(8); // one per page (JS realm): clients re-created in a page share it
const pageClaims = new Map(); // clientId -> shared storage, the ids this page claims
let claimTimer = null;

const ownerKey = (clientId) => `eventsync:${clientId}:owner`;
const stateKey = (clientId) => `eventsync:${clientId}:state`;
const queueKey = (clientId) => `eventsync:${clientId}:queue`;

function tryGet(storage, key) {
  try {
    return storage ? storage.getItem(key) : null;
  } catch {
    return null;
  }
}
function trySet(storage, key, value) {
  try {
    if (storage) storage.setItem(key, value);
    return true;
  } catch {
    return false;
  }
}
function tryRemove(storage, key) {
  try {
    if (storage) storage.removeItem(key);
  } catch {
    // ignore
  }
}

/**
 * Picks this tab's client id (pure apart from the two storages; exported for tests).
 * `session`: the tab's storage (the id, documents, vector and queue live there); `shared`: storage
 * common to all tabs (the claims), or null; `token`: this page's claim token. Returns
 * {clientId, reason: 'stored' | 'new' | 'copied' | 'migrated'}; 'copied' means the stored id
 * belonged to another live tab (a duplicated tab), so the copy got a new id and the copied
 * documents, vector and queue were dropped from `session` (the original tab owns them).
 */
export function tabClientId({ session, shared = null, token, now = Date.now(), ttlMs = CLAIM_TTL_MS,
  newId = () => 'web-' + randomHex(8) }) {
  let clientId = tryGet(session, CLIENT_ID_KEY);
  let reason = 'stored';
  if (clientId) {
    let owner = null;
    try {
      owner = JSON.parse(tryGet(shared, ownerKey(clientId)) || 'null');
    } catch {
      owner = null;
    }
    if (isObject(owner) && owner.token !== token && typeof owner.at === 'number' && now - owner.at < ttlMs) {
      tryRemove(session, stateKey(clientId));
      tryRemove(session, queueKey(clientId));
      clientId = null;
      reason = 'copied';
    }
  } else {
    // Before per-tab ids the id (and its state and queue) lived in localStorage: the first tab
    // adopts it, so writes queued offline before the upgrade are still sent.
    const legacy = shared && shared !== session ? tryGet(shared, CLIENT_ID_KEY) : null;
    if (legacy) {
      for (const key of [stateKey(legacy), queueKey(legacy)]) {
        const v = tryGet(shared, key);
        if (v !== null) trySet(session, key, v);
        tryRemove(shared, key);
      }
      tryRemove(shared, CLIENT_ID_KEY);
      clientId = legacy;
      reason = 'migrated';
    }
  }
  if (!clientId) {
    clientId = newId();
    if (reason !== 'copied') reason = 'new';
  }
  trySet(session, CLIENT_ID_KEY, clientId);
  trySet(shared, ownerKey(clientId), JSON.stringify({ token, at: now }));
  return { clientId, reason };
}

function refreshClaims() {
  const at = Date.now();
  for (const [clientId, shared] of pageClaims) trySet(shared, ownerKey(clientId), JSON.stringify({ token: PAGE_TOKEN, at }));
}

function releaseClaims() {
  for (const [clientId, shared] of pageClaims) {
    try {
      const owner = JSON.parse(tryGet(shared, ownerKey(clientId)) || 'null');
      if (isObject(owner) && owner.token === PAGE_TOKEN) tryRemove(shared, ownerKey(clientId));
    } catch {
      // ignore
    }
  }
}

function holdClaim(clientId, shared) {
  if (!shared || pageClaims.has(clientId)) return;
  pageClaims.set(clientId, shared);
  if (claimTimer === null) {
    claimTimer = setInterval(refreshClaims, CLAIM_BEAT_MS);
    if (typeof claimTimer === 'object' && typeof claimTimer.unref === 'function') claimTimer.unref(); // Node
    globalThis.addEventListener('pagehide', releaseClaims);
    globalThis.addEventListener('pageshow', (e) => {
      if (e && e.persisted) refreshClaims(); // back from the back/forward cache
    });
  }
}

/** A JWT's `exp` (unix seconds), read without verifying (the server verifies); null if none. */
export function tokenExpiry(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const text = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary');
    const exp = JSON.parse(text).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/** When to fetch a replacement for a token valid `msLeft` more: well before it runs out. */
export function refreshDelay(msLeft) {
  return Math.max(1000, Math.min(msLeft * 0.8, msLeft - 10_000));
}

export class EventSyncClient {
  constructor(options = {}) {
    const o = options;
    this.url = String(o.url || (globalThis.location ? globalThis.location.origin : 'http://127.0.0.1:8080')).replace(/\/+$/, '');
    this.transport = o.transport === 'sse' ? 'sse' : 'ws';
    // The subscriptions (collection names and scope objects), sent in every hello; kept across
    // reconnects and changed by addSubscription / removeSubscription.
    this.subscribe = Array.isArray(o.subscribe) ? o.subscribe.map(normalizeSubscription) : [];
    this._WebSocket = o.WebSocket || globalThis.WebSocket;
    this._fetch = o.fetch || (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.backoff = { initialMs: 100, maxMs: 5000, ...(o.backoff || {}) };
    // A string, or a function (sync or async) asked for a token at every connection, REST write and
    // refresh — the way to keep a session alive past its token's expiry.
    this._tokenSource = o.token === undefined ? null : o.token;
    this._authStopped = false; // a fixed token was refused: no reconnecting until setToken()
    this._listeners = new Map();
    let clientId = o.clientId;
    if (o.storage) {
      // An explicit storage keeps everything, the id included, in it (whoever shares it shares the id).
      this.storage = o.storage;
      if (!clientId) {
        clientId = this._load(CLIENT_ID_KEY);
        if (!clientId) {
          clientId = 'web-' + randomHex(8);
          this._save(CLIENT_ID_KEY, clientId);
        }
      }
    } else {
      // Browser default: one client per tab, everything in the tab's sessionStorage.
      const session = webStorage('sessionStorage');
      this.storage = session || new MemoryStorage();
      if (!clientId) {
        const inPage = !!session && typeof globalThis.addEventListener === 'function';
        const shared = inPage ? webStorage('localStorage') : null;
        ({ clientId } = tabClientId({ session: this.storage, shared, token: PAGE_TOKEN }));
        if (inPage) holdClaim(clientId, shared);
      }
    }
    this.clientId = clientId;
    this.status = 'offline';
    this._stateKey = stateKey(clientId);
    this._queueKey = queueKey(clientId);
    this._state = emptyState();
    try {
      const s = JSON.parse(this._load(this._stateKey) || 'null');
      if (s && isObject(s.docs) && isObject(s.vector)) this._state = { docs: s.docs, vector: s.vector, lastSeq: s.lastSeq || 0 };
    } catch {
      // corrupt stored state: start empty
    }
    this._queue = [];
    try {
      const q = JSON.parse(this._load(this._queueKey) || '[]');
      if (Array.isArray(q)) this._queue = q.filter((w) => isObject(w) && typeof w.op_id === 'string');
    } catch {
      // corrupt stored queue: drop it
    }
    this._pending = new Map(); // op_id -> resolve
    this._syncWaiters = [];
    // addSubscription / removeSubscription waiting for the next connection's (or stream's) full
    // `synced`: {kind: 'subscribe' | 'unsubscribe', id, sub?, resolve, reject}.
    this._subWaiters = [];
    this._sseReopen = false; // an SSE reopen for changed subscriptions is scheduled
    this._wanted = false; // connect() called and not disconnect()ed
    this._conn = null; // the current connection object
    this._attempt = 0;
    this._reconnectTimer = null;
    this._lastEventId = null; // SSE
    this._inflight = null; // op_id of the write being sent
    this._writeRetryTimer = null;
    // Presence channels joined: channel -> {state, waiters, members, self, sentOn, synced, ...}.
    this._channels = new Map();
    this._joinOrder = 0;
  }

  // --- events ---
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return this;
  }
  off(name, fn) {
    const s = this._listeners.get(name);
    if (s) s.delete(fn);
    return this;
  }
  _emit(name, value) {
    const s = this._listeners.get(name);
    if (!s) return;
    for (const fn of [...s]) {
      try {
        fn(value);
      } catch (e) {
        if (name !== 'error') this._emit('error', e);
      }
    }
  }
  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit('status', status);
  }

  // --- storage ---
  _load(key) {
    try {
      return this.storage.getItem(key);
    } catch {
      return null;
    }
  }
  _save(key, value) {
    try {
      this.storage.setItem(key, value);
    } catch (e) {
      this._emit('error', e);
    }
  }
  _persistState() {
    this._save(this._stateKey, JSON.stringify(this._state));
  }
  _persistQueue() {
    this._save(this._queueKey, JSON.stringify(this._queue));
  }

  // --- reading ---
  documents(collection) {
    const docs = this._state.docs[collection] || {};
    return Object.keys(docs)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
      .map((id) => ({ id, version: localVersion(this._state, collection, id), data: clone(docs[id]) }));
  }
  document(collection, id) {
    const data = get2(this._state.docs, collection, id);
    if (data === undefined) return undefined;
    return { id, version: localVersion(this._state, collection, id), data: clone(data) };
  }
  vector() {
    return clone(this._state.vector);
  }
  /** The writes not yet answered (queued offline or in flight). */
  pendingWrites() {
    return clone(this._queue);
  }
  /** Forget all local documents and the vector (the next connection does a full catch-up). */
  clearState() {
    this._state = emptyState();
    this._persistState();
  }

  /** The collections followed (whole or in part), each once. */
  _followed() {
    return [...new Set(this.subscribe.map(subscriptionCollection))];
  }

  /** The vector of every followed collection (a scope's collection included: the vector stays per
   *  document, and the server tells which of them left the scopes). */
  _subscribedVector() {
    const v = {};
    for (const c of this._followed()) if (this._state.vector[c]) v[c] = clone(this._state.vector[c]);
    return v;
  }

  // --- subscriptions ---
  /** The current subscriptions (copies): collection names and scope objects. */
  subscriptions() {
    return clone(this.subscribe);
  }

  /**
   * Adds a subscription (a collection name or a scope `{id, collection, ids?, prefix?, where?,
   * latest?}`). Resolves with the `synced` message that covers it: on a live WebSocket session the
   * scope's own (`synced.subscription === id`); otherwise (connecting, offline, SSE — which
   * reopens its stream) the next connection's. Rejects (and the subscription is not kept) when the
   * server refuses it (`err.code` `invalid_subscription` or `forbidden`), when the id is taken, and
   * on `disconnect()` before the answer (the subscription is kept then).
   */
  addSubscription(scope) {
    let sub;
    try {
      sub = normalizeSubscription(scope);
    } catch (e) {
      return Promise.reject(e);
    }
    const id = subscriptionId(sub);
    if (this.subscribe.some((s) => subscriptionId(s) === id)) {
      return Promise.reject(subscriptionError(`a subscription with the id '${id}' exists already`));
    }
    return new Promise((resolve, reject) => {
      this.subscribe.push(sub);
      const entry = { kind: 'subscribe', id, sub, resolve, reject };
      const conn = this._liveWs();
      if (conn) {
        conn.controls.push(entry);
        this._wsSend(conn, { type: 'subscribe', subscription: sub });
        return;
      }
      this._subWaiters.push(entry);
      this._subscriptionsChanged();
    });
  }

  /**
   * Ends the subscription `id` (a scope's id, or a collection's name). On a live WebSocket session
   * the server sends `removed` for each document that left every remaining scope, then
   * `unsubscribed`; otherwise the next connection starts without it (SSE reopens its stream). The
   * documents of a collection no longer followed at all are dropped locally. Resolves with
   * `{type: 'unsubscribed', id}`; rejects for an unknown id.
   */
  removeSubscription(id) {
    const i = this.subscribe.findIndex((s) => subscriptionId(s) === id);
    if (i < 0) return Promise.reject(subscriptionError(`no subscription with the id '${id}'`));
    const [gone] = this.subscribe.splice(i, 1);
    // An add of it still waiting for a connection will not be answered.
    this._subWaiters = this._subWaiters.filter((w) => {
      if (w.kind !== 'subscribe' || w.id !== id) return true;
      w.reject(Object.assign(new Error(`subscription '${id}' was removed before it synced`), { code: 'removed' }));
      return false;
    });
    return new Promise((resolve, reject) => {
      const entry = { kind: 'unsubscribe', id, sub: gone, resolve, reject };
      const conn = this._liveWs();
      if (conn) {
        conn.controls.push(entry);
        this._wsSend(conn, { type: 'unsubscribe', id });
        return;
      }
      this._dropUnfollowed(gone);
      if (!this._wanted) {
        this._unsubscribed(entry);
        return;
      }
      this._subWaiters.push(entry);
      this._subscriptionsChanged();
    });
  }

  /** The WebSocket connection if a hello went out on it (so subscribe / unsubscribe go live). */
  _liveWs() {
    const c = this._conn;
    if (!c || c.kind !== 'ws' || c.closed || !c.helloSent || !c.ws || c.ws.readyState !== 1) return null;
    return c;
  }

  /** The subscriptions changed without a live session to tell: an SSE stream is reopened (fresh,
   *  with the new set); a WebSocket's next hello carries them. */
  _subscriptionsChanged() {
    if (this.transport !== 'sse') return;
    this._lastEventId = null; // the set changed: a position says nothing about new subscriptions
    if (!this._wanted || this._authStopped || this._sseReopen) return;
    if (this._conn) this._closeConn(); // at once: nothing more of the old stream is applied
    this._sseReopen = true;
    queueMicrotask(() => {
      this._sseReopen = false;
      if (this._wanted && !this._conn && !this._reconnectTimer && !this._authStopped) this._open({ fresh: true });
    });
  }

  /** Drops the local documents of `sub`'s collection if no subscription follows it any more (the
   *  server only tells what leaves the collections a session follows). */
  _dropUnfollowed(sub) {
    const c = subscriptionCollection(sub);
    if (this.subscribe.some((s) => subscriptionCollection(s) === c)) return;
    const ids = new Set([...Object.keys(this._state.docs[c] || {}), ...Object.keys(this._state.vector[c] || {})]);
    if (!ids.size) return;
    const changes = [];
    for (const id of [...ids].sort()) {
      const ch = forget(this._state, c, id);
      if (ch) changes.push(ch);
    }
    this._persistState();
    for (const ch of changes) this._emit('change', ch);
  }

  _unsubscribed(entry) {
    const m = { type: 'unsubscribed', id: entry.id };
    this._emit('unsubscribed', m);
    entry.resolve(m);
  }

  /** A full `synced` (a connection's catch-up, or a `sync`'s): the waiting changes are in force. */
  _settleSubWaiters(m) {
    const waiters = this._subWaiters;
    this._subWaiters = [];
    for (const w of waiters) {
      if (w.kind === 'subscribe') w.resolve(m);
      else this._unsubscribed(w);
    }
  }

  /** Rejects the waiting adds that `match`, and takes them out of the set. */
  _rejectAdds(err, match) {
    let any = false;
    this._subWaiters = this._subWaiters.filter((w) => {
      if (w.kind !== 'subscribe' || !match(w)) return true;
      this._forgetSub(w.sub);
      w.reject(err);
      any = true;
      return false;
    });
    return any;
  }

  _forgetSub(sub) {
    const i = this.subscribe.indexOf(sub);
    if (i >= 0) this.subscribe.splice(i, 1);
  }

  /**
   * A server `error` that may answer a subscription change: on a live session the oldest
   * `subscribe` / `unsubscribe` still unanswered (`invalid_subscription`; `forbidden` only answers
   * a `subscribe` of the collection it names, as in "this token may not read 'games'"); before a
   * connection's first `synced`, the adds its opening carried (`invalid_subscription`: all of
   * them; `forbidden`: those of the collection it names). An error whose `subscription` names one
   * answers exactly that one. Returns whether it answered one.
   */
  _subscriptionRefused(conn, m, err) {
    if (m.code !== 'invalid_subscription' && m.code !== 'forbidden') return false;
    const controls0 = conn.controls || [];
    if (typeof m.subscription === 'string') {
      // The server names the subscription it refuses: exactly that one.
      const mine = (sub) => subscriptionId(sub) === m.subscription;
      const i = controls0.findIndex((c) => c.kind === 'subscribe' && mine(c.sub));
      if (i >= 0) {
        const [entry] = controls0.splice(i, 1);
        this._forgetSub(entry.sub);
        entry.reject(err);
        return true;
      }
      return this._rejectAdds(err, (w) => mine(w.sub)) || this.subscribe.some(mine);
    }
    const text = String(m.message || '');
    const names = (sub) => text.includes(`'${subscriptionCollection(sub)}'`);
    const controls = conn.controls || [];
    let i = -1;
    if (m.code === 'invalid_subscription') i = controls.length ? 0 : -1;
    else {
      i = controls.findIndex((c) => c.kind === 'subscribe' && names(c.sub));
      // A message that names no collection at all answers the oldest subscribe.
      if (i < 0 && !/'[^']*'/.test(text)) i = controls.findIndex((c) => c.kind === 'subscribe');
    }
    if (i >= 0) {
      const [entry] = controls.splice(i, 1);
      if (entry.kind === 'subscribe') this._forgetSub(entry.sub);
      else this._dropUnfollowed(entry.sub);
      entry.reject(err);
      return true;
    }
    if (conn.live) return false;
    if (m.code === 'invalid_subscription') return this._rejectAdds(err, () => true);
    const rejected = this._rejectAdds(err, (w) => names(w.sub));
    // The opening's refusal of a subscription it carried (not an answer to a write).
    return rejected || this.subscribe.some(names);
  }

  // --- presence ---
  /**
   * Joins the presence channel `channel` (a collection name, or `collection/id`, that the token may
   * read) with a small public `state` (an object, at most 1 KiB as JSON). Resolves with the members
   * (the `presence` `sync` answer: every member, this session included, see members()). The channel
   * stays joined until leave(): it is joined again, with the last state, on every new session (a
   * reconnect; over SSE also a reopened stream). Called while offline or connecting, the join goes
   * out once the session is live. Rejects when the server refuses it (`err.code`: `forbidden`,
   * `invalid_message`, `rate_limited` — the channel is then not kept), on leave() before the
   * answer (`code: 'left'`), and on disconnect() before it (`'disconnected'`; the channel is kept for
   * the next connect()). Joining a channel already joined sets its state (setPresence) and resolves
   * with the members once they are known.
   */
  join(channel, state = {}) {
    const bad = channelError(channel) || stateError(state);
    if (bad) return Promise.reject(presenceError(bad));
    const had = this._channels.get(channel);
    if (had) {
      this.setPresence(channel, state);
      if (had.synced) return Promise.resolve(this.members(channel));
      return new Promise((resolve, reject) => had.waiters.push({ resolve, reject }));
    }
    if (this._channels.size >= PRESENCE_LIMITS.channels) {
      return Promise.reject(presenceError(`at most ${PRESENCE_LIMITS.channels} channels per session`));
    }
    return new Promise((resolve, reject) => {
      const entry = {
        channel,
        state: clone(state),
        waiters: [{ resolve, reject }],
        members: new Map(), // member id -> member, once synced
        self: null, // this session's member id in the channel
        sentOn: null, // the connection the join went out on
        synced: false, // the `sync` for that join arrived
        order: ++this._joinOrder,
        sentAt: 0, // when the state was last sent
      };
      this._channels.set(channel, entry);
      const conn = this._presenceConn();
      if (conn) this._sendJoin(conn, entry);
    });
  }

  /** Replaces this session's state in a joined channel (the other members get `update`; kept for the
   *  re-joins). Throws for a channel not joined and for a state that is not an object of at most
   *  1 KiB of JSON. Returns whether it went out now (else it goes with the next join). */
  setPresence(channel, state) {
    const entry = this._channels.get(channel);
    if (!entry) throw presenceError(`not joined to '${channel}': join it first`, 'not_joined');
    const bad = stateError(state);
    if (bad) throw presenceError(bad);
    entry.state = clone(state);
    const me = entry.self && entry.members.get(entry.self);
    if (me) me.state = clone(state);
    const conn = this._presenceConn();
    if (!conn || entry.sentOn !== conn) return false;
    entry.sentAt = Date.now();
    return this._presenceSend(conn, { type: 'presence', channel, state: entry.state });
  }

  /** Leaves a channel: the other members get `leave` (they do too when the session ends). Returns
   *  whether the channel was joined. */
  leave(channel) {
    const entry = this._channels.get(channel);
    if (!entry) return false;
    this._channels.delete(channel);
    this._rejectJoin(entry, presenceError(`left '${channel}' before the server answered the join`, 'left'));
    const conn = this._presenceConn();
    if (conn && entry.sentOn === conn) this._presenceSend(conn, { type: 'leave', channel });
    return true;
  }

  /** Sends an ephemeral message (any JSON value, at most 4 KiB) to the channel's other members, who
   *  get it as a `broadcast` event with `from` (the sender's member). Never stored, never queued:
   *  returns false (and drops it) when there is no live session. Throws for a channel not joined
   *  and for data too large. */
  broadcast(channel, data) {
    const entry = this._channels.get(channel);
    if (!entry) throw presenceError(`not joined to '${channel}': join it first`, 'not_joined');
    if (data === undefined) throw presenceError('broadcast data is missing');
    const n = jsonBytes(data);
    if (n > PRESENCE_LIMITS.dataBytes) {
      throw presenceError(`broadcast data: at most ${PRESENCE_LIMITS.dataBytes} bytes of JSON, not ${n}`);
    }
    const conn = this._presenceConn();
    if (!conn || entry.sentOn !== conn) return false;
    return this._presenceSend(conn, { type: 'broadcast', channel, data: clone(data) });
  }

  /** The members of a joined channel as last told by the server (copies: `{member, client_id, user?,
   *  state, self}`; `self: true` on this session's own); [] for a channel not joined or while the
   *  (re-)join is not answered. */
  members(channel) {
    const entry = this._channels.get(channel);
    if (!entry || !entry.synced) return [];
    return [...entry.members.values()].map((m) => ({ ...clone(m), self: m.member === entry.self }));
  }

  /** The channels joined (whether or not the server answered yet). */
  channels() {
    return [...this._channels.keys()];
  }

  /** The connection presence messages may go out on now: a live session (over SSE, one whose
   *  stream id is known). */
  _presenceConn() {
    const c = this._conn;
    if (!c || c.closed || !c.live || !c.presenceStarted) return null;
    if (c.kind === 'ws') return c.ws && c.ws.readyState === 1 ? c : null;
    return c.stream ? c : null;
  }

  /** A connection's first full `synced`: its session is live, so every joined channel is (re)joined. */
  _startPresence(conn) {
    if (conn.presenceStarted) return;
    conn.presenceStarted = true;
    if (conn.kind === 'sse' && !conn.stream) {
      if (this._channels.size) this._emit('error', new Error('the SSE stream named no back channel: presence needs one'));
      return;
    }
    const entries = [...this._channels.values()].sort((a, b) => a.order - b.order);
    for (const entry of entries) this._sendJoin(conn, entry);
  }

  _sendJoin(conn, entry) {
    entry.sentOn = conn;
    entry.synced = false;
    entry.sentAt = Date.now();
    this._presenceSend(conn, { type: 'join', channel: entry.channel, state: entry.state });
  }

  /** Sends a presence message on `conn`: on the socket, or posted to the SSE stream's back channel. */
  _presenceSend(conn, msg) {
    if (conn.kind === 'ws') return this._wsSend(conn, msg);
    (conn.posts || (conn.posts = [])).push({ msg, tries: 0 });
    this._pumpPosts(conn);
    return true;
  }

  /** Posts the SSE connection's queued messages to `POST /sync/sse/<stream>`, one at a time (so that
   *  they reach the session in order). What the session answers comes down the stream. */
  async _pumpPosts(conn) {
    if (conn.posting) return;
    conn.posting = true;
    try {
      while (conn.posts.length && conn === this._conn && !conn.closed) {
        const item = conn.posts[0];
        const token = await this._withToken((t) => t);
        if (conn !== this._conn || conn.closed) return;
        const headers = { 'content-type': 'application/json', accept: 'application/json' };
        if (token) headers.authorization = `Bearer ${token}`;
        let status = 0;
        let text = '';
        try {
          const res = await this._fetch(`${this.url}/sync/sse/${encodeURIComponent(conn.stream)}`, {
            method: 'POST', headers, body: JSON.stringify(item.msg), signal: conn.abort.signal,
          });
          status = res.status;
          text = await res.text().catch(() => '');
        } catch (e) {
          if (e && e.name === 'AbortError') return;
          status = 0;
          text = String((e && e.message) || e);
        }
        if (conn !== this._conn || conn.closed) return;
        if (status === 202 || (status >= 200 && status < 300)) {
          conn.posts.shift();
          continue;
        }
        // 404: the stream ended (the next one joins again); 429 (its queue is full), 5xx and network
        // errors are tried again a few times for what carries state; a broadcast is dropped.
        const transient = status === 0 || status === 429 || status >= 500;
        if (transient && item.msg.type !== 'broadcast' && item.tries < 5) {
          item.tries++;
          await new Promise((r) => setTimeout(r, 100 * 2 ** item.tries));
          continue;
        }
        conn.posts.shift();
        if (status === 404) continue;
        let code = `http_${status}`;
        let message = text;
        try {
          const e = JSON.parse(text).error;
          code = e.code || code;
          message = e.message || message;
        } catch {
          // not a JSON error
        }
        const err = Object.assign(new Error(`posting ${item.msg.type} to the SSE stream failed: HTTP ${status} ${message}`.trim()), { code });
        if (item.msg.type === 'join') {
          const entry = this._channels.get(item.msg.channel);
          if (entry && entry.sentOn === conn && !entry.synced && (status === 400 || status === 403)) {
            this._channels.delete(entry.channel);
            this._rejectJoin(entry, err);
          }
        }
        this._emit('error', err);
      }
    } finally {
      conn.posting = false;
    }
  }

  _rejectJoin(entry, err) {
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const w of waiters) w.reject(err);
  }

  /** A `presence` message from the server. */
  _onPresence(conn, m) {
    const entry = this._channels.get(m.channel);
    // A channel left meanwhile (its news may still arrive until the server has the leave).
    if (!entry || entry.sentOn !== conn) return;
    if (m.event === 'sync') {
      entry.members = new Map(m.members.map((x) => [x.member, clone(x)]));
      entry.self = this._findSelf(entry, m.members);
      entry.synced = true;
      const list = this.members(m.channel);
      const waiters = entry.waiters;
      entry.waiters = [];
      this._emit('presence', m);
      for (const w of waiters) w.resolve(list);
      return;
    }
    if (!entry.synced) return; // news before our sync cannot happen: the sync comes first
    if (m.event === 'leave') entry.members.delete(m.member.member);
    else entry.members.set(m.member.member, clone(m.member));
    this._emit('presence', m);
  }

  /** This session's member in a `sync`: the one with this client's id (a session of this client
   *  that ended without the server noticing yet may still be listed: then the one with the state
   *  just sent). */
  _findSelf(entry, members) {
    const mine = members.filter((x) => x.client_id === this.clientId);
    if (mine.length <= 1) return mine.length ? mine[0].member : null;
    const same = mine.filter((x) => deepEqual(x.state || {}, entry.state));
    return (same.length ? same[same.length - 1] : mine[mine.length - 1]).member;
  }

  /** The connection ended: the channels are joined again on the next one. Their members are not
   *  known meanwhile: a `presence` event `reset` (made by the client, `members: []`) says so. */
  _presenceLost() {
    const lost = [];
    for (const entry of this._channels.values()) {
      if (entry.sentOn === null) continue;
      if (entry.synced) lost.push(entry.channel);
      entry.sentOn = null;
      entry.synced = false;
      entry.members = new Map();
      entry.self = null;
    }
    for (const channel of lost) this._emit('presence', { type: 'presence', channel, event: 'reset', members: [] });
  }

  /**
   * A server `error` that answers a presence message: a refused `join` (`forbidden` naming the
   * channel, or `invalid_message` about the channel — "channel: …", "already in '…'", "at most N
   * channels" — or `rate_limited` "'…' has N members already") rejects that join and drops the
   * channel; a channel the session had to leave after an `auth` ("… left the channel") is dropped;
   * a refused update or broadcast (the rate, "not in '…'") is only reported — over the rate, the
   * latest states are sent again a second later. Returns whether the error was one of these.
   */
  _presenceRefused(conn, m, err) {
    const text = String(m.message || '');
    const named = (e) => text.includes(`'${e.channel}'`);
    if (m.code === 'forbidden' && /left the channel/.test(text)) {
      const entry = [...this._channels.values()].find(named);
      if (entry) {
        this._channels.delete(entry.channel);
        this._rejectJoin(entry, err);
        if (entry.synced) this._emit('presence', { type: 'presence', channel: entry.channel, event: 'reset', members: [] });
      }
      return true;
    }
    const pending = [...this._channels.values()]
      .filter((e) => e.sentOn === conn && !e.synced)
      .sort((a, b) => a.order - b.order);
    const refuse = (entry) => {
      this._channels.delete(entry.channel);
      this._rejectJoin(entry, err);
      return true;
    };
    const target = pending.find(named);
    if (m.code === 'forbidden') return target ? refuse(target) : false;
    if (m.code === 'rate_limited' && /members already/.test(text)) return target ? refuse(target) : true;
    if (m.code === 'rate_limited' && /presence updates and broadcasts/.test(text)) {
      this._resendStatesLater(conn);
      return true;
    }
    if (m.code === 'invalid_message') {
      if (/^not in '/.test(text) || /^data: at most/.test(text)) return true;
      // (A state over the limit is refused here before it is sent: the server's "state: …" is
      // only reported, it cannot say which message it answers.)
      if (/^state: at most/.test(text)) return true;
      const joinish = /^channel: /.test(text) || /^already in '/.test(text) || /^at most \d+ channels/.test(text);
      if (joinish) {
        const entry = target || pending[0];
        return entry ? refuse(entry) : true;
      }
    }
    return false;
  }

  /** Over the presence rate: a second later, the states sent in the last seconds are sent again
   *  (one of them may have been refused, and the others would then hold an older one). */
  _resendStatesLater(conn) {
    if (conn.presenceRetry) return;
    const since = Date.now() - 2000;
    conn.presenceRetry = setTimeout(() => {
      conn.presenceRetry = null;
      if (conn !== this._presenceConn()) return;
      for (const entry of this._channels.values()) {
        if (entry.sentOn === conn && entry.sentAt >= since) {
          entry.sentAt = Date.now();
          this._presenceSend(conn, { type: 'presence', channel: entry.channel, state: entry.state });
        }
      }
    }, 1100);
  }

  // --- tokens ---
  /** Calls `fn` with the current token (null without one): at once for a fixed token, after the
   *  promise for a token function. */
  _withToken(fn) {
    const src = this._tokenSource;
    if (typeof src !== 'function') return fn(src || null);
    return Promise.resolve()
      .then(() => src())
      .then(
        (t) => fn(t || null),
        (e) => {
          this._emit('error', e);
          return fn(null);
        },
      );
  }

  /** Replaces the token (a string or a function). A live WebSocket session is re-authenticated in
   *  place with an `auth` message; an SSE stream is reopened with it. */
  setToken(token) {
    this._tokenSource = token === undefined ? null : token;
    const conn = this._conn;
    if (this._authStopped) {
      this._authStopped = false;
      if (this._wanted && !conn && !this._reconnectTimer) this._open();
      return;
    }
    if (!conn) return;
    if (conn.kind === 'ws') {
      if (conn.ws && conn.ws.readyState === 1) this._sendAuth(conn);
    } else {
      this._closeConn();
      this._open();
    }
  }

  _sendAuth(conn) {
    this._withToken((token) => {
      if (conn !== this._conn || conn.closed || !token) return;
      conn.token = token;
      this._wsSend(conn, { type: 'auth', token });
    });
  }

  /** With a token function, replace the session's token before it runs out. */
  _scheduleRefresh(conn) {
    if (conn.refreshTimer) clearTimeout(conn.refreshTimer);
    conn.refreshTimer = null;
    if (typeof this._tokenSource !== 'function' || !conn.token) return;
    const exp = tokenExpiry(conn.token);
    if (exp === null) return;
    conn.refreshTimer = setTimeout(() => {
      conn.refreshTimer = null;
      if (conn === this._conn && !conn.closed) this._sendAuth(conn);
    }, refreshDelay(exp * 1000 - Date.now()));
  }

  /** The server refused the token (close 4401, HTTP 401). A token function is asked again at the
   *  next attempt; a fixed token would be refused again, so the client stops until setToken(). */
  _refused(conn, reason) {
    const err = Object.assign(new Error(`token refused: ${reason}`), { code: 'unauthenticated' });
    this._emit('unauthenticated', err);
    if (typeof this._tokenSource === 'function') {
      this._dropped(conn, err);
      return;
    }
    if (conn !== this._conn) return;
    this._closeConn();
    this._inflight = null;
    this._authStopped = true;
    this._emit('error', err);
    this._setStatus('offline');
  }

  // --- connection ---
  connect() {
    this._wanted = true;
    if (this._conn || this._reconnectTimer) return;
    this._open();
  }

  disconnect() {
    this._wanted = false;
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    if (this._writeRetryTimer) clearTimeout(this._writeRetryTimer);
    this._writeRetryTimer = null;
    this._closeConn();
    this._inflight = null;
    this._setStatus('offline');
    const waiters = [...this._syncWaiters, ...this._subWaiters];
    this._syncWaiters = [];
    this._subWaiters = [];
    for (const w of waiters) {
      // A removal is done (the set no longer has it); an add stays in the set for the next connect().
      if (w.kind === 'unsubscribe') this._unsubscribed(w);
      else w.reject(new Error('disconnected'));
    }
    // Joined channels stay joined (the next connect() joins them again); their joins are not answered.
    for (const entry of this._channels.values()) {
      this._rejectJoin(entry, Object.assign(new Error('disconnected'), { code: 'disconnected' }));
    }
  }

  _closeConn() {
    const c = this._conn;
    this._conn = null;
    if (!c) return;
    c.closed = true;
    // Subscription changes sent on it and not answered: the set already holds them, so the next
    // connection's hello carries them; they are settled by its `synced`.
    for (const entry of c.controls || []) {
      if (entry.kind === 'unsubscribe') this._dropUnfollowed(entry.sub);
      this._subWaiters.push(entry);
    }
    c.controls = [];
    if (c.ackTimer) clearTimeout(c.ackTimer);
    if (c.refreshTimer) clearTimeout(c.refreshTimer);
    if (c.presenceRetry) clearTimeout(c.presenceRetry);
    c.posts = [];
    try {
      if (c.ws) c.ws.close();
      if (c.abort) c.abort.abort();
    } catch {
      // ignore
    }
    this._presenceLost();
  }

  _open(opts = {}) {
    this._setStatus('connecting');
    if (this.transport === 'ws') this._openWs();
    else this._openSse(opts);
  }

  /** The connection broke (or was refused): reconnect after backoff with full jitter. */
  _dropped(conn, err) {
    if (conn !== this._conn) return;
    this._closeConn();
    this._inflight = null;
    if (err) this._emit('error', err);
    if (!this._wanted) {
      this._setStatus('offline');
      return;
    }
    this._setStatus('connecting');
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(this._attempt, 30));
    this._attempt++;
    const delay = Math.random() * cap;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._wanted && !this._conn) this._open();
    }, delay);
  }

  _openWs() {
    const WS = this._WebSocket;
    if (!WS) {
      this._wanted = false;
      this._setStatus('offline');
      this._emit('error', new Error('no WebSocket implementation: pass options.WebSocket'));
      return;
    }
    const wsUrl = this.url.replace(/^http/, 'ws') + '/sync/ws';
    const conn = { kind: 'ws', closed: false, lastAcked: 0, ackTimer: null, resyncing: false, live: false, controls: [] };
    this._conn = conn;
    let ws;
    try {
      ws = new WS(wsUrl);
    } catch (e) {
      this._dropped(conn, e);
      return;
    }
    conn.ws = ws;
    ws.onopen = () => {
      if (conn !== this._conn) return;
      this._withToken((token) => {
        if (conn !== this._conn || conn.closed) return;
        const hello = {
          type: 'hello',
          client_id: this.clientId,
          subscribe: this.subscribe,
          state_vector: this._subscribedVector(),
        };
        if (token) {
          hello.token = token;
          conn.token = token;
        }
        this._wsSend(conn, hello);
        conn.helloSent = true;
        this._scheduleRefresh(conn);
        this._setStatus('syncing');
        this._pumpWrites();
      });
    };
    ws.onmessage = (ev) => {
      if (conn !== this._conn) return;
      let text = ev.data;
      if (typeof text !== 'string') {
        try {
          text = new TextDecoder().decode(text instanceof ArrayBuffer ? new Uint8Array(text) : text);
        } catch {
          text = '';
        }
      }
      let m;
      try {
        m = JSON.parse(text);
      } catch (e) {
        this._garbage(conn, new Error(`invalid JSON from the server: ${e.message}`));
        return;
      }
      this._handle(conn, m);
    };
    ws.onerror = () => {
      // onclose follows
    };
    ws.onclose = (ev) => {
      if (conn !== this._conn) return;
      const code = ev && ev.code;
      if (code === 4401) {
        this._refused(conn, ev.reason || 'unauthenticated');
        return;
      }
      this._dropped(conn, code && code !== 1000 && code !== 1001 && code !== 1005 && code !== 1006
        ? new Error(`WebSocket closed ${code} ${ev.reason || ''}`.trim())
        : null);
    };
  }

  _wsSend(conn, msg) {
    if (!conn || conn.closed || !conn.ws) return false;
    try {
      conn.ws.send(JSON.stringify(msg));
      if (msg.type !== 'write') this._lastSentWrite = null;
      return true;
    } catch (e) {
      this._dropped(conn, e);
      return false;
    }
  }

  _openSse({ fresh } = {}) {
    const f = this._fetch;
    if (!f) {
      this._wanted = false;
      this._setStatus('offline');
      this._emit('error', new Error('no fetch implementation: pass options.fetch'));
      return;
    }
    if (fresh) this._lastEventId = null;
    const conn = { kind: 'sse', closed: false, abort: new AbortController(), live: false };
    this._conn = conn;
    const vectorJson = JSON.stringify(this._subscribedVector());
    // Scopes cannot go in a query string, nor can a large vector: such an opening is registered
    // first (POST /sync/sse), on every (re)connect, with the current vector and no Last-Event-ID.
    conn.registered = this.subscribe.some((s) => typeof s !== 'string') || vectorJson.length > SSE_QUERY_VECTOR_MAX;
    const headers = { accept: 'text/event-stream' };
    if (this._lastEventId && !conn.registered) headers['last-event-id'] = this._lastEventId;
    (async () => {
      // The token goes in a header (fetch can send one, unlike EventSource), not the URL.
      const token = await this._withToken((t) => t);
      if (conn !== this._conn) return;
      if (token) headers.authorization = `Bearer ${token}`;
      const params = new URLSearchParams();
      if (conn.registered) {
        const reg = await this._registerSse(conn, token, vectorJson);
        if (!reg) return;
        params.set('resume', reg.resume);
      } else {
        params.set('client_id', this.clientId);
        params.set('subscribe', this.subscribe.join(','));
        params.set('state_vector', vectorJson);
      }
      const res = await f(`${this.url}/sync/sse?${params}`, { headers, signal: conn.abort.signal });
      if (conn !== this._conn) return;
      if (res.status === 401) {
        let detail = '';
        try {
          detail = (await res.json()).error.message;
        } catch {
          // ignore
        }
        this._refused(conn, detail || 'HTTP 401');
        return;
      }
      if (!res.ok || !res.body) {
        let detail = '';
        try {
          detail = await res.text();
        } catch {
          // ignore
        }
        if (res.status === 400 && /invalid_last_event_id/.test(detail)) this._lastEventId = null;
        const err = new Error(`SSE stream refused: HTTP ${res.status} ${detail}`.trim());
        this._openingRefused(res.status, detail, err);
        throw err;
      }
      this._setStatus('syncing');
      this._pumpWrites();
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      let ev = { event: '', data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (conn !== this._conn) return;
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          // A lone '\r' at the end may be the first half of '\r\n': wait for more.
          if (buf[nl] === '\r' && nl === buf.length - 1) break;
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
          if (line === '') {
            if (ev.data.length) this._sseDispatch(conn, ev);
            if (conn !== this._conn) return;
            ev = { event: '', data: [], id: null };
            continue;
          }
          if (line[0] === ':') continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'data') ev.data.push(val);
          else if (field === 'event') ev.event = val;
          else if (field === 'id') ev.id = val;
        }
      }
      throw null; // the stream ended: reconnect
    })().catch((e) => {
      if (conn !== this._conn) return;
      if (e && e.name === 'AbortError') return;
      this._dropped(conn, e || null);
    });
  }

  /** POST /sync/sse: registers the opening; resolves with {resume, expires_in_ms}, or null when the
   *  connection was replaced or refused meanwhile. Throws (→ reconnect) on other failures. */
  async _registerSse(conn, token, vectorJson) {
    const headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const body = `{"client_id":${JSON.stringify(this.clientId)},"subscribe":${JSON.stringify(this.subscribe)},"state_vector":${vectorJson}}`;
    const res = await this._fetch(`${this.url}/sync/sse`, { method: 'POST', headers, body, signal: conn.abort.signal });
    if (conn !== this._conn) return null;
    let text = '';
    try {
      text = await res.text();
    } catch {
      // ignore
    }
    if (conn !== this._conn) return null;
    if (res.status === 401) {
      let detail = '';
      try {
        detail = JSON.parse(text).error.message;
      } catch {
        // ignore
      }
      this._refused(conn, detail || 'HTTP 401');
      return null;
    }
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
    if (!res.ok || !json || typeof json.resume !== 'string') {
      const err = new Error(`SSE registration refused: HTTP ${res.status} ${text}`.trim());
      if (!res.ok) this._openingRefused(res.status, text, err);
      throw err;
    }
    return json;
  }

  /** An SSE opening refused with an HTTP error: a refused subscription rejects the adds it carried
   *  (they leave the set, so the reconnect can succeed). */
  _openingRefused(status, text, err) {
    let code = null;
    let message = '';
    try {
      const e = JSON.parse(text).error;
      code = e.code;
      message = e.message || '';
    } catch {
      // not a JSON error
    }
    if (code !== 'invalid_subscription' && code !== 'forbidden') return;
    err.code = code;
    this._subscriptionRefused({ controls: [], live: false }, { code, message }, err);
  }

  _sseDispatch(conn, ev) {
    let m;
    try {
      m = JSON.parse(ev.data.join('\n'));
    } catch (e) {
      this._garbage(conn, new Error(`invalid JSON in the SSE stream: ${e.message}`));
      return;
    }
    this._handle(conn, m);
    // A registered stream resumes by registering again, never by Last-Event-ID.
    if (ev.id !== null && conn === this._conn && !conn.resyncing && !conn.registered) this._lastEventId = ev.id;
  }

  /** Something unusable came from the server: report it and resync. */
  _garbage(conn, err) {
    this._emit('error', err);
    this._resync(conn);
  }

  _resync(conn) {
    if (conn !== this._conn) return;
    if (conn.kind === 'ws') {
      if (conn.resyncing) return;
      conn.resyncing = true;
      this._wsSend(conn, { type: 'sync', state_vector: this._subscribedVector() });
    } else {
      // SSE: a new stream with our vector and no Last-Event-ID.
      this._closeConn();
      this._lastEventId = null;
      this._open({ fresh: true });
    }
  }

  _handle(conn, m) {
    const bad = validateMessage(m);
    if (bad) {
      const err = new Error(`bad message from the server: ${bad}`);
      // Ephemeral news says nothing about the documents: no resync for it.
      if (m && ['presence', 'broadcast', 'stream'].includes(m.type)) this._emit('error', err);
      else this._garbage(conn, err);
      return;
    }
    if (m.type === 'event') this._emit('event', m);
    switch (m.type) {
      case 'snapshot':
      case 'event': {
        const r = applyMessage(this._state, m);
        if (r.kind === 'applied') {
          this._persistState();
          this._emit('change', r.change);
          if (m.type === 'event' && conn.kind === 'ws' && conn.live) this._scheduleAck(conn, m.seq);
        } else if (r.kind === 'gap' || r.kind === 'invalid') {
          if (r.forgot) this._persistState();
          if (r.kind === 'invalid') this._emit('error', new Error(r.reason));
          this._resync(conn);
        }
        return;
      }
      case 'removed': {
        const r = applyMessage(this._state, m);
        if (r.kind === 'applied') this._persistState();
        this._emit('removed', m);
        if (r.change) this._emit('change', r.change);
        if (isNat(m.seq) && conn.kind === 'ws' && conn.live) this._scheduleAck(conn, m.seq);
        return;
      }
      case 'unsubscribed': {
        const controls = conn.controls || [];
        const i = controls.findIndex((c) => c.kind === 'unsubscribe' && c.id === m.id);
        const entry = i >= 0 ? controls.splice(i, 1)[0] : null;
        if (entry) this._dropUnfollowed(entry.sub);
        this._emit('unsubscribed', m);
        if (entry) entry.resolve(m);
        return;
      }
      case 'synced': {
        if (isStr(m.subscription)) {
          // The end of a live subscribe's catch-up: that scope is current.
          applyMessage(this._state, m);
          this._persistState();
          if (conn.kind === 'ws') {
            conn.lastAcked = Math.max(conn.lastAcked, m.seq);
            this._wsSend(conn, { type: 'ack', seq: m.seq });
          }
          const controls = conn.controls || [];
          const i = controls.findIndex((c) => c.kind === 'subscribe' && c.id === m.subscription);
          const entry = i >= 0 ? controls.splice(i, 1)[0] : null;
          this._emit('synced', m);
          if (entry) entry.resolve(m);
          return;
        }
        applyMessage(this._state, m);
        this._persistState();
        conn.resyncing = false;
        conn.live = true;
        this._attempt = 0;
        if (conn.kind === 'ws') {
          conn.lastAcked = Math.max(conn.lastAcked, m.seq);
          this._wsSend(conn, { type: 'ack', seq: m.seq });
        }
        this._setStatus('live');
        this._emit('synced', m);
        const waiters = this._syncWaiters;
        this._syncWaiters = [];
        for (const w of waiters) w.resolve(m);
        this._settleSubWaiters(m);
        this._pumpWrites();
        this._startPresence(conn);
        return;
      }
      case 'stream':
        // An SSE stream's first frame: the id its back channel is posted to (a new one per stream).
        if (conn.kind === 'sse') conn.stream = m.stream;
        return;
      case 'presence':
        this._onPresence(conn, m);
        return;
      case 'broadcast': {
        const entry = this._channels.get(m.channel);
        if (entry && entry.sentOn === conn) this._emit('broadcast', m);
        return;
      }
      case 'result':
        this._onResult(m);
        return;
      case 'authenticated':
        this._emit('authenticated', m);
        this._scheduleRefresh(conn);
        return;
      case 'error': {
        const err = Object.assign(new Error(`server error ${m.code}: ${m.message}`), { code: m.code });
        const answered = this._presenceRefused(conn, m, err) || this._subscriptionRefused(conn, m, err);
        this._emit('error', err);
        // An error answers the last message sent: if that was a write, the write is refused.
        if (!answered && this._lastSentWrite && this._lastSentWrite === this._inflight) {
          const w = this._queue.find((q) => q.op_id === this._inflight);
          this._onResult({ type: 'result', op_id: this._inflight, ok: false, id: w && w.id, error: { code: m.code, message: m.message } });
        }
        return;
      }
      default:
        return; // pong
    }
  }

  _scheduleAck(conn, seq) {
    conn.pendingAck = Math.max(conn.pendingAck || 0, seq);
    if (conn.ackTimer) return;
    const since = Date.now() - (conn.lastAckAt || 0);
    const send = () => {
      conn.ackTimer = null;
      if (conn !== this._conn || conn.closed) return;
      if (conn.pendingAck > conn.lastAcked) {
        conn.lastAcked = conn.pendingAck;
        conn.lastAckAt = Date.now();
        this._wsSend(conn, { type: 'ack', seq: conn.pendingAck });
      }
    };
    conn.ackTimer = setTimeout(send, Math.max(0, 1000 - since));
  }

  /** Manual state sync: resolves with the next `synced` message. */
  sync() {
    return new Promise((resolve, reject) => {
      if (!this._wanted) {
        reject(new Error('offline: call connect() first'));
        return;
      }
      this._syncWaiters.push({ resolve, reject });
      const conn = this._conn;
      if (!conn || this.status === 'connecting') return; // the connection's catch-up will answer
      if (conn.kind === 'ws') {
        if (!conn.ws || conn.ws.readyState !== 1) return; // hello is coming
        conn.resyncing = true;
        this._wsSend(conn, { type: 'sync', state_vector: this._subscribedVector() });
      } else {
        this._resync(conn);
      }
    });
  }

  // --- writes ---
  create(collection, data, opts = {}) {
    if (!isObject(data)) return Promise.resolve(this._invalid('data must be an object'));
    const w = { op: 'create', collection, data };
    if (opts.id !== undefined) w.id = opts.id;
    return this._enqueue(w, opts);
  }
  update(collection, id, patch, opts = {}) {
    if (Array.isArray(patch)) return this._enqueue({ op: 'patch', collection, id, patch }, opts);
    if (isObject(patch)) return this._enqueue({ op: 'merge', collection, id, patch }, opts);
    return Promise.resolve(this._invalid('patch must be an array (JSON Patch) or an object (merge patch)'));
  }
  replace(collection, id, data, opts = {}) {
    if (!isObject(data)) return Promise.resolve(this._invalid('data must be an object'));
    return this._enqueue({ op: 'replace', collection, id, data }, opts);
  }
  remove(collection, id, opts = {}) {
    return this._enqueue({ op: 'delete', collection, id }, opts);
  }

  _invalid(message) {
    return { ok: false, error: { code: 'invalid_message', message } };
  }

  _enqueue(w, opts) {
    if (typeof w.collection !== 'string' || (w.op !== 'create' && typeof w.id !== 'string')) {
      return Promise.resolve(this._invalid('collection and id must be strings'));
    }
    w.op_id = opts.opId || newOpId();
    if (opts.expectedVersion !== undefined && opts.expectedVersion !== null) w.expected_version = opts.expectedVersion;
    return new Promise((resolve) => {
      this._pending.set(w.op_id, resolve);
      this._queue.push(w);
      this._persistQueue();
      this._pumpWrites();
    });
  }

  _online() {
    const c = this._conn;
    if (!c || c.closed) return false;
    if (c.kind === 'ws') return !!c.ws && c.ws.readyState === 1 && !!c.helloSent;
    return this.status === 'syncing' || this.status === 'live';
  }

  /** Sends the head of the queue, one write at a time, so that writes apply in order. */
  _pumpWrites() {
    if (this._inflight || this._writeRetryTimer || !this._queue.length || !this._online()) return;
    const w = this._queue[0];
    this._inflight = w.op_id;
    const conn = this._conn;
    if (conn.kind === 'ws') {
      const msg = { type: 'write', op_id: w.op_id, op: w.op, collection: w.collection };
      if (w.id !== undefined) msg.id = w.id;
      if (w.data !== undefined) msg.data = w.data;
      if (w.patch !== undefined) msg.patch = w.patch;
      if (w.expected_version !== undefined) msg.expected_version = w.expected_version;
      if (this._wsSend(conn, msg)) this._lastSentWrite = w.op_id;
    } else {
      this._restWrite(w).then(
        (result) => {
          if (this._inflight !== w.op_id) return;
          if (result) this._onResult(result);
          else this._retryLater(w.op_id);
        },
        () => this._retryLater(w.op_id),
      );
    }
  }

  _retryLater(opId) {
    if (this._inflight !== opId) return;
    this._inflight = null;
    if (!this._wanted) return;
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 4);
    this._writeRetryTimer = setTimeout(() => {
      this._writeRetryTimer = null;
      this._pumpWrites();
    }, Math.random() * cap);
  }

  /** Sends a write over REST; returns a result, or null for "retry later". */
  async _restWrite(w) {
    const c = encodeURIComponent(w.collection);
    const headers = { 'x-client-id': this.clientId, 'idempotency-key': w.op_id };
    const token = await this._withToken((t) => t);
    if (token) headers.authorization = `Bearer ${token}`;
    if (w.expected_version !== undefined) headers['if-match'] = `"${w.expected_version}"`;
    let method;
    let path;
    let body;
    if (w.op === 'create') {
      method = 'POST';
      path = `/api/${c}`;
      body = w.id !== undefined ? { ...w.data, id: w.id } : w.data;
      headers['content-type'] = 'application/json';
    } else {
      path = `/api/${c}/${encodeURIComponent(w.id)}`;
      if (w.op === 'replace') {
        method = 'PUT';
        body = w.data;
        headers['content-type'] = 'application/json';
      } else if (w.op === 'patch') {
        method = 'PATCH';
        body = w.patch;
        headers['content-type'] = 'application/json-patch+json';
      } else if (w.op === 'merge') {
        method = 'PATCH';
        body = w.patch;
        headers['content-type'] = 'application/merge-patch+json';
      } else method = 'DELETE';
    }
    let res;
    try {
      res = await this._fetch(this.url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      return null; // network: retry later
    }
    if (res.status === 503 || res.status === 502 || res.status === 504) return null;
    // A token function may have a fresh token next time; a fixed one would be refused again.
    if (res.status === 401 && typeof this._tokenSource === 'function') return null;
    let json = null;
    try {
      json = await res.json();
    } catch {
      json = null;
    }
    const result = { type: 'result', op_id: w.op_id, ok: res.ok };
    if (res.headers && res.headers.get && res.headers.get('idempotent-replayed') === 'true') result.replayed = true;
    if (res.ok) {
      const doc = json && json.document;
      const ev = json && json.event;
      result.id = (doc && doc.id) || (ev && ev.id) || w.id;
      const version = (ev && ev.version) || (doc && doc.version);
      if (version !== undefined) result.version = version;
      if (ev && ev.seq !== undefined) result.seq = ev.seq;
    } else {
      if (w.id !== undefined) result.id = w.id;
      result.error = (json && isObject(json.error) && json.error) || { code: 'http_' + res.status, message: `HTTP ${res.status}` };
    }
    return result;
  }

  _onResult(m) {
    const idx = this._queue.findIndex((w) => w.op_id === m.op_id);
    const w = idx >= 0 ? this._queue[idx] : undefined;
    if (!m.ok && m.error && RETRY_CODES.has(m.error.code) && w) {
      this._retryLater(m.op_id);
      return;
    }
    if (idx >= 0) {
      this._queue.splice(idx, 1);
      this._persistQueue();
    }
    if (this._inflight === m.op_id) this._inflight = null;
    const result = { ok: m.ok, id: m.id, version: m.version, seq: m.seq, error: m.error, opId: m.op_id };
    if (m.replayed) result.replayed = true;
    if (!m.ok && m.error && m.error.code === 'version_conflict') {
      this._emit('conflict', {
        opId: m.op_id,
        collection: w ? w.collection : undefined,
        id: m.id !== undefined ? m.id : w && w.id,
        currentVersion: m.error.current_version,
        error: m.error,
      });
    }
    this._emit('result', result);
    const resolve = this._pending.get(m.op_id);
    this._pending.delete(m.op_id);
    if (resolve) resolve(result);
    this._pumpWrites();
  }
}

export default EventSyncClient;
