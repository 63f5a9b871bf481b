package bridge

// Tests of the bridge as a whole (bridge.go): a legacy client end to end, the
// status codes of its HTTP surface (routes, origins, refused messages), the
// store out of reach, Shutdown and Close.

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/goleak"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

func TestLegacyClient(t *testing.T) {
	for _, mode := range []struct {
		name     string
		opts     *mcp.StreamableHTTPOptions
		stateful bool
	}{
		{"stateful-sse", statefulSSE, true},
		{"stateless-json", statelessJSON, false},
	} {
		t.Run(mode.name, func(t *testing.T) {
			up := newMCPUpstream(t, mode.opts)
			e := newEnv(t, up.URL, nil, &Config{Keepalive: time.Second})
			listChanged := make(chan struct{}, 1)
			cs := connectClient(t, e, &mcp.ClientOptions{
				CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
					return &mcp.CreateMessageResult{Content: &mcp.TextContent{Text: "pong"}, Model: "test-model", Role: "assistant"}, nil
				},
				ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
					select {
					case listChanged <- struct{}{}:
					default:
					}
				},
			}, nil)
			if v := cs.InitializeResult().ProtocolVersion; v != "2024-11-05" {
				t.Errorf("negotiated %q, want 2024-11-05", v)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			tools, err := cs.ListTools(ctx, nil)
			if err != nil {
				t.Fatalf("ListTools: %v", err)
			}
			var names []string
			for _, tool := range tools.Tools {
				names = append(names, tool.Name)
			}
			slices.Sort(names)
			if !slices.Equal(names, []string{"block", "echo", "sample"}) {
				t.Errorf("tools %v", names)
			}
			if got := callEcho(t, cs, "hello"); got != "echo: hello" {
				t.Errorf("echo: %q", got)
			}

			// Concurrent calls each get their own answer.
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					text := "call-" + strconv.Itoa(i)
					ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
					defer cancel()
					res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
					if err != nil {
						t.Errorf("CallTool: %v", err)
						return
					}
					if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != "echo: "+text {
						t.Errorf("CallTool(%s) = %+v", text, res.Content[0])
					}
				})
			}
			wg.Wait()

			if !mode.stateful {
				return
			}
			// Sampling: the upstream's request reaches the legacy client on
			// its stream and the client's answer goes back upstream.
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "sample", Arguments: map[string]any{}})
			if err != nil {
				t.Fatalf("CallTool(sample): %v", err)
			}
			if got := toolText(t, res); got != "sampled: pong" {
				t.Errorf("sample: %q", got)
			}

			// The upstream GET stream: an unsolicited notification reaches
			// the client. The stream opens asynchronously, so keep changing
			// the tool list until one notification arrives.
			up.await(t, "the upstream GET stream", func(r recorded) bool { return r.Method == http.MethodGet })
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			deadline := time.NewTimer(waitLimit)
			defer deadline.Stop()
			for n := 0; ; n++ {
				up.server.AddTool(&mcp.Tool{Name: "extra-" + strconv.Itoa(n), InputSchema: map[string]any{"type": "object"}},
					func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) { return textResult("x"), nil })
				select {
				case <-listChanged:
					return
				case <-tick.C:
				case <-deadline.C:
					t.Fatal("notifications/tools/list_changed never reached the client")
				}
			}
		})
	}
}

// TestLegacyClientDefaultVersion: the go-sdk client's default handshake
// (server/discover first, then initialize) works through the bridge too.
func TestLegacyClientDefaultVersion(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts *mcp.StreamableHTTPOptions
	}{{"stateful-sse", statefulSSE}, {"stateless-json", statelessJSON}} {
		t.Run(mode.name, func(t *testing.T) {
			up := newMCPUpstream(t, mode.opts)
			e := newEnv(t, up.URL, nil, nil)
			cs := connectClientVersion(t, e, nil, nil, "")
			if v := cs.InitializeResult().ProtocolVersion; v == "" {
				t.Error("no protocol version negotiated")
			}
			if got := callEcho(t, cs, "default"); got != "echo: default" {
				t.Errorf("echo: %q", got)
			}
		})
	}
}

func TestStatusCodes(t *testing.T) {
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	e := newEnv(t, up.URL, nil, &Config{
		MaxMessageSize: 1024,
		AllowedOrigins: []string{"https://allowed.example"},
	})
	alice := http.Header{"Authorization": {"Bearer alice"}}
	s := openStream(t, e, alice)
	endpoint := e.srv.URL + s.endpoint
	note := `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`
	big := `{"jsonrpc":"2.0","method":"notifications/x","params":{"pad":"` + strings.Repeat("x", 1100) + `"}}`

	cases := []struct {
		name        string
		method      string
		url         string
		body        string
		contentType string
		header      http.Header
		want        int
		allow       string
	}{
		{"no sessionId", "POST", e.srv.URL + "/messages", note, "application/json", alice, 400, ""},
		{"empty sessionId", "POST", e.srv.URL + "/messages?sessionId=", note, "application/json", alice, 400, ""},
		{"sessionId the bridge never minted", "POST", e.srv.URL + "/messages?sessionId=not-a-bridge-session", note, "application/json", alice, 404, ""},
		{"other Authorization", "POST", endpoint, note, "application/json", http.Header{"Authorization": {"Bearer bob"}}, 404, ""},
		{"no Authorization", "POST", endpoint, note, "application/json", nil, 404, ""},
		{"bad JSON", "POST", endpoint, `{"jsonrpc":"2.0",`, "application/json", alice, 400, ""},
		{"empty body", "POST", endpoint, "", "application/json", alice, 400, ""},
		{"trailing garbage", "POST", endpoint, note + "x", "application/json", alice, 400, ""},
		{"not JSON-RPC", "POST", endpoint, `{"hello":"world"}`, "application/json", alice, 400, ""},
		{"wrong version", "POST", endpoint, `{"jsonrpc":"1.0","id":1,"method":"ping"}`, "application/json", alice, 400, ""},
		{"null id", "POST", endpoint, `{"jsonrpc":"2.0","id":null,"method":"ping"}`, "application/json", alice, 400, ""},
		{"JSON string", "POST", endpoint, `"ping"`, "application/json", alice, 400, ""},
		{"empty batch", "POST", endpoint, `[]`, "application/json", alice, 400, ""},
		{"batch with a bad element", "POST", endpoint, `[` + note + `,{"x":1}]`, "application/json", alice, 400, ""},
		{"over max size", "POST", endpoint, big, "application/json", alice, 413, ""},
		{"text/plain", "POST", endpoint, note, "text/plain", alice, 415, ""},
		{"no Content-Type", "POST", endpoint, note, "", alice, 415, ""},
		{"form", "POST", endpoint, note, "application/x-www-form-urlencoded", alice, 415, ""},
		{"bad Origin on POST", "POST", endpoint, note, "application/json", http.Header{"Authorization": {"Bearer alice"}, "Origin": {"https://evil.example"}}, 403, ""},
		{"bad Origin on GET", "GET", e.srv.URL + "/sse", "", "", http.Header{"Origin": {"https://evil.example"}}, 403, ""},
		{"null Origin", "GET", e.srv.URL + "/sse", "", "", http.Header{"Origin": {"null"}}, 403, ""},
		{"POST to sse", "POST", e.srv.URL + "/sse", note, "application/json", alice, 405, "GET"},
		{"DELETE to sse", "DELETE", e.srv.URL + "/sse", "", "", alice, 405, "GET"},
		{"GET messages", "GET", endpoint, "", "", alice, 405, "POST"},
		{"PUT messages", "PUT", endpoint, note, "application/json", alice, 405, "POST"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, h, body := doRaw(t, c.method, c.url, c.body, c.header, c.contentType)
			if code != c.want {
				t.Errorf("%s %s: %d %q, want %d", c.method, c.url, code, body, c.want)
			}
			if c.allow != "" && !strings.Contains(h.Get("Allow"), c.allow) {
				t.Errorf("Allow %q, want it to include %s", h.Get("Allow"), c.allow)
			}
		})
	}
	if reqs := up.requests(); len(reqs) != 0 {
		t.Errorf("refused messages reached the upstream: %d requests, first %s %q", len(reqs), reqs[0].Method, reqs[0].Body)
	}

	// What is allowed gets 202.
	ok := []struct {
		name, contentType string
		header            http.Header
		body              string
	}{
		{"charset parameter", "application/json; charset=utf-8", alice, note},
		{"allowed Origin", "application/json", http.Header{"Authorization": {"Bearer alice"}, "Origin": {"https://allowed.example"}}, note},
		{"same-host Origin", "application/json", http.Header{"Authorization": {"Bearer alice"}, "Origin": {e.srv.URL}}, note},
		{"exactly max size", "application/json", alice, `{"jsonrpc":"2.0","method":"n","params":{"p":"` + strings.Repeat("y", 1024-len(`{"jsonrpc":"2.0","method":"n","params":{"p":""}}`)) + `"}}`},
	}
	for _, c := range ok {
		code, h, body := postRaw(t, endpoint, c.body, c.header, c.contentType)
		if code != http.StatusAccepted {
			t.Errorf("%s: %d %q, want 202", c.name, code, body)
		}
		if o := c.header.Get("Origin"); o != "" && h.Get("Access-Control-Allow-Origin") != o {
			t.Errorf("%s: Access-Control-Allow-Origin %q", c.name, h.Get("Access-Control-Allow-Origin"))
		}
	}
	// A browser's preflight from an allowed origin.
	code, h, _ := doRaw(t, http.MethodOptions, endpoint, "", http.Header{"Origin": {"https://allowed.example"}}, "")
	if code/100 != 2 || !strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("OPTIONS: %d, Allow-Methods %q", code, h.Get("Access-Control-Allow-Methods"))
	}
}

// failingStore is a memory store whose Get and Create fail as an
// unreachable shared store would.
type failingStore struct {
	*memory.Store
	mu   sync.Mutex
	down bool
}

func (f *failingStore) isDown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *failingStore) setDown(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = v
}

func (f *failingStore) Get(ctx context.Context, id string) (*sessionstore.Session, error) {
	if f.isDown() {
		return nil, fmt.Errorf("%w: connection refused", sessionstore.ErrUnavailable)
	}
	return f.Store.Get(ctx, id)
}

func (f *failingStore) Create(ctx context.Context, s *sessionstore.Session) error {
	if f.isDown() {
		return fmt.Errorf("%w: connection refused", sessionstore.ErrUnavailable)
	}
	return f.Store.Create(ctx, s)
}

// TestStoreUnavailable: 503 with Retry-After while the store is out of
// reach, and service again once it is back.
func TestStoreUnavailable(t *testing.T) {
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	u, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	store := &failingStore{Store: memory.New(memory.Options{})}
	b, err := New(Config{Upstream: u}, store)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{bridge: b, srv: httptest.NewServer(b)}
	t.Cleanup(func() {
		b.Shutdown()
		e.srv.Close()
		b.Close()
	})
	s := openStream(t, e, nil)
	store.setDown(true)
	for _, c := range []struct{ method, url, body string }{
		{http.MethodPost, e.srv.URL + s.endpoint, initializedNote},
		{http.MethodGet, e.srv.URL + "/sse", ""},
	} {
		ct := ""
		if c.body != "" {
			ct = "application/json"
		}
		code, h, body := doRaw(t, c.method, c.url, c.body, nil, ct)
		if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
			t.Errorf("%s %s with the store down: %d, Retry-After %q, body %q; want 503 with Retry-After", c.method, c.url, code, h.Get("Retry-After"), body)
		}
	}
	store.setDown(false)
	if code := s.post(t, initializedNote); code != http.StatusAccepted {
		t.Errorf("POST once the store is back: %d", code)
	}
}

// TestShutdownEndsStreams: Shutdown ends open streams with a final comment.
func TestShutdownEndsStreams(t *testing.T) {
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	e.bridge.Shutdown()
	deadline := time.Now().Add(waitLimit)
	sawComment := false
	for {
		select {
		case it, ok := <-s.items:
			if !ok {
				if !sawComment {
					t.Error("stream ended without a final comment")
				}
				return
			}
			if it.isComment && !strings.HasPrefix(it.comment, "ping") {
				sawComment = true
			}
		case <-time.After(time.Until(deadline)):
			t.Fatal("stream still open after Shutdown")
		}
	}
}

// TestCloseReleasesGoroutines: once a bridge is shut down and closed, and
// its streams and clients are gone, nothing of it keeps running. In
// particular the upstream connections of the transport it made for itself
// (Config.Transport nil) must not stay open in its idle pool.
func TestCloseReleasesGoroutines(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	ignore := goleak.IgnoreCurrent()

	u, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Options{})
	b, err := New(Config{Upstream: u}, store)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{bridge: b, store: store, srv: httptest.NewServer(b)}
	client := mcp.NewClient(&mcp.Implementation{Name: "leak-test", Version: "1"}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs, err := client.Connect(ctx,
		&mcp.SSEClientTransport{Endpoint: e.srv.URL + "/sse", HTTPClient: e.srv.Client()},
		&mcp.ClientSessionOptions{ProtocolVersion: "2024-11-05"})
	if err != nil {
		b.Shutdown()
		e.srv.Close()
		b.Close()
		t.Fatalf("Connect: %v", err)
	}
	callEcho(t, cs, "x")
	// Let the last upstream response finish, so that its connection goes
	// back to the idle pool rather than being cut by Shutdown.
	awaitIdle(t, b, sessionOf(t, e))
	_ = cs.Close()
	b.Shutdown()
	e.srv.Close()
	b.Close()
	// The upstream keeps its session (the bridge ends it only on expiry);
	// end it here so that only the bridge's own goroutines can remain.
	for ss := range up.server.Sessions() {
		_ = ss.Close()
	}
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left after Shutdown and Close: %v", err)
	}
}
