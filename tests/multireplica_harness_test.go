package tests

// The multi-replica harness: a real redis-server, several Caddy replicas of
// the bridge sharing it (store redis), a Caddy load balancer in front of them
// (round robin, no sticky sessions), a recording proxy for in-process Go
// clients, and a driver for tests/node/replica-client.mjs.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

// redisServer is a redis-server on 127.0.0.1 with its data in a temporary
// directory, persisted with an append-only file so that a restart keeps
// everything.
type redisServer struct {
	t    testing.TB
	port int
	dir  string
	proc *proc
	runs int
}

var redisReadyRe = regexp.MustCompile(`Ready to accept connections`)

// startRedis starts redis-server on a free port.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is needed for this test: %v", err)
	}
	r := &redisServer{t: t, port: freePort(t), dir: t.TempDir()}
	r.start()
	return r
}

func (r *redisServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

// start runs redis-server on r.port with r.dir, and waits until it accepts
// commands.
func (r *redisServer) start() {
	t := r.t
	t.Helper()
	r.runs++
	r.proc = startProc(t, fmt.Sprintf("redis-server #%d", r.runs), procOptions{dir: r.dir}, "redis-server",
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--save", "",
		"--daemonize", "no",
		"--logfile", "",
	)
	r.proc.waitOutput(t, redisReadyRe, 20*time.Second)
	waitTCP(t, r.proc, r.addr(), 10*time.Second)
}

// stop ends redis-server with SIGTERM (it writes its append-only file and
// exits) and waits for it.
func (r *redisServer) stop() {
	t := r.t
	t.Helper()
	select {
	case <-r.proc.done:
		return
	default:
	}
	_ = syscall.Kill(r.proc.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-r.proc.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("redis-server did not exit within 15s of SIGTERM")
	}
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
	out, err := exec.CommandContext(ctx, "redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(r.port),
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
// The Caddy binary
// ---------------------------------------------------------------------------

var (
	caddyModulesOnce sync.Once
	caddyModules     string
	caddyModulesErr  error
)

// requireRedisModule fails the test unless the Caddy under test has the
// Redis session store module.
func requireRedisModule(t testing.TB) {
	t.Helper()
	caddyModulesOnce.Do(func() {
		out, err := exec.Command(caddyBin, "list-modules").CombinedOutput()
		caddyModules, caddyModulesErr = string(out), err
	})
	if caddyModulesErr != nil {
		t.Fatalf("caddy list-modules: %v\n%s", caddyModulesErr, caddyModules)
	}
	if !strings.Contains(caddyModules, "http.handlers.mcp_sse_bridge.stores.redis") {
		t.Fatalf("the Caddy under test (%s) lacks the module http.handlers.mcp_sse_bridge.stores.redis", caddyBin)
	}
}

// caddyEnv is the environment of a Caddy process whose files stay in dir.
func caddyEnv(dir string) []string {
	return []string{
		"HOME=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
	}
}

// ---------------------------------------------------------------------------
// Replicas and the load balancer
// ---------------------------------------------------------------------------

// replica is one Caddy process of the bridge. It answers every request with
// the header X-Replica: <name>, and has an admin endpoint of its own.
type replica struct {
	name      string
	port      int
	adminPort int
	dir       string
	proc      *proc
	cluster   *cluster
	// keepalive is the bridge's keepalive in the config last loaded.
	keepalive time.Duration
}

func (r *replica) addr() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }
func (r *replica) base() string { return "http://" + r.addr() }
func (r *replica) caddyfilePath() string {
	return filepath.Join(r.dir, "Caddyfile")
}

// caddyfile is the replica's configuration with the given keepalive.
func (r *replica) caddyfile(keepalive time.Duration) string {
	c := r.cluster
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n", r.adminPort)
	if os.Getenv("E2E_DEBUG") == "1" {
		b.WriteString("\tdebug\n")
	}
	b.WriteString("}\n\n")
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\theader X-Replica %s\n", r.port, r.name)
	fmt.Fprintf(&b, "\tmcp_sse_bridge {\n\t\tupstream %s\n\t\tkeepalive %s\n\t\tsession_ttl 30s\n", c.upstreamURL, keepalive)
	fmt.Fprintf(&b, "\t\tstore redis {\n\t\t\taddress %s\n\t\t\tkey_prefix %s\n\t\t}\n\t}\n}\n", strings.Join(c.storeAddresses(), " "), c.keyPrefix)
	return b.String()
}

// launch starts the replica's Caddy; it serves once its port accepts
// connections.
func (r *replica) launch(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(r.caddyfilePath(), []byte(r.caddyfile(r.keepalive)), 0o600); err != nil {
		t.Fatal(err)
	}
	r.proc = startProc(t, "caddy replica "+r.name, procOptions{dir: r.dir, env: caddyEnv(r.dir)},
		caddyBin, "run", "--config", r.caddyfilePath(), "--adapter", "caddyfile")
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(r.caddyfilePath())
			t.Logf("---- Caddyfile of replica %s ----\n%s", r.name, data)
		}
	})
}

// kill ends the replica abruptly (SIGKILL), as a crash would.
func (r *replica) kill() { r.proc.kill() }

// reload loads the replica's configuration with another keepalive through
// `caddy reload` and its admin endpoint, and checks that it took.
func (r *replica) reload(t testing.TB, keepalive time.Duration) {
	t.Helper()
	if err := os.WriteFile(r.caddyfilePath(), []byte(r.caddyfile(keepalive)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, "reload", "--config", r.caddyfilePath(), "--adapter", "caddyfile",
		"--address", fmt.Sprintf("127.0.0.1:%d", r.adminPort))
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), caddyEnv(r.dir)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("caddy reload of replica %s: %v\n%s", r.name, err, out)
	}
	r.keepalive = keepalive
	// The running config is the new one.
	hc := newHTTPClient(t)
	code, _, body := doRequest(t, hc, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/config/", r.adminPort), "", "")
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
	return []string{c.redis.addr()}
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

// launchCluster starts n replicas of c, with a random key prefix, and the
// load balancer.
func launchCluster(t testing.TB, c *cluster, n int, keepalive time.Duration) *cluster {
	t.Helper()
	c.keyPrefix = "e2e-" + randomHex(6) + ":"
	for i := range n {
		r := &replica{
			name:      fmt.Sprintf("r%d", i+1),
			port:      freePort(t),
			adminPort: freePort(t),
			dir:       t.TempDir(),
			cluster:   c,
			keepalive: keepalive,
		}
		c.replicas = append(c.replicas, r)
	}
	// Start every replica, then wait for each.
	for _, r := range c.replicas {
		r.launch(t)
	}
	for _, r := range c.replicas {
		waitTCP(t, r.proc, r.addr(), 20*time.Second)
	}
	c.lb = startLoadBalancer(t, c.replicas)
	return c
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
// The recording proxy: what the Go clients sent and received
// ---------------------------------------------------------------------------

// recorder is a transparent reverse proxy in the test process between
// in-process clients and the load balancer. It records every POST (body,
// headers, status, serving replica) and every event stream (request headers,
// bytes, serving replica), so that tests can check that each request got
// exactly one answer and see which replica served what. Between Caddy and an
// upstream it shows what the bridge forwarded (TestHostileRequests).
type recorder struct {
	srv   *httptest.Server
	proxy *httputil.ReverseProxy
	tr    *http.Transport

	mu      sync.Mutex
	changed chan struct{}
	posts   []*recPost
	streams []*recStream
}

type recPost struct {
	session string
	header  http.Header // the request's headers as they reached the proxy
	body    []byte
	status  int // 0 until answered; -1 if the proxy failed
	replica string
}

type recStream struct {
	header  http.Header // the request's headers as they reached the proxy
	status  int
	replica string
	buf     bytes.Buffer
}

type recKey struct{}

// newRecorder starts a recording proxy to target (a base URL).
func newRecorder(t testing.TB, target string) *recorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{changed: make(chan struct{})}
	rec.tr = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 200,
		DisableCompression:  true,
	}
	rec.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
		},
		Transport:     rec.tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			switch v := resp.Request.Context().Value(recKey{}).(type) {
			case *recPost:
				rec.note(func() { v.status, v.replica = resp.StatusCode, resp.Header.Get("X-Replica") })
			case *recStream:
				rec.note(func() { v.status, v.replica = resp.StatusCode, resp.Header.Get("X-Replica") })
				resp.Body = &recBody{ReadCloser: resp.Body, rec: rec, s: v}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if p, ok := r.Context().Value(recKey{}).(*recPost); ok {
				rec.note(func() { p.status = -1 })
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	rec.srv = httptest.NewServer(http.HandlerFunc(rec.serve))
	t.Cleanup(func() {
		rec.srv.CloseClientConnections()
		rec.srv.Close()
		rec.tr.CloseIdleConnections()
	})
	return rec
}

func (rec *recorder) serve(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		p := &recPost{session: r.URL.Query().Get("sessionId"), header: r.Header.Clone(), body: body}
		rec.note(func() { rec.posts = append(rec.posts, p) })
		r = r.WithContext(context.WithValue(r.Context(), recKey{}, p))
	case http.MethodGet:
		s := &recStream{header: r.Header.Clone()}
		rec.note(func() { rec.streams = append(rec.streams, s) })
		r = r.WithContext(context.WithValue(r.Context(), recKey{}, s))
	}
	rec.proxy.ServeHTTP(w, r)
}

type recBody struct {
	io.ReadCloser
	rec *recorder
	s   *recStream
}

func (b *recBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.rec.note(func() { b.s.buf.Write(p[:n]) })
	}
	return n, err
}

// note changes the records and wakes up waiters.
func (rec *recorder) note(f func()) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	f()
	close(rec.changed)
	rec.changed = make(chan struct{})
}

// caddy is the recorder as a *caddy for connectGo and runGoScenarios.
func (rec *recorder) caddy() *caddy { return &caddy{base: rec.srv.URL} }

// waitFor waits until cond (called with rec.mu held) holds.
func (rec *recorder) waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		rec.mu.Lock()
		ok, ch := cond(), rec.changed
		rec.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("recorder: timed out after %v waiting for %s", timeout, what)
		}
	}
}

// recEvent is one message event of a recorded stream.
type recEvent struct {
	id, method string // the JSON-RPC id (raw) and method, if any
	response   bool   // a response: id and result or error, no method
	data       []byte
}

// events parses the message events of a recorded stream (rec.mu held), and
// returns the session id of its endpoint event.
func (s *recStream) events() (string, []recEvent) {
	er := bridge.NewEventReader(bytes.NewReader(s.buf.Bytes()), 32<<20)
	var (
		session string
		evs     []recEvent
	)
	for {
		ev, err := er.Next()
		if err != nil {
			return session, evs
		}
		switch ev.Name {
		case "endpoint":
			if u, err := url.Parse(string(ev.Data)); err == nil {
				session = u.Query().Get("sessionId")
			}
		case "message", "":
			var m struct {
				ID     json.RawMessage `json:"id"`
				Method string          `json:"method"`
				Result json.RawMessage `json:"result"`
				Error  json.RawMessage `json:"error"`
			}
			if json.Unmarshal(ev.Data, &m) != nil {
				continue
			}
			evs = append(evs, recEvent{
				id:       string(m.ID),
				method:   m.Method,
				response: m.Method == "" && len(m.ID) > 0 && (m.Result != nil || m.Error != nil),
				data:     slices.Clone(ev.Data),
			})
		}
	}
}

// streamsOf returns the recorded streams of a session, in order (rec.mu
// held).
func (rec *recorder) streamsOf(session string) []*recStream {
	var ss []*recStream
	for _, s := range rec.streams {
		if sid, _ := s.events(); sid == session {
			ss = append(ss, s)
		}
	}
	return ss
}

// sessions lists the sessions seen on the recorded streams, in order.
func (rec *recorder) sessions() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var ids []string
	for _, s := range rec.streams {
		if sid, _ := s.events(); sid != "" && !slices.Contains(ids, sid) {
			ids = append(ids, sid)
		}
	}
	return ids
}

// streamReplica returns the replica serving the (first) stream of session.
func (rec *recorder) streamReplica(t testing.TB, session string) string {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	ss := rec.streamsOf(session)
	if len(ss) == 0 || ss[0].replica == "" {
		t.Fatalf("recorder: no stream with an X-Replica for session %s", session)
	}
	return ss[0].replica
}

// lastPostReplica returns the replica that answered the last POST.
func (rec *recorder) lastPostReplica() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := len(rec.posts) - 1; i >= 0; i-- {
		if rec.posts[i].status != 0 {
			return rec.posts[i].replica
		}
	}
	return ""
}

// postOf waits for the POST whose body contains marker to be answered and
// returns it (a copy).
func (rec *recorder) postOf(t testing.TB, marker string, timeout time.Duration) recPost {
	t.Helper()
	var found recPost
	rec.waitFor(t, "the POST carrying "+marker, timeout, func() bool {
		for _, p := range rec.posts {
			if bytes.Contains(p.body, []byte(marker)) && p.status != 0 {
				found = *p
				return true
			}
		}
		return false
	})
	return found
}

// requestID is the raw JSON-RPC id of a request body, or "" for anything
// else.
func requestID(body []byte) string {
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if json.Unmarshal(body, &m) != nil || m.Method == "" || len(m.ID) == 0 {
		return ""
	}
	return string(m.ID)
}

// answerCount is the answers one request got.
type answerCount struct {
	session, id string
	n           int
}

// checkExactlyOnce checks, for every session seen, that each request the
// bridge accepted (2xx) got exactly one answer on the session's streams, and
// that no stream carried an answer to a request that was not accepted.
// Requests the client cancelled are exempt.
func (rec *recorder) checkExactlyOnce(t testing.TB) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	accepted := map[string]map[string]bool{} // session -> id -> accepted
	cancelled := map[string]map[string]bool{}
	for _, p := range rec.posts {
		if accepted[p.session] == nil {
			accepted[p.session], cancelled[p.session] = map[string]bool{}, map[string]bool{}
		}
		var c struct {
			Method string `json:"method"`
			Params struct {
				RequestID json.RawMessage `json:"requestId"`
			} `json:"params"`
		}
		if json.Unmarshal(p.body, &c) == nil && c.Method == "notifications/cancelled" {
			cancelled[p.session][string(c.Params.RequestID)] = true
		}
		if id := requestID(p.body); id != "" {
			accepted[p.session][id] = accepted[p.session][id] || p.status/100 == 2
		}
	}
	answers := map[string]map[string]int{}
	for _, s := range rec.streams {
		sid, evs := s.events()
		if sid == "" {
			continue
		}
		if answers[sid] == nil {
			answers[sid] = map[string]int{}
		}
		for _, ev := range evs {
			if ev.response {
				answers[sid][ev.id]++
			}
		}
	}
	var bad []string
	total := 0
	for sid, ids := range accepted {
		for id, ok := range ids {
			n := answers[sid][id]
			switch {
			case !ok && n > 0:
				bad = append(bad, fmt.Sprintf("session %s: request %s was refused but got %d answer(s)", short8(sid), id, n))
			case ok && n != 1 && !(n == 0 && cancelled[sid][id]):
				bad = append(bad, fmt.Sprintf("session %s: request %s got %d answers, want exactly 1", short8(sid), id, n))
			case ok:
				total++
			}
		}
	}
	for sid, ids := range answers {
		for id, n := range ids {
			if _, ok := accepted[sid][id]; !ok {
				bad = append(bad, fmt.Sprintf("session %s: %d answer(s) to %s, which the client never sent", short8(sid), n, id))
			}
		}
	}
	slices.Sort(bad)
	if len(bad) > 0 {
		t.Errorf("not every request was answered exactly once:\n  %s", strings.Join(bad, "\n  "))
	} else {
		t.Logf("recorder: %d requests in %d session(s), each answered exactly once", total, len(accepted))
	}
}

// short8 abbreviates a session id.
func short8(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

// ---------------------------------------------------------------------------
// tests/node/replica-client.mjs
// ---------------------------------------------------------------------------

// replicaClient drives replica-client.mjs: a TypeScript SDK legacy client
// that reports which replica served each of its requests.
type replicaClient struct {
	p *proc
}

var (
	rcGetRe     = regexp.MustCompile(`(?m)^get (\S+) (\S+) pv=(\S+) lei=(\S+)$`)
	rcSessionRe = regexp.MustCompile(`(?m)^session (\S+)$`)
	rcPostRe    = regexp.MustCompile(`(?m)^post (\S+) (\S+) (\S+) (\S+) (\S+)$`)
	rcStatsRe   = regexp.MustCompile(`(?m)^stats (.*)$`)
)

// startReplicaClient connects replica-client.mjs to sseURL.
func startReplicaClient(t testing.TB, sseURL string) *replicaClient {
	t.Helper()
	requireNode(t)
	p := startProc(t, "replica-client.mjs", procOptions{dir: nodeDir, stdin: true}, nodeBin,
		"replica-client.mjs", "--url", sseURL, "--timeout", "30000")
	p.waitOutput(t, tsReadyRe, 30*time.Second)
	t.Cleanup(func() { p.stdin.Close() })
	return &replicaClient{p: p}
}

func (rc *replicaClient) send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(rc.p.stdin, line); err != nil {
		t.Fatalf("writing to replica-client.mjs: %v", err)
	}
}

// call starts a tool call tagged tag; with progress, it carries a progress
// token.
func (rc *replicaClient) call(t testing.TB, tag, tool string, args any, progress bool) {
	t.Helper()
	data, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := "call"
	if progress {
		cmd = "callp"
	}
	rc.send(t, fmt.Sprintf("%s %s %s %s", cmd, tag, tool, data))
}

// result waits for the result line of the call tagged tag: its kind and the
// rest of the line.
func (rc *replicaClient) result(t testing.TB, tag string, timeout time.Duration) (kind, rest string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^result ` + regexp.QuoteMeta(tag) + ` (\S+) ?(.*)$`)
	m := rc.p.waitOutput(t, re, timeout)
	if n := len(re.FindAllString(rc.p.out.String(), -1)); n != 1 {
		t.Fatalf("replica-client.mjs: %d result lines for %s", n, tag)
	}
	return m[1], m[2]
}

// callText calls a tool, waits for its result and checks it succeeded.
func (rc *replicaClient) callText(t testing.TB, tag, tool string, args any) string {
	t.Helper()
	rc.call(t, tag, tool, args, false)
	kind, rest := rc.result(t, tag, callTimeout+10*time.Second)
	var text string
	if kind != "ok" || json.Unmarshal([]byte(rest), &text) != nil {
		t.Fatalf("TypeScript client: %s (%s) gave %s %s, want ok", tag, tool, kind, rest)
	}
	return text
}

// echoOK calls the demo upstream's echo and checks the answer.
func (rc *replicaClient) echoOK(t testing.TB, tag string) {
	t.Helper()
	msg := "echo-" + tag
	if got := rc.callText(t, tag, "echo", map[string]any{"message": msg}); got != msg {
		t.Fatalf("TypeScript client: echo %q = %q", msg, got)
	}
}

// waitProgress waits for progress n of the call tagged tag.
func (rc *replicaClient) waitProgress(t testing.TB, tag string, n int, timeout time.Duration) {
	t.Helper()
	rc.p.waitOutput(t, regexp.MustCompile(fmt.Sprintf(`(?m)^progress %s %d$`, regexp.QuoteMeta(tag), n)), timeout)
}

// progressSeen returns the progress values reported for tag.
func (rc *replicaClient) progressSeen(tag string) []int {
	var ps []int
	re := regexp.MustCompile(`(?m)^progress ` + regexp.QuoteMeta(tag) + ` (\d+)$`)
	for _, m := range re.FindAllStringSubmatch(rc.p.out.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		ps = append(ps, n)
	}
	return ps
}

// rcGet is one GET of the client's event stream.
type rcGet struct {
	status, replica, protocolVersion, lastEventID string
}

// gets returns the GETs of the event stream so far.
func (rc *replicaClient) gets() []rcGet {
	var gs []rcGet
	for _, m := range rcGetRe.FindAllStringSubmatch(rc.p.out.String(), -1) {
		gs = append(gs, rcGet{m[1], m[2], m[3], m[4]})
	}
	return gs
}

// waitGets waits until the event stream was opened n times and returns the
// GETs.
func (rc *replicaClient) waitGets(t testing.TB, n int, timeout time.Duration) []rcGet {
	t.Helper()
	rc.p.waitUntil(t, fmt.Sprintf("%d GETs of the event stream", n), timeout, func(out string) bool {
		return len(rcGetRe.FindAllString(out, -1)) >= n
	})
	return rc.gets()
}

// sessions returns the POST endpoint's session ids, in order.
func (rc *replicaClient) sessions() []string {
	var ss []string
	for _, m := range rcSessionRe.FindAllStringSubmatch(rc.p.out.String(), -1) {
		ss = append(ss, m[1])
	}
	return ss
}

// rcPost is one POST of the client.
type rcPost struct {
	status, replica, method, id, tag string
}

func (rc *replicaClient) posts() []rcPost {
	var ps []rcPost
	for _, m := range rcPostRe.FindAllStringSubmatch(rc.p.out.String(), -1) {
		ps = append(ps, rcPost{m[1], m[2], m[3], m[4], m[5]})
	}
	return ps
}

// postOf waits for the POST of the call tagged tag.
func (rc *replicaClient) postOf(t testing.TB, tag string, timeout time.Duration) rcPost {
	t.Helper()
	var found rcPost
	rc.p.waitUntil(t, "the POST of "+tag, timeout, func(string) bool {
		for _, p := range rc.posts() {
			if p.tag == tag {
				found = p
				return true
			}
		}
		return false
	})
	return found
}

// rcStats is the script's bookkeeping of requests and answers.
type rcStats struct {
	Sent       int            `json:"sent"`
	Answered   int            `json:"answered"`
	Missing    []string       `json:"missing"`
	Duplicates map[string]int `json:"duplicates"`
	Unexpected []string       `json:"unexpected"`
	UnknownID  int            `json:"unknownId"`
	Gets       int            `json:"gets"`
}

// stats asks the script for its bookkeeping.
func (rc *replicaClient) stats(t testing.TB) rcStats {
	t.Helper()
	before := len(rcStatsRe.FindAllString(rc.p.out.String(), -1))
	rc.send(t, "stats")
	var line string
	rc.p.waitUntil(t, "a stats line", 10*time.Second, func(out string) bool {
		all := rcStatsRe.FindAllStringSubmatch(out, -1)
		if len(all) > before {
			line = all[before][1]
			return true
		}
		return false
	})
	var st rcStats
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("replica-client.mjs stats %q: %v", line, err)
	}
	return st
}

// checkExactlyOnce checks that every request the client sent got exactly
// one answer, and that no answer came for an unknown request.
func (rc *replicaClient) checkExactlyOnce(t testing.TB) rcStats {
	t.Helper()
	st := rc.stats(t)
	if len(st.Missing) > 0 || len(st.Duplicates) > 0 || len(st.Unexpected) > 0 || st.UnknownID > 0 || st.Answered != st.Sent {
		t.Errorf("TypeScript client: not every request was answered exactly once: %+v", st)
	} else {
		t.Logf("TypeScript client: %d requests, each answered exactly once; %d GET(s) of the event stream", st.Sent, st.Gets)
	}
	return st
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
