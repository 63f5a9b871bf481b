package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

func TestValidateRejectsBadConfig(t *testing.T) {
	for name, h := range map[string]*Handler{
		"no upstream":   {},
		"relative path": {Upstream: "http://x/mcp", SSEPath: "sse"},
		"negative size": {Upstream: "http://x/mcp", MaxMessageSize: -1},
	} {
		if err := h.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, h)
		}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	bad := &Handler{Upstream: "ftp://x/mcp"}
	if err := bad.Provision(ctx); err == nil {
		t.Error("Provision accepted an ftp upstream")
	}
	if err := bad.Cleanup(); err != nil {
		t.Errorf("cleanup after a failed provision: %v", err)
	}
	if n, ok := stores.References(bad.defaultStore.key); ok || n != 0 {
		t.Errorf("store pool holds %d references after cleanup", n)
	}
}

func TestMemoryStoreIsSharedAcrossReloads(t *testing.T) {
	a := provisioned(t, &Handler{Upstream: "http://127.0.0.1:1/mcp"})
	b := provisioned(t, &Handler{Upstream: "http://127.0.0.1:1/mcp"})
	if a.store.SessionStore() != b.store.SessionStore() {
		t.Fatal("two configs with the same memory store settings got different stores")
	}
}

func TestRedisStoreNeedsAnAddress(t *testing.T) {
	if err := (&RedisStore{}).Validate(); err == nil {
		t.Fatal("a redis store without addresses validated")
	}
	if err := (&RedisStore{Addresses: []string{"127.0.0.1:6379"}, DB: -1}).Validate(); err == nil {
		t.Fatal("a negative db validated")
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
