package bridge

// Tests of the re-initialisation of a lost upstream session (reinit.go).

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
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

// TestClientSettingsOutliveUpstreamSession: what a legacy client asked of
// its session (its log level, its resource subscriptions) is asked again
// of the upstream session that replaces a lost one, so that the client
// still gets its resource updates after an upstream restart it cannot
// know of. An unsubscribed resource is not asked again.
func TestClientSettingsOutliveUpstreamSession(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	updated := make(chan string, 16)
	cs := connectClient(t, e, &mcp.ClientOptions{
		ResourceUpdatedHandler: func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
			select {
			case updated <- req.Params.URI:
			default: // the test has what it needs
			}
		},
	}, nil)
	ctx := context.Background()
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "warning"}); err != nil {
		t.Fatalf("SetLoggingLevel: %v", err)
	}
	for _, uri := range []string{"test://kept", "test://dropped"} {
		if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
			t.Fatalf("Subscribe %s: %v", uri, err)
		}
	}
	if err := cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: "test://dropped"}); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	oldID := up.await(t, "a request with a session", func(r recorded) bool { return r.Header.Get("Mcp-Session-Id") != "" }).Header.Get("Mcp-Session-Id")

	up.replaceHandler() // the upstream restarts
	if got := callEcho(t, cs, "after"); got != "echo: after" {
		t.Fatalf("echo after the upstream lost its session: %q", got)
	}
	onNewSession := func(method, param string) func(recorded) bool {
		return func(r recorded) bool {
			id := r.Header.Get("Mcp-Session-Id")
			return r.Method == http.MethodPost && id != "" && id != oldID &&
				strings.Contains(r.Body, `"method":"`+method+`"`) && strings.Contains(r.Body, param)
		}
	}
	up.await(t, "the log level asked again", onNewSession("logging/setLevel", `"level":"warning"`))
	newID := up.await(t, "the subscription asked again", onNewSession("resources/subscribe", `"uri":"test://kept"`)).Header.Get("Mcp-Session-Id")
	for _, r := range up.requests() {
		if r.Header.Get("Mcp-Session-Id") == newID && strings.Contains(r.Body, "test://dropped") {
			t.Errorf("an unsubscribed resource was asked again: %s", r.Body)
		}
	}
	up.await(t, "a GET stream on the new session", func(r recorded) bool {
		return r.Method == http.MethodGet && r.Header.Get("Mcp-Session-Id") == newID
	})

	// The upstream's update reaches the client through the new session.
	// The GET stream may be recorded before the upstream serves it: the
	// update is sent again until one arrives.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitLimit)
	for {
		if err := up.server.ResourceUpdated(ctx, &mcp.ResourceUpdatedNotificationParams{URI: "test://kept"}); err != nil {
			t.Fatalf("ResourceUpdated: %v", err)
		}
		select {
		case uri := <-updated:
			if uri != "test://kept" {
				t.Fatalf("update for %q", uri)
			}
			return
		case <-tick.C:
		case <-deadline:
			t.Fatal("no resource update reached the client after the upstream restarted")
		}
	}
}
