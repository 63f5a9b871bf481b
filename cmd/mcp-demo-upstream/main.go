// Command mcp-demo-upstream is a small Streamable HTTP MCP server built on the
// official Go SDK (github.com/modelcontextprotocol/go-sdk). It is the demo
// upstream of the Caddy MCP SSE bridge and the upstream used by end-to-end
// tests.
//
// Usage:
//
//	mcp-demo-upstream [flags]
//
// Flags:
//
//	-addr host:port
//		TCP address to listen on (default "127.0.0.1:0", an ephemeral
//		loopback port). The MCP endpoint is served at path /mcp.
//	-mode stateful|stateless
//		Session handling (default "stateful"). "stateless" sets the SDK's
//		StreamableHTTPOptions.Stateless: no Mcp-Session-Id and no GET
//		stream. Only stateless servers speak protocol 2026-07-28, which the
//		go-sdk client prefers; stateful ones negotiate 2025-11-25 or older.
//	-json
//		Answer POSTs with application/json instead of text/event-stream
//		(StreamableHTTPOptions.JSONResponse). Notifications and requests sent
//		while handling a call then go to the standalone GET stream, so in
//		stateless mode progress notifications are dropped (and logged).
//	-modern-only
//		Support only MCP protocol version 2026-07-28
//		(ServerOptions.SupportedProtocolVersions). The SDK serves that version
//		on stateless transports only, so this requires -mode stateless.
//	-event-store
//		Keep SSE events in an in-memory event store, so that events carry
//		ids and streams can be resumed with Last-Event-ID (legacy protocol
//		versions only; 2026-07-28 removed resumption).
//	-allow-any-host
//		Disable the SDK's DNS-rebinding protection, which rejects requests
//		that arrive on a loopback address with a non-loopback Host header
//		(for example when a proxy forwards the client's Host unchanged).
//	-require-token-from URL
//		Require an OAuth 2.1 bearer token on /mcp (go-sdk's
//		auth.RequireBearerToken), verified by POSTing it to this RFC 7662
//		token introspection endpoint: the token must be active, have an
//		expiry and carry the scope "mcp:tools". Refused requests get 401 (403
//		without the scope) and WWW-Authenticate: Bearer
//		resource_metadata="http://ADDR/.well-known/oauth-protected-resource/mcp",
//		scope="mcp:tools". That URL serves the RFC 9728 protected resource
//		metadata: resource http://ADDR/mcp, authorization_servers
//		[-authorization-server], scopes_supported ["mcp:tools"]. Each request
//		to /mcp logs one line to stderr, "auth METHOD PATH ok|refused
//		bearer=none|<first 12 hex digits of the token's SHA-256> [reason]",
//		and each metadata request "metadata METHOD PATH".
//	-authorization-server URL
//		The issuer listed in the protected resource metadata (default: the
//		scheme and host of -require-token-from).
//	-token-audience URL
//		With -require-token-from, also require the introspected token's
//		"aud" to contain this URL (RFC 8707: the resource the client asked
//		the token for). Behind a proxy that presents the server under its
//		own URL, that is the proxy's URL.
//
// Once the listener is open the command prints exactly one line to stdout,
//
//	listening on http://127.0.0.1:PORT/mcp
//
// with the real address, and then serves until it receives SIGINT or SIGTERM,
// when it closes all MCP sessions and shuts the HTTP server down.
//
// The server offers the tools echo, add, progress, sample, elicit, roots,
// blob, slow, headers and fail, the resource demo://greeting and the prompt
// greet; see tools.go. The sample, elicit and roots tools ask the client for
// input. On protocols up to 2025-11-25 they send it a request, which a
// stateless server cannot do (the tool then returns a tool error). On
// 2026-07-28, which only a stateless server speaks, they return an
// input-required result that the client answers by retrying the call (multi
// round-trip requests), so they work there too.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// shutdownTimeout bounds how long a graceful shutdown may wait for in-flight
// HTTP requests before the remaining connections are closed forcibly.
const shutdownTimeout = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "mcp-demo-upstream: %v\n", err)
		os.Exit(1)
	}
}

// config holds the parsed command-line flags.
type config struct {
	addr         string
	stateless    bool
	jsonResponse bool
	modernOnly   bool
	eventStore   bool
	allowAnyHost bool
	oauth        oauthConfig
}

// parseFlags parses the command-line arguments (without the program name).
// Usage messages and flag errors are written to stderr.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("mcp-demo-upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	mode := fs.String("mode", "stateful", `session mode: "stateful" or "stateless"`)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:0", "TCP `address` to listen on; the MCP endpoint is /mcp")
	fs.BoolVar(&cfg.jsonResponse, "json", false, "respond with application/json instead of text/event-stream")
	fs.BoolVar(&cfg.modernOnly, "modern-only", false, "support only protocol version "+modernProtocolVersion+" (requires -mode stateless)")
	fs.BoolVar(&cfg.eventStore, "event-store", false, "use an in-memory event store so SSE events carry ids and streams can be resumed")
	fs.BoolVar(&cfg.allowAnyHost, "allow-any-host", false, "disable DNS-rebinding protection (accept any Host header on loopback)")
	fs.StringVar(&cfg.oauth.introspectionURL, "require-token-from", "", "require bearer tokens, verified with this RFC 7662 introspection `URL`")
	fs.StringVar(&cfg.oauth.authorizationServer, "authorization-server", "", "issuer `URL` in the protected resource metadata (default: the origin of -require-token-from)")
	fs.StringVar(&cfg.oauth.audience, "token-audience", "", "with -require-token-from, the audience `URL` a token must have")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := checkOAuthFlags(&cfg.oauth); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch *mode {
	case "stateful":
	case "stateless":
		cfg.stateless = true
	default:
		return nil, fmt.Errorf(`invalid -mode %q: want "stateful" or "stateless"`, *mode)
	}
	if cfg.modernOnly && !cfg.stateless {
		// The SDK's stateful transport rejects every 2026-07-28 request and
		// this option excludes every other version, so such a server could
		// not serve any client.
		return nil, fmt.Errorf("-modern-only requires -mode stateless: go-sdk serves protocol %s on stateless transports only", modernProtocolVersion)
	}
	return &cfg, nil
}

// run parses args, starts the server and serves until ctx is done. Once the
// listener is open it writes the line "listening on http://ADDR/mcp" to
// stdout. Diagnostics go to stderr. It returns nil after a clean shutdown.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	server := newServer(cfg, logger)
	opts := &mcp.StreamableHTTPOptions{
		Stateless:                  cfg.stateless,
		JSONResponse:               cfg.jsonResponse,
		Logger:                     logger,
		DisableLocalhostProtection: cfg.allowAnyHost,
	}
	if cfg.eventStore {
		opts.EventStore = mcp.NewMemoryEventStore(nil)
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	baseURL := "http://" + ln.Addr().String()

	var mcpHandler http.Handler = withHostHeader(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, opts))
	mux := http.NewServeMux()
	if cfg.oauth.introspectionURL != "" {
		// Token introspection gets its own connection pool, closed on exit.
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		logw := &lockedWriter{w: stderr}
		metadataPath := protectedResourceWellKnown + "/mcp"
		mcpHandler = protect(mcpHandler, &cfg.oauth, &http.Client{Transport: tr}, baseURL+metadataPath, logw)
		mux.Handle(metadataPath, metadataHandler(baseURL+"/mcp", &cfg.oauth, logw))
	}
	mux.Handle("/mcp", mcpHandler)
	// Standalone and request SSE streams stay open for as long as their MCP
	// session lives, so Shutdown would wait for them until its deadline.
	// Shutdown cancels every request's context, which ends the streams even
	// when one registers while its session is closing, and closes the
	// sessions.
	//
	// ServerSession.Close waits for in-flight calls to finish, so the
	// handlers of those calls are cancelled first.
	handlersCtx, cancelHandlers := context.WithCancel(context.Background())
	defer cancelHandlers()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return handlersCtx },
	}
	server.AddReceivingMiddleware(cancelWhenDone(handlersCtx))
	srv.RegisterOnShutdown(func() {
		cancelHandlers()
		for ss := range server.Sessions() {
			_ = ss.Close()
		}
	})

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if _, err := fmt.Fprintf(stdout, "listening on %s/mcp\n", baseURL); err != nil {
		_ = srv.Close()
		<-serveErr
		return fmt.Errorf("announcing address: %w", err)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if err != nil {
		logger.Warn("graceful shutdown incomplete; closing remaining connections", "error", err)
		_ = srv.Close()
	}
	if serr := <-serveErr; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", serr)
	}
	// Sessions created while Shutdown was running are not covered by the
	// shutdown hook.
	for ss := range server.Sessions() {
		_ = ss.Close()
	}
	return nil
}

// cancelWhenDone returns MCP middleware that cancels the context of every
// request handler once done is done.
func cancelWhenDone(done context.Context) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stop := context.AfterFunc(done, cancel)
			defer stop()
			return next(ctx, method, req)
		}
	}
}

// withHostHeader makes the request's Host visible to tool handlers. Go's HTTP
// server moves the Host header into http.Request.Host, while the SDK hands
// tool handlers only the header map (RequestExtra.Header), so the handler
// sees a copy of the request with Host restored into its header.
func withHostHeader(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r2 := r.Clone(r.Context())
		r2.Header.Set("Host", r.Host)
		h.ServeHTTP(w, r2)
	})
}
