package bridge

// Tests of the authorization pass-through (authorization.go): the upstream's
// challenges and its resource metadata.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAuthChallengePassedBack: an upstream's 401 with WWW-Authenticate
// reaches the client on its GET (the bridge probes the upstream before the
// stream opens) and on its POST, so that it can run its authorization flow;
// the challenge names the bridge's metadata URL, where the upstream's
// metadata is served with the bridge as its resource.
func TestAuthChallengePassedBack(t *testing.T) {
	metadata := `{"resource":"http://upstream.example/mcp","authorization_servers":["https://auth.example"],"scopes_supported":["tools"]}`
	// refuseGET: whether the upstream refuses stale tokens on GET too (an
	// upstream that checks every request) or only on POST.
	newUpstream := func(refuseGET bool) *testUpstream {
		var up *testUpstream
		up = newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/.well-known/oauth-protected-resource/mcp" {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, metadata)
				return
			}
			if r.Header.Get("Authorization") != "Bearer good" && (refuseGET || r.Method == http.MethodPost) {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", resource_metadata="`+up.srv.URL+`/.well-known/oauth-protected-resource/mcp"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = io.WriteString(w, `{"error":"invalid_token"}`)
				return
			}
			if r.Method == http.MethodGet {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-03-26","capabilities":{},"serverInfo":{"name":"u","version":"1"}}}`)
		})
		return up
	}
	checkChallenge := func(t *testing.T, e *testEnv, what string, h http.Header, body string) {
		t.Helper()
		want := `Bearer error="invalid_token", resource_metadata="` + e.srv.URL + `/.well-known/oauth-protected-resource/sse"`
		if got := h.Get("WWW-Authenticate"); got != want {
			t.Errorf("%s: WWW-Authenticate %q, want %q", what, got, want)
		}
		if body != `{"error":"invalid_token"}` {
			t.Errorf("%s: body %q", what, body)
		}
	}

	t.Run("GET", func(t *testing.T) {
		up := newUpstream(true)
		e := newEnv(t, up.URL, nil, nil)
		for _, token := range []string{"", "Bearer stale"} {
			hdr := http.Header{}
			if token != "" {
				hdr.Set("Authorization", token)
			}
			code, h, body := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", hdr, "")
			if code != http.StatusUnauthorized {
				t.Fatalf("GET /sse with token %q: %d %q, want 401", token, code, body)
			}
			checkChallenge(t, e, "GET /sse", h, body)
		}
		if all, err := e.store.Expired(context.Background(), time.Now().Add(24*time.Hour), 10); err != nil || len(all) != 0 {
			t.Errorf("sessions after refused GETs: %d (%v), want none", len(all), err)
		}
		// The metadata the challenge names: the upstream's, for the bridge.
		code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/.well-known/oauth-protected-resource/sse", "", nil, "")
		var got map[string]any
		if code != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
			t.Fatalf("GET metadata: %d %q", code, body)
		}
		if got["resource"] != e.srv.URL+"/sse" {
			t.Errorf("metadata resource %v, want %s", got["resource"], e.srv.URL+"/sse")
		}
		if servers, _ := got["authorization_servers"].([]any); len(servers) != 1 || servers[0] != "https://auth.example" {
			t.Errorf("metadata authorization_servers %v, want the upstream's", got["authorization_servers"])
		}
		openStream(t, e, http.Header{"Authorization": {"Bearer good"}})
	})
	t.Run("POST", func(t *testing.T) {
		up := newUpstream(false)
		e := newEnv(t, up.URL, nil, nil)
		s := openStream(t, e, http.Header{"Authorization": {"Bearer stale"}})
		code, h, body := postRaw(t, e.srv.URL+s.endpoint, initializeRequest, s.header, "application/json")
		if code != http.StatusUnauthorized {
			t.Fatalf("POST initialize with a stale token: %d %q, want 401", code, body)
		}
		checkChallenge(t, e, "POST", h, body)
	})
	t.Run("token in the query", func(t *testing.T) {
		up := newUpstream(false)
		e := newEnv(t, up.URL, nil, nil)
		code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/sse?access_token=good", "", nil, "")
		if code != http.StatusBadRequest {
			t.Errorf("GET /sse?access_token=…: %d %q, want 400", code, body)
		}
		if n := len(up.requests()) + up.probeCount(); n != 0 {
			t.Errorf("%d upstream requests for a token in the query, want none", n)
		}
	})
}

// TestAuthorizationProbeBounded: an upstream's refusal of an anonymous
// probe answers the anonymous streams that follow without asking it
// again, so a flood of anonymous GETs costs it nothing; and a metadata URL
// its challenge names on another host is neither fetched nor republished.
func TestAuthorizationProbeBounded(t *testing.T) {
	metadata := `{"resource":"http://upstream.example/mcp","authorization_servers":["https://auth.example"]}`
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/oauth-protected-resource") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, metadata)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer resource_metadata="http://attacker.example/.well-known/oauth-protected-resource"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	e := newEnv(t, up.URL, nil, nil)
	for range 5 {
		if code, h, _ := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", nil, ""); code != http.StatusUnauthorized ||
			!strings.Contains(h.Get("WWW-Authenticate"), e.srv.URL+"/.well-known/oauth-protected-resource/sse") {
			t.Fatalf("anonymous GET /sse: %d %q", code, h.Get("WWW-Authenticate"))
		}
	}
	if n := up.probeCount(); n != 1 {
		t.Errorf("5 anonymous GETs sent %d probes upstream, want 1", n)
	}
	code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/.well-known/oauth-protected-resource/sse", "", nil, "")
	if code != http.StatusOK || !strings.Contains(body, "https://auth.example") {
		t.Errorf("metadata: %d %q, want the upstream's own (not the other host's the challenge named)", code, body)
	}
}

// TestMetadataFailureCached: while the upstream's metadata cannot be
// fetched, clients asking the bridge for it get 502 without each of them
// making the bridge ask the upstream again.
func TestMetadataFailureCached(t *testing.T) {
	var fetches atomic.Int32
	up := newFakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/") {
			fetches.Add(1)
			// A broken upstream: the connection ends without an answer.
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.WriteHeader(http.StatusMethodNotAllowed)
	})
	e := newEnv(t, up.URL, nil, nil)
	for range 5 {
		if code, _, body := doRaw(t, http.MethodGet, e.srv.URL+"/.well-known/oauth-protected-resource/sse", "", nil, ""); code != http.StatusBadGateway {
			t.Fatalf("metadata from a broken upstream: %d %q, want 502", code, body)
		}
	}
	// One failed fetch tries each well-known URL once (the path form, then
	// the root form); the four requests after it are served from memory.
	if n := fetches.Load(); n > 2 {
		t.Errorf("5 metadata requests made %d upstream fetches, want at most 2", n)
	}
}
