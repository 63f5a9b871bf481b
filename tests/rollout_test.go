package tests

// Rolling restarts and crashes under load: many official TypeScript SDK
// legacy clients call tools without pause while every replica of a
// three-replica cluster is restarted in turn with SIGTERM, as an
// orchestrator rolls out a new version (TestRollingRestart), or while one
// replica is killed with SIGKILL and relaunched (TestReplicaKilledUpstreamResumes).
// Nothing may be lost, failed, duplicated or re-initialised.
//
// The pieces of this file: an upstream tap (a recording reverse proxy in
// front of the upstream: which replica forwarded which call, when it was
// answered, every initialize and upstream session per caller), replicas
// launched with a configuration of this file (each names itself upstream
// with header_up), a load balancer that retries what a stopping replica
// refuses, and a driver for tests/node/many-clients.mjs (N SDK clients in
// one node process).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// The upstream tap
// ---------------------------------------------------------------------------

// rolloutTap is a transparent reverse proxy in the test process between the
// replicas and the upstream. Replicas launched by launchRolloutReplica name
// themselves in the X-Bridge-Replica request header, so the tap knows which
// replica forwarded each tools/call and when its upstream response ended.
type rolloutTap struct {
	srv   *httptest.Server
	tr    *http.Transport
	proxy *httputil.ReverseProxy

	mu         sync.Mutex
	inits      map[string]int             // Authorization -> initialize requests
	upSessions map[string]map[string]bool // Authorization -> Mcp-Session-Id of its tools/call requests
	calls      []*rolloutCall
	resumes    []*rolloutResume
}

// rolloutResume is one GET with Last-Event-ID: a response stream (or the
// session's GET stream) resumed.
type rolloutResume struct {
	replica string
	at      time.Time
	status  int
}

// rolloutCall is one tools/call POST the upstream received.
type rolloutCall struct {
	replica, auth, tool, tag string
	start, end               time.Time
	status                   int
	complete                 bool // its response body was read to its end
}

type rolloutTapKey struct{}

func startRolloutTap(t testing.TB, upstreamURL string) *rolloutTap {
	t.Helper()
	u, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	target := &url.URL{Scheme: u.Scheme, Host: u.Host} // the path is the request's
	tap := &rolloutTap{inits: map[string]int{}, upSessions: map[string]map[string]bool{}}
	tap.tr = testenv.NewTransport(200)
	tap.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
		},
		Transport:     tap.tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			switch v := resp.Request.Context().Value(rolloutTapKey{}).(type) {
			case *rolloutCall:
				tap.mu.Lock()
				v.status = resp.StatusCode
				tap.mu.Unlock()
				resp.Body = &rolloutTapBody{ReadCloser: resp.Body, tap: tap, c: v}
			case *rolloutResume:
				tap.mu.Lock()
				v.status = resp.StatusCode
				tap.mu.Unlock()
			}
			return nil
		},
	}
	tap.srv = httptest.NewServer(http.HandlerFunc(tap.serve))
	t.Cleanup(func() {
		tap.srv.Close()
		tap.tr.CloseIdleConnections()
	})
	return tap
}

// url is the upstream URL the replicas are given (the demo upstream's path).
func (tap *rolloutTap) url() string { return tap.srv.URL + "/mcp" }

func (tap *rolloutTap) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.Header.Get("Last-Event-ID") != "" {
		res := &rolloutResume{replica: r.Header.Get("X-Bridge-Replica"), at: time.Now()}
		tap.mu.Lock()
		tap.resumes = append(tap.resumes, res)
		tap.mu.Unlock()
		r = r.WithContext(context.WithValue(r.Context(), rolloutTapKey{}, res))
	}
	if r.Method == http.MethodPost {
		body, err := bufferBody(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var m struct {
			Method string `json:"method"`
			Params struct {
				Name string `json:"name"`
				Meta struct {
					Tag string `json:"e2eTag"`
				} `json:"_meta"`
			} `json:"params"`
		}
		_ = json.Unmarshal(body, &m)
		auth := r.Header.Get("Authorization")
		tap.mu.Lock()
		switch m.Method {
		case "initialize":
			tap.inits[auth]++
		case "tools/call":
			c := &rolloutCall{replica: r.Header.Get("X-Bridge-Replica"), auth: auth, tool: m.Params.Name, tag: m.Params.Meta.Tag, start: time.Now()}
			tap.calls = append(tap.calls, c)
			if tap.upSessions[auth] == nil {
				tap.upSessions[auth] = map[string]bool{}
			}
			tap.upSessions[auth][r.Header.Get("Mcp-Session-Id")] = true
			r = r.WithContext(context.WithValue(r.Context(), rolloutTapKey{}, c))
			// Deferred so that it runs also when the proxy aborts the
			// handler (http.ErrAbortHandler) on a cut response.
			defer func() {
				tap.mu.Lock()
				if c.end.IsZero() {
					c.end = time.Now()
				}
				tap.mu.Unlock()
			}()
		}
		tap.mu.Unlock()
	}
	tap.proxy.ServeHTTP(w, r)
}

type rolloutTapBody struct {
	io.ReadCloser
	tap *rolloutTap
	c   *rolloutCall
}

func (b *rolloutTapBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.tap.mu.Lock()
		b.c.complete = true
		if b.c.end.IsZero() {
			b.c.end = time.Now()
		}
		b.tap.mu.Unlock()
	}
	return n, err
}

// ---------------------------------------------------------------------------
// Replicas and the load balancer of this file
// ---------------------------------------------------------------------------

// rolloutDrainTimeout is the replicas' drain_timeout (the default, spelled
// out): far longer than the slowest call, so that every call a stopping
// replica forwarded is answered by it.
const rolloutDrainTimeout = 10 * time.Second

// rolloutCaddyfile is the configuration of replica r: the harness's
// (keepalive 1s, session_ttl 30s, store redis, X-Replica response header)
// plus drain_timeout, and header_up naming the replica to the upstream tap.
func rolloutCaddyfile(r *replica) testenv.Caddyfile {
	return r.caddyfile(r.keepalive, fmt.Sprintf("drain_timeout %s", rolloutDrainTimeout), "header_up X-Bridge-Replica "+r.name)
}

// launchRolloutReplica starts replica r's Caddy with rolloutCaddyfile and
// waits until it accepts connections.
func launchRolloutReplica(t testing.TB, r *replica) {
	t.Helper()
	r.started(testenv.MustCaddy(t, r.config(rolloutCaddyfile(r))))
}

// sigtermReplica sends SIGTERM to replica r, as an orchestrator does, and waits
// for its Caddy to exit. It returns how long the exit took.
func sigtermReplica(t testing.TB, r *replica, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := r.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to replica %s: %v", r.name, err)
	}
	select {
	case <-r.proc.Done():
	case <-time.After(timeout):
		t.Fatalf("replica %s did not exit within %v of SIGTERM", r.name, timeout)
	}
	if err := r.proc.Err(); err != nil {
		t.Errorf("replica %s exited with %v after SIGTERM, want a clean exit", r.name, err)
	}
	return time.Since(start)
}

// startRolloutCluster is startCluster (n replicas on a new redis-server, a
// load balancer in front) with the replicas of this file and a load
// balancer that retries what a stopping replica refuses. It also returns
// the load balancer's access log.
func startRolloutCluster(t testing.TB, n int, upstreamURL string) (*cluster, string) {
	t.Helper()
	requireRedisModule(t)
	c := &cluster{redis: startRedis(t), upstreamURL: upstreamURL}
	newReplicas(t, c, n, time.Second)
	for _, r := range c.replicas {
		launchRolloutReplica(t, r)
	}
	var accessLog string
	c.lb, accessLog = startRetryingLoadBalancer(t, c.replicas)
	return c, accessLog
}

// startRetryingLoadBalancer is startLoadBalancer (round robin, no health
// checks, request bodies buffered so that a retry resends them) plus a retry
// of every request a replica answered 503, on the next replica.
//
// Why: a replica that is stopping answers new requests 503 with Retry-After
// ("server shutting down") before it accepts anything. Neither legacy client
// of the official TypeScript SDK retries them: its EventSource treats a
// non-200 answer to the reconnecting GET as fatal and never reconnects
// again, and a POST answered 503 fails the call it carries. So a rollout
// needs a load balancer that sends such requests to another replica, as
// production load balancers are configured to (Caddy: lb_retry_match with
// an expression on the response status; the request was never accepted, so
// sending it again is safe). The harness's load balancer retries only
// requests whose connection failed (a 503 reaches the client). This one
// also retries GETs whose connection failed, for the same reason as POSTs
// (a keep-alive connection closed by the stopping replica just as the proxy
// sends a request on it), since a failed GET kills the SDK's event stream
// for good.
//
// Its access log (a file, read by lbRetried) records how many times each
// request was retried.
//
// Retrying a POST whose connection failed after it was sent (method POST)
// also resends a POST that a dying replica had received: see
// TestReplicaKilledUpstreamResumes.
func startRetryingLoadBalancer(t testing.TB, replicas []*replica) (*caddy, string) {
	t.Helper()
	var addrs []string
	for _, r := range replicas {
		addrs = append(addrs, r.addr())
	}
	accessLog := filepath.Join(t.TempDir(), "lb-access.log")
	body := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t}\n"+
		"\tlog_append retries {http.reverse_proxy.retries}\n"+
		"\treverse_proxy %s {\n"+
		"\t\tlb_policy round_robin\n"+
		"\t\tlb_try_duration 5s\n"+
		"\t\tlb_try_interval 50ms\n"+
		"\t\tlb_retry_match {\n\t\t\tmethod GET POST\n\t\t}\n"+
		"\t\tlb_retry_match {\n\t\t\texpression `{rp.status_code} == 503`\n\t\t}\n"+
		"\t\trequest_buffers 8MiB\n"+
		"\t\tflush_interval -1\n"+
		"\t}", accessLog, strings.Join(addrs, " "))
	return startCaddySites(t, site{body: body})[0], accessLog
}

// lbRequest is one request of the load balancer's access log.
type lbRequest struct {
	method, path string
	session      string // the sessionId query parameter
	status       int
	retries      int
	start, end   time.Time
}

// lbRetried reads the load balancer's access log and returns the requests
// it retried on another replica (or on the same one, after an interval).
func lbRetried(t testing.TB, accessLog string) []lbRequest {
	t.Helper()
	data, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatalf("reading the load balancer's access log: %v", err)
	}
	var reqs []lbRequest
	for _, line := range strings.Split(string(data), "\n") {
		var e struct {
			TS       float64 `json:"ts"`
			Duration float64 `json:"duration"`
			Status   int     `json:"status"`
			Retries  int     `json:"retries"`
			Request  struct {
				Method string `json:"method"`
				URI    string `json:"uri"`
			} `json:"request"`
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Retries == 0 {
			continue
		}
		end := time.UnixMicro(int64(e.TS * 1e6))
		path, query, _ := strings.Cut(e.Request.URI, "?")
		q, _ := url.ParseQuery(query)
		reqs = append(reqs, lbRequest{
			method: e.Request.Method, path: path, session: q.Get("sessionId"), status: e.Status, retries: e.Retries,
			start: end.Add(-time.Duration(e.Duration * float64(time.Second))), end: end,
		})
	}
	return reqs
}

// ---------------------------------------------------------------------------
// tests/node/many-clients.mjs
// ---------------------------------------------------------------------------

// manyClients drives many-clients.mjs: n TypeScript SDK legacy clients in
// one node process, each with its own bearer token, calling a short and a
// long tool without pause.
type manyClients struct {
	p      *testenv.Process
	n      int
	prefix string // of the tokens: Bearer <prefix>-<i>
}

var (
	mcReadyRe   = regexp.MustCompile(`(?m)^ready (\d+)$`)
	mcSummaryRe = regexp.MustCompile(`(?m)^summary (.*)$`)
	mcClientRe  = regexp.MustCompile(`(?m)^client (.*)$`)
	mcFailureRe = regexp.MustCompile(`(?m)^failure (.*)$`)
)

// startManyClients connects n clients to sseURL; upstream (go or
// everything) picks the tools, longMs the long call's duration. It returns
// once every client is connected and calling.
func startManyClients(t testing.TB, sseURL, upstream string, n, longMs int, extra ...string) *manyClients {
	t.Helper()
	requireNode(t)
	mc := &manyClients{n: n, prefix: "rollout-" + randomHex(4)}
	args := append([]string{"many-clients.mjs",
		"--url", sseURL, "--upstream", upstream, "--clients", strconv.Itoa(n), "--token-prefix", mc.prefix,
		"--timeout", "30000", "--long-ms", strconv.Itoa(longMs), "--long-ratio", "0.3", "--think-ms", "100"}, extra...)
	mc.p = startNodeScript(t, "many-clients.mjs", true, args...)
	t.Cleanup(func() { mc.p.Stdin().Close() })
	mc.p.MustWaitOutput(t, mcReadyRe, 60*time.Second)
	return mc
}

// auth is the Authorization header of client i.
func (mc *manyClients) auth(i int) string { return fmt.Sprintf("Bearer %s-%d", mc.prefix, i) }

func (mc *manyClients) send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(mc.p.Stdin(), line); err != nil {
		t.Fatalf("writing to many-clients.mjs: %v", err)
	}
}

// mcMark is the calls in flight at a mark.
type mcMark struct {
	Inflight int   `json:"inflight"`
	Long     int   `json:"long"`
	T        int64 `json:"t"`
}

// mark returns the calls in flight now.
func (mc *manyClients) mark(t testing.TB, label string) mcMark {
	t.Helper()
	mc.send(t, "mark "+label)
	m := mc.p.MustWaitOutput(t, regexp.MustCompile(`(?m)^mark `+regexp.QuoteMeta(label)+` (.*)$`), 10*time.Second)
	var mk mcMark
	if err := json.Unmarshal([]byte(m[1]), &mk); err != nil {
		t.Fatalf("many-clients.mjs mark %q: %v", m[1], err)
	}
	return mk
}

// barrier waits until every client finished a call it started after now.
func (mc *manyClients) barrier(t testing.TB, label string, timeout time.Duration) {
	t.Helper()
	mc.send(t, "barrier "+label)
	mc.p.MustWaitOutput(t, regexp.MustCompile(`(?m)^barrier `+regexp.QuoteMeta(label)+` done$`), timeout)
}

// mcLatency is one call's latency.
type mcLatency struct {
	Kind    string `json:"kind"`
	Tool    string `json:"tool"`
	Ms      int64  `json:"ms"`
	Tag     string `json:"tag"`
	StartMs int64  `json:"startMs"`
}

// mcSummary is many-clients.mjs's report.
type mcSummary struct {
	Clients            int            `json:"clients"`
	Calls              int            `json:"calls"`
	OK                 int            `json:"ok"`
	Failures           int            `json:"failures"`
	Sent               int            `json:"sent"`
	Missing            int            `json:"missing"`
	Duplicates         int            `json:"duplicates"`
	Unexpected         int            `json:"unexpected"`
	UnknownID          int            `json:"unknownId"`
	Onerror            int            `json:"onerror"`
	Gets               int            `json:"gets"`
	ClientsReconnected int            `json:"clientsReconnected"`
	EndpointSessions   int            `json:"endpointSessions"`
	GetStatus          map[string]int `json:"getStatus"`
	PostStatus         map[string]int `json:"postStatus"`
	ByKind             map[string]struct {
		Calls int   `json:"calls"`
		MaxMs int64 `json:"maxMs"`
		P50Ms int64 `json:"p50Ms"`
		P99Ms int64 `json:"p99Ms"`
	} `json:"byKind"`
	Longest *mcLatency `json:"longest"`
}

// mcClient is one client's books.
type mcClient struct {
	Client   int      `json:"client"`
	Calls    int      `json:"calls"`
	OK       int      `json:"ok"`
	Sent     int      `json:"sent"`
	Sessions []string `json:"sessions"`
	Gets     []struct {
		T       int64  `json:"t"`
		Status  any    `json:"status"`
		Replica string `json:"replica"`
		PV      string `json:"pv"`
	} `json:"gets"`
	Posts         map[string]int    `json:"posts"`
	Missing       []string          `json:"missing"`
	Duplicates    map[string]int    `json:"duplicates"`
	DuplicateTags map[string]string `json:"duplicateTags"`
	Unexpected    []string          `json:"unexpected"`
	UnknownID     int               `json:"unknownId"`
	Onerror       int               `json:"onerror"`
}

// stop makes the clients finish their calls in flight and start no more,
// and returns the report and the failure lines.
func (mc *manyClients) stop(t testing.TB, timeout time.Duration) (mcSummary, []mcClient, []string) {
	t.Helper()
	mc.send(t, "stop")
	m := mc.p.MustWaitOutput(t, mcSummaryRe, timeout)
	var sum mcSummary
	if err := json.Unmarshal([]byte(m[1]), &sum); err != nil {
		t.Fatalf("many-clients.mjs summary %q: %v", short(m[1]), err)
	}
	out := mc.p.Output()
	var clients []mcClient
	for _, cm := range mcClientRe.FindAllStringSubmatch(out, -1) {
		var c mcClient
		if err := json.Unmarshal([]byte(cm[1]), &c); err != nil {
			t.Fatalf("many-clients.mjs client %q: %v", short(cm[1]), err)
		}
		clients = append(clients, c)
	}
	var failures []string
	for _, fm := range mcFailureRe.FindAllStringSubmatch(out, -1) {
		failures = append(failures, fm[1])
	}
	if err := mc.p.MustWaitExit(t, 15*time.Second); err != nil {
		t.Errorf("many-clients.mjs exited with %v", err)
	}
	return sum, clients, failures
}

// ---------------------------------------------------------------------------
// A run: upstream, tap, cluster, clients; the checks every run makes
// ---------------------------------------------------------------------------

// rollout is one run: an upstream behind the tap, three replicas on one
// Redis behind the retrying load balancer, and many clients calling.
type rollout struct {
	start time.Time
	// procs is every Caddy process of the replicas, relaunched ones
	// included, for their logs.
	procs []*testenv.Process
	up    *upstream
	tap   *rolloutTap
	cl    *cluster
	lbLog string
	mc    *manyClients
	// killed names the replica killed with SIGKILL, and when: a call it had
	// just forwarded, whose answer it never read and of which no event id
	// reached the store, may be forwarded again by the replica that takes
	// over the load balancer's retry of its POST (the bridge cannot know
	// whether the upstream got it; it prefers the real result to an error).
	killed   string
	killedAt time.Time
}

// startRollout starts everything and waits until every client has finished
// a call (steady state).
func startRollout(t *testing.T, spec upstreamSpec, clients, longMs int, extra ...string) *rollout {
	t.Helper()
	requireRedisModule(t)
	requireNode(t)
	ro := &rollout{start: time.Now()}
	ro.up = startUpstream(t, spec)
	ro.tap = startRolloutTap(t, ro.up.url)
	ro.cl, ro.lbLog = startRolloutCluster(t, 3, ro.tap.url())
	for _, r := range ro.cl.replicas {
		ro.procs = append(ro.procs, r.proc)
	}
	ro.mc = startManyClients(t, ro.cl.lb.sseURL(), string(spec.kind), clients, longMs, extra...)
	t.Logf("%d clients connected %v after the start", clients, ro.since(time.Now()))
	ro.mc.barrier(t, "warm", 30*time.Second)
	return ro
}

// relaunch starts replica r again on its port and waits until it listens.
func (ro *rollout) relaunch(t testing.TB, r *replica) {
	t.Helper()
	launchRolloutReplica(t, r)
	ro.procs = append(ro.procs, r.proc)
}

// replicaLines returns the lines of every replica process's log that
// mention one of the strings, prefixed with the process's name.
func (ro *rollout) replicaLines(subs ...string) []string {
	var lines []string
	for _, p := range ro.procs {
		for _, line := range strings.Split(p.Output(), "\n") {
			for _, sub := range subs {
				if sub != "" && strings.Contains(line, sub) {
					lines = append(lines, p.Name()+": "+line)
					break
				}
			}
		}
	}
	return lines
}

// since is t's offset from the start of the run, for logs.
func (ro *rollout) since(t time.Time) time.Duration { return t.Sub(ro.start).Round(time.Millisecond) }

// finish lets every client finish a call started from now on, stops them,
// logs the figures and checks what holds in every run: every call got its
// real result exactly once, no POST or GET was refused, every stream
// reconnected, the upstream saw one initialize and one upstream session per
// client, and no call reached the upstream twice.
func (ro *rollout) finish(t *testing.T) mcSummary {
	t.Helper()
	ro.mc.barrier(t, "after", 45*time.Second)
	sum, clients, failures := ro.mc.stop(t, 60*time.Second)

	t.Logf("calls: %d (short %d, long %d), %d ok, %d failed; latency short p50 %dms p99 %dms max %dms, long p50 %dms p99 %dms max %dms",
		sum.Calls, sum.ByKind["short"].Calls, sum.ByKind["long"].Calls, sum.OK, sum.Failures,
		sum.ByKind["short"].P50Ms, sum.ByKind["short"].P99Ms, sum.ByKind["short"].MaxMs,
		sum.ByKind["long"].P50Ms, sum.ByKind["long"].P99Ms, sum.ByKind["long"].MaxMs)
	if sum.Longest != nil {
		t.Logf("longest call: %s (%s) %dms, started %v after the start",
			sum.Longest.Tag, sum.Longest.Tool, sum.Longest.Ms, ro.since(time.UnixMilli(sum.Longest.StartMs)))
		ro.explainCall(t, clients, sum.Longest.Tag)
	}
	t.Logf("event streams: %d GETs for %d clients (%d reconnections; %d clients reconnected), GET statuses %v, endpoint sessions %d; POST statuses %v; SDK onerror reports %d",
		sum.Gets, sum.Clients, sum.Gets-sum.Clients, sum.ClientsReconnected, sum.GetStatus, sum.EndpointSessions, sum.PostStatus, sum.Onerror)

	// Every call got its real result, exactly once.
	for _, f := range failures {
		t.Errorf("a call did not get its real result: %s", f)
	}
	if sum.Calls == 0 || sum.OK != sum.Calls || sum.Failures != 0 {
		t.Errorf("calls: %d, ok %d, failures %d", sum.Calls, sum.OK, sum.Failures)
	}
	if sum.Missing != 0 || sum.Duplicates != 0 || sum.Unexpected != 0 || sum.UnknownID != 0 {
		t.Errorf("answers: %d request(s) unanswered, %d answered more than once, %d answer(s) to unknown ids, %d \"unknown message ID\"",
			sum.Missing, sum.Duplicates, sum.Unexpected, sum.UnknownID)
	}
	if sum.Sent != sum.Calls+sum.Clients {
		t.Errorf("the clients sent %d requests, want %d calls + %d initialize", sum.Sent, sum.Calls, sum.Clients)
	}
	for _, c := range clients {
		bad := len(c.Missing) > 0 || len(c.Duplicates) > 0 || len(c.Unexpected) > 0 || c.UnknownID > 0 || c.OK != c.Calls
		for s, n := range c.Posts {
			if !strings.HasPrefix(s, "2") {
				bad = true
				t.Errorf("client %d: %d POST(s) answered %s", c.Client, n, s)
			}
		}
		for _, g := range c.Gets {
			if fmt.Sprint(g.Status) != "200" {
				bad = true
				t.Errorf("client %d: a GET of its event stream answered %v by %s at %v", c.Client, g.Status, g.Replica, ro.since(time.UnixMilli(g.T)))
			}
		}
		if bad {
			data, _ := json.Marshal(c)
			t.Logf("client %d's books: %s", c.Client, data)
		}
		if len(c.Duplicates) > 0 {
			ro.explainDuplicates(t, c)
		}
	}
	if len(clients) != ro.mc.n {
		t.Errorf("%d client reports, want %d", len(clients), ro.mc.n)
	}

	// No client initialised again: the upstream saw exactly one initialize
	// per client, and each client's calls went to one upstream session.
	tap := ro.tap
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for i := range ro.mc.n {
		if n := tap.inits[ro.mc.auth(i)]; n != 1 {
			t.Errorf("client %d: the upstream saw %d initialize requests, want 1", i, n)
		}
		if ss := tap.upSessions[ro.mc.auth(i)]; len(ss) != 1 {
			t.Errorf("client %d: its calls reached the upstream in %d upstream sessions %v, want 1", i, len(ss), slices.Collect(maps.Keys(ss)))
		}
	}
	if len(tap.inits) != ro.mc.n {
		t.Errorf("the upstream saw initialize requests from %d callers, want %d", len(tap.inits), ro.mc.n)
	}

	// Every call reached the upstream once.
	byTag := map[string][]*rolloutCall{}
	for _, c := range tap.calls {
		byTag[c.tag] = append(byTag[c.tag], c)
	}
	forwardedAgain := 0
	for tag, cs := range byTag {
		// A copy the killed replica forwarded just before it died (the
		// upstream may even have answered it, but the answer never reached
		// the store and the 202 was never sent) is sent again by the load
		// balancer's retry: README "Limits". The client still gets one
		// answer, which the summary checks.
		if len(cs) == 2 && cs[0].replica == ro.killed && cs[0].start.Before(ro.killedAt) && !cs[1].start.Before(ro.killedAt) {
			t.Logf("call %s, cut off by the kill of %s, was forwarded again by %s", tag, ro.killed, cs[1].replica)
			forwardedAgain++
			continue
		}
		if len(cs) > 1 {
			var where []string
			for _, c := range cs {
				where = append(where, fmt.Sprintf("%s at %v", c.replica, ro.since(c.start)))
			}
			t.Errorf("call %s reached the upstream %d times: %s", tag, len(cs), strings.Join(where, ", "))
		}
	}
	if len(tap.calls) != sum.Calls+forwardedAgain {
		t.Errorf("the upstream received %d tools/call requests for the clients' %d calls", len(tap.calls), sum.Calls)
	}
	return sum
}

// explainCall logs the story of the call tagged tag (c<client>-<n>): its
// client's event streams, its trip upstream, and what the replicas logged
// about the client's sessions.
func (ro *rollout) explainCall(t *testing.T, clients []mcClient, tag string) {
	t.Helper()
	var n int
	if _, err := fmt.Sscanf(tag, "c%d-", &n); err != nil {
		return
	}
	for _, c := range clients {
		if c.Client != n {
			continue
		}
		var gets []string
		for _, g := range c.Gets {
			gets = append(gets, fmt.Sprintf("%v %v %s", ro.since(time.UnixMilli(g.T)), g.Status, g.Replica))
		}
		var sessions []string
		for _, s := range c.Sessions {
			sessions = append(sessions, short8(s))
		}
		t.Logf("  client %d: GETs of its event stream at [%s]; sessions it posted to %v", n, strings.Join(gets, ", "), sessions)
		ro.tap.mu.Lock()
		for _, uc := range ro.tap.calls {
			if uc.tag == tag {
				t.Logf("  %s: forwarded by %s at %v, upstream answer ended at %v (complete %v)", tag, uc.replica, ro.since(uc.start), ro.since(uc.end), uc.complete)
			}
		}
		ro.tap.mu.Unlock()
		for _, l := range ro.replicaLines(c.Sessions...) {
			var e struct {
				TS float64 `json:"ts"`
			}
			if _, js, ok := strings.Cut(l, ": "); ok && json.Unmarshal([]byte(js), &e) == nil && e.TS > 0 {
				l = fmt.Sprintf("at %v %s", ro.since(time.UnixMicro(int64(e.TS*1e6))), l)
			}
			t.Logf("  %s", l)
		}
	}
}

// explainDuplicates logs, for a client that got some answer twice, how its
// calls reached the upstream and what the load balancer retried for its
// sessions.
func (ro *rollout) explainDuplicates(t *testing.T, c mcClient) {
	t.Helper()
	for id, tag := range c.DuplicateTags {
		ro.tap.mu.Lock()
		var ups []string
		for _, uc := range ro.tap.calls {
			if uc.tag == tag {
				end := "-"
				if !uc.end.IsZero() {
					end = ro.since(uc.end).String()
				}
				ups = append(ups, fmt.Sprintf("forwarded by %s at %v, upstream answer ended %s (complete %v)", uc.replica, ro.since(uc.start), end, uc.complete))
			}
		}
		ro.tap.mu.Unlock()
		t.Logf("client %d: request %s (%s) answered %d times; upstream: %v", c.Client, id, tag, c.Duplicates[id], ups)
	}
	for _, q := range lbRetried(t, ro.lbLog) {
		if q.session != "" && slices.Contains(c.Sessions, q.session) {
			t.Logf("client %d: the load balancer retried %s %s?sessionId=%s %d time(s) (from %v to %v), answered %d",
				c.Client, q.method, q.path, short8(q.session), q.retries, ro.since(q.start), ro.since(q.end), q.status)
		}
	}
}

// logRetries logs what the load balancer retried in each window, and fails
// the test for a retried request that still failed.
func (ro *rollout) logRetries(t *testing.T, windows []rolloutWindow) {
	t.Helper()
	retried := lbRetried(t, ro.lbLog)
	for _, w := range windows {
		during, down := map[string]int{}, map[string]int{}
		for _, q := range retried {
			key := q.method + " " + q.path
			switch {
			case !q.start.Before(w.from) && q.start.Before(w.exited):
				during[key]++
			case !q.start.Before(w.exited) && q.start.Before(w.back):
				down[key]++
			}
		}
		t.Logf("load balancer: requests retried while %s was %s %v, while it was down %v", w.name, w.what, during, down)
	}
	for _, q := range retried {
		if q.status/100 != 2 {
			t.Errorf("load balancer: %s %s retried %d time(s), then answered %d", q.method, q.path, q.retries, q.status)
		}
	}
	t.Logf("load balancer: %d request(s) retried in all (streams that never ended are not counted)", len(retried))
}

// rolloutWindow is when a replica was stopping (or dying) and down.
type rolloutWindow struct {
	name, what         string
	from, exited, back time.Time
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

// rolloutClients is how many clients each test runs: 40 SDK clients in one
// node process fit the 2-core test machine.
const rolloutClients = 40

// TestRollingRestart restarts each of three replicas in turn with SIGTERM
// (wait for the process to exit, relaunch it on the same port, wait until
// it listens, then the next one) while 40 TypeScript SDK legacy clients,
// each with its own token, call echo and 2-second slow calls of the Go demo
// upstream without pause through a round-robin load balancer. Every call
// must get its real result exactly once, no client may initialise again
// (the upstream sees one initialize and one upstream session per client),
// every client's stream reconnects, and every call a stopping replica had
// forwarded is answered upstream and delivered (drained), none forwarded
// twice.
func TestRollingRestart(t *testing.T) {
	const slowMs = 2000
	ro := startRollout(t, specGoStatefulSSE, rolloutClients, slowMs)

	type restart struct {
		rolloutWindow
		atSigterm mcMark
		exitTook  time.Duration
		leftLogs  int
	}
	var restarts []restart
	for _, r := range ro.cl.replicas {
		rs := restart{rolloutWindow: rolloutWindow{name: r.name, what: "stopping"}}
		rs.atSigterm = ro.mc.mark(t, "sigterm-"+r.name)
		rs.from = time.Now()
		rs.exitTook = sigtermReplica(t, r, rolloutDrainTimeout+15*time.Second)
		rs.exited = time.Now()
		rs.leftLogs = strings.Count(r.proc.Output(), "shutting down with requests still in flight")
		ro.relaunch(t, r)
		rs.back = time.Now()
		restarts = append(restarts, rs)
		t.Logf("replica %s: SIGTERM at %v with %d calls in flight (%d slow) at the clients; exited after %v; listening again %v later",
			r.name, ro.since(rs.from), rs.atSigterm.Inflight, rs.atSigterm.Long, rs.exitTook.Round(time.Millisecond), rs.back.Sub(rs.exited).Round(time.Millisecond))
	}
	sum := ro.finish(t)

	// Each replica was restarted once, and every client's stream was on one
	// of them: every client reconnected.
	if sum.ClientsReconnected != sum.Clients {
		t.Errorf("%d of %d clients reconnected their event stream, want all", sum.ClientsReconnected, sum.Clients)
	}

	var windows []rolloutWindow
	for _, rs := range restarts {
		windows = append(windows, rs.rolloutWindow)
	}
	ro.logRetries(t, windows)

	// Each stopping replica drained: the calls it had forwarded when it got
	// SIGTERM were answered upstream after that, in full, before it exited.
	tap := ro.tap
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for _, c := range tap.calls {
		if !c.complete || c.status != http.StatusOK {
			t.Errorf("call %s (%s) forwarded by %s at %v: upstream status %d, response read to its end: %v",
				c.tag, c.tool, c.replica, ro.since(c.start), c.status, c.complete)
		}
	}
	drainedTotal := 0
	for _, rs := range restarts {
		drained, after := 0, 0
		var lastEnd time.Time
		for _, c := range tap.calls {
			if c.replica != rs.name {
				continue
			}
			if c.start.Before(rs.from) && c.end.After(rs.from) {
				drained++
				if c.end.After(lastEnd) {
					lastEnd = c.end
				}
			}
			if c.start.After(rs.from) && c.start.Before(rs.exited) {
				after++
			}
		}
		drainedTotal += drained
		msg := fmt.Sprintf("replica %s: %d upstream call(s) in flight at SIGTERM, answered upstream after it", rs.name, drained)
		if drained > 0 {
			msg += fmt.Sprintf(" (the last %v after SIGTERM)", lastEnd.Sub(rs.from).Round(time.Millisecond))
		}
		msg += fmt.Sprintf("; %d forwarded between SIGTERM and exit; exit took %v", after, rs.exitTook.Round(time.Millisecond))
		t.Log(msg)
		if rs.leftLogs > 0 {
			t.Errorf("replica %s left requests in flight to the other replicas although its calls last %dms and drain_timeout is %v", rs.name, slowMs, rolloutDrainTimeout)
		}
	}
	if drainedTotal == 0 {
		t.Errorf("no replica had an upstream call in flight at its SIGTERM: the test exercised no drain")
	}
	t.Logf("wall time of the run: %v", ro.since(time.Now()))
}

// TestReplicaKilledUpstreamResumes kills one of three replicas (SIGKILL, a
// crash: no drain) while 40 TypeScript SDK legacy clients call
// server-everything's echo and its 2-second trigger-long-running-operation
// (with progress notifications) without pause, and relaunches it on the
// same port. server-everything keeps an event store, so the calls the dead
// replica forwarded are resumed upstream (Last-Event-ID) by the replicas
// holding their sessions' streams once its heartbeat lapses: every call
// must still get its real result, exactly once, and no client may
// initialise again.
//
// A POST that reaches the replica as it dies (received, perhaps recorded
// and forwarded, but its 202 never sent) is resent by the load balancer to
// another replica, which must not make the call run, or be answered, twice.
// The test fails when it is: whether a POST is caught that way depends on
// the moment of the kill.
func TestReplicaKilledUpstreamResumes(t *testing.T) {
	const longMs = 2000
	ro := startRollout(t, specEverything, rolloutClients, longMs, "--long-progress")

	// Kill the replica forwarding the most long calls right now.
	victim := ro.cl.replicas[0]
	ro.tap.mu.Lock()
	busy := map[string]int{}
	for _, c := range ro.tap.calls {
		if c.end.IsZero() {
			busy[c.replica]++
		}
	}
	ro.tap.mu.Unlock()
	for _, r := range ro.cl.replicas {
		if busy[r.name] > busy[victim.name] {
			victim = r
		}
	}
	mark := ro.mc.mark(t, "kill-"+victim.name)
	w := rolloutWindow{name: victim.name, what: "dying", from: time.Now()}
	ro.killed, ro.killedAt = victim.name, time.Now()
	victim.kill()
	w.exited = time.Now()
	ro.relaunch(t, victim)
	w.back = time.Now()
	t.Logf("killed %s at %v (forwarding %d upstream calls; %d calls in flight at the clients, %d long), listening again %v later",
		victim.name, ro.since(w.from), busy[victim.name], mark.Inflight, mark.Long, w.back.Sub(w.exited).Round(time.Millisecond))

	sum := ro.finish(t)
	if sum.ClientsReconnected == 0 {
		t.Errorf("no client reconnected its event stream although a replica holding streams died")
	}
	ro.logRetries(t, []rolloutWindow{w})

	tap := ro.tap
	tap.mu.Lock()
	defer tap.mu.Unlock()
	orphans := 0
	for _, c := range tap.calls {
		if c.replica == victim.name && c.start.Before(w.from) && (c.end.IsZero() || c.end.After(w.from)) {
			orphans++
		}
	}
	resumedBy := map[string]int{}
	var resumeStatus []int
	for _, r := range tap.resumes {
		if r.at.After(w.from) {
			resumedBy[r.replica]++
			if r.status != http.StatusOK {
				resumeStatus = append(resumeStatus, r.status)
			}
		}
	}
	t.Logf("%d upstream call(s) forwarded by %s were in flight at the kill; upstream streams resumed with Last-Event-ID after it, by replica: %v; non-200 resumptions: %v",
		orphans, victim.name, resumedBy, resumeStatus)
	if orphans == 0 {
		t.Errorf("%s forwarded no call in flight when it was killed: the test exercised no takeover", victim.name)
	}
	logRecovery(t, ro.cl)
	t.Logf("wall time of the run: %v", ro.since(time.Now()))
}
