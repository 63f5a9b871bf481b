package bridge

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

// TestMetricsOfASession: a session's stream, messages, upstream requests
// and their durations are counted, and no label carries its id.
func TestMetricsOfASession(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	m := NewMetrics()
	e := newEnv(t, up.URL, nil, &Config{Metrics: m})
	s := openStream(t, e, nil)
	if got := testutil.ToFloat64(m.streamsOpen); got != 1 {
		t.Errorf("streams_open with one stream: %v", got)
	}
	s.initialize(t)
	for i := range 3 {
		s.mustPost(t, echoCall(string(rune('2'+i)), "x"))
		s.awaitResponse(t, string(rune('2'+i)))
	}
	checks := map[string]struct {
		got  float64
		want float64
	}{
		"sessions_started":                   {testutil.ToFloat64(m.sessionsStarted), 1},
		"upstream tools/call 200":            {testutil.ToFloat64(m.upstreamRequests.WithLabelValues("tools/call", "200")), 3},
		"upstream initialize 200":            {testutil.ToFloat64(m.upstreamRequests.WithLabelValues("initialize", "200")), 1},
		"requests from the client":           {testutil.ToFloat64(m.messages.WithLabelValues(fromClient, "request")), 4},
		"responses to the client":            {testutil.ToFloat64(m.messages.WithLabelValues(toClient, "response")), 4},
		"notifications/initialized upstream": {testutil.ToFloat64(m.upstreamRequests.WithLabelValues("notifications/initialized", "202")), 1},
	}
	for name, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", name, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.upstreamDuration); n == 0 {
		t.Error("no upstream request duration observed")
	}
	if n := testutil.CollectAndCount(m.storeDuration); n == 0 {
		t.Error("no store operation observed")
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if strings.Contains(f.String(), s.sessionID) || strings.Contains(f.String(), s.sessionID[:12]) {
			t.Errorf("metric %s carries the session id", f.GetName())
		}
	}
	s.close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.streamsOpen) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("streams_open after the stream closed: %v", testutil.ToFloat64(m.streamsOpen))
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, _, _ := doRaw(t, http.MethodPost, e.srv.URL+"/messages?sessionId=x&sessionId=y", "{}", nil, "application/json")
	if code != http.StatusBadRequest || testutil.ToFloat64(m.refused.WithLabelValues("bad_request")) != 1 {
		t.Errorf("a refused request: %d, refused_total{bad_request} %v", code, testutil.ToFloat64(m.refused.WithLabelValues("bad_request")))
	}
}

// TestAdminListAndEnd: ListSessions shows a live session as streaming with
// its owner; EndSession ends its stream and removes it.
func TestAdminListAndEnd(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	list, err := ListSessions(context.Background(), e.store, 10, time.Now())
	if err != nil || len(list) != 1 {
		t.Fatalf("ListSessions: %+v, %v", list, err)
	}
	if got := list[0]; got.ID != s.sessionID || got.State != "streaming" || got.OwnerReplica == "" || !got.Initialized || got.Upstream != up.URL {
		t.Errorf("listed %+v", got)
	}
	ended, err := e.bridge.EndSession(context.Background(), s.sessionID)
	if err != nil || !ended {
		t.Fatalf("EndSession: %v, %v", ended, err)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream of an ended session is still open")
	}
	up.await(t, "DELETE of the upstream session", func(r recorded) bool { return r.Method == http.MethodDelete })
	if ended, err := e.bridge.EndSession(context.Background(), s.sessionID); ended || err != nil {
		t.Errorf("EndSession of a gone session: %v, %v", ended, err)
	}
}

// TestStoreIdentifiesSharedStore: bridges given one store report it as
// the same store, with or without metrics wrapping it, so that the admin
// API lists its sessions once.
func TestStoreIdentifiesSharedStore(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	store := memory.New(memory.Options{})
	m := NewMetrics()
	a, b := newEnv(t, up.URL, store, &Config{Metrics: m}), newEnv(t, up.URL, store, &Config{Metrics: m})
	if a.bridge.Store() != b.bridge.Store() {
		t.Error("two bridges on one store report different stores")
	}
}
