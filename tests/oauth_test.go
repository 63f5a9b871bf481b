package tests

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// A tiny OAuth 2.1 authorization server
// ---------------------------------------------------------------------------

// tinyAS stands for a real authorization server (an IdP such as Keycloak,
// Auth0 or Entra ID) as an MCP client meets it: RFC 8414 metadata, RFC 7591
// dynamic client registration, an authorization endpoint with PKCE (S256
// only) and RFC 8707 resource indicators, a token endpoint for the
// authorization_code grant issuing opaque tokens, and RFC 7662 introspection
// for the resource server (the demo upstream). What it leaves out: user
// login and consent (the authorization endpoint redirects back at once, as
// for a user already logged in who has consented), client authentication
// (public clients only, token_endpoint_auth_method "none"), refresh tokens,
// and authentication of the introspecting resource server.
type tinyAS struct {
	srv *httptest.Server
	url string // the issuer, http://127.0.0.1:PORT

	mu      sync.Mutex
	seen    []string                     // "METHOD PATH" of every request
	clients map[string][]string          // client_id -> redirect_uris
	codes   map[string]*asCode           // unused authorization codes
	tokens  map[string]*asToken          // issued access tokens
	issued  []string                     // access tokens in issue order
	authz   []url.Values                 // the query of every authorization request
	tokReqs []url.Values                 // every token request (code_verifier removed)
	intro   map[string]int               // introspections per token fingerprint
	wrong   []string                     // requests refused, and why
	regs    []map[string]json.RawMessage // registration requests
}

type asCode struct {
	clientID, redirectURI, challenge, resource, scope string
}

type asToken struct {
	clientID, resource, scope string
	exp                       time.Time
	revoked                   bool
}

func startTinyAS(t testing.TB) *tinyAS {
	t.Helper()
	as := &tinyAS{
		clients: map[string][]string{},
		codes:   map[string]*asCode{},
		tokens:  map[string]*asToken{},
		intro:   map[string]int{},
	}
	as.srv = httptest.NewServer(http.HandlerFunc(as.serve))
	as.url = as.srv.URL
	t.Cleanup(as.srv.Close)
	return as
}

func randomString() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// fingerprint is how the demo upstream and oauth-client.mjs name a token.
func fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])[:12]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// refuse answers an OAuth error and records it. Call with as.mu held.
func (as *tinyAS) refuse(w http.ResponseWriter, r *http.Request, status int, code, why string) {
	as.wrong = append(as.wrong, fmt.Sprintf("%s %s: %s: %s", r.Method, r.URL.Path, code, why))
	writeJSON(w, status, map[string]string{"error": code, "error_description": why})
}

func (as *tinyAS) serve(w http.ResponseWriter, r *http.Request) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.seen = append(as.seen, r.Method+" "+r.URL.Path)
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/.well-known/oauth-authorization-server":
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                as.url,
			"authorization_endpoint":                as.url + "/authorize",
			"token_endpoint":                        as.url + "/token",
			"registration_endpoint":                 as.url + "/register",
			"introspection_endpoint":                as.url + "/introspect",
			"response_types_supported":              []string{"code"},
			"grant_types_supported":                 []string{"authorization_code"},
			"code_challenge_methods_supported":      []string{"S256"},
			"token_endpoint_auth_methods_supported": []string{"none"},
			"scopes_supported":                      []string{"mcp:tools"},
		})
	case r.Method == http.MethodPost && r.URL.Path == "/register":
		as.register(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/authorize":
		as.authorize(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/token":
		as.token(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/introspect":
		as.introspect(w, r)
	default:
		http.NotFound(w, r)
	}
}

// register implements RFC 7591 for public clients.
func (as *tinyAS) register(w http.ResponseWriter, r *http.Request) {
	var meta map[string]json.RawMessage
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&meta); err != nil {
		as.refuse(w, r, http.StatusBadRequest, "invalid_client_metadata", err.Error())
		return
	}
	as.regs = append(as.regs, meta)
	var redirects []string
	if err := json.Unmarshal(meta["redirect_uris"], &redirects); err != nil || len(redirects) == 0 {
		as.refuse(w, r, http.StatusBadRequest, "invalid_redirect_uri", "redirect_uris missing")
		return
	}
	id := "client-" + randomString()
	as.clients[id] = redirects
	writeJSON(w, http.StatusCreated, map[string]any{
		"client_id":                  id,
		"client_id_issued_at":        time.Now().Unix(),
		"redirect_uris":              redirects,
		"token_endpoint_auth_method": "none",
		"grant_types":                []string{"authorization_code"},
		"response_types":             []string{"code"},
	})
}

// authorize checks the request (registered client and redirect URI, PKCE
// S256) and redirects back with a code at once.
func (as *tinyAS) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	as.authz = append(as.authz, q)
	redirects, ok := as.clients[q.Get("client_id")]
	switch {
	case !ok:
		as.refuse(w, r, http.StatusBadRequest, "unauthorized_client", "unknown client_id")
		return
	case !slices.Contains(redirects, q.Get("redirect_uri")):
		as.refuse(w, r, http.StatusBadRequest, "invalid_request", "redirect_uri not registered")
		return
	}
	back, err := url.Parse(q.Get("redirect_uri"))
	if err != nil {
		as.refuse(w, r, http.StatusBadRequest, "invalid_request", "bad redirect_uri")
		return
	}
	fail := func(code, why string) {
		as.wrong = append(as.wrong, fmt.Sprintf("GET /authorize: %s: %s", code, why))
		v := back.Query()
		v.Set("error", code)
		v.Set("error_description", why)
		v.Set("state", q.Get("state"))
		back.RawQuery = v.Encode()
		http.Redirect(w, r, back.String(), http.StatusFound)
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "response_type must be code")
		return
	case q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) < 43:
		fail("invalid_request", "PKCE with S256 is required")
		return
	}
	code := randomString()
	as.codes[code] = &asCode{
		clientID:    q.Get("client_id"),
		redirectURI: q.Get("redirect_uri"),
		challenge:   q.Get("code_challenge"),
		resource:    q.Get("resource"),
		scope:       q.Get("scope"),
	}
	v := back.Query()
	v.Set("code", code)
	if s := q.Get("state"); s != "" {
		v.Set("state", s)
	}
	back.RawQuery = v.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

// token exchanges a code for an access token, checking the code verifier,
// the client, the redirect URI and the resource.
func (as *tinyAS) token(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		as.refuse(w, r, http.StatusBadRequest, "invalid_request", "want a form")
		return
	}
	if err := r.ParseForm(); err != nil {
		as.refuse(w, r, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	f := r.PostForm
	rec := url.Values{}
	for k, v := range f {
		if k != "code_verifier" && k != "code" {
			rec[k] = v
		}
	}
	rec.Set("has_code_verifier", fmt.Sprint(f.Get("code_verifier") != ""))
	as.tokReqs = append(as.tokReqs, rec)
	if f.Get("grant_type") != "authorization_code" {
		as.refuse(w, r, http.StatusBadRequest, "unsupported_grant_type", f.Get("grant_type"))
		return
	}
	c, ok := as.codes[f.Get("code")]
	if !ok {
		as.refuse(w, r, http.StatusBadRequest, "invalid_grant", "unknown or used code")
		return
	}
	delete(as.codes, f.Get("code")) // single use
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	switch {
	case base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge:
		as.refuse(w, r, http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
		return
	case f.Get("client_id") != c.clientID:
		as.refuse(w, r, http.StatusBadRequest, "invalid_grant", "code issued to another client")
		return
	case f.Get("redirect_uri") != c.redirectURI:
		as.refuse(w, r, http.StatusBadRequest, "invalid_grant", "redirect_uri differs from the authorization request's")
		return
	case f.Get("resource") != c.resource:
		// RFC 8707 §2.2: the token request may narrow the resource; this
		// client sends the same one.
		as.refuse(w, r, http.StatusBadRequest, "invalid_target", fmt.Sprintf("resource %q, authorized %q", f.Get("resource"), c.resource))
		return
	}
	tok := randomString()
	as.tokens[tok] = &asToken{clientID: c.clientID, resource: c.resource, scope: c.scope, exp: time.Now().Add(time.Hour)}
	as.issued = append(as.issued, tok)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   3600,
		"scope":        c.scope,
	})
}

// introspect implements RFC 7662 for the demo upstream. aud is the resource
// the token was issued for.
func (as *tinyAS) introspect(w http.ResponseWriter, r *http.Request) {
	tok := r.PostFormValue("token")
	as.intro[fingerprint(tok)]++
	it, ok := as.tokens[tok]
	if !ok || it.revoked || time.Now().After(it.exp) {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"active":     true,
		"client_id":  it.clientID,
		"sub":        "e2e-user",
		"scope":      it.scope,
		"aud":        it.resource,
		"exp":        it.exp.Unix(),
		"token_type": "Bearer",
	})
}

// revoke makes an issued token inactive.
func (as *tinyAS) revoke(tok string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.tokens[tok].revoked = true
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

// oauthReport is the JSON that tests/node/oauth-client.mjs prints.
type oauthReport struct {
	SDKVersion string `json:"sdkVersion"`
	Requests   []struct {
		Phase           string            `json:"phase"`
		Method          string            `json:"method"`
		URL             string            `json:"url"`
		Status          int               `json:"status"`
		Bearer          bool              `json:"bearer"`
		BearerFP        string            `json:"bearerSha256_12"`
		RPC             string            `json:"rpc"`
		Form            map[string]string `json:"form"`
		ResponseJSON    json.RawMessage   `json:"responseJson"`
		WWWAuthenticate string            `json:"wwwAuthenticate"`
		Location        string            `json:"location"`
		Error           string            `json:"error"`
	} `json:"requests"`
	Registration *struct {
		ClientID string `json:"client_id"`
	} `json:"registration"`
	Authorizations []struct {
		Endpoint string            `json:"endpoint"`
		Params   map[string]string `json:"params"`
	} `json:"authorizations"`
	FirstConnect struct {
		OK           bool   `json:"ok"`
		Error        string `json:"error"`
		Message      string `json:"message"`
		Unauthorized bool   `json:"unauthorized"`
	} `json:"firstConnect"`
	FinishAuth *struct {
		OK      bool   `json:"ok"`
		Message string `json:"message"`
	} `json:"finishAuth"`
	Tokens *struct {
		TokenType string `json:"token_type"`
		FP        string `json:"access_token_sha256_12"`
		Scope     string `json:"scope"`
	} `json:"tokens"`
	Tools []string `json:"tools"`
	Echo  *struct {
		IsError bool   `json:"isError"`
		Text    string `json:"text"`
	} `json:"echo"`
	Add *struct {
		IsError bool   `json:"isError"`
		Text    string `json:"text"`
	} `json:"add"`
	ClientErrors []string `json:"clientErrors"`
	Error        string   `json:"error"`
}

// prMetadata is the part of RFC 9728 metadata the test looks at.
type prMetadata struct {
	Resource             string   `json:"resource"`
	AuthorizationServers []string `json:"authorization_servers"`
	ScopesSupported      []string `json:"scopes_supported"`
}

// upstreamAuthRe is a line the demo upstream logs with -require-token-from.
var upstreamAuthRe = regexp.MustCompile(`(?m)^auth (\S+) (\S+) (ok|refused) bearer=(\S+)(.*)$`)

// TestOAuthFlowTSClient runs the OAuth authorization flow of the official
// TypeScript SDK's legacy client (SSEClientTransport with an authProvider,
// tests/node/oauth-client.mjs) through the bridge, against the demo upstream
// protecting itself with go-sdk's auth.RequireBearerToken and a tiny
// authorization server (tinyAS). The client never talks to the upstream: it
// must find everything (the 401 and its challenge, the protected resource
// metadata naming the authorization server) at the bridge, under the
// bridge's URL, and the resource it asks a token for is the bridge's SSE URL.
// The upstream accepts exactly those tokens (-token-audience).
func TestOAuthFlowTSClient(t *testing.T) {
	requireNode(t)
	as := startTinyAS(t)
	port := testenv.MustFreePort(t)
	bridgeBase := fmt.Sprintf("http://127.0.0.1:%d", port)
	resource := bridgeBase + "/sse"
	wantMetadataURL := bridgeBase + "/.well-known/oauth-protected-resource/sse"
	up := startUpstream(t, upstreamSpec{name: "go-oauth", kind: kindGo, stateful: true, args: []string{
		"-mode", "stateful",
		"-require-token-from", as.url + "/introspect",
		"-token-audience", resource,
	}})
	upOrigin := strings.TrimSuffix(up.url, "/mcp")
	cd := startCaddySites(t, site{port: port, body: bridgeBlock(up.url)})[0]
	hc := testenv.MustHTTPClient(t)

	// --- Plain HTTP checks at the bridge -----------------------------------

	// No token: the upstream's 401, with the challenge pointing at the bridge.
	status, hdr, body := getNoStream(t, hc, cd.sseURL(), nil)
	if status != http.StatusUnauthorized {
		t.Fatalf("GET /sse without a token: %d %q, want 401 (the upstream's answer to a request without a token)", status, body)
	}
	checkChallenge(t, "GET /sse without a token", hdr, wantMetadataURL)

	// A token the authorization server never issued: refused by the upstream.
	status, hdr, body = getNoStream(t, hc, cd.sseURL(), http.Header{"Authorization": {"Bearer not-issued"}})
	if status != http.StatusUnauthorized {
		t.Fatalf("GET /sse with an unknown token: %d %q, want 401", status, body)
	}
	checkChallenge(t, "GET /sse with an unknown token", hdr, wantMetadataURL)

	// A token in the query string is refused before anything else.
	if status, _, body := getNoStream(t, hc, cd.sseURL()+"?access_token=x", nil); status != http.StatusBadRequest {
		t.Errorf("GET /sse?access_token=x: %d %q, want 400", status, body)
	}

	// The protected resource metadata, path form and root form.
	for _, tc := range []struct{ path, resource string }{
		{"/.well-known/oauth-protected-resource/sse", resource},
		{"/.well-known/oauth-protected-resource", bridgeBase + "/"},
	} {
		status, _, body := doRequest(t, hc, http.MethodGet, bridgeBase+tc.path, "", "")
		var m prMetadata
		if err := json.Unmarshal([]byte(body), &m); status != http.StatusOK || err != nil {
			t.Errorf("GET %s: %d %q (%v), want 200 and JSON", tc.path, status, body, err)
			continue
		}
		if m.Resource != tc.resource || !slices.Equal(m.AuthorizationServers, []string{as.url}) || !slices.Equal(m.ScopesSupported, []string{"mcp:tools"}) {
			t.Errorf("GET %s: %+v, want resource %s, the upstream's authorization_servers [%s] and scopes_supported [mcp:tools]", tc.path, m, tc.resource, as.url)
		}
	}

	// --- The TypeScript SDK's flow -----------------------------------------

	p := startNodeScript(t, "oauth-client.mjs", false,
		"oauth-client.mjs", "--url", cd.sseURL(), "--timeout", "15000")
	runErr := p.MustWaitExit(t, 2*time.Minute)
	out := p.Output()
	var rep oauthReport
	if err := json.Unmarshal([]byte(lastLine(out)), &rep); err != nil {
		t.Fatalf("oauth-client.mjs (%v) printed no report: %v\n%s", runErr, err, out)
	}
	t.Logf("oauth-client.mjs: SDK %s, %d requests", rep.SDKVersion, len(rep.Requests))
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\nreport:\n%s", append(args, out)...)
	}

	// 1. The first GET of the event stream got the 401 and its challenge.
	if len(rep.Requests) == 0 {
		fail("no requests recorded")
	}
	first := rep.Requests[0]
	if first.Method != http.MethodGet || first.URL != resource || first.Bearer {
		fail("first request %s %s (bearer %v), want GET %s without a token", first.Method, first.URL, first.Bearer, resource)
	}
	if first.Status != http.StatusUnauthorized {
		fail("the SDK's first GET /sse got %d, want 401", first.Status)
	}
	if got := challengeMetadataURL(t, first.WWWAuthenticate); got != wantMetadataURL {
		fail("the SDK's first GET /sse: WWW-Authenticate %q, want resource_metadata=%q", first.WWWAuthenticate, wantMetadataURL)
	}
	if !rep.FirstConnect.Unauthorized {
		fail("the first connect ended with %+v, want UnauthorizedError", rep.FirstConnect)
	}
	if runErr != nil || rep.Error != "" {
		fail("oauth-client.mjs failed (%v): %s", runErr, rep.Error)
	}

	// 2. Where the SDK went: the bridge and the authorization server only.
	var prFetched []string
	tokenRequests := 0
	for _, r := range rep.Requests {
		u, err := url.Parse(r.URL)
		if err != nil {
			fail("bad URL %q", r.URL)
		}
		origin := u.Scheme + "://" + u.Host
		if origin != bridgeBase && origin != as.url {
			fail("the SDK sent %s %s: neither the bridge (%s) nor the authorization server (%s); upstream %s", r.Method, r.URL, bridgeBase, as.url, upOrigin)
		}
		if strings.HasPrefix(u.Path, "/.well-known/oauth-protected-resource") {
			prFetched = append(prFetched, fmt.Sprintf("%s %d", r.URL, r.Status))
			if origin != bridgeBase {
				fail("protected resource metadata fetched from %s, not from the bridge", r.URL)
			}
			if r.Status == http.StatusOK {
				var m prMetadata
				if err := json.Unmarshal(r.ResponseJSON, &m); err != nil || m.Resource != resource || !slices.Equal(m.AuthorizationServers, []string{as.url}) {
					fail("metadata from %s: %s, want resource %s and authorization_servers [%s]", r.URL, r.ResponseJSON, resource, as.url)
				}
			}
		}
		if origin == bridgeBase && strings.HasPrefix(u.Path, "/.well-known/") && !strings.HasPrefix(u.Path, "/.well-known/oauth-protected-resource") {
			fail("the SDK looked for %s at the bridge: the protected resource metadata should have named the authorization server", r.URL)
		}
		if r.Method == http.MethodPost && r.URL == as.url+"/token" {
			tokenRequests++
			if r.Form["grant_type"] != "authorization_code" || r.Form["resource"] != resource || r.Form["code_verifier"] == "" || r.Status != http.StatusOK {
				fail("token request %v → %d, want authorization_code with resource %s and a code_verifier, 200", r.Form, r.Status, resource)
			}
		}
		if (r.Phase == "connect-2" || r.Phase == "calls") && origin == bridgeBase {
			if !r.Bearer || r.Status/100 != 2 {
				fail("after the token: %s %s (%s) bearer=%v → %d %s, want a token and 2xx", r.Method, r.URL, r.RPC, r.Bearer, r.Status, r.Error)
			}
		}
	}
	t.Logf("protected resource metadata fetched: %q", prFetched)
	if len(prFetched) == 0 || !strings.HasPrefix(prFetched[0], wantMetadataURL+" ") {
		fail("protected resource metadata fetches %q: want %s first (from the challenge)", prFetched, wantMetadataURL)
	}
	if tokenRequests != 1 {
		fail("%d token requests, want 1", tokenRequests)
	}

	// 3. What the authorization server saw.
	as.mu.Lock()
	wrong, issued, authz, regs, seen := slices.Clone(as.wrong), slices.Clone(as.issued), slices.Clone(as.authz), len(as.regs), slices.Clone(as.seen)
	as.mu.Unlock()
	t.Logf("authorization server requests: %q", seen)
	if len(wrong) > 0 {
		fail("the authorization server refused: %q", wrong)
	}
	if regs != 1 || len(authz) != 1 || len(issued) != 1 {
		fail("authorization server: %d registrations, %d authorization requests, %d tokens; want 1 each", regs, len(authz), len(issued))
	}
	if got := authz[0].Get("resource"); got != resource {
		fail("the authorization request's resource is %q, want the bridge's %q", got, resource)
	}
	if got := authz[0].Get("scope"); got != "mcp:tools" {
		fail("the authorization request's scope is %q, want the upstream's mcp:tools", got)
	}
	tokenFP := fingerprint(issued[0])
	if rep.Tokens == nil || rep.Tokens.FP != tokenFP || !strings.EqualFold(rep.Tokens.TokenType, "bearer") {
		fail("the client saved tokens %+v, want the issued token %s", rep.Tokens, tokenFP)
	}

	// 4. The calls through the bridge.
	if !slices.Contains(rep.Tools, "echo") || !slices.Contains(rep.Tools, "add") {
		fail("tools/list: %q, want echo and add among them", rep.Tools)
	}
	if rep.Echo == nil || rep.Echo.IsError || rep.Echo.Text != "hello through oauth" {
		fail("echo: %+v, want %q", rep.Echo, "hello through oauth")
	}
	if rep.Add == nil || rep.Add.IsError || rep.Add.Text != "42" {
		fail("add: %+v, want 42", rep.Add)
	}
	for _, e := range rep.ClientErrors {
		if strings.HasPrefix(e, "[2]") {
			fail("client error after the token: %s", e)
		}
	}

	// 5. What reached the upstream: refusals without a token (or with the
	// unknown one), then only requests with the issued token.
	upOut := up.proc().Output()
	var refusedBefore, okAfter, okPOSTs int
	authorised := false
	for _, m := range upstreamAuthRe.FindAllStringSubmatch(upOut, -1) {
		method, outcome, bearer := m[1], m[3], m[4]
		switch {
		case outcome == "ok" && bearer == tokenFP:
			authorised = true
			okAfter++
			if method == http.MethodPost {
				okPOSTs++
			}
		case outcome == "ok":
			t.Errorf("upstream let through a request with token %s (issued: %s): %s", bearer, tokenFP, m[0])
		case authorised:
			t.Errorf("upstream refused a request after the token was issued: %s", m[0])
		case bearer != "none" && bearer != fingerprint("not-issued"):
			t.Errorf("upstream refused an unexpected token: %s", m[0])
		default:
			refusedBefore++
		}
	}
	t.Logf("upstream: %d refused before the token, %d authorised requests (%d POSTs)", refusedBefore, okAfter, okPOSTs)
	// The anonymous probe (the anonymous GETs after it reuse its refusal
	// for 5 s; a slow machine may need a second one) and the probe with the
	// token never issued.
	if refusedBefore < 2 || refusedBefore > 3 {
		t.Errorf("upstream refused %d requests before the token, want 2 or 3 (anonymous probes, one with the token never issued)", refusedBefore)
	}
	// initialize, notifications/initialized, tools/list, two tools/call.
	if okPOSTs < 5 {
		t.Errorf("upstream got %d authorised POSTs, want at least 5", okPOSTs)
	}
	if !strings.Contains(upOut, "metadata GET /.well-known/oauth-protected-resource/mcp") {
		t.Errorf("the bridge never fetched the upstream's protected resource metadata")
	}
	if t.Failed() {
		t.Logf("upstream log:\n%s", upOut)
	}

	// --- A POST whose token the upstream no longer accepts -------------------

	tok := issued[0]
	rs := openRawSession(t, hc, bridgeBase, "/sse", http.Header{"Authorization": {"Bearer " + tok}})
	rs.initialize(t)
	as.revoke(tok)
	code, phdr, pbody := rs.postTo(t, http.MethodPost, rs.url(), "application/json",
		`{"jsonrpc":"2.0","id":"after-revoke","method":"tools/list"}`, nil)
	if code != http.StatusUnauthorized {
		t.Fatalf("POST after the token was revoked: %d %q, want the upstream's 401", code, pbody)
	}
	checkChallenge(t, "POST after the token was revoked", phdr, wantMetadataURL)
}

// getNoStream GETs url as an event stream client would and returns the
// status, headers and (unless it is an event stream) the start of the body.
func getNoStream(t testing.TB, hc *http.Client, url string, hdr http.Header) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body []byte
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
	}
	return resp.StatusCode, resp.Header, string(body)
}

// challengeMetadataURL returns the resource_metadata of the Bearer challenge
// in a WWW-Authenticate value, or "".
func challengeMetadataURL(t testing.TB, wwwAuthenticate string) string {
	t.Helper()
	if wwwAuthenticate == "" {
		return ""
	}
	cs, err := oauthex.ParseWWWAuthenticate([]string{wwwAuthenticate})
	if err != nil {
		t.Errorf("WWW-Authenticate %q: %v", wwwAuthenticate, err)
		return ""
	}
	for _, c := range cs {
		if c.Scheme == "bearer" {
			return c.Params["resource_metadata"]
		}
	}
	return ""
}

// checkChallenge checks that hdr has a Bearer challenge whose
// resource_metadata is want and that keeps the upstream's scope.
func checkChallenge(t testing.TB, what string, hdr http.Header, want string) {
	t.Helper()
	vals := hdr.Values("WWW-Authenticate")
	if len(vals) == 0 {
		t.Errorf("%s: no WWW-Authenticate", what)
		return
	}
	cs, err := oauthex.ParseWWWAuthenticate(vals)
	if err != nil {
		t.Errorf("%s: WWW-Authenticate %q: %v", what, vals, err)
		return
	}
	for _, c := range cs {
		if c.Scheme != "bearer" {
			continue
		}
		if c.Params["resource_metadata"] != want {
			t.Errorf("%s: resource_metadata %q, want the bridge's %q", what, c.Params["resource_metadata"], want)
		}
		if c.Params["scope"] != "mcp:tools" {
			t.Errorf("%s: scope %q, want the upstream's mcp:tools", what, c.Params["scope"])
		}
		return
	}
	t.Errorf("%s: no Bearer challenge in %q", what, vals)
}
