// What the client's integration tests share: the real server (the debug binary on 127.0.0.1:0 and
// a fresh data directory), a client factory and a poll.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { EventSyncClient, MemoryStorage } from '../eventsync.js';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = join(here, '..', '..', 'target', 'debug', 'eventsync');

/** Starts the server with these extra flags; resolves with {url, stop()}. */
export async function startServer(args = []) {
  assert.ok(existsSync(BIN), `${BIN} missing: run cargo build first`);
  const dataDir = mkdtempSync(join(tmpdir(), 'eventsync-js-'));
  const server = spawn(BIN, ['--listen', '127.0.0.1:0', '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stop = () => {
    server.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  };
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 15 s')), 15000);
    let out = '';
    const onData = (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    server.stdout.on('data', onData);
    server.stderr.on('data', onData);
    server.on('exit', (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
  return { url, stop };
}

/** A client of `url` for tests (in-memory storage, fast backoff), remembered in `all` to disconnect. */
export function testClient(url, transport, opts, all) {
  const c = new EventSyncClient({
    url,
    transport,
    subscribe: ['games'],
    storage: new MemoryStorage(),
    WebSocket,
    backoff: { initialMs: 20, maxMs: 200 },
    ...opts,
  });
  all.push(c);
  return c;
}

/** Polls `pred` every 15 ms until it holds, or fails after `ms`. */
export async function waitFor(pred, what = 'condition', ms = 5000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 15));
  }
  throw new Error(`timed out waiting for ${what}`);
}
