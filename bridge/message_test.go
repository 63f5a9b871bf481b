package bridge

// Tests of the message endpoint (message.go): batches split, the POST
// answered before the results, the bound on requests in flight, and answers
// waiting for room in a full mailbox.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

func TestBatchIsSplit(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	batch := "[" + strings.Join([]string{
		echoCall(`"a"`, "one"),
		`{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`,
		echoCall(`2`, "two"),
		echoCall(`"c"`, "three"),
	}, ",\n ") + "]"
	s.mustPost(t, batch)
	got, others := s.awaitResponses(t, `"a"`, `2`, `"c"`)
	for id, want := range map[string]string{`"a"`: "echo: one", `2`: "echo: two", `"c"`: "echo: three"} {
		ev := got[id]
		if strings.HasPrefix(strings.TrimSpace(ev.data), "[") {
			t.Errorf("response %s delivered as an array: %s", id, ev.data)
		}
		if text := resultText(t, ev.data); text != want {
			t.Errorf("response %s: %q, want %q", id, text, want)
		}
		if !ev.hasID || !strings.HasPrefix(ev.id, s.sessionID+"-") {
			t.Errorf("response %s has event id %q", id, ev.id)
		}
	}
	for _, ev := range others {
		t.Errorf("unexpected message: %s", ev.data)
	}
	for _, r := range up.requests() {
		if r.Method == http.MethodPost && strings.HasPrefix(strings.TrimSpace(r.Body), "[") {
			t.Errorf("a batch reached the upstream: %s", r.Body)
		}
	}
}

// TestPostAnsweredBeforeResults: a JSON-mode upstream sends its status line
// only with the result, so the bridge answers the legacy POST after
// defaultAcceptWait at the latest (DESIGN §4, mcp-transports §6.2), for a single
// message as for a batch.
func TestPostAnsweredBeforeResults(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		ids  []string
	}{
		{"single", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"block","arguments":{}}}`, []string{`1`}},
		{"batch", `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"block","arguments":{}}},` +
			`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"block","arguments":{}}}]`, []string{`1`, `2`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newMCPUpstream(t, statelessJSON)
			e := newEnv(t, up.URL, nil, nil)
			s := openStream(t, e, nil)
			start := time.Now()
			posted := make(chan int, 1)
			go func() {
				// Not postRaw: this goroutine must not call t.Fatal.
				resp, err := http.Post(e.srv.URL+s.endpoint, "application/json", strings.NewReader(tc.body))
				if err != nil {
					posted <- 0
					return
				}
				resp.Body.Close()
				posted <- resp.StatusCode
			}()
			limit := defaultAcceptWait + 3*time.Second
			select {
			case code := <-posted:
				if code != http.StatusAccepted {
					t.Errorf("POST: %d", code)
				}
			case <-time.After(limit):
				t.Errorf("POST still unanswered after %v while the upstream works on the requests (acceptWait %v)", time.Since(start).Round(time.Millisecond), defaultAcceptWait)
				up.unblock()
				<-posted
			}
			up.unblock()
			got, _ := s.awaitResponses(t, tc.ids...)
			for _, id := range tc.ids {
				if text := resultText(t, got[id].data); text != "released" {
					t.Errorf("result %s: %q", id, text)
				}
			}
		})
	}
}

// TestMaxInflight: the bound on upstream requests in flight per session
// answers 503 with Retry-After, and frees its slot when the request ends.
func TestMaxInflight(t *testing.T) {
	up, release := holdingUpstream(t)
	e := newEnv(t, up.URL, nil, &Config{MaxInflight: 2})
	s := openStream(t, e, nil)
	s.mustPost(t, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"hold"}}`)
	s.mustPost(t, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"hold"}}`)
	code, h, _ := postRaw(t, e.srv.URL+s.endpoint, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"quick"}}`, nil, "application/json")
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("third request in flight: %d, Retry-After %q; want 503 with Retry-After", code, h.Get("Retry-After"))
	}
	release()
	awaitIdle(t, e.bridge, s.sessionID)
	s.awaitResponses(t, `1`, `2`) // the errors for the dropped requests
	// A batch that would overflow the bound is refused whole.
	code, _, _ = postRaw(t, e.srv.URL+s.endpoint, `[`+
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"quick"}},`+
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"quick"}},`+
		`{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"quick"}}]`, nil, "application/json")
	if code != http.StatusServiceUnavailable {
		t.Errorf("batch of 3 with a bound of 2: %d, want 503", code)
	}
	// Notifications do not count.
	s.mustPost(t, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`)
	s.mustPost(t, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"quick"}}`)
	if text := resultText(t, s.awaitResponse(t, `7`).data); text != "done" {
		t.Errorf("answer 7: %q", text)
	}
}

// TestFullMailboxLosesNothing: while the client is away its mailbox fills up
// (MaxPending 2); further answers wait for room instead of being dropped,
// and all of them arrive, in order of room, once the client resumes.
func TestFullMailboxLosesNothing(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	store := memory.New(memory.Options{MaxPending: 2, ReplayWindow: 4})
	e := newEnv(t, up.URL, store, nil)
	auth := http.Header{"Authorization": {"Bearer full"}}
	a := openStream(t, e, auth)
	initEv := a.initialize(t)
	a.close()
	awaitReleased(t, e, a.sessionID)

	// Two answers fill the mailbox (the initialize result was acknowledged);
	// the next two must wait for room.
	for i := 2; i <= 5; i++ {
		a.mustPost(t, echoCall(strconv.Itoa(i), "m"+strconv.Itoa(i)))
	}
	b := openStream(t, e, http.Header{"Authorization": {"Bearer full"}, "Last-Event-Id": {initEv.id}})
	if b.sessionID != a.sessionID {
		t.Fatalf("resumed stream is session %s, want %s", b.sessionID, a.sessionID)
	}
	got, others := b.awaitResponses(t, `2`, `3`, `4`, `5`)
	for id, ev := range got {
		if text := resultText(t, ev.data); text != "echo: m"+id {
			t.Errorf("answer %s: %q", id, text)
		}
	}
	for _, ev := range others {
		t.Errorf("unexpected message: %s", ev.data)
	}
	awaitIdle(t, e.bridge, a.sessionID)
}
