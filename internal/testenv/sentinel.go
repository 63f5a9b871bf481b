package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// SentinelOptions describes a Redis Sentinel watching one master.
type SentinelOptions struct {
	Bin string // "redis-server" if empty: a Sentinel is redis-server --sentinel
	// Dir holds the Sentinel's config file, which it rewrites. Required by
	// StartSentinel; MustSentinel uses a temporary directory if empty.
	Dir        string
	Port       int    // 0: a free port
	MasterName string // the name clients ask the Sentinels for
	MasterAddr string // host:port of the master to watch
	Quorum     int    // how many Sentinels must agree the master is down; 1 if 0
	// DownAfter is how long the master must be unreachable to be counted
	// down (down-after-milliseconds); 1s if 0.
	DownAfter time.Duration
	// FailoverTimeout is the Sentinel's failover-timeout; 5s if 0.
	FailoverTimeout time.Duration
	OnStart         func(*Process)
}

// sentinelReadyRe: Redis 7.0's Sentinel prints its id once it listens,
// where later versions also print the server's ready line.
var sentinelReadyRe = regexp.MustCompile(`Sentinel ID is|Ready to accept connections`)

// StartSentinel writes the Sentinel's config file and starts it.
func StartSentinel(ctx context.Context, opts SentinelOptions) (*Redis, error) {
	if opts.Dir == "" || opts.MasterName == "" || opts.MasterAddr == "" {
		return nil, errors.New("testenv: SentinelOptions needs Dir, MasterName and MasterAddr")
	}
	host, port, err := net.SplitHostPort(opts.MasterAddr)
	if err != nil {
		return nil, err
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if opts.Quorum == 0 {
		opts.Quorum = 1
	}
	if opts.DownAfter == 0 {
		opts.DownAfter = time.Second
	}
	if opts.FailoverTimeout == 0 {
		opts.FailoverTimeout = 5 * time.Second
	}
	conf := filepath.Join(opts.Dir, "sentinel-"+strconv.Itoa(opts.Port)+".conf")
	text := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s %[4]d\nsentinel down-after-milliseconds %[1]s %[5]d\nsentinel failover-timeout %[1]s %[6]d\n",
		opts.MasterName, host, port, opts.Quorum, opts.DownAfter.Milliseconds(), opts.FailoverTimeout.Milliseconds())
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	r := newRedis(opts.Bin, "redis sentinel", opts.Dir, "", opts.Port, opts.OnStart)
	// The config file must come first.
	r.args = []string{conf, "--sentinel", "--port", strconv.Itoa(opts.Port), "--bind", "127.0.0.1",
		"--dir", opts.Dir, "--daemonize", "no", "--logfile", ""}
	r.ready = sentinelReadyRe
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// MustSentinel is StartSentinel for a test.
func MustSentinel(tb testing.TB, opts SentinelOptions) *Redis {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	opts.OnStart = then(opts.OnStart, watcher(tb))
	return mustReady(tb, "a Sentinel", func(ctx context.Context) (*Redis, error) { return StartSentinel(ctx, opts) })
}
