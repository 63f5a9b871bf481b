package caddymodule

import (
	"context"
	"fmt"
	"net/url"
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
	// TLS enables TLS to Redis (implied by a rediss:// address or by
	// TLSOptions), with the system's roots unless TLSOptions says otherwise.
	TLS bool `json:"tls,omitempty"`
	// TLSOptions sets a private CA, a client certificate, the server name.
	TLSOptions *RedisTLS `json:"tls_options,omitempty"`
	// KeyPrefix starts every key the store writes. Default "mcpbridge:".
	KeyPrefix string `json:"key_prefix,omitempty"`
	// MaxSessions caps the sessions in the store (approximately; shared by
	// all replicas). Default: 100000.
	MaxSessions int `json:"max_sessions,omitempty"`
	// MaxPending caps the undelivered messages of one session's mailbox.
	// Default: 1024.
	MaxPending int `json:"max_pending,omitempty"`
	// MaxSessionsPerCaller caps the live sessions of one caller (one
	// credential; one client address for anonymous callers) across all
	// replicas; beyond it a new stream gets 429. Default: 1000.
	MaxSessionsPerCaller int `json:"max_sessions_per_caller,omitempty"`
	// PoolSize caps the connections of this replica's Redis client (per
	// Cluster node), besides the one Pub/Sub connection for wake-ups. Store
	// operations are short, so a few connections serve many sessions.
	// Default: 6.
	PoolSize int `json:"pool_size,omitempty"`

	key    string
	store  *redisstore.Store
	pooled *pooledRedis
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

// pooledRedis is one Redis store, shared by every configuration that names
// the same data (addresses, db, master name, key prefix). A reload that
// changes how to reach it (credentials, TLS, pool size) swaps its client in
// place; one that changes its limits sets them in place.
type pooledRedis struct {
	store    *redisstore.Store
	settings *settingsStack[redisSettings]

	// client and clientFP (its options, without secrets) are changed only
	// by settings' apply, under its lock.
	client   goredis.UniversalClient
	clientFP string
	logger   *zap.Logger
}

// redisSettings are what a configuration asks of a pooled Redis store
// beyond the data it names.
type redisSettings struct {
	opts     *goredis.UniversalOptions
	clientFP string
	limits   sessionstore.Limits
}

func (p *pooledRedis) Destruct() error {
	err := p.store.Close()
	p.settings.mu.Lock()
	defer p.settings.mu.Unlock()
	if cerr := p.client.Close(); err == nil {
		err = cerr
	}
	return err
}

// oldClientGrace is how long a client replaced by a reload stays open for
// the operations still using it (each is bounded by the read timeout).
const oldClientGrace = 10 * time.Second

// apply puts a configuration's limits and client options in force: the
// client is swapped in place when its options changed.
func (p *pooledRedis) apply(s redisSettings) {
	p.store.SetLimits(s.limits)
	if s.clientFP == p.clientFP {
		return
	}
	old := p.store.SwapClient(goredis.NewUniversalClient(s.opts))
	p.client, p.clientFP = p.store.Client(), s.clientFP
	p.logger.Info("redis client options changed: new client in place, sessions kept")
	time.AfterFunc(oldClientGrace, func() { _ = old.Close() })
}

// Provision finds or makes the client and store for this configuration. It
// does not fail when Redis is unreachable: the bridge answers 503 until it
// is back.
func (r *RedisStore) Provision(ctx caddy.Context) error {
	if err := r.Validate(); err != nil {
		return err
	}
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
	useTLS := r.TLS || r.TLSOptions.set()
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
		cfg, err := r.TLSOptions.config(logger)
		if err != nil {
			return err
		}
		opts.TLSConfig = cfg
	}

	// The pool key names the data (so that a reload keeps the store and its
	// sessions); the client's own options are applied in place. Neither
	// holds the secret.
	r.key = "redis/" + hashOf(opts.Addrs, opts.DB, opts.MasterName, r.KeyPrefix)
	clientFP := hashOf(opts.Username, opts.Password, useTLS, r.TLSOptions, opts.PoolSize)

	v, loaded, err := stores.LoadOrNew(r.key, func() (caddy.Destructor, error) {
		client := goredis.NewUniversalClient(opts)
		store, err := redisstore.New(client, redisstore.Options{
			KeyPrefix:            r.KeyPrefix,
			MaxSessions:          r.MaxSessions,
			MaxPending:           r.MaxPending,
			MaxSessionsPerCaller: r.MaxSessionsPerCaller,
			Logger:               logger,
		})
		if err != nil {
			_ = client.Close()
			return nil, err
		}
		p := &pooledRedis{client: client, clientFP: clientFP, store: store, logger: logger}
		p.settings = &settingsStack[redisSettings]{apply: p.apply}
		return p, nil
	})
	if err != nil {
		return fmt.Errorf("setting up the redis store: %w", err)
	}
	r.pooled = v.(*pooledRedis)
	r.pooled.settings.push(r, redisSettings{opts: opts, clientFP: clientFP, limits: sessionstore.Limits{
		MaxSessions: r.MaxSessions, MaxPending: r.MaxPending, MaxSessionsPerCaller: r.MaxSessionsPerCaller}})
	r.store = r.pooled.store
	if !loaded {
		pingCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := r.store.Ping(pingCtx); err != nil {
			if isAuthError(err) {
				logger.Error("redis refused the credentials (username/password): every request will get 503 until they are fixed",
					zap.Strings("addresses", opts.Addrs), zap.Error(err))
			} else {
				logger.Warn("redis is not reachable yet; new sessions get 503 until it is",
					zap.Strings("addresses", opts.Addrs), zap.Error(err))
			}
		}
	}
	return nil
}

// Validate checks the configuration.
func (r *RedisStore) Validate() error {
	if len(r.Addresses) == 0 {
		return fmt.Errorf("redis store: address is required (host:port, or a redis:// or rediss:// URL)")
	}
	for _, a := range r.Addresses {
		if a == "" {
			return fmt.Errorf("redis store: address must not be empty")
		}
		if strings.Contains(a, "://") && !strings.Contains(a, "{") {
			if _, err := goredis.ParseURL(a); err != nil {
				return fmt.Errorf("redis store: address %q: %w", redactURL(a), err)
			}
		}
	}
	for name, v := range map[string]int{"db": r.DB, "max_sessions": r.MaxSessions, "max_pending": r.MaxPending, "pool_size": r.PoolSize,
		"max_sessions_per_caller": r.MaxSessionsPerCaller} {
		if v < 0 {
			return fmt.Errorf("redis store: %s must not be negative, got %d", name, v)
		}
	}
	if err := r.TLSOptions.validate(); err != nil {
		return err
	}
	if strings.ContainsAny(r.KeyPrefix, "{}") {
		return fmt.Errorf("redis store: key_prefix %q must not contain '{' or '}'", r.KeyPrefix)
	}
	if len(r.Addresses) > 1 && r.DB != 0 && r.MasterName == "" {
		return fmt.Errorf("redis store: db cannot be used with a Cluster (several addresses without master_name)")
	}
	return nil
}

// redactURL hides the password of a redis:// URL for an error message.
func redactURL(a string) string {
	if u, err := url.Parse(a); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// Cleanup withdraws this configuration's settings and releases its hold on
// the store.
func (r *RedisStore) Cleanup() error {
	if r.key != "" {
		r.pooled.settings.drop(r)
		_, err := stores.Delete(r.key)
		return err
	}
	return nil
}

// SessionStore implements StoreModule.
func (r *RedisStore) SessionStore() sessionstore.Store { return r.store }

func (r *RedisStore) poolKey() string { return r.key }

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens. Syntax:
//
//	store redis [<address...>] {
//		address <redis-url|host:port>...
//		username <user>
//		password <secret>
//		db <n>
//		master_name <name>
//		tls [{
//			ca <file>
//			ca_pem <pem>
//			cert <file>
//			key <file>
//			server_name <name>
//			insecure_skip_verify
//		}]
//		key_prefix <prefix>
//		max_sessions <n>
//		max_pending <n>
//		max_sessions_per_caller <n>
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
			opts := new(RedisTLS)
			if err := opts.unmarshalCaddyfile(d); err != nil {
				return err
			}
			if opts.set() {
				r.TLSOptions = opts
			}
		case "max_sessions":
			if err := parsePositiveInt(d, &r.MaxSessions); err != nil {
				return err
			}
		case "max_pending":
			if err := parsePositiveInt(d, &r.MaxPending); err != nil {
				return err
			}
		case "max_sessions_per_caller":
			if err := parsePositiveInt(d, &r.MaxSessionsPerCaller); err != nil {
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

// isAuthError recognises Redis's answers to wrong or missing credentials.
func isAuthError(err error) bool {
	msg := err.Error()
	for _, code := range []string{"WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username-password"} {
		if strings.Contains(msg, code) {
			return true
		}
	}
	return false
}
