package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

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

// storeUsers counts, per pooled store, the handlers that use it, so that a
// handler being unloaded knows whether its store goes away with it (no
// handler of the new configuration uses it), whatever order Caddy cleans
// modules up in.
var storeUsers = caddy.NewUsagePool()

type storeUser struct{}

func (storeUser) Destruct() error { return nil }

// useStore records a handler's use of a pooled store and takes a hold on
// it of the handler's own, so that the store stays open while the
// handler's work (requests in flight, a shutdown's drain) needs it, even
// after the store module's own Cleanup. The returned function ends both and
// reports whether the store is used by no other handler (it went away).
func useStore(m StoreModule) (done func() (gone bool), err error) {
	key := m.poolKey()
	if _, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return nil, fmt.Errorf("store %s is gone", key)
	}); err != nil {
		return nil, err
	}
	_, _ = storeUsers.LoadOrStore(key, storeUser{})
	var once sync.Once
	return func() (gone bool) {
		once.Do(func() {
			gone, _ = storeUsers.Delete(key)
		})
		return gone
	}, nil
}

// releaseStore gives back the handler's own hold taken by useStore.
func releaseStore(m StoreModule) { _, _ = stores.Delete(m.poolKey()) }

// settingsStack keeps the settings that each configuration using a pooled
// store asked for, newest last, and applies the newest: a configuration
// that is refused after it was provisioned (and so is cleaned up without
// ever serving) leaves the running configuration's settings in force.
type settingsStack[T any] struct {
	mu      sync.Mutex
	entries []stackEntry[T]
	apply   func(T)
}

type stackEntry[T any] struct {
	owner    any
	settings T
}

// push adds owner's settings and applies them.
func (s *settingsStack[T]) push(owner any, settings T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = append(s.entries, stackEntry[T]{owner, settings})
	s.apply(settings)
}

// drop removes owner's settings; if they were in force, the newest
// remaining ones are applied again.
func (s *settingsStack[T]) drop(owner any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.entries {
		if e.owner != owner {
			continue
		}
		wasNewest := i == len(s.entries)-1
		s.entries = append(s.entries[:i], s.entries[i+1:]...)
		if wasNewest && len(s.entries) > 0 {
			s.apply(s.entries[len(s.entries)-1].settings)
		}
		return
	}
}

// stores holds the session stores, keyed by their configuration, so that a
// store and its sessions survive config reloads.
var stores = caddy.NewUsagePool()

// MemoryStore keeps sessions in this Caddy process: the default, for a
// single instance.
type MemoryStore struct {
	// Name tells embedded stores apart: the sites of one Caddy process that
	// give the same name (or none) share one store, and its limits are those
	// of the newest configuration that uses it. Give sites that need limits
	// of their own a name of their own. Default: "" (the process's store).
	Name string `json:"name,omitempty"`
	// MaxSessions caps the number of sessions (open streams and sessions
	// waiting for their client); beyond it new streams get 503.
	// Default: 10000.
	MaxSessions int `json:"max_sessions,omitempty"`
	// MaxPending caps the messages waiting in one session's mailbox for the
	// client's stream. Default: 1024.
	MaxPending int `json:"max_pending,omitempty"`
	// MaxSessionsPerCaller caps the live sessions of one caller (one
	// credential; one client address for anonymous callers); beyond it a
	// new stream gets 429. Default: 1000.
	MaxSessionsPerCaller int `json:"max_sessions_per_caller,omitempty"`

	key    string
	store  *memory.Store
	pooled pooledMemory
}

// CaddyModule returns the Caddy module information.
func (MemoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_sse_bridge.stores.memory",
		New: func() caddy.Module { return new(MemoryStore) },
	}
}

// pooledMemory is the process's embedded store and the limits the
// configurations using it asked for.
type pooledMemory struct {
	*memory.Store
	limits *settingsStack[sessionstore.Limits]
}

func (pooledMemory) Destruct() error { return nil }

// memoryStoreKey names the embedded store called name in the pool: a
// reload keeps it, and its sessions, whatever changed.
func memoryStoreKey(name string) string { return "memory/" + name }

// Provision finds or makes the process's store and applies this
// configuration's limits to it.
func (m *MemoryStore) Provision(caddy.Context) error {
	if err := m.Validate(); err != nil {
		return err
	}
	m.key = memoryStoreKey(m.Name)
	v, _, err := stores.LoadOrNew(m.key, func() (caddy.Destructor, error) {
		st := memory.New(memory.Options{})
		return pooledMemory{Store: st, limits: &settingsStack[sessionstore.Limits]{apply: st.SetLimits}}, nil
	})
	if err != nil {
		return err
	}
	m.pooled = v.(pooledMemory)
	m.store = m.pooled.Store
	m.pooled.limits.push(m, sessionstore.Limits{MaxSessions: m.MaxSessions, MaxPending: m.MaxPending,
		MaxSessionsPerCaller: m.MaxSessionsPerCaller})
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
	if m.MaxSessionsPerCaller < 0 {
		return fmt.Errorf("memory store: max_sessions_per_caller must not be negative, got %d", m.MaxSessionsPerCaller)
	}
	return nil
}

// Cleanup withdraws this configuration's limits and releases its hold on
// the store.
func (m *MemoryStore) Cleanup() error {
	if m.key != "" {
		m.pooled.limits.drop(m)
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
//		name <name>
//		max_sessions <n>
//		max_pending <n>
//		max_sessions_per_caller <n>
//	}
func (m *MemoryStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var target *int
		switch d.Val() {
		case "name":
			if !d.AllArgs(&m.Name) {
				return d.ArgErr()
			}
			continue
		case "max_sessions":
			target = &m.MaxSessions
		case "max_pending":
			target = &m.MaxPending
		case "max_sessions_per_caller":
			target = &m.MaxSessionsPerCaller
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
