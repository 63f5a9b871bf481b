package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const (
	// modernProtocolVersion is the MCP protocol version that replaced the
	// initialize handshake with per-request metadata (SEP-2575) and
	// server-to-client requests with multi round-trip results (SEP-2322).
	modernProtocolVersion = "2026-07-28"

	// maxBlobSize is the largest payload the blob tool produces.
	maxBlobSize = 8 << 20

	// greetingURI, greetingText: the demo resource.
	greetingURI  = "demo://greeting"
	greetingText = "hello from the demo upstream"

	// inputKey is the id of the single input request that the sample, elicit
	// and roots tools embed in an input-required result.
	inputKey = "input"
)

// reportedHeaders are the request headers echoed by the headers tool, in
// canonical form.
var reportedHeaders = []string{
	"Authorization",
	"Host",
	"Origin",
	"Mcp-Session-Id",
	"Mcp-Protocol-Version",
	"Last-Event-Id",
	"X-Test",
}

// newServer returns the demo MCP server with all its tools, its resource and
// its prompt registered.
func newServer(cfg *config, logger *slog.Logger) *mcp.Server {
	opts := &mcp.ServerOptions{Logger: logger}
	if cfg.modernOnly {
		opts.SupportedProtocolVersions = []string{modernProtocolVersion}
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "mcp-demo-upstream", Version: "v1.0.0"}, opts)

	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "Return the message unchanged."}, echoTool)
	mcp.AddTool(s, &mcp.Tool{Name: "add", Description: "Return the sum of a and b."}, addTool)
	mcp.AddTool(s, &mcp.Tool{Name: "progress", Description: "Report progress steps times, delayMs apart, then return \"done\"."}, progressTool(logger))
	mcp.AddTool(s, &mcp.Tool{Name: "sample", Description: "Ask the client to sample a reply to prompt."}, sampleTool)
	mcp.AddTool(s, &mcp.Tool{Name: "elicit", Description: "Ask the client's user for a name."}, elicitTool)
	mcp.AddTool(s, &mcp.Tool{Name: "roots", Description: "Return the client's root URIs as a JSON array."}, rootsTool)
	mcp.AddTool(s, &mcp.Tool{Name: "blob", Description: "Return size bytes of 'x' (at most 8 MiB)."}, blobTool)
	mcp.AddTool(s, &mcp.Tool{Name: "slow", Description: "Sleep ms milliseconds, then return \"slept\"."}, slowTool)
	mcp.AddTool(s, &mcp.Tool{Name: "headers", Description: "Return selected HTTP request headers as a JSON object."}, headersTool)
	mcp.AddTool(s, &mcp.Tool{Name: "fail", Description: "Always fail with a tool error."}, failTool)

	s.AddResource(&mcp.Resource{
		URI:         greetingURI,
		Name:        "greeting",
		Description: "A fixed greeting.",
		MIMEType:    "text/plain",
	}, readGreeting)

	s.AddPrompt(&mcp.Prompt{
		Name:        "greet",
		Description: "Greet someone by name.",
		Arguments:   []*mcp.PromptArgument{{Name: "name", Description: "Who to greet.", Required: true}},
	}, greetPrompt)
	return s
}

// textResult returns a successful tool result holding one text content.
func textResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}

// none is the input of tools without arguments.
type none struct{}

type echoArgs struct {
	Message string `json:"message" jsonschema:"the text to return"`
}

func echoTool(_ context.Context, _ *mcp.CallToolRequest, in echoArgs) (*mcp.CallToolResult, any, error) {
	return textResult(in.Message), nil, nil
}

type addArgs struct {
	A float64 `json:"a" jsonschema:"first addend"`
	B float64 `json:"b" jsonschema:"second addend"`
}

func addTool(_ context.Context, _ *mcp.CallToolRequest, in addArgs) (*mcp.CallToolResult, any, error) {
	return textResult(strconv.FormatFloat(in.A+in.B, 'f', -1, 64)), nil, nil
}

type progressArgs struct {
	Steps   int `json:"steps" jsonschema:"number of progress notifications (0 to 10000)"`
	DelayMs int `json:"delayMs,omitempty" jsonschema:"milliseconds between notifications"`
}

// progressTool sends in.Steps progress notifications (progress 1..Steps of
// total Steps), DelayMs apart, when the call carries a progress token.
// Notifications that cannot be delivered (for example with -json in stateless
// mode, where there is no stream to carry them) are logged once per call and
// not sent again; the call still succeeds.
func progressTool(logger *slog.Logger) mcp.ToolHandlerFor[progressArgs, any] {
	return func(ctx context.Context, req *mcp.CallToolRequest, in progressArgs) (*mcp.CallToolResult, any, error) {
		if in.Steps < 0 || in.Steps > 10000 {
			return nil, nil, fmt.Errorf("steps must be between 0 and 10000, got %d", in.Steps)
		}
		if in.DelayMs < 0 {
			return nil, nil, fmt.Errorf("delayMs must not be negative, got %d", in.DelayMs)
		}
		token := req.Params.GetProgressToken()
		notify := token != nil
		for i := 1; i <= in.Steps; i++ {
			if i > 1 {
				if err := sleep(ctx, time.Duration(in.DelayMs)*time.Millisecond); err != nil {
					return nil, nil, err
				}
			}
			if !notify {
				continue
			}
			err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
				ProgressToken: token,
				Progress:      float64(i),
				Total:         float64(in.Steps),
				Message:       fmt.Sprintf("step %d of %d", i, in.Steps),
			})
			if err != nil {
				logger.Warn("progress notifications not delivered", "step", i, "error", err)
				notify = false
			}
		}
		return textResult("done"), nil, nil
	}
}

// Client input: sample, elicit and roots.
//
// Up to protocol 2025-11-25 the server sends the client a JSON-RPC request
// (sampling/createMessage, elicitation/create, roots/list) while the tool
// call is in progress. That needs a session whose client can answer, so it
// fails in stateless mode. From protocol 2026-07-28 on such requests are
// forbidden; the tool instead returns an input-required result with the
// request embedded, and the client retries the call with the answer in
// inputResponses (multi round-trip requests, SEP-2322). The tools below speak
// whichever the call uses, and report failures as tool errors.

// usesInputRequests reports whether req follows a protocol version that
// replaces server-to-client requests with multi round-trip results.
func usesInputRequests(req *mcp.CallToolRequest) bool {
	return req.ProtocolVersion() >= modernProtocolVersion
}

// checkClientInput returns an error if the tool cannot ask the client for
// input of the given kind ("sampling", "elicitation" or "roots") during req.
func checkClientInput(req *mcp.CallToolRequest, kind string, declared func(*mcp.ClientCapabilities) bool) error {
	if !usesInputRequests(req) && req.Session.ID() == "" {
		// A stateless server does not know the capabilities the client
		// declared at initialization, and its transport rejects outgoing
		// requests.
		return fmt.Errorf("a stateless server cannot send %s requests to the client on protocol %s (use protocol %s or a stateful server)",
			kind, req.ProtocolVersion(), modernProtocolVersion)
	}
	if caps := req.ClientCapabilities(); caps == nil || !declared(caps) {
		return fmt.Errorf("the client did not declare the %s capability", kind)
	}
	return nil
}

// inputResponse returns the response to the tool's input request, if the call
// is a retry that carries one.
func inputResponse[T mcp.InputResponse](req *mcp.CallToolRequest) (T, bool, error) {
	var zero T
	r, ok := req.Params.InputResponses[inputKey]
	if !ok {
		return zero, false, nil
	}
	v, ok := r.(T)
	if !ok {
		return zero, false, fmt.Errorf("inputResponses[%q] has type %T, want %T", inputKey, r, zero)
	}
	return v, true, nil
}

// needInput returns an input-required result asking the client for ir.
func needInput(ir mcp.InputRequest) *mcp.CallToolResult {
	return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{inputKey: ir}}
}

type sampleArgs struct {
	Prompt string `json:"prompt" jsonschema:"the user message to sample a reply to"`
}

func sampleTool(ctx context.Context, req *mcp.CallToolRequest, in sampleArgs) (*mcp.CallToolResult, any, error) {
	if err := checkClientInput(req, "sampling", func(c *mcp.ClientCapabilities) bool { return c.Sampling != nil }); err != nil {
		return nil, nil, fmt.Errorf("sampling failed: %w", err)
	}
	params := &mcp.CreateMessageParams{
		MaxTokens: 100,
		Messages:  []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: in.Prompt}}},
	}
	var content []mcp.Content
	if usesInputRequests(req) {
		res, ok, err := inputResponse[*mcp.CreateMessageWithToolsResult](req)
		if err != nil {
			return nil, nil, fmt.Errorf("sampling failed: %w", err)
		}
		if !ok {
			return needInput(params), nil, nil
		}
		content = res.Content
	} else {
		res, err := req.Session.CreateMessage(ctx, params)
		if err != nil {
			return nil, nil, fmt.Errorf("sampling failed: %w", err)
		}
		content = []mcp.Content{res.Content}
	}
	for _, c := range content {
		if t, ok := c.(*mcp.TextContent); ok {
			return textResult("sampled: " + t.Text), nil, nil
		}
	}
	return nil, nil, errors.New("sampling failed: the sampled message has no text content")
}

type elicitArgs struct {
	Message string `json:"message" jsonschema:"the message to show the user"`
}

// nameSchema is the schema of the elicit tool's requested form.
var nameSchema = map[string]any{
	"type": "object",
	"properties": map[string]any{
		"name": map[string]any{"type": "string", "description": "Your name"},
	},
}

func elicitTool(ctx context.Context, req *mcp.CallToolRequest, in elicitArgs) (*mcp.CallToolResult, any, error) {
	if err := checkClientInput(req, "elicitation", func(c *mcp.ClientCapabilities) bool { return c.Elicitation != nil }); err != nil {
		return nil, nil, fmt.Errorf("elicitation failed: %w", err)
	}
	params := &mcp.ElicitParams{Mode: "form", Message: in.Message, RequestedSchema: nameSchema}
	var res *mcp.ElicitResult
	if usesInputRequests(req) {
		r, ok, err := inputResponse[*mcp.ElicitResult](req)
		if err != nil {
			return nil, nil, fmt.Errorf("elicitation failed: %w", err)
		}
		if !ok {
			return needInput(params), nil, nil
		}
		res = r
	} else {
		r, err := req.Session.Elicit(ctx, params)
		if err != nil {
			return nil, nil, fmt.Errorf("elicitation failed: %w", err)
		}
		res = r
	}
	content, err := json.Marshal(res.Content)
	if err != nil {
		return nil, nil, fmt.Errorf("elicitation failed: encoding content: %w", err)
	}
	return textResult(res.Action + ":" + string(content)), nil, nil
}

func rootsTool(ctx context.Context, req *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, any, error) {
	if err := checkClientInput(req, "roots", func(c *mcp.ClientCapabilities) bool { return c.RootsV2 != nil }); err != nil {
		return nil, nil, fmt.Errorf("listing roots failed: %w", err)
	}
	var res *mcp.ListRootsResult
	if usesInputRequests(req) {
		r, ok, err := inputResponse[*mcp.ListRootsResult](req)
		if err != nil {
			return nil, nil, fmt.Errorf("listing roots failed: %w", err)
		}
		if !ok {
			return needInput(&mcp.ListRootsParams{}), nil, nil
		}
		res = r
	} else {
		r, err := req.Session.ListRoots(ctx, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("listing roots failed: %w", err)
		}
		res = r
	}
	uris := make([]string, 0, len(res.Roots))
	for _, r := range res.Roots {
		uris = append(uris, r.URI)
	}
	data, err := json.Marshal(uris)
	if err != nil {
		return nil, nil, err
	}
	return textResult(string(data)), nil, nil
}

type blobArgs struct {
	Size int `json:"size" jsonschema:"number of bytes to return (at most 8 MiB)"`
}

func blobTool(_ context.Context, _ *mcp.CallToolRequest, in blobArgs) (*mcp.CallToolResult, any, error) {
	if in.Size < 0 || in.Size > maxBlobSize {
		return nil, nil, fmt.Errorf("size must be between 0 and %d, got %d", maxBlobSize, in.Size)
	}
	return textResult(strings.Repeat("x", in.Size)), nil, nil
}

type slowArgs struct {
	Ms int `json:"ms" jsonschema:"milliseconds to sleep"`
}

func slowTool(ctx context.Context, _ *mcp.CallToolRequest, in slowArgs) (*mcp.CallToolResult, any, error) {
	if in.Ms < 0 {
		return nil, nil, fmt.Errorf("ms must not be negative, got %d", in.Ms)
	}
	if err := sleep(ctx, time.Duration(in.Ms)*time.Millisecond); err != nil {
		return nil, nil, err
	}
	return textResult("slept"), nil, nil
}

// headersTool returns the reportedHeaders present on the HTTP request that
// carried the call, as a JSON object; absent headers are omitted. Multiple
// values of one header are joined with ", ".
func headersTool(_ context.Context, req *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, any, error) {
	seen := map[string]string{}
	if req.Extra != nil {
		for _, name := range reportedHeaders {
			if vs := req.Extra.Header.Values(name); len(vs) > 0 {
				seen[name] = strings.Join(vs, ", ")
			}
		}
	}
	data, err := json.Marshal(seen)
	if err != nil {
		return nil, nil, err
	}
	return textResult(string(data)), nil, nil
}

func failTool(context.Context, *mcp.CallToolRequest, none) (*mcp.CallToolResult, any, error) {
	return nil, nil, errors.New("failed on purpose")
}

func readGreeting(_ context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{
		URI:      greetingURI,
		MIMEType: "text/plain",
		Text:     greetingText,
	}}}, nil
}

func greetPrompt(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	name, ok := req.Params.Arguments["name"]
	if !ok || name == "" {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: `prompt "greet" requires the argument "name"`}
	}
	return &mcp.GetPromptResult{
		Description: "A greeting",
		Messages: []*mcp.PromptMessage{{
			Role:    "user",
			Content: &mcp.TextContent{Text: "Hello, " + name + "!"},
		}},
	}, nil
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
