package bridge

// Tests of the legacy event stream (stream.go): its headers and endpoint
// event, keepalives, resuming with Last-Event-ID, and a takeover by another
// stream.

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

func TestStreamHeadersAndEndpoint(t *testing.T) {
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "unexpected", http.StatusTeapot) })
	e := newEnv(t, up.URL, nil, nil)

	s := openStream(t, e, nil)
	h := s.resp.Header
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := h.Get("Cache-Control"); !strings.Contains(cc, "no-cache") || !strings.Contains(cc, "no-transform") {
		t.Errorf("Cache-Control %q, want no-cache and no-transform", cc)
	}
	if v := h.Get("X-Accel-Buffering"); v != "no" {
		t.Errorf("X-Accel-Buffering %q", v)
	}
	if !regexp.MustCompile(`^/messages\?sessionId=[0-9a-f]{32}$`).MatchString(s.endpoint) {
		t.Errorf("endpoint %q", s.endpoint)
	}
	if _, err := e.store.Get(context.Background(), s.sessionID); err != nil {
		t.Errorf("session %s not in the store: %v", s.sessionID, err)
	}
	// Every stream gets a session of its own.
	s2 := openStream(t, e, nil)
	if s2.sessionID == s.sessionID {
		t.Error("two streams share a session id")
	}
	// No upstream traffic before the client's initialize.
	if n := len(up.requests()); n != 0 {
		t.Errorf("%d upstream requests before initialize", n)
	}

	// Behind a prefix that was stripped, the endpoint keeps the prefix.
	e2 := newEnv(t, up.URL, nil, &Config{
		OriginalPath: func(r *http.Request) string { return "/legacy" + r.URL.Path },
	})
	s3 := openStream(t, e2, nil)
	if !strings.HasPrefix(s3.endpoint, "/legacy/messages?sessionId=") {
		t.Errorf("endpoint behind a prefix: %q", s3.endpoint)
	}
}

func TestKeepalive(t *testing.T) {
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "unexpected", http.StatusTeapot) })
	const interval = 300 * time.Millisecond
	e := newEnv(t, up.URL, nil, &Config{Keepalive: interval})
	s := openStream(t, e, nil)
	last := time.Now()
	for i := range 3 {
		it := s.next(t, waitLimit)
		if !it.isComment {
			t.Fatalf("event on an idle stream: %+v", it)
		}
		if !strings.HasPrefix(it.comment, "ping") {
			t.Fatalf("comment %q, want a ping", it.comment)
		}
		// The ticker fires once per interval; allow generous scheduling
		// slack (race detector, loaded CI), but not a second interval.
		if d := time.Since(last); d > interval+interval*3/2 {
			t.Errorf("ping %d came %v after the previous one, interval %v", i, d, interval)
		}
		last = time.Now()
	}
}

// TestLastEventIDResume: a client that reconnects with Last-Event-ID gets
// the rest of the same session, and nothing it already had.
func TestLastEventIDResume(t *testing.T) {
	for _, window := range []int{0, 16} {
		t.Run("ReplayWindow="+strconv.Itoa(window), func(t *testing.T) {
			up := newMCPUpstream(t, statefulSSE)
			store := memory.New(memory.Options{ReplayWindow: window})
			e := newEnv(t, up.URL, store, nil)
			auth := http.Header{"Authorization": {"Bearer resume"}}
			a := openStream(t, e, auth)
			initEv := a.initialize(t)
			a.mustPost(t, echoCall(`2`, "one"))
			one := a.awaitResponse(t, `2`)
			a.close()
			// Wait until the bridge has seen the client go: a message written
			// into a connection that is already dead, but not yet known to
			// be, is acknowledged as delivered (see awaitReleased).
			awaitReleased(t, e, a.sessionID)

			// While the client is away, answers pile up in the mailbox.
			a.mustPost(t, echoCall(`3`, "two"))
			a.mustPost(t, echoCall(`4`, "three"))

			resumeFrom := one
			wantIDs := []string{`3`, `4`}
			if window > 0 {
				// Within the replay window, an older position replays
				// what was already delivered after it.
				resumeFrom = initEv
				wantIDs = []string{`2`, `3`, `4`}
			}
			b := openStream(t, e, http.Header{"Authorization": {"Bearer resume"}, "Last-Event-Id": {resumeFrom.id}})
			if b.sessionID != a.sessionID {
				t.Fatalf("resumed stream is session %s, want %s", b.sessionID, a.sessionID)
			}
			got, others := b.awaitResponses(t, wantIDs...)
			for _, ev := range others {
				t.Errorf("unexpected message after resuming: %s", ev.data)
			}
			if window == 0 {
				if text := resultText(t, got[`3`].data); text != "echo: two" {
					t.Errorf("answer 3: %q", text)
				}
			} else if text := resultText(t, got[`2`].data); text != "echo: one" {
				t.Errorf("replayed answer 2: %q", text)
			}
			lastSeq := eventSeq(t, resumeFrom.id)
			for _, id := range wantIDs {
				if seq := eventSeq(t, got[id].id); seq <= lastSeq {
					t.Errorf("event %s after resuming from %s", got[id].id, resumeFrom.id)
				}
			}
			b.close()

			// Someone else's credentials, or an unknown session, get a
			// new session instead.
			c := openStream(t, e, http.Header{"Authorization": {"Bearer mallory"}, "Last-Event-Id": {one.id}})
			if c.sessionID == a.sessionID {
				t.Error("Last-Event-ID resumed another caller's session")
			}
			d := openStream(t, e, http.Header{"Authorization": {"Bearer resume"}, "Last-Event-Id": {"0123456789abcdef0123456789abcdef-1"}})
			if d.sessionID == a.sessionID {
				t.Error("an unknown Last-Event-ID resumed an existing session")
			}
		})
	}
}

func eventSeq(t *testing.T, id string) uint64 {
	t.Helper()
	_, seq, ok := parseEventID(id)
	if !ok {
		t.Fatalf("event id %q is not <session>-<seq>", id)
	}
	return seq
}

// TestTakeoverEndsOldStream: a stream that resumes a session still held by
// another stream takes it over; the old stream ends at its next keepalive
// and does not release the session from under the new one.
func TestTakeoverEndsOldStream(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	const keepalive = 100 * time.Millisecond
	e := newEnv(t, up.URL, nil, &Config{Keepalive: keepalive})
	auth := http.Header{"Authorization": {"Bearer takeover"}}
	a := openStream(t, e, auth)
	a.initialize(t)
	b := openStream(t, e, http.Header{"Authorization": {"Bearer takeover"}, "Last-Event-Id": {a.sessionID + "-1"}})
	if b.sessionID != a.sessionID {
		t.Fatalf("resume got session %s, want %s", b.sessionID, a.sessionID)
	}
	// a ends.
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for ended := false; !ended; {
		select {
		case it, ok := <-a.items:
			if !ok {
				ended = true
			} else if !it.isComment {
				t.Errorf("old stream got an event after the takeover: %+v", it)
			}
		case <-deadline.C:
			t.Fatal("old stream still open after the takeover")
		}
	}
	sess, err := e.store.Get(context.Background(), b.sessionID)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Owner == "" {
		t.Error("the old stream released the session that the new one holds")
	}
	b.mustPost(t, echoCall(`5`, "new"))
	if text := resultText(t, b.awaitResponse(t, `5`).data); text != "echo: new" {
		t.Errorf("answer 5: %q", text)
	}
	// b keeps streaming past a few keepalives.
	for range 3 {
		if it := b.next(t, waitLimit); !it.isComment {
			t.Errorf("unexpected event %+v", it)
		}
	}
}

// TestTakeoverDoesNotSplitMessages: between a takeover and the old stream's
// next keepalive both streams read the mailbox. Everything must still reach
// the new stream (the old one's client is gone), whatever the store's replay
// window: here the memory store's default, which keeps nothing once
// acknowledged.
func TestTakeoverDoesNotSplitMessages(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, memory.New(memory.Options{}), &Config{Keepalive: time.Minute})
	a := openStream(t, e, http.Header{"Authorization": {"Bearer split"}})
	a.initialize(t)
	b := openStream(t, e, http.Header{"Authorization": {"Bearer split"}, "Last-Event-Id": {a.sessionID + "-1"}})
	if b.sessionID != a.sessionID {
		t.Fatalf("resume got session %s, want %s", b.sessionID, a.sessionID)
	}
	// Drain the old stream as a client would, so that it never blocks.
	go func() {
		for range a.items {
		}
	}()
	var ids []string
	for i := range 40 {
		id := strconv.Itoa(100 + i)
		ids = append(ids, id)
		b.mustPost(t, echoCall(id, id))
	}
	got, _ := b.awaitResponses(t, ids...)
	if len(got) != len(ids) {
		t.Errorf("new stream got %d of %d answers", len(got), len(ids))
	}
}
