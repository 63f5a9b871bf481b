package caddymodule

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

func provisioned(t *testing.T, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return h
}

func TestOtherPathsGoToNextHandler(t *testing.T) {
	h := provisioned(t, &Handler{Upstream: "http://127.0.0.1:1/mcp"})
	called := false
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		called = true
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/mcp", nil), next); err != nil {
		t.Fatal(err)
	}
	if !called || rec.Code != http.StatusTeapot {
		t.Fatalf("request to /mcp was not passed on (called=%v, status %d)", called, rec.Code)
	}
	rec = httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/messages", nil), next); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("POST /messages without sessionId: got %d, want 400", rec.Code)
	}
}

// TestValidateRejectsBadConfig: every invalid option is refused, by
// Provision too (Caddy validates only after provisioning), before anything
// is made, with a message that names the option.
func TestValidateRejectsBadConfig(t *testing.T) {
	for want, h := range map[string]*Handler{
		"upstream is required":             {},
		"absolute http:// or https:// URL": {Upstream: "ftp://x/mcp"},
		"upstream \"/mcp\"":                {Upstream: "/mcp"},
		"sse_path":                         {Upstream: "http://x/mcp", SSEPath: "sse"},
		"message_path":                     {Upstream: "http://x/mcp", MessagePath: "messages"},
		"must differ":                      {Upstream: "http://x/mcp", SSEPath: "/a", MessagePath: "/a"},
		"max_message_size":                 {Upstream: "http://x/mcp", MaxMessageSize: -1},
		"max_inflight":                     {Upstream: "http://x/mcp", MaxInflight: -1},
		"keepalive":                        {Upstream: "http://x/mcp", Keepalive: -1},
		"session_ttl":                      {Upstream: "http://x/mcp", SessionTTL: -1},
		"adopt_hold":                       {Upstream: "http://x/mcp", AdoptHold: -1},
		"initialize_ttl":                   {Upstream: "http://x/mcp", InitializeTTL: -1},
		"drain_timeout":                    {Upstream: "http://x/mcp", DrainTimeout: -1},
		"adopt must be":                    {Upstream: "http://x/mcp", Adopt: "maybe"},
		"allowed_origins":                  {Upstream: "http://x/mcp", AllowedOrigins: []string{"example.com"}},
	} {
		err := h.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %q", h, err, want)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Provision(%+v) = %v, want an error naming %q", h, err, want)
		}
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup after a failed provision: %v", err)
		}
		cancel()
		// A handler of an earlier test may give its hold back once its
		// bridge is idle, a moment after its cleanup: wait for it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, ok := stores.References(memoryStoreKey(""))
			if !ok && n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("store pool holds %d references after a failed provision", n)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestMemoryStoreIsSharedAcrossReloads: the embedded store outlives any
// reload, whatever its options: they are applied in place.
func TestMemoryStoreIsSharedAcrossReloads(t *testing.T) {
	a := provisioned(t, &Handler{Upstream: "http://127.0.0.1:1/mcp"})
	b := provisioned(t, &Handler{Upstream: "http://127.0.0.1:1/mcp",
		StoreRaw: json.RawMessage(`{"backend":"memory","max_sessions":1,"max_pending":7}`)})
	if a.store.SessionStore() != b.store.SessionStore() {
		t.Fatal("a reload that changed the memory store's limits made a new store: its sessions would be lost")
	}
	st := b.store.SessionStore()
	ctx := t.Context()
	if err := st.Create(ctx, &sessionstore.Session{ID: "one"}); err != nil {
		t.Fatal(err)
	}
	if err := st.Create(ctx, &sessionstore.Session{ID: "two"}); !errors.Is(err, sessionstore.ErrTooManySessions) {
		t.Errorf("second session with max_sessions 1 applied in place: %v, want ErrTooManySessions", err)
	}
}

func TestRedisStoreNeedsAnAddress(t *testing.T) {
	for want, r := range map[string]*RedisStore{
		"address is required": {},
		"db":                  {Addresses: []string{"127.0.0.1:6379"}, DB: -1},
		"pool_size":           {Addresses: []string{"127.0.0.1:6379"}, PoolSize: -2},
		"max_pending":         {Addresses: []string{"127.0.0.1:6379"}, MaxPending: -2},
		"key_prefix":          {Addresses: []string{"127.0.0.1:6379"}, KeyPrefix: "a{b}"},
		"redis://":            {Addresses: []string{"redis://:secret@127.0.0.1:6379/notadb"}},
		"Cluster":             {Addresses: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, DB: 2},
	} {
		err := r.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %q", r, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

func TestRedisStoreProvisionsWithoutRedis(t *testing.T) {
	// Redis down at start-up must not stop Caddy: the bridge answers 503
	// until it is back. Nothing listens on port 1.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	r := &RedisStore{Addresses: []string{"redis://127.0.0.1:1/0"}, Password: "{env.MCPBRIDGE_TEST_UNSET}"}
	if err := r.Provision(ctx); err != nil {
		t.Fatalf("provision with Redis down: %v", err)
	}
	if r.SessionStore() == nil {
		t.Fatal("no store")
	}
	if err := r.Cleanup(); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if n, ok := stores.References(r.key); ok || n != 0 {
		t.Fatalf("store pool holds %d references after cleanup", n)
	}
}

// TestSettingsStack: the newest configuration's settings are in force; when
// a configuration is withdrawn (unloaded, or refused after provisioning),
// the newest remaining one's are applied again.
func TestSettingsStack(t *testing.T) {
	var applied []string
	s := &settingsStack[string]{apply: func(v string) { applied = append(applied, v) }}
	running, refused, next := new(int), new(int), new(int)
	s.push(running, "running")
	s.push(refused, "refused")
	s.drop(refused)
	s.push(next, "next")
	s.drop(running)
	want := []string{"running", "refused", "running", "next"}
	if strings.Join(applied, ",") != strings.Join(want, ",") {
		t.Errorf("applied %v, want %v", applied, want)
	}
}
