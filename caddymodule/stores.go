package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

func init() {
	caddy.RegisterModule(MemoryStore{})
}

// StoreModule is implemented by the session store guest modules in the
// namespace http.handlers.mcp_sse_bridge.stores.
type StoreModule interface {
	SessionStore() sessionstore.Store
	// poolKey names the store in the stores pool.
	poolKey() string
}

// retainStore takes one more hold on a pooled store, so that it stays open
// while work of a configuration being unloaded (requests in flight, a
// shutdown's drain) still uses it, whatever order Caddy cleans modules up
// in. It returns the function that gives the hold back, and whether the
// store would have been destroyed without it (no other configuration uses
// it: the store went away).
func retainStore(m StoreModule) (release func(), lastUser bool) {
	key := m.poolKey()
	refs, _ := stores.References(key)
	_, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return nil, fmt.Errorf("store %s is gone", key)
	})
	if err != nil {
		return func() {}, true
	}
	return func() { _, _ = stores.Delete(key) }, refs <= 1
}

// stores holds the session stores, keyed by their configuration, so that a
// store and its sessions survive config reloads.
var stores = caddy.NewUsagePool()

// MemoryStore keeps sessions in this Caddy process: the default, for a
// single instance.
type MemoryStore struct {
	// MaxSessions caps the number of sessions (open streams and sessions
	// waiting for their client); beyond it new streams get 503.
	// Default: 10000.
	MaxSessions int `json:"max_sessions,omitempty"`
	// MaxPending caps the messages waiting in one session's mailbox for the
	// client's stream. Default: 1024.
	MaxPending int `json:"max_pending,omitempty"`

	key   string
	store *memory.Store
}

// CaddyModule returns the Caddy module information.
func (MemoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_sse_bridge.stores.memory",
		New: func() caddy.Module { return new(MemoryStore) },
	}
}

type pooledMemory struct{ *memory.Store }

func (pooledMemory) Destruct() error { return nil }

// memoryStoreKey names the one embedded store of this process: every
// configuration and site shares it, so that a reload keeps its sessions
// whatever changed; its limits are those of the latest configuration.
const memoryStoreKey = "memory"

// Provision finds or makes the process's store and applies this
// configuration's limits to it.
func (m *MemoryStore) Provision(caddy.Context) error {
	if err := m.Validate(); err != nil {
		return err
	}
	m.key = memoryStoreKey
	v, loaded, err := stores.LoadOrNew(m.key, func() (caddy.Destructor, error) {
		return pooledMemory{memory.New(memory.Options{
			MaxSessions:  m.MaxSessions,
			MaxPending:   m.MaxPending,
			ReplayWindow: 64,
		})}, nil
	})
	if err != nil {
		return err
	}
	m.store = v.(pooledMemory).Store
	if loaded {
		m.store.SetLimits(m.MaxSessions, m.MaxPending)
	}
	return nil
}

// Validate checks the limits.
func (m *MemoryStore) Validate() error {
	if m.MaxSessions < 0 {
		return fmt.Errorf("memory store: max_sessions must not be negative, got %d", m.MaxSessions)
	}
	if m.MaxPending < 0 {
		return fmt.Errorf("memory store: max_pending must not be negative, got %d", m.MaxPending)
	}
	return nil
}

// Cleanup releases this configuration's hold on the store.
func (m *MemoryStore) Cleanup() error {
	if m.key != "" {
		_, err := stores.Delete(m.key)
		return err
	}
	return nil
}

// SessionStore implements StoreModule.
func (m *MemoryStore) SessionStore() sessionstore.Store { return m.store }

func (m *MemoryStore) poolKey() string { return m.key }

// UnmarshalCaddyfile sets up the memory store from Caddyfile tokens. Syntax:
//
//	store memory {
//		max_sessions <n>
//		max_pending <n>
//	}
func (m *MemoryStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var target *int
		switch d.Val() {
		case "max_sessions":
			target = &m.MaxSessions
		case "max_pending":
			target = &m.MaxPending
		default:
			return d.Errf("unrecognized memory store option: %s", d.Val())
		}
		if err := parsePositiveInt(d, target); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*MemoryStore)(nil)
	_ caddy.CleanerUpper    = (*MemoryStore)(nil)
	_ caddyfile.Unmarshaler = (*MemoryStore)(nil)
	_ StoreModule           = (*MemoryStore)(nil)
)

// hashOf identifies a list of configuration values without revealing them
// (a password among them).
func hashOf(values ...any) string {
	b, _ := json.Marshal(values)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
