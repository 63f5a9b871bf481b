package bridge

// Tests of the re-initialisation of a lost upstream session (reinit.go).

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

// TestUpstreamSessionLost: when the upstream forgets its session (restart),
// the bridge re-initialises it and the client's call still succeeds.
func TestUpstreamSessionLost(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	cs := connectClient(t, e, nil, nil)
	if got := callEcho(t, cs, "before"); got != "echo: before" {
		t.Fatalf("echo: %q", got)
	}
	first := up.await(t, "a request with a session", func(r recorded) bool { return r.Header.Get("Mcp-Session-Id") != "" })
	oldID := first.Header.Get("Mcp-Session-Id")

	up.replaceHandler()
	if got := callEcho(t, cs, "after"); got != "echo: after" {
		t.Fatalf("echo after the upstream lost its session: %q", got)
	}
	if got := callEcho(t, cs, "again"); got != "echo: again" {
		t.Fatalf("echo on the new upstream session: %q", got)
	}

	var reinit *recorded
	for _, r := range up.requests() {
		if r.Method == http.MethodPost && strings.Contains(r.Body, `"method":"initialize"`) && strings.Contains(r.Body, `mcp-sse-bridge-reinitialize`) {
			reinit = &r
		}
	}
	if reinit == nil {
		t.Fatal("no replayed initialize reached the upstream")
	}
	if v := reinit.Header.Get("Mcp-Session-Id"); v != "" {
		t.Errorf("replayed initialize carried Mcp-Session-Id %q", v)
	}
	// The last call used a new session, and the upstream GET stream was
	// reopened on it.
	reqs := up.requests()
	newID := reqs[len(reqs)-1].Header.Get("Mcp-Session-Id")
	if newID == "" || newID == oldID {
		t.Fatalf("last call used session %q (old %q)", newID, oldID)
	}
	up.await(t, "a GET stream on the new session", func(r recorded) bool {
		return r.Method == http.MethodGet && r.Header.Get("Mcp-Session-Id") == newID
	})
	sess, err := e.store.Get(context.Background(), sessionOf(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if sess.UpstreamSessionID != newID || !sess.Initialized {
		t.Errorf("stored upstream session %q initialized %v, want %q", sess.UpstreamSessionID, sess.Initialized, newID)
	}
}
