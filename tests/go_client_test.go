package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// callTimeout bounds every MCP call of the Go client, so that a lost answer
// fails the test instead of hanging it.
const callTimeout = 20 * time.Second

// What the Go client answers to the upstream's server→client requests.
const (
	clientSamplingReply = "sampled-reply"
	clientRootURI       = "file:///tmp/root-a"
)

// toolTable maps the scenarios to one upstream kind's tools and results.
type toolTable struct {
	echo         string
	echoText     func(string) string
	add          string
	addArgs      map[string]any
	addText      string
	progress     string
	progressArgs map[string]any
	progressStep int
	progressDone func(string) bool
	sample       string
	sampleArgs   func(prompt string) map[string]any
	sampleDone   func(string) bool
	elicit       string
	elicitArgs   map[string]any
	elicitDone   func(string) bool
	roots        string
	rootsDone    func(string) bool
	resourceURI  string
	resourceOK   func(string) bool
	prompt       string
	promptArgs   map[string]string
	promptText   string
	// unknownIsRPCError: an unknown tool is a JSON-RPC error (go-sdk), not
	// an isError result (the TypeScript McpServer).
	unknownIsRPCError bool
	// always lists tools present from the start.
	always []string
}

var tables = map[upstreamKind]toolTable{
	kindEverything: {
		echo:         "echo",
		echoText:     func(m string) string { return "Echo: " + m },
		add:          "get-sum",
		addArgs:      map[string]any{"a": 2, "b": 40},
		addText:      "The sum of 2 and 40 is 42.",
		progress:     "trigger-long-running-operation",
		progressArgs: map[string]any{"duration": 1, "steps": 3},
		progressStep: 3,
		progressDone: func(s string) bool { return strings.HasPrefix(s, "Long running operation completed.") },
		sample:       "trigger-sampling-request",
		sampleArgs:   func(p string) map[string]any { return map[string]any{"prompt": p, "maxTokens": 20} },
		sampleDone:   func(s string) bool { return strings.Contains(s, clientSamplingReply) },
		elicit:       "trigger-elicitation-request",
		elicitArgs:   map[string]any{},
		elicitDone:   func(s string) bool { return strings.Contains(s, "- Name: Ada") },
		roots:        "get-roots-list",
		rootsDone:    func(s string) bool { return strings.Contains(s, "URI: "+clientRootURI) },
		resourceURI:  "demo://resource/static/document/features.md",
		resourceOK:   func(s string) bool { return len(s) > 0 },
		prompt:       "args-prompt",
		promptArgs:   map[string]string{"city": "Paris"},
		promptText:   "What's weather in Paris?",
		always:       []string{"echo", "get-sum", "trigger-long-running-operation"},
	},
	kindGo: {
		echo:              "echo",
		echoText:          func(m string) string { return m },
		add:               "add",
		addArgs:           map[string]any{"a": 2, "b": 40},
		addText:           "42",
		progress:          "progress",
		progressArgs:      map[string]any{"steps": 3, "delayMs": 50},
		progressStep:      3,
		progressDone:      func(s string) bool { return s == "done" },
		sample:            "sample",
		sampleArgs:        func(p string) map[string]any { return map[string]any{"prompt": p} },
		sampleDone:        func(s string) bool { return s == "sampled: "+clientSamplingReply },
		elicit:            "elicit",
		elicitArgs:        map[string]any{"message": "What is your name?"},
		elicitDone:        func(s string) bool { return s == `accept:{"name":"Ada"}` },
		roots:             "roots",
		rootsDone:         func(s string) bool { return s == `["`+clientRootURI+`"]` },
		resourceURI:       "demo://greeting",
		resourceOK:        func(s string) bool { return s == "hello from the demo upstream" },
		prompt:            "greet",
		promptArgs:        map[string]string{"name": "Ada"},
		promptText:        "Hello, Ada!",
		unknownIsRPCError: true,
		always:            []string{"echo", "add", "progress", "sample", "elicit", "roots", "blob", "slow", "headers", "fail"},
	},
}

// ---------------------------------------------------------------------------
// A Go SDK legacy client with its handlers and a tap on its HTTP traffic
// ---------------------------------------------------------------------------

// tap records what one client sent and received over HTTP: the bodies of its
// POSTs and the bytes of its event stream.
type tap struct {
	base   http.RoundTripper
	header http.Header // added to every request

	mu       sync.Mutex
	posted   [][]byte // every POST body
	accepted [][]byte // the POST bodies the bridge answered with 2xx
	streamed bytes.Buffer
}

func (tp *tap) RoundTrip(req *http.Request) (*http.Response, error) {
	if len(tp.header) > 0 {
		req = req.Clone(req.Context())
		for k, v := range tp.header {
			req.Header[k] = v
		}
	}
	if req.Method == http.MethodPost && req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		tp.mu.Lock()
		tp.posted = append(tp.posted, body)
		tp.mu.Unlock()
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	resp, err := tp.base.RoundTrip(req)
	if err == nil && req.Method == http.MethodPost && resp.StatusCode/100 == 2 {
		tp.mu.Lock()
		tp.accepted = append(tp.accepted, tp.posted[len(tp.posted)-1])
		tp.mu.Unlock()
	}
	if err != nil || req.Method != http.MethodGet {
		return resp, err
	}
	resp.Body = &tapBody{ReadCloser: resp.Body, tp: tp}
	return resp, nil
}

type tapBody struct {
	io.ReadCloser
	tp *tap
}

func (b *tapBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.tp.mu.Lock()
		b.tp.streamed.Write(p[:n])
		b.tp.mu.Unlock()
	}
	return n, err
}

func (tp *tap) stream() string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.streamed.String()
}

// goClient is one legacy session of the official Go SDK client.
type goClient struct {
	t       testing.TB
	label   string
	client  *mcp.Client
	session *mcp.ClientSession
	tap     *tap

	mu       sync.Mutex
	changed  chan struct{}
	progress map[string][]*mcp.ProgressNotificationParams
	sampled  []string // the sampling requests' messages, as JSON
	elicited int
	updated  []string // the URIs of notifications/resources/updated
}

type goClientOptions struct {
	// header is added to every HTTP request (GET and POSTs).
	header http.Header
	// version is the protocol version the client asks for (default: the
	// SDK's newest of the initialize era).
	version string
}

// connectGo opens a legacy SSE session through Caddy with the Go SDK: the
// GET, the endpoint event, initialize and notifications/initialized.
func connectGo(t testing.TB, c *caddy, label string, opts goClientOptions) *goClient {
	t.Helper()
	gc := &goClient{t: t, label: label, changed: make(chan struct{}), progress: map[string][]*mcp.ProgressNotificationParams{}}
	hc := testenv.MustHTTPClient(t)
	gc.tap = &tap{base: hc.Transport, header: opts.header}
	hc.Transport = gc.tap

	gc.client = mcp.NewClient(&mcp.Implementation{Name: "e2e-go-client-" + label, Version: "v0.0.1"}, &mcp.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			data, _ := json.Marshal(req.Params.Messages)
			gc.note(func() { gc.sampled = append(gc.sampled, string(data)) })
			return &mcp.CreateMessageResult{
				Role:       "assistant",
				Content:    &mcp.TextContent{Text: clientSamplingReply},
				Model:      "e2e-model",
				StopReason: "endTurn",
			}, nil
		},
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			gc.note(func() { gc.elicited++ })
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "Ada"}}, nil
		},
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			tok := fmt.Sprint(req.Params.ProgressToken)
			gc.note(func() { gc.progress[tok] = append(gc.progress[tok], req.Params) })
		},
		ResourceUpdatedHandler: func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
			gc.note(func() { gc.updated = append(gc.updated, req.Params.URI) })
		},
	})
	gc.client.AddRoots(&mcp.Root{URI: clientRootURI, Name: "a"})

	ctx := ctxTimeout(t, callTimeout)
	var sessOpts *mcp.ClientSessionOptions
	if opts.version != "" {
		sessOpts = &mcp.ClientSessionOptions{ProtocolVersion: opts.version}
	}
	sess, err := gc.client.Connect(ctx, &mcp.SSEClientTransport{Endpoint: c.sseURL(), HTTPClient: hc}, sessOpts)
	if err != nil {
		t.Fatalf("%s: connecting through the bridge: %v", label, err)
	}
	gc.session = sess
	t.Cleanup(func() { _ = sess.Close() })
	return gc
}

// note changes the recorded state and wakes up waiters.
func (gc *goClient) note(f func()) {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	f()
	close(gc.changed)
	gc.changed = make(chan struct{})
}

// waitFor waits until cond (called with gc.mu held) holds.
func (gc *goClient) waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		gc.mu.Lock()
		ok, ch := cond(), gc.changed
		gc.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("%s: timed out after %v waiting for %s", gc.label, timeout, what)
		}
	}
}

// call calls a tool with a timeout.
func (gc *goClient) call(t testing.TB, name string, args any) (*mcp.CallToolResult, error) {
	t.Helper()
	return gc.session.CallTool(ctxTimeout(t, callTimeout), &mcp.CallToolParams{Name: name, Arguments: args})
}

// callOutcome is how a call that startCall started ended, and when.
type callOutcome struct {
	res *mcp.CallToolResult
	err error
	at  time.Time
}

// startCall calls the tool name with args under the progress token
// (within timeout) while the test goes on; the channel reports how it
// ended.
func (gc *goClient) startCall(t testing.TB, name string, args map[string]any, token string, timeout time.Duration) <-chan callOutcome {
	params := &mcp.CallToolParams{Name: name, Arguments: args}
	params.SetProgressToken(token)
	done := make(chan callOutcome, 1)
	go func() {
		res, err := gc.session.CallTool(ctxTimeout(t, timeout), params)
		done <- callOutcome{res, err, time.Now()}
	}()
	return done
}

// startProgressCall starts the demo upstream's progress tool (steps
// notifications delayMs apart, under token) and reports on the channel
// its error, or nil once it returned "done".
func (gc *goClient) startProgressCall(t testing.TB, token string, steps, delayMs int) <-chan error {
	started := gc.startCall(t, "progress", map[string]any{"steps": steps, "delayMs": delayMs}, token, callTimeout)
	done := make(chan error, 1)
	go func() {
		o := <-started
		if o.err == nil && (o.res.IsError || textOf(o.res) != "done") {
			o.err = fmt.Errorf("isError=%v %q", o.res.IsError, textOf(o.res))
		}
		done <- o.err
	}()
	return done
}

// callText calls a tool that must succeed and returns its text.
func (gc *goClient) callText(t testing.TB, name string, args any) string {
	t.Helper()
	res, err := gc.call(t, name, args)
	if err != nil {
		t.Fatalf("%s: calling %s: %v", gc.label, name, err)
	}
	if res.IsError {
		t.Fatalf("%s: %s returned isError: %s", gc.label, name, textOf(res))
	}
	return textOf(res)
}

// textOf concatenates the text contents of a tool result.
func textOf(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// short abbreviates s for failure messages.
func short(s string) string {
	if len(s) <= 300 {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:300], len(s))
}

// mixedPayload returns exactly n bytes of UTF-8 text mixing ASCII, JSON
// special characters, controls and 2-, 3- and 4-byte sequences.
func mixedPayload(n int) string {
	pieces := []string{"abcXYZ019 ", `"`, `\`, "/", "\n", "\t", "\u0001", "é", "ß", "Ж", "→", "中", "文", "\u2028", "😀", "𝄞", "<>&", "\u00a0", "\x7f"}
	var b strings.Builder
	for i := 0; ; i++ {
		p := pieces[i%len(pieces)]
		if b.Len()+len(p) > n {
			break
		}
		b.WriteString(p)
	}
	b.WriteString(strings.Repeat("x", n-b.Len()))
	return b.String()
}

// unicodeSample has emoji, combining marks, quotes, backslashes, every kind of
// control character, line separators, a BOM and things that look like SSE
// framing or HTML.
const unicodeSample = "emoji 😀👩🏽‍💻🏳️‍🌈 | CJK 中文 日本語 한국어 | combining e\u0301 a\u0308 \u0915\u094d\u0937 | " +
	"quotes \"double\" 'single' `back` | backslashes \\ \\\\ \\n \\u0000 | " +
	"controls \x00\x01\x07\b\f\n\r\t\x1b\x1f\x7f | separators \u2028 \u2029 | bom \ufeff | " +
	"sse-ish \n\ndata: x\nevent: endpoint\n\nid: 1\r\n\r\n: comment\n | html </script><!-- | rtl \u202eabc\u202c | astral 𝄞 𐍈"

// firstDiff describes where got and want first differ.
func firstDiff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("got %d bytes, want %d; first difference at byte %d: %q vs %q",
		len(got), len(want), i, got[i:min(i+20, len(got))], want[i:min(i+20, len(want))])
}

// ---------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------

// TestProtocolVersions has the Go SDK's and the TypeScript SDK's legacy
// clients ask for each version of the initialize era through the bridge,
// against each kind of upstream: relayed, the upstream negotiates it;
// translated (an upstream of 2026-07-28 only), the bridge does; either way
// the client gets the version it asked for, and calls work. (Every
// scenario runs at each SDK's default, 2025-11-25, in the client suites.)
func TestProtocolVersions(t *testing.T) {
	for _, spec := range []upstreamSpec{specEverything, specGoStatefulSSE, specGoStatelessJSON, specGoModernOnly} {
		t.Run(spec.name, func(t *testing.T) {
			tb := tables[spec.kind]
			up := startUpstream(t, spec)
			cd := startCaddy(t, up.url)
			for _, version := range []string{"2025-03-26", "2025-06-18", "2025-11-25"} {
				t.Run(version, func(t *testing.T) {
					gc := connectGo(t, cd, version, goClientOptions{version: version})
					if got := gc.session.InitializeResult().ProtocolVersion; got != version {
						t.Errorf("negotiated %q, asked for %q", got, version)
					}
					gc.echoOK(t, tb, "at "+version)
					runLegacyClientScript(t, spec, cd.sseURL(), "--protocol-version", version,
						"--scenarios", "initialize,ping,tools-list,echo,add,resources,prompts")
				})
			}
		})
	}
}

// TestGoSDKLegacyClient runs the official Go SDK's legacy HTTP+SSE client
// (mcp.SSEClientTransport) through Caddy against each upstream.
func TestGoSDKLegacyClient(t *testing.T) {
	for _, spec := range allUpstreams {
		t.Run(spec.name, func(t *testing.T) {
			up := startUpstream(t, spec)
			cd := startCaddy(t, up.url)
			runGoScenarios(t, spec, cd)
		})
	}
}

func runGoScenarios(t *testing.T, spec upstreamSpec, cd *caddy) {
	tb := tables[spec.kind]
	gc := connectGo(t, cd, "main", goClientOptions{})

	t.Run("initialize", func(t *testing.T) {
		res := gc.session.InitializeResult()
		if res == nil || res.ServerInfo == nil || res.ServerInfo.Name == "" || res.ServerInfo.Version == "" {
			t.Fatalf("initialize result lacks serverInfo: %+v", res)
		}
		if spec.kind == kindGo && res.ServerInfo.Name != "mcp-demo-upstream" {
			t.Errorf("serverInfo.name = %q, want mcp-demo-upstream", res.ServerInfo.Name)
		}
		if res.ProtocolVersion == "" || len(res.ProtocolVersion) != len("2006-01-02") {
			t.Errorf("negotiated protocolVersion = %q", res.ProtocolVersion)
		}
		if res.Capabilities == nil || res.Capabilities.Tools == nil {
			t.Errorf("server did not announce tools: %+v", res.Capabilities)
		}
		t.Logf("server %s %s, protocol %s", res.ServerInfo.Name, res.ServerInfo.Version, res.ProtocolVersion)
	})

	t.Run("ping", func(t *testing.T) {
		if err := gc.session.Ping(ctxTimeout(t, callTimeout), nil); err != nil {
			t.Fatalf("ping: %v", err)
		}
	})

	t.Run("tools-list", func(t *testing.T) {
		want := slices.Clone(tb.always)
		if spec.stateful {
			want = append(want, tb.sample, tb.elicit, tb.roots)
		}
		// server-everything registers the tools that need client
		// capabilities only after notifications/initialized; poll
		// tools/list until they show up.
		deadline := time.Now().Add(5 * time.Second)
		for {
			res, err := gc.session.ListTools(ctxTimeout(t, callTimeout), nil)
			if err != nil {
				t.Fatalf("tools/list: %v", err)
			}
			var names []string
			for _, tool := range res.Tools {
				names = append(names, tool.Name)
			}
			var missing []string
			for _, w := range want {
				if !slices.Contains(names, w) {
					missing = append(missing, w)
				}
			}
			if len(missing) == 0 {
				break
			}
			if spec.kind != kindEverything || time.Now().After(deadline) {
				t.Fatalf("tools missing from tools/list: %v (got %v)", missing, names)
			}
			time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
		}
	})

	t.Run("echo", func(t *testing.T) {
		msg := fmt.Sprintf("hello-%d", time.Now().UnixNano())
		if got := gc.callText(t, tb.echo, map[string]any{"message": msg}); got != tb.echoText(msg) {
			t.Fatalf("echo = %q, want %q", got, tb.echoText(msg))
		}
	})

	t.Run("add", func(t *testing.T) {
		if got := strings.TrimSpace(gc.callText(t, tb.add, tb.addArgs)); got != tb.addText {
			t.Fatalf("add = %q, want %q", got, tb.addText)
		}
	})

	t.Run("progress", func(t *testing.T) {
		token := "progress-" + spec.name
		params := &mcp.CallToolParams{Name: tb.progress, Arguments: tb.progressArgs}
		params.SetProgressToken(token)
		res, err := gc.session.CallTool(ctxTimeout(t, callTimeout), params)
		if err != nil {
			t.Fatalf("calling %s: %v", tb.progress, err)
		}
		if res.IsError || !tb.progressDone(textOf(res)) {
			t.Fatalf("unexpected result: isError=%v %q", res.IsError, short(textOf(res)))
		}
		if !spec.progress {
			gc.mu.Lock()
			t.Logf("upstream cannot deliver progress; %d notifications arrived", len(gc.progress[token]))
			gc.mu.Unlock()
			return
		}
		// Notifications are handled asynchronously by the SDK: they may be
		// reported just after the result.
		gc.waitFor(t, "progress notifications", 5*time.Second, func() bool { return len(gc.progress[token]) >= tb.progressStep })
		gc.mu.Lock()
		got := slices.Clone(gc.progress[token])
		gc.mu.Unlock()
		if len(got) != tb.progressStep {
			t.Fatalf("got %d progress notifications, want %d", len(got), tb.progressStep)
		}
		seen := map[float64]bool{}
		for _, p := range got {
			if seen[p.Progress] {
				t.Fatalf("duplicate progress %v", p.Progress)
			}
			seen[p.Progress] = true
			if p.Total != float64(tb.progressStep) {
				t.Errorf("progress total = %v, want %d", p.Total, tb.progressStep)
			}
		}
	})

	if spec.clientInput() {
		t.Run("sampling", func(t *testing.T) {
			prompt := "bridge-sampling-probe-" + spec.name
			gc.mu.Lock()
			before := len(gc.sampled)
			gc.mu.Unlock()
			text := gc.callText(t, tb.sample, tb.sampleArgs(prompt))
			if !tb.sampleDone(text) {
				t.Fatalf("unexpected sampling result %q", short(text))
			}
			gc.mu.Lock()
			defer gc.mu.Unlock()
			if len(gc.sampled) <= before {
				t.Fatal("the client's sampling handler was never called")
			}
			if !strings.Contains(gc.sampled[len(gc.sampled)-1], prompt) {
				t.Fatalf("the sampling request lacks the prompt: %s", gc.sampled[len(gc.sampled)-1])
			}
		})

		t.Run("elicitation", func(t *testing.T) {
			gc.mu.Lock()
			before := gc.elicited
			gc.mu.Unlock()
			text := gc.callText(t, tb.elicit, tb.elicitArgs)
			if !tb.elicitDone(text) {
				t.Fatalf("unexpected elicitation result %q", short(text))
			}
			gc.mu.Lock()
			defer gc.mu.Unlock()
			if gc.elicited <= before {
				t.Fatal("the client's elicitation handler was never called")
			}
		})

		t.Run("roots", func(t *testing.T) {
			text := gc.callText(t, tb.roots, map[string]any{})
			if !tb.rootsDone(text) {
				t.Fatalf("unexpected roots result %q", short(text))
			}
			if !strings.Contains(gc.tap.stream(), `"method":"roots/list"`) {
				t.Fatal("no roots/list request reached the client's stream")
			}
		})
	}

	t.Run("resources", func(t *testing.T) {
		res, err := gc.session.ListResources(ctxTimeout(t, callTimeout), nil)
		if err != nil {
			t.Fatalf("resources/list: %v", err)
		}
		var uris []string
		for _, r := range res.Resources {
			uris = append(uris, r.URI)
		}
		if !slices.Contains(uris, tb.resourceURI) {
			t.Fatalf("%s not listed: %v", tb.resourceURI, uris)
		}
		read, err := gc.session.ReadResource(ctxTimeout(t, callTimeout), &mcp.ReadResourceParams{URI: tb.resourceURI})
		if err != nil {
			t.Fatalf("resources/read: %v", err)
		}
		if len(read.Contents) != 1 || read.Contents[0].URI != tb.resourceURI || !tb.resourceOK(read.Contents[0].Text) {
			t.Fatalf("unexpected resource contents: %+v", read.Contents)
		}
	})

	t.Run("prompts", func(t *testing.T) {
		res, err := gc.session.ListPrompts(ctxTimeout(t, callTimeout), nil)
		if err != nil {
			t.Fatalf("prompts/list: %v", err)
		}
		var names []string
		for _, p := range res.Prompts {
			names = append(names, p.Name)
		}
		if !slices.Contains(names, tb.prompt) {
			t.Fatalf("prompt %s not listed: %v", tb.prompt, names)
		}
		got, err := gc.session.GetPrompt(ctxTimeout(t, callTimeout), &mcp.GetPromptParams{Name: tb.prompt, Arguments: tb.promptArgs})
		if err != nil {
			t.Fatalf("prompts/get: %v", err)
		}
		if len(got.Messages) == 0 {
			t.Fatalf("prompt has no messages: %+v", got)
		}
		tc, ok := got.Messages[0].Content.(*mcp.TextContent)
		if !ok || tc.Text != tb.promptText {
			t.Fatalf("prompt text = %#v, want %q", got.Messages[0].Content, tb.promptText)
		}
	})

	t.Run("unknown-tool", func(t *testing.T) {
		name := "no-such-tool-" + spec.name
		start := time.Now()
		res, err := gc.call(t, name, map[string]any{})
		switch {
		case isTimeout(err):
			t.Fatalf("no answer for an unknown tool within %v: %v", callTimeout, err)
		case err != nil:
			var rpcErr *jsonrpc.Error
			if !errors.As(err, &rpcErr) {
				t.Fatalf("unknown tool: want a JSON-RPC error, got %v", err)
			}
			if !tb.unknownIsRPCError {
				t.Fatalf("unknown tool: want an isError result, got JSON-RPC error %v", err)
			}
			if !strings.Contains(rpcErr.Message, name) {
				t.Errorf("error does not name the tool: %v", rpcErr)
			}
		default:
			if tb.unknownIsRPCError || !res.IsError {
				t.Fatalf("unknown tool: got result isError=%v %q", res.IsError, short(textOf(res)))
			}
			if !strings.Contains(textOf(res), name) {
				t.Errorf("error does not name the tool: %q", textOf(res))
			}
		}
		t.Logf("answered in %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("concurrent-100", func(t *testing.T) {
		const n = 100
		msgs := make([]string, n)
		got := make([]string, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			msgs[i] = fmt.Sprintf("concurrent-%d-%s-%d", i, spec.name, time.Now().UnixNano())
			wg.Go(func() {
				res, err := gc.call(t, tb.echo, map[string]any{"message": msgs[i]})
				switch {
				case err != nil:
					errs[i] = err
				case res.IsError:
					errs[i] = fmt.Errorf("isError: %s", textOf(res))
				default:
					got[i] = textOf(res)
				}
			})
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("call %d: %v", i, errs[i])
			} else if got[i] != tb.echoText(msgs[i]) {
				t.Errorf("call %d got %q, want %q", i, got[i], tb.echoText(msgs[i]))
			}
		}
	})

	t.Run("payload-1mib", func(t *testing.T) {
		msg := mixedPayload(1 << 20)
		if !utf8.ValidString(msg) || len(msg) != 1<<20 {
			t.Fatal("bad test payload")
		}
		got := gc.callText(t, tb.echo, map[string]any{"message": msg})
		if want := tb.echoText(msg); got != want {
			t.Fatalf("1 MiB round-trip differs: %s", firstDiff(got, want))
		}
	})

	t.Run("unicode", func(t *testing.T) {
		got := gc.callText(t, tb.echo, map[string]any{"message": unicodeSample})
		if want := tb.echoText(unicodeSample); got != want {
			t.Fatalf("unicode round-trip differs: %s", firstDiff(got, want))
		}
	})

	t.Run("two-clients", func(t *testing.T) {
		second := connectGo(t, cd, "second", goClientOptions{})
		clients := map[string]*goClient{"A": gc, "B": second}
		type answer struct {
			who, msg, got string
			err           error
		}
		var (
			mu      sync.Mutex
			answers []answer
			wg      sync.WaitGroup
		)
		for i := range 20 {
			for who, c := range clients {
				msg := fmt.Sprintf("isolation-%s-%d", who, i)
				wg.Go(func() {
					res, err := c.call(t, tb.echo, map[string]any{"message": msg})
					a := answer{who: who, msg: msg, err: err}
					if err == nil {
						a.got = textOf(res)
					}
					mu.Lock()
					answers = append(answers, a)
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		for _, a := range answers {
			if a.err != nil {
				t.Errorf("client %s, %s: %v", a.who, a.msg, a.err)
			} else if a.got != tb.echoText(a.msg) {
				t.Errorf("client %s sent %q and got %q", a.who, a.msg, a.got)
			}
		}
		// Sequential ping-pong, so that each session is used while the
		// other is idle.
		for i := range 5 {
			for _, who := range []string{"B", "A"} {
				msg := fmt.Sprintf("isolation-%s-seq-%d", who, i)
				if got := clients[who].callText(t, tb.echo, map[string]any{"message": msg}); got != tb.echoText(msg) {
					t.Errorf("client %s sent %q and got %q", who, msg, got)
				}
			}
		}
		// Neither stream carried anything of the other session.
		if s := gc.tap.stream(); strings.Contains(s, "isolation-B-") {
			t.Errorf("client A's stream carried client B's messages")
		}
		if s := second.tap.stream(); strings.Contains(s, "isolation-A-") {
			t.Errorf("client B's stream carried client A's messages")
		}
	})
}
