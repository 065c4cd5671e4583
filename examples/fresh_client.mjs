// Fresh clients of a large collection: what their catch-up costs the server (BENCHMARKS.md,
// "A fresh client of a large collection"). Starts the server binary on 127.0.0.1:0 over a data
// directory, optionally seeds it first, then opens CLIENTS WebSockets at once, each with
// `hello {subscribe: ["games"], state_vector: {}}`, reads each to its `synced`, and prints one JSON
// line: time, messages, and the server's VmRSS before and VmHWM (peak) after, from /proc.
//
//   node examples/fresh_client.mjs <server-bin> <data-dir> [server args...]
//   SEED=1000000 node examples/fresh_client.mjs target/release/eventsync "$(mktemp -d)" --durability normal --write-rate 0
//   CLIENTS=10 node examples/fresh_client.mjs target/release/eventsync <dir> --max-catch-up-bytes 1048576 --max-sockets-per-client 0
//
// SEED=N first creates N documents `games/d0000000…` of about 250 bytes over REST (32 at a time),
// into an empty store. Needs the `ws` package of client/ (`cd client && npm ci`). Linux only (/proc).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const { default: WebSocket } = await import(join(here, '../client/node_modules/ws/index.js'));

const [bin, dir, ...extra] = process.argv.slice(2);
if (!bin || !dir) {
  console.error('usage: node examples/fresh_client.mjs <server-bin> <data-dir> [server args...]');
  process.exit(2);
}
const SEED = Number(process.env.SEED || 0);
const CLIENTS = Number(process.env.CLIENTS || 1);
const LIMIT_S = Number(process.env.LIMIT_S || 600);

const srv = spawn(bin, ['--listen', '127.0.0.1:0', '--data-dir', dir, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
const stop = setTimeout(() => { console.error(`gave up after ${LIMIT_S} s`); srv.kill('SIGKILL'); process.exit(1); }, LIMIT_S * 1000);
const url = await new Promise((res, rej) => {
  const on = (d) => { const m = /http:\/\/127\.0\.0\.1:\d+/.exec(d.toString()); if (m) res(m[0]); };
  srv.stdout.on('data', on);
  srv.stderr.on('data', on);
  srv.on('exit', (code) => rej(new Error(`the server exited (${code})`)));
});
const kib = (k) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(readFileSync(`/proc/${srv.pid}/status`, 'utf8'))[1]);

let seeded_s;
if (SEED > 0) {
  const pad = 'x'.repeat(200);
  let next = 0;
  const worker = async () => {
    while (next < SEED) {
      const i = next++;
      const body = JSON.stringify({ id: `d${String(i).padStart(7, '0')}`, level: i % 10, pad });
      const r = await fetch(`${url}/api/games`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      if (r.status !== 201) throw new Error(`seed ${i}: ${r.status} ${await r.text()}`);
    }
  };
  const t = Date.now();
  await Promise.all(Array.from({ length: 32 }, worker));
  seeded_s = (Date.now() - t) / 1000;
}

await new Promise((r) => setTimeout(r, 1000));
const rss_before_kib = kib('VmRSS');
let messages = 0;
let vector;
const t0 = Date.now();
const results = await Promise.all(Array.from({ length: CLIENTS }, (_, k) => new Promise((res) => {
  const ws = new WebSocket(url.replace('http', 'ws') + '/sync/ws', { maxPayload: 1 << 30 });
  ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', client_id: `fresh${k}`, subscribe: ['games'], state_vector: {} })));
  ws.on('message', (m) => {
    messages++;
    // Only a `synced` (or a small message) is parsed: a million snapshots need not be.
    if (m.length < 256 || m.subarray(0, 20).toString().startsWith('{"type":"synced"')) {
      const msg = JSON.parse(m.toString());
      if (msg.type === 'synced') { vector = Object.keys(msg.state_vector.games ?? {}).length; ws.close(); res(true); }
      if (msg.type === 'error') { console.error(m.toString()); }
    }
  });
  ws.on('close', () => res(false));
})));
const seconds = (Date.now() - t0) / 1000;
console.log(JSON.stringify({
  bin, args: extra, seeded: SEED || undefined, seeded_s, clients: CLIENTS, synced: results.filter(Boolean).length,
  messages, vector, seconds, rss_before_kib, hwm_kib: kib('VmHWM'),
}));
clearTimeout(stop);
srv.kill('SIGTERM');
process.exit(0);
