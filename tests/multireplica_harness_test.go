package tests

// The multi-replica harness: a real redis-server, several Caddy replicas of
// the bridge sharing it (store redis), and a Caddy load balancer in front of
// them (round robin, no sticky sessions). The processes come from
// internal/testenv; the clients' side is in recorder_test.go (in-process Go
// clients) and replicaclient_test.go (tests/node/replica-client.mjs).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

// redisServer is a redis-server on 127.0.0.1 with its data in a temporary
// directory, persisted with an append-only file so that a restart keeps
// everything.
type redisServer struct {
	*testenv.Redis
}

// startRedis starts redis-server on a free port.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is needed for this test: %v", err)
	}
	return &redisServer{testenv.MustRedis(t, testenv.RedisOptions{Persist: true})}
}

// containsScript reports whether any value of any key matching ARGV[1]
// (strings, hashes, lists, sets, sorted sets, streams) contains ARGV[2]. It
// knows nothing of the store's key layout.
const containsScript = `
local cursor = "0"
local function has(v) return type(v) == "string" and string.find(v, ARGV[2], 1, true) ~= nil end
repeat
  local r = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local t = redis.call("TYPE", k)["ok"]
    local vals = {}
    if t == "string" then vals = {redis.call("GET", k)}
    elseif t == "hash" then vals = redis.call("HVALS", k)
    elseif t == "list" then vals = redis.call("LRANGE", k, 0, -1)
    elseif t == "set" then vals = redis.call("SMEMBERS", k)
    elseif t == "zset" then vals = redis.call("ZRANGE", k, 0, -1)
    elseif t == "stream" then
      for _, e in ipairs(redis.call("XRANGE", k, "-", "+")) do
        for _, v in ipairs(e[2]) do table.insert(vals, v) end
      end
    end
    for _, v in ipairs(vals) do if has(v) then return 1 end end
  end
until cursor == "0"
return 0
`

// contains reports whether a key matching pattern holds marker.
func (r *redisServer) contains(t testing.TB, pattern, marker string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port()),
		"--no-raw", "EVAL", containsScript, "0", pattern, marker).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli EVAL: %v\n%s", err, out)
	}
	switch strings.TrimSpace(string(out)) {
	case "(integer) 1":
		return true
	case "(integer) 0":
		return false
	}
	t.Fatalf("redis-cli EVAL: unexpected output %q", out)
	return false
}

// waitContains waits until a key matching pattern holds marker.
func (r *redisServer) waitContains(t testing.TB, pattern, marker string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !r.contains(t, pattern, marker) {
		if time.Now().After(deadline) {
			t.Fatalf("redis: no key matching %q holds %q after %v", pattern, marker, timeout)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// ---------------------------------------------------------------------------
// Replicas and the load balancer
// ---------------------------------------------------------------------------

// replica is one Caddy process of the bridge. It answers every request with
// the header X-Replica: <name>, and has an admin endpoint of its own. Its
// ports and directory stay the same when it is started again.
type replica struct {
	name      string
	port      int
	adminPort int
	dir       string
	caddy     *testenv.Caddy // the Caddy running (or last run)
	proc      *testenv.Process
	cluster   *cluster
	// keepalive is the bridge's keepalive in the config last loaded.
	keepalive time.Duration
}

func (r *replica) addr() string { return testenv.Addr(r.port) }
func (r *replica) base() string { return "http://" + r.addr() }

// caddyfile is the replica's configuration with the given keepalive, plus
// extra lines in its bridge block.
func (r *replica) caddyfile(keepalive time.Duration, extra ...string) testenv.Caddyfile {
	c := r.cluster
	var b strings.Builder
	fmt.Fprintf(&b, "header X-Replica %s\n", r.name)
	fmt.Fprintf(&b, "\tmcp_sse_bridge {\n\t\tupstream %s\n\t\tkeepalive %s\n\t\tsession_ttl 30s\n", c.upstreamURL, keepalive)
	for _, l := range extra {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	fmt.Fprintf(&b, "\t\tstore redis {\n\t\t\taddress %s\n\t\t\tkey_prefix %s\n\t\t}\n\t}", strings.Join(c.storeAddresses(), " "), c.keyPrefix)
	return testenv.Caddyfile{Admin: true, AdminPort: r.adminPort, Debug: e2eDebug(),
		Sites: []testenv.Site{{Port: r.port, Body: b.String()}}}
}

// config is how to run the replica's Caddy on cf.
func (r *replica) config(cf testenv.Caddyfile) testenv.CaddyConfig {
	return testenv.CaddyConfig{Bin: caddyBin, Dir: r.dir, Name: "caddy replica " + r.name, Caddyfile: cf}
}

// started records the replica's Caddy.
func (r *replica) started(c *testenv.Caddy) { r.caddy, r.proc = c, c.Proc() }

// kill ends the replica abruptly (SIGKILL), as a crash would.
func (r *replica) kill() { r.proc.Kill() }

// reload loads the replica's configuration with another keepalive through
// `caddy reload` and its admin endpoint, and checks that it took.
func (r *replica) reload(t testing.TB, keepalive time.Duration) {
	t.Helper()
	r.caddy.MustReload(t, r.caddyfile(keepalive))
	r.keepalive = keepalive
	// The running config is the new one.
	hc := testenv.MustHTTPClient(t)
	code, _, body := doRequest(t, hc, http.MethodGet, r.caddy.AdminURL()+"/config/", "", "")
	want := fmt.Sprintf(`"keepalive":%d`, keepalive.Nanoseconds())
	if code != http.StatusOK || !strings.Contains(body, want) {
		t.Fatalf("replica %s after reload: GET /config/ gave %d, want a config with %s:\n%s", r.name, code, want, short(body))
	}
}

// cluster is a Redis, n replicas sharing it, and a load balancer in front of
// them.
type cluster struct {
	redis *redisServer
	// storeAddrs, when set, are the store's addresses instead of redis's
	// (a Redis Cluster).
	storeAddrs  []string
	upstreamURL string
	keyPrefix   string
	replicas    []*replica
	lb          *caddy // the clients' entry point
}

// storeAddresses are the addresses the replicas' store connects to.
func (c *cluster) storeAddresses() []string {
	if len(c.storeAddrs) > 0 {
		return c.storeAddrs
	}
	return []string{c.redis.Addr()}
}

// startCluster starts n replicas of the bridge for upstreamURL on redis (a
// new Redis if nil), each with its own random key prefix per cluster, and
// the load balancer.
func startCluster(t testing.TB, n int, upstreamURL string, redis *redisServer) *cluster {
	t.Helper()
	return startClusterKeepalive(t, n, upstreamURL, redis, time.Second)
}

// startClusterKeepalive is startCluster with the replicas' keepalive.
func startClusterKeepalive(t testing.TB, n int, upstreamURL string, redis *redisServer, keepalive time.Duration) *cluster {
	t.Helper()
	requireRedisModule(t)
	if redis == nil {
		redis = startRedis(t)
	}
	return launchCluster(t, &cluster{redis: redis, upstreamURL: upstreamURL}, n, keepalive)
}

// newReplicas gives c n replicas (not started), with a random key prefix.
func newReplicas(t testing.TB, c *cluster, n int, keepalive time.Duration) {
	t.Helper()
	c.keyPrefix = "e2e-" + randomHex(6) + ":"
	for i := range n {
		c.replicas = append(c.replicas, &replica{
			name:      fmt.Sprintf("r%d", i+1),
			port:      testenv.MustFreePort(t),
			adminPort: testenv.MustFreePort(t),
			dir:       t.TempDir(),
			cluster:   c,
			keepalive: keepalive,
		})
	}
}

// launchCluster starts n replicas of c, all at once, and the load balancer.
func launchCluster(t testing.TB, c *cluster, n int, keepalive time.Duration) *cluster {
	t.Helper()
	newReplicas(t, c, n, keepalive)
	var cfgs []testenv.CaddyConfig
	for _, r := range c.replicas {
		cfgs = append(cfgs, r.config(r.caddyfile(r.keepalive)))
	}
	for i, cd := range testenv.MustCaddies(t, cfgs...) {
		c.replicas[i].started(cd)
	}
	c.lb = startLoadBalancer(t, c.replicas)
	return c
}

// multiReplica is how most multi-replica tests start: the stateful demo
// upstream, two replicas on a new Redis behind the load balancer, the
// recorder in front of it, a Go SDK client through the recorder and a
// TypeScript client (replica-client.mjs) straight at the load balancer.
// When the test ends, every request of the Go client must have been
// answered exactly once.
type multiReplica struct {
	up  *upstream
	cl  *cluster
	rec *recorder
	gc  *goClient
	rc  *replicaClient
}

// startMultiReplica starts a multiReplica: the Go client connects first,
// then the TypeScript client.
func startMultiReplica(t *testing.T) *multiReplica {
	t.Helper()
	requireRedisModule(t)
	requireNode(t)
	m := &multiReplica{up: startUpstream(t, specGoStatefulSSE)}
	m.cl = startCluster(t, 2, m.up.url, nil)
	m.rec = newRecorder(t, m.cl.lb.base)
	t.Cleanup(func() { m.rec.checkExactlyOnce(t) })
	m.gc = connectGo(t, m.rec.caddy(), "go", goClientOptions{})
	m.rc = startReplicaClient(t, m.cl.lb.sseURL())
	return m
}

// startLoadBalancer starts a Caddy reverse proxy spreading requests over the
// replicas round robin. A replica that refuses connections (killed) is
// skipped: the request is tried on the next one. There are no health checks,
// passive or active, so the rotation stays strict (tests steer requests to
// a replica by counting on it).
//
// The proxy also retries a POST whose connection to a replica failed after
// it was established. Caddy reloads its configuration by binding a new
// SO_REUSEPORT socket and closing the old one, and Linux drops the
// connections still waiting in the old socket's accept queue; an idle
// keep-alive connection can likewise be closed by the replica just as the
// proxy sends a request on it. In both cases the replica never read the
// request, so sending it again is safe (the proxy buffers request bodies so
// that a retry sends the whole body again); without the retry the client
// gets a 502, and the Go SDK's legacy client closes its whole session on a
// failed POST. That race belongs to Caddy and the proxy in front, not to the
// bridge. (The retry would also resend a POST that a replica received and
// died on; no test kills a replica while a POST is in flight.)
func startLoadBalancer(t testing.TB, replicas []*replica) *caddy {
	t.Helper()
	var addrs []string
	for _, r := range replicas {
		addrs = append(addrs, r.addr())
	}
	body := fmt.Sprintf("reverse_proxy %s {\n\t\tlb_policy round_robin\n\t\tlb_try_duration 5s\n\t\tlb_try_interval 50ms\n\t\tlb_retry_match {\n\t\t\tmethod POST\n\t\t}\n\t\trequest_buffers 8MiB\n\t\tflush_interval -1\n\t}",
		strings.Join(addrs, " "))
	return startCaddySites(t, site{body: body})[0]
}

// replica returns the replica called name.
func (c *cluster) replica(t testing.TB, name string) *replica {
	t.Helper()
	for _, r := range c.replicas {
		if r.name == name {
			return r
		}
	}
	t.Fatalf("no replica called %q", name)
	return nil
}

// others returns the replicas other than name.
func (c *cluster) others(name string) []*replica {
	var rs []*replica
	for _, r := range c.replicas {
		if r.name != name {
			rs = append(rs, r)
		}
	}
	return rs
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---------------------------------------------------------------------------
// Steering round robin
// ---------------------------------------------------------------------------

// steer makes the next request land on the replica after prev in the load
// balancer's rotation: it sends cheap requests (ping) until the last one was
// answered by prev. With round robin and no other traffic meanwhile, the
// next request then goes to the replica after prev.
func steer(t testing.TB, prev string, lastPost func() string, ping func(i int)) {
	t.Helper()
	// At least one ping: other clients may have sent the last request.
	for i := range 8 {
		ping(i)
		if lastPost() == prev {
			return
		}
	}
	t.Fatalf("steering round robin: the last POST still went to %q, not %q", lastPost(), prev)
}
