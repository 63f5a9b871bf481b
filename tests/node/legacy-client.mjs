#!/usr/bin/env node
// Scenario runner for the legacy MCP HTTP+SSE transport (protocol 2024-11-05 style:
// GET /sse -> `endpoint` event, JSON-RPC POSTed to the announced endpoint).
//
// It only uses the official SDK's legacy client (SSEClientTransport + Client), so it
// behaves like a real legacy MCP client talking to the bridge.
//
// Usage:
//   node legacy-client.mjs --url http://127.0.0.1:PORT/sse --upstream everything|go|go-stateless|go-modern
//       [--features sampling,elicitation,roots] [--scenarios a,b,c]
//       [--header 'Name: value']... [--timeout MS] [--verbose]
//
// Prints `ok <name>` / `FAIL <name>: <reason>` per scenario, then `N passed, M failed`.
// Exit status: 0 if everything passed, 1 if anything failed, 2 on usage errors.

import assert from 'node:assert/strict';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  ToolListChangedNotificationSchema,
  McpError,
} from '@modelcontextprotocol/sdk/types.js';

// ---------------------------------------------------------------------------
// Per-upstream mapping: tool/resource/prompt names, arguments and expected results.
// `text` is the concatenated text content of a tool result.
// ---------------------------------------------------------------------------
const UPSTREAMS = {
  everything: {
    family: 'everything',
    tools: { echo: 'echo', add: 'get-sum', progress: 'trigger-long-running-operation',
      sampling: 'trigger-sampling-request', elicitation: 'trigger-elicitation-request', roots: 'get-roots-list' },
    echoText: (m) => `Echo: ${m}`,
    addArgs: { a: 2, b: 40 }, addText: 'The sum of 2 and 40 is 42.',
    progressArgs: { duration: 1, steps: 3 }, progressSteps: 3,
    progressDone: (t) => t.startsWith('Long running operation completed.'),
    samplingArgs: { prompt: 'bridge-sampling-probe', maxTokens: 20 },
    samplingDone: (t) => t.includes('sampled-reply'),
    elicitationArgs: {},
    elicitationDone: (t) => t.includes('- Name: Ada') && t.includes('"action": "accept"'),
    rootsArgs: {}, rootsDone: (t) => t.includes('file:///tmp/root-a'),
    // Static docs resource; the name is looked up in resources/list.
    resource: { uri: 'demo://resource/static/document/features.md', check: (t) => t.length > 0 },
    prompt: { name: 'args-prompt', args: { city: 'Paris' }, text: "What's weather in Paris?" },
    unknownTool: 'isError', // McpServer (TS) wraps "Tool x not found" into an isError result
  },
  go: {
    family: 'go',
    tools: { echo: 'echo', add: 'add', progress: 'progress', sampling: 'sample', elicitation: 'elicit',
      roots: 'roots', blob: 'blob', slow: 'slow', headers: 'headers', fail: 'fail' },
    echoText: (m) => m,
    addArgs: { a: 2, b: 40 }, addText: '42',
    progressArgs: { steps: 3, delayMs: 100 }, progressSteps: 3,
    progressDone: (t) => t === 'done',
    samplingArgs: { prompt: 'bridge-sampling-probe' },
    samplingDone: (t) => t === 'sampled: sampled-reply',
    elicitationArgs: { message: 'What is your name?' },
    elicitationDone: (t) => t === 'accept:{"name":"Ada"}',
    rootsArgs: {}, rootsDone: (t) => JSON.stringify(JSON.parse(t)) === '["file:///tmp/root-a"]',
    resource: { uri: 'demo://greeting', check: (t) => t === 'hello from the demo upstream' },
    prompt: { name: 'greet', args: { name: 'Ada' }, text: 'Hello, Ada!' },
    unknownTool: 'rpc-error', // go-sdk answers an unknown tool with JSON-RPC -32602
  },
};
// The demo upstream in `-mode stateless` (run it with `-json`): same tools, but without a
// session there is no stream for a call's progress notifications (the server drops them and
// still answers "done"), and no server->client requests (run without --features).
UPSTREAMS['go-stateless'] = { ...UPSTREAMS.go, progressSteps: 0 };
// The demo upstream restricted to MCP 2026-07-28 (`-mode stateless -modern-only`, event
// streams): the bridge translates; a call's progress travels on its own response stream.
UPSTREAMS['go-modern'] = { ...UPSTREAMS.go };

const CLIENT_SAMPLING_REPLY = 'sampled-reply';
const CLIENT_ELICITATION_CONTENT = { name: 'Ada' };
const CLIENT_ROOTS = [{ uri: 'file:///tmp/root-a', name: 'a' }];

// Scenario name -> required feature (null: always applicable) and upstream families (null: all).
const SCENARIOS = [
  ['initialize', null], ['ping', null], ['tools-list', null], ['echo', null], ['add', null],
  ['progress', null], ['sampling', 'sampling'], ['elicitation', 'elicitation'], ['roots', 'roots'],
  ['resources', null], ['prompts', null], ['unknown-tool', null], ['concurrent-100', null],
  ['payload-1mib', null], ['unicode', null], ['two-clients', null],
  // go-only extras (tools that only the demo upstream has)
  ['tool-error', null, ['go']], ['blob', null, ['go']], ['headers', null, ['go']],
];

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------
function usage(msg) {
  if (msg) console.error(`error: ${msg}`);
  console.error('usage: node legacy-client.mjs --url http://127.0.0.1:PORT/sse --upstream everything|go|go-stateless|go-modern\n' +
    '         [--features sampling,elicitation,roots] [--scenarios a,b,c]\n' +
    "         [--header 'Name: value']... [--timeout MS] [--verbose] [--protocol-version V]\n" +
    `scenarios: ${SCENARIOS.map((s) => s[0]).join(', ')}`);
  process.exit(2);
}

let opts;
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' }, upstream: { type: 'string' }, features: { type: 'string', default: '' },
      scenarios: { type: 'string' }, header: { type: 'string', multiple: true, default: [] },
      timeout: { type: 'string', default: '20000' }, verbose: { type: 'boolean', default: false },
      'protocol-version': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }).values;
} catch (e) {
  usage(e.message);
}
if (opts.help) usage();
if (!opts.url) usage('--url is required');
const U = UPSTREAMS[opts.upstream];
if (!U) usage(`--upstream must be one of ${Object.keys(UPSTREAMS).join('|')}`);
const TIMEOUT = Number(opts.timeout);
if (!(TIMEOUT > 0)) usage('--timeout must be a positive number of milliseconds');
const FEATURES = new Set(opts.features.split(',').map((s) => s.trim()).filter(Boolean));
for (const f of FEATURES) if (!['sampling', 'elicitation', 'roots'].includes(f)) usage(`unknown feature ${f}`);
const HEADERS = {};
for (const h of opts.header) {
  const i = h.indexOf(':');
  if (i <= 0) usage(`bad --header ${JSON.stringify(h)} (want 'Name: value')`);
  HEADERS[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}
const applicable = (s) => (!s[1] || FEATURES.has(s[1])) && (!s[2] || s[2].includes(U.family));
let selected;
if (opts.scenarios) {
  selected = opts.scenarios.split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of selected) {
    const s = SCENARIOS.find((x) => x[0] === name);
    if (!s) usage(`unknown scenario ${name}`);
    if (!applicable(s)) usage(`scenario ${name} needs ${s[1] ? `--features ${s[1]}` : `an upstream of family ${s[2]}`}`);
  }
} else {
  selected = SCENARIOS.filter(applicable).map((s) => s[0]);
}
const log = (...a) => { if (opts.verbose) console.error('#', ...a); };

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------
const REQ = { timeout: TIMEOUT };

function withTimeout(promise, ms, what) {
  let t;
  const timer = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout after ${ms} ms: ${what}`)), ms); });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}

function textOf(result) {
  assert.ok(result && Array.isArray(result.content), `tool result without content array: ${short(result)}`);
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
}

function short(v, n = 300) {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s === undefined ? String(v) : s.length > n ? `${s.slice(0, n)}…(${s.length} chars)` : s;
}

async function callText(client, tool, args, extra = {}) {
  const res = await client.callTool({ name: tool, arguments: args }, undefined, { ...REQ, ...extra });
  assert.ok(!res.isError, `${tool} returned isError: ${short(textOf(res))}`);
  return textOf(res);
}

// Opens a legacy SSE connection with our capabilities and client-side handlers.
async function connect(label) {
  const state = { label, endpoint: null, protocolVersion: null, errors: [], counts: { sampling: 0, elicitation: 0, roots: 0 },
    samplingRequests: [], elicitationRequests: [], toolsChanged: 0 };
  const recordingFetch = async (url, init) => {
    if (init?.method === 'POST' && !state.endpoint) state.endpoint = String(url);
    return fetch(url, init);
  };
  const transport = new SSEClientTransport(new URL(opts.url), {
    requestInit: { headers: HEADERS },
    fetch: recordingFetch,
  });
  const origSetPV = transport.setProtocolVersion.bind(transport);
  transport.setProtocolVersion = (v) => { state.protocolVersion = v; origSetPV(v); };
  if (opts['protocol-version']) {
    // The SDK always asks for its newest version: ask for an older one, as an
    // older client would (the SDK accepts any version it supports back).
    const origSend = transport.send.bind(transport);
    transport.send = (msg, o) => origSend(msg.method === 'initialize'
      ? { ...msg, params: { ...msg.params, protocolVersion: opts['protocol-version'] } } : msg, o);
  }

  const capabilities = {};
  if (FEATURES.has('sampling')) capabilities.sampling = {};
  if (FEATURES.has('elicitation')) capabilities.elicitation = {};
  if (FEATURES.has('roots')) capabilities.roots = { listChanged: true };
  const client = new Client({ name: `legacy-client-${label}`, version: '1.0.0' }, { capabilities });
  client.onerror = (e) => { state.errors.push(e); log(`[${label}] client error: ${e?.message ?? e}`); };

  if (FEATURES.has('sampling')) {
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
      state.counts.sampling++;
      state.samplingRequests.push(req.params);
      return { role: 'assistant', content: { type: 'text', text: CLIENT_SAMPLING_REPLY }, model: 'legacy-test-model', stopReason: 'endTurn' };
    });
  }
  if (FEATURES.has('elicitation')) {
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      state.counts.elicitation++;
      state.elicitationRequests.push(req.params);
      return { action: 'accept', content: { ...CLIENT_ELICITATION_CONTENT } };
    });
  }
  if (FEATURES.has('roots')) {
    client.setRequestHandler(ListRootsRequestSchema, async () => {
      state.counts.roots++;
      return { roots: CLIENT_ROOTS.map((r) => ({ ...r })) };
    });
  }
  client.setNotificationHandler(ToolListChangedNotificationSchema, async () => { state.toolsChanged++; });

  // connect() = GET /sse + wait for `endpoint`, then initialize + notifications/initialized.
  await withTimeout(client.connect(transport, REQ), TIMEOUT + 1000, `${label}: connect/initialize`);
  log(`[${label}] connected, endpoint=${state.endpoint} protocolVersion=${state.protocolVersion}`);
  return { client, transport, state };
}

function sessionIdOf(endpoint) {
  try { return new URL(endpoint).searchParams.get('sessionId'); } catch { return null; }
}

// 1 MiB (UTF-8 bytes) of mixed characters: ASCII, JSON-special chars, 2/3/4-byte UTF-8.
function mixedPayload(bytes) {
  const pieces = ['abcXYZ019 ', '"', '\\', '/', '\n', '\t', '\u0001', 'é', 'ß', 'Ж', '→', '中', '文', '\u2028', '😀', '𝄞', '<>&', '\u00a0'];
  let out = '';
  let size = 0;
  let i = 0;
  while (true) {
    const p = pieces[i++ % pieces.length];
    const n = Buffer.byteLength(p, 'utf8');
    if (size + n > bytes) break;
    out += p;
    size += n;
  }
  out += 'x'.repeat(bytes - size);
  assert.equal(Buffer.byteLength(out, 'utf8'), bytes);
  return out;
}

const UNICODE_SAMPLE =
  'emoji 😀👩🏽‍💻🏳️‍🌈 | CJK 中文 日本語 한국어 | combining e\u0301 a\u0308 \u0915\u094d\u0937 | ' +
  `quotes "double" 'single' \`back\` | backslashes \\ \\\\ \\n \\u0000 | ` +
  'controls \u0000\u0001\u0007\b\f\n\r\t\u001b\u001f\u007f | separators \u2028 \u2029 | bom \ufeff | ' +
  'sse-ish \n\ndata: x\nevent: endpoint\n\n | html </script><!-- | rtl \u202eabc\u202c | astral 𝄞 𐍈';

// ---------------------------------------------------------------------------
// Scenarios. `ctx.main` is the shared connection; each function throws on failure.
// ---------------------------------------------------------------------------
const RUN = {
  async initialize({ main }) {
    const info = main.client.getServerVersion();
    assert.ok(info && typeof info.name === 'string' && info.name.length > 0, `serverInfo.name missing: ${short(info)}`);
    assert.ok(typeof info.version === 'string' && info.version.length > 0, `serverInfo.version missing: ${short(info)}`);
    assert.match(String(main.state.protocolVersion), /^\d{4}-\d{2}-\d{2}$/, 'negotiated protocolVersion missing');
    if (opts['protocol-version']) {
      assert.equal(main.state.protocolVersion, opts['protocol-version'], 'negotiated another version than the one asked for');
    }
    assert.ok(main.client.getServerCapabilities()?.tools, 'server did not announce the tools capability');
    assert.ok(main.state.endpoint, 'no POST endpoint was used');
  },

  async ping({ main }) {
    const res = await main.client.ping(REQ);
    assert.deepEqual(res, {}, `ping result should be {} but was ${short(res)}`);
  },

  async 'tools-list'({ main }) {
    const want = [U.tools.echo, U.tools.add, U.tools.progress];
    for (const f of ['sampling', 'elicitation', 'roots']) if (FEATURES.has(f) || U.family === 'go') want.push(U.tools[f]);
    if (U.family === 'go') want.push(U.tools.blob, U.tools.slow, U.tools.headers, U.tools.fail);
    let names = (await main.client.listTools(undefined, REQ)).tools.map((t) => t.name);
    let missing = want.filter((n) => !names.includes(n));
    if (missing.length && U.family === 'everything') {
      // server-everything registers its capability-dependent tools right after
      // notifications/initialized and announces them with tools/list_changed.
      const deadline = Date.now() + 3000;
      while (missing.length && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        if (main.state.toolsChanged === 0) continue;
        names = (await main.client.listTools(undefined, REQ)).tools.map((t) => t.name);
        missing = want.filter((n) => !names.includes(n));
      }
      if (!missing.length) log('tools-list: complete only after tools/list_changed');
    }
    assert.deepEqual(missing, [], `tools missing from tools/list: ${missing.join(', ')} (got ${names.join(', ')})`);
    assert.equal(new Set(names).size, names.length, 'duplicate tool names');
  },

  async echo({ main }) {
    const msg = `hello-${Date.now()}`;
    assert.equal(await callText(main.client, U.tools.echo, { message: msg }), U.echoText(msg));
  },

  async add({ main }) {
    assert.equal((await callText(main.client, U.tools.add, U.addArgs)).trim(), U.addText);
  },

  async progress({ main }) {
    const seen = [];
    const errorsBefore = main.state.errors.length;
    let resultAt = -1;
    const text = await callText(main.client, U.tools.progress, U.progressArgs, {
      onprogress: (p) => { seen.push(p); },
    }).then((t) => { resultAt = seen.length; return t; });
    if (U.progressSteps > 0) assert.ok(seen.length >= 1, 'no progress notifications received');
    assert.ok(U.progressDone(text), `unexpected final result: ${short(text)}`);
    assert.equal(resultAt, seen.length, 'progress notification arrived after the result');
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i].progress > seen[i - 1].progress, `progress not increasing: ${short(seen)}`);
    // The SDK client dispatches notifications in a microtask but responses synchronously, so
    // a final progress notification that shares a read chunk with the result is reported via
    // onerror ("unknown token") instead of onprogress. Count those too: none may be lost.
    await new Promise((r) => setTimeout(r, 50));
    const late = main.state.errors.slice(errorsBefore).filter((e) => /progress notification for an unknown token/.test(String(e?.message))).length;
    assert.equal(seen.length + late, U.progressSteps,
      `expected ${U.progressSteps} progress notifications, got ${seen.length} (+${late} after the result)`);
  },

  async sampling({ main }) {
    const before = main.state.counts.sampling;
    const text = await callText(main.client, U.tools.sampling, U.samplingArgs);
    assert.ok(main.state.counts.sampling > before, 'client sampling handler was never called');
    const req = main.state.samplingRequests.at(-1);
    assert.ok(JSON.stringify(req.messages).includes(U.samplingArgs.prompt), `sampling request lacks the prompt: ${short(req)}`);
    assert.ok(U.samplingDone(text), `unexpected sampling result: ${short(text)}`);
  },

  async elicitation({ main }) {
    const before = main.state.counts.elicitation;
    const text = await callText(main.client, U.tools.elicitation, U.elicitationArgs);
    assert.ok(main.state.counts.elicitation > before, 'client elicitation handler was never called');
    assert.ok(U.elicitationDone(text), `unexpected elicitation result: ${short(text)}`);
  },

  async roots({ main }) {
    const text = await callText(main.client, U.tools.roots, U.rootsArgs);
    assert.ok(U.rootsDone(text), `unexpected roots result: ${short(text)}`);
    assert.ok(main.state.counts.roots >= 1, 'client roots/list handler was never called');
  },

  async resources({ main }) {
    const { resources } = await main.client.listResources(undefined, REQ);
    assert.ok(Array.isArray(resources) && resources.length > 0, 'resources/list returned nothing');
    const uris = resources.map((r) => r.uri);
    assert.ok(uris.includes(U.resource.uri), `${U.resource.uri} not listed (got ${short(uris)})`);
    const read = await main.client.readResource({ uri: U.resource.uri }, REQ);
    assert.equal(read.contents?.length, 1, `expected one content item: ${short(read)}`);
    assert.equal(read.contents[0].uri, U.resource.uri);
    assert.equal(typeof read.contents[0].text, 'string', 'resource content is not text');
    assert.ok(U.resource.check(read.contents[0].text), `unexpected resource text: ${short(read.contents[0].text)}`);
  },

  async prompts({ main }) {
    const { prompts } = await main.client.listPrompts(undefined, REQ);
    const names = prompts.map((p) => p.name);
    assert.ok(names.includes(U.prompt.name), `prompt ${U.prompt.name} not listed (got ${names.join(', ')})`);
    const got = await main.client.getPrompt({ name: U.prompt.name, arguments: U.prompt.args }, REQ);
    assert.ok(got.messages?.length >= 1, `prompt has no messages: ${short(got)}`);
    assert.equal(got.messages[0].content?.text, U.prompt.text);
  },

  async 'unknown-tool'({ main }) {
    const name = `no-such-tool-${process.pid}`;
    let outcome;
    try {
      const res = await main.client.callTool({ name, arguments: {} }, undefined, REQ);
      outcome = { kind: res.isError ? 'isError' : 'success', detail: textOf(res) };
    } catch (e) {
      if (!(e instanceof McpError)) throw e;
      // Our own request timeout is also an McpError (-32001): that is a dropped answer.
      assert.notEqual(e.code, -32001, `no answer: ${e.message}`);
      outcome = { kind: 'rpc-error', detail: `${e.code} ${e.message}` };
      assert.ok(e.code < 0, `unexpected error code ${e.code}`);
    }
    assert.equal(outcome.kind, U.unknownTool, `unknown tool gave ${outcome.kind} (${short(outcome.detail)})`);
    assert.ok(outcome.detail.includes(name), `error does not mention the tool: ${short(outcome.detail)}`);
  },

  async 'concurrent-100'({ main }) {
    const msgs = Array.from({ length: 100 }, (_, i) => `concurrent-${i}-${Math.random().toString(36).slice(2)}`);
    const texts = await Promise.all(msgs.map((m) => callText(main.client, U.tools.echo, { message: m })));
    texts.forEach((t, i) => assert.equal(t, U.echoText(msgs[i]), `answer ${i} does not match its request`));
  },

  async 'payload-1mib'({ main }) {
    const msg = mixedPayload(1024 * 1024);
    const text = await callText(main.client, U.tools.echo, { message: msg });
    const want = U.echoText(msg);
    if (text !== want) {
      let i = 0;
      while (i < text.length && text[i] === want[i]) i++;
      assert.fail(`round-trip mismatch: got ${text.length} UTF-16 units, want ${want.length}; first difference at ${i}: ` +
        `${short(text.slice(i, i + 20))} vs ${short(want.slice(i, i + 20))}`);
    }
  },

  async unicode({ main }) {
    const text = await callText(main.client, U.tools.echo, { message: UNICODE_SAMPLE });
    assert.equal(text, U.echoText(UNICODE_SAMPLE));
  },

  async 'two-clients'({ main }) {
    const second = await connect('second');
    try {
      const sidA = sessionIdOf(main.state.endpoint);
      const sidB = sessionIdOf(second.state.endpoint);
      assert.ok(sidA && sidB, `endpoints lack sessionId: ${main.state.endpoint} / ${second.state.endpoint}`);
      assert.notEqual(sidA, sidB, 'both clients got the same sessionId');
      const errorsBefore = main.state.errors.length;
      const calls = [];
      for (let i = 0; i < 20; i++) {
        for (const [who, conn] of [['A', main], ['B', second]]) {
          const m = `${who}-${i}-${conn.state.endpoint}`;
          calls.push(callText(conn.client, U.tools.echo, { message: m }).then((t) => [who, i, t, m]));
        }
      }
      for (const [who, i, t, m] of await Promise.all(calls)) assert.equal(t, U.echoText(m), `client ${who} call ${i} got a foreign answer`);
      // Sequential ping-pong as well, so each session is used while the other is idle.
      for (let i = 0; i < 5; i++) {
        assert.equal(await callText(second.client, U.tools.echo, { message: `B-seq-${i}` }), U.echoText(`B-seq-${i}`));
        assert.equal(await callText(main.client, U.tools.echo, { message: `A-seq-${i}` }), U.echoText(`A-seq-${i}`));
      }
      const stray = [...main.state.errors.slice(errorsBefore), ...second.state.errors].filter((e) => /unknown message ID|unknown token/.test(String(e?.message)));
      assert.deepEqual(stray.map((e) => e.message), [], 'a client received messages that were not its own');
    } finally {
      await second.client.close().catch(() => {});
    }
  },

  async 'tool-error'({ main }) {
    const res = await main.client.callTool({ name: U.tools.fail, arguments: {} }, undefined, REQ);
    assert.equal(res.isError, true, `fail tool did not return isError: ${short(res)}`);
  },

  async blob({ main }) {
    const size = 256 * 1024;
    const text = await callText(main.client, U.tools.blob, { size });
    assert.equal(text.length, size);
    assert.ok(/^x*$/.test(text), 'blob content is not all "x"');
  },

  async headers({ main }) {
    const seen = JSON.parse(await callText(main.client, U.tools.headers, {}));
    assert.equal(typeof seen, 'object', 'headers tool did not return a JSON object');
    const lower = Object.fromEntries(Object.entries(seen).map(([k, v]) => [k.toLowerCase(), Array.isArray(v) ? v.join(', ') : String(v)]));
    for (const [k, v] of Object.entries(HEADERS)) {
      assert.equal(lower[k.toLowerCase()], v, `header ${k} was not forwarded upstream (seen: ${short(seen)})`);
    }
  },
};

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------
let passed = 0;
let failed = 0;
const report = (name, err) => {
  if (err) {
    failed++;
    const msg = String(err?.message ?? err).replace(/\s+/g, ' ').trim();
    console.log(`FAIL ${name}: ${msg}`);
  } else {
    passed++;
    console.log(`ok ${name}`);
  }
};

let main;
try {
  main = await connect('main');
} catch (e) {
  const first = selected.includes('initialize') ? 'initialize' : selected[0];
  report(first, new Error(`connect failed: ${e?.message ?? e}`));
  for (const name of selected) if (name !== first) report(name, new Error('skipped: not connected'));
}
if (main) {
  for (const name of selected) {
    try {
      // Scenario-level guard on top of the per-request timeouts.
      await withTimeout(RUN[name]({ main }), TIMEOUT * 3, name);
      report(name);
    } catch (e) {
      report(name, e);
    }
  }
  await main.client.close().catch(() => {});
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
