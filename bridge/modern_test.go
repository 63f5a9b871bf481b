package bridge

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// newModernUpstream is a go-sdk server that speaks only MCP 2026-07-28
// (stateless, as the SDK requires for that revision), recorded: an echo
// tool, a tool that asks the client for input the 2026 way, a prompt and a
// resource, with instructions.
func newModernUpstream(t *testing.T, versions ...string) *testUpstream {
	server := mcp.NewServer(&mcp.Implementation{Name: "modern-upstream", Version: "2.0.0"}, &mcp.ServerOptions{
		SupportedProtocolVersions: versions,
		Instructions:              "use echo",
	})
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "echoes text"},
		func(_ context.Context, req *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
			return textResult("echo: " + in.Text + " from " + req.ProtocolVersion()), nil, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "ask", Description: "asks the client's name"},
		func(_ context.Context, req *mcp.CallToolRequest, _ noArgs) (*mcp.CallToolResult, any, error) {
			switch el, _ := req.Params.InputResponses["name"].(*mcp.ElicitResult); {
			case el == nil:
				return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{
					"name": &mcp.ElicitParams{Message: "Name?", RequestedSchema: &jsonschema.Schema{Type: "object",
						Properties: map[string]*jsonschema.Schema{"name": {Type: "string"}}}},
					"roots": &mcp.ListRootsParams{},
				}, RequestState: "round-1"}, nil, nil
			case req.Params.RequestState != "round-1":
				return nil, nil, fmt.Errorf("request state %q", req.Params.RequestState)
			default:
				roots, _ := req.Params.InputResponses["roots"].(*mcp.ListRootsResult)
				if roots == nil || len(roots.Roots) != 1 {
					return nil, nil, fmt.Errorf("roots answer %+v", req.Params.InputResponses["roots"])
				}
				return textResult(fmt.Sprintf("%s: %v, root %s", el.Action, el.Content["name"], roots.Roots[0].URI)), nil, nil
			}
		})
	server.AddPrompt(&mcp.Prompt{Name: "greet"}, func(context.Context, *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
		return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "hello"}}}}, nil
	})
	server.AddResource(&mcp.Resource{URI: "demo://doc", Name: "doc"}, func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
		return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: "demo://doc", Text: "the doc"}}}, nil
	})
	u := newRecorder(t, mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{Stateless: true}))
	t.Cleanup(u.srv.Close)
	return u
}

// TestModernOnlyUpstream runs the go-sdk legacy client through the bridge
// against an upstream that speaks only 2026-07-28: the bridge answers
// initialize from server/discover and stamps each request with the new
// revision's _meta and headers.
func TestModernOnlyUpstream(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
	ctx := context.Background()

	init := cs.InitializeResult()
	if init.ProtocolVersion != "2025-06-18" || init.ServerInfo == nil || init.ServerInfo.Name != "modern-upstream" || init.Instructions != "use echo" {
		t.Errorf("initialize result: version %q, server %+v, instructions %q", init.ProtocolVersion, init.ServerInfo, init.Instructions)
	}
	if init.Capabilities.Tools == nil || init.Capabilities.Tools.ListChanged {
		t.Errorf("tools capability %+v: want tools without listChanged (not translated yet)", init.Capabilities.Tools)
	}
	if got := callEcho(t, cs, "hi"); got != "echo: hi from "+modernVersion {
		t.Errorf("echo answered %q", got)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil || len(tools.Tools) != 2 {
		t.Fatalf("tools/list: %+v, %v", tools, err)
	}
	if err := cs.Ping(ctx, nil); err != nil {
		t.Errorf("ping: %v", err)
	}
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Errorf("logging/setLevel: %v", err)
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
			!strings.Contains(r.Body, `"method":"server/discover"`)
		if hasLevel := strings.Contains(r.Body, `"io.modelcontextprotocol/logLevel":"debug"`); hasLevel != afterSetLevel {
			t.Errorf("log level in the _meta %v, want %v (after logging/setLevel): %s", hasLevel, afterSetLevel, r.Body)
		}
	}
}

// TestDualEraUpstreamRelayed checks that an upstream that still speaks
// initialize-based revisions gets the client's initialize as it came.
func TestDualEraUpstreamRelayed(t *testing.T) {
	up := newModernUpstream(t) // the SDK's default versions: both eras
	e := newEnv(t, up.URL, nil, nil)
	cs := connectClientVersion(t, e, nil, nil, "2025-06-18")
	if got := callEcho(t, cs, "hi"); got != "echo: hi from 2025-06-18" {
		t.Errorf("echo answered %q", got)
	}
	up.await(t, "the relayed initialize", func(r recorded) bool { return strings.Contains(r.Body, `"method":"initialize"`) })
}

// TestModernOnlyRevive: a translated session the store lost is revived at
// the client's next call as a translated one, from the caller's remembered
// initialize, without anything of initialize going upstream.
func TestModernOnlyRevive(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	store := memory.New(memory.Options{})
	e := newEnv(t, up.URL, store, &continuityConfig)
	a := openStream(t, e, nil)
	a.initialize(t)
	if _, err := store.Delete(context.Background(), a.sessionID); err != nil {
		t.Fatal(err)
	}
	a.close()

	a.mustPost(t, echoCall(`2`, "after the loss"))
	awaitIdle(t, e.bridge, a.sessionID)
	b := openStream(t, e, http.Header{"Mcp-Protocol-Version": {"2025-03-26"}})
	if text := resultText(t, b.awaitResponse(t, `2`).data); text != "echo: after the loss from "+modernVersion {
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
	sess, err := e.store.Get(context.Background(), sessionOf(t, e))
	if err != nil || len(sess.Inputs) != 0 {
		t.Errorf("input requests left in the session: %+v, %v", sess, err)
	}
}
