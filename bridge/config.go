package bridge

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"
)

// Defaults for Config fields left zero.
const (
	DefaultSSEPath               = "/sse"
	DefaultMessagePath           = "/messages"
	DefaultKeepalive             = 15 * time.Second
	DefaultSessionTTL            = 10 * time.Minute
	DefaultMaxMessageSize        = 4 << 20
	DefaultMaxInflight           = 256
	DefaultAdoptHold             = 2 * time.Second
	DefaultUninitializedTTL      = 30 * time.Second
	DefaultUpstreamHeaderTimeout = 2 * time.Minute
	DefaultInputTimeout          = 5 * time.Minute
	DefaultNewSessionRate        = 20
	DefaultNewSessionBurst       = 100
	DefaultInitializeTTL         = 24 * time.Hour
	DefaultStreamWriteTimeout    = time.Minute
	DefaultMaxUpstreamConns      = 512
	// defaultAcceptWait caps how long a legacy POST waits for the upstream's status
	// line before it is answered 202 anyway (JSON-mode upstreams send their
	// status only with the result; holding the POST longer would deadlock
	// clients that POST one message at a time).
	defaultAcceptWait = 2 * time.Second
)

// AdoptMode says which callers may get an earlier session back without
// proving it with Last-Event-ID (see docs/design.md, "Continuity").
type AdoptMode string

// Adoption modes.
const (
	// AdoptAny: every caller, anonymous ones included (the default).
	AdoptAny AdoptMode = "any"
	// AdoptAuthenticated: only callers that send Authorization, whose
	// sessions are then never shared with other credentials.
	AdoptAuthenticated AdoptMode = "authenticated"
	// AdoptOff: never; a reconnecting client without Last-Event-ID gets a
	// new session (revived on its first call).
	AdoptOff AdoptMode = "off"
)

// Upstream eras (Config.UpstreamEra).
const (
	// EraAuto: ask the upstream (server/discover) which revisions it speaks.
	EraAuto = "auto"
	// EraLegacy: the upstream speaks initialize-based revisions; relay.
	EraLegacy = "legacy"
	// EraModern: the upstream speaks only 2026-07-28; translate.
	EraModern = "modern"
)

// Config is the bridge's configuration. The Caddy module fills it from the
// Caddyfile or JSON config.
type Config struct {
	// Upstream is the Streamable HTTP endpoint of the MCP server.
	Upstream *url.URL
	// SSEPath and MessagePath are matched against the request path as the
	// handler sees it (after any prefix stripping).
	SSEPath     string
	MessagePath string
	// Keepalive is the interval of ': ping' comments on each stream.
	Keepalive time.Duration
	// StreamWriteTimeout bounds each write to a client's event stream: a
	// client that reads nothing for that long is disconnected (its messages
	// wait in the store for its reconnection).
	StreamWriteTimeout time.Duration
	// SessionTTL is how long a session outlives its stream.
	SessionTTL time.Duration
	// MaxMessageSize bounds a legacy POST body and one upstream message.
	MaxMessageSize int64
	// MaxInflight bounds the messages in flight upstream for one session.
	MaxInflight int
	// Adopt says which callers may adopt their released sessions.
	Adopt AdoptMode
	// AdoptHold is how long an adopted session's messages are held back
	// so that a new client can show it is new (by POSTing initialize)
	// before anything of an earlier client reaches it.
	AdoptHold time.Duration
	// UninitializedTTL is how long a session whose client never initialised
	// it outlives its stream (at most SessionTTL).
	UninitializedTTL time.Duration
	// InitializeTTL is how long a caller's latest initialize is remembered
	// to revive its sessions once they are gone; at least SessionTTL.
	InitializeTTL time.Duration
	// AllowedOrigins are browser origins allowed besides the request's own
	// host; "*" allows any.
	AllowedOrigins []string
	// ReplicaID names this process in session ownership records.
	ReplicaID string
	// HeaderUp, if set, adds or rewrites upstream request headers. r is the
	// client request being forwarded, or the request that opened the stream
	// for background requests.
	HeaderUp func(r *http.Request, h http.Header)
	// OriginalPath returns the path of the request as the client sent it,
	// before any prefix was stripped. Defaults to r.URL.Path.
	OriginalPath func(r *http.Request) string
	// Identity, if set, names the caller a request comes from (a user
	// authenticated in front of the bridge); sessions are bound to it
	// instead of the request's Authorization and client certificate, so
	// that a client keeps its session when its token is refreshed. An
	// empty value is an anonymous caller.
	Identity func(r *http.Request) string
	// IdentitySecret keys the hashes that stand for callers in the store
	// (fingerprints); empty means the store's own random key.
	IdentitySecret string
	// PublicURL, if set, gives the scheme and host clients use to reach the
	// bridge (behind a proxy that terminates TLS), for the URLs of the
	// authorization flow; else they come from each request.
	PublicURL *url.URL
	// UpstreamHeaderTimeout bounds the wait for an upstream response's
	// headers (a black-holed upstream); streamed answers send them at once.
	// Used by the transport New makes.
	UpstreamHeaderTimeout time.Duration
	// InputTimeout bounds how long a translated call waits for the
	// client's answers to one round of the upstream's input requests (an
	// elicitation waits for a person); then the call is answered with an
	// error.
	InputTimeout time.Duration
	// NewSessionRate and NewSessionBurst bound how fast one client address
	// opens sessions on this replica (a token bucket: NewSessionRate per
	// second, up to NewSessionBurst at once); beyond it, 429.
	NewSessionRate  float64
	NewSessionBurst int
	// ClientAddress names the client of a request for NewSessionRate;
	// defaults to the peer's IP.
	ClientAddress func(r *http.Request) string
	// MaxUpstreamConns bounds the connections calls open to the upstream
	// (per bridge; the session GET streams have their own): calls beyond it
	// wait for a free connection. With HTTP/1 each call in flight holds one,
	// a streamed long tool call for as long as it runs.
	MaxUpstreamConns int
	// UpstreamH2C speaks HTTP/2 without TLS (prior knowledge) to an http://
	// upstream.
	UpstreamH2C bool
	// UpstreamEra says which MCP revisions the upstream speaks: EraAuto
	// (default) asks it with server/discover at a client's initialize;
	// EraLegacy relays initialize as it comes; EraModern translates for an
	// upstream that speaks only 2026-07-28 (modern.go).
	UpstreamEra string
	// Transport carries upstream requests; nil means the bridge's own
	// (newUpstreamTransports).
	Transport http.RoundTripper
	// Metrics, if set, receives the bridge's measurements (one set per
	// process: see NewMetrics).
	Metrics *Metrics
	// Logger receives the bridge's logs; nil means none.
	Logger *zap.Logger
}

func (c *Config) setDefaults() error {
	if c.Upstream == nil || c.Upstream.Scheme == "" || c.Upstream.Host == "" {
		return errors.New("upstream must be an absolute http or https URL")
	}
	if c.Upstream.Scheme != "http" && c.Upstream.Scheme != "https" {
		return errors.New("upstream must be an http or https URL")
	}
	if c.SSEPath == "" {
		c.SSEPath = DefaultSSEPath
	}
	if c.MessagePath == "" {
		c.MessagePath = DefaultMessagePath
	}
	if c.SSEPath == c.MessagePath {
		return errors.New("sse_path and message_path must differ")
	}
	switch c.Adopt {
	case "":
		c.Adopt = AdoptAny
	case AdoptAny, AdoptAuthenticated, AdoptOff:
	default:
		return fmt.Errorf("adopt must be any, authenticated or off, not %q", c.Adopt)
	}
	switch c.UpstreamEra {
	case "":
		c.UpstreamEra = EraAuto
	case EraAuto, EraLegacy, EraModern:
	default:
		return fmt.Errorf("upstream_era must be auto, legacy or modern, not %q", c.UpstreamEra)
	}
	c.Keepalive = positiveOr(c.Keepalive, DefaultKeepalive)
	c.StreamWriteTimeout = positiveOr(c.StreamWriteTimeout, DefaultStreamWriteTimeout)
	c.MaxUpstreamConns = positiveOr(c.MaxUpstreamConns, DefaultMaxUpstreamConns)
	c.SessionTTL = positiveOr(c.SessionTTL, DefaultSessionTTL)
	c.MaxMessageSize = positiveOr(c.MaxMessageSize, DefaultMaxMessageSize)
	c.MaxInflight = positiveOr(c.MaxInflight, DefaultMaxInflight)
	c.AdoptHold = positiveOr(c.AdoptHold, DefaultAdoptHold)
	c.NewSessionRate = positiveOr(c.NewSessionRate, DefaultNewSessionRate)
	c.NewSessionBurst = positiveOr(c.NewSessionBurst, DefaultNewSessionBurst)
	c.UpstreamHeaderTimeout = positiveOr(c.UpstreamHeaderTimeout, DefaultUpstreamHeaderTimeout)
	c.InputTimeout = positiveOr(c.InputTimeout, DefaultInputTimeout)
	c.UninitializedTTL = positiveOr(c.UninitializedTTL, DefaultUninitializedTTL)
	c.InitializeTTL = max(positiveOr(c.InitializeTTL, DefaultInitializeTTL), c.SessionTTL)
	if c.ClientAddress == nil {
		c.ClientAddress = remoteHost
	}
	if c.OriginalPath == nil {
		c.OriginalPath = func(r *http.Request) string { return r.URL.Path }
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// positiveOr is v, or def when v is zero or less (left unset).
func positiveOr[T int | int64 | float64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
