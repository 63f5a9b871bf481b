#!/usr/bin/env node
// A legacy HTTP+SSE MCP client (the official SDK's SSEClientTransport + Client) driven
// line by line from stdin, so that a test can act on the upstream between two calls
// of one and the same legacy session (restart it, stop it, start it again).
//
// Usage:
//   node restart-client.mjs --url http://127.0.0.1:PORT/sse [--tool echo] [--timeout MS]
//
// After connecting (GET /sse, initialize, notifications/initialized) it prints `ready`.
// Then, for each line read from stdin:
//   call <message>   calls the tool with {message: <message>} and prints one line:
//                      ok <JSON of the result's text>
//                      is-error <JSON of the result's text>
//                      rpc-error <code> <JSON of the message>
//                      timeout <JSON of the message>   (no answer within --timeout)
//                      fail <JSON of the message>      (anything else)
//   quit             closes the session and exits 0 (so does the end of stdin).
// It exits 1 if it cannot connect, 2 on a usage error.

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
      tool: { type: 'string', default: 'echo' },
      timeout: { type: 'string', default: '20000' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`error: ${e.message}`);
  process.exit(2);
}
const TIMEOUT = Number(opts.timeout);
if (!opts.url || !(TIMEOUT > 0)) {
  console.error('usage: node restart-client.mjs --url http://127.0.0.1:PORT/sse [--tool echo] [--timeout MS]');
  process.exit(2);
}

const client = new Client({ name: 'restart-client', version: '1.0.0' }, { capabilities: {} });
client.onerror = (e) => console.error(`# client error: ${e?.message ?? e}`);
try {
  await client.connect(new SSEClientTransport(new URL(opts.url)), { timeout: TIMEOUT });
} catch (e) {
  console.log(`connect-failed ${JSON.stringify(String(e?.message ?? e))}`);
  process.exit(1);
}
console.log('ready');

async function call(message) {
  try {
    const res = await client.callTool({ name: opts.tool, arguments: { message } }, undefined, { timeout: TIMEOUT });
    const text = (res.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
    return `${res.isError ? 'is-error' : 'ok'} ${JSON.stringify(text)}`;
  } catch (e) {
    if (e instanceof McpError && e.code === ErrorCode.RequestTimeout) return `timeout ${JSON.stringify(e.message)}`;
    if (e instanceof McpError) return `rpc-error ${e.code} ${JSON.stringify(e.message)}`;
    return `fail ${JSON.stringify(String(e?.message ?? e))}`;
  }
}

const rl = createInterface({ input: process.stdin, terminal: false });
for await (const line of rl) {
  const [cmd, ...rest] = line.split(' ');
  if (cmd === 'call') {
    console.log(await call(rest.join(' ')));
  } else if (cmd === 'quit') {
    break;
  } else if (cmd !== '') {
    console.log(`fail ${JSON.stringify(`unknown command ${cmd}`)}`);
  }
}
await client.close().catch(() => {});
process.exit(0);
