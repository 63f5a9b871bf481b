#!/usr/bin/env node
// many-clients.mjs: many legacy HTTP+SSE MCP clients in one node process, for the load and
// rolling-restart tests (tests/rollout_test.go). Each client is the official SDK's
// SSEClientTransport + Client (the pinned @modelcontextprotocol/sdk of package.json) with an
// Authorization header of its own (`Bearer <prefix>-<i>`), and calls tools continuously, one
// call at a time: a long call with probability --long-ratio, else a short one, with a random
// pause of up to --think-ms between calls. One process driving every client is far lighter
// than one process per client. The tools, by --upstream:
//   go          (cmd/mcp-demo-upstream) short: echo {message}, want the message back;
//               long: slow {ms: --long-ms}, want "slept"
//   everything  (@modelcontextprotocol/server-everything) short: echo {message}, want
//               "Echo: <message>"; long: trigger-long-running-operation {duration:
//               --long-ms/1000, steps: 4}, want its completion text
// With --long-progress, long calls carry a progress token (the upstream then sends progress
// notifications, each an event with an id, during the call).
//
// It keeps the books of every client: each JSON-RPC request sent and every answer received
// (by id: missing, duplicated, answers to ids never sent, the SDK's "unknown message ID"),
// each call's outcome and latency, each GET of the event stream (status, serving replica from
// the X-Replica response header, MCP-Protocol-Version sent), each endpoint event's sessionId,
// and the status of each POST.
//
// Usage:
//   node many-clients.mjs --url http://127.0.0.1:PORT/sse [--upstream go|everything]
//       [--clients 40] [--token-prefix P] [--timeout MS (30000, per call)] [--long-ms 2000]
//       [--long-ratio 0.3] [--long-progress] [--think-ms 100] [--connect-concurrency 8]
//
// Commands read from stdin:
//   mark <label>      print `mark <label> {"inflight":n,"long":m,"t":ms}`: calls in flight now
//   barrier <label>   print `barrier <label> done` once every client has finished (whatever
//                     its outcome) a call it started after this command
//   stop              start no new call, wait for the calls in flight, print the report
//                     (below), close every client and exit 0 (so does EOF)
//
// Lines printed on stdout:
//   sdk <version>                  first line
//   ready <n>                      every client connected and initialised, calls started
//   connect-failed <i> <JSON msg>  a client could not connect (the process then exits 1)
//   mark ..., barrier ...          see above
//   failure <JSON>                 a call that did not return its real result, at once:
//                                  {client, tag, kind (short|long), tool, id, outcome,
//                                  message, startMs, ms}
//   client <JSON>                  per client, in the report: {client, calls, ok, sessions,
//                                  gets:[{t,status,replica,pv}], posts:{status:n}, missing,
//                                  duplicates:{id:n}, duplicateTags:{id:tag}, unexpected,
//                                  unknownId, onerror}
//   summary <JSON>                 the report's totals (last line): see report() below
// Times (t, startMs) are milliseconds since the Unix epoch.
// It exits 1 if a client cannot connect, 2 on a usage error.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { McpError, ErrorCode } from '@modelcontextprotocol/sdk/types.js';

let opts;
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' },
      upstream: { type: 'string', default: 'go' },
      clients: { type: 'string', default: '40' },
      'token-prefix': { type: 'string', default: `many-${process.pid}` },
      timeout: { type: 'string', default: '30000' },
      'long-ms': { type: 'string', default: '2000' },
      'long-ratio': { type: 'string', default: '0.3' },
      'long-progress': { type: 'boolean', default: false },
      'think-ms': { type: 'string', default: '100' },
      'connect-concurrency': { type: 'string', default: '8' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`error: ${e.message}`);
  process.exit(2);
}
const N = Number(opts.clients);
const TIMEOUT = Number(opts.timeout);
const LONG_MS = Number(opts['long-ms']);
const LONG_RATIO = Number(opts['long-ratio']);
const THINK_MS = Number(opts['think-ms']);
const CONNECT_CONCURRENCY = Number(opts['connect-concurrency']);
if (!opts.url || !['go', 'everything'].includes(opts.upstream) || !(N > 0) || !(TIMEOUT > 0) || !(LONG_MS >= 0) || !(LONG_RATIO >= 0 && LONG_RATIO <= 1) || !(THINK_MS >= 0) || !(CONNECT_CONCURRENCY > 0)) {
  console.error('usage: node many-clients.mjs --url http://127.0.0.1:PORT/sse [--upstream go|everything] [--clients N] [--token-prefix P] [--timeout MS] [--long-ms MS] [--long-ratio R] [--long-progress] [--think-ms MS] [--connect-concurrency C]');
  process.exit(2);
}

// The calls, by upstream: name, arguments and the text of the result wanted.
const STEPS = 4;
const CALLS = {
  go: {
    short: (m) => ({ name: 'echo', args: { message: m }, want: m }),
    long: () => ({ name: 'slow', args: { ms: LONG_MS }, want: 'slept' }),
  },
  everything: {
    short: (m) => ({ name: 'echo', args: { message: m }, want: `Echo: ${m}` }),
    long: () => ({
      name: 'trigger-long-running-operation',
      args: { duration: LONG_MS / 1000, steps: STEPS },
      want: `Long running operation completed. Duration: ${LONG_MS / 1000} seconds, Steps: ${STEPS}.`,
    }),
  },
}[opts.upstream];

const out = (line) => process.stdout.write(`${line}\n`);
out(`sdk ${JSON.parse(readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8')).version}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const headerOf = (init, name) => {
  const h = init?.headers;
  if (!h) return null;
  if (typeof h.get === 'function') return h.get(name);
  for (const [k, v] of Object.entries(h)) if (k.toLowerCase() === name.toLowerCase()) return v;
  return null;
};

let stopping = false;
const inflight = new Set(); // call records in flight
const failures = [];
const barriers = []; // {label, threshold: Map(bot -> started seq)}

class Bot {
  constructor(i) {
    this.i = i;
    this.token = `${opts['token-prefix']}-${i}`;
    this.sent = new Map(); // id (JSON) -> tag
    this.answers = new Map(); // id (JSON) -> count
    this.unexpected = [];
    this.unknownId = 0;
    this.onerror = 0;
    this.gets = [];
    this.sessions = [];
    this.posts = {};
    this.calls = 0;
    this.ok = 0;
    this.started = 0; // seq of the last call started
    this.finished = 0; // highest seq of a call finished
    this.latencies = []; // {kind, tool, ms, tag, startMs}
  }

  fetch = async (url, init) => {
    const method = init?.method ?? 'GET';
    if (method === 'GET') {
      const g = { t: Date.now(), status: 'error', replica: '-', pv: headerOf(init, 'mcp-protocol-version') ?? '-' };
      this.gets.push(g);
      const res = await fetch(url, init);
      g.status = res.status;
      g.replica = res.headers.get('x-replica') ?? '-';
      return res;
    }
    const sid = new URL(String(url)).searchParams.get('sessionId');
    if (this.sessions[this.sessions.length - 1] !== sid) this.sessions.push(sid);
    let status = 'error';
    try {
      const res = await fetch(url, init);
      status = String(res.status);
      return res;
    } finally {
      this.posts[status] = (this.posts[status] ?? 0) + 1;
    }
  };

  async connect() {
    const transport = new SSEClientTransport(new URL(opts.url), {
      requestInit: { headers: { Authorization: `Bearer ${this.token}` } },
      fetch: this.fetch,
    });
    // Count what goes out and what comes back (Protocol.connect installs its own
    // onmessage; the accessor wraps whatever it installs).
    const origSend = transport.send.bind(transport);
    transport.send = async (msg, o) => {
      if (msg && msg.method !== undefined && msg.id !== undefined) this.sent.set(JSON.stringify(msg.id), msg.params?._meta?.e2eTag ?? '');
      return origSend(msg, o);
    };
    let inner;
    const bot = this;
    Object.defineProperty(transport, 'onmessage', {
      configurable: true,
      get() {
        return inner && ((msg, extra) => {
          if (msg && msg.method === undefined && msg.id !== undefined && ('result' in msg || 'error' in msg)) {
            const key = JSON.stringify(msg.id);
            bot.answers.set(key, (bot.answers.get(key) ?? 0) + 1);
            if (!bot.sent.has(key)) bot.unexpected.push(key);
          }
          return inner(msg, extra);
        });
      },
      set(fn) {
        inner = fn;
      },
    });
    this.transport = transport;
    this.client = new Client({ name: `many-clients-${this.i}`, version: '1.0.0' }, { capabilities: {} });
    this.client.onerror = (e) => {
      const m = String(e?.message ?? e);
      if (/unknown message ID/.test(m)) this.unknownId++;
      else this.onerror++;
    };
    await this.client.connect(transport, { timeout: TIMEOUT });
  }

  idOf(tag) {
    for (const [id, t] of this.sent) if (t === tag) return id;
    return '-';
  }

  async call(seq) {
    const kind = Math.random() < LONG_RATIO ? 'long' : 'short';
    const tag = `c${this.i}-${seq}`;
    const { name: tool, args, want } = CALLS[kind](`echo ${tag} ${Math.random().toString(36).slice(2)}`);
    const rec = { client: this.i, tag, kind, tool, startMs: Date.now() };
    inflight.add(rec);
    const options = { timeout: TIMEOUT };
    if (kind === 'long' && opts['long-progress']) options.onprogress = () => {};
    let outcome = 'ok';
    let message = '';
    try {
      const res = await this.client.callTool({ name: tool, arguments: args, _meta: { e2eTag: tag } }, undefined, options);
      const text = (res.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
      if (res.isError) [outcome, message] = ['is-error', text];
      else if (text !== want) [outcome, message] = ['wrong-result', `got ${JSON.stringify(text)}, want ${JSON.stringify(want)}`];
    } catch (e) {
      if (e instanceof McpError && e.code === ErrorCode.RequestTimeout) outcome = 'timeout';
      else if (e instanceof McpError) outcome = `rpc-error ${e.code}`;
      else outcome = 'fail';
      message = String(e?.message ?? e);
    }
    inflight.delete(rec);
    const ms = Date.now() - rec.startMs;
    this.calls++;
    this.latencies.push({ kind, tool, ms, tag, startMs: rec.startMs });
    if (outcome === 'ok') this.ok++;
    else {
      const f = { ...rec, id: this.idOf(tag), outcome, message, ms };
      failures.push(f);
      out(`failure ${JSON.stringify(f)}`);
    }
    this.finished = Math.max(this.finished, seq);
    checkBarriers();
  }

  async run() {
    while (!stopping) {
      await this.call(++this.started);
      if (stopping) break;
      await sleep(Math.random() * THINK_MS);
    }
  }

  report() {
    const missing = [...this.sent.keys()].filter((k) => !this.answers.has(k));
    const duplicates = Object.fromEntries([...this.answers].filter(([, n]) => n > 1));
    return {
      client: this.i,
      calls: this.calls,
      ok: this.ok,
      sent: this.sent.size,
      sessions: this.sessions,
      gets: this.gets,
      posts: this.posts,
      missing,
      duplicates,
      duplicateTags: Object.fromEntries(Object.keys(duplicates).map((id) => [id, this.sent.get(id) ?? ''])),
      unexpected: this.unexpected,
      unknownId: this.unknownId,
      onerror: this.onerror,
    };
  }
}

const bots = Array.from({ length: N }, (_, i) => new Bot(i));

function checkBarriers() {
  for (let k = barriers.length - 1; k >= 0; k--) {
    const b = barriers[k];
    if (bots.every((bot) => bot.finished > b.threshold.get(bot))) {
      barriers.splice(k, 1);
      out(`barrier ${b.label} done`);
    }
  }
}

// Connect, a few at a time.
{
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const bot = bots[next++];
      try {
        await bot.connect();
      } catch (e) {
        out(`connect-failed ${bot.i} ${JSON.stringify(String(e?.message ?? e))}`);
        process.exit(1);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, N) }, worker));
}
const runs = bots.map((b) => b.run());
out(`ready ${N}`);

function report() {
  const all = bots.flatMap((b) => b.latencies);
  const max = (xs) => xs.reduce((m, x) => (x.ms > (m?.ms ?? -1) ? x : m), null);
  const byKind = {};
  for (const kind of ['short', 'long']) {
    const xs = all.filter((x) => x.kind === kind);
    const sorted = xs.map((x) => x.ms).sort((a, b) => a - b);
    byKind[kind] = {
      calls: xs.length,
      maxMs: sorted[sorted.length - 1] ?? 0,
      p50Ms: sorted[Math.floor(sorted.length * 0.5)] ?? 0,
      p99Ms: sorted[Math.floor(sorted.length * 0.99)] ?? 0,
    };
  }
  const reps = bots.map((b) => b.report());
  const sum = (f) => reps.reduce((s, r) => s + f(r), 0);
  const getStatus = {};
  const postStatus = {};
  for (const r of reps) {
    for (const g of r.gets) getStatus[g.status] = (getStatus[g.status] ?? 0) + 1;
    for (const [s, n] of Object.entries(r.posts)) postStatus[s] = (postStatus[s] ?? 0) + n;
  }
  return {
    clients: N,
    calls: all.length,
    ok: sum((r) => r.ok),
    failures: failures.length,
    sent: sum((r) => r.sent),
    missing: sum((r) => r.missing.length),
    duplicates: sum((r) => Object.keys(r.duplicates).length),
    unexpected: sum((r) => r.unexpected.length),
    unknownId: sum((r) => r.unknownId),
    onerror: sum((r) => r.onerror),
    gets: sum((r) => r.gets.length),
    clientsReconnected: reps.filter((r) => r.gets.length > 1).length,
    endpointSessions: sum((r) => r.sessions.length),
    getStatus,
    postStatus,
    byKind,
    longest: max(all),
  };
}

const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  let m;
  if ((m = /^mark (\S+)$/.exec(line))) {
    const calls = [...inflight];
    out(`mark ${m[1]} ${JSON.stringify({ inflight: calls.length, long: calls.filter((c) => c.kind === 'long').length, t: Date.now() })}`);
  } else if ((m = /^barrier (\S+)$/.exec(line))) {
    barriers.push({ label: m[1], threshold: new Map(bots.map((b) => [b, b.started])) });
  } else if (line === 'stop') {
    break;
  } else if (line !== '') {
    out(`error ${JSON.stringify(`unknown command ${line}`)}`);
  }
}
stopping = true;
await Promise.all(runs);
for (const b of bots) out(`client ${JSON.stringify(b.report())}`);
out(`summary ${JSON.stringify(report())}`);
await Promise.all(bots.map((b) => b.client.close().catch(() => {})));
process.exit(0);
