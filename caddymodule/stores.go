package caddymodule

import (
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

// Provision finds or makes the store for this configuration.
func (m *MemoryStore) Provision(caddy.Context) error {
	m.key = fmt.Sprintf("memory/%d/%d", m.MaxSessions, m.MaxPending)
	v, _, err := stores.LoadOrNew(m.key, func() (caddy.Destructor, error) {
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
