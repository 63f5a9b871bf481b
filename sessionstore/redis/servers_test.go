package redis

// Real Redis processes for the tests: one single server and one 3-master
// Cluster, each started once per package run (on first use) on free
// loopback ports, plus servers of their own for tests that stop them.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// skipEnv names the variable that turns a missing redis-server into skipped
// tests instead of failed ones.
const skipEnv = "MCPBRIDGE_SKIP_REDIS"

// startTimeout bounds the wait for a server (or the Cluster) to be ready.
const startTimeout = 20 * time.Second

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

// server is one redis-server process.
type server struct {
	port int
	dir  string
	args []string // beyond port, bind and dir
	conf string   // a config file to start from (a sentinel's), if any
	cmd  *exec.Cmd
	log  *os.File
	// exited is closed when the process has been waited for.
	exited chan struct{}
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *server) start() error {
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--protected-mode", "no", "--daemonize", "no",
	}, s.args...)
	if s.conf != "" {
		args = append([]string{s.conf}, args...)
	}
	log, err := os.OpenFile(filepath.Join(s.dir, "redis-"+strconv.Itoa(s.port)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = log, log
	dieWithParent(cmd)
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		// The thread that starts the server lives as long as it does.
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			_ = cmd.Wait()
			close(exited)
		}
	}()
	if err := <-started; err != nil {
		log.Close()
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.cmd, s.log, s.exited = cmd, log, exited
	if err := waitPing(s.addr(), startTimeout, exited); err != nil {
		s.stop()
		return fmt.Errorf("redis-server on %s: %w (log: %s)", s.addr(), err, s.tail())
	}
	return nil
}

// stop ends the server gracefully (SIGTERM: Redis writes its AOF and
// exits), killing it if it takes too long.
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
	s.log.Close()
}

func (s *server) tail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis-"+strconv.Itoa(s.port)+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// waitPing polls addr with PING until it answers PONG, the process exits,
// or timeout passes.
func waitPing(addr string, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = ping(addr); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG within %v: %w", timeout, last)
		}
		select {
		case <-exited:
			return errors.New("redis-server exited")
		case <-tick.C:
		}
	}
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort returns a loopback port nobody listens on; with bus, the Cluster
// bus port (port+10000) is free too.
func freePort(bus bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !bus {
			return port, nil
		}
		if port+10000 > 65535 {
			continue
		}
		lb, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		lb.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair")
}

// newServer starts a single server of the test's own, stopped on Cleanup.
func newServer(t *testing.T, extra ...string) *server {
	t.Helper()
	requireRedis(t)
	port, err := freePort(false)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{port: port, dir: t.TempDir(), args: extra}
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s
}

var shared struct {
	mu         sync.Mutex
	dir        string
	single     *server
	singleErr  error
	cluster    []*server
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
		shared.singleErr = func() error {
			dir, err := sharedDir()
			if err != nil {
				return err
			}
			port, err := freePort(false)
			if err != nil {
				return err
			}
			s := &server{port: port, dir: dir, args: []string{"--appendonly", "no"}}
			if err := s.start(); err != nil {
				return err
			}
			shared.single = s
			return nil
		}()
	}
	if shared.singleErr != nil {
		tb.Fatalf("starting the Redis server: %v", shared.singleErr)
	}
	return shared.single.addr()
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
			shared.cluster, err = startClusterNodes(dir, 3, 0, 2000)
		}
		shared.clusterErr = err
	}
	if shared.clusterErr != nil {
		tb.Fatalf("starting the Redis Cluster: %v", shared.clusterErr)
	}
	addrs := make([]string, len(shared.cluster))
	for i, s := range shared.cluster {
		addrs[i] = s.addr()
	}
	return addrs
}

// startClusterNodes starts a Cluster of masters, each with replicas
// replicas, whose nodes count one another failed after nodeTimeoutMs; it
// returns every node, masters first as redis-cli assigns them.
func startClusterNodes(dir string, masters, replicas, nodeTimeoutMs int) (nodes []*server, err error) {
	defer func() {
		if err != nil {
			for _, s := range nodes {
				s.stop()
			}
			nodes = nil
		}
	}()
	var addrs []string
	for range masters * (1 + replicas) {
		port, err := freePort(true)
		if err != nil {
			return nodes, err
		}
		s := &server{port: port, dir: dir, args: []string{
			"--appendonly", "no",
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(port)+".conf"),
			"--cluster-node-timeout", strconv.Itoa(nodeTimeoutMs),
			"--repl-diskless-sync-delay", "0",
		}}
		if err := s.start(); err != nil {
			return nodes, err
		}
		nodes = append(nodes, s)
		addrs = append(addrs, s.addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		return nodes, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	// Every node must see the whole cluster as ok, and a client must be
	// able to write to every node's slots.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for _, addr := range addrs {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		for {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			select {
			case <-ctx.Done():
				c.Close()
				return nodes, fmt.Errorf("node %s: cluster not ok (%v): %s", addr, err, info)
			case <-tick.C:
			}
		}
		c.Close()
	}
	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
	defer cc.Close()
	for i := 0; i < 30; {
		err := cc.Set(ctx, "probe-"+strconv.Itoa(i), "x", time.Minute).Err()
		if err == nil {
			i++
			continue
		}
		select {
		case <-ctx.Done():
			return nodes, fmt.Errorf("writing to the cluster: %w", err)
		case <-tick.C:
		}
	}
	return nodes, nil
}

func stopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.single != nil {
		shared.single.stop()
	}
	for _, s := range shared.cluster {
		s.stop()
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

// kill ends the server abruptly (SIGKILL), as a crash would.
func (s *server) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
	s.log.Close()
}
