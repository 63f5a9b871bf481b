package redis

// Real Redis processes for the tests, from internal/testenv: one single
// server and one 3-master Cluster, each started once per package run (on
// first use) and stopped by TestMain, plus servers of their own for tests
// that stop or kill them.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// skipEnv names the variable that turns a missing redis-server into skipped
// tests instead of failed ones.
const skipEnv = "MCPBRIDGE_SKIP_REDIS"

// stopGrace bounds the graceful stop of the shared servers.
const stopGrace = 10 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	stopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requireRedis fails the test (or skips it, with MCPBRIDGE_SKIP_REDIS=1)
// when redis-server or redis-cli is not installed.
func requireRedis(tb testing.TB) {
	tb.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv(skipEnv) == "1" {
				tb.Skipf("%s not installed (%s=1)", bin, skipEnv)
			}
			tb.Fatalf("%s not found in PATH: the Redis store tests run a real Redis; install redis-server "+
				"(Debian/Ubuntu: apt-get install redis-server; CI installs it), or set %s=1 to skip them", bin, skipEnv)
		}
	}
}

// shared holds the servers the tests share, started on first use.
var shared struct {
	mu         sync.Mutex
	dir        string
	single     *testenv.Redis
	singleErr  error
	cluster    *testenv.Cluster
	clusterErr error
}

func sharedDir() (string, error) {
	if shared.dir == "" {
		d, err := os.MkdirTemp("", "mcpbridge-redis-test-")
		if err != nil {
			return "", err
		}
		shared.dir = d
	}
	return shared.dir, nil
}

// singleAddr returns the address of the package's single server.
func singleAddr(tb testing.TB) string {
	tb.Helper()
	requireRedis(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.single == nil && shared.singleErr == nil {
		dir, err := sharedDir()
		if err == nil {
			shared.single, err = testenv.StartRedis(context.Background(), testenv.RedisOptions{Dir: dir})
		}
		shared.singleErr = err
	}
	if shared.singleErr != nil {
		tb.Fatalf("starting the Redis server: %v", shared.singleErr)
	}
	return shared.single.Addr()
}

// clusterAddrs returns the addresses of the package's 3-master Cluster.
func clusterAddrs(tb testing.TB) []string {
	tb.Helper()
	requireRedis(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster == nil && shared.clusterErr == nil {
		dir, err := sharedDir()
		if err == nil {
			shared.cluster, err = testenv.StartCluster(context.Background(),
				testenv.ClusterOptions{Dir: dir, Masters: 3, NodeTimeout: 2 * time.Second})
		}
		shared.clusterErr = err
	}
	if shared.clusterErr != nil {
		tb.Fatalf("starting the Redis Cluster: %v", shared.clusterErr)
	}
	return shared.cluster.Addrs()
}

func stopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.single != nil {
		_ = shared.single.Stop(stopGrace)
	}
	if shared.cluster != nil {
		_ = shared.cluster.Stop(stopGrace)
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// randomPrefix partitions the shared servers between stores.
func randomPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b) + ":"
}

// newSingleClient returns a client of the shared server, closed on Cleanup.
func newSingleClient(tb testing.TB) *goredis.Client {
	tb.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: singleAddr(tb)})
	tb.Cleanup(func() { c.Close() })
	return c
}

// newClusterClient returns a client of the shared Cluster, closed on Cleanup.
func newClusterClient(tb testing.TB) *goredis.ClusterClient {
	tb.Helper()
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: clusterAddrs(tb)})
	tb.Cleanup(func() { c.Close() })
	return c
}

// newStore returns a store on client with a random key prefix, closed on
// Cleanup (before the client, which was registered earlier).
func newStore(tb testing.TB, client goredis.UniversalClient, opts Options) *Store {
	tb.Helper()
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = randomPrefix()
	}
	st, err := New(client, opts)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}
