package testenv

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// RedisOptions describes a redis-server on 127.0.0.1.
type RedisOptions struct {
	Bin string // "redis-server" (on PATH) if empty
	// Dir is the server's working and data directory (its append-only
	// file, a Cluster node's nodes.conf). Required by StartRedis; MustRedis
	// uses a temporary directory of the test if empty.
	Dir  string
	Port int // 0: a free port
	// Persist keeps every write in an append-only file synced on each
	// write, so that a restart (SIGTERM, then Restart) loses nothing.
	// Without it the server keeps nothing on disk.
	Persist bool
	// TLS makes the server speak only TLS, on Port.
	TLS *RedisTLS
	// Args are further redis-server options ("--name", "value", ...); they
	// come last, so they override the ones above.
	Args    []string
	Name    string // "redis-server" if empty
	LogFile string // see Command.LogFile
	OnStart func(*Process)
}

// RedisTLS is a TLS-only listener's configuration.
type RedisTLS struct {
	Cert, Key string // the server's certificate and key (PEM files)
	CA        string // the CA that client certificates must come from
	// AuthClients requires a client certificate (tls-auth-clients yes).
	AuthClients bool
}

// Redis is a redis-server (or a Sentinel) started by this package.
type Redis struct {
	bin, name, dir, logFile string
	port                    int
	args                    []string
	ready                   *regexp.Regexp
	onStart                 func(*Process)
	proc                    *Process
	runs                    int
}

// redisReadyRe is the line redis-server prints once it listens and has
// loaded its data.
var redisReadyRe = regexp.MustCompile(`Ready to accept connections`)

// StartRedis starts redis-server and waits until it says it is ready to
// accept connections.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	if opts.Dir == "" {
		return nil, errors.New("testenv: RedisOptions.Dir is required")
	}
	if opts.Port == 0 {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		opts.Port = port
	}
	r := newRedis(opts.Bin, opts.Name, opts.Dir, opts.LogFile, opts.Port, opts.OnStart)
	r.args = redisArgs(opts)
	r.ready = redisReadyRe
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func newRedis(bin, name, dir, logFile string, port int, onStart func(*Process)) *Redis {
	if bin == "" {
		bin = "redis-server"
	}
	if name == "" {
		name = "redis-server"
	}
	return &Redis{bin: bin, name: name, dir: dir, logFile: logFile, port: port, onStart: onStart}
}

// redisArgs is the command line for opts: loopback only, in the
// foreground, logging to stdout, no RDB snapshots.
func redisArgs(opts RedisOptions) []string {
	port := strconv.Itoa(opts.Port)
	args := []string{"--bind", "127.0.0.1", "--dir", opts.Dir, "--save", "", "--daemonize", "no", "--logfile", ""}
	if opts.TLS != nil {
		auth := "no"
		if opts.TLS.AuthClients {
			auth = "yes"
		}
		args = append(args, "--port", "0", "--tls-port", port,
			"--tls-cert-file", opts.TLS.Cert, "--tls-key-file", opts.TLS.Key, "--tls-ca-cert-file", opts.TLS.CA,
			"--tls-auth-clients", auth)
	} else {
		args = append(args, "--port", port)
	}
	if opts.Persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	return append(args, opts.Args...)
}

// start runs the server and waits for its ready line.
func (r *Redis) start(ctx context.Context) error {
	r.runs++
	name := r.name
	if r.runs > 1 {
		name = fmt.Sprintf("%s #%d", r.name, r.runs)
	}
	p, err := Start(Command{Name: name, Path: r.bin, Args: r.args, Dir: r.dir, LogFile: r.logFile, OnStart: r.onStart})
	if err != nil {
		return err
	}
	if _, err := p.WaitOutput(ctx, r.ready); err != nil {
		p.Kill()
		return fmt.Errorf("%w\n%s", err, p.Tail(30))
	}
	r.proc = p
	return nil
}

// Restart starts the server again, on the same port and directory, once
// Stop or Kill has ended it; with Persist, it has all its data back.
func (r *Redis) Restart(ctx context.Context) error {
	if r.proc != nil && !r.proc.Exited() {
		return fmt.Errorf("%s on %s is still running", r.name, r.Addr())
	}
	return r.start(ctx)
}

// Port is the server's port (its TLS port with RedisOptions.TLS).
func (r *Redis) Port() int { return r.port }

// Addr is the server's address, 127.0.0.1:port.
func (r *Redis) Addr() string { return Addr(r.port) }

// Dir is the server's directory.
func (r *Redis) Dir() string { return r.dir }

// Proc is the server's current process.
func (r *Redis) Proc() *Process { return r.proc }

// Stop ends the server with SIGTERM (it writes its append-only file and
// exits), killing it after grace (an error).
func (r *Redis) Stop(grace time.Duration) error { return r.proc.Stop(grace) }

// Kill ends the server abruptly (SIGKILL), as a crash would.
func (r *Redis) Kill() { r.proc.Kill() }

// MustRedis is StartRedis for a test: in a temporary directory of the test
// if opts.Dir is empty, killed when the test ends, restarts included.
func MustRedis(tb testing.TB, opts RedisOptions) *Redis {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	opts.OnStart = then(opts.OnStart, watcher(tb))
	return mustReady(tb, "redis-server", func(ctx context.Context) (*Redis, error) { return StartRedis(ctx, opts) })
}

// MustRestart is Restart for a test.
func (r *Redis) MustRestart(tb testing.TB) {
	tb.Helper()
	ctx, cancel := timeoutCtx(DefaultReadyTimeout)
	defer cancel()
	if err := r.Restart(ctx); err != nil {
		tb.Fatalf("restarting %s: %v", r.name, err)
	}
}

// RedisClients returns how many client connections the Redis server at
// addr has, besides the one asking (INFO clients: connected_clients, which
// leaves out replicas). The benchmark watches it to see that the bridge's
// connections do not grow with its sessions.
func RedisClients(ctx context.Context, addr string) (int, error) {
	c := goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: 1, MaxRetries: -1, DialTimeout: 2 * time.Second})
	defer c.Close()
	info, err := c.Info(ctx, "clients").Result()
	if err != nil {
		return 0, err
	}
	v, ok := infoField(info, "connected_clients")
	if !ok {
		return 0, errors.New("INFO clients has no connected_clients")
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("connected_clients %q: %w", v, err)
	}
	return n - 1, nil
}

// infoField returns the value of field in an INFO reply.
func infoField(info, field string) (string, bool) {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, true
		}
	}
	return "", false
}
