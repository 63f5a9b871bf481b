package tests

// Config reloads of one Caddy (caddy reload through its admin endpoint) with
// a TypeScript SDK legacy client connected and a call in flight: the session
// store is pooled across reloads by what it holds, so a reload that changes
// only options (the bridge's own, the store's limits, the Redis client's
// credentials and pool size) keeps every session and open stream; a reload
// to another Redis store ends the old streams so that their clients
// reconnect to the new config; an invalid config is refused and the old one
// keeps serving.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// A Caddy whose Caddyfile the test rewrites and reloads
// ---------------------------------------------------------------------------

// rlCaddy is one Caddy process with an admin endpoint on a loopback port
// and one site, http://127.0.0.1:port, whose body the test replaces with
// `caddy reload`.
type rlCaddy struct {
	c         *testenv.Caddy
	port      int
	adminPort int
	base      string
	proc      *testenv.Process
	hc        *http.Client
	reloads   int
}

// caddyfile is the whole Caddyfile for a site body.
func (c *rlCaddy) caddyfile(body string) testenv.Caddyfile {
	return testenv.Caddyfile{Admin: true, AdminPort: c.adminPort, Debug: e2eDebug(),
		Sites: []testenv.Site{{Port: c.port, Body: body}}}
}

// startRLCaddy starts Caddy serving body on a free port.
func startRLCaddy(t testing.TB, body string) *rlCaddy {
	t.Helper()
	c := &rlCaddy{port: testenv.MustFreePort(t), adminPort: testenv.MustFreePort(t), hc: testenv.MustHTTPClient(t)}
	c.base = fmt.Sprintf("http://127.0.0.1:%d", c.port)
	c.c = testenv.MustCaddy(t, testenv.CaddyConfig{Bin: caddyBin, Caddyfile: c.caddyfile(body)})
	c.proc = c.c.Proc()
	return c
}

func (c *rlCaddy) sseURL() string { return c.base + "/sse" }

// tryReload writes a Caddyfile with body and runs `caddy reload` on it
// through the admin endpoint. It returns the command's output and error.
func (c *rlCaddy) tryReload(t testing.TB, body string) (string, error) {
	t.Helper()
	c.reloads++
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.c.Reload(ctx, c.caddyfile(body))
	if ctx.Err() != nil {
		t.Fatalf("caddy reload did not finish within 30s:\n%s", out)
	}
	return out, err
}

// reload loads body and fails the test unless `caddy reload` succeeded.
func (c *rlCaddy) reload(t testing.TB, body string) {
	t.Helper()
	start := time.Now()
	if out, err := c.tryReload(t, body); err != nil {
		t.Fatalf("caddy reload: %v\n%s\n---- the config refused ----\n%s", err, out, c.caddyfile(body).String())
	}
	t.Logf("reload #%d took %v", c.reloads, time.Since(start).Round(time.Millisecond))
}

// refuse tries to load body and fails the test unless `caddy reload`
// failed with a message containing want.
func (c *rlCaddy) refuse(t testing.TB, body, want string) {
	t.Helper()
	out, err := c.tryReload(t, body)
	if err == nil {
		t.Fatalf("caddy reload accepted an invalid config (%s):\n%s", want, c.caddyfile(body).String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("caddy reload of an invalid config: %v, want a non-zero exit", err)
	}
	if !strings.Contains(out, want) {
		t.Errorf("caddy reload refused the invalid config, but its message does not name %q:\n%s", want, out)
	} else {
		t.Logf("invalid config refused: %s", lastLine(out))
	}
}

// bridgeConfig returns the mcp_sse_bridge handler of the running config, as
// the admin endpoint's GET /config/ shows it.
func (c *rlCaddy) bridgeConfig(t testing.TB) map[string]any {
	t.Helper()
	code, _, body := doRequest(t, c.hc, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/config/", c.adminPort), "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /config/: %d %s", code, short(body))
	}
	var cfg any
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		t.Fatalf("GET /config/: %v: %s", err, short(body))
	}
	var found []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "mcp_sse_bridge" {
				found = append(found, v)
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(cfg)
	if len(found) != 1 {
		t.Fatalf("GET /config/: %d mcp_sse_bridge handlers, want 1:\n%s", len(found), short(body))
	}
	return found[0]
}

// checkBridgeConfig checks that the running config's handler has the given
// values; keys "store.x" name fields of its store. Numbers are compared as
// JSON numbers (durations in nanoseconds).
func (c *rlCaddy) checkBridgeConfig(t testing.TB, want map[string]any) {
	t.Helper()
	h := c.bridgeConfig(t)
	store, _ := h["store"].(map[string]any)
	for k, w := range want {
		var got any
		if name, ok := strings.CutPrefix(k, "store."); ok {
			got = store[name]
		} else {
			got = h[k]
		}
		wj, _ := json.Marshal(w)
		gj, _ := json.Marshal(got)
		if !bytes.Equal(wj, gj) {
			hj, _ := json.Marshal(h)
			t.Errorf("admin /config/: %s = %s, want %s (handler %s)", k, gj, wj, hj)
		}
	}
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

// rlProbeHeader makes probes another caller than the TypeScript client
// (which sends no Authorization), so that no probe's session is ever
// adopted by it.
var rlProbeHeader = http.Header{"Authorization": {"Bearer reload-probe"}}

// probeStream opens an event stream as another caller and returns its
// status and headers; a 200 stream is closed once its endpoint event came.
func probeStream(t testing.TB, hc *http.Client, sseURL string) (int, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sseURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range rlProbeHeader {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("probe GET %s: %v", sseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() == "event: endpoint" {
				break
			}
		}
		if sc.Err() != nil {
			t.Fatalf("probe GET %s: reading the endpoint event: %v", sseURL, sc.Err())
		}
	} else {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	}
	return resp.StatusCode, resp.Header
}

// checkStoreFull checks that a new stream gets 503 with Retry-After.
func checkStoreFull(t testing.TB, hc *http.Client, sseURL, why string) {
	t.Helper()
	code, hdr := probeStream(t, hc, sseURL)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("%s: a new stream got %d (Retry-After %q), want 503 with Retry-After", why, code, hdr.Get("Retry-After"))
	}
}

// checkStreamAccepted checks that a new stream gets 200.
func checkStreamAccepted(t testing.TB, hc *http.Client, sseURL, why string) {
	t.Helper()
	if code, _ := probeStream(t, hc, sseURL); code != http.StatusOK {
		t.Errorf("%s: a new stream got %d, want 200", why, code)
	}
}

// observedStream is an event stream read to its end, bytes kept.
type observedStream struct {
	out   *testenv.Buffer
	done  chan struct{}
	close func() // ends the stream from the client's side and waits
}

func (s *observedStream) text() string { return s.out.String() }

// observeStream opens an event stream as another caller, reads it until it
// ends and waits for its endpoint event.
func observeStream(t testing.TB, hc *http.Client, sseURL string) *observedStream {
	t.Helper()
	resp, _, cancel := getEventStream(t, hc, sseURL, rlProbeHeader)
	s := &observedStream{out: testenv.NewBuffer(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_, _ = io.Copy(s.out, resp.Body)
	}()
	var once sync.Once
	s.close = func() {
		once.Do(func() {
			cancel()
			resp.Body.Close()
			<-s.done
		})
	}
	t.Cleanup(s.close)
	if !s.waitFor(func(text string) bool { return strings.Contains(text, "event: endpoint\n") }, promptly) {
		t.Fatalf("GET %s: no endpoint event within %v: %q", sseURL, promptly, s.text())
	}
	return s
}

// waitFor waits until cond holds for the stream's bytes so far, and reports
// whether it did before the stream ended or the timeout passed.
func (s *observedStream) waitFor(cond func(text string) bool, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		text, changed := s.out.Snapshot()
		if cond(text) {
			return true
		}
		select {
		case <-changed:
		case <-s.done:
			return cond(s.text())
		case <-timer.C:
			return false
		}
	}
}

// checkReloadsKeepStream loads bodies one after the other (each keeps the
// store), each time with a new event stream opened on the config running
// just before, and checks that the reload did not end it: a keepalive
// comment arrives on it after the reload. Each stream is closed after its
// reload, so that no older stream holds the store during the next one.
func checkReloadsKeepStream(t testing.TB, c *rlCaddy, bodies []string) {
	t.Helper()
	ended := 0
	for _, body := range bodies {
		s := observeStream(t, c.hc, c.sseURL())
		c.reload(t, body)
		from := len(s.text())
		if !s.waitFor(func(text string) bool { return strings.Contains(text[from:], ": ping\n") }, 5*time.Second) {
			select {
			case <-s.done:
				ended++
				t.Errorf("reload #%d (the same store) ended an open event stream; its last line: %q", c.reloads, lastLine(s.text()))
			default:
				t.Errorf("reload #%d: no keepalive on an open event stream within 5s", c.reloads)
			}
		}
		s.close()
	}
	if ended == 0 {
		t.Logf("%d reloads that kept the store kept an open event stream each time", len(bodies))
	} else {
		t.Logf("%d of %d reloads that kept the store ended the open event stream", ended, len(bodies))
	}
}

// ---------------------------------------------------------------------------
// The TypeScript client
// ---------------------------------------------------------------------------

// awaitResult waits up to timeout for the result line of the call tagged
// tag; ok is false if none came (the process may have exited).
func awaitResult(rc *replicaClient, tag string, timeout time.Duration) (kind, rest string, ok bool) {
	re := regexp.MustCompile(`(?m)^result ` + regexp.QuoteMeta(tag) + ` (\S+) ?(.*)$`)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s, changed := rc.p.Snapshot()
		if m := re.FindStringSubmatch(s); m != nil {
			return m[1], m[2], true
		}
		select {
		case <-changed:
		case <-rc.p.Done():
			if m := re.FindStringSubmatch(rc.p.Output()); m != nil {
				return m[1], m[2], true
			}
			return "", "", false
		case <-timer.C:
			return "", "", false
		}
	}
}

// hasResult reports whether the call tagged tag has a result line already.
func hasResult(rc *replicaClient, tag string) bool {
	return regexp.MustCompile(`(?m)^result ` + regexp.QuoteMeta(tag) + ` `).MatchString(rc.p.Output())
}

// checkOneStream checks that the client's event stream was opened once and
// its POST endpoint never changed.
func checkOneStream(t testing.TB, rc *replicaClient, when string) {
	t.Helper()
	if gs := rc.gets(); len(gs) != 1 {
		t.Errorf("%s: the client's event stream was opened %d times, want 1: %+v", when, len(gs), gs)
	}
	if ss := rc.sessions(); len(ss) != 1 {
		t.Errorf("%s: the client POSTed to %d sessions, want 1: %v", when, len(ss), ss)
	}
}

// startLongCall starts a progress call of steps × delayMs with a
// progress token and waits for its first progress notification.
func startLongCall(t testing.TB, rc *replicaClient, tag string, steps, delayMs int) {
	t.Helper()
	rc.call(t, tag, "progress", map[string]any{"steps": steps, "delayMs": delayMs}, true)
	rc.waitProgress(t, tag, 1, promptly)
}

// finishLongCall checks that the long call was still in flight when the
// reload returned, then that its result arrives, exactly once, with every
// progress notification.
func finishLongCall(t testing.TB, rc *replicaClient, tag string, steps int, inFlight bool) {
	t.Helper()
	if !inFlight {
		t.Fatalf("the long call %s ended before the reload returned: no call was in flight across it (make it longer)", tag)
	}
	if kind, rest := rc.result(t, tag, callTimeout); kind != "ok" || rest != `"done"` {
		t.Errorf("the long call across the reload: %s %s, want ok \"done\"", kind, rest)
	}
	rc.checkProgress(t, tag, steps)
}

// ---------------------------------------------------------------------------
// Config bodies
// ---------------------------------------------------------------------------

// rlInvalid is a config change that parses (or not) but must be refused,
// and the word the refusal must name.
type rlInvalid struct {
	line, want string
}

var rlInvalidBridgeLines = []rlInvalid{
	{"upstream ftp://x/mcp", "upstream"},               // Validate (Provision)
	{"sse_path nope", "sse_path"},                      // Validate (Provision)
	{"allowed_origins example.com", "allowed_origins"}, // Validate (Provision)
	{"adopt maybe", "adopt"},                           // the Caddyfile parser
}

// invalidBridge replaces the upstream line of a valid body's bridge options
// by inv.line when it is an upstream, or adds inv.line.
func invalidBridge(upstreamURL string, valid []string, inv rlInvalid) string {
	if rest, ok := strings.CutPrefix(inv.line, "upstream "); ok {
		return continuityBlock(rest, valid...)
	}
	return continuityBlock(upstreamURL, append(slices.Clone(valid), inv.line)...)
}

// partlyValid is a config whose first handler is a valid bridge with
// options lines (a store among them), and whose second handler is invalid
// (sse_path nope): the first is provisioned, then the reload fails.
func partlyValid(upstreamURL string, lines []string) string {
	return "route {\n\t\t" + continuityBlock(upstreamURL, lines...) +
		"\n\t\tmcp_sse_bridge /other/* {\n\t\t\tupstream " + upstreamURL + "\n\t\t\tsse_path nope\n\t\t}\n\t}"
}

// ---------------------------------------------------------------------------
// 1. Memory store
// ---------------------------------------------------------------------------

// TestReloadKeepsSessionsMemory reloads one Caddy (embedded memory store).
// First, several reloads that keep the store (explicit `store memory`, the
// keepalive changed), each with a new raw event stream open: none ends it.
// Then, with a TypeScript SDK client connected and a long call in flight, a
// reload from the default store (no store directive) to one with every
// memory store option and the bridge's own options changed: the call's
// result arrives exactly once, the next call works in the same upstream
// session, the client's stream is never reopened, the admin endpoint shows
// the new values, and the new max_sessions acts on the running store.
// Invalid configs are then refused, naming the option, and the old config
// keeps serving. Last, a config whose bridge is valid (with max_sessions 1)
// but whose second handler is not is refused, and must leave the running
// store's limits alone.
func TestReloadKeepsSessionsMemory(t *testing.T) {
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	before := []string{"keepalive 1s", "session_ttl 30s"}
	after := []string{"keepalive 2s", "session_ttl 45s", "store memory {\n\t\t\tmax_sessions 500\n\t\t\tmax_pending 2048\n\t\t}"}
	full := []string{"keepalive 2s", "session_ttl 45s", "store memory {\n\t\t\tmax_sessions 1\n\t\t\tmax_pending 2048\n\t\t}"}
	c := startRLCaddy(t, continuityBlock(up.url, before...))

	// Reloads that keep the store keep an open stream, whichever order
	// Caddy cleans the old config's modules up in (the handler and its
	// store module): several reloads, each a new chance.
	b1 := continuityBlock(up.url, "keepalive 1500ms", "session_ttl 30s", "store memory")
	b2 := continuityBlock(up.url, "keepalive 1s", "session_ttl 30s", "store memory")
	checkReloadsKeepStream(t, c, []string{b1, b2, b1, b2, b1, b2, continuityBlock(up.url, before...)})

	rc := startReplicaClient(t, c.sseURL())
	t.Cleanup(func() { checkNoClientErrors(t, rc) })

	rc.echoOK(t, "before")
	upSession := headersSession(t, rc, "headers-before")
	c.checkBridgeConfig(t, map[string]any{"keepalive": 1e9, "session_ttl": 30e9, "store": nil})

	// A long call in flight across the reload.
	const steps, delay = 25, 200
	startLongCall(t, rc, "long", steps, delay)
	c.reload(t, continuityBlock(up.url, after...))
	inFlight := !hasResult(rc, "long")
	c.checkBridgeConfig(t, map[string]any{
		"keepalive": 2e9, "session_ttl": 45e9,
		"store.backend": "memory", "store.max_sessions": 500, "store.max_pending": 2048,
	})
	finishLongCall(t, rc, "long", steps, inFlight)
	rc.echoOK(t, "after")
	if got := headersSession(t, rc, "headers-after"); got != upSession {
		t.Errorf("upstream session after the reload: %s, want %s (unchanged)", got, upSession)
	}
	checkOneStream(t, rc, "after the reload")

	// The limits act on the running store: max_sessions 1 (the client's
	// session fills it) refuses a new stream, 500 again accepts it.
	c.reload(t, continuityBlock(up.url, full...))
	checkStoreFull(t, c.hc, c.sseURL(), "max_sessions 1 reloaded in place")
	c.reload(t, continuityBlock(up.url, after...))
	checkStreamAccepted(t, c.hc, c.sseURL(), "max_sessions 500 reloaded in place")
	rc.echoOK(t, "after-limits")

	// Invalid configs (each with max_sessions 1 too) are refused, naming
	// the option; the old config keeps serving.
	for i, inv := range rlInvalidBridgeLines {
		c.refuse(t, invalidBridge(up.url, full, inv), inv.want)
		rc.echoOK(t, fmt.Sprintf("after-invalid-%d", i))
	}
	afterValues := map[string]any{
		"keepalive": 2e9, "session_ttl": 45e9, "upstream": up.url,
		"store.backend": "memory", "store.max_sessions": 500, "store.max_pending": 2048,
	}
	c.checkBridgeConfig(t, afterValues)
	checkStreamAccepted(t, c.hc, c.sseURL(), "after refused configs with max_sessions 1 (the running config has 500)")
	if got := headersSession(t, rc, "headers-end"); got != upSession {
		t.Errorf("upstream session at the end: %s, want %s (unchanged)", got, upSession)
	}
	checkOneStream(t, rc, "at the end")
	rc.checkExactlyOnce(t)

	// A config whose bridge is valid (max_sessions 1) but whose next
	// handler is not: refused, and the refused config's limits must not
	// reach the store that the running config keeps using.
	c.refuse(t, partlyValid(up.url, full), "sse_path")
	c.checkBridgeConfig(t, afterValues)
	checkStreamAccepted(t, c.hc, c.sseURL(),
		"after a refused config whose valid bridge had max_sessions 1 and whose second handler was invalid (the running config has 500)")
	rc.echoOK(t, "after-partly-valid")
	checkOneStream(t, rc, "after the partly valid config")
}

// ---------------------------------------------------------------------------
// 2. Redis store, same data, other client options and limits
// ---------------------------------------------------------------------------

// newTestRedisClient is a go-redis client of the test's own (default user).
func newTestRedisClient(t testing.TB, r *redisServer) *goredis.Client {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: r.Addr(), DialTimeout: 2 * time.Second, ReadTimeout: 3 * time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// redisDo runs one command and fails the test on an error.
func redisDo(t testing.TB, rdb *goredis.Client, args ...any) any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := rdb.Do(ctx, args...).Result()
	if err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
	return v
}

// TestReloadKeepsSessionsRedis is TestReloadKeepsSessionsMemory on a Redis
// store (same address and key_prefix before and after), reloading with
// every client option and limit changed: the password (the ACL user has two
// passwords, so that the old client still authenticates while it finishes),
// pool_size, max_sessions, max_pending. After the reload the old password is
// removed and every connection of the bridge's user killed: calls still
// work, so the client in use is the new one. Invalid configs (with a wrong
// password and max_sessions 1 besides the invalid option, or key_prefix
// a{b}) are refused; last, a config whose bridge is valid but has a wrong
// password and max_sessions 1, and whose second handler is not, is refused
// and must leave the running store's client and limits alone.
func TestReloadKeepsSessionsRedis(t *testing.T) {
	requireRedisModule(t)
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	rs := startRedis(t)
	rdb := newTestRedisClient(t, rs)
	redisDo(t, rdb, "ACL", "SETUSER", "bridge", "reset", "on", ">pass-one", ">pass-two", "~*", "&*", "+@all")
	prefix := "e2e-reload-" + randomHex(4) + ":"

	store := func(password string, lines ...string) string {
		all := append([]string{"address " + rs.Addr(), "username bridge", "password " + password, "key_prefix " + prefix}, lines...)
		return "store redis {\n\t\t\t" + strings.Join(all, "\n\t\t\t") + "\n\t\t}"
	}
	before := []string{"keepalive 1s", "session_ttl 30s", store("pass-one")}
	newLimits := []string{"pool_size 3", "max_sessions 500", "max_pending 2048"}
	after := []string{"keepalive 2s", "session_ttl 45s", store("pass-two", newLimits...)}
	full := []string{"keepalive 2s", "session_ttl 45s", store("pass-two", "pool_size 3", "max_sessions 1", "max_pending 2048")}
	wrong := []string{"keepalive 2s", "session_ttl 45s", store("pass-wrong", "pool_size 4", "max_sessions 1", "max_pending 2048")}
	afterValues := map[string]any{
		"keepalive": 2e9, "session_ttl": 45e9, "upstream": up.url,
		"store.backend": "redis", "store.password": "pass-two", "store.key_prefix": prefix,
		"store.pool_size": 3, "store.max_sessions": 500, "store.max_pending": 2048,
	}

	c := startRLCaddy(t, continuityBlock(up.url, before...))

	// Reloads that keep the store keep an open stream, whichever order
	// Caddy cleans the old config's modules up in.
	b1 := continuityBlock(up.url, "keepalive 1500ms", "session_ttl 30s", store("pass-one"))
	b0 := continuityBlock(up.url, before...)
	checkReloadsKeepStream(t, c, []string{b1, b0, b1, b0, b1, b0})

	rc := startReplicaClient(t, c.sseURL())
	t.Cleanup(func() { checkNoClientErrors(t, rc) })
	rc.echoOK(t, "before")
	upSession := headersSession(t, rc, "headers-before")
	c.checkBridgeConfig(t, map[string]any{"keepalive": 1e9, "store.password": "pass-one", "store.pool_size": nil})

	const steps, delay = 25, 200
	startLongCall(t, rc, "long", steps, delay)
	c.reload(t, continuityBlock(up.url, after...))
	inFlight := !hasResult(rc, "long")
	c.checkBridgeConfig(t, afterValues)
	finishLongCall(t, rc, "long", steps, inFlight)
	rc.echoOK(t, "after")
	if got := headersSession(t, rc, "headers-after"); got != upSession {
		t.Errorf("upstream session after the reload: %s, want %s (unchanged)", got, upSession)
	}
	checkOneStream(t, rc, "after the reload")

	// Only the new password works from now on, and no connection made
	// before is left: the calls go through the new client.
	redisDo(t, rdb, "ACL", "SETUSER", "bridge", "<pass-one")
	killed := redisDo(t, rdb, "CLIENT", "KILL", "USER", "bridge")
	t.Logf("removed the old password; killed %v connection(s) of the bridge's Redis user", killed)
	if n, _ := killed.(int64); n < 1 {
		t.Errorf("the bridge had no Redis connection as user bridge after the reload (CLIENT KILL USER bridge = %v)", killed)
	}
	rc.echoOK(t, "after-kill")
	if got := headersSession(t, rc, "headers-after-kill"); got != upSession {
		t.Errorf("upstream session after the old password went: %s, want %s (unchanged)", got, upSession)
	}

	// The limits act on the running store.
	c.reload(t, continuityBlock(up.url, full...))
	checkStoreFull(t, c.hc, c.sseURL(), "max_sessions 1 reloaded in place")
	c.reload(t, continuityBlock(up.url, after...))
	checkStreamAccepted(t, c.hc, c.sseURL(), "max_sessions 500 reloaded in place")
	rc.echoOK(t, "after-limits")

	// Invalid configs, each with a wrong password and max_sessions 1.
	for i, inv := range rlInvalidBridgeLines {
		c.refuse(t, invalidBridge(up.url, wrong, inv), inv.want)
		rc.echoOK(t, fmt.Sprintf("after-invalid-%d", i))
	}
	badPrefix := []string{"keepalive 2s", "session_ttl 45s", strings.Replace(store("pass-wrong", "pool_size 4", "max_sessions 1"), "key_prefix "+prefix, "key_prefix a{b}", 1)}
	c.refuse(t, continuityBlock(up.url, badPrefix...), "key_prefix")
	rc.echoOK(t, "after-invalid-prefix")
	c.checkBridgeConfig(t, afterValues)
	checkStreamAccepted(t, c.hc, c.sseURL(), "after refused configs with max_sessions 1 (the running config has 500)")
	if got := headersSession(t, rc, "headers-end"); got != upSession {
		t.Errorf("upstream session at the end: %s, want %s (unchanged)", got, upSession)
	}
	checkOneStream(t, rc, "at the end")
	rc.checkExactlyOnce(t)

	// A valid bridge with a wrong password, another pool size and
	// max_sessions 1, then an invalid handler: refused; the running store
	// must keep its client (calls work) and its limits (a new stream is
	// accepted).
	c.refuse(t, partlyValid(up.url, wrong), "sse_path")
	c.checkBridgeConfig(t, afterValues)
	rc.call(t, "after-partly-valid", "echo", map[string]any{"message": "echo-after-partly-valid"}, false)
	if kind, rest, ok := awaitResult(rc, "after-partly-valid", callTimeout); !ok || kind != "ok" || rest != `"echo-after-partly-valid"` {
		t.Errorf("a call after a refused config whose valid bridge had a wrong password: %s %s (answered: %v), want ok; the running config must keep its Redis client", kind, rest, ok)
		logCaddyLines(t, c.proc, "WRONGPASS")
	}
	checkStreamAccepted(t, c.hc, c.sseURL(),
		"after a refused config whose valid bridge had max_sessions 1 and whose second handler was invalid (the running config has 500)")
}

// logCaddyLines logs the lines of Caddy's output that contain substr (at
// most 5).
func logCaddyLines(t testing.TB, p *testenv.Process, substr string) {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(p.Output(), "\n") {
		if strings.Contains(l, substr) && len(lines) < 5 {
			lines = append(lines, l)
		}
	}
	if len(lines) > 0 {
		t.Logf("Caddy's log lines with %q:\n  %s", substr, strings.Join(lines, "\n  "))
	}
}

// ---------------------------------------------------------------------------
// 3. Reload to another Redis store
// ---------------------------------------------------------------------------

// TestReloadToAnotherRedis reloads to another key_prefix (another store)
// while a call is in flight: the old streams end with a final comment, the
// TypeScript client reconnects (a second GET), its calls succeed on the new
// store (a new upstream session is fine), and no call goes unanswered: the
// one in flight across the reload and one sent just after it, before the
// client reconnected.
func TestReloadToAnotherRedis(t *testing.T) {
	requireRedisModule(t)
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	rs := startRedis(t)
	prefixA := "e2e-reload-a-" + randomHex(4) + ":"
	prefixB := "e2e-reload-b-" + randomHex(4) + ":"
	body := func(prefix string) string {
		return continuityBlock(up.url, "keepalive 1s", "session_ttl 30s",
			fmt.Sprintf("store redis {\n\t\t\taddress %s\n\t\t\tkey_prefix %s\n\t\t}", rs.Addr(), prefix))
	}
	c := startRLCaddy(t, body(prefixA))
	rc := startReplicaClient(t, c.sseURL())
	t.Cleanup(func() { checkNoClientErrors(t, rc) })
	rc.echoOK(t, "before")
	upSession := headersSession(t, rc, "headers-before")
	observer := observeStream(t, c.hc, c.sseURL())

	const steps, delay = 15, 200
	startLongCall(t, rc, "long", steps, delay)
	c.reload(t, body(prefixB))
	inFlight := !hasResult(rc, "long")
	c.checkBridgeConfig(t, map[string]any{"store.key_prefix": prefixB})
	// A call at once, most likely before the client noticed anything.
	rc.call(t, "gap", "echo", map[string]any{"message": "echo-gap"}, false)
	getsAtGap := len(rc.gets())

	// The old streams end, with a final comment.
	select {
	case <-observer.done:
		last := lastLine(observer.text())
		if !strings.HasPrefix(last, ":") || last == ": ping" {
			t.Errorf("the old stream ended without a final comment; its last line: %q", last)
		} else {
			t.Logf("the old stream ended with %q", last)
		}
	case <-time.After(promptly):
		t.Errorf("an event stream of the old store still runs %v after the reload to another store", promptly)
	}

	// The client reconnects to the new config.
	gs := rc.waitGets(t, 2, 15*time.Second)
	if gs[1].status != "200" {
		t.Errorf("the client's reconnection got %s, want 200: %+v", gs[1].status, gs)
	}
	t.Logf("GETs of the client: %+v (the gap call was sent with %d GET(s) seen)", gs, getsAtGap)

	// No call is lost.
	if !inFlight {
		t.Fatalf("the long call ended before the reload returned: no call was in flight across it")
	}
	const answerWithin = 12 * time.Second // the long call takes 3s, the reconnection 3s, adopt_hold 2s
	for _, tag := range []string{"long", "gap"} {
		kind, rest, ok := awaitResult(rc, tag, answerWithin)
		switch {
		case !ok:
			t.Errorf("the call %s got no answer within %v of the reload to another store: lost (progress seen: %v)", tag, answerWithin, rc.progressSeen(tag))
			if tag == "long" {
				t.Logf("the old store (%s*) holds the long call's result: %v; the new store (%s*) holds it: %v",
					prefixA, rs.contains(t, prefixA+"*", `"done"`), prefixB, rs.contains(t, prefixB+"*", `"done"`))
				logCaddyLines(t, c.proc, "client is closed")
			}
		case tag == "long" && (kind != "ok" || rest != `"done"`):
			t.Errorf("the call in flight across the reload: %s %s, want ok \"done\"", kind, rest)
		case tag == "gap" && (kind != "ok" || rest != `"echo-gap"`):
			t.Errorf("the call sent right after the reload: %s %s, want ok \"echo-gap\"", kind, rest)
		default:
			t.Logf("call %s: %s %s", tag, kind, rest)
		}
	}
	rc.echoOK(t, "after")
	newSession := headersSession(t, rc, "headers-after")
	t.Logf("upstream session before the reload %s, after %s", upSession, newSession)
	if gs := rc.gets(); len(gs) != 2 {
		t.Errorf("the client's event stream was opened %d times, want 2 (one reconnection): %+v", len(gs), gs)
	}
	rc.checkExactlyOnce(t)
}
