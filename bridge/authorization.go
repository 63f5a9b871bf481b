package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"
)

// MCP authorization (the 2025-06-18 revision and later) as legacy clients
// run it through the bridge: the client learns that authorization is needed
// from a 401 with a WWW-Authenticate challenge, reads the protected-resource
// metadata (RFC 9728) the challenge names, gets a token from the
// authorization server listed there for the resource, and sends it as a
// bearer token. The bridge is the resource the client sees, so the
// challenge and the metadata name the bridge's URL; the authorization
// server and the token check stay the upstream's.

// wellKnownResourcePath is where protected-resource metadata lives, alone
// or followed by the resource's path (RFC 9728 §3.1).
const wellKnownResourcePath = "/.well-known/oauth-protected-resource"

const (
	// authProbeTimeout bounds the upstream round trip that asks whether a
	// new stream's credentials are accepted; past it the stream opens and
	// the client learns of a refusal on its first POST.
	authProbeTimeout = 5 * time.Second
	// maxMetadataBody bounds the protected-resource metadata read upstream.
	maxMetadataBody = 64 << 10
	// openUpstreamMemory is how long an upstream that let an anonymous
	// probe through is taken to need no authorization: streams without
	// credentials skip the probe meanwhile.
	openUpstreamMemory = time.Minute
	// anonymousChallengeMemory is how long an upstream's refusal of an
	// anonymous probe answers anonymous streams without asking again.
	anonymousChallengeMemory = 5 * time.Second
	// metadataFailureMemory is how long a failure to fetch the upstream's
	// metadata is served before it is tried again.
	metadataFailureMemory = 5 * time.Second
)

// resourceMetadataParam matches the resource_metadata parameter of a
// Bearer challenge, quoted or not (RFC 9110 §11.2 auth-param).
var resourceMetadataParam = regexp.MustCompile(`(?i)\bresource_metadata\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)`)

// isResourceMetadataPath reports whether p asks for protected-resource
// metadata.
func isResourceMetadataPath(p string) bool {
	return p == wellKnownResourcePath || strings.HasPrefix(p, wellKnownResourcePath+"/")
}

// authChallenge is an upstream's refusal of a client's credentials: 401 or
// 403 with its WWW-Authenticate, passed back to the client.
type authChallenge struct {
	code        int
	challenges  []string // the upstream's WWW-Authenticate values
	contentType string
	body        []byte
	// metadataURL is the bridge's metadata URL for the client's stream,
	// which the challenges name instead of the upstream's.
	metadataURL string
}

// challengeFrom returns the upstream response's refusal of the client's
// credentials, if it is one: any 401 (clients start their authorization
// flow from the status, with or without WWW-Authenticate), and a 403 that
// carries a challenge (insufficient scope). Its resource_metadata points at
// metadataURL, the bridge's own metadata URL for the stream the client
// uses: the client fetches it from the bridge, and checks that it names the
// resource it connected to. The upstream's metadata URL is remembered for
// serveResourceMetadata.
func (b *Bridge) challengeFrom(resp *http.Response, body []byte, metadataURL string) *authChallenge {
	values := resp.Header.Values("WWW-Authenticate")
	if resp.StatusCode != http.StatusUnauthorized && (resp.StatusCode != http.StatusForbidden || len(values) == 0) {
		return nil
	}
	for _, v := range values {
		if m := resourceMetadataParam.FindStringSubmatch(v); m != nil {
			if u := strings.Trim(m[1], `"`); b.onUpstreamHost(u) {
				b.upstreamMetadataURL.Store(&u)
			}
		}
	}
	return &authChallenge{code: resp.StatusCode, challenges: values, contentType: resp.Header.Get("Content-Type"),
		body: body, metadataURL: metadataURL}
}

// onUpstreamHost reports whether a URL the upstream named is on the
// upstream's own host: the bridge fetches and republishes only that, so
// that nothing an upstream echoes from a request can point every client at
// another server (or the bridge at an internal one).
func (b *Bridge) onUpstreamHost(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, b.cfg.Upstream.Host)
}

// resourceMetadataURL is the bridge's metadata URL for the event stream
// the request belongs to.
func (b *Bridge) resourceMetadataURL(r *http.Request) string {
	return b.publicOrigin(r) + wellKnownResourcePath + b.clientPrefix(r) + b.cfg.SSEPath
}

// cachedChallenge is the upstream's last refusal of an anonymous probe.
type cachedChallenge struct {
	challenge *authChallenge
	until     time.Time
}

// forStream is the challenge for a stream whose metadata URL is
// metadataURL.
func (c authChallenge) forStream(metadataURL string) *authChallenge {
	c.metadataURL = metadataURL
	return &c
}

// upstreamOpen reports whether the upstream let an anonymous probe
// through lately: it needs no authorization.
func (b *Bridge) upstreamOpen() bool { return b.now().UnixNano() < b.upstreamOpenUntil.Load() }

// write answers the client with the challenge.
func (c *authChallenge) write(w http.ResponseWriter) {
	for _, v := range c.challenges {
		w.Header().Add("WWW-Authenticate", resourceMetadataParam.ReplaceAllLiteralString(v, `resource_metadata="`+c.metadataURL+`"`))
	}
	if c.contentType != "" {
		w.Header().Set("Content-Type", c.contentType)
	}
	w.WriteHeader(c.code)
	_, _ = w.Write(c.body)
}

// probeAuthorization asks the upstream whether the credentials a new stream
// carries are accepted, before the stream opens: clients (the TypeScript SDK
// among them) start their authorization flow from a 401 on the GET, and a
// stream that opens first would leave them with a refusal on every POST and
// no flow. It sends what a client without a session would: a GET for an
// event stream, which a server answers without side effects (401, or 400 or
// 405 for lack of a session). It returns nil when the upstream does not
// refuse, or cannot be asked.
func (b *Bridge) probeAuthorization(ctx context.Context, r *http.Request) *authChallenge {
	// Without credentials for the upstream; another caller's probe
	// cannot speak for a token.
	anonymous := r.Header.Get("Authorization") == ""
	if anonymous {
		if b.upstreamOpen() {
			return nil
		}
		// An upstream that refused anonymous callers a moment ago still
		// does: a flood of anonymous streams costs it nothing.
		if c := b.anonymousChallenge.Load(); c != nil && b.now().Before(c.until) {
			return c.challenge.forStream(b.resourceMetadataURL(r))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, authProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.cfg.Upstream.String(), nil)
	if err != nil {
		return nil
	}
	req.Header = b.upstreamHeaders(r)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.client.Do(req)
	if err != nil {
		b.metrics.upstreamRequest(labelProbe, 0)
		b.log.Debug("authorization probe failed", zap.Error(err))
		return nil
	}
	b.metrics.upstreamRequest(labelProbe, resp.StatusCode)
	defer resp.Body.Close()
	var body []byte
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	}
	challenge := b.challengeFrom(resp, body, b.resourceMetadataURL(r))
	switch {
	case anonymous && challenge == nil && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden:
		b.upstreamOpenUntil.Store(b.now().Add(openUpstreamMemory).UnixNano())
	case anonymous && challenge != nil:
		b.anonymousChallenge.Store(&cachedChallenge{challenge: challenge, until: b.now().Add(anonymousChallengeMemory)})
	}
	return challenge
}

// serveResourceMetadata answers GET /.well-known/oauth-protected-resource[/path]
// with the upstream's metadata, its resource replaced by the bridge's URL
// for that path, so that the client's check that the metadata is about the
// server it connected to holds (RFC 9728 §3.3).
func (b *Bridge) serveResourceMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		httpError(w, http.StatusMethodNotAllowed, "metadata takes GET")
		return
	}
	meta, err := b.resourceMetadata(r.Context())
	switch {
	case errors.Is(err, errNoMetadata):
		httpError(w, http.StatusNotFound, "the upstream publishes no protected-resource metadata")
		return
	case err != nil:
		b.log.Warn("fetching the upstream's protected-resource metadata", zap.Error(err))
		httpError(w, http.StatusBadGateway, "upstream metadata unavailable")
		return
	}
	suffix := strings.TrimPrefix(r.URL.Path, wellKnownResourcePath)
	if suffix == "" {
		suffix = "/"
	}
	resource, _ := json.Marshal(b.publicOrigin(r) + suffix)
	mine := make(map[string]json.RawMessage, len(meta))
	for k, v := range meta {
		mine[k] = v
	}
	mine["resource"] = resource
	out, err := json.Marshal(mine)
	if err != nil {
		httpError(w, http.StatusBadGateway, "upstream metadata unusable")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(out)
	}
}

// metadataCacheTTL is how long the upstream's metadata (or its absence)
// is served from memory: clients fetch it at every authorization, and
// nobody may make the bridge fetch it for every request they send.
const metadataCacheTTL = time.Minute

// cachedMetadata is the upstream's metadata as last fetched.
type cachedMetadata struct {
	meta  map[string]json.RawMessage
	err   error
	until time.Time
}

// resourceMetadata is the upstream's metadata, fetched at most once per
// metadataCacheTTL (failures to reach it are not kept). Callers must not
// change the map they get: serveResourceMetadata copies it.
func (b *Bridge) resourceMetadata(ctx context.Context) (map[string]json.RawMessage, error) {
	if c := b.metadata.Load(); c != nil && b.now().Before(c.until) {
		return c.meta, c.err
	}
	meta, err := b.fetchResourceMetadata(ctx)
	keep := metadataCacheTTL
	if err != nil && !errors.Is(err, errNoMetadata) {
		keep = metadataFailureMemory
	}
	b.metadata.Store(&cachedMetadata{meta: meta, err: err, until: b.now().Add(keep)})
	return meta, err
}

// errNoMetadata: the upstream answered, and has no metadata.
var errNoMetadata = errors.New("no protected-resource metadata")

// fetchResourceMetadata reads the upstream's metadata from the URL its last
// challenge named, else from the well-known URL for its path, then the
// root one (RFC 9728 §3.1 and the MCP authorization discovery order).
func (b *Bridge) fetchResourceMetadata(ctx context.Context) (map[string]json.RawMessage, error) {
	var candidates []string
	if u := b.upstreamMetadataURL.Load(); u != nil {
		candidates = append(candidates, *u)
	}
	up := b.cfg.Upstream
	origin := up.Scheme + "://" + up.Host
	if p := strings.TrimSuffix(up.EscapedPath(), "/"); p != "" {
		candidates = append(candidates, origin+wellKnownResourcePath+p)
	}
	candidates = append(candidates, origin+wellKnownResourcePath)
	var lastErr error = errNoMetadata
	for _, u := range candidates {
		meta, err := b.getMetadata(ctx, u)
		if err == nil {
			return meta, nil
		}
		if !errors.Is(err, errNoMetadata) {
			lastErr = err
		}
	}
	return nil, lastErr
}

func (b *Bridge) getMetadata(ctx context.Context, rawURL string) (map[string]json.RawMessage, error) {
	if u, err := url.Parse(rawURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, errNoMetadata
	}
	ctx, cancel := context.WithTimeout(ctx, authProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, errNoMetadata
	}
	req.Header.Set("Accept", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching protected-resource metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errNoMetadata
	}
	var meta map[string]json.RawMessage
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxMetadataBody)).Decode(&meta); err != nil || meta == nil {
		return nil, errNoMetadata
	}
	return meta, nil
}

// publicOrigin is the bridge's origin as the client sees it: PublicURL's
// when configured (behind a proxy that terminates TLS), else the request's.
func (b *Bridge) publicOrigin(r *http.Request) string {
	if u := b.cfg.PublicURL; u != nil {
		return u.Scheme + "://" + u.Host
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// clientPrefix is the part of the request's original path that a route
// stripped before the bridge saw it (handle_path).
func (b *Bridge) clientPrefix(r *http.Request) string {
	orig := b.cfg.OriginalPath(r)
	if strings.HasSuffix(orig, r.URL.Path) {
		return strings.TrimSuffix(orig, r.URL.Path)
	}
	return ""
}

// tokenInQuery reports whether the request carries an access token in its
// URL, which MCP forbids (tokens in URLs end up in logs and histories); the
// bridge refuses rather than ignoring it, so the client learns at once.
func tokenInQuery(r *http.Request) bool {
	return r.URL.Query().Has("access_token")
}
