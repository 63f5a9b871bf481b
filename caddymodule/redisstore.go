package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	redisstore "github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/redis"
)

func init() {
	caddy.RegisterModule(RedisStore{})
}

// RedisStore keeps sessions in Redis, so that several Caddy replicas serve
// the same sessions without sticky routing. One address means a single
// server (or a redis:// / rediss:// URL); several mean a Cluster, or a
// Sentinel set when master_name is given.
//
// A replica uses a small fixed number of Redis connections whatever its
// session count: the client's pool plus one subscription for wake-ups.
type RedisStore struct {
	// Addresses are host:port pairs or redis:// / rediss:// URLs. Required.
	Addresses []string `json:"addresses,omitempty"`
	// Username and Password authenticate to Redis. Placeholders such as
	// {env.REDIS_PASSWORD} are resolved at provision time, so the secret
	// need not appear in the config.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// DB selects the database of a single server or Sentinel set. Default 0.
	DB int `json:"db,omitempty"`
	// MasterName is the Sentinel master name; it makes Addresses sentinels.
	MasterName string `json:"master_name,omitempty"`
	// TLS enables TLS to Redis (implied by a rediss:// address).
	TLS bool `json:"tls,omitempty"`
	// KeyPrefix starts every key the store writes. Default "mcpbridge:".
	KeyPrefix string `json:"key_prefix,omitempty"`
	// MaxSessions caps the sessions in the store (approximately; shared by
	// all replicas). Default: 100000.
	MaxSessions int `json:"max_sessions,omitempty"`
	// MaxPending caps the undelivered messages of one session's mailbox.
	// Default: 1024.
	MaxPending int `json:"max_pending,omitempty"`
	// PoolSize caps the connections of this replica's Redis client (per
	// Cluster node), besides the one Pub/Sub connection for wake-ups. Store
	// operations are short, so a few connections serve many sessions.
	// Default: 6.
	PoolSize int `json:"pool_size,omitempty"`

	key   string
	store *redisstore.Store
}

// CaddyModule returns the Caddy module information.
func (RedisStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_sse_bridge.stores.redis",
		New: func() caddy.Module { return new(RedisStore) },
	}
}

// defaultRedisPoolSize keeps a replica within 8 Redis connections, wake-up
// subscription included.
const defaultRedisPoolSize = 6

type pooledRedis struct {
	client goredis.UniversalClient
	store  *redisstore.Store
}

func (p pooledRedis) Destruct() error {
	err := p.store.Close()
	if cerr := p.client.Close(); err == nil {
		err = cerr
	}
	return err
}

// Provision finds or makes the client and store for this configuration. It
// does not fail when Redis is unreachable: the bridge answers 503 until it
// is back.
func (r *RedisStore) Provision(ctx caddy.Context) error {
	logger := ctx.Logger()
	repl := caddy.NewReplacer()
	opts := &goredis.UniversalOptions{
		Username:   repl.ReplaceAll(r.Username, ""),
		Password:   repl.ReplaceAll(r.Password, ""),
		DB:         r.DB,
		MasterName: repl.ReplaceAll(r.MasterName, ""),
		// Bounded waits: a store call is on a request's path.
		DialTimeout:  2 * time.Second,
		ReadTimeout:  3 * time.Second,
		WriteTimeout: 3 * time.Second,
		PoolTimeout:  4 * time.Second,
		PoolSize:     r.PoolSize,
	}
	if opts.PoolSize == 0 {
		opts.PoolSize = defaultRedisPoolSize
	}
	// PoolSize alone does not cap the connections go-redis opens: cap the
	// active ones, and let pipelines share the pool rather than open a
	// dedicated pipeline pool of their own.
	opts.MaxActiveConns = opts.PoolSize
	opts.PipelinePoolSize = -1
	useTLS := r.TLS
	for _, a := range r.Addresses {
		a = repl.ReplaceAll(a, "")
		if strings.Contains(a, "://") {
			u, err := goredis.ParseURL(a)
			if err != nil {
				return fmt.Errorf("parsing redis address: %w", err)
			}
			if u.TLSConfig != nil {
				useTLS = true
			}
			if opts.Username == "" {
				opts.Username = u.Username
			}
			if opts.Password == "" {
				opts.Password = u.Password
			}
			if opts.DB == 0 {
				opts.DB = u.DB
			}
			a = u.Addr
		}
		opts.Addrs = append(opts.Addrs, a)
	}
	if useTLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}

	// The pool key identifies the configuration without holding the secret.
	fingerprint, _ := json.Marshal([]any{opts.Addrs, opts.Username, opts.Password, opts.DB, opts.MasterName, useTLS, r.KeyPrefix, r.MaxSessions, r.MaxPending, opts.PoolSize})
	sum := sha256.Sum256(fingerprint)
	r.key = "redis/" + hex.EncodeToString(sum[:])

	v, loaded, err := stores.LoadOrNew(r.key, func() (caddy.Destructor, error) {
		client := goredis.NewUniversalClient(opts)
		store, err := redisstore.New(client, redisstore.Options{
			KeyPrefix:   r.KeyPrefix,
			MaxSessions: r.MaxSessions,
			MaxPending:  r.MaxPending,
			Logger:      logger,
		})
		if err != nil {
			_ = client.Close()
			return nil, err
		}
		return pooledRedis{client: client, store: store}, nil
	})
	if err != nil {
		return fmt.Errorf("setting up the redis store: %w", err)
	}
	r.store = v.(pooledRedis).store
	if !loaded {
		pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := r.store.Ping(pingCtx); err != nil {
			logger.Warn("redis is not reachable yet; new sessions get 503 until it is",
				zap.Strings("addresses", opts.Addrs), zap.Error(err))
		}
	}
	return nil
}

// Validate checks the configuration.
func (r *RedisStore) Validate() error {
	if len(r.Addresses) == 0 {
		return fmt.Errorf("redis store: at least one address is required")
	}
	if r.DB < 0 || r.MaxSessions < 0 || r.MaxPending < 0 || r.PoolSize < 0 {
		return fmt.Errorf("redis store: db, max_sessions, max_pending and pool_size must not be negative")
	}
	return nil
}

// Cleanup releases this configuration's hold on the store.
func (r *RedisStore) Cleanup() error {
	if r.key != "" {
		_, err := stores.Delete(r.key)
		return err
	}
	return nil
}

// SessionStore implements StoreModule.
func (r *RedisStore) SessionStore() sessionstore.Store { return r.store }

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens. Syntax:
//
//	store redis [<address...>] {
//		address <redis-url|host:port>...
//		username <user>
//		password <secret>
//		db <n>
//		master_name <name>
//		tls
//		key_prefix <prefix>
//		max_sessions <n>
//		max_pending <n>
//		pool_size <n>
//	}
func (r *RedisStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	r.Addresses = append(r.Addresses, d.RemainingArgs()...)
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "address":
			addrs := d.RemainingArgs()
			if len(addrs) == 0 {
				return d.ArgErr()
			}
			r.Addresses = append(r.Addresses, addrs...)
		case "username", "password", "master_name", "key_prefix":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch opt {
			case "username":
				r.Username = v
			case "password":
				r.Password = v
			case "master_name":
				r.MasterName = v
			case "key_prefix":
				r.KeyPrefix = v
			}
		case "db":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return d.Errf("db must be a whole number, got %q", v)
			}
			r.DB = n
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			r.TLS = true
		case "max_sessions":
			if err := parsePositiveInt(d, &r.MaxSessions); err != nil {
				return err
			}
		case "max_pending":
			if err := parsePositiveInt(d, &r.MaxPending); err != nil {
				return err
			}
		case "pool_size":
			if err := parsePositiveInt(d, &r.PoolSize); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized redis store option: %s", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*RedisStore)(nil)
	_ caddy.Validator       = (*RedisStore)(nil)
	_ caddy.CleanerUpper    = (*RedisStore)(nil)
	_ caddyfile.Unmarshaler = (*RedisStore)(nil)
	_ StoreModule           = (*RedisStore)(nil)
)
