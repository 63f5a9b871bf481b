package tests

// Multi-replica end-to-end tests: "Shared store on Redis: many Caddy
// replicas, no sticky sessions, nothing lost". Everything runs as real
// processes on 127.0.0.1: a redis-server, two or three Caddy replicas of the
// bridge sharing it (store redis, keepalive 1s, session_ttl 30s), a Caddy
// load balancer in front of them (round robin, no stickiness), upstreams and
// clients. Clients only ever talk to the load balancer, so a session's POSTs
// land on other replicas than its stream. The in-process Go SDK clients go
// through a recording proxy (see recorder) that lets the tests count the
// answers each request got; the TypeScript SDK clients count their own.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// specGoStatefulSSEEvents is the demo upstream with an event store: its
// response streams carry event ids and can be resumed with Last-Event-ID.
var specGoStatefulSSEEvents = upstreamSpec{
	name: "go-stateful-sse-event-store", kind: kindGo,
	args:     []string{"-mode", "stateful", "-event-store"},
	stateful: true, progress: true,
}

// ---------------------------------------------------------------------------
// 1. The client suites through the load balancer
// ---------------------------------------------------------------------------

// TestMultiReplicaScenarios runs the TypeScript SDK's and the Go SDK's
// legacy clients, every scenario, through a round-robin load balancer in
// front of two and of three replicas sharing Redis.
func TestMultiReplicaScenarios(t *testing.T) {
	requireRedisModule(t)
	redis := startRedis(t) // shared; every cluster has its own key prefix
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d-replicas", n), func(t *testing.T) {
			for _, spec := range []upstreamSpec{specEverything, specGoStatefulSSE, specGoStatelessJSON, specGoModernOnly} {
				t.Run(spec.name, func(t *testing.T) {
					up := startUpstream(t, spec)
					cl := startCluster(t, n, up.url, redis)

					t.Run("typescript", func(t *testing.T) {
						runLegacyClientScript(t, spec, cl.lb.sseURL())
					})
					t.Run("go", func(t *testing.T) {
						rec := newRecorder(t, cl.lb.base)
						// Runs after the scenarios' clients are closed.
						t.Cleanup(func() {
							rec.checkExactlyOnce(t)
							checkSpread(t, rec, n)
						})
						runGoScenarios(t, spec, rec.caddy())
					})
				})
			}
		})
	}
}

// checkSpread checks that the recorded sessions' POSTs were served by every
// replica, not only the one holding the stream: no stickiness anywhere.
func checkSpread(t testing.TB, rec *recorder, n int) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	byReplica := map[string]int{}
	for _, p := range rec.posts {
		byReplica[p.replica]++
	}
	var streams []string
	for _, s := range rec.streams {
		streams = append(streams, s.replica)
	}
	t.Logf("POSTs per replica: %v; streams on %v", byReplica, streams)
	if len(byReplica) != n {
		t.Errorf("POSTs were served by %d replica(s) (%v), want all %d", len(byReplica), byReplica, n)
	}
}

// ---------------------------------------------------------------------------
// 2. A replica dies in the middle of a long call
// ---------------------------------------------------------------------------

// TestMultiReplicaReplicaDies kills a replica (SIGKILL) while a long tool
// call is in flight. Every request must still be answered exactly once: the
// long call with its result where the upstream's response stream can be
// resumed, else with a JSON-RPC error carrying its id; never a timeout.
func TestMultiReplicaReplicaDies(t *testing.T) {
	requireRedisModule(t)
	requireNode(t)
	redis := startRedis(t)

	// The TypeScript SDK's EventSource reconnects by itself when its stream
	// breaks: without Last-Event-ID but with MCP-Protocol-Version, so the
	// bridge must give it its old session back (adoption) and deliver what
	// arrived meanwhile. It never initialises again.
	t.Run("stream holder killed", func(t *testing.T) {
		for _, sameReplica := range []bool{true, false} {
			name := "long call forwarded by another replica"
			if sameReplica {
				name = "long call forwarded by the stream holder"
			}
			t.Run(name, func(t *testing.T) {
				up := startUpstream(t, specGoStatefulSSEEvents)
				cl := startCluster(t, 2, up.url, redis)
				testStreamHolderKilled(t, cl, sameReplica)
			})
		}
	})

	// The same with the default keepalive (15s): the owner's lease (three
	// keepalives) outlasts the client's 3 s reconnect, so the takeover rests
	// on the dead replica's heartbeat, which lapses within seconds.
	t.Run("stream holder killed, default keepalive", func(t *testing.T) {
		up := startUpstream(t, specGoStatefulSSEEvents)
		cl := startClusterKeepalive(t, 2, up.url, redis, 15*time.Second)
		testStreamHolderKilled(t, cl, true)
	})

	// The Go SDK client's stream stays up (another replica holds it); the
	// replica that forwarded the long call dies. The stream's owner finds
	// the orphaned request once the dead replica's heartbeat lapses.
	t.Run("forwarding replica killed", func(t *testing.T) {
		for _, spec := range []upstreamSpec{specGoStatefulSSEEvents, specGoStatefulSSE} {
			t.Run(spec.name, func(t *testing.T) {
				up := startUpstream(t, spec)
				cl := startCluster(t, 2, up.url, redis)
				testForwarderKilled(t, cl, slices.Contains(spec.args, "-event-store"))
			})
		}
	})
}

// upstreamSessionIn returns the Mcp-Session-Id in the demo upstream's
// headers tool result.
func upstreamSessionIn(t testing.TB, text string) string {
	t.Helper()
	var seen map[string]string
	if err := json.Unmarshal([]byte(text), &seen); err != nil {
		t.Fatalf("headers tool result %q: %v", short(text), err)
	}
	id := seen["Mcp-Session-Id"]
	if id == "" {
		t.Fatalf("the upstream saw no Mcp-Session-Id: %s", text)
	}
	return id
}

// otherReplica returns the name of the other replica of a two-replica
// cluster.
func otherReplica(t testing.TB, cl *cluster, name string) string {
	t.Helper()
	others := cl.others(name)
	if len(others) != 1 {
		t.Fatalf("want a two-replica cluster with %s, have %d other replicas", name, len(others))
	}
	return others[0].name
}

func testStreamHolderKilled(t *testing.T, cl *cluster, sameReplica bool) {
	rc := startReplicaClient(t, cl.lb.sseURL())
	first := rc.gets()[0]
	holder := first.replica
	if first.status != "200" || cl.replica(t, holder) == nil {
		t.Fatalf("first GET of the event stream: %+v", first)
	}
	survivor := otherReplica(t, cl, holder)
	sessions := rc.sessions()
	upSession := upstreamSessionIn(t, rc.callText(t, "headers-before", "headers", map[string]any{}))
	t.Logf("stream on %s, bridge session %s, upstream session %s", holder, short8(sessions[0]), short8(upSession))

	// Make the long call's POST land where wanted: after a POST answered by
	// prev, round robin picks the other replica.
	target, prev := survivor, holder
	if sameReplica {
		target, prev = holder, survivor
	}
	steer(t, prev, func() string { ps := rc.posts(); return ps[len(ps)-1].replica }, func(i int) {
		tag := fmt.Sprintf("steer-%d", i)
		rc.echoOK(t, tag)
		rc.postOf(t, tag, promptly)
	})

	const steps = 30
	rc.call(t, "long", "progress", map[string]any{"steps": steps, "delayMs": 200}, true)
	if p := rc.postOf(t, "long", promptly); p.status != "202" || p.replica != target {
		t.Fatalf("the long call's POST: %+v, want 202 from %s", p, target)
	}
	rc.waitProgress(t, "long", 1, promptly)

	killed := time.Now()
	cl.replica(t, holder).kill()
	t.Logf("killed %s (holding the stream) during the long call forwarded by %s", holder, target)

	kind, rest := rc.result(t, "long", 30*time.Second)
	if kind != "ok" || rest != `"done"` {
		t.Fatalf("the long call after the kill: %s %s, want ok \"done\"", kind, rest)
	}
	t.Logf("the long call's result arrived %v after the kill", time.Since(killed).Round(time.Millisecond))
	rc.checkProgress(t, "long", steps)

	// The SDK reconnected without Last-Event-ID but with
	// MCP-Protocol-Version, and was given its old session back.
	gets := rc.waitGets(t, 2, 10*time.Second)
	re := gets[1]
	if re.status != "200" || re.replica != survivor || re.protocolVersion == "-" {
		t.Errorf("the reconnecting GET: %+v, want 200 from %s with MCP-Protocol-Version", re, survivor)
	}
	// The next calls work in the same upstream session: no new initialize.
	rc.echoOK(t, "after-1")
	// Its new stream names a session of its own (a new client could be
	// behind any GET), linked to the old one.
	if s := rc.sessions(); len(s) != 2 {
		t.Errorf("the client's POST endpoint named sessions %v, want one per GET", s)
	}
	if got := upstreamSessionIn(t, rc.callText(t, "headers-after", "headers", map[string]any{})); got != upSession {
		t.Errorf("upstream session changed from %s to %s: the upstream saw another initialize", upSession, got)
	}
	rc.echoOK(t, "after-2")
	logRecovery(t, cl)
	st := rc.checkExactlyOnce(t)
	if st.Gets != 2 {
		t.Errorf("the event stream was opened %d times, want 2 (the first GET and one reconnection)", st.Gets)
	}
}

func testForwarderKilled(t *testing.T, cl *cluster, resumable bool) {
	tb := tables[kindGo]
	rec := newRecorder(t, cl.lb.base)
	t.Cleanup(func() { rec.checkExactlyOnce(t) })
	gc := connectGo(t, rec.caddy(), "go", goClientOptions{})
	sessions := rec.sessions()
	if len(sessions) != 1 {
		t.Fatalf("recorded sessions %v, want one", sessions)
	}
	holder := rec.streamReplica(t, sessions[0])
	forwarder := otherReplica(t, cl, holder)
	upSession := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{}))

	// The next POST goes to the forwarder.
	steer(t, holder, rec.lastPostReplica, func(int) {
		if err := gc.session.Ping(ctxTimeout(t, callTimeout), nil); err != nil {
			t.Fatalf("ping: %v", err)
		}
	})
	const steps = 30
	done := gc.startCall(t, "progress", map[string]any{"steps": steps, "delayMs": 200}, "long-call", 40*time.Second)
	if p := rec.postOf(t, `"long-call"`, promptly); p.status != http.StatusAccepted || p.replica != forwarder {
		t.Fatalf("the long call's POST: status %d from %q, want 202 from %s", p.status, p.replica, forwarder)
	}
	gc.waitFor(t, "the first progress notification", promptly, func() bool { return len(gc.progress["long-call"]) > 0 })

	killed := time.Now()
	cl.replica(t, forwarder).kill()
	t.Logf("killed %s (forwarding the long call) while %s holds the stream", forwarder, holder)

	var o callOutcome
	select {
	case o = <-done:
	case <-time.After(45 * time.Second):
		t.Fatal("the long call never returned")
	}
	took := o.at.Sub(killed).Round(time.Millisecond)
	var rpcErr *jsonrpc.Error
	switch {
	case isTimeout(o.err):
		t.Fatalf("the long call timed out (%v after the kill): it was never answered", took)
	case resumable && o.err != nil:
		t.Fatalf("the long call failed %v after the kill although the upstream can resume its stream: %v", took, o.err)
	case resumable && (o.res.IsError || textOf(o.res) != "done"):
		t.Fatalf("the long call's result: isError=%v %q, want done", o.res.IsError, textOf(o.res))
	case resumable:
		t.Logf("the long call's result arrived %v after the kill", took)
		checkGoProgress(t, gc, "long-call", steps)
	case o.err == nil:
		t.Fatalf("the long call succeeded (%q) although the upstream cannot resume its stream and its forwarder died", textOf(o.res))
	case !errors.As(o.err, &rpcErr):
		t.Fatalf("the long call: want a JSON-RPC error, got %v", o.err)
	case took > 8*time.Second:
		t.Fatalf("the JSON-RPC error took %v after the kill (the heartbeat lapses within 3s): %v", took, o.err)
	default:
		t.Logf("the long call got a JSON-RPC error %v after the kill: %v", took, rpcErr)
	}

	// The session goes on, in the same upstream session.
	gc.echoOK(t, tb, "after the kill")
	if got := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{})); got != upSession {
		t.Errorf("upstream session changed from %s to %s", upSession, got)
	}
	gc.echoOK(t, tb, "after the kill, again")
	rec.mu.Lock()
	streams := len(rec.streamsOf(sessions[0]))
	rec.mu.Unlock()
	if streams != 1 {
		t.Errorf("the Go client's stream was opened %d times, want 1", streams)
	}
	logRecovery(t, cl)
}

// ---------------------------------------------------------------------------
// 3. A replica's configuration is reloaded
// ---------------------------------------------------------------------------

// TestMultiReplicaReload reloads one replica (caddy reload through its admin
// endpoint, with another keepalive) while it holds the clients' streams and
// forwards their long calls, and while a steady flow of short calls goes
// through the cluster: streams stay open, calls keep succeeding, nothing is
// lost or answered twice.
func TestMultiReplicaReload(t *testing.T) {
	tb := tables[kindGo]
	m := startMultiReplica(t)
	cl, rec, gc, rc := m.cl, m.rec, m.gc, m.rc
	goSession := rec.sessions()[0]
	reloaded := cl.replica(t, rec.streamReplica(t, goSession))
	other := otherReplica(t, cl, reloaded.name)
	t.Logf("Go stream on %s, TypeScript stream on %s; reloading %s", reloaded.name, rc.gets()[0].replica, reloaded.name)
	gc.echoOK(t, tb, "before the reload")
	rc.echoOK(t, "before")

	// A long call of each client, both forwarded by the replica to reload.
	const steps, delay = 20, 150
	steer(t, other, rec.lastPostReplica, func(int) {
		if err := gc.session.Ping(ctxTimeout(t, callTimeout), nil); err != nil {
			t.Fatalf("ping: %v", err)
		}
	})
	longDone := gc.startProgressCall(t, "reload-long", steps, delay)
	if p := rec.postOf(t, `"reload-long"`, promptly); p.replica != reloaded.name {
		t.Fatalf("the Go client's long call went to %s, want %s", p.replica, reloaded.name)
	}
	tsPosts := func() string { ps := rc.posts(); return ps[len(ps)-1].replica }
	steer(t, other, tsPosts, func(i int) {
		tag := fmt.Sprintf("steer-%d", i)
		rc.echoOK(t, tag)
		rc.postOf(t, tag, promptly)
	})
	rc.call(t, "long", "progress", map[string]any{"steps": steps, "delayMs": delay}, true)
	if p := rc.postOf(t, "long", promptly); p.replica != reloaded.name {
		t.Fatalf("the TypeScript client's long call went to %s, want %s", p.replica, reloaded.name)
	}

	// Short calls all along, over both replicas.
	stop := make(chan struct{})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		shortErr []error
		shorts   int
	)
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			msg := fmt.Sprintf("during the reload %d", i)
			res, err := gc.call(t, tb.echo, map[string]any{"message": msg})
			if err == nil && textOf(res) != msg {
				err = fmt.Errorf("echo %q = %q", msg, textOf(res))
			}
			mu.Lock()
			shorts++
			if err != nil {
				shortErr = append(shortErr, err)
			}
			mu.Unlock()
		}
	})
	gc.waitFor(t, "the first progress notification", promptly, func() bool { return len(gc.progress["reload-long"]) > 0 })
	rc.waitProgress(t, "long", 1, promptly)

	start := time.Now()
	reloaded.reload(t, 2*time.Second)
	t.Logf("reloaded %s with keepalive 2s in %v", reloaded.name, time.Since(start).Round(time.Millisecond))
	select {
	case err := <-longDone:
		t.Fatalf("the Go client's long call ended (%v) before the reload was done: no call was in flight across it", err)
	default:
	}

	if err := <-longDone; err != nil {
		t.Errorf("Go client's long call across the reload: %v", err)
	}
	if kind, rest := rc.result(t, "long", callTimeout); kind != "ok" || rest != `"done"` {
		t.Errorf("TypeScript client's long call across the reload: %s %s", kind, rest)
	}
	checkGoProgress(t, gc, "reload-long", steps)
	rc.checkProgress(t, "long", steps)

	// A few more calls of both clients, then stop the short ones.
	for i := range 4 {
		gc.echoOK(t, tb, fmt.Sprintf("after the reload %d", i))
		rc.echoOK(t, fmt.Sprintf("after-%d", i))
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	if len(shortErr) > 0 {
		t.Errorf("%d of %d short calls during the reload failed: %v", len(shortErr), shorts, shortErr)
	} else {
		t.Logf("%d short calls during the reload, all answered", shorts)
	}
	mu.Unlock()

	// The streams stayed open: no reconnection.
	rec.mu.Lock()
	goStreams := len(rec.streamsOf(goSession))
	rec.mu.Unlock()
	if goStreams != 1 {
		t.Errorf("the Go client's stream was opened %d times, want 1", goStreams)
	}
	if st := rc.checkExactlyOnce(t); st.Gets != 1 {
		t.Errorf("the TypeScript client's stream was opened %d times, want 1", st.Gets)
	}

	// A new session on the reloaded replica works too: after a POST
	// answered by the other replica, the next GET goes to it.
	steer(t, other, rec.lastPostReplica, func(int) {
		if err := gc.session.Ping(ctxTimeout(t, callTimeout), nil); err != nil {
			t.Fatalf("ping: %v", err)
		}
	})
	gc2 := connectGo(t, rec.caddy(), "go-after-reload", goClientOptions{})
	if ss := rec.sessions(); len(ss) < 2 || rec.streamReplica(t, ss[len(ss)-1]) != reloaded.name {
		t.Errorf("the new session's stream is not on %s", reloaded.name)
	}
	gc2.echoOK(t, tb, "new session after the reload")
}

// ---------------------------------------------------------------------------
// 4. Redis restarts
// ---------------------------------------------------------------------------

// TestMultiReplicaRedisRestart stops Redis (SIGTERM) while calls are in
// flight and starts it again on the same port and directory. Open streams
// stay open, new streams get 503 with Retry-After while Redis is down,
// nothing accepted before is lost, and calls afterwards succeed.
func TestMultiReplicaRedisRestart(t *testing.T) {
	tb := tables[kindGo]
	m := startMultiReplica(t)
	cl, rec, gc, rc := m.cl, m.rec, m.gc, m.rc
	goSession := rec.sessions()[0]
	gc.echoOK(t, tb, "before the restart")
	rc.echoOK(t, "before")
	upSession := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{}))

	// A session whose client is away, with an answer waiting for it.
	hc := testenv.MustHTTPClient(t)
	away := leaveSession(t, hc, cl, "kept-across-the-restart-"+randomHex(4))

	// In flight across the outage: a call whose progress notifications and
	// result arrive while Redis is down, and a slow one.
	const steps = 15
	longDone := gc.startProgressCall(t, "across-restart", steps, 150)
	rc.call(t, "slow", "slow", map[string]any{"ms": 500}, false)
	rc.postOf(t, "slow", promptly)
	gc.waitFor(t, "the first progress notification", promptly, func() bool { return len(gc.progress["across-restart"]) > 0 })

	stopped := time.Now()
	if err := cl.redis.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	gc.mu.Lock()
	atStop := len(gc.progress["across-restart"])
	gc.mu.Unlock()
	// New streams get 503 with Retry-After, through the load balancer and
	// on each replica (checked concurrently: each waits for the store's
	// retries).
	targets := map[string]string{"load balancer": cl.lb.sseURL()}
	for _, r := range cl.replicas {
		targets["replica "+r.name] = r.base() + "/sse"
	}
	// And so does a message for an existing session.
	targets["POST, load balancer"] = cl.lb.base + away.endpoint
	var checks sync.WaitGroup
	for where, url := range targets {
		checks.Go(func() {
			start := time.Now()
			method, body := http.MethodGet, ""
			if strings.HasPrefix(where, "POST") {
				method, body = http.MethodPost, `{"jsonrpc":"2.0","id":"during-the-outage","method":"ping"}`
			}
			code, h, body, err := tryRequest(hc, method, url, body)
			took := time.Since(start).Round(time.Millisecond)
			switch {
			case err != nil:
				t.Errorf("%s %s (%s) while Redis is down: %v", method, url, where, err)
			case code != http.StatusServiceUnavailable || h.Get("Retry-After") == "":
				t.Errorf("%s %s (%s) while Redis is down: %d Retry-After=%q %s, want 503 with Retry-After",
					method, url, where, code, h.Get("Retry-After"), strings.TrimSpace(body))
			default:
				t.Logf("%s (%s) while Redis is down: 503, Retry-After %s, after %v", method, where, h.Get("Retry-After"), took)
			}
		})
	}
	checks.Wait()
	// Keep Redis down for a while (the outage is part of the scenario, not
	// a synchronisation): the upstream goes on producing the calls'
	// progress notifications and answers meanwhile. Shorter than the
	// replicas' heartbeat and lease (3 keepalives), so that nobody takes
	// anybody's requests or sessions over.
	time.Sleep(time.Until(stopped.Add(time.Second)))
	gc.mu.Lock()
	duringOutage := len(gc.progress["across-restart"]) - atStop
	gc.mu.Unlock()
	cl.redis.MustRestart(t)
	back := time.Now()
	t.Logf("redis was down for %v; %d progress notification(s) reached the client meanwhile", time.Since(stopped).Round(time.Millisecond), duringOutage)

	if err := <-longDone; err != nil {
		t.Errorf("the call in flight across the restart: %v", err)
	}
	if kind, rest := rc.result(t, "slow", callTimeout); kind != "ok" || rest != `"slept"` {
		t.Errorf("TypeScript client's call in flight across the restart: %s %s", kind, rest)
	}
	checkGoProgress(t, gc, "across-restart", steps)
	gc.mu.Lock()
	var got []float64
	for _, p := range gc.progress["across-restart"] {
		got = append(got, p.Progress)
	}
	gc.mu.Unlock()
	if !slices.IsSorted(got) {
		t.Errorf("progress notifications across the restart out of order: %v", got)
	}

	t.Run("answer waiting for a client that is away", func(t *testing.T) {
		t.Logf("coming back %v after Redis was back", time.Since(back).Round(time.Millisecond))
		away.comeBack(t, hc, cl)
	})

	// Calls after the restart, in the same sessions.
	t.Logf("calls after the restart from %v after Redis was back", time.Since(back).Round(time.Millisecond))
	for i := range 3 {
		gc.echoOK(t, tb, fmt.Sprintf("after the restart %d", i))
		rc.echoOK(t, fmt.Sprintf("after-%d", i))
	}
	if got := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{})); got != upSession {
		t.Errorf("upstream session changed from %s to %s across the Redis restart", upSession, got)
	}
	if s := rc.sessions(); len(s) != 1 {
		t.Errorf("the TypeScript client changed sessions: %v", s)
	}
	rec.mu.Lock()
	goStreams := len(rec.streamsOf(goSession))
	rec.mu.Unlock()
	if goStreams != 1 {
		t.Errorf("the Go client's stream was opened %d times, want 1", goStreams)
	}
	if st := rc.checkExactlyOnce(t); st.Gets != 1 {
		t.Errorf("the TypeScript client's stream was opened %d times, want 1", st.Gets)
	}
	// New sessions work again.
	gc2 := connectGo(t, rec.caddy(), "go-after-restart", goClientOptions{})
	gc2.echoOK(t, tb, "new session after the restart")
}

// ---------------------------------------------------------------------------
// 5. The upstream restarts
// ---------------------------------------------------------------------------

// TestMultiReplicaUpstreamRestart restarts the upstream under sessions
// spread over the replicas: the next call is answered exactly once, in a new
// upstream session the bridge opened transparently, whichever replica
// forwards it.
func TestMultiReplicaUpstreamRestart(t *testing.T) {
	tb := tables[kindGo]
	m := startMultiReplica(t)
	up, gc, rc := m.up, m.gc, m.rc
	gc.echoOK(t, tb, "before the restart")
	rc.echoOK(t, "before")
	goUp := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{}))
	tsUp := upstreamSessionIn(t, rc.callText(t, "headers-before", "headers", map[string]any{}))

	up.restart()

	// The first call after the restart asks the client (sampling): the new
	// upstream session knows the client's capabilities and reaches its
	// stream, whichever replica holds it.
	if text := gc.callText(t, tb.sample, tb.sampleArgs("after-upstream-restart")); !tb.sampleDone(text) {
		t.Fatalf("sampling after the upstream restart: %q", short(text))
	}
	rc.echoOK(t, "after-1")
	gc.echoOK(t, tb, "after the restart")
	rc.echoOK(t, "after-2")
	if got := upstreamSessionIn(t, gc.callText(t, "headers", map[string]any{})); got == goUp {
		t.Errorf("Go client: still upstream session %s after the upstream restarted", got)
	}
	if got := upstreamSessionIn(t, rc.callText(t, "headers-after", "headers", map[string]any{})); got == tsUp {
		t.Errorf("TypeScript client: still upstream session %s after the upstream restarted", got)
	}
	if st := rc.checkExactlyOnce(t); st.Gets != 1 {
		t.Errorf("the TypeScript client's stream was opened %d times, want 1", st.Gets)
	}
}

// ---------------------------------------------------------------------------
// Progress notifications
// ---------------------------------------------------------------------------

var unknownTokenRe = regexp.MustCompile(`(?m)^error ".*progress notification for an unknown token`)

// checkProgress checks that the TypeScript client got every progress
// notification 1..steps of the call tagged tag. The SDK dispatches
// notifications in a microtask but responses at once, so a last
// notification sharing a read with the result is reported as "unknown
// token" instead: those count too. Duplicates are only logged.
func (rc *replicaClient) checkProgress(t testing.TB, tag string, steps int) {
	t.Helper()
	seen := rc.progressSeen(tag)
	missing := missingSteps(seen, steps)
	late := len(unknownTokenRe.FindAllString(rc.p.Output(), -1))
	if len(missing) > late {
		t.Errorf("TypeScript client: progress notifications %v of %s miss %v (%d reported after the result): lost", seen, tag, missing, late)
	}
	if d := len(seen) + late - steps; d > 0 {
		t.Logf("TypeScript client: %d progress notification(s) of %s delivered twice: %v", d, tag, seen)
	}
}

// checkGoProgress waits for the Go client's progress notifications 1..steps
// of the call with the progress token, and checks that none is missing.
// Duplicates are only logged.
func checkGoProgress(t testing.TB, gc *goClient, token string, steps int) {
	t.Helper()
	distinct := func() []int {
		var ps []int
		for _, p := range gc.progress[token] {
			ps = append(ps, int(p.Progress))
		}
		return ps
	}
	timer := time.NewTimer(promptly)
	defer timer.Stop()
	for {
		gc.mu.Lock()
		seen, ch := distinct(), gc.changed
		gc.mu.Unlock()
		missing := missingSteps(seen, steps)
		if len(missing) == 0 {
			if len(seen) > steps {
				t.Logf("Go client: %d progress notification(s) of %s delivered twice: %v", len(seen)-steps, token, seen)
			}
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Errorf("Go client: progress notifications %v of %s miss %v: lost", seen, token, missing)
			return
		}
	}
}

// missingSteps returns the values of 1..steps not in seen.
func missingSteps(seen []int, steps int) []int {
	var missing []int
	for i := 1; i <= steps; i++ {
		if !slices.Contains(seen, i) {
			missing = append(missing, i)
		}
	}
	return missing
}

// logRecovery logs what the replicas' logs say about orphaned requests and
// adopted sessions, to show which path a test took.
func logRecovery(t testing.TB, cl *cluster) {
	t.Helper()
	for _, r := range cl.replicas {
		for _, line := range strings.Split(r.proc.Output(), "\n") {
			if strings.Contains(line, "whose replica died") || strings.Contains(line, "adopted") {
				t.Logf("replica %s: %s", r.name, line)
			}
		}
	}
}

// tryRequest sends a request (with a JSON body if not empty) and returns
// the status, headers and body; unlike doRequest it may run outside the
// test's goroutine.
func tryRequest(hc *http.Client, method, url, body string) (int, http.Header, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	contentType := ""
	if body != "" {
		contentType = "application/json"
	}
	return testenv.Do(ctx, hc, method, url, contentType, body)
}

// awaySession is a legacy session, driven by hand through the load
// balancer, whose client went away with an answer waiting in the store.
type awaySession struct {
	endpoint    string // the endpoint event's data
	lastEventID string // the id of the last event the client got
	marker      string // in the answer waiting for it
}

// leaveSession opens a session, initialises it, closes its stream, then
// calls echo with marker and waits until the answer is in Redis.
func leaveSession(t testing.TB, hc *http.Client, cl *cluster, marker string) *awaySession {
	t.Helper()
	s := openRawStream(t, hc, cl.lb.sseURL(), nil)
	ev := s.next(t, promptly)
	if ev.Name != "endpoint" {
		t.Fatalf("first event %q, want endpoint", ev.Name)
	}
	rs := &rawSession{hc: hc, base: cl.lb.base, stream: s, endpoint: string(ev.Data)}
	a := &awaySession{endpoint: rs.endpoint, marker: marker}
	if code, body := rs.post(t, `{"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"e2e-away","version":"0"}}}`); code != http.StatusAccepted {
		t.Fatalf("initialize: %d %s", code, body)
	}
	for {
		ev := s.next(t, callTimeout)
		if ev.Name == "message" && strings.Contains(string(ev.Data), `"id":"init-1"`) {
			if !ev.HasID || ev.ID == "" {
				t.Fatalf("the initialize answer's event has no id: %q", ev.Data)
			}
			a.lastEventID = ev.ID
			break
		}
	}
	if code, body := rs.post(t, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", code, body)
	}
	// The client goes away; then an answer arrives for it.
	s.resp.Body.Close()
	<-s.done
	if code, body := rs.post(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":"away-1","method":"tools/call","params":{"name":"echo","arguments":{"message":%q}}}`, marker)); code != http.StatusAccepted {
		t.Fatalf("the call while the client is away: %d %s", code, body)
	}
	cl.redis.waitContains(t, cl.keyPrefix+"*", marker, promptly)
	return a
}

// comeBack reconnects the away session with Last-Event-ID and checks that
// the answer that waited is delivered, exactly once.
func (a *awaySession) comeBack(t testing.TB, hc *http.Client, cl *cluster) {
	t.Helper()
	s := openRawStream(t, hc, cl.lb.sseURL(), http.Header{"Last-Event-ID": {a.lastEventID}})
	ev := s.next(t, promptly)
	if ev.Name != "endpoint" || string(ev.Data) != a.endpoint {
		t.Fatalf("reconnecting with Last-Event-ID %s: first event %s %q, want endpoint %q", a.lastEventID, ev.Name, ev.Data, a.endpoint)
	}
	rs := &rawSession{hc: hc, base: cl.lb.base, stream: s, endpoint: a.endpoint}
	msg := s.message(t, `"away-1"`, promptly)
	if !strings.Contains(string(msg), a.marker) {
		t.Fatalf("the answer that waited across the restart: %s", short(string(msg)))
	}
	// A barrier: anything queued before its answer arrives before it.
	rs.request(t, `"barrier"`, "ping", "")
	for _, m := range s.other {
		if strings.Contains(string(m), `"id":"away-1"`) {
			t.Fatalf("the answer that waited was delivered twice")
		}
	}
}
