import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyPatch, applyMessage, emptyState, parsePointer, validateMessage, PatchError } from '../eventsync.js';

test('pointer parsing and escaping', () => {
  assert.deepEqual(parsePointer(''), []);
  assert.deepEqual(parsePointer('/'), ['']);
  assert.deepEqual(parsePointer('/a~1b/m~0n/~01'), ['a/b', 'm~n', '~1']);
  assert.throws(() => parsePointer('a'), PatchError);
  assert.throws(() => parsePointer('/a~2'), PatchError);
});

test('add, remove, replace on objects and arrays', () => {
  const doc = { a: 1, list: [1, 2, 3], o: { x: 1 } };
  const out = applyPatch(doc, [
    { op: 'add', path: '/b', value: { c: [1] } },
    { op: 'add', path: '/list/-', value: 4 },
    { op: 'add', path: '/list/0', value: 0 },
    { op: 'remove', path: '/list/2' },
    { op: 'replace', path: '/o/x', value: 2 },
    { op: 'remove', path: '/a' },
    { op: 'add', path: '/b/c/1', value: 2 },
  ]);
  assert.deepEqual(out, { b: { c: [1, 2] }, list: [0, 1, 3, 4], o: { x: 2 } });
  assert.deepEqual(doc, { a: 1, list: [1, 2, 3], o: { x: 1 } }, 'the input is not changed');
});

test('move, copy, test', () => {
  const out = applyPatch({ a: { b: 1 }, l: [1, 2] }, [
    { op: 'copy', from: '/a', path: '/c' },
    { op: 'move', from: '/a/b', path: '/d' },
    { op: 'move', from: '/l/0', path: '/l/-' },
    { op: 'test', path: '/c', value: { b: 1 } },
    { op: 'test', path: '/l', value: [2, 1] },
  ]);
  assert.deepEqual(out, { a: {}, c: { b: 1 }, d: 1, l: [2, 1] });
  // copy is deep: changing the copy leaves the source
  const out2 = applyPatch({ a: { b: 1 } }, [{ op: 'copy', from: '/a', path: '/c' }, { op: 'replace', path: '/c/b', value: 2 }]);
  assert.deepEqual(out2, { a: { b: 1 }, c: { b: 2 } });
  assert.throws(() => applyPatch({ a: { b: 1 } }, [{ op: 'move', from: '/a', path: '/a/b/c' }]), PatchError);
});

test('escaped keys and the root', () => {
  const out = applyPatch({ 'a/b': 1, 'm~n': 2, '': 3 }, [
    { op: 'replace', path: '/a~1b', value: 10 },
    { op: 'remove', path: '/m~0n' },
    { op: 'replace', path: '/', value: 30 },
    { op: 'add', path: '/~01', value: 't' },
  ]);
  assert.deepEqual(out, { 'a/b': 10, '': 30, '~1': 't' });
  assert.deepEqual(applyPatch({ a: 1 }, [{ op: 'replace', path: '', value: { z: 1 } }]), { z: 1 });
});

test('failures name the operation', () => {
  const cases = [
    [{ a: 1 }, [{ op: 'remove', path: '/b' }]],
    [{ a: 1 }, [{ op: 'replace', path: '/b', value: 1 }]],
    [{ a: [1] }, [{ op: 'add', path: '/a/5', value: 1 }]],
    [{ a: [1] }, [{ op: 'add', path: '/a/01', value: 1 }]],
    [{ a: [1] }, [{ op: 'remove', path: '/a/-' }]],
    [{ a: 1 }, [{ op: 'add', path: '/x/y', value: 1 }]],
    [{ a: 1 }, [{ op: 'test', path: '/a', value: 2 }]],
    [{ a: 1 }, [{ op: 'frob', path: '/a' }]],
    [{ a: 1 }, [{ op: 'add', path: '/b' }]],
    [{ a: 1 }, 'nope'],
  ];
  for (const [doc, patch] of cases) assert.throws(() => applyPatch(doc, patch), PatchError, JSON.stringify(patch));
  try {
    applyPatch({ a: 1 }, [{ op: 'test', path: '/a', value: 1 }, { op: 'remove', path: '/zz' }]);
  } catch (e) {
    assert.equal(e.index, 1);
  }
});

const ev = (seq, id, version, op, patch) => ({ type: 'event', seq, collection: 'games', id, version, op, patch, client_id: 'c', op_id: 'o' + seq, ts: 't' });
const snap = (id, version, data) => ({ type: 'snapshot', collection: 'games', id, version, data: data ?? null, deleted: data === undefined });

test('events: next version applies, duplicates and gaps do not', () => {
  const s = emptyState();
  let r = applyMessage(s, ev(1, 'g1', 1, 'create', [{ op: 'add', path: '/a', value: 1 }]));
  assert.equal(r.kind, 'applied');
  assert.deepEqual(r.change, { collection: 'games', id: 'g1', version: 1, data: { a: 1 }, deleted: false, source: 'event' });
  assert.equal(applyMessage(s, ev(1, 'g1', 1, 'create', [])).kind, 'duplicate');
  r = applyMessage(s, ev(5, 'g1', 3, 'update', []));
  assert.equal(r.kind, 'gap');
  assert.deepEqual(s.vector, { games: { g1: 1 } });
  assert.equal(applyMessage(s, ev(2, 'g1', 2, 'update', [{ op: 'add', path: '/b', value: 2 }])).kind, 'applied');
  assert.equal(applyMessage(s, ev(5, 'g1', 3, 'update', [{ op: 'remove', path: '/a' }])).kind, 'applied');
  assert.deepEqual(s.docs.games.g1, { b: 2 });
  r = applyMessage(s, ev(6, 'g1', 4, 'delete', []));
  assert.equal(r.change.deleted, true);
  assert.equal(s.docs.games, undefined);
  assert.deepEqual(s.vector, { games: { g1: 4 } }, 'a deleted document keeps its delete version');
  // re-create continues the version line
  assert.equal(applyMessage(s, ev(7, 'g1', 5, 'create', [{ op: 'add', path: '/n', value: 1 }])).kind, 'applied');
  assert.equal(s.lastSeq, 7);
});

test('a create applies at any version when the client has nothing', () => {
  const s = emptyState();
  assert.equal(applyMessage(s, ev(9, 'g3', 6, 'create', [{ op: 'add', path: '/x', value: 1 }])).kind, 'applied');
  assert.deepEqual(s.vector, { games: { g3: 6 } });
  // but an update at a higher version is a gap
  assert.equal(applyMessage(s, ev(10, 'g4', 2, 'update', [])).kind, 'gap');
});

test('snapshots are authoritative, deleted at 0 removes the entry', () => {
  const s = emptyState();
  applyMessage(s, snap('g1', 7, { gold: 7 }));
  assert.deepEqual(s.docs.games.g1, { gold: 7 });
  const r = applyMessage(s, snap('g1', 3, { gold: 3 }));
  assert.equal(r.change.source, 'snapshot');
  assert.equal(s.vector.games.g1, 3, 'a lower version resets');
  applyMessage(s, snap('g1', 5));
  assert.equal(s.docs.games, undefined);
  assert.equal(s.vector.games.g1, 5);
  applyMessage(s, snap('g2', 1, {}));
  applyMessage(s, snap('g2', 0));
  assert.equal(s.vector.games.g2, undefined);
  applyMessage(s, snap('g1', 0));
  assert.deepEqual(s.vector, {}, 'no empty collection maps remain');
});

test('a failing patch forgets the document', () => {
  const s = emptyState();
  applyMessage(s, ev(1, 'g1', 1, 'create', [{ op: 'add', path: '/a', value: 1 }]));
  const r = applyMessage(s, ev(2, 'g1', 2, 'update', [{ op: 'test', path: '/a', value: 2 }]));
  assert.equal(r.kind, 'invalid');
  assert.deepEqual(s.vector, {});
  assert.deepEqual(s.docs, {});
  // an update of a deleted document at the next version is invalid too
  applyMessage(s, snap('g2', 1));
  assert.equal(applyMessage(s, ev(3, 'g2', 2, 'update', [])).kind, 'invalid');
  // a patch that makes a non-object
  applyMessage(s, ev(4, 'g3', 1, 'create', []));
  assert.equal(applyMessage(s, ev(5, 'g3', 2, 'update', [{ op: 'replace', path: '', value: [1] }])).kind, 'invalid');
});

test('garbage is recognised, never thrown', () => {
  const s = emptyState();
  for (const m of [null, 1, 'x', [], {}, { type: 'zzz' }, { type: 'event' }, { type: 'snapshot', collection: 'games', id: 'a', version: 1, deleted: false },
    { type: 'event', seq: 1, collection: 'games', id: 'a', version: 1, op: 'create', patch: {} }, { type: 'synced', seq: -1, state_vector: {} }]) {
    assert.equal(applyMessage(s, m).kind, 'invalid', JSON.stringify(m));
    assert.ok(validateMessage(m));
  }
  assert.deepEqual(s, emptyState());
  assert.equal(applyMessage(s, { type: 'synced', seq: 4, state_vector: {} }).kind, 'synced');
  assert.equal(s.lastSeq, 4);
  assert.equal(applyMessage(s, { type: 'pong', id: 1 }).kind, 'ignored');
});
