package bridge

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// jsonUpstream is a JSON-mode upstream (stateless, as the go-sdk's JSON
// mode is) whose tools/call takes delay; it reports each POST to seen.
func jsonUpstream(delay time.Duration, seen func(r *http.Request)) http.HandlerFunc {
	answer := handwrittenUpstream(func(w http.ResponseWriter, env Envelope) {
		time.Sleep(delay) // the tool's work
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"done"}]}}`, env.ID)
	})
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		seen(r)
		answer(w, r)
	}
}

// postConcurrently posts body to the stream's session from a goroutine of
// its own, so that calls run at once; a failure is reported with Errorf.
func postConcurrently(t *testing.T, s *rawStream, body string) {
	go func() {
		resp, err := s.e.srv.Client().Post(s.e.srv.URL+s.endpoint, "application/json", strings.NewReader(body))
		if err != nil {
			t.Errorf("POST %s: %v", body, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("POST %s: %s", body, resp.Status)
		}
	}()
}

// TestUpstreamConnectionBound: calls open at most MaxUpstreamConns
// connections to the upstream, however many run at once; the others wait
// for a free connection and all succeed.
func TestUpstreamConnectionBound(t *testing.T) {
	const bound, calls = 2, 12
	var (
		mu          sync.Mutex
		connections = map[string]bool{}
		running     atomic.Int32
		maxRunning  atomic.Int32
	)
	up := newFakeUpstream(t, jsonUpstream(50*time.Millisecond, func(r *http.Request) {
		mu.Lock()
		connections[r.RemoteAddr] = true
		mu.Unlock()
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := maxRunning.Load()
			if n <= m || maxRunning.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond) // overlap with other calls
	}))
	e := newEnv(t, up.URL, nil, &Config{MaxUpstreamConns: bound})
	s := openStream(t, e, nil)
	s.initialize(t)
	ids := make([]string, calls)
	for i := range ids {
		ids[i] = strconv.Itoa(100 + i)
		postConcurrently(t, s, echoCall(ids[i], "x"))
	}
	got, _ := s.awaitResponses(t, ids...)
	for _, id := range ids {
		if text := resultText(t, got[id].data); text != "done" {
			t.Errorf("call %s: %q", id, text)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(connections) > bound {
		t.Errorf("calls used %d upstream connections, want at most %d", len(connections), bound)
	}
	if n := maxRunning.Load(); n > bound {
		t.Errorf("%d calls ran upstream at once over %d connections", n, bound)
	}
}

// TestUpstreamH2C: with UpstreamH2C, calls reach a plain-text upstream over
// HTTP/2 and share its connection.
func TestUpstreamH2C(t *testing.T) {
	var (
		mu     sync.Mutex
		protos = map[string]bool{}
		conns  = map[string]bool{}
	)
	handler := jsonUpstream(20*time.Millisecond, func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		protos[r.Proto] = true
		conns[r.RemoteAddr] = true
	})
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	e := newEnv(t, srv.URL+"/mcp", nil, &Config{UpstreamH2C: true})
	s := openStream(t, e, nil)
	s.initialize(t)
	ids := []string{"2", "3", "4", "5", "6"}
	for _, id := range ids {
		postConcurrently(t, s, echoCall(id, "x"))
	}
	s.awaitResponses(t, ids...)
	mu.Lock()
	defer mu.Unlock()
	if len(protos) != 1 || !protos["HTTP/2.0"] {
		t.Errorf("upstream protocols %v, want only HTTP/2.0", protos)
	}
	if len(conns) != 1 {
		t.Errorf("calls used %d connections over HTTP/2, want 1", len(conns))
	}
}
