package tests

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// waitRedis polls the Redis at addr until cond holds (at most 30 s).
func waitRedis(t testing.TB, addr, what string, cond func(c *goredis.Client) bool) {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: addr, DialTimeout: 500 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(c) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s", addr, what)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's state
	}
}

// TestRedisClusterFailover: two Caddy replicas on a real 3-master,
// 3-replica Redis Cluster; the master that owns a live session's slot is
// killed (SIGKILL). Once the Cluster has promoted its replica, the client's
// next call succeeds within a few seconds.
func TestRedisClusterFailover(t *testing.T) {
	requireNode(t)
	requireRedisModule(t)
	nodes := testenv.MustCluster(t, testenv.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second})
	addrs := nodes.Addrs()
	up := startUpstream(t, specGoStatefulSSE)
	cl := launchCluster(t, &cluster{upstreamURL: up.url, storeAddrs: addrs}, 2, time.Second)
	rc := startReplicaClient(t, cl.lb.sseURL())
	rc.echoOK(t, "before")

	// The master of the session's slot, and its replica.
	session := rc.sessions()[0]
	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
	defer cc.Close()
	ctx := context.Background()
	master, err := cc.MasterForKey(ctx, cl.keyPrefix+"{"+session+"}")
	if err != nil {
		t.Fatal(err)
	}
	masterAddr := master.Options().Addr
	_, masterPort, _ := strings.Cut(masterAddr, ":")
	var replicaAddr string
	deadline := time.Now().Add(30 * time.Second)
	for replicaAddr == "" {
		for _, addr := range addrs {
			c := goredis.NewClient(&goredis.Options{Addr: addr})
			info, err := c.Info(ctx, "replication").Result()
			c.Close()
			if err == nil && strings.Contains(info, "master_port:"+masterPort+"\r\n") && strings.Contains(info, "master_link_status:up") {
				replicaAddr = addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica in sync with %s within 30s", masterAddr)
		}
		time.Sleep(50 * time.Millisecond) // polling other processes' state
	}

	// Replication is asynchronous: let the replica catch up with what the
	// master held after the first call (Redis loses the writes of the last
	// moment in a failover; the bridge then revives the session, which
	// another test covers).
	masterInfo, err := master.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	target := replOffset(masterInfo, "master_repl_offset:")
	waitRedis(t, replicaAddr, "the replica to catch up", func(c *goredis.Client) bool {
		info, err := c.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up") &&
			strings.Contains(info, "master_sync_in_progress:0") && replOffset(info, "slave_repl_offset:") >= target
	})

	nodes.Node(masterAddr).Kill()
	killed := time.Now()
	waitRedis(t, replicaAddr, "the promotion", func(c *goredis.Client) bool {
		info, err := c.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "role:master")
	})
	promoted := time.Now()
	rc.echoOK(t, "after")
	answered := time.Now()
	t.Logf("master %s killed; replica %s promoted %v later; the next call answered %v after the promotion",
		masterAddr, replicaAddr, promoted.Sub(killed).Round(10*time.Millisecond), answered.Sub(promoted).Round(10*time.Millisecond))
	if lag := answered.Sub(promoted); lag > 5*time.Second {
		t.Errorf("the next call was answered %v after the promotion, want within a few seconds", lag)
	}
	rc.checkExactlyOnce(t)
}

// replOffset reads a replication offset field of INFO replication.
func replOffset(info, field string) int64 {
	_, rest, ok := strings.Cut(info, field)
	if !ok {
		return -1
	}
	line, _, _ := strings.Cut(rest, "\r\n")
	n, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	return n
}
