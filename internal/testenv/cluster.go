package testenv

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// ClusterOptions describes a Redis Cluster on 127.0.0.1.
type ClusterOptions struct {
	Bin string // "redis-server" if empty
	CLI string // "redis-cli" if empty: it creates the Cluster
	// Dir holds every node's data and nodes.conf. Required by
	// StartCluster; MustCluster uses a temporary directory if empty.
	Dir      string
	Masters  int // 3 if 0
	Replicas int // replicas per master
	// NodeTimeout is how long the nodes wait before counting one another
	// failed (cluster-node-timeout), so how soon a replica takes over from
	// a dead master; 2s if 0.
	NodeTimeout time.Duration
	OnStart     func(*Process)
}

// Cluster is a Redis Cluster whose every slot is served.
type Cluster struct {
	nodes []*Redis
}

// clusterOKRe is the line a node prints once it sees every slot served.
var clusterOKRe = regexp.MustCompile(`Cluster state changed: ok`)

// StartCluster starts the nodes, joins them with redis-cli --cluster
// create (the first Masters nodes become the masters), and waits until
// every node says the Cluster is ok and a client can write to every node's
// slots. On error it has ended whatever it started. Without a deadline,
// ctx is given twice DefaultReadyTimeout.
func StartCluster(ctx context.Context, opts ClusterOptions) (c *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("testenv: ClusterOptions.Dir is required")
	}
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.NodeTimeout == 0 {
		opts.NodeTimeout = 2 * time.Second
	}
	if opts.CLI == "" {
		opts.CLI = "redis-cli"
	}
	if _, ok := ctx.Deadline(); !ok {
		// Six nodes and the Cluster's convergence take longer than one
		// process.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*DefaultReadyTimeout)
		defer cancel()
	}
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Kill()
			c = nil
		}
	}()
	for i := range opts.Masters * (1 + opts.Replicas) {
		port, err := FreeClusterPort()
		if err != nil {
			return c, err
		}
		n, err := StartRedis(ctx, RedisOptions{
			Bin: opts.Bin, Dir: opts.Dir, Port: port, Name: fmt.Sprintf("redis cluster node %d", i), OnStart: opts.OnStart,
			Args: []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(opts.Dir, "nodes-"+strconv.Itoa(port)+".conf"),
				"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
				"--repl-diskless-sync-delay", "0",
			},
		})
		if err != nil {
			return c, err
		}
		c.nodes = append(c.nodes, n)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(opts.Replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, opts.CLI, args...).CombinedOutput(); err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	for _, n := range c.nodes {
		if _, err := n.Proc().WaitOutput(ctx, clusterOKRe); err != nil {
			return c, err
		}
	}
	return c, c.probe(ctx)
}

// probeKeys is how many keys probe writes: enough to land on every master.
const probeKeys = 30

// probe writes keys through a Cluster client, retrying while it still
// learns the slot map: once it succeeds, the Cluster serves every slot.
func (c *Cluster) probe(ctx context.Context) error {
	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: c.Addrs()})
	defer cc.Close()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < probeKeys; {
		err := cc.Set(ctx, "testenv-probe-"+strconv.Itoa(i), "x", time.Minute).Err()
		if err == nil {
			i++
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("writing to the Cluster: %w", err)
		case <-tick.C:
		}
	}
	return nil
}

// Nodes are the nodes, masters first as redis-cli assigned them.
func (c *Cluster) Nodes() []*Redis { return c.nodes }

// Addrs are the nodes' addresses, in the order of Nodes.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Node returns the node at addr, or nil.
func (c *Cluster) Node(addr string) *Redis {
	for _, n := range c.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// Kill kills every node.
func (c *Cluster) Kill() {
	for _, n := range c.nodes {
		n.Kill()
	}
}

// Stop stops every node (see Redis.Stop).
func (c *Cluster) Stop(grace time.Duration) error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.Stop(grace))
	}
	return errors.Join(errs...)
}

// MustCluster is StartCluster for a test: its nodes are killed when the
// test ends.
func MustCluster(tb testing.TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	opts.OnStart = then(opts.OnStart, watcher(tb))
	c, err := StartCluster(context.Background(), opts)
	if err != nil {
		tb.Fatalf("starting a Redis Cluster: %v", err)
	}
	return c
}
