package bridge

import (
	"context"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

// TestSessionCache checks that a settled session of a stateless upstream
// is looked up in the store once for many calls, that a session gone from
// the store behind the cache is looked up (and recreated) again, and that
// another caller never gets through a cached record.
func TestSessionCache(t *testing.T) {
	up := newMCPUpstream(t, statelessJSON)
	var gets atomic.Int64
	e := newObservedEnv(t, up.srv.URL, func(op string, _ time.Duration, _ error) {
		if op == "get" {
			gets.Add(1)
		}
	})
	e.bridge.sessionCache.ttl = time.Minute // no expiry within the test
	hdr := http.Header{"Authorization": {"Bearer caller-a"}}
	s := openStream(t, e, hdr)
	defer s.close()
	s.initialize(t)
	awaitSettled(t, e, s.sessionID)

	// The first call caches the record; the next ones do not read it.
	s.mustPost(t, echoCall("2", "first"))
	s.awaitResponse(t, "2")
	before := gets.Load()
	for i, id := range []string{"3", "4", "5"} {
		s.mustPost(t, echoCall(id, "cached"))
		if got := resultText(t, s.awaitResponse(t, id).data); got != "echo: cached" {
			t.Fatalf("call %d answered %q", i, got)
		}
	}
	if n := gets.Load() - before; n != 0 {
		t.Errorf("3 calls to a cached session read the store's record %d times, want 0", n)
	}

	// Another caller gets 404 for the session, cached or not.
	other := http.Header{"Authorization": {"Bearer caller-b"}}
	if code, _, body := postRaw(t, e.srv.URL+s.endpoint, echoCall("6", "intruder"), other, "application/json"); code != http.StatusNotFound {
		t.Errorf("another caller's POST to a cached session: %d %s, want 404", code, body)
	}

	// Gone from the store behind the cache (a store restarted): the POST
	// looks it up again and recreates it, as without the cache.
	if _, err := e.store.Delete(context.Background(), s.sessionID); err != nil {
		t.Fatal(err)
	}
	before = gets.Load()
	if code := s.post(t, echoCall("7", "after the store lost it")); code != http.StatusAccepted {
		t.Fatalf("POST after the session left the store: %d, want 202", code)
	}
	if gets.Load() == before {
		t.Error("a cached session gone from the store was not looked up again")
	}
	sess, err := e.store.Get(context.Background(), s.sessionID)
	if err != nil || !sess.NoAdopt {
		t.Errorf("the session was not recreated for its caller: %+v, %v", sess, err)
	}
}

// awaitSettled waits until the session's record may be cached: the
// stream's owner has found out that the stateless upstream has no GET
// stream.
func awaitSettled(t *testing.T, e *testEnv, id string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		sess, err := e.store.Get(context.Background(), id)
		if err == nil && cacheable(sess) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session never settled: %+v, %v", sess, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newObservedEnv is newEnv with every call of the bridge to its memory
// store reported to observe.
func newObservedEnv(t *testing.T, upstream string, observe sessionstore.Observer) *testEnv {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Options{})
	return startEnv(t, Config{Upstream: u}, store, sessionstore.Observe(store, observe))
}
