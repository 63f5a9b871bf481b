#!/usr/bin/env node
// A legacy HTTP+SSE MCP client (the official SDK's SSEClientTransport + Client) for the
// multi-replica tests (tests/multireplica_test.go). It is driven line by line from stdin
// and reports, besides the calls' outcomes, which replica served each HTTP request (the
// X-Replica response header each replica adds), every (re)connection of its event stream
// and every answer it received, so that a test can kill the right replica and check that
// every request was answered exactly once.
//
// Usage:
//   node replica-client.mjs --url http://127.0.0.1:PORT/sse [--timeout MS (30000)]
//       [--header 'Name: value']... [--sdk new|old]
//
// --sdk old runs the same client on an older official SDK (the npm alias sdk-old in
// package.json: @modelcontextprotocol/sdk 1.12.3), whose EventSource reconnects with
// neither Last-Event-ID nor MCP-Protocol-Version (that header came with 1.13.0). That SDK
// has no fetch option, so its requests are recorded by wrapping globalThis.fetch, which it
// calls for the event stream's GETs and for the POSTs.
//
// Lines printed on stdout:
//   sdk <version>                   the SDK version in use (first line)
//   get <status> <replica|-> pv=<MCP-Protocol-Version sent|-> lei=<Last-Event-ID sent|->
//                                   each GET of the event stream: the first one and every
//                                   reconnection of the SDK's EventSource
//   session <sessionId>             whenever the POST endpoint's sessionId changes
//   endpoint <sessionId>            each endpoint event (the first one, printed once
//                                   connected, and every one after a reconnection; the SDK
//                                   POSTs to it from then on)
//   post <status|error> <replica|-> <method|response> <id|-> <tag|->
//                                   each POST; tag is the call's tag (see call below)
//   ready                           connected and initialised
//   progress <tag> <progress>       a progress notification of a callp call
//   result <tag> ok|is-error <JSON text>
//   result <tag> rpc-error <code> <JSON message>
//   result <tag> timeout <JSON message>
//   result <tag> fail <JSON message>
//   error <JSON message>            the client's onerror (SSE errors, stray messages)
//   stats <JSON>                    answer to the stats command
//
// Commands read from stdin (calls run concurrently; each prints its result line):
//   call <tag> <tool> <JSON arguments>    call a tool
//   callp <tag> <tool> <JSON arguments>   call a tool with a progress token
//   stats                                  print stats {sent, answered, missing,
//                                          duplicates, unexpected, unknownId, gets}
//   quit                                   close the session and exit 0 (so does EOF)
// It exits 1 if it cannot connect, 2 on a usage error.

import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

let opts;
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' },
      timeout: { type: 'string', default: '30000' },
      header: { type: 'string', multiple: true, default: [] },
      sdk: { type: 'string', default: 'new' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`error: ${e.message}`);
  process.exit(2);
}
const TIMEOUT = Number(opts.timeout);
const HEADERS = {};
for (const h of opts.header) {
  const i = h.indexOf(':');
  if (i <= 0) {
    console.error(`error: bad --header ${JSON.stringify(h)}`);
    process.exit(2);
  }
  HEADERS[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}
if (!opts.url || !(TIMEOUT > 0) || !['new', 'old'].includes(opts.sdk)) {
  console.error("usage: node replica-client.mjs --url http://127.0.0.1:PORT/sse [--timeout MS] [--header 'Name: value']... [--sdk new|old]");
  process.exit(2);
}
const SDK = opts.sdk === 'old' ? 'sdk-old' : '@modelcontextprotocol/sdk';
const { Client } = await import(`${SDK}/client/index.js`);
const { SSEClientTransport } = await import(`${SDK}/client/sse.js`);
const { McpError, ErrorCode } = await import(`${SDK}/types.js`);
const sdkVersion = JSON.parse(
  readFileSync(new URL(`./node_modules/${SDK}/package.json`, import.meta.url), 'utf8'),
).version;

const out = (line) => process.stdout.write(`${line}\n`);
out(`sdk ${sdkVersion}`);
const headerOf = (init, name) => {
  const h = init?.headers;
  if (!h) return null;
  if (typeof h.get === 'function') return h.get(name);
  for (const [k, v] of Object.entries(h)) if (k.toLowerCase() === name.toLowerCase()) return v;
  return null;
};

// Bookkeeping of requests sent and answers received, by JSON-RPC id.
const sent = new Map(); // id (JSON) -> tag or ''
const answers = new Map(); // id (JSON) -> count
const unexpected = []; // answers to ids never sent
let unknownId = 0;
let gets = 0;
let sessionId = null;

// fetch used for the event stream's GETs and for the POSTs.
const realFetch = globalThis.fetch;
const recordingFetch = async (url, init) => {
  const method = init?.method ?? 'GET';
  if (method === 'GET') {
    gets++;
    const pv = headerOf(init, 'mcp-protocol-version') ?? '-';
    const lei = headerOf(init, 'last-event-id') ?? '-';
    let res;
    try {
      res = await realFetch(url, init);
    } catch (e) {
      out(`get error - pv=${pv} lei=${lei}`);
      throw e;
    }
    out(`get ${res.status} ${res.headers.get('x-replica') ?? '-'} pv=${pv} lei=${lei}`);
    return res;
  }
  const sid = new URL(String(url)).searchParams.get('sessionId');
  if (sid !== sessionId) {
    sessionId = sid;
    out(`session ${sid}`);
  }
  let what = 'response';
  let id = '-';
  let tag = '-';
  try {
    const msg = JSON.parse(init.body);
    if (msg.method) what = msg.method;
    if (msg.id !== undefined) id = JSON.stringify(msg.id);
    if (msg.params?._meta?.e2eTag) tag = msg.params._meta.e2eTag;
  } catch {
    // not ours to judge
  }
  let res;
  try {
    res = await realFetch(url, init);
  } catch (e) {
    out(`post error - ${what} ${id} ${tag}`);
    throw e;
  }
  out(`post ${res.status} ${res.headers.get('x-replica') ?? '-'} ${what} ${id} ${tag}`);
  return res;
};

let transport;
if (opts.sdk === 'old') {
  globalThis.fetch = recordingFetch;
  transport = new SSEClientTransport(new URL(opts.url), { requestInit: { headers: HEADERS } });
} else {
  transport = new SSEClientTransport(new URL(opts.url), {
    requestInit: { headers: HEADERS },
    fetch: recordingFetch,
  });
}

// Count what goes out and what comes back. Protocol.connect installs its own onmessage
// on the transport; the accessor wraps whatever it installs.
const origSend = transport.send.bind(transport);
transport.send = async (msg, options) => {
  if (msg && msg.method !== undefined && msg.id !== undefined) sent.set(JSON.stringify(msg.id), msg.params?._meta?.e2eTag ?? '');
  return origSend(msg, options);
};
let innerOnMessage;
Object.defineProperty(transport, 'onmessage', {
  configurable: true,
  get() {
    return innerOnMessage && ((msg, extra) => {
      if (msg && msg.method === undefined && msg.id !== undefined && ('result' in msg || 'error' in msg)) {
        const key = JSON.stringify(msg.id);
        answers.set(key, (answers.get(key) ?? 0) + 1);
        if (!sent.has(key)) unexpected.push(key);
      }
      return innerOnMessage(msg, extra);
    });
  },
  set(fn) {
    innerOnMessage = fn;
  },
});

const client = new Client({ name: 'replica-client', version: '1.0.0' }, { capabilities: {} });
client.onerror = (e) => {
  const m = String(e?.message ?? e);
  if (/unknown message ID/.test(m)) unknownId++;
  out(`error ${JSON.stringify(m)}`);
};
try {
  await client.connect(transport, { timeout: TIMEOUT });
} catch (e) {
  out(`connect-failed ${JSON.stringify(String(e?.message ?? e))}`);
  process.exit(1);
}
// Every endpoint event, the first one and those of the EventSource's reconnections. This
// listener runs after the SDK's own (registered first), so once the line is out the SDK
// POSTs to that endpoint.
const endpointSession = (u) => new URL(String(u), opts.url).searchParams.get('sessionId') ?? '-';
out(`endpoint ${endpointSession(transport._endpoint)}`);
transport._eventSource?.addEventListener('endpoint', (e) => out(`endpoint ${endpointSession(e.data)}`));
out('ready');

async function call(tag, tool, args, withProgress) {
  const options = { timeout: TIMEOUT };
  if (withProgress) options.onprogress = (p) => out(`progress ${tag} ${p.progress}`);
  try {
    const res = await client.callTool({ name: tool, arguments: args, _meta: { e2eTag: tag } }, undefined, options);
    const text = (res.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
    return `${res.isError ? 'is-error' : 'ok'} ${JSON.stringify(text)}`;
  } catch (e) {
    if (e instanceof McpError && e.code === ErrorCode.RequestTimeout) return `timeout ${JSON.stringify(e.message)}`;
    if (e instanceof McpError) return `rpc-error ${e.code} ${JSON.stringify(e.message)}`;
    return `fail ${JSON.stringify(String(e?.message ?? e))}`;
  }
}

function stats() {
  const missing = [...sent.keys()].filter((k) => !answers.has(k));
  const duplicates = Object.fromEntries([...answers].filter(([, n]) => n > 1));
  return { sent: sent.size, answered: answers.size, missing, duplicates, unexpected, unknownId, gets };
}

const pending = new Set();
const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  const m = /^(call|callp) (\S+) (\S+) (.*)$/.exec(line);
  if (m) {
    let args;
    try {
      args = JSON.parse(m[4]);
    } catch (e) {
      out(`result ${m[2]} fail ${JSON.stringify(`bad arguments: ${e.message}`)}`);
      continue;
    }
    const p = call(m[2], m[3], args, m[1] === 'callp').then((r) => out(`result ${m[2]} ${r}`));
    pending.add(p);
    p.finally(() => pending.delete(p));
  } else if (line === 'stats') {
    out(`stats ${JSON.stringify(stats())}`);
  } else if (line === 'quit') {
    break;
  } else if (line !== '') {
    out(`error ${JSON.stringify(`unknown command ${line}`)}`);
  }
}
await client.close().catch(() => {});
process.exit(0);
