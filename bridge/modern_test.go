package bridge

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

// newModernUpstream is a go-sdk server that speaks only MCP 2026-07-28
// (stateless, as the SDK requires for that revision), recorded: an echo
// tool, a tool that asks the client for input the 2026 way, a prompt and a
// resource, with instructions.
func newModernUpstream(t *testing.T, versions ...string) *testUpstream {
	u, _, _ := newModernServer(t, versions...)
	return u
}

// newModernServer is newModernUpstream with its server, whose resources
// may be subscribed to, and a channel that hears of each call of its
// "wait" tool ended by cancellation.
func newModernServer(t *testing.T, versions ...string) (*testUpstream, *mcp.Server, <-chan struct{}) {
	cancelled := make(chan struct{}, 1)
	server := mcp.NewServer(&mcp.Implementation{Name: "modern-upstream", Version: "2.0.0"}, &mcp.ServerOptions{
		SupportedProtocolVersions: versions,
		Instructions:              "use echo",
		SubscribeHandler:          func(context.Context, *mcp.SubscribeRequest) error { return nil },
		UnsubscribeHandler:        func(context.Context, *mcp.UnsubscribeRequest) error { return nil },
	})
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "echoes text"},
		func(_ context.Context, req *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			return textResult("echo: " + in.Text + " from " + req.ProtocolVersion()), nil, nil
		})
	// The call's _meta.statePad makes its request state that much longer.
	mcp.AddTool(server, &mcp.Tool{Name: "ask", Description: "asks the client's name"},
		func(_ context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			statePad, _ := req.Params.Meta["statePad"].(float64)
			switch el, _ := req.Params.InputResponses["name"].(*mcp.ElicitResult); {
			case el == nil:
				return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{
					"name": &mcp.ElicitParams{Message: "Name?", RequestedSchema: &jsonschema.Schema{Type: "object",
						Properties: map[string]*jsonschema.Schema{"name": {Type: "string"}}}},
					"roots": &mcp.ListRootsParams{},
				}, RequestState: "round-1" + strings.Repeat("s", int(statePad))}, nil, nil
			case !strings.HasPrefix(req.Params.RequestState, "round-1"):
				return nil, nil, fmt.Errorf("request state %q", req.Params.RequestState)
			default:
				roots, _ := req.Params.InputResponses["roots"].(*mcp.ListRootsResult)
				if roots == nil || len(roots.Roots) != 1 {
					return nil, nil, fmt.Errorf("roots answer %+v", req.Params.InputResponses["roots"])
				}
				return textResult(fmt.Sprintf("%s: %v, root %s", el.Action, el.Content["name"], roots.Roots[0].URI)), nil, nil
			}
		})
	mcp.AddTool(server, &mcp.Tool{Name: "wait", Description: "waits until cancelled"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			// A progress notification first: the call is under way.
			_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: req.Params.GetProgressToken(), Progress: 1})
			<-ctx.Done()
			cancelled <- struct{}{}
			return nil, nil, ctx.Err()
		})
	// A tool that wants its region argument in a header too (x-mcp-header).
	regionSchema := &jsonschema.Schema{Type: "object", Properties: map[string]*jsonschema.Schema{
		"region": {Type: "string", Extra: map[string]any{"x-mcp-header": "Region"}},
		"text":   {Type: "string"},
	}}
	mcp.AddTool(server, &mcp.Tool{Name: "routed", InputSchema: regionSchema},
		func(_ context.Context, req *mcp.CallToolRequest, in struct {
			Region string `json:"region"`
			Text   string `json:"text"`
		}) (*mcp.CallToolResult, any, error) {
			return textResult(in.Region + " " + req.Extra.Header.Get("Mcp-Param-Region")), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "nag", Description: "asks for the roots, whatever the answer"},
		func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{"roots": &mcp.ListRootsParams{}}}, nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "log", Description: "logs a line at info level"},
		func(ctx context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			if err := req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "info", Data: "hello-log"}); err != nil {
				return nil, nil, err
			}
			return textResult("logged"), nil, nil
		})
	server.AddPrompt(&mcp.Prompt{Name: "greet"}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "hello"}}}}, nil
	})
	server.AddResource(&mcp.Resource{URI: "demo://doc", Name: "doc"}, func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: "demo://doc", Text: "the doc"}}}, nil
	})
	u := newRecorder(t, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{Stateless: true, PropagateRequestCancellation: true}))
	t.Cleanup(func() {
		u.srv.CloseClientConnections() // the notification streams
		u.srv.Close()
	})
	return u, server, cancelled
}

// TestModernOnlyUpstream runs the go-sdk legacy client through the bridge
// against an upstream that speaks only 2026-07-28: the bridge answers
// initialize from server/discover and stamps each request with the new
// revision's _meta and headers.
func TestModernOnlyUpstream(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	logged := make(chan string, 8)
	cs := connectClientVersion(t, e, &mcp.ClientOptions{
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
			logged <- fmt.Sprint(req.Params.Data)
		},
	}, nil, "2025-06-18")
	ctx := context.Background()

	init := cs.InitializeResult()
	if init.ProtocolVersion != "2025-06-18" || init.ServerInfo == nil || init.ServerInfo.Name != "modern-upstream" || init.Instructions != "use echo" {
		t.Errorf("initialize result: version %q, server %+v, instructions %q", init.ProtocolVersion, init.ServerInfo, init.Instructions)
	}
	if init.Capabilities.Tools == nil || !init.Capabilities.Tools.ListChanged || init.Capabilities.Resources == nil || !init.Capabilities.Resources.Subscribe {
		t.Errorf("capabilities %+v: want the upstream's, list changes and subscriptions included", init.Capabilities)
	}
	if got := callEcho(t, cs, "hi"); got != "echo: hi from "+modernVersion {
		t.Errorf("echo answered %q", got)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) != 6 {
		t.Fatalf("tools/list: %+v, %v", tools, err)
	}
	if err := cs.Ping(ctx, nil); err != nil {
		t.Errorf("ping: %v", err)
	}
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Errorf("logging/setLevel: %v", err)
	}
	// The level goes with each later request, and the upstream's log
	// lines on a call's stream reach the client.
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "log"}); err != nil {
		t.Errorf("log: %v", err)
	}
	select {
	case line := <-logged:
		if line != "hello-log" {
			t.Errorf("log message %q", line)
		}
	case <-time.After(waitLimit):
		t.Error("the upstream's log message never reached the client")
	}
	prompt, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "greet"})
	if err != nil || len(prompt.Messages) != 1 {
		t.Errorf("prompts/get: %+v, %v", prompt, err)
	}
	res, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "demo://doc"})
	if err != nil || len(res.Contents) != 1 || res.Contents[0].Text != "the doc" {
		t.Errorf("resources/read: %+v, %v", res, err)
	}
	// Without an elicitation handler the client refuses the input request:
	// the call fails with the client's error.
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "ask"}); err == nil {
		t.Error("a tool asking for input a client cannot give succeeded")
	}

	// What went upstream: no initialize, no session, the envelope on each.
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"method":"initialize"`) || strings.Contains(r.Body, `"method":"ping"`) ||
			strings.Contains(r.Body, `"method":"logging/setLevel"`) || strings.Contains(r.Body, `"method":"notifications/`) {
			t.Errorf("the upstream got %s", r.Body)
		}
		if r.Header.Get("Mcp-Protocol-Version") != modernVersion || r.Header.Get("Mcp-Method") == "" || r.Header.Get("Mcp-Session-Id") != "" {
			t.Errorf("%s went with MCP-Protocol-Version %q, Mcp-Method %q, Mcp-Session-Id %q", r.Body,
				r.Header.Get("Mcp-Protocol-Version"), r.Header.Get("Mcp-Method"), r.Header.Get("Mcp-Session-Id"))
		}
		if strings.Contains(r.Body, `"method":"tools/call"`) && r.Header.Get("Mcp-Name") == "" {
			t.Errorf("tools/call without Mcp-Name: %s", r.Body)
		}
		afterSetLevel := !strings.Contains(r.Body, `"method":"tools/list"`) && !strings.Contains(r.Body, `"name":"echo"`) &&
			!strings.Contains(r.Body, `"method":"server/discover"`) && !strings.Contains(r.Body, `"method":"subscriptions/listen"`)
		if hasLevel := strings.Contains(r.Body, `"io.modelcontextprotocol/logLevel":"debug"`); hasLevel != afterSetLevel {
			t.Errorf("log level in the _meta %v, want %v (after logging/setLevel): %s", hasLevel, afterSetLevel, r.Body)
		}
	}
}

// TestDualEraUpstreamRelayed checks that an upstream that still speaks
// initialize-based revisions gets the client's initialize as it came.
func TestDualEraUpstreamRelayed(t *testing.T) {
	up := newModernUpstream(t) // the SDK's default versions: both eras
	core, logs := observer.New(zap.InfoLevel)
	e := newEnv(t, up.URL, nil, &Config{Logger: zap.New(core)})
	cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
	if got := callEcho(t, cs, "hi"); got != "echo: hi from 2025-06-18" {
		t.Errorf("echo answered %q", got)
	}
	up.await(t, "the relayed initialize", func(r recorded) bool { return strings.Contains(r.Body, `"method":"initialize"`) })
	if n := logs.FilterMessageSnippet("initialize-based MCP revisions: relaying").Len(); n != 1 {
		t.Errorf("%d log lines say the upstream is relayed, want 1", n)
	}
}

// TestModernOnlyRevive: a translated session the store lost is revived at
// the client's next call as a translated one, from the caller's remembered
// initialize, without anything of initialize going upstream.
func TestModernOnlyRevive(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	if _, text := callAfterLoss(t, up.URL); text != "echo: after the loss from "+modernVersion {
		t.Errorf("answer 2: %q", text)
	}
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"method":"initialize"`) {
			t.Errorf("initialize went upstream: %s", r.Body)
		}
	}
}

// TestModernOnlyInputRequests: an upstream's input requests (a
// 2026-07-28 multi-round-trip result asking for an elicitation and the
// roots) reach the legacy client as server→client requests; its answers
// go back in the call's retry with the upstream's request state.
func TestModernOnlyInputRequests(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	client := newLegacyClient(&mcp.ClientOptions{
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"name": "Ada"}}, nil
		},
	})
	client.AddRoots(&mcp.Root{URI: "file:///tmp/root-a", Name: "a"})
	cs := connectWith(t, e, client, nil, "2025-06-18")
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "ask"})
	if err != nil {
		t.Fatalf("ask: %v", err)
	}
	if got := toolText(t, res); got != "accept: Ada, root file:///tmp/root-a" {
		t.Errorf("ask answered %q", got)
	}
	var retries int
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"inputResponses"`) {
			retries++
			if !strings.Contains(r.Body, `"requestState":"round-1"`) {
				t.Errorf("the retry lacks the request state: %s", r.Body)
			}
		}
	}
	if retries != 1 {
		t.Errorf("%d retries with input responses, want 1", retries)
	}
	// An upstream that never stops asking gets maxInputRounds rounds.
	if _, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "nag"}); err == nil ||
		!strings.Contains(err.Error(), fmt.Sprintf("after %d rounds", maxInputRounds)) {
		t.Errorf("a call asking for input forever: %v, want the rounds' bound", err)
	}
	var sent int
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"name":"nag"`) {
			sent++
		}
	}
	if sent != maxInputRounds+1 {
		t.Errorf("the call went upstream %d times, want %d", sent, maxInputRounds+1)
	}
	sess, err := e.store.Get(context.Background(), sessionOf(t, e))
	if err != nil || len(sess.Inputs) != 0 {
		t.Errorf("input requests left in the session: %+v, %v", sess, err)
	}
}

// TestModernOnlyInputTimeout: a client that never answers the upstream's
// input requests gets, after input_timeout, a JSON-RPC error for its call,
// and the round's record leaves the session.
func TestModernOnlyInputTimeout(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, &Config{InputTimeout: 300 * time.Millisecond})
	s := openStream(t, e, nil)
	s.initialize(t)
	s.mustPost(t, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"ask","arguments":{}}}`)
	got, others := s.awaitResponses(t, "2")
	asked := 0
	for _, ev := range others {
		if env := mustPeek(t, []byte(ev.data)); env.Kind == KindRequest && strings.Contains(string(env.ID), inputIDPrefix) {
			asked++
		}
	}
	if asked != 2 {
		t.Errorf("the client was asked %d input requests, want 2 (elicitation and roots)", asked)
	}
	if answer := got["2"].data; !strings.Contains(answer, `"error"`) || !strings.Contains(answer, "did not answer") {
		t.Errorf("the call's answer: %s, want an error saying the client did not answer", answer)
	}
	awaitIdle(t, e.bridge, s.sessionID)
	sess, err := e.store.Get(context.Background(), s.sessionID)
	if err != nil {
		t.Fatal(err)
	}
	if len(sess.Inputs) != 0 {
		t.Errorf("the session still holds %d rounds of input requests", len(sess.Inputs))
	}
}

// TestModernOnlyInputOutlivesReplica: the replica forwarding a translated
// call stops while the call waits for the client's input; the replica
// holding the client's stream takes the call over and, once the client has
// answered, sends the call again with the answers: the client gets the
// call's real result. A call too large to be kept (over maxKeptCall) gets
// the error of a stopped replica instead, and its round leaves the session.
// A copy of the call's POST that a load balancer sent to the other replica
// meanwhile goes on with the round too, rather than starting the call over.
func TestModernOnlyInputOutlivesReplica(t *testing.T) {
	result := func(t *testing.T, answer string) {
		if got := resultText(t, answer); got != "accept: Ada, root file:///work" {
			t.Errorf("the call answered %q, want its result with the client's answers", got)
		}
	}
	stopped := func(t *testing.T, answer string) {
		if !strings.Contains(answer, `"error"`) || !strings.Contains(answer, "stopped while it waited") {
			t.Errorf("the call answered %s, want the error of a stopped replica", answer)
		}
	}
	for _, tc := range []struct {
		name, pad string
		statePad  int
		sentAgain bool
		want      func(t *testing.T, answer string)
	}{
		{"kept", "", 0, false, result},
		{"kept, its POST sent again", "", 0, true, result},
		{"too large to keep", strings.Repeat("x", maxKeptCall), 0, false, stopped},
		{"its request state too large to keep", "", maxKeptCall, false, stopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newModernUpstream(t, modernVersion)
			store := memory.New(memory.Options{})
			replicaA, replicaB := newEnv(t, up.URL, store, nil), newEnv(t, up.URL, store, nil)
			s := openStream(t, replicaA, nil)
			s.initialize(t)
			askCall := fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"ask","arguments":{},"_meta":{"pad":%q,"statePad":%d}}}`, tc.pad, tc.statePad)
			if code, _, body := postRaw(t, replicaB.srv.URL+s.endpoint, askCall, nil, "application/json"); code != http.StatusAccepted {
				t.Fatalf("the call to replica B: %d %s", code, body)
			}
			asked := map[string]string{} // method -> the bridge's request id
			for len(asked) < 2 {
				ev := s.nextEvent(t)
				if env := mustPeek(t, []byte(ev.data)); env.Kind == KindRequest {
					asked[env.Method] = string(env.ID)
				} else {
					t.Fatalf("before the input requests: %s", ev.data)
				}
			}
			copyAccepted := make(chan int, 1)
			if tc.sentAgain {
				go func() {
					resp, err := http.Post(replicaA.srv.URL+s.endpoint, "application/json", strings.NewReader(askCall))
					if err != nil {
						copyAccepted <- 0
						return
					}
					resp.Body.Close()
					copyAccepted <- resp.StatusCode
				}()
				awaitRequestOf(t, store, s.sessionID, "2", replicaA.bridge.cfg.ReplicaID) // the copy took the record over
			}
			replicaB.bridge.Shutdown() // the call waits for input: left to replica A
			s.mustPost(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"action":"accept","content":{"name":"Ada"}}}`, asked["elicitation/create"]))
			s.mustPost(t, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"roots":[{"uri":"file:///work","name":"work"}]}}`, asked["roots/list"]))
			answer, others := s.awaitResponses(t, "2")
			for _, ev := range others {
				if env := mustPeek(t, []byte(ev.data)); env.Kind == KindRequest {
					t.Errorf("the client was asked again (the call started over): %s", ev.data)
				}
			}
			tc.want(t, answer["2"].data)
			if tc.sentAgain {
				if code := <-copyAccepted; code != http.StatusAccepted {
					t.Errorf("the POST sent again got %d, want 202", code)
				}
			}
			awaitIdle(t, replicaA.bridge, s.sessionID)
			if sess, err := store.Get(context.Background(), s.sessionID); err != nil || len(sess.Inputs) != 0 {
				t.Errorf("after the call the session holds input rounds %v (%v), want none", sess.Inputs, err)
			}
		})
	}
}

// TestModernOnlyNotifications: list-changed notifications and resource
// updates of an upstream of 2026-07-28 reach the legacy client through the
// session's subscriptions/listen stream, which follows the client's
// resources/subscribe.
func TestModernOnlyNotifications(t *testing.T) {
	up, server, _ := newModernServer(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	toolsChanged, updated := make(chan struct{}, 1), make(chan string, 1)
	cs := connectClientVersion(t, e, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			select {
			case toolsChanged <- struct{}{}:
			default:
			}
		},
		ResourceUpdatedHandler: func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
			select {
			case updated <- req.Params.URI:
			default:
			}
		},
	}, nil, "2025-06-18")
	up.await(t, "the notification stream", func(r recorded) bool { return strings.Contains(r.Body, `"subscriptions/listen"`) })
	// The upstream may take the stream on only after the request arrived:
	// change the tools until the client hears of it.
	for i := 0; ; i++ {
		mcp.AddTool(server, &mcp.Tool{Name: fmt.Sprintf("added-%d", i)}, func(context.Context, *mcp.CallToolRequest, noArgs) (*mcp.CallToolResult, any, error) {
			return textResult("added"), nil, nil
		})
		if awaitSignal(toolsChanged, 100*time.Millisecond) {
			break
		}
		if i == 50 {
			t.Fatal("the client never heard that the tools changed")
		}
	}

	if err := cs.Subscribe(context.Background(), &mcp.SubscribeParams{URI: "demo://doc"}); err != nil {
		t.Fatalf("resources/subscribe: %v", err)
	}
	up.await(t, "a notification stream for the subscription", func(r recorded) bool {
		return strings.Contains(r.Body, `"resourceSubscriptions":["demo://doc"]`)
	})
	for i := 0; ; i++ {
		if err := server.ResourceUpdated(context.Background(), &mcp.ResourceUpdatedNotificationParams{URI: "demo://doc"}); err != nil {
			t.Fatal(err)
		}
		select {
		case uri := <-updated:
			if uri != "demo://doc" {
				t.Fatalf("update for %q", uri)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		if i == 50 {
			t.Fatal("the client never heard that the resource changed")
		}
	}
}

func awaitSignal(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestModernOnlyCancel: the client's notifications/cancelled closes the
// translated call's upstream stream, which is how 2026-07-28 cancels.
func TestModernOnlyCancel(t *testing.T) {
	up, _, cancelled := newModernServer(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	underWay := make(chan struct{}, 1)
	cs := connectClientVersion(t, e, &mcp.ClientOptions{
		ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) {
			select {
			case underWay <- struct{}{}:
			default:
			}
		},
	}, nil, "2025-06-18")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		params := &mcp.CallToolParams{Name: "wait"}
		params.SetProgressToken("wait")
		_, err := cs.CallTool(ctx, params)
		done <- err
	}()
	select {
	case <-underWay:
	case <-time.After(waitLimit):
		t.Fatal("the call never got under way")
	}
	cancel() // the SDK sends notifications/cancelled
	if err := <-done; err == nil {
		t.Fatal("a cancelled call succeeded")
	}
	select {
	case <-cancelled:
	case <-time.After(waitLimit):
		t.Fatal("the upstream's handler was never cancelled")
	}
	awaitIdle(t, e.bridge, sessionOf(t, e))
}

// TestUpstreamTurnsBackFromModernOnly: an upstream of 2026-07-28 only
// rolled back to a server of the initialize era, stateless or stateful: the
// translated session's next call gets an upstream session opened with its
// client's initialize, once, and the session is relayed from then on.
func TestUpstreamTurnsBackFromModernOnly(t *testing.T) {
	for _, stateless := range []bool{true, false} {
		t.Run(fmt.Sprintf("stateless=%v", stateless), func(t *testing.T) {
			up := newModernUpstream(t, modernVersion)
			e := newEnv(t, up.URL, nil, nil)
			cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
			if got := callEcho(t, cs, "before"); got != "echo: before from "+modernVersion {
				t.Fatalf("echo answered %q", got)
			}
			// Served by the bridge while translated; asked of the upstream
			// session the rollback opens (settings.go).
			if err := cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "warning"}); err != nil {
				t.Fatalf("SetLoggingLevel: %v", err)
			}
			if err := cs.Subscribe(context.Background(), &mcp.SubscribeParams{URI: "test://kept"}); err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			_, legacy, _ := newModernServer(t, "2025-06-18")
			t.Cleanup(func() {
				for ss := range legacy.Sessions() {
					_ = ss.Close()
				}
			})
			before := len(up.requests())
			up.mu.Lock()
			up.handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return legacy },
				&mcp.StreamableHTTPOptions{Stateless: stateless})
			up.mu.Unlock()
			for _, text := range []string{"after", "again"} {
				if got := callEcho(t, cs, text); got != "echo: "+text+" from 2025-06-18" {
					t.Errorf("echo after the rollback answered %q", got)
				}
			}
			methods := map[string]int{}
			for _, r := range up.requests()[before:] {
				if r.Method == http.MethodPost {
					methods[mustPeek(t, []byte(r.Body)).Method]++
					if strings.Contains(r.Body, "logging/setLevel") && !strings.Contains(r.Body, `"level":"warning"`) ||
						strings.Contains(r.Body, "resources/subscribe") && !strings.Contains(r.Body, `"uri":"test://kept"`) {
						t.Errorf("the client's setting asked again as %s", r.Body)
					}
				}
			}
			if methods["initialize"] != 1 || methods["logging/setLevel"] != 1 || methods["resources/subscribe"] != 1 {
				t.Errorf("the rolled-back upstream got %v, want one initialize, logging/setLevel and resources/subscribe", methods)
			}
		})
	}
}

// TestModernOnlyCancelElsewhere: a notifications/cancelled taken by one
// replica ends a translated call another replica forwards (it finds the
// call's record claimed and closes the upstream stream), and the call gets
// no answer.
func TestModernOnlyCancelElsewhere(t *testing.T) {
	up, _, cancelled := newModernServer(t, modernVersion)
	store := memory.New(memory.Options{})
	replicaA, replicaB := newEnv(t, up.URL, store, nil), newEnv(t, up.URL, store, nil)
	s := openStream(t, replicaA, nil)
	s.initialize(t)
	waitCall := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"wait","arguments":{},"_meta":{"progressToken":"w"}}}`
	if code, _, body := postRaw(t, replicaB.srv.URL+s.endpoint, waitCall, nil, "application/json"); code != http.StatusAccepted {
		t.Fatalf("the call to replica B: %d %s", code, body)
	}
	if ev := s.nextEvent(t); !strings.Contains(ev.data, `"notifications/progress"`) {
		t.Fatalf("first message after the call: %s, want its progress", ev.data)
	}
	s.mustPost(t, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}`) // to replica A
	select {
	case <-cancelled:
	case <-time.After(waitLimit):
		t.Fatal("the upstream's handler was never cancelled")
	}
	awaitIdle(t, replicaB.bridge, s.sessionID)
	// The next answer on the stream is the next call's: none for the
	// cancelled one.
	s.mustPost(t, echoCall("3", "after"))
	_, others := s.awaitResponses(t, "3")
	for _, ev := range others {
		if env := mustPeek(t, []byte(ev.data)); env.Kind == KindResponse {
			t.Errorf("the cancelled call was answered: %s", ev.data)
		}
	}
}

// TestModernOnlyParamHeaders: a tool argument the upstream wants in an
// Mcp-Param header (x-mcp-header) gets one, whether the client listed the
// tools first or not (then the bridge asks tools/list itself), base64 for
// text that is not plain ASCII.
func TestModernOnlyParamHeaders(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
	for _, region := range []string{"eu-west", "zürich"} {
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "routed", Arguments: map[string]any{"region": region, "text": "x"}})
		if err != nil {
			t.Fatalf("routed(%s): %v", region, err)
		}
		want := region + " " + region
		if region == "zürich" {
			want = region + " =?base64?" + base64.StdEncoding.EncodeToString([]byte(region)) + "?="
		}
		if got := toolText(t, res); got != want {
			t.Errorf("routed(%s) answered %q, want %q", region, got, want)
		}
	}
}

// TestUpstreamTurnsModernOnly: a relayed session whose upstream is replaced
// by one of 2026-07-28 only (a rollout) is translated from its next call
// on, and the client notices nothing.
func TestUpstreamTurnsModernOnly(t *testing.T) {
	up := newModernUpstream(t) // both eras: relayed
	e := newEnv(t, up.URL, nil, nil)
	cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
	if got := callEcho(t, cs, "before"); got != "echo: before from 2025-06-18" {
		t.Fatalf("echo answered %q", got)
	}
	// Relayed now, and kept for the translated session (settings.go).
	if err := cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "warning"}); err != nil {
		t.Fatalf("SetLoggingLevel: %v", err)
	}
	modern := newModernUpstream(t, modernVersion)
	up.mu.Lock()
	up.handler = modern.handler
	up.mu.Unlock()
	before := len(up.requests())
	if got := callEcho(t, cs, "after"); got != "echo: after from "+modernVersion {
		t.Errorf("echo after the rollout answered %q", got)
	}
	var call *recorded
	for _, r := range up.requests()[before:] {
		if strings.Contains(r.Body, `"tools/call"`) && strings.Contains(r.Body, `"after"`) {
			call = &r
		}
	}
	if call == nil || !strings.Contains(call.Body, `"io.modelcontextprotocol/logLevel":"warning"`) {
		t.Errorf("the translated call does not carry the client's log level: %v", call)
	}
}

// awaitRequestOf waits until the store records the request id of session
// as in flight on replica.
func awaitRequestOf(t *testing.T, store sessionstore.Store, session, id, replica string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		reqs, err := store.ListRequests(context.Background(), session)
		if r, ok := reqs[id]; err == nil && ok && r.Replica == replica {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s of the session never recorded on replica %s: %v %v", id, replica, reqs, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
