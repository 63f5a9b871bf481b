#!/usr/bin/env node
// The OAuth authorization flow of the official TypeScript SDK's legacy client
// (SSEClientTransport with an authProvider) against an MCP server that needs a
// bearer token, as a command-line MCP client would run it:
//
//   1. connect: the GET of the event stream gets 401; the SDK discovers the
//      protected resource metadata (from WWW-Authenticate resource_metadata,
//      else the well-known URLs), then the authorization server's metadata,
//      registers a client (RFC 7591), and hands the authorization URL (PKCE
//      S256, RFC 8707 resource) to redirectToAuthorization; connect() then
//      throws UnauthorizedError.
//   2. redirectToAuthorization plays the user agent: it GETs the authorization
//      URL without following the redirect and takes the code from Location.
//   3. transport.finishAuth(code) exchanges the code for tokens.
//   4. a new transport connects with the token; tools/list and two tools/call.
//
// Usage:
//   node oauth-client.mjs --url http://127.0.0.1:PORT/sse [--timeout MS (15000)]
//       [--redirect-url URL (http://127.0.0.1:8976/oauth/callback, never visited)]
//
// Prints one JSON report on stdout (its last line):
//   {sdkVersion, url, requests: [{phase, method, url, status, bearer, rpc?, form?, json?,
//    wwwAuthenticate?, location?, error?}], registration, authorizations: [{params}],
//    firstConnect: {ok} | {error, message, unauthorized}, finishAuth, tokens: {token_type,
//    access_token_sha256_12, expires_in, scope}, tools, echo, add, clientErrors, error?}
// `phase` is connect-1, finish-auth, connect-2 or calls. Access tokens never appear in
// the report, only the first 12 hex digits of their SHA-256 (as the demo upstream logs
// them). Exit status: 0 if every step ran, 1 otherwise (the report says where it
// stopped), 2 on usage errors. The test (tests/oauth_test.go) judges the report.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

function usage(msg) {
  if (msg) console.error(`error: ${msg}`);
  console.error('usage: node oauth-client.mjs --url http://127.0.0.1:PORT/sse [--timeout MS] [--redirect-url URL]');
  process.exit(2);
}

let opts;
try {
  opts = parseArgs({
    options: {
      url: { type: 'string' },
      timeout: { type: 'string', default: '15000' },
      'redirect-url': { type: 'string', default: 'http://127.0.0.1:8976/oauth/callback' },
    },
    strict: true,
  }).values;
} catch (e) {
  usage(e.message);
}
if (!opts.url) usage('--url is required');
const TIMEOUT = Number(opts.timeout);
if (!(TIMEOUT > 0)) usage('--timeout must be a positive number of milliseconds');

const sdkPkg = JSON.parse(readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url), 'utf8'));

const fingerprint = (token) => createHash('sha256').update(token).digest('hex').slice(0, 12);

const report = {
  sdkVersion: sdkPkg.version,
  url: opts.url,
  requests: [],
  registration: null,
  authorizations: [],
  firstConnect: null,
  finishAuth: null,
  tokens: null,
  tools: null,
  echo: null,
  add: null,
  clientErrors: [],
};
let phase = 'connect-1';
// Requests whose response has not arrived yet. A result can arrive on the event stream
// before the 202 of its POST; closing the transport then would abort that POST.
const inflight = new Set();

function withTimeout(promise, what) {
  let t;
  const timer = new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`timeout after ${TIMEOUT} ms: ${what}`)), TIMEOUT); });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}

// recordingFetch is the transport's `fetch` option: the SDK uses it for the GET of the
// event stream, the POSTs, and (through its fetchFn) every OAuth discovery, registration
// and token request. redirectToAuthorization uses it too.
async function recordingFetch(input, init = {}) {
  const url = input instanceof Request ? input.url : String(input);
  const method = (init.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
  const headers = new Headers(init.headers ?? (input instanceof Request ? input.headers : undefined));
  const rec = { phase, method, url, bearer: /^bearer\s/i.test(headers.get('authorization') ?? '') };
  if (rec.bearer) rec.bearerSha256_12 = fingerprint(headers.get('authorization').replace(/^bearer\s+/i, ''));
  if (init.body instanceof URLSearchParams) {
    rec.form = Object.fromEntries(init.body);
  } else if (typeof init.body === 'string') {
    try {
      const msg = JSON.parse(init.body);
      if (msg && msg.jsonrpc === '2.0') rec.rpc = msg.method ?? 'response';
      else rec.json = msg;
    } catch { /* not JSON */ }
  }
  report.requests.push(rec);
  let res;
  const pending = fetch(input, init);
  inflight.add(pending);
  try {
    res = await pending;
  } catch (e) {
    rec.error = String(e?.message ?? e);
    throw e;
  } finally {
    inflight.delete(pending);
  }
  rec.status = res.status;
  const wwwAuth = res.headers.get('www-authenticate');
  if (wwwAuth) rec.wwwAuthenticate = wwwAuth;
  const location = res.headers.get('location');
  if (location) rec.location = location;
  if ((res.headers.get('content-type') ?? '').includes('application/json')) {
    try {
      const body = await res.clone().json();
      if (body && typeof body.access_token === 'string') {
        body.access_token_sha256_12 = fingerprint(body.access_token);
        delete body.access_token;
        if (typeof body.refresh_token === 'string') body.refresh_token = 'present';
      }
      rec.responseJson = body;
    } catch { /* not JSON after all */ }
  }
  return res;
}

// An in-memory OAuthClientProvider, as a CLI client without a browser would have.
class MemoryOAuthProvider {
  constructor(redirectUrl) {
    this._redirectUrl = redirectUrl;
    this._clientInformation = undefined;
    this._tokens = undefined;
    this._codeVerifier = undefined;
    this._state = undefined;
    this.code = undefined;
  }

  get redirectUrl() { return this._redirectUrl; }

  get clientMetadata() {
    return {
      client_name: 'oauth-client.mjs',
      redirect_uris: [this._redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() {
    this._state = randomBytes(16).toString('hex');
    return this._state;
  }

  clientInformation() { return this._clientInformation; }

  saveClientInformation(info) {
    this._clientInformation = info;
    report.registration = { client_id: info.client_id, token_endpoint_auth_method: info.token_endpoint_auth_method, issuer: info.issuer };
  }

  tokens() { return this._tokens; }

  saveTokens(tokens) {
    this._tokens = tokens;
    report.tokens = {
      token_type: tokens.token_type,
      access_token_sha256_12: fingerprint(tokens.access_token),
      expires_in: tokens.expires_in,
      scope: tokens.scope,
      issuer: tokens.issuer,
    };
  }

  saveCodeVerifier(v) { this._codeVerifier = v; }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }

  // Plays the user agent and the user who consents: the authorization server under test
  // redirects at once to redirect_uri with the code.
  async redirectToAuthorization(authorizationUrl) {
    const params = Object.fromEntries(authorizationUrl.searchParams);
    report.authorizations.push({ endpoint: authorizationUrl.origin + authorizationUrl.pathname, params });
    const res = await recordingFetch(authorizationUrl, { redirect: 'manual' });
    await res.body?.cancel();
    const location = res.headers.get('location');
    if (res.status < 300 || res.status > 399 || !location) throw new Error(`authorization endpoint answered ${res.status} without a redirect`);
    const back = new URL(location);
    if (back.origin + back.pathname !== new URL(this._redirectUrl).href) throw new Error(`redirected to ${location}, not to the redirect URI`);
    if (back.searchParams.get('state') !== this._state) throw new Error(`state ${back.searchParams.get('state')} != ${this._state}`);
    if (back.searchParams.get('error')) throw new Error(`authorization error ${back.searchParams.get('error')}`);
    this.code = back.searchParams.get('code');
    if (!this.code) throw new Error(`no code in ${location}`);
  }
}

function textOf(result) {
  return (result?.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('');
}

function newClient(label) {
  const client = new Client({ name: `oauth-client-${label}`, version: '1.0.0' }, { capabilities: {} });
  client.onerror = (e) => report.clientErrors.push(`[${label}] ${e?.constructor?.name ?? 'Error'}: ${e?.message ?? e}`);
  return client;
}

async function main() {
  const url = new URL(opts.url);
  const provider = new MemoryOAuthProvider(opts['redirect-url']);

  // 1. The first connection: 401, discovery, registration, redirect.
  const transport1 = new SSEClientTransport(url, { authProvider: provider, fetch: recordingFetch });
  const client1 = newClient('1');
  try {
    await withTimeout(client1.connect(transport1), 'first connect');
    report.firstConnect = { ok: true };
  } catch (e) {
    report.firstConnect = { error: e?.constructor?.name ?? 'Error', message: String(e?.message ?? e), unauthorized: e instanceof UnauthorizedError };
  } finally {
    await transport1.close().catch(() => {});
  }
  if (!report.firstConnect.unauthorized) throw new Error('the first connect did not end in UnauthorizedError');
  if (!provider.code) throw new Error('no authorization code');

  // 2. The code exchange, on the transport that saw the 401 (it remembers resource_metadata).
  phase = 'finish-auth';
  try {
    await withTimeout(transport1.finishAuth(provider.code), 'finishAuth');
    report.finishAuth = { ok: true };
  } catch (e) {
    report.finishAuth = { error: e?.constructor?.name ?? 'Error', message: String(e?.message ?? e) };
    throw e;
  }

  // 3. A new transport with the token.
  phase = 'connect-2';
  const transport2 = new SSEClientTransport(url, { authProvider: provider, fetch: recordingFetch });
  const client2 = newClient('2');
  await withTimeout(client2.connect(transport2), 'second connect');

  phase = 'calls';
  try {
    const listed = await client2.listTools(undefined, { timeout: TIMEOUT });
    report.tools = listed.tools.map((t) => t.name).sort();
    const echo = await client2.callTool({ name: 'echo', arguments: { message: 'hello through oauth' } }, undefined, { timeout: TIMEOUT });
    report.echo = { isError: !!echo.isError, text: textOf(echo) };
    const add = await client2.callTool({ name: 'add', arguments: { a: 2, b: 40 } }, undefined, { timeout: TIMEOUT });
    report.add = { isError: !!add.isError, text: textOf(add) };
  } finally {
    await withTimeout(Promise.allSettled([...inflight]), 'the last POSTs').catch(() => {});
    await client2.close().catch(() => {});
  }
}

let status = 0;
try {
  await main();
} catch (e) {
  report.error = `${e?.constructor?.name ?? 'Error'}: ${e?.message ?? e}`;
  status = 1;
}
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(status);
