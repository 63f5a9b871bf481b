package tests

// The recording proxy between in-process Go clients and the load balancer
// (or between Caddy and an upstream): what was sent and received, and by
// which replica.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// recorder is a transparent reverse proxy in the test process between
// in-process clients and the load balancer. It records every POST (body,
// headers, status, serving replica) and every event stream (request headers,
// bytes, serving replica), so that tests can check that each request got
// exactly one answer and see which replica served what. Between Caddy and an
// upstream it shows what the bridge forwarded (TestHostileRequests).
type recorder struct {
	srv   *httptest.Server
	proxy *httputil.ReverseProxy
	tr    *http.Transport

	mu      sync.Mutex
	changed chan struct{}
	posts   []*recPost
	streams []*recStream
}

type recPost struct {
	session string
	header  http.Header // the request's headers as they reached the proxy
	body    []byte
	status  int // 0 until answered; -1 if the proxy failed
	replica string
}

type recStream struct {
	header  http.Header // the request's headers as they reached the proxy
	status  int
	replica string
	buf     bytes.Buffer
}

type recKey struct{}

// newRecorder starts a recording proxy to target (a base URL).
func newRecorder(t testing.TB, target string) *recorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{changed: make(chan struct{})}
	rec.tr = testenv.NewTransport(200)
	rec.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		},
		Transport:     rec.tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			switch v := resp.Request.Context().Value(recKey{}).(type) {
			case *recPost:
				rec.note(func() { v.status, v.replica = resp.StatusCode, resp.Header.Get("X-Replica") })
			case *recStream:
				rec.note(func() { v.status, v.replica = resp.StatusCode, resp.Header.Get("X-Replica") })
				resp.Body = &recBody{ReadCloser: resp.Body, rec: rec, s: v}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if p, ok := r.Context().Value(recKey{}).(*recPost); ok {
				rec.note(func() { p.status = -1 })
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	rec.srv = httptest.NewServer(http.HandlerFunc(rec.serve))
	t.Cleanup(func() {
		rec.srv.CloseClientConnections()
		rec.srv.Close()
		rec.tr.CloseIdleConnections()
	})
	return rec
}

func (rec *recorder) serve(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		body, err := bufferBody(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p := &recPost{session: r.URL.Query().Get("sessionId"), header: r.Header.Clone(), body: body}
		rec.note(func() { rec.posts = append(rec.posts, p) })
		r = r.WithContext(context.WithValue(r.Context(), recKey{}, p))
	case http.MethodGet:
		s := &recStream{header: r.Header.Clone()}
		rec.note(func() { rec.streams = append(rec.streams, s) })
		r = r.WithContext(context.WithValue(r.Context(), recKey{}, s))
	}
	rec.proxy.ServeHTTP(w, r)
}

type recBody struct {
	io.ReadCloser
	rec *recorder
	s   *recStream
}

func (b *recBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.rec.note(func() { b.s.buf.Write(p[:n]) })
	}
	return n, err
}

// note changes the records and wakes up waiters.
func (rec *recorder) note(f func()) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	f()
	close(rec.changed)
	rec.changed = make(chan struct{})
}

// caddy is the recorder as a *caddy for connectGo and runGoScenarios.
func (rec *recorder) caddy() *caddy { return &caddy{base: rec.srv.URL} }

// waitFor waits until cond (called with rec.mu held) holds.
func (rec *recorder) waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		rec.mu.Lock()
		ok, ch := cond(), rec.changed
		rec.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("recorder: timed out after %v waiting for %s", timeout, what)
		}
	}
}

// recEvent is one message event of a recorded stream.
type recEvent struct {
	id, method string // the JSON-RPC id (raw) and method, if any
	response   bool   // a response: id and result or error, no method
	data       []byte
}

// events parses the message events of a recorded stream (rec.mu held), and
// returns the session id of its endpoint event.
func (s *recStream) events() (string, []recEvent) {
	er := bridge.NewEventReader(bytes.NewReader(s.buf.Bytes()), 32<<20)
	var (
		session string
		evs     []recEvent
	)
	for {
		ev, err := er.Next()
		if err != nil {
			return session, evs
		}
		switch ev.Name {
		case "endpoint":
			if u, err := url.Parse(string(ev.Data)); err == nil {
				session = u.Query().Get("sessionId")
			}
		case "message", "":
			var m struct {
				ID     json.RawMessage `json:"id"`
				Method string          `json:"method"`
				Result json.RawMessage `json:"result"`
				Error  json.RawMessage `json:"error"`
			}
			if json.Unmarshal(ev.Data, &m) != nil {
				continue
			}
			evs = append(evs, recEvent{
				id:       string(m.ID),
				method:   m.Method,
				response: m.Method == "" && len(m.ID) > 0 && (m.Result != nil || m.Error != nil),
				data:     slices.Clone(ev.Data),
			})
		}
	}
}

// streamsOf returns the recorded streams of a session, in order (rec.mu
// held).
func (rec *recorder) streamsOf(session string) []*recStream {
	var ss []*recStream
	for _, s := range rec.streams {
		if sid, _ := s.events(); sid == session {
			ss = append(ss, s)
		}
	}
	return ss
}

// sessions lists the sessions seen on the recorded streams, in order.
func (rec *recorder) sessions() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var ids []string
	for _, s := range rec.streams {
		if sid, _ := s.events(); sid != "" && !slices.Contains(ids, sid) {
			ids = append(ids, sid)
		}
	}
	return ids
}

// streamReplica returns the replica serving the (first) stream of session.
func (rec *recorder) streamReplica(t testing.TB, session string) string {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	ss := rec.streamsOf(session)
	if len(ss) == 0 || ss[0].replica == "" {
		t.Fatalf("recorder: no stream with an X-Replica for session %s", session)
	}
	return ss[0].replica
}

// lastPostReplica returns the replica that answered the last POST.
func (rec *recorder) lastPostReplica() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := len(rec.posts) - 1; i >= 0; i-- {
		if rec.posts[i].status != 0 {
			return rec.posts[i].replica
		}
	}
	return ""
}

// postOf waits for the POST whose body contains marker to be answered and
// returns it (a copy).
func (rec *recorder) postOf(t testing.TB, marker string, timeout time.Duration) recPost {
	t.Helper()
	var found recPost
	rec.waitFor(t, "the POST carrying "+marker, timeout, func() bool {
		for _, p := range rec.posts {
			if bytes.Contains(p.body, []byte(marker)) && p.status != 0 {
				found = *p
				return true
			}
		}
		return false
	})
	return found
}

// requestID is the raw JSON-RPC id of a request body, or "" for anything
// else.
func requestID(body []byte) string {
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if json.Unmarshal(body, &m) != nil || m.Method == "" || len(m.ID) == 0 {
		return ""
	}
	return string(m.ID)
}

// answerCount is the answers one request got.
type answerCount struct {
	session, id string
	n           int
}

// checkExactlyOnce checks, for every session seen, that each request the
// bridge accepted (2xx) got exactly one answer on the session's streams, and
// that no stream carried an answer to a request that was not accepted.
// Requests the client cancelled are exempt.
func (rec *recorder) checkExactlyOnce(t testing.TB) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	accepted := map[string]map[string]bool{} // session -> id -> accepted
	cancelled := map[string]map[string]bool{}
	for _, p := range rec.posts {
		if accepted[p.session] == nil {
			accepted[p.session], cancelled[p.session] = map[string]bool{}, map[string]bool{}
		}
		var c struct {
			Method string `json:"method"`
			Params struct {
				RequestID json.RawMessage `json:"requestId"`
			} `json:"params"`
		}
		if json.Unmarshal(p.body, &c) == nil && c.Method == "notifications/cancelled" {
			cancelled[p.session][string(c.Params.RequestID)] = true
		}
		if id := requestID(p.body); id != "" {
			accepted[p.session][id] = accepted[p.session][id] || p.status/100 == 2
		}
	}
	answers := map[string]map[string]int{}
	for _, s := range rec.streams {
		sid, evs := s.events()
		if sid == "" {
			continue
		}
		if answers[sid] == nil {
			answers[sid] = map[string]int{}
		}
		for _, ev := range evs {
			if ev.response {
				answers[sid][ev.id]++
			}
		}
	}
	var bad []string
	total := 0
	for sid, ids := range accepted {
		for id, ok := range ids {
			n := answers[sid][id]
			switch {
			case !ok && n > 0:
				bad = append(bad, fmt.Sprintf("session %s: request %s was refused but got %d answer(s)", short8(sid), id, n))
			case ok && n != 1 && !(n == 0 && cancelled[sid][id]):
				bad = append(bad, fmt.Sprintf("session %s: request %s got %d answers, want exactly 1", short8(sid), id, n))
			case ok:
				total++
			}
		}
	}
	for sid, ids := range answers {
		for id, n := range ids {
			if _, ok := accepted[sid][id]; !ok {
				bad = append(bad, fmt.Sprintf("session %s: %d answer(s) to %s, which the client never sent", short8(sid), n, id))
			}
		}
	}
	slices.Sort(bad)
	if len(bad) > 0 {
		t.Errorf("not every request was answered exactly once:\n  %s", strings.Join(bad, "\n  "))
	} else {
		t.Logf("recorder: %d requests in %d session(s), each answered exactly once", total, len(accepted))
	}
}

// short8 abbreviates a session id.
func short8(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}
