// Package caddymodule registers the MCP legacy SSE bridge with Caddy: the
// HTTP handler http.handlers.mcp_sse_bridge, its Caddyfile directive
// mcp_sse_bridge, and its session store guest modules. Caddy glue only: the
// protocol lives in package bridge.
package caddymodule

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves legacy MCP HTTP+SSE clients (protocol 2024-11-05) from a
// Streamable HTTP MCP server. GET on sse_path opens a client's event stream;
// POST on message_path?sessionId=… carries its JSON-RPC messages, which the
// handler forwards upstream. Requests to other paths go to the next handler.
//
// All session state lives in the configured store, so that any replica
// sharing the store can serve any request.
type Handler struct {
	// Upstream is the URL of the Streamable HTTP endpoint of the MCP server,
	// e.g. "http://127.0.0.1:9000/mcp". Required.
	Upstream string `json:"upstream,omitempty"`

	// SSEPath is the path of the legacy event stream. Default: "/sse".
	SSEPath string `json:"sse_path,omitempty"`

	// MessagePath is the path clients POST messages to. Default: "/messages".
	MessagePath string `json:"message_path,omitempty"`

	// Keepalive is the interval of ': ping' comments on every stream, which
	// keep proxies and clients from closing idle streams. Default: 15s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	// StreamWriteTimeout bounds each write to a client's event stream: a
	// client that reads nothing for that long is disconnected, and its
	// messages wait in the store (bounded by the store's max_pending) until
	// it reconnects. Default: 1m.
	StreamWriteTimeout caddy.Duration `json:"stream_write_timeout,omitempty"`

	// SessionTTL is how long a session outlives its stream, so that a client
	// can come back to it; after that its upstream session is ended with
	// DELETE. Default: 10m.
	SessionTTL caddy.Duration `json:"session_ttl,omitempty"`

	// Adopt says which callers may get their released session back without
	// Last-Event-ID (a reconnecting client that sends MCP-Protocol-Version on
	// its GET, or whose first POST is not initialize): "any" (default),
	// "authenticated" (only callers with an identity: the identity option's
	// user, or Authorization or a client certificate; sessions are only ever
	// adopted by the same identity) or "off". See the README's "Session continuity".
	Adopt string `json:"adopt,omitempty"`

	// AdoptHold is how long an adopted session's messages are held back, so
	// that a new client (which POSTs initialize at once) never receives an
	// earlier client's messages. Default: 2s.
	AdoptHold caddy.Duration `json:"adopt_hold,omitempty"`

	// UpstreamHeaderTimeout bounds the wait for the headers of an upstream
	// response, so that a black-holed upstream does not hold requests
	// forever. Answers streamed as text/event-stream send their headers at
	// once and are never cut however long they run; a JSON-mode upstream
	// sends them only with its result, so set this above its longest tool
	// call. Default: 2m.
	UpstreamHeaderTimeout caddy.Duration `json:"upstream_header_timeout,omitempty"`

	// InputTimeout bounds how long a call to an upstream of MCP 2026-07-28
	// only waits for the client's answers when the upstream asks for input
	// (an elicitation, sampling, the roots): it waits for a person, so it
	// is long; then the call is answered with an error. Default: 5m.
	InputTimeout caddy.Duration `json:"input_timeout,omitempty"`

	// NewSessionRate is how many sessions per second one client address
	// (Caddy's client IP, which honours trusted_proxies) may open on this
	// replica, and NewSessionBurst how many at once; beyond them a new
	// stream gets 429 with Retry-After. Defaults: 20 per second, 100.
	NewSessionRate  float64 `json:"new_session_rate,omitempty"`
	NewSessionBurst int     `json:"new_session_burst,omitempty"`

	// UninitializedTTL is how long a session whose client never sent
	// initialize outlives its stream (at most session_ttl): such sessions
	// are worth nothing, and a caller opening and dropping streams must not
	// fill the store with them. Default: 30s.
	UninitializedTTL caddy.Duration `json:"uninitialized_ttl,omitempty"`

	// InitializeTTL is how long each caller's latest initialize is kept, to
	// give a client whose session is gone (store restarted, session expired)
	// a new upstream session as it was initialised. At least session_ttl.
	// Default: 24h.
	InitializeTTL caddy.Duration `json:"initialize_ttl,omitempty"`

	// DrainTimeout bounds how long a replica that is shutting down (Caddy
	// exiting, e.g. on SIGTERM in a rolling deployment) waits for the
	// upstream requests in flight to be answered, after its streams ended
	// and it stopped taking requests; what still runs then is resumed by
	// another replica. Default: 10s.
	DrainTimeout caddy.Duration `json:"drain_timeout,omitempty"`

	// MaxMessageSize is the largest POST body, in bytes; larger ones get 413.
	// It also bounds one message read from the upstream. Default: 4 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// MaxUpstreamConns bounds the connections this handler's calls open to
	// the upstream; calls beyond it wait for a free connection (never
	// refused). Each HTTP/1 call in flight holds a connection, a long
	// streamed tool call for as long as it runs; over HTTP/2 calls share
	// connections. The sessions' server→client GET streams have their own
	// connections, outside the bound. Default: 512.
	MaxUpstreamConns int `json:"max_upstream_conns,omitempty"`

	// UpstreamH2C speaks HTTP/2 over plain text (prior knowledge) to an
	// http:// upstream that supports it. Default: off (https upstreams
	// negotiate HTTP/2 by ALPN regardless).
	UpstreamH2C bool `json:"upstream_h2c,omitempty"`

	// UpstreamEra says which MCP revisions the upstream speaks: "auto" asks
	// it (server/discover, once a minute at most) when a client sends
	// initialize; "legacy" relays initialize as it comes (revisions up to
	// 2025-11-25); "modern" translates for an upstream that speaks only
	// 2026-07-28: the bridge answers initialize itself and stamps every
	// request. Default: auto.
	UpstreamEra string `json:"upstream_era,omitempty"`

	// MaxInflight bounds the messages in flight upstream for one session on
	// one replica; beyond it a POST gets 503. Default: 256.
	MaxInflight int `json:"max_inflight,omitempty"`

	// AllowedOrigins lists browser origins (e.g. "https://app.example.com")
	// allowed besides the request's own host; "*" allows any. Requests with
	// another Origin get 403. Default: none.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// HeaderUp sets upstream request headers. Values may hold placeholders,
	// evaluated per request. A field name starting with "-" removes that
	// header instead. The client's Authorization is always forwarded.
	HeaderUp map[string]string `json:"header_up,omitempty"`

	// Identity names the caller a request comes from, usually a placeholder
	// set by authentication in front of the bridge (e.g.
	// "{http.auth.user.id}", or a header a forward_auth copied). Sessions
	// are bound to it, so that a client keeps its session when its token is
	// refreshed. An empty value is an anonymous caller. Default: the
	// request's Authorization header and TLS client certificate.
	Identity string `json:"identity,omitempty"`

	// IdentitySecret keys the hashes that stand for callers' credentials
	// and addresses in the store (fingerprints), so that a copy of the store
	// does not reveal whose session is whose. Placeholders such as
	// {env.MCP_BRIDGE_IDENTITY_SECRET} are resolved at start-up. All
	// replicas sharing a store must use the same one. Default: a random key
	// kept in the store, made by the first replica.
	IdentitySecret string `json:"identity_secret,omitempty"`

	// PublicURL is the bridge's origin as clients reach it
	// ("https://mcp.example.com"), for the URLs of the authorization flow
	// (the resource and its metadata), when a proxy in front changes the
	// scheme or host. Default: taken from each request.
	PublicURL string `json:"public_url,omitempty"`

	// StoreRaw is the session store guest module. Default: memory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.mcp_sse_bridge.stores inline_key=backend"`

	bridge *bridge.Bridge
	store  StoreModule
	// defaultStore is the memory store made when none is configured; Caddy
	// cleans up loaded guest modules, but this one is ours to clean up.
	defaultStore *MemoryStore
	// doneWithStore ends this handler's use of the store (see useStore).
	doneWithStore func() (gone bool)
	// usesMetrics is set while the handler holds the process's metrics.
	usesMetrics bool
	logger      *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_sse_bridge",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the store and the bridge.
func (h *Handler) Provision(ctx caddy.Context) error {
	// Caddy calls Validate only after Provision: check first, so that a bad
	// option is refused before anything is made.
	if err := h.Validate(); err != nil {
		return err
	}
	h.logger = ctx.Logger()
	if h.StoreRaw != nil {
		mod, err := ctx.LoadModule(h, "StoreRaw")
		if err != nil {
			return fmt.Errorf("loading session store: %w", err)
		}
		store, ok := mod.(StoreModule)
		if !ok {
			return fmt.Errorf("module %T is not a session store", mod)
		}
		h.store = store
	} else {
		mem := new(MemoryStore)
		if err := mem.Provision(ctx); err != nil {
			return fmt.Errorf("provisioning the memory store: %w", err)
		}
		h.store, h.defaultStore = mem, mem
	}
	done, err := useStore(h.store)
	if err != nil {
		return err
	}
	h.doneWithStore = done

	upstream, err := url.Parse(h.Upstream)
	if err != nil {
		return fmt.Errorf("parsing upstream %q: %w", h.Upstream, err)
	}
	metrics, err := useMetrics(ctx)
	if err != nil {
		return err
	}
	h.usesMetrics = true
	identitySecret, err := h.identitySecret()
	if err != nil {
		return err
	}
	var publicURL *url.URL
	if h.PublicURL != "" {
		if publicURL, err = url.Parse(h.PublicURL); err != nil {
			return fmt.Errorf("parsing public_url %q: %w", h.PublicURL, err)
		}
	}
	h.bridge, err = bridge.New(bridge.Config{
		Upstream:              upstream,
		SSEPath:               h.SSEPath,
		MessagePath:           h.MessagePath,
		Keepalive:             time.Duration(h.Keepalive),
		StreamWriteTimeout:    time.Duration(h.StreamWriteTimeout),
		MaxUpstreamConns:      h.MaxUpstreamConns,
		UpstreamH2C:           h.UpstreamH2C,
		UpstreamEra:           h.UpstreamEra,
		IdentitySecret:        identitySecret,
		Identity:              h.identity(),
		PublicURL:             publicURL,
		SessionTTL:            time.Duration(h.SessionTTL),
		MaxMessageSize:        h.MaxMessageSize,
		MaxInflight:           h.MaxInflight,
		Adopt:                 bridge.AdoptMode(h.Adopt),
		AdoptHold:             time.Duration(h.AdoptHold),
		InitializeTTL:         time.Duration(h.InitializeTTL),
		UninitializedTTL:      time.Duration(h.UninitializedTTL),
		UpstreamHeaderTimeout: time.Duration(h.UpstreamHeaderTimeout),
		InputTimeout:          time.Duration(h.InputTimeout),
		NewSessionRate:        h.NewSessionRate,
		NewSessionBurst:       h.NewSessionBurst,
		ClientAddress:         clientIP,
		AllowedOrigins:        h.AllowedOrigins,
		ReplicaID:             replicaID(),
		HeaderUp:              h.headerUp,
		OriginalPath:          originalPath,
		Metrics:               metrics,
		Logger:                h.logger,
	}, h.store.SessionStore())
	if err != nil {
		return fmt.Errorf("setting up the bridge: %w", err)
	}

	if _, _, err := liveBridges.LoadOrNew(h.poolKey(), func() (caddy.Destructor, error) {
		return pooledBridge{h.bridge}, nil
	}); err != nil {
		return err
	}

	// When Caddy exits, end streams at once (an eternal grace period would
	// otherwise wait for them forever) and take no new requests; Cleanup
	// then drains. A config reload keeps them.
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		b := h.bridge
		srv.RegisterOnShutdown(func() {
			if caddy.Exiting() {
				b.Stop()
			}
		})
	}
	return nil
}

// Validate checks the configuration; each error names the option.
func (h *Handler) Validate() error {
	if h.Upstream == "" {
		return fmt.Errorf("upstream is required")
	}
	if u, err := url.Parse(h.Upstream); err == nil && u.User != nil {
		return fmt.Errorf("upstream %q must not carry credentials: send them with header_up Authorization", u.Redacted())
	}
	if u, err := url.Parse(h.Upstream); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		if !strings.Contains(h.Upstream, "{") { // placeholders are resolved later
			return fmt.Errorf("upstream %q must be an absolute http:// or https:// URL", h.Upstream)
		}
	}
	for name, v := range map[string]int64{
		"max_message_size": h.MaxMessageSize, "max_inflight": int64(h.MaxInflight),
		"keepalive": int64(h.Keepalive), "session_ttl": int64(h.SessionTTL), "adopt_hold": int64(h.AdoptHold),
		"initialize_ttl": int64(h.InitializeTTL), "drain_timeout": int64(h.DrainTimeout),
		"uninitialized_ttl": int64(h.UninitializedTTL), "upstream_header_timeout": int64(h.UpstreamHeaderTimeout),
		"input_timeout":    int64(h.InputTimeout),
		"new_session_rate": int64(math.Ceil(h.NewSessionRate)), "new_session_burst": int64(h.NewSessionBurst),
		"stream_write_timeout": int64(h.StreamWriteTimeout), "max_upstream_conns": int64(h.MaxUpstreamConns),
	} {
		if v < 0 {
			return fmt.Errorf("%s must not be negative, got %d", name, v)
		}
	}
	if h.PublicURL != "" {
		if u, err := url.Parse(h.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("public_url %q must be an origin (http[s]://host[:port])", h.PublicURL)
		}
	}
	for name, p := range map[string]string{"sse_path": h.SSEPath, "message_path": h.MessagePath} {
		if p != "" && !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%s %q must start with /", name, p)
		}
	}
	if h.SSEPath != "" && h.SSEPath == h.MessagePath {
		return fmt.Errorf("sse_path and message_path must differ, both are %q", h.SSEPath)
	}
	switch h.UpstreamEra {
	case "", bridge.EraAuto, bridge.EraLegacy, bridge.EraModern:
	default:
		return fmt.Errorf("upstream_era must be auto, legacy or modern, not %q", h.UpstreamEra)
	}
	switch bridge.AdoptMode(h.Adopt) {
	case "", bridge.AdoptAny, bridge.AdoptAuthenticated, bridge.AdoptOff:
	default:
		return fmt.Errorf("adopt must be any, authenticated or off, not %q", h.Adopt)
	}
	for _, o := range h.AllowedOrigins {
		if o == "*" {
			continue
		}
		if u, err := url.Parse(o); err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("allowed_origins: %q is not an origin (scheme://host[:port]) or *", o)
		}
	}
	return nil
}

// clientIP is the client's address as Caddy determined it (trusted_proxies
// and client_ip_headers honoured), else the peer's.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// defaultDrainTimeout is DrainTimeout's default.
const defaultDrainTimeout = 10 * time.Second

// Cleanup unloads this configuration. On a reload, streams and upstream
// requests in flight carry on to their end, so that nothing is lost; the
// store stays open for them. When Caddy exits, the bridge drains first.
// When the store itself went away (a reload to another Redis), the streams
// end once the requests in flight are answered on them (for at most
// drain_timeout), so that their clients reconnect to the new configuration.
func (h *Handler) Cleanup() error {
	if h.bridge != nil {
		_, _ = liveBridges.Delete(h.poolKey())
	}
	if h.usesMetrics {
		releaseMetrics()
	}
	if h.doneWithStore != nil {
		h.retireBridge(h.doneWithStore())
	}
	if h.defaultStore != nil {
		return h.defaultStore.Cleanup()
	}
	return nil
}

// retireBridge ends the bridge's part as Cleanup says, then gives back the
// handler's own hold on the store: at once, or once the requests in flight
// are answered.
func (h *Handler) retireBridge(storeGone bool) {
	b := h.bridge
	if b == nil {
		releaseStore(h.store)
		return
	}
	defer b.Close()
	drain := cmp.Or(time.Duration(h.DrainTimeout), defaultDrainTimeout)
	switch {
	case caddy.Exiting():
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		b.Drain(ctx)
	case storeGone:
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), drain)
			defer cancel()
			b.WaitIdle(ctx)
			b.Stop()
			// The streams send what their mailboxes hold, then end.
			ctx, cancel = context.WithTimeout(context.Background(), drain)
			defer cancel()
			b.WaitStreams(ctx)
			releaseStore(h.store)
		}()
		return
	}
	if !b.Busy() {
		releaseStore(h.store)
		return
	}
	go func() {
		b.WaitIdle(context.Background())
		releaseStore(h.store)
	}()
}

// poolKey names this handler in liveBridges.
func (h *Handler) poolKey() string { return fmt.Sprintf("bridge/%p", h) }

// ServeHTTP serves the bridge's two endpoints and passes other requests on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.bridge.Handles(r) {
		return next.ServeHTTP(w, r)
	}
	h.bridge.ServeHTTP(w, r)
	return nil
}

// minIdentitySecret is the shortest identity secret accepted, in bytes.
const minIdentitySecret = 16

// identitySecret resolves identity_secret's placeholders. A secret that
// resolves to nothing (an unset environment variable) is refused rather
// than replaced by the store's key: replicas that disagree on the key
// disagree on every caller. Without one, a shared store's replicas share
// its key, which a copy of the store also holds: say so.
func (h *Handler) identitySecret() (string, error) {
	if h.IdentitySecret == "" {
		if _, shared := h.store.(*RedisStore); shared {
			h.logger.Warn("no identity_secret: caller fingerprints are keyed with a key kept in Redis itself; set identity_secret (the same on every replica) so that a copy of the store does not reveal whose session is whose")
		}
		return "", nil
	}
	secret := caddy.NewReplacer().ReplaceAll(h.IdentitySecret, "")
	if len(secret) < minIdentitySecret {
		return "", fmt.Errorf("identity_secret resolves to %d bytes, want at least %d (is its environment variable set?)", len(secret), minIdentitySecret)
	}
	return secret, nil
}

// identity evaluates the identity option for a request; nil without one.
func (h *Handler) identity() func(r *http.Request) string {
	if h.Identity == "" {
		return nil
	}
	return func(r *http.Request) string {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl == nil {
			return ""
		}
		return repl.ReplaceAll(h.Identity, "")
	}
}

// headerUp applies header_up to an upstream request's headers.
func (h *Handler) headerUp(r *http.Request, hdr http.Header) {
	if len(h.HeaderUp) == 0 {
		return
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for field, value := range h.HeaderUp {
		if name, ok := strings.CutPrefix(field, "-"); ok {
			hdr.Del(name)
			continue
		}
		if repl != nil {
			value = repl.ReplaceAll(value, "")
		}
		hdr.Set(field, value)
	}
}

// originalPath is the request path before any handle_path or uri strip_prefix.
func originalPath(r *http.Request) string {
	if or, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && or.URL != nil {
		return or.URL.Path
	}
	return r.URL.Path
}

// replicaID names this Caddy process in session ownership and request
// records: its instance id plus a per-process suffix, so that a restarted
// process is never taken for its dead predecessor, whose requests in flight
// other replicas must answer. Computed once; never changes.
var replicaID = sync.OnceValue(func() string {
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	name := hex.EncodeToString(suffix[:])
	if id, err := caddy.InstanceID(); err == nil {
		name = id.String() + "-" + name
	}
	return name
})

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
