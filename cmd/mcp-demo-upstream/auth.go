package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
)

// requiredScope is the scope a token must carry with -require-token-from. It
// is advertised in the protected resource metadata (scopes_supported) and in
// the WWW-Authenticate challenge.
const requiredScope = "mcp:tools"

// protectedResourceWellKnown is the RFC 9728 well-known prefix. The metadata
// of the resource http://HOST/mcp is served at
// http://HOST/.well-known/oauth-protected-resource/mcp (RFC 9728 §3.1: the
// well-known segment goes between the host and the resource's path).
const protectedResourceWellKnown = "/.well-known/oauth-protected-resource"

// oauthConfig is what -require-token-from and its companion flags set.
type oauthConfig struct {
	introspectionURL    string // RFC 7662 token introspection endpoint
	authorizationServer string // issuer listed in authorization_servers
	audience            string // if set, the audience a token must have
}

// checkOAuthFlags validates the OAuth flags and fills in defaults.
func checkOAuthFlags(c *oauthConfig) error {
	if c.introspectionURL == "" {
		if c.authorizationServer != "" || c.audience != "" {
			return errors.New("-authorization-server and -token-audience require -require-token-from")
		}
		return nil
	}
	u, err := absoluteHTTPURL("-require-token-from", c.introspectionURL)
	if err != nil {
		return err
	}
	if c.authorizationServer == "" {
		c.authorizationServer = u.Scheme + "://" + u.Host
	} else if _, err := absoluteHTTPURL("-authorization-server", c.authorizationServer); err != nil {
		return err
	}
	if c.audience != "" {
		if _, err := absoluteHTTPURL("-token-audience", c.audience); err != nil {
			return err
		}
	}
	return nil
}

func absoluteHTTPURL(flagName, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("invalid %s %q: want an absolute http(s) URL", flagName, s)
	}
	return u, nil
}

// protect wraps the MCP handler h, served at resourceURL, in go-sdk's
// auth.RequireBearerToken: a request needs an Authorization: Bearer token
// that the introspection endpoint reports active, unexpired, with
// requiredScope and (with -token-audience) the right audience. Refusals get
// 401 (403 for a missing scope) and
//
//	WWW-Authenticate: Bearer resource_metadata="<metadataURL>", scope="mcp:tools"
//
// Every request's outcome is logged to logw as one line,
//
//	auth METHOD PATH ok|refused bearer=none|<first 12 hex digits of the token's SHA-256> [reason]
//
// so that tests can see what reached the server and with which token.
func protect(h http.Handler, c *oauthConfig, client *http.Client, metadataURL string, logw *lockedWriter) http.Handler {
	in := &introspector{endpoint: c.introspectionURL, audience: c.audience, client: client}
	mw := auth.RequireBearerToken(in.verify, &auth.RequireBearerTokenOptions{
		ResourceMetadataURL: metadataURL,
		Scopes:              []string{requiredScope},
	})
	type outcome struct {
		passed bool
		reason string // why the verifier refused, if it did
	}
	type outcomeKey struct{}
	inner := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Context().Value(outcomeKey{}).(*outcome).passed = true
		logw.printf("auth %s %s ok bearer=%s\n", r.Method, r.URL.Path, tokenFingerprint(r))
		h.ServeHTTP(w, r)
	}))
	in.onRefusal = func(ctx context.Context, reason string) {
		if o, ok := ctx.Value(outcomeKey{}).(*outcome); ok {
			o.reason = reason
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := &outcome{}
		inner.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), outcomeKey{}, o)))
		if !o.passed {
			fp := tokenFingerprint(r)
			reason := o.reason
			switch {
			case reason != "":
			case fp == "none":
				reason = "no bearer token"
			default:
				reason = "missing scope or expired token"
			}
			logw.printf("auth %s %s refused bearer=%s %s\n", r.Method, r.URL.Path, fp, reason)
		}
	})
}

// tokenFingerprint names the request's bearer token without revealing it.
func tokenFingerprint(r *http.Request) string {
	fields := strings.Fields(r.Header.Get("Authorization"))
	if len(fields) != 2 || !strings.EqualFold(fields[0], "bearer") {
		return "none"
	}
	sum := sha256.Sum256([]byte(fields[1]))
	return hex.EncodeToString(sum[:])[:12]
}

// metadataHandler serves the RFC 9728 protected resource metadata of
// resourceURL and logs each request to logw as "metadata METHOD PATH".
func metadataHandler(resourceURL string, c *oauthConfig, logw *lockedWriter) http.Handler {
	h := auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{
		Resource:               resourceURL,
		AuthorizationServers:   []string{c.authorizationServer},
		ScopesSupported:        []string{requiredScope},
		BearerMethodsSupported: []string{"header"},
		ResourceName:           "mcp-demo-upstream",
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		logw.printf("metadata %s %s\n", r.Method, r.URL.Path)
		h.ServeHTTP(w, r)
	})
}

// introspector verifies bearer tokens with an RFC 7662 introspection
// endpoint.
type introspector struct {
	endpoint  string
	audience  string
	client    *http.Client
	onRefusal func(ctx context.Context, reason string)
}

// introspection is the part of an RFC 7662 response that is used.
type introspection struct {
	Active bool     `json:"active"`
	Scope  string   `json:"scope"`
	Exp    int64    `json:"exp"`
	Sub    string   `json:"sub"`
	Aud    audience `json:"aud"`
}

// audience is a JWT-style "aud": a string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(data, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// verify is an auth.TokenVerifier.
func (in *introspector) verify(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
	refuse := func(reason string) error {
		if in.onRefusal != nil {
			in.onRefusal(ctx, reason)
		}
		return fmt.Errorf("%w: %s", auth.ErrInvalidToken, reason)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.endpoint,
		strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := in.client.Do(req)
	if err != nil {
		if in.onRefusal != nil {
			in.onRefusal(ctx, "introspection failed")
		}
		return nil, fmt.Errorf("token introspection: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if in.onRefusal != nil {
			in.onRefusal(ctx, "introspection failed")
		}
		return nil, fmt.Errorf("token introspection: %s", resp.Status)
	}
	var ir introspection
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&ir); err != nil {
		return nil, fmt.Errorf("token introspection: %w", err)
	}
	if !ir.Active {
		return nil, refuse("inactive token")
	}
	if ir.Exp == 0 {
		return nil, refuse("token without expiry")
	}
	if in.audience != "" && !oauthex.MatchesResource(ir.Aud, in.audience) {
		return nil, refuse(fmt.Sprintf("token audience %q, want %q", []string(ir.Aud), in.audience))
	}
	return &auth.TokenInfo{
		Scopes:     strings.Fields(ir.Scope),
		Expiration: time.Unix(ir.Exp, 0),
		UserID:     ir.Sub,
	}, nil
}

// lockedWriter serializes whole lines written by concurrent handlers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format, args...)
}
