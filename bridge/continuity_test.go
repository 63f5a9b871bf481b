package bridge

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

// continuityConfig keeps the adoption window (heartbeat TTL plus a beat:
// 4 × 200 ms) and the hold short.
var continuityConfig = Config{Keepalive: 200 * time.Millisecond, AdoptHold: 300 * time.Millisecond}

// quietFor is longer than the adoption window plus the hold: a stream that
// has not adopted by then never will.
const quietFor = 1500 * time.Millisecond

// expectNoMessage fails if a message event arrives on s within d.
func expectNoMessage(t *testing.T, s *rawStream, what string, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case it, ok := <-s.items:
			if !ok {
				t.Fatalf("%s: stream ended", what)
			}
			if !it.isComment {
				t.Fatalf("%s: got %s %s, want nothing", what, it.name, it.data)
			}
		case <-timer.C:
			return
		}
	}
}

// initializeCount is how many initialize requests the upstream got.
func initializeCount(u *testUpstream) int {
	n := 0
	for _, r := range u.requests() {
		if strings.Contains(r.Body, `"method":"initialize"`) {
			n++
		}
	}
	return n
}

// leaveWithAnswerPending sets up what a returning client comes back to: a
// session initialised and used by a stream that has gone, whose answer to
// request 3 ("missed") arrived after the stream left.
func leaveWithAnswerPending(t *testing.T, e *testEnv, hdr http.Header) *rawStream {
	t.Helper()
	a := openStream(t, e, hdr)
	a.initialize(t)
	a.mustPost(t, echoCall(`2`, "seen"))
	a.awaitResponse(t, `2`)
	a.close()
	awaitReleased(t, e, a.sessionID)
	a.mustPost(t, echoCall(`3`, "missed"))
	awaitIdle(t, e.bridge, a.sessionID)
	return a
}

// TestAdoptOnReconnect: a GET with MCP-Protocol-Version gets its endpoint
// at once, under a new session id, and after the hold receives what arrived
// for the caller's released session, whose upstream session then serves
// its calls; GETs without the header, of another caller or version, or
// while the session has a live stream adopt nothing.
func TestAdoptOnReconnect(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &continuityConfig)
	auth := http.Header{"Authorization": {"Bearer adopt"}}
	a := leaveWithAnswerPending(t, e, auth)

	for name, h := range map[string]http.Header{
		"no MCP-Protocol-Version": {"Authorization": {"Bearer adopt"}},
		"another caller":          {"Authorization": {"Bearer other"}, "Mcp-Protocol-Version": {"2025-03-26"}},
		"another version":         {"Authorization": {"Bearer adopt"}, "Mcp-Protocol-Version": {"2025-06-18"}},
	} {
		s := openStream(t, e, h)
		expectNoMessage(t, s, name, quietFor)
		s.close()
	}

	returning := http.Header{"Authorization": {"Bearer adopt"}, "Mcp-Protocol-Version": {"2025-03-26"}}
	b := openStream(t, e, returning)
	if b.sessionID == a.sessionID {
		t.Fatal("the reconnecting GET's endpoint names the released session: a new client would learn its id")
	}
	got, others := b.awaitResponses(t, `3`)
	if text := resultText(t, got[`3`].data); text != "echo: missed" {
		t.Errorf("answer 3: %q", text)
	}
	for _, ev := range others {
		t.Errorf("replayed what the client had: %s", ev.data)
	}
	// Its calls go to the adopted session's upstream session.
	b.mustPost(t, echoCall(`4`, "again"))
	if text := resultText(t, b.awaitResponse(t, `4`).data); text != "echo: again" {
		t.Errorf("answer 4: %q", text)
	}
	if n := initializeCount(up); n != 1 {
		t.Errorf("the upstream got %d initialize requests, want 1", n)
	}
	// While b streams it, nobody else adopts it.
	c := openStream(t, e, returning)
	b.mustPost(t, echoCall(`5`, "for b"))
	b.awaitResponse(t, `5`)
	expectNoMessage(t, c, "a second GET while the session has a live stream", quietFor)
}

// TestNewClientUndoesAdoption: a new client whose first GET carries
// MCP-Protocol-Version (as some SDKs send at once) and whose request ids
// repeat its predecessor's gets nothing of the session it adopted held: its
// initialize drops the link, and the released session is there for its
// real client afterwards.
func TestNewClientUndoesAdoption(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &continuityConfig)
	a := leaveWithAnswerPending(t, e, nil)
	returning := http.Header{"Mcp-Protocol-Version": {"2025-03-26"}}

	for round := range 3 {
		n := openStream(t, e, returning)
		// Let the stream find and hold the released session first.
		deadline := time.Now().Add(waitLimit)
		for {
			sess, err := e.store.Get(context.Background(), n.sessionID)
			if err != nil {
				t.Fatal(err)
			}
			if sess.Link != "" {
				break // the most recently released session: a's or a predecessor's
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the stream did not hold the released session", round)
			}
			time.Sleep(5 * time.Millisecond)
		}
		n.initialize(t)
		n.mustPost(t, echoCall(`3`, "mine"))
		got, others := n.awaitResponses(t, `3`)
		if text := resultText(t, got[`3`].data); text != "echo: mine" {
			t.Fatalf("round %d: answer 3 is %q: another client's answer", round, text)
		}
		for _, ev := range others {
			t.Errorf("round %d: a new client got %s", round, ev.data)
		}
		expectNoMessage(t, n, "a new client after its hold", 2*continuityConfig.AdoptHold)
		n.close()
		awaitReleased(t, e, a.sessionID)
	}
	// The sessions held were given back untouched: with the new clients'
	// own sessions gone, a's client comes back to its answer.
	all, err := e.store.Expired(context.Background(), time.Now().Add(24*time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.ID != a.sessionID {
			if _, err := e.store.Delete(context.Background(), s.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := openStream(t, e, returning)
	if text := resultText(t, b.awaitResponse(t, `3`).data); text != "echo: missed" {
		t.Errorf("the returning client's answer 3: %q", text)
	}
}

// TestAdoptOnFirstCall: a client that reconnects with neither Last-Event-ID
// nor MCP-Protocol-Version (older SDKs) is recognised at its first call,
// which is not initialize: it gets what it missed and its call is served in
// its old upstream session.
func TestAdoptOnFirstCall(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &continuityConfig)
	leaveWithAnswerPending(t, e, nil)

	f := openStream(t, e, nil)
	f.mustPost(t, echoCall(`4`, "next"))
	got, others := f.awaitResponses(t, `3`, `4`)
	if text := resultText(t, got[`3`].data); text != "echo: missed" {
		t.Errorf("answer 3: %q", text)
	}
	if text := resultText(t, got[`4`].data); text != "echo: next" {
		t.Errorf("answer 4: %q", text)
	}
	for _, ev := range others {
		t.Errorf("unexpected: %s", ev.data)
	}
	if n := initializeCount(up); n != 1 {
		t.Errorf("the upstream got %d initialize requests, want 1", n)
	}
}

// TestAdoptOff: with adopt off, a reconnecting client gets a new session,
// revived at its first call, and never the released one.
func TestAdoptOff(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	cfg := continuityConfig
	cfg.Adopt = AdoptOff
	e := newEnv(t, up.URL, nil, &cfg)
	leaveWithAnswerPending(t, e, nil)
	f := openStream(t, e, http.Header{"Mcp-Protocol-Version": {"2025-03-26"}})
	f.mustPost(t, echoCall(`4`, "next"))
	if text := resultText(t, f.awaitResponse(t, `4`).data); text != "echo: next" {
		t.Errorf("answer 4: %q", text)
	}
	expectNoMessage(t, f, "adopt off", quietFor)
}

// callAfterLoss initialises a session whose record the store then loses
// (a restart of the embedded store), posts a call with id 2 to its old
// endpoint before the client reconnects, and returns the reconnected stream
// and the call's answer text.
func callAfterLoss(t *testing.T, upstream string) (*rawStream, string) {
	t.Helper()
	store := memory.New(memory.Options{})
	e := newEnv(t, upstream, store, &continuityConfig)
	a := openStream(t, e, nil)
	a.initialize(t)
	if _, err := store.Delete(context.Background(), a.sessionID); err != nil {
		t.Fatal(err)
	}
	a.close()

	// The call goes to the old endpoint before the stream is back.
	a.mustPost(t, echoCall(`2`, "after the loss"))
	awaitIdle(t, e.bridge, a.sessionID)
	b := openStream(t, e, http.Header{"Mcp-Protocol-Version": {"2025-03-26"}})
	return b, resultText(t, b.awaitResponse(t, `2`).data)
}

// TestReviveLostSession: when the store has lost a client's session (a
// restart of the embedded store, an expiry), the client's next call still
// succeeds: a POST to the old id recreates the session with a new upstream
// session, initialised with the caller's remembered initialize, and the
// client's reconnecting stream adopts it.
func TestReviveLostSession(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	b, text := callAfterLoss(t, up.URL)
	if text != "echo: after the loss" {
		t.Errorf("answer 2: %q", text)
	}
	b.mustPost(t, echoCall(`3`, "and on"))
	if text := resultText(t, b.awaitResponse(t, `3`).data); text != "echo: and on" {
		t.Errorf("answer 3: %q", text)
	}
	// The upstream session was opened with the client's own initialize.
	var replayed []string
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"method":"initialize"`) {
			replayed = append(replayed, r.Body)
		}
	}
	if len(replayed) != 2 || !strings.Contains(replayed[1], `"raw-test"`) {
		t.Errorf("initialize requests upstream: %q, want the client's and its replay", replayed)
	}
}
