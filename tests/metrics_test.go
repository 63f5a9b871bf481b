package tests

// The bridge's Prometheus metrics on Caddy's admin endpoint (/metrics), as
// /work/shared-notes/observability-spec.md specifies them: what one scripted
// session of the official TypeScript SDK's legacy client counts, what an
// unreachable upstream counts, that no label carries a session id or a
// token, and that the values survive a config reload.

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// metricPrefix starts every metric of the bridge.
const metricPrefix = "caddy_mcp_sse_bridge_"

// sessionIDRe is a bridge session id: 128 random bits in hex.
var sessionIDRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ---------------------------------------------------------------------------
// Scraping /metrics
// ---------------------------------------------------------------------------

// metricSet is one scrape of /metrics: the exposition text and its parse.
type metricSet struct {
	text     string
	families map[string]*dto.MetricFamily
}

// scrapeMetrics GETs admin/metrics (admin is the admin endpoint's base URL),
// expects 200 and a valid text exposition, and parses it.
func scrapeMetrics(t testing.TB, hc *http.Client, admin string) *metricSet {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s/metrics: %v", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		t.Fatalf("GET %s/metrics: reading the body: %v", admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s, want 200: %s", admin, resp.Status, short(string(body)))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("GET %s/metrics (Content-Type %q): not a valid text exposition: %v\n%s", admin, resp.Header.Get("Content-Type"), err, short(string(body)))
	}
	return &metricSet{text: string(body), families: fams}
}

// family returns the bridge's family name (without the prefix), or nil.
func (m *metricSet) family(name string) *dto.MetricFamily { return m.families[metricPrefix+name] }

// value sums the samples of the bridge's family name (without the prefix)
// whose labels include labels (name, value pairs): counters and gauges by
// value, histograms by their sample count (_count). found says whether any
// series matched.
func (m *metricSet) value(name string, labels ...string) (sum float64, found bool) {
	f := m.family(name)
	if f == nil {
		return 0, false
	}
	for _, mt := range f.GetMetric() {
		if !hasLabels(mt, labels) {
			continue
		}
		found = true
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			sum += mt.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			sum += mt.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			sum += float64(mt.GetHistogram().GetSampleCount())
		default:
			sum += mt.GetUntyped().GetValue()
		}
	}
	return sum, found
}

// get is value without found: 0 when no series matched (a labelled counter
// not incremented yet has no series).
func (m *metricSet) get(name string, labels ...string) float64 {
	v, _ := m.value(name, labels...)
	return v
}

func hasLabels(mt *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		ok := false
		for _, lp := range mt.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// series names a series for messages: name{a="x",b="y"}.
func series(name string, labels ...string) string {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s=%q", labels[i], labels[i+1])
		}
		b.WriteByte('}')
	}
	return b.String()
}

// metricChecks collects how a scrape differs from what is expected.
type metricChecks struct {
	m   *metricSet
	bad []string
}

// eq expects the series' value (summed over the series matching labels) to
// be want.
func (c *metricChecks) eq(want float64, name string, labels ...string) {
	if got, found := c.m.value(name, labels...); got != want {
		c.bad = append(c.bad, fmt.Sprintf("%s = %v (series present: %v), want %v", series(name, labels...), got, found, want))
	}
}

// ge expects the value to be at least least.
func (c *metricChecks) ge(least float64, name string, labels ...string) {
	if got, found := c.m.value(name, labels...); got < least {
		c.bad = append(c.bad, fmt.Sprintf("%s = %v (series present: %v), want >= %v", series(name, labels...), got, found, least))
	}
}

// typed expects the bridge's family name to exist with type typ.
func (c *metricChecks) typed(name string, typ dto.MetricType) {
	f := c.m.family(name)
	switch {
	case f == nil:
		c.bad = append(c.bad, fmt.Sprintf("no metric %s%s", metricPrefix, name))
	case f.GetType() != typ:
		c.bad = append(c.bad, fmt.Sprintf("%s%s is a %v, want a %v", metricPrefix, name, f.GetType(), typ))
	}
}

// waitMetrics scrapes admin/metrics until check finds nothing wrong, and
// returns that scrape; it fails the test with the last differences once
// timeout has passed.
func waitMetrics(t testing.TB, hc *http.Client, admin, what string, timeout time.Duration, check func(c *metricChecks)) *metricSet {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := &metricChecks{m: scrapeMetrics(t, hc, admin)}
		check(c)
		if len(c.bad) == 0 {
			return c.m
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics %s: still wrong after %v:\n  %s", what, timeout, strings.Join(c.bad, "\n  "))
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// checkMetrics reports (without stopping the test) how m differs from what
// check expects.
func checkMetrics(t testing.TB, m *metricSet, what string, check func(c *metricChecks)) {
	t.Helper()
	c := &metricChecks{m: m}
	check(c)
	if len(c.bad) > 0 {
		t.Errorf("metrics %s:\n  %s", what, strings.Join(c.bad, "\n  "))
	}
}

// checkNoSecrets checks that the exposition holds none of secrets anywhere,
// and that no label value of any metric contains a session id's short form
// (its first 8 hex digits, as the logs show it).
func checkNoSecrets(t testing.TB, m *metricSet, sessionIDs []string, secrets ...string) {
	t.Helper()
	for _, s := range append(slices.Clone(sessionIDs), secrets...) {
		if i := strings.Index(m.text, s); i >= 0 {
			line := m.text[strings.LastIndexByte(m.text[:i], '\n')+1:]
			if j := strings.IndexByte(line, '\n'); j >= 0 {
				line = line[:j]
			}
			t.Errorf("/metrics holds %q: %s", s, line)
		}
	}
	for name, f := range m.families {
		for _, mt := range f.GetMetric() {
			for _, lp := range mt.GetLabel() {
				for _, id := range sessionIDs {
					if strings.Contains(lp.GetValue(), short8(id)) {
						t.Errorf("/metrics: %s has the label %s=%q, which holds the session id %s's short form", name, lp.GetName(), lp.GetValue(), short8(id))
					}
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// tests/node/obs-client.mjs
// ---------------------------------------------------------------------------

// obsClient drives obs-client.mjs: one TypeScript SDK legacy session run
// command by command.
type obsClient struct {
	p       *testenv.Process
	session string // the endpoint event's sessionId
	answers int    // answer lines consumed
}

var (
	obsEndpointRe = regexp.MustCompile(`(?m)^endpoint (\S+)$`)
	obsAnswerRe   = regexp.MustCompile(`(?m)^= (\S+) ?(.*)$`)
)

// startObsClient connects obs-client.mjs to sseURL, sending headers ("Name:
// value") with every request, and waits until it is initialised.
func startObsClient(t testing.TB, sseURL string, headers ...string) *obsClient {
	t.Helper()
	requireNode(t)
	args := []string{"obs-client.mjs", "--url", sseURL, "--timeout", "20000"}
	for _, h := range headers {
		args = append(args, "--header", h)
	}
	p := startNodeScript(t, "obs-client.mjs", true, args...)
	p.MustWaitOutput(t, tsReadyRe, 30*time.Second)
	t.Cleanup(func() { p.Stdin().Close() })
	m := obsEndpointRe.FindStringSubmatch(p.Output())
	if m == nil {
		t.Fatalf("obs-client.mjs printed no endpoint line:\n%s", p.Output())
	}
	if !sessionIDRe.MatchString(m[1]) {
		t.Fatalf("the endpoint event's sessionId %q is not 32 hex digits", m[1])
	}
	return &obsClient{p: p, session: m[1]}
}

// do sends one command and returns its answer line's kind and rest.
func (c *obsClient) do(t testing.TB, cmd string) (kind, rest string) {
	t.Helper()
	if _, err := fmt.Fprintln(c.p.Stdin(), cmd); err != nil {
		t.Fatalf("writing to obs-client.mjs: %v", err)
	}
	var m []string
	c.p.MustWaitUntil(t, "the answer to "+cmd, callTimeout+10*time.Second, func(out string) bool {
		all := obsAnswerRe.FindAllStringSubmatch(out, -1)
		if len(all) > c.answers {
			m = all[c.answers]
			return true
		}
		return false
	})
	c.answers++
	return m[1], m[2]
}

// listTools runs tools/list and returns the number of tools.
func (c *obsClient) listTools(t testing.TB) string {
	t.Helper()
	kind, rest := c.do(t, "list")
	if kind != "tools" {
		t.Fatalf("TypeScript client: tools/list gave %s %s", kind, rest)
	}
	return rest
}

// call calls a tool and returns the answer line's kind and rest.
func (c *obsClient) call(t testing.TB, tool, argsJSON string) (kind, rest string) {
	t.Helper()
	return c.do(t, "call "+tool+" "+argsJSON)
}

// echo calls the demo upstream's echo with msg and checks the answer.
func (c *obsClient) echo(t testing.TB, msg string) {
	t.Helper()
	kind, rest := c.call(t, "echo", fmt.Sprintf(`{"message":%q}`, msg))
	if kind != "ok" || rest != fmt.Sprintf("%q", msg) {
		t.Fatalf("TypeScript client: echo %q gave %s %s, want ok %q", msg, kind, rest, msg)
	}
}

// quit closes the session and waits for the script to exit.
func (c *obsClient) quit(t testing.TB) {
	t.Helper()
	if kind, rest := c.do(t, "quit"); kind != "closed" {
		t.Fatalf("obs-client.mjs quit: %s %s", kind, rest)
	}
	if err := c.p.MustWaitExit(t, 10*time.Second); err != nil {
		t.Fatalf("obs-client.mjs exited with %v", err)
	}
}

// ---------------------------------------------------------------------------
// 1. One TypeScript client's session, then an unreachable upstream
// ---------------------------------------------------------------------------

// TestMetricsTSClient runs a scripted session of the official TypeScript
// SDK's legacy client (initialize, tools/list, three tools/call) through one
// Caddy (admin endpoint on) in front of the Go demo upstream, and reads
// /metrics while it is connected: one stream open, one session started, the
// upstream requests by method and status (initialize 1, tools/list 1,
// notifications/initialized 1 with 202, tools/call = calls with 200), the
// duration histogram's count per method, the relayed messages, store and
// mailbox observations, and no error counted. Once the client has closed,
// the stream gauge goes back to 0. Then a second client connects, the
// upstream is killed and its call gets an error: upstream_errors_total
// {reason="unreachable"} and error_answers_total{reason=
// "upstream_unreachable"} increase, and the bridge logs a warning "upstream
// request failed" with the session's short id, method tools/call and reason
// unreachable. No scrape holds either session's id (nor, in a label, its
// 8-digit short form) or the clients' bearer token; neither does Caddy's
// log.
func TestMetricsTSClient(t *testing.T) {
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	c := startCaddyWith(t, caddyOptions{admin: true}, site{body: bridgeBlock(up.url)})[0]
	hc := testenv.MustHTTPClient(t)
	token := "obs-metrics-token-" + randomHex(12)
	auth := "Authorization: Bearer " + token

	// Before any client: the unlabelled metrics exist with their types.
	m0 := scrapeMetrics(t, hc, c.admin)
	checkMetrics(t, m0, "before any client", func(c *metricChecks) {
		c.typed("streams_open", dto.MetricType_GAUGE)
		c.typed("sessions_started_total", dto.MetricType_COUNTER)
		c.typed("reinitializations_total", dto.MetricType_COUNTER)
		c.typed("mailbox_depth", dto.MetricType_HISTOGRAM)
		c.eq(0, "streams_open")
		c.eq(0, "sessions_started_total")
	})

	oc := startObsClient(t, c.sseURL(), auth)
	tools := oc.listTools(t)
	if !strings.Contains(tools, `"echo"`) {
		t.Fatalf("tools/list: %s, want a list with echo", tools)
	}
	const calls = 3
	for i := range calls {
		oc.echo(t, fmt.Sprintf("metrics-call-%d", i))
	}

	// The histogram is observed once an answer is relayed, which may be
	// just after the client read it: wait for the counts to settle.
	m := waitMetrics(t, hc, c.admin, "while the client is connected", promptly, func(c *metricChecks) {
		c.eq(1, "streams_open")
		c.eq(1, "sessions_started_total")
		c.eq(1, "upstream_requests_total", "method", "initialize")
		c.eq(1, "upstream_requests_total", "method", "initialize", "code", "200")
		c.eq(1, "upstream_requests_total", "method", "notifications/initialized", "code", "202")
		c.eq(1, "upstream_requests_total", "method", "tools/list", "code", "200")
		c.eq(calls, "upstream_requests_total", "method", "tools/call")
		c.eq(calls, "upstream_requests_total", "method", "tools/call", "code", "200")
		c.eq(calls, "upstream_request_duration_seconds", "method", "tools/call")
		c.eq(1, "upstream_request_duration_seconds", "method", "initialize")
		c.eq(0, "upstream_request_duration_seconds", "method", "stream")
		c.eq(0, "upstream_request_duration_seconds", "method", "probe")
		// initialize, tools/list and the calls went up; their answers came back.
		c.ge(calls+2, "messages_total", "direction", "client_to_upstream", "kind", "request")
		c.ge(1, "messages_total", "direction", "client_to_upstream", "kind", "notification")
		c.ge(calls+2, "messages_total", "direction", "upstream_to_client", "kind", "response")
		c.ge(1, "store_operation_duration_seconds", "op", "create")
		c.ge(1, "mailbox_depth")
		c.eq(0, "upstream_errors_total")
		c.eq(0, "error_answers_total")
		c.eq(0, "sessions_ended_total")
	})
	checkMetrics(t, m, "types", func(c *metricChecks) {
		c.typed("upstream_requests_total", dto.MetricType_COUNTER)
		c.typed("upstream_request_duration_seconds", dto.MetricType_HISTOGRAM)
		c.typed("messages_total", dto.MetricType_COUNTER)
		c.typed("store_operation_duration_seconds", dto.MetricType_HISTOGRAM)
	})
	checkNoSecrets(t, m, []string{oc.session}, token)
	t.Logf("with the client connected: %s", summary(m))

	// The client closes: no stream is left open.
	oc.quit(t)
	m = waitMetrics(t, hc, c.admin, "after the client closed", promptly, func(c *metricChecks) {
		c.eq(0, "streams_open")
		c.eq(1, "sessions_started_total")
		c.eq(calls, "upstream_requests_total", "method", "tools/call", "code", "200")
	})
	checkNoSecrets(t, m, []string{oc.session}, token)

	// A new client, then the upstream dies: its call gets an error, counted.
	oc2 := startObsClient(t, c.sseURL(), auth)
	before := waitMetrics(t, hc, c.admin, "with a second client connected", promptly, func(c *metricChecks) {
		c.eq(1, "streams_open")
		c.eq(2, "sessions_started_total")
	})
	unreachable := before.get("upstream_errors_total", "reason", "unreachable")
	answers := before.get("error_answers_total")
	answersUnreachable := before.get("error_answers_total", "reason", "upstream_unreachable")
	up.stop()
	start := time.Now()
	kind, rest := oc2.call(t, "echo", `{"message":"metrics-during-the-outage"}`)
	if kind != "rpc-error" {
		t.Errorf("a call while the upstream is down: %s %s, want rpc-error", kind, rest)
	} else {
		t.Logf("the call while the upstream is down got %s %s after %v", kind, rest, time.Since(start).Round(time.Millisecond))
	}
	m = waitMetrics(t, hc, c.admin, "after a call to a dead upstream", promptly, func(c *metricChecks) {
		c.ge(unreachable+1, "upstream_errors_total", "reason", "unreachable")
		c.ge(answers+1, "error_answers_total")
		c.ge(answersUnreachable+1, "error_answers_total", "reason", "upstream_unreachable")
		c.ge(1, "upstream_requests_total", "method", "tools/call", "code", "error")
		c.eq(calls, "upstream_requests_total", "method", "tools/call", "code", "200")
		c.eq(1, "streams_open")
	})
	checkNoSecrets(t, m, []string{oc.session, oc2.session}, token)
	t.Logf("after the outage: %s", summary(m))
	oc2.quit(t)

	// The failure is logged as a warning naming the session's short form,
	// the method and the reason; Caddy's log holds no full session id and
	// no token.
	var warned []logLine
	for _, l := range bridgeLogs(c.proc.Output()) {
		if l.msg() == "upstream request failed" && l.str("session") == short8(oc2.session) && l.str("method") == "tools/call" {
			warned = append(warned, l)
		}
	}
	if len(warned) == 0 {
		t.Errorf("no warn line \"upstream request failed\" with session %s and method tools/call", short8(oc2.session))
	}
	for _, l := range warned {
		if l.str("level") != "warn" || l.str("reason") != "unreachable" {
			t.Errorf("\"upstream request failed\": level %q, reason %q, want warn and unreachable: %s", l.str("level"), l.str("reason"), l.raw)
		}
	}
	checkLogHoldsNone(t, c.proc.Output(), map[string]string{
		"the token": token, "the first session's id": oc.session, "the second session's id": oc2.session,
	})
}

// summary lists the bridge's series of m (for the test's log).
func summary(m *metricSet) string {
	var parts []string
	for name, f := range m.families {
		n, ok := strings.CutPrefix(name, metricPrefix)
		if !ok {
			continue
		}
		for _, mt := range f.GetMetric() {
			var labels []string
			for _, lp := range mt.GetLabel() {
				labels = append(labels, lp.GetName(), lp.GetValue())
			}
			var v float64
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				v = mt.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = mt.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				v = float64(mt.GetHistogram().GetSampleCount())
			}
			parts = append(parts, fmt.Sprintf("%s=%v", series(n, labels...), v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// ---------------------------------------------------------------------------
// 2. Reloads
// ---------------------------------------------------------------------------

// registrationErrorRe finds a failed metrics registration in Caddy's log.
var registrationErrorRe = regexp.MustCompile(`(?i)(duplicate metrics collector registration|already registered|previously registered descriptor)`)

// TestMetricsSurviveReload keeps a TypeScript SDK client's stream open
// across two config reloads of one Caddy (the keepalive changed each time,
// the memory store kept): /metrics answers 200 after each, Caddy's log shows
// no failed registration, streams_open still counts the client's stream
// (1, neither 0 nor 2), and the counters carry on from their values before
// (a call after the first reload adds one to tools/call's counter and
// histogram; nothing goes back to zero).
func TestMetricsSurviveReload(t *testing.T) {
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	body := func(keepalive string) string {
		return continuityBlock(up.url, "keepalive "+keepalive, "session_ttl 30s")
	}
	c := startRLCaddy(t, body("1s"))
	admin := fmt.Sprintf("http://127.0.0.1:%d", c.adminPort)
	hc := testenv.MustHTTPClient(t)

	rc := startReplicaClient(t, c.sseURL())
	t.Cleanup(func() { checkNoClientErrors(t, rc) })
	rc.echoOK(t, "before")
	before := waitMetrics(t, hc, admin, "before the reload", promptly, func(c *metricChecks) {
		c.eq(1, "streams_open")
		c.eq(1, "sessions_started_total")
		c.eq(1, "upstream_requests_total", "method", "tools/call", "code", "200")
		c.eq(1, "upstream_request_duration_seconds", "method", "tools/call")
	})
	initialize := before.get("upstream_requests_total", "method", "initialize")
	toRelay := before.get("messages_total")
	storeOps := before.get("store_operation_duration_seconds")
	if initialize != 1 || toRelay < 3 || storeOps < 1 {
		t.Errorf("before the reload: initialize %v (want 1), messages %v (want >= 3), store operations %v (want >= 1)", initialize, toRelay, storeOps)
	}

	// The same metrics after each reload.
	carriedOn := func(calls float64) func(c *metricChecks) {
		return func(c *metricChecks) {
			c.eq(1, "streams_open")
			c.eq(1, "sessions_started_total")
			c.eq(initialize, "upstream_requests_total", "method", "initialize")
			c.eq(calls, "upstream_requests_total", "method", "tools/call", "code", "200")
			c.eq(calls, "upstream_request_duration_seconds", "method", "tools/call")
			c.ge(toRelay, "messages_total")
			c.ge(storeOps, "store_operation_duration_seconds")
		}
	}

	c.reload(t, body("2s"))
	c.checkBridgeConfig(t, map[string]any{"keepalive": 2e9})
	checkMetrics(t, scrapeMetrics(t, hc, admin), "right after reload #1", carriedOn(1))

	rc.echoOK(t, "after-1")
	waitMetrics(t, hc, admin, "after a call following reload #1", promptly, carriedOn(2))

	c.reload(t, body("1s"))
	c.checkBridgeConfig(t, map[string]any{"keepalive": 1e9})
	checkMetrics(t, scrapeMetrics(t, hc, admin), "right after reload #2", carriedOn(2))
	rc.echoOK(t, "after-2")
	m := waitMetrics(t, hc, admin, "after a call following reload #2", promptly, carriedOn(3))
	t.Logf("after two reloads: %s", summary(m))

	checkOneStream(t, rc, "after the reloads")
	if l := registrationErrorRe.FindString(c.proc.Output()); l != "" {
		t.Errorf("Caddy's log shows a failed metrics registration (%q); see its output", l)
		logCaddyLines(t, c.proc, l)
	}
}
