package bridge

// The harness of the package's tests, end to end within the process: a
// go-sdk Streamable HTTP upstream (or a hand-written one) behind httptest, the
// bridge behind httptest, and either the go-sdk legacy SSE client or raw HTTP
// on the legacy side; and the waits on the bridge's state they share.

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
	"slices"
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

// handwrittenUpstream is a minimal Streamable HTTP server in JSON mode:
// notifications and responses get 202, initialize its result, and every
// other request goes to call.
func handwrittenUpstream(call func(w http.ResponseWriter, env Envelope)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		env, err := PeekEnvelope(body)
		switch {
		case err != nil || env.Kind != KindRequest:
			w.WriteHeader(http.StatusAccepted)
		case env.Method == "initialize":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-03-26","capabilities":{},"serverInfo":{"name":"handwritten","version":"0"}}}`, env.ID)
		default:
			call(w, env)
		}
	}
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
	// It takes resource subscriptions (to any URI), so that tests can
	// follow them to a new upstream session.
	server := mcp.NewServer(&mcp.Implementation{Name: "test-upstream", Version: "1.0.0"}, &mcp.ServerOptions{
		SubscribeHandler:   func(context.Context, *mcp.SubscribeRequest) error { return nil },
		UnsubscribeHandler: func(context.Context, *mcp.UnsubscribeRequest) error { return nil },
	})
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
	return startEnv(t, c, store, store)
}

// startEnv serves a bridge with cfg on given (which may wrap store) and
// ends it with the test.
func startEnv(t *testing.T, cfg Config, store *memory.Store, given sessionstore.Store) *testEnv {
	t.Helper()
	b, err := New(cfg, given)
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
	req := rawRequest(ctx, t, http.MethodGet, e.srv.URL+"/sse", nil, hdr)
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

// rawRequest is a request with hdr, whose "Host" entry sets the request's
// host.
func rawRequest(ctx context.Context, t *testing.T, method, u string, body io.Reader, hdr http.Header) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if h := hdr.Get("Host"); h != "" {
		req.Host = h
	}
	return req
}

func doRaw(t *testing.T, method, u, body string, hdr http.Header, contentType string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := rawRequest(ctx, t, method, u, rd, hdr)
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
	return connectWith(t, e, newLegacyClient(opts), hdr, version)
}

func newLegacyClient(opts *mcp.ClientOptions) *mcp.Client {
	return mcp.NewClient(&mcp.Implementation{Name: "legacy-test-client", Version: "1.0.0"}, opts)
}

// connectWith connects client with the go-sdk legacy SSE transport.
func connectWith(t *testing.T, e *testEnv, client *mcp.Client, hdr http.Header, version string) *mcp.ClientSession {
	t.Helper()
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
// Waiting for the bridge

// sessionOf returns the id of the only session in the store.
func sessionOf(t *testing.T, e *testEnv) string {
	t.Helper()
	all, err := e.store.Expired(context.Background(), time.Now().Add(24*time.Hour), 10)
	if err != nil || len(all) != 1 {
		t.Fatalf("store holds %d sessions (%v), want 1", len(all), err)
	}
	return all[0].ID
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
