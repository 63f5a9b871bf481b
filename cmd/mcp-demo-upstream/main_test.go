package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lineWriter reports each complete line written to it on lines.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
			return 0, errors.New("too many lines")
		}
		w.buf = w.buf[i+1:]
	}
}

var listeningLine = regexp.MustCompile(`^listening on (http://127\.0\.0\.1:[1-9][0-9]*/mcp)$`)

// upstream is a server started in-process by startServer.
type upstream struct {
	url    string
	stop   context.CancelFunc
	done   chan error
	stdout *lineWriter
	stderr *syncBuffer
}

// startServer runs the command in-process with args and returns once it has
// announced its address. The server is stopped when the test ends, and must
// exit cleanly and promptly.
func startServer(t *testing.T, args ...string) *upstream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	u := &upstream{
		stop:   cancel,
		done:   make(chan error, 1),
		stdout: &lineWriter{lines: make(chan string, 10)},
		stderr: &syncBuffer{},
	}
	go func() { u.done <- run(ctx, args, u.stdout, u.stderr) }()
	select {
	case line := <-u.stdout.lines:
		m := listeningLine.FindStringSubmatch(line)
		if m == nil {
			cancel()
			<-u.done
			t.Fatalf("first stdout line = %q, want %q", line, listeningLine)
		}
		u.url = m[1]
	case err := <-u.done:
		cancel()
		t.Fatalf("run(%q) returned before listening: %v\nstderr:\n%s", args, err, u.stderr)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("run(%q) did not announce its address", args)
	}
	t.Cleanup(func() {
		if err := u.shutdown(3 * time.Second); err != nil {
			t.Error(err)
		}
		select {
		case line := <-u.stdout.lines:
			t.Errorf("unexpected extra stdout line %q", line)
		default:
		}
		if t.Failed() {
			t.Logf("server stderr:\n%s", u.stderr)
		}
	})
	return u
}

// shutdown stops the server and waits up to timeout for run to return.
// It is idempotent.
func (u *upstream) shutdown(timeout time.Duration) error {
	u.stop()
	select {
	case err, ok := <-u.done:
		if !ok {
			return nil
		}
		close(u.done)
		if err != nil {
			return fmt.Errorf("run returned %v after cancellation", err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("run did not return within %v of cancellation", timeout)
	}
}

// headerTransport adds fixed headers to every request.
type headerTransport struct {
	base    http.RoundTripper
	headers map[string]string
}

func (t *headerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, v := range t.headers {
		req.Header.Set(k, v)
	}
	return t.base.RoundTrip(req)
}

// newHTTPClient returns a client with its own connection pool, closed when
// the test ends, that sends the X-Test and Authorization headers.
func newHTTPClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: &headerTransport{
		base:    tr,
		headers: map[string]string{"X-Test": "x-test-value", "Authorization": "Bearer demo-token"},
	}}
}

// testClient is an MCP client session together with the observations of its
// handlers.
type testClient struct {
	*mcp.ClientSession
	progress chan *mcp.ProgressNotificationParams
}

var testRoots = []string{"file:///tmp/root-one", "file:///tmp/root-two"}

// connect connects a go-sdk client, with sampling, elicitation and roots
// support, to url. If version is not empty the client asks for that protocol
// version.
func connect(t *testing.T, url, version string) *testClient {
	t.Helper()
	tc := &testClient{progress: make(chan *mcp.ProgressNotificationParams, 100)}
	client := mcp.NewClient(&mcp.Implementation{Name: "demo-test-client", Version: "v0.0.1"}, &mcp.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			p := req.Params
			if p.MaxTokens != 100 || len(p.Messages) != 1 || p.Messages[0].Role != "user" {
				return nil, fmt.Errorf("unexpected sampling request %+v", p)
			}
			text, ok := p.Messages[0].Content.(*mcp.TextContent)
			if !ok {
				return nil, fmt.Errorf("unexpected sampling content %T", p.Messages[0].Content)
			}
			return &mcp.CreateMessageResult{
				Role:    "assistant",
				Model:   "test-model",
				Content: &mcp.TextContent{Text: "reply to " + text.Text},
			}, nil
		},
		ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			if req.Params.Message != "Who are you?" {
				return &mcp.ElicitResult{Action: "decline"}, nil
			}
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "Ada"}}, nil
		},
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			select {
			case tc.progress <- req.Params:
			default:
			}
		},
	})
	for _, uri := range testRoots {
		client.AddRoots(&mcp.Root{URI: uri})
	}
	transport := &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: newHTTPClient(t), MaxRetries: -1}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var opts *mcp.ClientSessionOptions
	if version != "" {
		opts = &mcp.ClientSessionOptions{ProtocolVersion: version}
	}
	cs, err := client.Connect(ctx, transport, opts)
	if err != nil {
		t.Fatalf("Connect(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	tc.ClientSession = cs
	return tc
}

// callText calls a tool and returns its single text content and isError.
func callText(t *testing.T, cs *testClient, params *mcp.CallToolParams) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, params)
	if err != nil {
		t.Fatalf("CallTool(%s): %v", params.Name, err)
	}
	if len(res.Content) != 1 {
		t.Fatalf("CallTool(%s): got %d contents, want 1", params.Name, len(res.Content))
	}
	text, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		t.Fatalf("CallTool(%s): content is %T, want *mcp.TextContent", params.Name, res.Content[0])
	}
	return text.Text, res.IsError
}

func call(name string, args map[string]any) *mcp.CallToolParams {
	return &mcp.CallToolParams{Name: name, Arguments: args}
}

// wantText checks that a call succeeds with the given text.
func wantText(t *testing.T, cs *testClient, params *mcp.CallToolParams, want string) {
	t.Helper()
	got, isErr := callText(t, cs, params)
	if isErr || got != want {
		t.Errorf("%s(%v) = %q (isError %v), want %q", params.Name, params.Arguments, truncate(got), isErr, truncate(want))
	}
}

// wantToolError checks that a call fails with a tool error whose text
// contains substr.
func wantToolError(t *testing.T, cs *testClient, params *mcp.CallToolParams, substr string) {
	t.Helper()
	got, isErr := callText(t, cs, params)
	if !isErr || !strings.Contains(got, substr) {
		t.Errorf("%s(%v) = %q (isError %v), want a tool error containing %q", params.Name, params.Arguments, got, isErr, substr)
	}
}

func truncate(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s...(%d bytes)", s[:80], len(s))
	}
	return s
}

// mode describes a server configuration and what a go-sdk client gets from it.
type mode struct {
	name string
	args []string
	// clientVersion is the protocol version the client asks for ("" = SDK default).
	clientVersion string
	// wantVersion is the negotiated protocol version.
	wantVersion string
	// stateful reports whether the server hands out a session id.
	stateful bool
	// progress reports whether progress notifications reach the client.
	progress bool
	// clientInput reports whether sample, elicit and roots can reach the client.
	clientInput bool
}

var modes = []mode{
	{name: "stateful-sse", args: []string{"-mode", "stateful"}, wantVersion: "2025-11-25", stateful: true, progress: true, clientInput: true},
	{name: "stateful-json", args: []string{"-json"}, wantVersion: "2025-11-25", stateful: true, progress: true, clientInput: true},
	{name: "stateful-sse-event-store", args: []string{"-event-store"}, wantVersion: "2025-11-25", stateful: true, progress: true, clientInput: true},
	{name: "stateful-sse-2025-06-18", args: nil, clientVersion: "2025-06-18", wantVersion: "2025-06-18", stateful: true, progress: true, clientInput: true},
	{name: "stateless-json", args: []string{"-mode", "stateless", "-json"}, wantVersion: "2026-07-28", progress: false, clientInput: true},
	{name: "stateless-sse", args: []string{"-mode", "stateless"}, wantVersion: "2026-07-28", progress: true, clientInput: true},
	{name: "stateless-sse-modern-only", args: []string{"-mode", "stateless", "-modern-only", "-event-store"}, wantVersion: "2026-07-28", progress: true, clientInput: true},
	{name: "stateless-sse-legacy-client", args: []string{"-mode", "stateless"}, clientVersion: "2025-11-25", wantVersion: "2025-11-25", progress: true, clientInput: false},
	{name: "stateless-json-legacy-client", args: []string{"-mode", "stateless", "-json"}, clientVersion: "2025-11-25", wantVersion: "2025-11-25", progress: false, clientInput: false},
}

func TestModes(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			u := startServer(t, m.args...)
			cs := connect(t, u.url, m.clientVersion)
			if got := cs.InitializeResult().ProtocolVersion; got != m.wantVersion {
				t.Errorf("negotiated protocol version %q, want %q", got, m.wantVersion)
			}
			if got := cs.ID() != ""; got != m.stateful {
				t.Errorf("session id %q, want one: %v", cs.ID(), m.stateful)
			}
			testTools(t, cs, m)
			testProgress(t, u, cs, m)
			testResourceAndPrompt(t, cs)
			testHeaders(t, cs, u.url, m)
		})
	}
}

func testTools(t *testing.T, cs *testClient, m mode) {
	ctx := context.Background()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("ListTools: %v", err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	if got, want := strings.Join(names, ","), "add,blob,echo,elicit,fail,headers,progress,roots,sample,slow"; got != want {
		t.Errorf("tools = %s, want %s", got, want)
	}

	const tricky = "héllo ☃ 😀 \"quoted\" \\back\\ \n\ttab <b>&amp;</b> \u0000 \u2028 end"
	wantText(t, cs, call("echo", map[string]any{"message": tricky}), tricky)
	wantText(t, cs, call("echo", map[string]any{"message": ""}), "")
	wantText(t, cs, call("add", map[string]any{"a": 2, "b": 3}), "5")
	wantText(t, cs, call("add", map[string]any{"a": 1.5, "b": -0.25}), "1.25")
	wantText(t, cs, call("blob", map[string]any{"size": 0}), "")
	wantText(t, cs, call("blob", map[string]any{"size": 1 << 20}), strings.Repeat("x", 1<<20))
	wantToolError(t, cs, call("blob", map[string]any{"size": 8<<20 + 1}), "size must be between 0 and 8388608")
	wantText(t, cs, call("slow", map[string]any{"ms": 20}), "slept")
	wantToolError(t, cs, call("fail", nil), "failed on purpose")
	if got, _ := callText(t, cs, call("fail", nil)); got != "failed on purpose" {
		t.Errorf("fail text = %q, want %q", got, "failed on purpose")
	}

	if m.clientInput {
		wantText(t, cs, call("sample", map[string]any{"prompt": "ping ☃"}), "sampled: reply to ping ☃")
		wantText(t, cs, call("elicit", map[string]any{"message": "Who are you?"}), `accept:{"name":"Ada"}`)
		wantText(t, cs, call("elicit", map[string]any{"message": "something else"}), `decline:null`)
		rootsJSON, _ := json.Marshal(testRoots)
		wantText(t, cs, call("roots", nil), string(rootsJSON))
	} else {
		wantToolError(t, cs, call("sample", map[string]any{"prompt": "ping"}), "sampling failed: a stateless server cannot send sampling requests")
		wantToolError(t, cs, call("elicit", map[string]any{"message": "Who are you?"}), "elicitation failed: a stateless server cannot send elicitation requests")
		wantToolError(t, cs, call("roots", nil), "listing roots failed: a stateless server cannot send roots requests")
	}
}

func testProgress(t *testing.T, u *upstream, cs *testClient, m mode) {
	params := call("progress", map[string]any{"steps": 3, "delayMs": 10})
	params.SetProgressToken("tok-" + m.name)
	wantText(t, cs, params, "done")
	if !m.progress {
		// The undeliverable notifications are logged once.
		if n := strings.Count(u.stderr.String(), "progress notifications not delivered"); n != 1 {
			t.Errorf("server logged %d progress delivery failures, want 1", n)
		}
		return
	}
	for i := 1; i <= 3; i++ {
		select {
		case p := <-cs.progress:
			if p.ProgressToken != "tok-"+m.name || p.Progress != float64(i) || p.Total != 3 {
				t.Errorf("progress notification %d = %+v, want token %q, progress %d of 3", i, p, "tok-"+m.name, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("progress notification %d did not arrive", i)
		}
	}
	// Without a token there are no notifications.
	wantText(t, cs, call("progress", map[string]any{"steps": 2}), "done")
	select {
	case p := <-cs.progress:
		t.Errorf("unexpected progress notification %+v", p)
	case <-time.After(50 * time.Millisecond):
	}
}

func testResourceAndPrompt(t *testing.T, cs *testClient) {
	ctx := context.Background()
	res, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "demo://greeting"})
	if err != nil {
		t.Fatalf("ReadResource: %v", err)
	}
	if len(res.Contents) != 1 || res.Contents[0].Text != "hello from the demo upstream" || res.Contents[0].MIMEType != "text/plain" {
		t.Errorf("ReadResource(demo://greeting) = %+v", res.Contents)
	}
	if _, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "demo://nothing"}); err == nil {
		t.Error("ReadResource(demo://nothing) succeeded, want an error")
	}

	prompt, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "greet", Arguments: map[string]string{"name": "Ada"}})
	if err != nil {
		t.Fatalf("GetPrompt: %v", err)
	}
	if len(prompt.Messages) != 1 || prompt.Messages[0].Role != "user" {
		t.Fatalf("GetPrompt(greet) messages = %+v", prompt.Messages)
	}
	if text, ok := prompt.Messages[0].Content.(*mcp.TextContent); !ok || text.Text != "Hello, Ada!" {
		t.Errorf("GetPrompt(greet) content = %+v, want text %q", prompt.Messages[0].Content, "Hello, Ada!")
	}
	if _, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "greet"}); err == nil {
		t.Error("GetPrompt(greet) without name succeeded, want an error")
	}
}

func testHeaders(t *testing.T, cs *testClient, url string, m mode) {
	got, isErr := callText(t, cs, call("headers", nil))
	if isErr {
		t.Fatalf("headers failed: %s", got)
	}
	var h map[string]string
	if err := json.Unmarshal([]byte(got), &h); err != nil {
		t.Fatalf("headers returned %q: %v", got, err)
	}
	want := map[string]string{
		"Authorization":        "Bearer demo-token",
		"Host":                 strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/mcp"),
		"Mcp-Protocol-Version": m.wantVersion,
		"X-Test":               "x-test-value",
	}
	if m.stateful {
		want["Mcp-Session-Id"] = cs.ID()
	}
	if len(h) != len(want) {
		t.Errorf("headers = %v, want %v", h, want)
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("headers[%q] = %q, want %q (all: %v)", k, h[k], v, h)
		}
	}
}

// TestMissingCapabilities checks the tool errors of sample, elicit and roots
// for a client that declares none of those capabilities.
func TestMissingCapabilities(t *testing.T) {
	for _, args := range [][]string{nil, {"-mode", "stateless"}} {
		u := startServer(t, args...)
		client := mcp.NewClient(&mcp.Implementation{Name: "bare", Version: "v0"}, &mcp.ClientOptions{
			Capabilities: &mcp.ClientCapabilities{}, // no roots either
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		transport := &mcp.StreamableClientTransport{Endpoint: u.url, HTTPClient: newHTTPClient(t), MaxRetries: -1}
		cs, err := client.Connect(ctx, transport, nil)
		if err != nil {
			t.Fatalf("%v: Connect: %v", args, err)
		}
		tc := &testClient{ClientSession: cs}
		wantToolError(t, tc, call("sample", map[string]any{"prompt": "p"}), "sampling failed: the client did not declare the sampling capability")
		wantToolError(t, tc, call("elicit", map[string]any{"message": "m"}), "elicitation failed: the client did not declare the elicitation capability")
		wantToolError(t, tc, call("roots", nil), "listing roots failed: the client did not declare the roots capability")
		_ = cs.Close()
	}
}

// TestSlowCancellation checks that slow stops when its call is cancelled.
func TestSlowCancellation(t *testing.T) {
	u := startServer(t)
	cs := connect(t, u.url, "")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := cs.CallTool(ctx, call("slow", map[string]any{"ms": 60000})); err == nil {
		t.Fatal("slow call with a 100ms deadline succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled slow call took %v", d)
	}
	// The session is still usable.
	wantText(t, cs, call("slow", map[string]any{"ms": 1}), "slept")
}

// TestMaxBlob checks the largest blob in SSE and JSON mode.
func TestMaxBlob(t *testing.T) {
	for _, args := range [][]string{nil, {"-json"}} {
		u := startServer(t, args...)
		cs := connect(t, u.url, "")
		got, isErr := callText(t, cs, call("blob", map[string]any{"size": 8 << 20}))
		if isErr || len(got) != 8<<20 || strings.Trim(got, "x") != "" {
			t.Errorf("%v: blob(8 MiB) = %s (isError %v)", args, truncate(got), isErr)
		}
	}
}

// TestShutdownWithOpenStreams checks that the server exits promptly on
// cancellation although a client holds a standalone SSE stream and a call is
// in flight.
func TestShutdownWithOpenStreams(t *testing.T) {
	for _, args := range [][]string{nil, {"-mode", "stateless"}} {
		u := startServer(t, args...)
		cs := connect(t, u.url, "")
		callDone := make(chan error, 1)
		// A long progress call: its first notification shows that the call
		// is running on the server.
		params := call("progress", map[string]any{"steps": 600, "delayMs": 100})
		params.SetProgressToken("shutdown")
		go func() {
			_, err := cs.CallTool(context.Background(), params)
			callDone <- err
		}()
		select {
		case <-cs.progress:
		case <-time.After(5 * time.Second):
			t.Fatalf("%v: the call never reached the server", args)
		}
		start := time.Now()
		if err := u.shutdown(3 * time.Second); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		t.Logf("%v: shutdown took %v", args, time.Since(start))
		_ = cs.Close()
		select {
		case <-callDone:
		case <-time.After(5 * time.Second):
			t.Fatalf("%v: in-flight call did not end after shutdown", args)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-mode", "bogus"}, `invalid -mode "bogus"`},
		{[]string{"-modern-only"}, "-modern-only requires -mode stateless"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-nope"}, "flag provided but not defined"},
		{[]string{"-addr", "127.0.0.1:notaport"}, "listen tcp"},
		{[]string{"-token-audience", "http://x/mcp"}, "require -require-token-from"},
		{[]string{"-require-token-from", "/introspect"}, "invalid -require-token-from"},
		{[]string{"-require-token-from", "http://as/introspect", "-authorization-server", "as"}, "invalid -authorization-server"},
	} {
		var stdout, stderr syncBuffer
		err := run(context.Background(), tc.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
		if stdout.String() != "" {
			t.Errorf("run(%q) wrote %q to stdout", tc.args, stdout.String())
		}
	}
	var stdout, stderr syncBuffer
	if err := run(context.Background(), []string{"-h"}, &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run(-h) = %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(stderr.String(), "-modern-only") {
		t.Errorf("usage does not mention -modern-only:\n%s", stderr.String())
	}
}

// post sends one raw JSON-RPC message and returns the response.
func post(t *testing.T, url string, headers map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := newHTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(data)
}

func initializeBody(version string) string {
	return `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + version +
		`","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}`
}

// TestEventStore checks that SSE events carry ids with -event-store and none
// without.
func TestEventStore(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		wantID bool
	}{
		{nil, false},
		{[]string{"-event-store"}, true},
	} {
		u := startServer(t, tc.args...)
		resp, body := post(t, u.url, nil, initializeBody("2025-11-25"))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%v: initialize: %s %s\n%s", tc.args, resp.Status, resp.Header.Get("Content-Type"), body)
		}
		if resp.Header.Get("Mcp-Session-Id") == "" {
			t.Errorf("%v: no Mcp-Session-Id", tc.args)
		}
		if got := strings.Contains(body, "\nid: ") || strings.HasPrefix(body, "id: "); got != tc.wantID {
			t.Errorf("%v: event ids present = %v, want %v; body:\n%s", tc.args, got, tc.wantID, body)
		}
	}
}

// sseEvent is one parsed server-sent event.
type sseEvent struct{ id, data string }

// parseSSE parses a complete text/event-stream body.
func parseSSE(body string) []sseEvent {
	var events []sseEvent
	for _, block := range strings.Split(body, "\n\n") {
		var e sseEvent
		for _, line := range strings.Split(block, "\n") {
			if v, ok := strings.CutPrefix(line, "id: "); ok {
				e.id = v
			} else if v, ok := strings.CutPrefix(line, "data: "); ok {
				e.data += v
			}
		}
		if e.id != "" || e.data != "" {
			events = append(events, e)
		}
	}
	return events
}

// TestResumption checks that with -event-store a client can replay a request
// stream with GET and Last-Event-ID.
func TestResumption(t *testing.T) {
	u := startServer(t, "-event-store")
	resp, body := post(t, u.url, nil, initializeBody("2025-11-25"))
	sessionID := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sessionID == "" {
		t.Fatalf("initialize: %s\n%s", resp.Status, body)
	}
	headers := map[string]string{"Mcp-Session-Id": sessionID, "Mcp-Protocol-Version": "2025-11-25"}
	if resp, body := post(t, u.url, headers, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("initialized: %s\n%s", resp.Status, body)
	}
	_, body = post(t, u.url, headers,
		`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"progress","arguments":{"steps":2},"_meta":{"progressToken":"p"}}}`)
	events := parseSSE(body)
	// A priming event without data, two progress notifications, the result.
	if len(events) != 4 || events[0].data != "" || !strings.Contains(events[1].data, `"progress":1`) ||
		!strings.Contains(events[2].data, `"progress":2`) || !strings.Contains(events[3].data, `"text":"done"`) {
		t.Fatalf("tools/call events = %q", events)
	}
	for _, e := range events {
		if e.id == "" {
			t.Fatalf("event without id: %q", events)
		}
	}

	req, err := http.NewRequest(http.MethodGet, u.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", sessionID)
	req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
	req.Header.Set("Last-Event-ID", events[1].id)
	resp, err = newHTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	replayed := parseSSE(string(data))
	if resp.StatusCode != http.StatusOK || len(replayed) != 2 ||
		replayed[0] != events[2] || replayed[1] != events[3] {
		t.Errorf("replay after %s: %s\ngot %q\nwant %q", events[1].id, resp.Status, replayed, events[2:])
	}
}

// TestModernOnlyInitialize documents how a -modern-only server answers the
// legacy initialize handshake: with protocol version 2025-11-25 (which it
// does not support), after which requests at that version are rejected.
func TestModernOnlyInitialize(t *testing.T) {
	u := startServer(t, "-mode", "stateless", "-modern-only")
	resp, body := post(t, u.url, nil, initializeBody("2025-11-25"))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"protocolVersion":"2025-11-25"`) {
		t.Errorf("initialize: %s\n%s", resp.Status, body)
	}
	resp, body = post(t, u.url, map[string]string{"Mcp-Protocol-Version": "2025-11-25"},
		`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Unsupported protocol version") {
		t.Errorf("tools/list at 2025-11-25: %s\n%s", resp.Status, body)
	}
	// The go-sdk client cannot fall back to the legacy protocol either.
	client := mcp.NewClient(&mcp.Implementation{Name: "legacy", Version: "v0"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	transport := &mcp.StreamableClientTransport{Endpoint: u.url, HTTPClient: newHTTPClient(t), MaxRetries: -1}
	if cs, err := client.Connect(ctx, transport, &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"}); err == nil {
		_ = cs.Close()
		t.Error("legacy client connected to a -modern-only server")
	}
}

// TestHostProtection checks the SDK's DNS-rebinding protection and
// -allow-any-host.
func TestHostProtection(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, http.StatusForbidden},
		{[]string{"-allow-any-host"}, http.StatusOK},
	} {
		u := startServer(t, tc.args...)
		req, err := http.NewRequest(http.MethodPost, u.url, strings.NewReader(initializeBody("2025-11-25")))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "example.com"
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := newHTTPClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%v: Host example.com: status %d, want %d", tc.args, resp.StatusCode, tc.want)
		}
	}
}

// TestRequireToken checks -require-token-from against a fake introspection
// endpoint: the 401 challenge, the protected resource metadata, and which
// tokens pass.
func TestRequireToken(t *testing.T) {
	exp := time.Now().Add(time.Hour).Unix()
	tokens := map[string]string{ // token -> introspection response
		"good":      fmt.Sprintf(`{"active":true,"scope":"mcp:tools other","exp":%d,"aud":"http://proxy.example/sse"}`, exp),
		"aud-list":  fmt.Sprintf(`{"active":true,"scope":"mcp:tools","exp":%d,"aud":["http://a.example","http://proxy.example/sse/"]}`, exp),
		"no-scope":  fmt.Sprintf(`{"active":true,"scope":"other","exp":%d,"aud":"http://proxy.example/sse"}`, exp),
		"other-aud": fmt.Sprintf(`{"active":true,"scope":"mcp:tools","exp":%d,"aud":"http://other.example/mcp"}`, exp),
		"expired":   fmt.Sprintf(`{"active":true,"scope":"mcp:tools","exp":%d,"aud":"http://proxy.example/sse"}`, time.Now().Add(-time.Hour).Unix()),
	}
	var mu sync.Mutex
	var introspected []string
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/introspect" {
			http.NotFound(w, r)
			return
		}
		tok := r.PostFormValue("token")
		mu.Lock()
		introspected = append(introspected, tok)
		mu.Unlock()
		body, ok := tokens[tok]
		if !ok {
			body = `{"active":false}`
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	defer as.Close()

	u := startServer(t, "-require-token-from", as.URL+"/introspect", "-token-audience", "http://proxy.example/sse")
	// Not newHTTPClient: that one sends a fixed Authorization.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	base := strings.TrimSuffix(u.url, "/mcp")
	wantChallenge := `Bearer resource_metadata="` + base + `/.well-known/oauth-protected-resource/mcp", scope="mcp:tools"`
	for _, tc := range []struct {
		token string
		want  int
	}{
		{"", http.StatusUnauthorized},
		{"unknown", http.StatusUnauthorized},
		{"good", http.StatusOK},
		{"aud-list", http.StatusOK},
		{"no-scope", http.StatusForbidden},
		{"other-aud", http.StatusUnauthorized},
		{"expired", http.StatusUnauthorized},
	} {
		req, err := http.NewRequest(http.MethodPost, u.url, strings.NewReader(initializeBody("2025-11-25")))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("token %q: status %d, want %d: %s", tc.token, resp.StatusCode, tc.want, body)
		}
		if got := resp.Header.Get("WWW-Authenticate"); tc.want != http.StatusOK && got != wantChallenge {
			t.Errorf("token %q: WWW-Authenticate %q, want %q", tc.token, got, wantChallenge)
		}
	}
	mu.Lock()
	if want := []string{"unknown", "good", "aud-list", "no-scope", "other-aud", "expired"}; fmt.Sprint(introspected) != fmt.Sprint(want) {
		t.Errorf("introspected %q, want %q", introspected, want)
	}
	mu.Unlock()

	resp, err := hc.Get(base + "/.well-known/oauth-protected-resource/mcp")
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Resource             string   `json:"resource"`
		AuthorizationServers []string `json:"authorization_servers"`
		ScopesSupported      []string `json:"scopes_supported"`
	}
	err = json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if err != nil || meta.Resource != u.url || fmt.Sprint(meta.AuthorizationServers) != fmt.Sprint([]string{as.URL}) ||
		fmt.Sprint(meta.ScopesSupported) != "[mcp:tools]" {
		t.Errorf("metadata %+v (%v), want resource %s, authorization_servers [%s], scopes_supported [mcp:tools]", meta, err, u.url, as.URL)
	}

	// The log names each outcome and token.
	fp := func(tok string) string { s := sha256.Sum256([]byte(tok)); return hex.EncodeToString(s[:])[:12] }
	for _, want := range []string{
		"auth POST /mcp refused bearer=none no bearer token",
		"auth POST /mcp refused bearer=" + fp("unknown") + " inactive token",
		"auth POST /mcp ok bearer=" + fp("good"),
		"auth POST /mcp refused bearer=" + fp("no-scope") + " missing scope or expired token",
		"auth POST /mcp refused bearer=" + fp("other-aud") + ` token audience ["http://other.example/mcp"], want "http://proxy.example/sse"`,
		"metadata GET /.well-known/oauth-protected-resource/mcp",
	} {
		if !strings.Contains(u.stderr.String(), want+"\n") {
			t.Errorf("stderr lacks %q:\n%s", want, u.stderr)
		}
	}
}
