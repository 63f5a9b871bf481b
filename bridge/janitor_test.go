package bridge

// Tests of the expiry of sessions (janitor.go).

import (
	"net/http"
	"testing"
	"time"
)

// TestSessionExpiry: once the stream is gone for longer than the session
// TTL, the session is removed and the upstream session ends with DELETE.
func TestSessionExpiry(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{SessionTTL: 20 * time.Millisecond})
	cs := connectClient(t, e, nil, http.Header{"Authorization": {"Bearer expiry-token"}})
	if got := callEcho(t, cs, "x"); got != "echo: x" {
		t.Fatalf("echo: %q", got)
	}
	used := up.await(t, "a request with a session", func(r recorded) bool { return r.Header.Get("Mcp-Session-Id") != "" })
	upstreamID := used.Header.Get("Mcp-Session-Id")
	if err := cs.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	select {
	case del := <-up.deletes:
		if got := del.Header.Get("Mcp-Session-Id"); got != upstreamID {
			t.Errorf("DELETE for session %q, want %q", got, upstreamID)
		}
		if got := del.Header.Get("Authorization"); got != "Bearer expiry-token" {
			t.Errorf("DELETE Authorization %q", got)
		}
		if got := del.Header.Get("Mcp-Protocol-Version"); got != "2024-11-05" {
			t.Errorf("DELETE MCP-Protocol-Version %q", got)
		}
	case <-time.After(waitLimit):
		t.Fatal("no DELETE upstream after the session expired")
	}
	if n := e.store.Len(); n != 0 {
		t.Errorf("%d sessions left in the store", n)
	}
	// Exactly one DELETE.
	n := 0
	for _, r := range up.requests() {
		if r.Method == http.MethodDelete {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d DELETE requests", n)
	}
}
