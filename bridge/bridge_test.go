package bridge

// End-to-end tests within the process: a go-sdk Streamable HTTP upstream (or
// a hand-written one) behind httptest, the bridge behind httptest, and either
// the go-sdk legacy SSE client or raw HTTP on the legacy side.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
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

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitLimit bounds every wait for something the bridge or upstream does.
const waitLimit = 10 * time.Second

// ---------------------------------------------------------------------------
// Upstreams

// recorded is one request that reached the upstream.
type recorded struct {
	Method string
	Host   string
	Header http.Header
	Body   string
}

// testUpstream records every request and hands it to a handler that tests
// can swap.
type testUpstream struct {
	URL string
	srv *httptest.Server

	// server and opts are set for go-sdk upstreams.
	server *mcp.Server
	opts   *mcp.StreamableHTTPOptions
	// release unblocks the "block" tool.
	release     chan struct{}
	releaseOnce sync.Once

	deletes chan recorded

	mu      sync.Mutex
	handler http.Handler
	reqs    []recorded
	// probes are the authorization probes (a GET without a session) that
	// new streams send, kept apart from the requests they carry.
	probes  []recorded
	changed chan struct{}
}

func (u *testUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := recorded{Method: r.Method, Host: r.Host, Header: r.Header.Clone(), Body: string(body)}
	u.mu.Lock()
	if r.Method == http.MethodGet && r.Header.Get("Mcp-Session-Id") == "" {
		u.probes = append(u.probes, rec)
	} else {
		u.reqs = append(u.reqs, rec)
	}
	close(u.changed)
	u.changed = make(chan struct{})
	h := u.handler
	u.mu.Unlock()
	if r.Method == http.MethodDelete {
		select {
		case u.deletes <- rec:
		default:
		}
	}
	h.ServeHTTP(w, r)
}

func (u *testUpstream) probeCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.probes)
}

func (u *testUpstream) requests() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.reqs)
}

// await returns the first recorded request matching pred, waiting for it.
func (u *testUpstream) await(t *testing.T, what string, pred func(recorded) bool) recorded {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		for _, r := range u.reqs {
			if pred(r) {
				u.mu.Unlock()
				return r
			}
		}
		ch := u.changed
		u.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("upstream never received %s", what)
		}
	}
}

func (u *testUpstream) unblock() { u.releaseOnce.Do(func() { close(u.release) }) }

func newRecorder(t *testing.T, h http.Handler) *testUpstream {
	u := &testUpstream{
		handler: h,
		changed: make(chan struct{}),
		deletes: make(chan recorded, 16),
		release: make(chan struct{}),
	}
	u.srv = httptest.NewServer(u)
	u.URL = u.srv.URL + "/mcp"
	return u
}

// newFakeUpstream serves h, a hand-written upstream.
func newFakeUpstream(t *testing.T, h http.HandlerFunc) *testUpstream {
	u := newRecorder(t, h)
	t.Cleanup(u.srv.Close)
	return u
}

type echoArgs struct {
	Text string `json:"text"`
}

type noArgs struct{}

func textResult(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// newMCPUpstream serves a go-sdk server with the tools echo, sample (which
// asks the client to sample through the session) and block (which waits for
// unblock).
func newMCPUpstream(t *testing.T, opts *mcp.StreamableHTTPOptions) *testUpstream {
	server := mcp.NewServer(&mcp.Implementation{Name: "test-upstream", Version: "1.0.0"}, nil)
	u := newRecorder(t, nil)
	u.server, u.opts = server, opts
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "echoes text"},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			return textResult("echo: " + in.Text), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "sample", Description: "samples through the client"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			res, err := req.Session.CreateMessage(ctx, &mcp.CreateMessageParams{
				Messages:  []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "ping"}}},
				MaxTokens: 16,
			})
			if err != nil {
				return nil, nil, err
			}
			text, _ := res.Content.(*mcp.TextContent)
			if text == nil {
				return nil, nil, fmt.Errorf("sampling returned %T", res.Content)
			}
			return textResult("sampled: " + text.Text), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "block", Description: "waits until the test lets it go"},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			select {
			case <-u.release:
				return textResult("released"), nil, nil
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		})
	u.handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, opts)
	t.Cleanup(func() {
		u.unblock()
		for ss := range server.Sessions() {
			_ = ss.Close()
		}
		u.srv.Close()
	})
	return u
}

// replaceHandler swaps in a fresh go-sdk handler for the same server: the
// sessions of the old one are unknown to it (404), as after an upstream
// restart.
func (u *testUpstream) replaceHandler() {
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return u.server }, u.opts)
	u.mu.Lock()
	u.handler = h
	u.mu.Unlock()
}

var (
	statefulSSE   = &mcp.StreamableHTTPOptions{}
	statelessJSON = &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true}
)

// refusedURL is an http URL on which nothing listens.
func refusedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/mcp"
}

// ---------------------------------------------------------------------------
// The bridge

type testEnv struct {
	bridge *Bridge
	store  *memory.Store
	srv    *httptest.Server
}

func newEnv(t *testing.T, upstream string, store *memory.Store, cfg *Config) *testEnv {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.Upstream = u
	if store == nil {
		store = memory.New(memory.Options{})
	}
	b, err := New(c, store)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e := &testEnv{bridge: b, store: store, srv: httptest.NewServer(b)}
	t.Cleanup(func() {
		b.Shutdown()
		e.srv.Close()
		b.Close()
	})
	return e
}

// ---------------------------------------------------------------------------
// Raw legacy side

// sseItem is one comment or one event of a raw stream.
type sseItem struct {
	comment   string
	isComment bool
	id        string
	hasID     bool
	name      string
	data      string
}

type rawStream struct {
	resp      *http.Response
	header    http.Header // request headers, reused by post
	items     chan sseItem
	cancel    context.CancelFunc
	done      chan struct{}
	endpoint  string
	sessionID string
	e         *testEnv
}

// openStream opens GET /sse with hdr (a "Host" entry sets the request's
// host) and reads up to the endpoint event.
func openStream(t *testing.T, e *testEnv, hdr http.Header) *rawStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/sse", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if h := hdr.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /sse: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET /sse: %s %s", resp.Status, body)
	}
	s := &rawStream{
		resp:   resp,
		header: hdr,
		items:  make(chan sseItem, 1024),
		cancel: cancel,
		done:   make(chan struct{}),
		e:      e,
	}
	go s.read(ctx)
	t.Cleanup(s.close)
	first := s.nextEvent(t)
	if first.name != "endpoint" {
		t.Fatalf("first event is %+v, want an endpoint event", first)
	}
	s.endpoint = first.data
	u, err := url.Parse(first.data)
	if err != nil {
		t.Fatalf("endpoint %q: %v", first.data, err)
	}
	s.sessionID = u.Query().Get("sessionId")
	return s
}

// read parses the stream independently of the bridge's own EventReader.
func (s *rawStream) read(ctx context.Context) {
	defer close(s.done)
	defer close(s.items)
	br := bufio.NewReaderSize(s.resp.Body, 64<<10)
	var (
		cur     sseItem
		started bool
		data    []string
	)
	send := func(it sseItem) bool {
		select {
		case s.items <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		switch {
		case line == "":
			if started {
				cur.data = strings.Join(data, "\n")
				if !send(cur) {
					return
				}
			}
			cur, started, data = sseItem{}, false, nil
		case strings.HasPrefix(line, ":"):
			if !send(sseItem{isComment: true, comment: strings.TrimSpace(line[1:])}) {
				return
			}
		default:
			field, value, ok := strings.Cut(line, ":")
			if !ok {
				// The bridge must never write a field line without a colon
				// (the go-sdk legacy client fails on it).
				send(sseItem{isComment: true, comment: "MALFORMED " + line})
				continue
			}
			value = strings.TrimPrefix(value, " ")
			started = true
			switch field {
			case "data":
				data = append(data, value)
			case "event":
				cur.name = value
			case "id":
				cur.id, cur.hasID = value, true
			}
		}
	}
}

func (s *rawStream) close() {
	s.cancel()
	s.resp.Body.Close()
	<-s.done
}

// next returns the next item, comment or event.
func (s *rawStream) next(t *testing.T, timeout time.Duration) sseItem {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case it, ok := <-s.items:
		if !ok {
			t.Fatal("stream ended")
		}
		if strings.HasPrefix(it.comment, "MALFORMED ") {
			t.Fatalf("bridge wrote a field line without a colon: %q", it.comment)
		}
		return it
	case <-timer.C:
		t.Fatalf("nothing on the stream within %v", timeout)
	}
	return sseItem{}
}

// nextEvent returns the next event, skipping comments.
func (s *rawStream) nextEvent(t *testing.T) sseItem {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		it := s.next(t, time.Until(deadline))
		if !it.isComment {
			return it
		}
	}
}

// awaitResponses reads message events until there is a response for every
// id (raw JSON bytes); it fails on a second response for one id, and names
// the ids still unanswered when it gives up. Other messages are returned in
// others.
func (s *rawStream) awaitResponses(t *testing.T, ids ...string) (byID map[string]sseItem, others []sseItem) {
	t.Helper()
	byID = map[string]sseItem{}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for len(byID) < len(want) {
		var ev sseItem
		select {
		case it, ok := <-s.items:
			if !ok {
				t.Fatalf("stream ended; unanswered: %v", missing(want, byID))
			}
			if it.isComment {
				if strings.HasPrefix(it.comment, "MALFORMED ") {
					t.Fatalf("bridge wrote a field line without a colon: %q", it.comment)
				}
				continue
			}
			ev = it
		case <-deadline.C:
			t.Fatalf("no response within %v for %d of %d ids: %v", waitLimit, len(want)-len(byID), len(want), missing(want, byID))
		}
		if ev.name != "message" {
			t.Fatalf("event %q after the endpoint: %+v", ev.name, ev)
		}
		if !json.Valid([]byte(ev.data)) {
			t.Fatalf("message event data is not JSON: %q", ev.data)
		}
		env, err := PeekEnvelope([]byte(ev.data))
		if err != nil {
			t.Fatalf("message event is not JSON-RPC (%v): %s", err, ev.data)
		}
		if env.Kind == KindResponse && want[string(env.ID)] {
			if _, dup := byID[string(env.ID)]; dup {
				t.Fatalf("second response for id %s: %s", env.ID, ev.data)
			}
			byID[string(env.ID)] = ev
			continue
		}
		others = append(others, ev)
	}
	return byID, others
}

func missing(want map[string]bool, got map[string]sseItem) []string {
	var out []string
	for id := range want {
		if _, ok := got[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func (s *rawStream) awaitResponse(t *testing.T, id string) sseItem {
	t.Helper()
	got, _ := s.awaitResponses(t, id)
	return got[id]
}

// post sends body to the stream's endpoint with the stream's headers.
func (s *rawStream) post(t *testing.T, body string) int {
	t.Helper()
	code, _, _ := postRaw(t, s.e.srv.URL+s.endpoint, body, s.header, "application/json")
	return code
}

// mustPost posts and expects 202.
func (s *rawStream) mustPost(t *testing.T, body string) {
	t.Helper()
	if code := s.post(t, body); code != http.StatusAccepted {
		t.Fatalf("POST %s: %d, want 202", body, code)
	}
}

func postRaw(t *testing.T, u, body string, hdr http.Header, contentType string) (int, http.Header, string) {
	t.Helper()
	return doRaw(t, http.MethodPost, u, body, hdr, contentType)
}

func doRaw(t *testing.T, method, u, body string, hdr http.Header, contentType string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if h := hdr.Get("Host"); h != "" {
		req.Host = h
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

const initializeRequest = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"raw-test","version":"0"}}}`

const initializedNote = `{"jsonrpc":"2.0","method":"notifications/initialized"}`

// initialize runs the initialize handshake on a raw stream and returns the
// initialize response event.
func (s *rawStream) initialize(t *testing.T) sseItem {
	t.Helper()
	s.mustPost(t, initializeRequest)
	ev := s.awaitResponse(t, `1`)
	if !strings.Contains(ev.data, `"result"`) {
		t.Fatalf("initialize failed: %s", ev.data)
	}
	s.mustPost(t, initializedNote)
	return ev
}

func echoCall(id, text string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"echo","arguments":{"text":%q}}}`, id, text)
}

// resultText returns the text of a tools/call result message.
func resultText(t *testing.T, data string) string {
	t.Helper()
	var msg struct {
		Result struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(data), &msg); err != nil || len(msg.Result.Content) == 0 {
		t.Fatalf("not a tools/call result: %s", data)
	}
	return msg.Result.Content[0].Text
}

// ---------------------------------------------------------------------------
// The go-sdk legacy client

type headerTransport struct {
	base   http.RoundTripper
	header http.Header
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.header {
		r.Header[k] = v
	}
	return h.base.RoundTrip(r)
}

// connectClient connects the go-sdk legacy SSE client through the bridge,
// asking for protocol 2024-11-05 as a legacy client would.
func connectClient(t *testing.T, e *testEnv, opts *mcp.ClientOptions, hdr http.Header) *mcp.ClientSession {
	t.Helper()
	return connectClientVersion(t, e, opts, hdr, "2024-11-05")
}

// connectClientVersion connects the go-sdk legacy SSE client asking for
// version ("" for the SDK's default).
func connectClientVersion(t *testing.T, e *testEnv, opts *mcp.ClientOptions, hdr http.Header, version string) *mcp.ClientSession {
	t.Helper()
	client := mcp.NewClient(&mcp.Implementation{Name: "legacy-test-client", Version: "1.0.0"}, opts)
	httpClient := e.srv.Client()
	if hdr != nil {
		httpClient = &http.Client{Transport: headerTransport{base: httpClient.Transport, header: hdr}}
	}
	// The context also carries the client's GET stream: it must outlive
	// Connect. It is cancelled if the handshake hangs.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	hang := time.AfterFunc(waitLimit, cancel)
	cs, err := client.Connect(ctx,
		&mcp.SSEClientTransport{Endpoint: e.srv.URL + "/sse", HTTPClient: httpClient},
		&mcp.ClientSessionOptions{ProtocolVersion: version})
	hang.Stop()
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	return cs
}

func callEcho(t *testing.T, cs *mcp.ClientSession, text string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": text}})
	if err != nil {
		t.Fatalf("CallTool(echo %q): %v", text, err)
	}
	return toolText(t, res)
}

func toolText(t *testing.T, res *mcp.CallToolResult) string {
	t.Helper()
	if res.IsError || len(res.Content) == 0 {
		t.Fatalf("tool result: %+v", res)
	}
	tc, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		t.Fatalf("tool result content %T", res.Content[0])
	}
	return tc.Text
}

// ---------------------------------------------------------------------------
// Tests

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

// sessionOf returns the id of the only session in the store.
func sessionOf(t *testing.T, e *testEnv) string {
	t.Helper()
	all, err := e.store.Expired(context.Background(), time.Now().Add(24*time.Hour), 10)
	if err != nil || len(all) != 1 {
		t.Fatalf("store holds %d sessions (%v), want 1", len(all), err)
	}
	return all[0].ID
}

// TestSessionExpiry: once the stream is gone for longer than the session
// TTL, the session is removed and the upstream session ends with DELETE.
func TestSessionExpiry(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{SessionTTL: 20 * time.Millisecond})
	cs := connectClient(t, e, nil, http.Header{"Authorization": {"Bearer expiry-token"}})
	if got := callEcho(t, cs, "x"); got != "echo: x" {
		t.Fatalf("echo: %q", got)
	}
	used := up.await(t, "a request with a session", func(r recorded) bool { return r.Header.Get("Mcp-Session-Id") != "" })
	upstreamID := used.Header.Get("Mcp-Session-Id")
	if err := cs.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	select {
	case del := <-up.deletes:
		if got := del.Header.Get("Mcp-Session-Id"); got != upstreamID {
			t.Errorf("DELETE for session %q, want %q", got, upstreamID)
		}
		if got := del.Header.Get("Authorization"); got != "Bearer expiry-token" {
			t.Errorf("DELETE Authorization %q", got)
		}
		if got := del.Header.Get("Mcp-Protocol-Version"); got != "2024-11-05" {
			t.Errorf("DELETE MCP-Protocol-Version %q", got)
		}
	case <-time.After(waitLimit):
		t.Fatal("no DELETE upstream after the session expired")
	}
	if n := e.store.Len(); n != 0 {
		t.Errorf("%d sessions left in the store", n)
	}
	// Exactly one DELETE.
	n := 0
	for _, r := range up.requests() {
		if r.Method == http.MethodDelete {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d DELETE requests", n)
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

// TestPostAnsweredBeforeResults: a JSON-mode upstream sends its status line
// only with the result, so the bridge answers the legacy POST after
// acceptWait at the latest (DESIGN §4, mcp-transports §6.2), for a single
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

// awaitReleased waits until the session has no owner: its stream has ended
// on the bridge's side. The store has no change notifications for records,
// so this polls.
func awaitReleased(t *testing.T, e *testEnv, id string) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		sess, err := e.store.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("session %s: %v", id, err)
		}
		if sess.Owner == "" {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("session %s still owned by %q after its stream closed", id, sess.Owner)
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

// TestAuthChallengePassedBack: an upstream's 401 with WWW-Authenticate
// reaches the client on its GET (the bridge probes the upstream before the
// stream opens) and on its POST, so that it can run its authorization flow;
// the challenge names the bridge's metadata URL, where the upstream's
// metadata is served with the bridge as its resource.
func TestAuthChallengePassedBack(t *testing.T) {
	metadata := `{"resource":"http://upstream.example/mcp","authorization_servers":["https://auth.example"],"scopes_supported":["tools"]}`
	// refuseGET: whether the upstream refuses stale tokens on GET too (an
	// upstream that checks every request) or only on POST.
	newUpstream := func(refuseGET bool) *testUpstream {
		var up *testUpstream
		up = newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/.well-known/oauth-protected-resource/mcp" {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, metadata)
				return
			}
			if r.Header.Get("Authorization") != "Bearer good" && (refuseGET || r.Method == http.MethodPost) {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", resource_metadata="`+up.srv.URL+`/.well-known/oauth-protected-resource/mcp"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"error":"invalid_token"}`)
				return
			}
			if r.Method == http.MethodGet {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-03-26","capabilities":{},"serverInfo":{"name":"u","version":"1"}}}`)
		})
		return up
	}
	checkChallenge := func(t *testing.T, e *testEnv, what string, h http.Header, body string) {
		t.Helper()
		want := `Bearer error="invalid_token", resource_metadata="` + e.srv.URL + `/.well-known/oauth-protected-resource/sse"`
		if got := h.Get("WWW-Authenticate"); got != want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", what, got, want)
		}
		if body != `{"error":"invalid_token"}` {
			t.Errorf("%s: body %q", what, body)
		}
	}

	t.Run("GET", func(t *testing.T) {
		up := newUpstream(true)
		e := newEnv(t, up.URL, nil, nil)
		for _, token := range []string{"", "Bearer stale"} {
			hdr := http.Header{}
			if token != "" {
				hdr.Set("Authorization", token)
			}
			code, h, body := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", hdr, "")
			if code != http.StatusUnauthorized {
				t.Fatalf("GET /sse with token %q: %d %q, want 401", token, code, body)
			}
			checkChallenge(t, e, "GET /sse", h, body)
		}
		if all, err := e.store.Expired(context.Background(), time.Now().Add(24*time.Hour), 10); err != nil || len(all) != 0 {
			t.Errorf("sessions after refused GETs: %d (%v), want none", len(all), err)
		}
		// The metadata the challenge names: the upstream's, for the bridge.
		code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/.well-known/oauth-protected-resource/sse", "", nil, "")
		var got map[string]any
		if code != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
			t.Fatalf("GET metadata: %d %q", code, body)
		}
		if got["resource"] != e.srv.URL+"/sse" {
			t.Errorf("metadata resource %v, want %s", got["resource"], e.srv.URL+"/sse")
		}
		if servers, _ := got["authorization_servers"].([]any); len(servers) != 1 || servers[0] != "https://auth.example" {
			t.Errorf("metadata authorization_servers %v, want the upstream's", got["authorization_servers"])
		}
		openStream(t, e, http.Header{"Authorization": {"Bearer good"}})
	})
	t.Run("POST", func(t *testing.T) {
		up := newUpstream(false)
		e := newEnv(t, up.URL, nil, nil)
		s := openStream(t, e, http.Header{"Authorization": {"Bearer stale"}})
		code, h, body := postRaw(t, e.srv.URL+s.endpoint, initializeRequest, s.header, "application/json")
		if code != http.StatusUnauthorized {
			t.Fatalf("POST initialize with a stale token: %d %q, want 401", code, body)
		}
		checkChallenge(t, e, "POST", h, body)
	})
	t.Run("token in the query", func(t *testing.T) {
		up := newUpstream(false)
		e := newEnv(t, up.URL, nil, nil)
		code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/sse?access_token=good", "", nil, "")
		if code != http.StatusBadRequest {
			t.Errorf("GET /sse?access_token=…: %d %q, want 400", code, body)
		}
		if n := len(up.requests()) + up.probeCount(); n != 0 {
			t.Errorf("%d upstream requests for a token in the query, want none", n)
		}
	})
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

// holdingUpstream answers every POST carrying "hold" in its body with an
// event stream that stays open, without a response, until released; it
// answers notifications with 202 and other requests at once.
func holdingUpstream(t *testing.T) (*testUpstream, func()) {
	release := make(chan struct{})
	var once sync.Once
	answer := []byte(`{"jsonrpc":"2.0","id":0,"result":{"content":[{"type":"text","text":"done"}]}}`)
	answerEnv := mustPeek(t, answer)
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		env, err := PeekEnvelope(body)
		switch {
		case err != nil:
			http.Error(w, "bad", http.StatusBadRequest)
		case env.Kind != KindRequest:
			w.WriteHeader(http.StatusAccepted)
		case bytes.Contains(body, []byte("hold")):
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			_ = http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(ReplaceID(answer, answerEnv, env.ID))
		}
	})
	rel := func() { once.Do(func() { close(release) }) }
	t.Cleanup(rel) // registered after the server's Close: runs before it
	return up, rel
}

func mustPeek(t *testing.T, msg []byte) Envelope {
	t.Helper()
	env, err := PeekEnvelope(msg)
	if err != nil {
		t.Fatalf("PeekEnvelope(%s): %v", msg, err)
	}
	return env
}

// awaitIdle waits until the bridge has no upstream request in flight for
// the session: every forward has finished, answer or error included.
func awaitIdle(t *testing.T, b *Bridge, id string) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		n := b.inflight[id]
		b.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%d upstream requests still in flight", n)
		}
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
