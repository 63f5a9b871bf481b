package tests

// Session continuity with the official TypeScript SDK's legacy client
// (tests/node/replica-client.mjs, on the current SDK and on an older one):
// the client's event stream is cut by the network, Caddy restarts with an
// empty memory store, the client stays away longer than session_ttl, and a
// replica of a Redis cluster dies holding the client's stream and forwarding
// its calls. Every call the client makes must be answered exactly once, and
// the client never initialises again by itself.
//
// What the bridge promises here (and what these tests check):
//   - every GET of the event stream without Last-Event-ID gets a new session
//     id in its endpoint event, at once;
//   - a reconnecting GET with MCP-Protocol-Version (SDK >= 1.13) adopts the
//     caller's most recently released session in the background and, after
//     adopt_hold, delivers what arrived meanwhile and routes the client's
//     POSTs to it (same upstream session);
//   - a client that reconnects with neither header (SDK 1.12) is recognised at
//     its first non-initialize POST, which adopts the same way;
//   - a POST to a session the bridge no longer has (store restarted, session
//     expired), or a first non-initialize POST of a new stream with nothing
//     to adopt, revives the session with a fresh upstream session;
//   - the stream's new owner resumes the requests a dead replica forwarded:
//     with Last-Event-ID where the upstream has an event store, else with a
//     JSON-RPC error carrying the request's id.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// A TCP proxy: the network between a client and Caddy
// ---------------------------------------------------------------------------

// tcpProxy listens on a fixed 127.0.0.1 port and forwards every connection
// to target. It stands for the network: cut breaks every open connection at
// once (with a reset, as a dropped NAT entry or a crashed middlebox would),
// refuse makes new connections fail until accept.
type tcpProxy struct {
	addr   string // 127.0.0.1:port, the same across refuse and accept
	target string

	mu     sync.Mutex
	ln     net.Listener // nil while refusing
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startTCPProxy starts a proxy to target (host:port); it is closed, and its
// goroutines are gone, when the test ends.
func startTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tcp proxy: %v", err)
	}
	p := &tcpProxy{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.mu.Lock()
	p.serve(ln)
	p.mu.Unlock()
	t.Cleanup(p.close)
	return p
}

// url is the proxy's base URL.
func (p *tcpProxy) url() string { return "http://" + p.addr }

// serve accepts on ln (p.mu held).
func (p *tcpProxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.pipe(c) })
		}
	})
}

// pipe forwards one connection until either side ends or it is cut.
func (p *tcpProxy) pipe(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		reset(c)
		return
	}
	p.mu.Lock()
	if p.closed || p.ln == nil {
		p.mu.Unlock()
		reset(c)
		reset(u)
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var inner sync.WaitGroup
	inner.Go(func() {
		_, _ = io.Copy(u, c)
		c.Close()
		u.Close()
	})
	_, _ = io.Copy(c, u)
	c.Close()
	u.Close()
	inner.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// reset closes c with a TCP reset rather than an orderly FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// cutLocked resets every open connection, both sides (p.mu held), and
// returns how many client connections it cut.
func (p *tcpProxy) cutLocked() int {
	n := 0
	for c := range p.conns {
		if c.LocalAddr().String() == p.addr {
			n++
		}
		reset(c)
	}
	return n
}

// cut breaks every open connection at once; the proxy goes on accepting.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cutLocked()
}

// refuse breaks every open connection and refuses new ones until accept.
func (p *tcpProxy) refuse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	return p.cutLocked()
}

// accept takes connections again, on the same port.
func (p *tcpProxy) accept(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("tcp proxy: listening on %s again: %v", p.addr, err)
	}
	p.serve(ln)
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	p.cutLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

// ---------------------------------------------------------------------------
// replica-client.mjs on a chosen SDK
// ---------------------------------------------------------------------------

var (
	rcSDKRe      = regexp.MustCompile(`(?m)^sdk (\S+)$`)
	rcEndpointRe = regexp.MustCompile(`(?m)^endpoint (\S+)$`)
	// rcBadErrorRe: errors the client's onerror reports for its own POSTs
	// and for answers it did not expect.
	rcBadErrorRe = regexp.MustCompile(`(?m)^error ".*(POSTing|unknown message ID).*$`)
)

var (
	oldSDKOnce sync.Once
	oldSDKErr  error
)

// requireOldSDK makes sure the npm alias sdk-old (package.json) is
// installed: a node_modules from before it was added gets `npm ci`.
func requireOldSDK(t testing.TB) {
	t.Helper()
	requireNode(t)
	oldSDKOnce.Do(func() {
		oldSDKErr = testenv.EnsureNodeModules(context.Background(), nodeDir,
			filepath.Join(nodeDir, "node_modules", "sdk-old", "package.json"))
	})
	if oldSDKErr != nil {
		t.Fatal(oldSDKErr)
	}
}

// startSDKClient connects replica-client.mjs to sseURL on the SDK "new"
// (package.json's @modelcontextprotocol/sdk) or "old" (the alias sdk-old).
func startSDKClient(t testing.TB, sseURL, sdk string, extra ...string) *replicaClient {
	t.Helper()
	requireNode(t)
	if sdk == "old" {
		requireOldSDK(t)
	}
	args := append([]string{"replica-client.mjs", "--url", sseURL, "--timeout", "25000", "--sdk", sdk}, extra...)
	p := startNodeScript(t, "replica-client.mjs --sdk "+sdk, true, args...)
	p.MustWaitOutput(t, tsReadyRe, 30*time.Second)
	t.Cleanup(func() { p.Stdin().Close() })
	version := rcSDKRe.FindStringSubmatch(p.Output())
	if version == nil {
		t.Fatalf("replica-client.mjs did not say which SDK it runs")
	}
	if sdk == "old" && !strings.HasPrefix(version[1], "1.12.") {
		t.Fatalf("replica-client.mjs --sdk old runs SDK %s, want 1.12.x (no MCP-Protocol-Version on reconnections)", version[1])
	}
	t.Logf("TypeScript SDK %s", version[1])
	return &replicaClient{p: p}
}

// sdkEndpoints returns the sessions of the endpoint events the client got,
// in order.
func sdkEndpoints(rc *replicaClient) []string {
	var ss []string
	for _, m := range rcEndpointRe.FindAllStringSubmatch(rc.p.Output(), -1) {
		ss = append(ss, m[1])
	}
	return ss
}

// waitSDKEndpoints waits until the client got n endpoint events (the first
// one and n-1 after reconnections); from then on it POSTs to the last one.
func waitSDKEndpoints(t testing.TB, rc *replicaClient, n int, timeout time.Duration) []string {
	t.Helper()
	rc.p.MustWaitUntil(t, fmt.Sprintf("%d endpoint events", n), timeout, func(out string) bool {
		return len(rcEndpointRe.FindAllString(out, -1)) >= n
	})
	return sdkEndpoints(rc)
}

// okGets returns the GETs of the event stream that reached a server (not
// those refused by the network).
func okGets(rc *replicaClient) []rcGet {
	var gs []rcGet
	for _, g := range rc.gets() {
		if g.status != "error" {
			gs = append(gs, g)
		}
	}
	return gs
}

// checkNoClientErrors fails if the client reported a failed POST or an
// answer it did not expect.
func checkNoClientErrors(t testing.TB, rc *replicaClient) {
	t.Helper()
	if bad := rcBadErrorRe.FindAllString(rc.p.Output(), -1); len(bad) > 0 {
		t.Errorf("the TypeScript client reported errors:\n  %s", strings.Join(bad, "\n  "))
	}
}

// continuityBlock is an mcp_sse_bridge directive for upstreamURL with the
// given lines in its block (nothing else set).
func continuityBlock(upstreamURL string, lines ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mcp_sse_bridge {\n\t\tupstream %s\n", upstreamURL)
	for _, l := range lines {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	b.WriteString("\t}")
	return b.String()
}

// headersSession calls the demo upstream's headers tool and returns the
// upstream session it ran in.
func headersSession(t testing.TB, rc *replicaClient, tag string) string {
	t.Helper()
	return upstreamSessionIn(t, rc.callText(t, tag, "headers", map[string]any{}))
}

// ---------------------------------------------------------------------------
// 1. The network cuts the client's stream in the middle of a call
// ---------------------------------------------------------------------------

// TestTSClientStreamCut cuts every connection between the TypeScript client
// and Caddy (memory store) while two long calls are in flight: one ends
// while the client is away, the other after it is back. The SDK's
// EventSource reconnects by itself, three seconds later, to a new session
// id. Each long call's result arrives exactly once, the next calls work, in
// the same upstream session (the upstream never sees a second initialize).
//
// The current SDK reconnects with MCP-Protocol-Version: the bridge adopts
// the released session on the GET. SDK 1.12 reconnects with neither
// MCP-Protocol-Version nor Last-Event-ID: the bridge recognises it at its
// first POST, so the long calls' results can only arrive once the client
// calls again, which it does while they are pending.
func TestTSClientStreamCut(t *testing.T) {
	requireNode(t)
	for _, sdk := range []string{"new", "old"} {
		t.Run(sdk+" SDK", func(t *testing.T) {
			up := startUpstream(t, specGoStatefulSSEEvents)
			cd := startCaddySites(t, site{body: continuityBlock(up.url,
				"keepalive 1s", "session_ttl 30s", "adopt any", "adopt_hold 2s")})[0]
			px := startTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", cd.port))
			rc := startSDKClient(t, px.url()+"/sse", sdk)
			first := sdkEndpoints(rc)
			if len(first) != 1 {
				t.Fatalf("endpoint events after connecting: %v, want one", first)
			}
			upBefore := headersSession(t, rc, "headers-before")

			// Two long calls: "early" ends while the client is away (its
			// result waits for it), "late" after the client is back.
			longs := []struct {
				tag   string
				steps int
			}{{"early", 10}, {"late", 25}}
			for _, l := range longs {
				rc.call(t, l.tag, "progress", map[string]any{"steps": l.steps, "delayMs": 200}, true)
				if p := rc.postOf(t, l.tag, promptly); p.status != "202" {
					t.Fatalf("the POST of %s: %+v, want 202", l.tag, p)
				}
			}
			for _, l := range longs {
				rc.waitProgress(t, l.tag, 1, promptly)
			}
			n := px.cut()
			cut := time.Now()
			if n == 0 {
				t.Fatal("the proxy had no client connection to cut")
			}
			t.Logf("cut %d client connection(s) during the long calls", n)

			// The EventSource reconnects by itself and gets a new session
			// id at once.
			eps := waitSDKEndpoints(t, rc, 2, 15*time.Second)
			gets := okGets(rc)
			re := gets[len(gets)-1]
			t.Logf("reconnected %v after the cut: %+v, endpoint session %s (was %s)",
				time.Since(cut).Round(time.Millisecond), re, short8(eps[1]), short8(eps[0]))
			switch {
			case re.status != "200":
				t.Fatalf("the reconnecting GET: %+v, want 200", re)
			case sdk == "new" && re.protocolVersion == "-":
				t.Fatalf("the current SDK reconnected without MCP-Protocol-Version: %+v", re)
			case sdk == "old" && (re.protocolVersion != "-" || re.lastEventID != "-"):
				t.Fatalf("SDK 1.12 reconnected with MCP-Protocol-Version or Last-Event-ID: %+v", re)
			}
			if eps[1] == eps[0] {
				t.Errorf("the reconnecting GET's endpoint names the old session %s, want a new session id", eps[0])
			}

			if sdk == "old" {
				// Only a POST tells the bridge who this new stream is.
				rc.call(t, "after-1", "echo", map[string]any{"message": "echo-after-1"}, false)
			}
			for _, l := range longs {
				kind, rest := rc.result(t, l.tag, 20*time.Second)
				if kind != "ok" || rest != `"done"` {
					t.Fatalf("the long call %s across the cut: %s %s, want ok \"done\"", l.tag, kind, rest)
				}
				t.Logf("%s's result arrived %v after the cut", l.tag, time.Since(cut).Round(time.Millisecond))
			}
			if sdk == "old" {
				if kind, rest := rc.result(t, "after-1", callTimeout); kind != "ok" || rest != `"echo-after-1"` {
					t.Fatalf("the first call after reconnecting: %s %s, want ok \"echo-after-1\"", kind, rest)
				}
			} else {
				rc.echoOK(t, "after-1")
			}
			if got := headersSession(t, rc, "headers-after"); got != upBefore {
				t.Errorf("upstream session changed from %s to %s across the cut: the upstream saw another initialize", upBefore, got)
			}
			rc.echoOK(t, "after-2")

			if ss := rc.sessions(); len(ss) != 2 {
				t.Errorf("the client POSTed to sessions %v, want the first one then the reconnection's", ss)
			}
			for _, l := range longs {
				t.Logf("progress notifications of %s: %v (those sent while the client was away may be missing)", l.tag, rc.progressSeen(l.tag))
			}
			t.Logf("progress notifications delivered after their call's result (\"unknown token\"): %d",
				len(unknownTokenRe.FindAllString(rc.p.Output(), -1)))
			checkNoClientErrors(t, rc)
			if st := rc.checkExactlyOnce(t); st.Gets != 2 {
				t.Errorf("the event stream was opened %d times, want 2 (the first GET and one reconnection)", st.Gets)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 2. The bridge forgets the session: restart, expiry
// ---------------------------------------------------------------------------

// TestMemoryStoreRestart restarts Caddy (memory store, so every session is
// lost) under a connected TypeScript client: the client's next call
// succeeds, exactly once, without the client initialising again: the bridge
// revives the session with a fresh upstream session.
func TestMemoryStoreRestart(t *testing.T) {
	requireNode(t)
	// "before": the call goes out at once, to the session id the old Caddy
	// gave (the EventSource reconnects only 3 s after its stream broke):
	// a POST to a session the bridge does not have. "after": the call goes
	// out once the stream is back, on its new session id: the first POST of
	// a new stream is not initialize and there is nothing to adopt.
	for _, when := range []string{"before", "after"} {
		t.Run("restart, call "+when+" the stream is back", func(t *testing.T) {
			up := startUpstream(t, specGoStatefulSSE)
			port := testenv.MustFreePort(t)
			body := continuityBlock(up.url, "keepalive 1s", "session_ttl 30s")
			cd := startCaddySites(t, site{port: port, body: body})[0]
			rc := startSDKClient(t, cd.sseURL(), "new")
			rc.echoOK(t, "before")
			upBefore := headersSession(t, rc, "headers-before")

			cd.proc.Kill()
			restarted := time.Now()
			startCaddySites(t, site{port: port, body: body})
			t.Logf("Caddy restarted on port %d in %v", port, time.Since(restarted).Round(time.Millisecond))
			if when == "after" {
				waitSDKEndpoints(t, rc, 2, 15*time.Second)
			}
			rc.echoOK(t, "after-restart")
			if p := rc.postOf(t, "after-restart", promptly); p.status != "202" {
				t.Errorf("the first call's POST after the restart: %+v, want 202", p)
			}
			eps := waitSDKEndpoints(t, rc, 2, 15*time.Second)
			rc.echoOK(t, "after-reconnect")
			t.Logf("endpoint sessions %v; the client POSTed to sessions %v", eps, rc.sessions())
			upAfter := headersSession(t, rc, "headers-after")
			t.Logf("upstream session %s before the restart, %s after", short8(upBefore), short8(upAfter))

			checkNoClientErrors(t, rc)
			rc.checkExactlyOnce(t)
		})
	}
}

// TestMemoryStoreSessionExpired cuts a TypeScript client off (the network
// refuses it) until its session expired (session_ttl 2s) and the bridge
// ended the upstream session, then lets it back: its next call succeeds,
// exactly once, in a fresh upstream session.
func TestMemoryStoreSessionExpired(t *testing.T) {
	requireNode(t)
	for _, when := range []string{"before", "after"} {
		t.Run("session expired, call "+when+" the stream is back", func(t *testing.T) {
			up := startUpstream(t, specGoStatefulSSE)
			cd := startCaddySites(t, site{body: continuityBlock(up.url, "keepalive 1s", "session_ttl 2s")})[0]
			px := startTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", cd.port))
			rc := startSDKClient(t, px.url()+"/sse", "new")
			rc.echoOK(t, "before")
			upBefore := headersSession(t, rc, "headers-before")

			if n := px.refuse(); n == 0 {
				t.Fatal("the proxy had no client connection to cut")
			}
			away := time.Now()
			// The session expired once the bridge ended its upstream
			// session (DELETE): the upstream no longer knows it.
			waitUpstreamSessionGone(t, up.url, upBefore, 20*time.Second)
			t.Logf("the upstream session ended %v after the client was cut off (session_ttl 2s)", time.Since(away).Round(time.Millisecond))
			// And the client tried to come back and was refused.
			rc.p.MustWaitUntil(t, "a refused GET of the event stream", 10*time.Second, func(string) bool {
				return len(rc.gets()) > len(okGets(rc))
			})
			px.accept(t)
			t.Logf("the network lets the client back %v after cutting it off", time.Since(away).Round(time.Millisecond))

			if when == "after" {
				waitSDKEndpoints(t, rc, 2, 15*time.Second)
			}
			rc.echoOK(t, "after")
			if p := rc.postOf(t, "after", promptly); p.status != "202" {
				t.Errorf("the first call's POST after coming back: %+v, want 202", p)
			}
			waitSDKEndpoints(t, rc, 2, 15*time.Second)
			rc.echoOK(t, "after-2")
			if got := headersSession(t, rc, "headers-after"); got == upBefore {
				t.Errorf("still upstream session %s, which the bridge ended", got)
			}
			t.Logf("endpoint sessions %v; the client POSTed to sessions %v", sdkEndpoints(rc), rc.sessions())
			checkNoClientErrors(t, rc)
			rc.checkExactlyOnce(t)
		})
	}
}

// waitUpstreamSessionGone polls the demo upstream (a ping in session) until
// it answers 404: the session ended.
func waitUpstreamSessionGone(t testing.TB, upstreamURL, session string, timeout time.Duration) {
	t.Helper()
	hc := testenv.MustHTTPClient(t)
	hdr := http.Header{
		"Accept":         {"application/json, text/event-stream"},
		"Mcp-Session-Id": {session},
	}
	deadline := time.Now().Add(timeout)
	for {
		code, _, body := doRequest(t, hc, http.MethodPost, upstreamURL, "application/json",
			`{"jsonrpc":"2.0","id":"e2e-probe","method":"ping"}`, hdr)
		switch {
		case code == http.StatusNotFound:
			return
		case code != http.StatusOK:
			t.Fatalf("probing upstream session %s: %d %s", session, code, short(body))
		case time.Now().After(deadline):
			t.Fatalf("upstream session %s still alive %v after the client was cut off", session, timeout)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// ---------------------------------------------------------------------------
// 3. A replica dies holding the stream and forwarding calls
// ---------------------------------------------------------------------------

// TestTSClientReplicaDiesEventStore kills (SIGKILL) the replica that holds
// the TypeScript client's stream and forwarded two of its three long calls,
// in front of server-everything, which has an event store: every call gets
// its real result, exactly once.
func TestTSClientReplicaDiesEventStore(t *testing.T) {
	testTSClientReplicaDies(t, specEverything)
}

// TestTSClientReplicaDiesNoEventStore is the same in front of the demo
// upstream without event store: the two calls the dead replica forwarded
// get a JSON-RPC error with their id, exactly once and soon (never a
// timeout); the third gets its result.
func TestTSClientReplicaDiesNoEventStore(t *testing.T) {
	testTSClientReplicaDies(t, specGoStatefulSSE)
}

// longCall is a long tool call with progress, and a cheap one, of an
// upstream.
type longCall struct {
	tool      string
	args      map[string]any
	done      func(text string) bool
	echo      func(t testing.TB, rc *replicaClient, tag string)
	resumable bool // the upstream can resume a response stream
}

func longCallOf(spec upstreamSpec) longCall {
	switch spec.kind {
	case kindEverything:
		return longCall{
			// Two seconds: the calls end before the dead replica's
			// heartbeat lapses (about 3 s), so their results are in the
			// event store when the new owner resumes them.
			// server-everything's InMemoryEventStore replays every later
			// event of the session and registers the resumed stream under
			// an event id instead of the stream id, so it never delivers
			// live events of the request on a resumed stream.
			tool: "trigger-long-running-operation",
			args: map[string]any{"duration": 2, "steps": 4},
			done: func(s string) bool { return strings.HasPrefix(s, "Long running operation completed.") },
			echo: func(t testing.TB, rc *replicaClient, tag string) {
				t.Helper()
				if got := rc.callText(t, tag, "echo", map[string]any{"message": tag}); got != "Echo: "+tag {
					t.Fatalf("echo %q = %q", tag, got)
				}
			},
			resumable: true,
		}
	default:
		return longCall{
			tool:      "progress",
			args:      map[string]any{"steps": 20, "delayMs": 200},
			done:      func(s string) bool { return s == "done" },
			echo:      func(t testing.TB, rc *replicaClient, tag string) { t.Helper(); rc.echoOK(t, tag) },
			resumable: spec.kind == kindGo && strings.Contains(strings.Join(spec.args, " "), "-event-store"),
		}
	}
}

func testTSClientReplicaDies(t *testing.T, spec upstreamSpec) {
	requireRedisModule(t)
	requireNode(t)
	lc := longCallOf(spec)
	up := startUpstream(t, spec)
	tap := newUpstreamTap(t, up.url)
	cl := startCluster(t, 2, tap.url(), nil)
	rc := startSDKClient(t, cl.lb.sseURL(), "new")

	gets := rc.gets()
	holder := gets[0].replica
	if gets[0].status != "200" || cl.replica(t, holder) == nil {
		t.Fatalf("first GET of the event stream: %+v", gets[0])
	}
	survivor := otherReplica(t, cl, holder)
	var upBefore string
	if spec.kind == kindGo {
		upBefore = headersSession(t, rc, "headers-before")
	}

	// Round robin: after a POST answered by survivor, the next goes to
	// holder, then survivor, then holder.
	lastPost := func() string { ps := rc.posts(); return ps[len(ps)-1].replica }
	steer(t, survivor, lastPost, func(i int) {
		tag := fmt.Sprintf("steer-%d", i)
		lc.echo(t, rc, tag)
		rc.postOf(t, tag, promptly)
	})
	calls := []struct{ tag, replica string }{{"long-1", holder}, {"long-3", survivor}, {"long-2", holder}}
	for _, c := range calls {
		rc.call(t, c.tag, lc.tool, lc.args, true)
		if p := rc.postOf(t, c.tag, promptly); p.status != "202" || p.replica != c.replica {
			t.Fatalf("the POST of %s: %+v, want 202 from %s", c.tag, p, c.replica)
		}
	}
	for _, c := range calls {
		rc.waitProgress(t, c.tag, 1, promptly)
	}
	killed := time.Now()
	cl.replica(t, holder).kill()
	t.Logf("killed %s, holding the stream and forwarding long-1 and long-2; %s forwards long-3", holder, survivor)

	// Every call ends within 25 s of the kill: with an answer, or with
	// the client's own timeout (25 s after the call).
	results := waitResults(rc, []string{"long-1", "long-2", "long-3"}, 25*time.Second)
	for _, c := range calls {
		r, ok := results[c.tag]
		if !ok {
			t.Errorf("%s (forwarded by %s): no outcome within 25s of the kill", c.tag, c.replica)
			continue
		}
		kind, rest := r.kind, r.rest
		took := r.at.Sub(killed).Round(time.Millisecond)
		var text string
		_ = json.Unmarshal([]byte(rest), &text)
		switch {
		case r.lines != 1:
			t.Errorf("%s: %d result lines", c.tag, r.lines)
		case kind == "timeout":
			t.Errorf("%s (forwarded by %s) timed out: never answered (%s)", c.tag, c.replica, rest)
		case lc.resumable || c.replica == survivor:
			if kind != "ok" || !lc.done(text) {
				t.Errorf("%s (forwarded by %s): %s %s, want its result", c.tag, c.replica, kind, rest)
			} else {
				t.Logf("%s (forwarded by %s): its result, %v after the kill", c.tag, c.replica, took)
			}
		case kind != "rpc-error":
			t.Errorf("%s (forwarded by the dead %s, upstream without event store): %s %s, want a JSON-RPC error", c.tag, c.replica, kind, rest)
		case took > 15*time.Second:
			t.Errorf("%s: the JSON-RPC error came %v after the kill: %s", c.tag, took, rest)
		default:
			t.Logf("%s (forwarded by the dead %s): JSON-RPC error %s, %v after the kill", c.tag, c.replica, rest, took)
		}
	}

	// The stream came back on the survivor, on a new session id.
	gets = okGets(rc)
	if len(gets) < 2 {
		t.Fatalf("the event stream was not reopened: %+v", gets)
	}
	re := gets[len(gets)-1]
	if re.status != "200" || re.replica != survivor || re.protocolVersion == "-" {
		t.Errorf("the reconnecting GET: %+v, want 200 from %s with MCP-Protocol-Version", re, survivor)
	}
	eps := waitSDKEndpoints(t, rc, 2, promptly)
	if eps[1] == eps[0] {
		t.Errorf("the reconnecting GET's endpoint names the old session %s, want a new session id", eps[0])
	}

	// The next calls work, in the same upstream session.
	lc.echo(t, rc, "after-1")
	if spec.kind == kindGo {
		if got := headersSession(t, rc, "headers-after"); got != upBefore {
			t.Errorf("upstream session changed from %s to %s: the upstream saw another initialize", upBefore, got)
		}
	}
	lc.echo(t, rc, "after-2")

	logRecovery(t, cl)
	tap.log(t)
	checkNoClientErrors(t, rc)
	if st := rc.checkExactlyOnce(t); st.Gets != 2 {
		t.Errorf("the event stream was opened %d times, want 2 (the first GET and one reconnection)", st.Gets)
	}
}

// rcResult is the outcome of a call of replica-client.mjs.
type rcResult struct {
	kind, rest string
	at         time.Time // when the test saw it
	lines      int       // result lines for the tag (1 unless answered twice)
}

// waitResults waits until every call tagged tags has an outcome, or the
// timeout passes, and returns the outcomes seen, with the time each was
// first seen.
func waitResults(rc *replicaClient, tags []string, timeout time.Duration) map[string]rcResult {
	got := map[string]rcResult{}
	res := map[string]*regexp.Regexp{}
	for _, tag := range tags {
		res[tag] = regexp.MustCompile(`(?m)^result ` + regexp.QuoteMeta(tag) + ` (\S+) ?(.*)$`)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		out, changed := rc.p.Snapshot()
		now := time.Now()
		for _, tag := range tags {
			if _, ok := got[tag]; !ok {
				if m := res[tag].FindStringSubmatch(out); m != nil {
					got[tag] = rcResult{kind: m[1], rest: m[2], at: now}
				}
			}
		}
		if len(got) == len(tags) {
			// Let late duplicates show up in the counts below: the
			// caller checks the client's stats afterwards too.
			for tag, r := range got {
				r.lines = len(res[tag].FindAllString(out, -1))
				got[tag] = r
			}
			return got
		}
		select {
		case <-changed:
		case <-rc.p.Done():
			return got
		case <-timer.C:
			return got
		}
	}
}

// ---------------------------------------------------------------------------
// What the upstream sends on resumed streams
// ---------------------------------------------------------------------------

// upstreamTap is a reverse proxy between the replicas and the upstream that
// records every GET carrying Last-Event-ID (a resumption) and what the
// upstream sent on it.
type upstreamTap struct {
	srv  *httptest.Server
	tr   *http.Transport
	path string

	mu      sync.Mutex
	resumes []*tapResume
}

type tapResume struct {
	lastEventID, session string
	status               int
	body                 bytes.Buffer
}

// newUpstreamTap starts a tap in front of upstreamURL. Start it after the
// upstream and before the replicas, so that it closes after them.
func newUpstreamTap(t testing.TB, upstreamURL string) *upstreamTap {
	t.Helper()
	u, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	tap := &upstreamTap{path: u.Path}
	tap.tr = testenv.NewTransport(100)
	base := &url.URL{Scheme: u.Scheme, Host: u.Host}
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(pr *httputil.ProxyRequest) { pr.SetURL(base) },
		Transport:     tap.tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			req := resp.Request
			if req.Method != http.MethodGet || req.Header.Get("Last-Event-ID") == "" {
				return nil
			}
			r := &tapResume{lastEventID: req.Header.Get("Last-Event-ID"), session: req.Header.Get("Mcp-Session-Id"), status: resp.StatusCode}
			tap.mu.Lock()
			tap.resumes = append(tap.resumes, r)
			tap.mu.Unlock()
			resp.Body = &tapResumeBody{ReadCloser: resp.Body, tap: tap, r: r}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				w.WriteHeader(http.StatusBadGateway)
			}
		},
	}
	tap.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := bufferBody(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		tap.srv.CloseClientConnections()
		tap.srv.Close()
		tap.tr.CloseIdleConnections()
	})
	return tap
}

func (tap *upstreamTap) url() string { return tap.srv.URL + tap.path }

type tapResumeBody struct {
	io.ReadCloser
	tap *upstreamTap
	r   *tapResume
}

func (b *tapResumeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.tap.mu.Lock()
		if b.r.body.Len() < 64<<10 {
			b.r.body.Write(p[:n])
		}
		b.tap.mu.Unlock()
	}
	return n, err
}

// log logs every resumption and what the upstream sent on it.
func (tap *upstreamTap) log(t testing.TB) {
	t.Helper()
	tap.mu.Lock()
	defer tap.mu.Unlock()
	if len(tap.resumes) == 0 {
		t.Logf("upstream: no GET with Last-Event-ID")
	}
	for i, r := range tap.resumes {
		t.Logf("upstream: resumption %d: GET session %s Last-Event-ID %s → %d, sent:\n%s", i+1, short8(r.session), r.lastEventID, r.status, r.body.String())
	}
}
