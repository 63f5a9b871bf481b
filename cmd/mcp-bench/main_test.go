package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i, x := range v {
			d[i] = time.Duration(x) * time.Millisecond
		}
		return d
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50", ms(1, 2), 50, 1 * time.Millisecond},
		{"two p99", ms(1, 2), 99, 2 * time.Millisecond},
		{"odd p50", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p100", hundred, 100, 100 * time.Millisecond},
		{"tiny p", hundred, 0.001, 1 * time.Millisecond},
	} {
		if got := percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("%s: percentile(p%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	lat := []time.Duration{5, 1, 4, 2, 3}
	s := summarize(loadStats{window: 2 * time.Second}, lat)
	if s.calls != 5 || s.p50 != 3 || s.p99 != 5 {
		t.Errorf("summarize = %+v", s)
	}
	if got := s.rate(); got != 2.5 {
		t.Errorf("rate = %v, want 2.5", got)
	}
}

func TestResolveEndpoint(t *testing.T) {
	stream, _ := url.Parse("http://127.0.0.1:8080/github/sse")
	for _, tc := range []struct {
		data, want, err string
	}{
		{"/messages?sessionId=abc", "http://127.0.0.1:8080/messages?sessionId=abc", ""},
		{" /github/messages?sessionId=abc\n", "http://127.0.0.1:8080/github/messages?sessionId=abc", ""},
		{"messages?sessionId=abc", "http://127.0.0.1:8080/github/messages?sessionId=abc", ""},
		{"http://127.0.0.1:8080/m?sessionId=x&y=1", "http://127.0.0.1:8080/m?sessionId=x&y=1", ""},
		{"http://example.com/messages?sessionId=abc", "", "leaves"},
		{"//127.0.0.2:8080/messages?sessionId=abc", "", "leaves"},
		{"/messages", "", "no sessionId"},
		{"/messages?sessionId=", "", "no sessionId"},
		{"", "", "empty"},
		{"%zz", "", "invalid"},
	} {
		got, err := resolveEndpoint(stream, tc.data)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("resolveEndpoint(%q): %v", tc.data, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("resolveEndpoint(%q) = %q, %v; want an error with %q", tc.data, got, err, tc.err)
		case got != tc.want:
			t.Errorf("resolveEndpoint(%q) = %q, want %q", tc.data, got, tc.want)
		}
	}
}

func TestAppendRequest(t *testing.T) {
	b := appendRequest(nil, "42", "tools/call", echoParams(`a "quoted" line`+"\n"))
	var m struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Method  string          `json:"method"`
		Params  struct {
			Name      string            `json:"name"`
			Arguments map[string]string `json:"arguments"`
		} `json:"params"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if m.JSONRPC != "2.0" || string(m.ID) != "42" || m.Method != "tools/call" || m.Params.Name != "echo" ||
		m.Params.Arguments["message"] != `a "quoted" line`+"\n" {
		t.Errorf("appendRequest = %s", b)
	}
	if b := appendRequest(nil, "1", "ping", nil); string(b) != `{"jsonrpc":"2.0","id":1,"method":"ping"}` {
		t.Errorf("without params: %s", b)
	}
}

// fakeBridge is a minimal legacy HTTP+SSE server whose tools/call echo
// answers arrive on the stream, in the reverse order of the POSTs' replies
// when asked to (answer before the 202).
type fakeBridge struct {
	mu     sync.Mutex
	stream chan []byte
}

func (f *fakeBridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/p/sse":
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, ": hello\n\nevent: endpoint\ndata: /p/messages?sessionId=s1\n\n")
		w.(http.Flusher).Flush()
		for {
			select {
			case msg := <-f.stream:
				fmt.Fprintf(w, "id: s1-1\nevent: message\ndata: %s\n\n", msg)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	case r.Method == http.MethodPost && r.URL.Path == "/p/messages":
		if r.URL.Query().Get("sessionId") != "s1" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if ans := answer(body); ans != nil {
			// A notification first, which matches no request.
			f.stream <- []byte(`{"jsonrpc":"2.0","method":"notifications/message","params":{}}`)
			f.stream <- ans
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		http.NotFound(w, r)
	}
}

// answer is the fake upstream's answer to a message (nil for
// notifications).
func answer(body []byte) []byte {
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params struct {
			Arguments map[string]string `json:"arguments"`
		} `json:"params"`
	}
	if json.Unmarshal(body, &req) != nil || req.ID == nil {
		return nil
	}
	var result any
	switch req.Method {
	case "initialize":
		result = map[string]any{"protocolVersion": legacyProtocolVersion, "capabilities": map[string]any{}, "serverInfo": map[string]string{"name": "fake"}}
	case "tools/call":
		result = map[string]any{"content": []map[string]string{{"type": "text", "text": req.Params.Arguments["message"]}}}
	default:
		b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": req.ID, "error": map[string]any{"code": -32601, "message": "no such method"}})
		return b
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": req.ID, "result": result})
	return b
}

func TestLegacySession(t *testing.T) {
	srv := httptest.NewServer(&fakeBridge{stream: make(chan []byte, 16)})
	defer srv.Close()
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	s, err := openSession(ctx, hc, "bridged", srv.URL+"/p/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer s.tr.close()
	if got := s.tr.(*legacyTransport).postURL; got != srv.URL+"/p/messages?sessionId=s1" {
		t.Errorf("post URL %q", got)
	}
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		res, err := s.call(ctx, "tools/call", echoParams(msg))
		if err != nil {
			t.Fatal(err)
		}
		if text, err := echoText(res); err != nil || text != msg {
			t.Errorf("echo = %q, %v; want %q", text, err, msg)
		}
	}
	var rpcErr *rpcError
	if _, err := s.call(ctx, "nope", nil); !errors.As(err, &rpcErr) || rpcErr.Code != -32601 {
		t.Errorf("unknown method: %v, want JSON-RPC error -32601", err)
	}
	if n := s.tr.(*legacyTransport).stray; n != 5 {
		t.Errorf("stray messages = %d, want 5 (one notification per request)", n)
	}
}

func TestLegacySessionStreamEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "event: endpoint\ndata: /messages?sessionId=x\n\n")
			return // the stream ends at once
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := openLegacy(ctx, hc, srv.URL+"/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	<-tr.done
	if _, err := tr.request(ctx, "1", []byte(`{"jsonrpc":"2.0","id":1,"method":"ping"}`)); err == nil || !strings.Contains(err.Error(), "stream closed") {
		t.Errorf("request after the stream ended: %v", err)
	}

	// A GET that is not an event stream.
	bad := httptest.NewServer(http.NotFoundHandler())
	defer bad.Close()
	if _, err := openLegacy(ctx, hc, bad.URL+"/sse"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("GET answered 404: %v", err)
	}
}

func TestDirectSession(t *testing.T) {
	var mu sync.Mutex
	var versions []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		versions = append(versions, r.Header.Get("MCP-Protocol-Version"))
		mu.Unlock()
		if r.Header.Get("Accept") != "application/json, text/event-stream" {
			http.Error(w, "bad Accept", http.StatusNotAcceptable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		ans := answer(body)
		if ans == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(ans)
	}))
	defer srv.Close()
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	s, err := openSession(ctx, hc, "direct", srv.URL+"/mcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two"} {
		res, err := s.call(ctx, "tools/call", echoParams(msg))
		if err != nil {
			t.Fatal(err)
		}
		if text, _ := echoText(res); text != msg {
			t.Errorf("echo = %q, want %q", text, msg)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", legacyProtocolVersion, legacyProtocolVersion, legacyProtocolVersion}; strings.Join(versions, ",") != strings.Join(want, ",") {
		t.Errorf("MCP-Protocol-Version headers %q, want %q", versions, want)
	}
}

func TestBridgeBlock(t *testing.T) {
	cf := testenv.Caddyfile{Sites: []testenv.Site{{Port: 8080, Body: bridgeBlock("http://127.0.0.1:9/mcp", "memory", "", 12000)}}}
	want := "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n\n" +
		"http://127.0.0.1:8080 {\n\tbind 127.0.0.1\n\tmcp_sse_bridge {\n\t\tupstream http://127.0.0.1:9/mcp\n\t\tnew_session_rate 1000000\n" +
		"\t\tstore memory {\n\t\t\tmax_sessions 12000\n\t\t\tmax_sessions_per_caller 12000\n\t\t}\n\t}\n}\n"
	if got := cf.String(); got != want {
		t.Errorf("Caddyfile:\n%s\nwant:\n%s", got, want)
	}
	if got := bridgeBlock("u", "redis", "127.0.0.1:6379", 1); !strings.Contains(got, "\t\tstore redis {\n\t\t\taddress 127.0.0.1:6379\n\t\t\tmax_sessions_per_caller 1\n\t\t}\n") {
		t.Errorf("redis store block %q", got)
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-quick", "-duration", "3s", "-sessions", "2, 4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.duration != 3*time.Second || cfg.warmup != 500*time.Millisecond || cfg.idle != 1000 ||
		len(cfg.sessions) != 2 || cfg.sessions[1] != 4 || cfg.timeout <= 0 {
		t.Errorf("parseFlags = %+v", cfg)
	}
	for _, bad := range [][]string{{"-sessions", "0"}, {"-stores", "etcd"}, {"-duration", "0s"}, {"extra"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q): no error", bad)
		}
	}
}

func TestLogSummary(t *testing.T) {
	var l logSummary
	l.addFrom(strings.NewReader(`{"level":"info","logger":"http","msg":"started"}
{"level":"warn","logger":"admin","msg":"admin endpoint disabled"}
{"level":"warn","logger":"http.handlers.mcp_sse_bridge","msg":"session store failed"}
{"level":"error","logger":"http.handlers.mcp_sse_bridge","msg":"message for the client lost"}
{"level":"error","logger":"http.handlers.mcp_sse_bridge","msg":"message for the client lost"}
not json
`))
	if l.warn != 1 || l.error != 2 {
		t.Errorf("warn %d, error %d; want 1, 2 (startup noise ignored)", l.warn, l.error)
	}
	if s := l.String(); !strings.Contains(s, "2× error: http.handlers.mcp_sse_bridge: message for the client lost") {
		t.Errorf("summary:\n%s", s)
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote([]string{".bin/mcp-bench", "-sessions", "1,8", "-x", "a b", "it's"}); got != `.bin/mcp-bench -sessions 1,8 -x 'a b' 'it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
}

func TestCommandStats(t *testing.T) {
	before := parseCommandStats(map[string]string{"cmdstat_get": "calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0", "cmdstat_info": "calls=1,usec=1"})
	after := parseCommandStats(map[string]string{"cmdstat_get": "calls=30,usec=5", "cmdstat_evalsha": "calls=40,usec=9", "cmdstat_info": "calls=3,usec=1", "cmdstat_hello": "calls=9,usec=1"})
	d := commandDelta(before, after)
	if len(d) != 2 || d["get"] != 20 || d["evalsha"] != 40 {
		t.Errorf("commandDelta = %v", d)
	}
	if got := perCall(d, 10); got != "6.0 (evalsha 4.00, get 2.00)" {
		t.Errorf("perCall = %q", got)
	}
}

func TestTargets(t *testing.T) {
	stats := func(calls int, p50 time.Duration) loadStats {
		return loadStats{calls: calls, window: time.Second, p50: p50}
	}
	b := &bench{cfg: &config{stores: []string{"memory", "redis"}, msgSize: 1 << 20}, results: []*storeResult{{
		name: "memory",
		rows: []*throughputRow{
			{sessions: 1, direct: stats(1000, time.Millisecond), bridged: stats(600, 1200*time.Microsecond), redisConns: -1},
			{sessions: 8, direct: stats(1000, 0), bridged: stats(900, 0), redisConns: -1},
		},
		idle: &idleResult{opened: 1000, failed: 2, before: procMem{rss: 10 << 20}, after: procMem{rss: 30 << 20}, redisConns: -1},
	}, {name: "redis", note: "redis: not available"}}}
	var got []string
	for _, r := range b.evaluate() {
		got = append(got, r.name+" | "+r.measured+" | "+r.goal+" | "+r.result)
	}
	want := []string{
		"throughput, 8 sessions, memory | 0.90× (900 vs 1000 calls/s) | ≥ 0.80× direct | PASS",
		"added p50 latency, 1 session, memory | +0.2000 ms (1.200 vs 1.000) | ≤ 0.3 ms | PASS",
		"idle session RSS, memory | 20.5 KiB (1000 sessions), 2 failed | ≤ 30 KiB each | MISS",
		"peak RSS growth, one 1 MiB message, memory | not measured | ≤ 4.0 MiB | -",
		"throughput, 8 sessions, redis | redis: not available | ≥ 0.60× direct | -",
		"added p50 latency, 1 session, redis | redis: not available | ≤ 1.0 ms | -",
		"idle session RSS, redis | redis: not available | ≤ 30 KiB each | -",
		"Redis connections per replica (1 replica) | redis: not available | ≤ 8 | -",
		"peak RSS growth, one 1 MiB message, redis | redis: not available | ≤ 4.0 MiB | -",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("evaluate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
