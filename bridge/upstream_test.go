package bridge

// Tests of the upstream requests (upstream.go): failures answered with
// JSON-RPC errors, the headers the upstream gets, ids given back byte for
// byte, and requests dropped or cancelled.

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUpstreamFailures: whatever goes wrong upstream, the POST gets 202 and
// the request gets a JSON-RPC error with its id, byte for byte.
func TestUpstreamFailures(t *testing.T) {
	ids := []string{`12345678901234567890`, `"<a&b>"`, `"\u00e9t\u00e9"`, `-7`, `1.5e3`}
	cases := []struct {
		name string
		url  func(t *testing.T) string
		// wantError, if set, is the error member the client must get.
		wantError string
	}{
		{"HTTP 500", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "internal oops", http.StatusInternalServerError)
			}).URL
		}, ""},
		{"connection refused", refusedURL, ""},
		{"HTTP 404 without a session", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }).URL
		}, ""},
		{"2xx JSON without a body", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
			}).URL
		}, ""},
		{"event stream that ends without a response", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, ": ok\n\nevent: prime\ndata:\n\n")
			}).URL
		}, ""},
		{"invalid JSON answer", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"jsonrpc":`)
			}).URL
		}, ""},
		{"HTTP 400 with a JSON-RPC error and an id", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":"whatever","error":{"code":-32600,"message":"nope <b>"}}`)
			}).URL
		}, `{"code":-32600,"message":"nope <b>"}`},
		// The TypeScript SDK answers HTTP errors with a JSON-RPC error whose
		// id is null; failFromHTTP means to pass that error on.
		{"HTTP 400 with a JSON-RPC error and a null id", func(t *testing.T) string {
			return newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, `{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: Server not initialized"},"id":null}`)
			}).URL
		}, `{"code":-32000,"message":"Bad Request: Server not initialized"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.url(t), nil, nil)
			s := openStream(t, e, nil)
			for _, id := range ids {
				s.mustPost(t, echoCall(id, "x"))
			}
			got, others := s.awaitResponses(t, ids...)
			for _, id := range ids {
				data := []byte(got[id].data)
				env, err := PeekEnvelope(data)
				if err != nil || env.Kind != KindResponse {
					t.Fatalf("answer for %s: %v %s", id, err, data)
				}
				if string(env.ID) != id {
					t.Errorf("answer id %s, want %s byte for byte", env.ID, id)
				}
				errMember := env.ErrorMember(data)
				if errMember == nil {
					t.Errorf("answer for %s is not an error: %s", id, data)
					continue
				}
				if c.wantError != "" {
					if string(errMember) != c.wantError {
						t.Errorf("error for %s: %s, want the upstream's %s", id, errMember, c.wantError)
					}
					continue
				}
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(errMember, &e); err != nil || e.Code == 0 || e.Message == "" {
					t.Errorf("error for %s: %s", id, errMember)
				}
				// What happened, without the upstream's address.
				if strings.Contains(e.Message, "127.0.0.1") || strings.Contains(e.Message, "dial") {
					t.Errorf("error for %s names transport internals: %q", id, e.Message)
				}
				if c.name == "connection refused" && !strings.Contains(e.Message, "upstream unreachable") {
					t.Errorf("error for %s: %q, want it to say the upstream is unreachable", id, e.Message)
				}
			}
			for _, ev := range others {
				t.Errorf("unexpected message: %s", ev.data)
			}
		})
	}
}

// TestUpstreamHeaders: header_up reaches the upstream; the client's Host,
// Origin, Last-Event-ID, Mcp-Session-Id and MCP-Protocol-Version do not.
func TestUpstreamHeaders(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{
		// A short keepalive shortens the wait of a GET that carries
		// MCP-Protocol-Version for a session to adopt.
		Keepalive: 200 * time.Millisecond,
		HeaderUp: func(r *http.Request, h http.Header) {
			h.Set("X-Bridge-Test", "up")
			h.Set("X-Client-Method", r.Method)
		},
	})
	client := http.Header{
		"Host":                 {"bridge.example"},
		"Origin":               {"http://bridge.example"},
		"Referer":              {"http://bridge.example/page"},
		"Authorization":        {"Bearer tok"},
		"Last-Event-Id":        {"not-a-bridge-event-id"},
		"Mcp-Session-Id":       {"client-supplied"},
		"Mcp-Protocol-Version": {"1999-01-01"},
		"Cookie":               {"c=1"},
	}
	s := openStream(t, e, client)
	s.initialize(t)
	s.mustPost(t, echoCall(`7`, "hi"))
	if got := resultText(t, s.awaitResponse(t, `7`).data); got != "echo: hi" {
		t.Errorf("echo: %q", got)
	}
	up.await(t, "the upstream GET stream", func(r recorded) bool { return r.Method == http.MethodGet })

	upHost := strings.TrimPrefix(up.srv.URL, "http://")
	for _, r := range up.requests() {
		what := r.Method + " " + r.Body
		if r.Host != upHost {
			t.Errorf("%s: Host %q, want %q", what, r.Host, upHost)
		}
		for _, k := range []string{"Origin", "Referer", "Cookie"} {
			if v := r.Header.Get(k); v != "" {
				t.Errorf("%s: client's %s %q reached the upstream", what, k, v)
			}
		}
		if r.Method == http.MethodPost && r.Header.Get("Last-Event-Id") != "" {
			t.Errorf("%s: Last-Event-ID %q", what, r.Header.Get("Last-Event-Id"))
		}
		if v := r.Header.Get("Mcp-Session-Id"); v == "client-supplied" {
			t.Errorf("%s: the client's Mcp-Session-Id reached the upstream", what)
		}
		if v := r.Header.Get("Mcp-Protocol-Version"); v == "1999-01-01" {
			t.Errorf("%s: the client's MCP-Protocol-Version reached the upstream", what)
		}
		if v := r.Header.Get("X-Bridge-Test"); v != "up" {
			t.Errorf("%s: X-Bridge-Test %q", what, v)
		}
		if v := r.Header.Get("Authorization"); v != "Bearer tok" {
			t.Errorf("%s: Authorization %q", what, v)
		}
		isInit := strings.Contains(r.Body, `"method":"initialize"`)
		if strings.Contains(r.Body, `"method":"server/discover"`) {
			// Which era the upstream is of (modern.go), asked in the new
			// era's envelope.
			if v := r.Header.Get("Mcp-Protocol-Version"); v != modernVersion || r.Header.Get("Mcp-Session-Id") != "" {
				t.Errorf("server/discover carried MCP-Protocol-Version %q, Mcp-Session-Id %q", v, r.Header.Get("Mcp-Session-Id"))
			}
			continue
		}
		if isInit {
			if v := r.Header.Get("Mcp-Session-Id"); v != "" {
				t.Errorf("initialize carried Mcp-Session-Id %q", v)
			}
			if v := r.Header.Get("Mcp-Protocol-Version"); v != "" {
				t.Errorf("initialize carried MCP-Protocol-Version %q", v)
			}
			if v := r.Header.Get("X-Client-Method"); v != http.MethodPost {
				t.Errorf("header_up saw method %q for the client's POST", v)
			}
		} else {
			if v := r.Header.Get("Mcp-Protocol-Version"); v != "2025-03-26" {
				t.Errorf("%s: MCP-Protocol-Version %q, want the negotiated 2025-03-26", what, v)
			}
			if v := r.Header.Get("Mcp-Session-Id"); v == "" {
				t.Errorf("%s: no Mcp-Session-Id", what)
			}
		}
		if r.Method == http.MethodPost {
			if a := r.Header.Get("Accept"); !strings.Contains(a, "application/json") || !strings.Contains(a, "text/event-stream") {
				t.Errorf("%s: Accept %q", what, a)
			}
		}
	}
}

// TestResponseIDsKeptByteForByte: the go-sdk upstream rewrites ids (numbers
// go through float64 and int64, escapes are decoded); the client must get
// its own bytes back.
func TestResponseIDsKeptByteForByte(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	ids := []string{`12345678901234567890`, `"\u0062"`, `30.0`, `4e1`, `"<a&b>"`}
	for i, id := range ids {
		s.mustPost(t, echoCall(id, "t"+strconv.Itoa(i)))
	}
	got, others := s.awaitResponses(t, ids...)
	for i, id := range ids {
		if text := resultText(t, got[id].data); text != "echo: t"+strconv.Itoa(i) {
			t.Errorf("answer for %s: %q", id, text)
		}
	}
	for _, ev := range others {
		t.Errorf("unexpected message: %s", ev.data)
	}
}

// TestCancelledRequest: a request that the upstream drops without an answer
// gets a JSON-RPC error, unless the client cancelled it.
func TestCancelledRequest(t *testing.T) {
	for _, cancel := range []bool{false, true} {
		t.Run("cancelled="+strconv.FormatBool(cancel), func(t *testing.T) {
			up, release := holdingUpstream(t)
			e := newEnv(t, up.URL, nil, nil)
			s := openStream(t, e, nil)
			s.mustPost(t, `{"jsonrpc":"2.0","id":"r5","method":"tools/call","params":{"name":"hold"}}`)
			if cancel {
				s.mustPost(t, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r5","reason":"user"}}`)
				up.await(t, "the cancellation", func(r recorded) bool { return strings.Contains(r.Body, "notifications/cancelled") })
			}
			release()
			awaitIdle(t, e.bridge, s.sessionID)
			s.mustPost(t, `{"jsonrpc":"2.0","id":"r6","method":"tools/call","params":{"name":"quick"}}`)
			_, others := s.awaitResponses(t, `"r6"`)
			var answers int
			for _, ev := range others {
				if env, err := PeekEnvelope([]byte(ev.data)); err == nil && string(env.ID) == `"r5"` {
					answers++
				}
			}
			if cancel && answers != 0 {
				t.Errorf("the cancelled request got %d answers: %v", answers, others)
			}
			if !cancel && answers != 1 {
				t.Errorf("the dropped request got %d answers, want one error: %v", answers, others)
			}
		})
	}
}
