#!/usr/bin/env node
// A legacy HTTP+SSE MCP client (the official SDK's SSEClientTransport + Client) that runs
// one session step by step from stdin, so that a test can read the bridge's metrics and
// logs while it is connected and after it has closed (tests/metrics_test.go).
//
// Usage:
//   node obs-client.mjs --url http://127.0.0.1:PORT/sse [--header 'Name: value']...
//       [--timeout MS (20000)]
//
// Once connected (GET /sse, initialize, notifications/initialized) it prints
// `endpoint <sessionId>` (the sessionId of the endpoint event's URL) and `ready`. Then it
// runs the commands read from stdin one at a time, and answers each with one line that
// starts with `= `:
//   list                      tools/list        -> = tools <n> <JSON array of the names>
//   call <tool> <JSON args>   tools/call        -> = ok <JSON text> | = is-error <JSON text>
//                                                  | = rpc-error <code> <JSON message>
//                                                  | = timeout <JSON message> | = fail <JSON message>
//   quit                      closes the session -> = closed   (then exits 0)
// The end of stdin closes the session too. It exits 1 if it cannot connect (printing
// `connect-failed <JSON message>`), 2 on a usage error.

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
      header: { type: 'string', multiple: true, default: [] },
      timeout: { type: 'string', default: '20000' },
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
if (!opts.url || !(TIMEOUT > 0)) {
  console.error("usage: node obs-client.mjs --url http://127.0.0.1:PORT/sse [--header 'Name: value']... [--timeout MS]");
  process.exit(2);
}

const out = (line) => process.stdout.write(`${line}\n`);
const transport = new SSEClientTransport(new URL(opts.url), { requestInit: { headers: HEADERS } });
const client = new Client({ name: 'obs-client', version: '1.0.0' }, { capabilities: {} });
client.onerror = (e) => console.error(`# client error: ${e?.message ?? e}`);
try {
  await client.connect(transport, { timeout: TIMEOUT });
} catch (e) {
  out(`connect-failed ${JSON.stringify(String(e?.message ?? e))}`);
  process.exit(1);
}
out(`endpoint ${new URL(String(transport._endpoint), opts.url).searchParams.get('sessionId') ?? '-'}`);
out('ready');

const failure = (e) => {
  if (e instanceof McpError && e.code === ErrorCode.RequestTimeout) return `timeout ${JSON.stringify(e.message)}`;
  if (e instanceof McpError) return `rpc-error ${e.code} ${JSON.stringify(e.message)}`;
  return `fail ${JSON.stringify(String(e?.message ?? e))}`;
};

async function list() {
  try {
    const res = await client.listTools(undefined, { timeout: TIMEOUT });
    const names = (res.tools ?? []).map((t) => t.name);
    return `tools ${names.length} ${JSON.stringify(names)}`;
  } catch (e) {
    return failure(e);
  }
}

async function call(tool, args) {
  try {
    const res = await client.callTool({ name: tool, arguments: args }, undefined, { timeout: TIMEOUT });
    const text = (res.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
    return `${res.isError ? 'is-error' : 'ok'} ${JSON.stringify(text)}`;
  } catch (e) {
    return failure(e);
  }
}

const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  const m = /^call (\S+) (.*)$/.exec(line);
  if (line === 'list') {
    out(`= ${await list()}`);
  } else if (m) {
    let args;
    try {
      args = JSON.parse(m[2]);
    } catch (e) {
      out(`= fail ${JSON.stringify(`bad arguments: ${e.message}`)}`);
      continue;
    }
    out(`= ${await call(m[1], args)}`);
  } else if (line === 'quit') {
    break;
  } else if (line !== '') {
    out(`= fail ${JSON.stringify(`unknown command ${line}`)}`);
  }
}
await client.close().catch(() => {});
out('= closed');
process.exit(0);
