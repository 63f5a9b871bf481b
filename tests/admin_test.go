package tests

// The bridge's admin API (admin.api.mcp_sse_bridge: GET
// /mcp_sse_bridge/sessions, DELETE /mcp_sse_bridge/sessions/<id>) on
// replicas sharing a Redis store, and its session logs, as
// /work/shared-notes/observability-spec.md specifies them.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------

// adminURL is the replica's admin endpoint.
func (r *replica) adminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", r.adminPort) }

// adminSession is one session of GET /mcp_sse_bridge/sessions.
type adminSession struct {
	ID               string  `json:"id"`
	State            string  `json:"state"`
	OwnerReplica     string  `json:"owner_replica"`
	AgeSeconds       float64 `json:"age_seconds"`
	IdleSeconds      float64 `json:"idle_seconds"`
	Upstream         string  `json:"upstream"`
	ProtocolVersion  string  `json:"protocol_version"`
	RequestsInFlight int     `json:"requests_in_flight"`
	Initialized      bool    `json:"initialized"`
}

// adminSessionFields are the members every listed session has.
var adminSessionFields = []string{"id", "state", "owner_replica", "age_seconds", "idle_seconds",
	"upstream", "protocol_version", "requests_in_flight", "initialized"}

// listSessions GETs admin/mcp_sse_bridge/sessions and checks the answer's
// shape: 200, JSON, {"sessions": [...]}, every member of every session.
func listSessions(t testing.TB, hc *http.Client, admin string) []adminSession {
	t.Helper()
	return listSessionsQuery(t, hc, admin, "")
}

// listSessionsQuery is listSessions with a query string ("limit=1").
func listSessionsQuery(t testing.TB, hc *http.Client, admin, query string) []adminSession {
	t.Helper()
	url := admin + "/mcp_sse_bridge/sessions"
	if query != "" {
		url += "?" + query
	}
	code, hdr, body := doRequest(t, hc, http.MethodGet, url, "", "")
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s, want 200", url, code, short(body))
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	var list struct {
		Sessions *[]json.RawMessage `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil || list.Sessions == nil {
		t.Fatalf("GET %s: want {\"sessions\":[...]}, got %s (%v)", url, short(body), err)
	}
	var out []adminSession
	for _, raw := range *list.Sessions {
		var members map[string]json.RawMessage
		var s adminSession
		if err := json.Unmarshal(raw, &members); err != nil {
			t.Fatalf("GET %s: a session is not an object: %s", url, raw)
		}
		for _, f := range adminSessionFields {
			if _, ok := members[f]; !ok {
				t.Errorf("GET %s: a session lacks %q: %s", url, f, raw)
			}
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("GET %s: a session's members have the wrong types: %v: %s", url, err, raw)
		}
		out = append(out, s)
	}
	return out
}

// findSession returns the session id of list.
func findSession(list []adminSession, id string) (adminSession, bool) {
	for _, s := range list {
		if s.ID == id {
			return s, true
		}
	}
	return adminSession{}, false
}

// waitListed polls the admin endpoint's list until it has the session id
// and ok holds for it, and returns it.
func waitListed(t testing.TB, hc *http.Client, admin, id, what string, ok func(adminSession) bool) adminSession {
	t.Helper()
	deadline := time.Now().Add(promptly)
	for {
		list := listSessions(t, hc, admin)
		s, found := findSession(list, id)
		if found && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/mcp_sse_bridge/sessions: no session %s %s within %v; the list: %+v", admin, short8(id), what, promptly, list)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// waitUnlisted polls the admin endpoint's list until it lacks id.
func waitUnlisted(t testing.TB, hc *http.Client, admin, id string) {
	t.Helper()
	deadline := time.Now().Add(promptly)
	for {
		list := listSessions(t, hc, admin)
		if _, found := findSession(list, id); !found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/mcp_sse_bridge/sessions still lists %s %v after it was deleted: %+v", admin, short8(id), promptly, list)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// deleteSession sends DELETE admin/mcp_sse_bridge/sessions/<id>.
func deleteSession(t testing.TB, hc *http.Client, admin, id string) (int, string) {
	t.Helper()
	code, _, body := doRequest(t, hc, http.MethodDelete, admin+"/mcp_sse_bridge/sessions/"+id, "", "")
	return code, body
}

// endpointSessions returns the sessionIds of the endpoint lines of
// replica-client.mjs, in order.
func endpointSessions(rc *replicaClient) []string {
	var ids []string
	for _, m := range obsEndpointRe.FindAllStringSubmatch(rc.p.Output(), -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// rcSSEErrorRe is the line replica-client.mjs prints when its event
// stream ends or fails (the SDK's SseError through the client's onerror).
var rcSSEErrorRe = regexp.MustCompile(`(?m)^error "SSE error.*$`)

// sumMetric sums a metric over the replicas' /metrics.
func sumMetric(t testing.TB, hc *http.Client, cl *cluster, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	for _, r := range cl.replicas {
		sum += scrapeMetrics(t, hc, r.adminURL()).get(name, labels...)
	}
	return sum
}

// waitSumMetric polls sumMetric until ok holds for it.
func waitSumMetric(t testing.TB, hc *http.Client, cl *cluster, what string, ok func(float64) bool, name string, labels ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(promptly)
	for {
		v := sumMetric(t, hc, cl, name, labels...)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s summed over the replicas = %v after %v, want %s", series(name, labels...), v, promptly, what)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
	}
}

// TestAdminAPISharedRedis runs two replicas sharing a real redis-server
// behind the load balancer, with a TypeScript SDK legacy client connected,
// initialised and done with a call. GET /mcp_sse_bridge/sessions on both
// replicas' admin endpoints lists the same live session: the client's id,
// state "streaming", initialized, the upstream URL, no request in flight,
// the same owner replica and protocol version. DELETE of that id on the
// replica that does NOT hold the stream answers 200 {"deleted": id}; the
// client's stream ends at once (the SDK reports it within a few seconds;
// its EventSource reconnects three seconds after, and gets a new session
// id); neither replica lists the deleted id any more, both list the new
// one; a DELETE of an unknown id (and of the deleted one again) is 404;
// with another session open, ?limit=1 lists one session.
// sessions_ended_total{reason="deleted"} is 1 over the two replicas, two
// streams are open over the two, the upstream got a DELETE, no label holds
// a session id, and one replica logs "session ended" with reason deleted
// and the id's short form. (Caddy's own admin log shows the DELETE's URI,
// so the replicas' logs are not searched for full ids here.)
func TestAdminAPISharedRedis(t *testing.T) {
	requireRedisModule(t)
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	cl := startCluster(t, 2, up.url, nil)
	hc := testenv.MustHTTPClient(t)

	rc := startReplicaClient(t, cl.lb.sseURL())
	rc.echoOK(t, "before")
	gs := rc.gets()
	ids := endpointSessions(rc)
	if len(gs) != 1 || gs[0].status != "200" || gs[0].replica == "-" || len(ids) != 1 {
		t.Fatalf("the client's event stream: GETs %+v, endpoint events %v; want one 200 GET with X-Replica and one endpoint", gs, ids)
	}
	sid, holder := ids[0], cl.replica(t, gs[0].replica)
	if !sessionIDRe.MatchString(sid) {
		t.Fatalf("the endpoint event's sessionId %q is not 32 hex digits", sid)
	}
	other := cl.replica(t, otherReplica(t, cl, holder.name))
	t.Logf("session %s streams on %s; the DELETE goes to %s", short8(sid), holder.name, other.name)

	// Both replicas list the same live session.
	live := func(s adminSession) bool { return s.State == "streaming" && s.Initialized && s.RequestsInFlight == 0 }
	views := map[string]adminSession{}
	for _, r := range cl.replicas {
		s := waitListed(t, hc, r.adminURL(), sid, `streaming, initialized, no request in flight`, live)
		views[r.name] = s
		if s.Upstream != up.url {
			t.Errorf("replica %s lists %s with upstream %q, want %q", r.name, short8(sid), s.Upstream, up.url)
		}
		if s.OwnerReplica == "" || s.ProtocolVersion == "" {
			t.Errorf("replica %s lists the streaming session %s with owner_replica %q and protocol_version %q, want both set", r.name, short8(sid), s.OwnerReplica, s.ProtocolVersion)
		}
		if s.AgeSeconds < 0 || s.IdleSeconds < 0 || s.IdleSeconds > s.AgeSeconds+1 || s.AgeSeconds > 120 {
			t.Errorf("replica %s lists %s with age_seconds %v and idle_seconds %v", r.name, short8(sid), s.AgeSeconds, s.IdleSeconds)
		}
	}
	h, o := views[holder.name], views[other.name]
	if h.OwnerReplica != o.OwnerReplica || h.ProtocolVersion != o.ProtocolVersion || h.Upstream != o.Upstream {
		t.Errorf("the replicas list the session differently: %s %+v, %s %+v", holder.name, h, other.name, o)
	}
	t.Logf("listed on both replicas: %+v", h)

	// DELETE on the replica without the stream.
	sseErrors := func() int { return len(rcSSEErrorRe.FindAllString(rc.p.Output(), -1)) }
	errorsBefore := sseErrors()
	start := time.Now()
	code, body := deleteSession(t, hc, other.adminURL(), sid)
	var deleted struct {
		Deleted string `json:"deleted"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &deleted) != nil || deleted.Deleted != sid {
		t.Fatalf("DELETE /mcp_sse_bridge/sessions/%s on %s: %d %s, want 200 {\"deleted\":%q}", short8(sid), other.name, code, short(body), sid)
	}

	// The stream on the other replica ends at once (the SDK reports the
	// end of its EventSource's stream through onerror); the EventSource
	// reconnects three seconds later and gets a new session.
	rc.p.MustWaitUntil(t, "the end of the client's event stream after the DELETE", promptly, func(string) bool {
		return sseErrors() > errorsBefore
	})
	t.Logf("the client's event stream ended %v after the DELETE", time.Since(start).Round(time.Millisecond))
	const reconnectDelay = 3 * time.Second
	var newSid string
	rc.p.MustWaitUntil(t, "an endpoint event with a new session after the DELETE", reconnectDelay+promptly, func(string) bool {
		ids := endpointSessions(rc)
		if last := ids[len(ids)-1]; last != sid {
			newSid = last
			return true
		}
		return false
	})
	t.Logf("the client got the new session %s %v after the DELETE", short8(newSid), time.Since(start).Round(time.Millisecond))
	if !sessionIDRe.MatchString(newSid) {
		t.Errorf("the new session id %q is not 32 hex digits", newSid)
	}
	if gs := rc.gets(); len(gs) != 2 || gs[1].status != "200" {
		t.Errorf("the client's GETs after the DELETE: %+v, want the first and one reconnection, 200", gs)
	}

	// The deleted id is gone from both lists; the new one is on both.
	for _, r := range cl.replicas {
		waitUnlisted(t, hc, r.adminURL(), sid)
		waitListed(t, hc, r.adminURL(), newSid, "streaming", func(s adminSession) bool { return s.State == "streaming" })
	}

	// Unknown ids: 404.
	for _, id := range []string{randomHex(16), sid} {
		if code, body := deleteSession(t, hc, holder.adminURL(), id); code != http.StatusNotFound {
			t.Errorf("DELETE /mcp_sse_bridge/sessions/%s (unknown) on %s: %d %s, want 404", short8(id), holder.name, code, short(body))
		}
	}

	// ?limit=N bounds the list: with another session open, two are
	// listed, one with limit=1.
	observeStream(t, hc, cl.lb.sseURL())
	for _, r := range cl.replicas {
		deadline := time.Now().Add(promptly)
		for len(listSessions(t, hc, r.adminURL())) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s lists %d session(s) with two open, want 2", r.name, len(listSessions(t, hc, r.adminURL())))
			}
			time.Sleep(50 * time.Millisecond) // polling interval, bounded by the deadline
		}
		if n := len(listSessionsQuery(t, hc, r.adminURL(), "limit=1")); n != 1 {
			t.Errorf("replica %s: GET /mcp_sse_bridge/sessions?limit=1 lists %d sessions, want 1", r.name, n)
		}
	}

	// Counted once, over the two replicas; the two streams are open.
	if v := waitSumMetric(t, hc, cl, "1", func(v float64) bool { return v >= 1 }, "sessions_ended_total", "reason", "deleted"); v != 1 {
		t.Errorf("sessions_ended_total{reason=\"deleted\"} summed over the replicas = %v, want 1", v)
	}
	waitSumMetric(t, hc, cl, "2 (the reconnected stream and the other one)", func(v float64) bool { return v == 2 }, "streams_open")
	waitSumMetric(t, hc, cl, ">= 1 (the upstream session ended)", func(v float64) bool { return v >= 1 }, "upstream_requests_total", "method", "delete")
	for _, r := range cl.replicas {
		checkNoSecrets(t, scrapeMetrics(t, hc, r.adminURL()), []string{sid, newSid})
	}

	// A replica logs the end of the session, with the id's short form.
	var logged []string
	for _, r := range cl.replicas {
		for _, l := range bridgeLogs(r.proc.Output()) {
			if l.msg() == "session ended" && l.str("session") == sid[:8] {
				logged = append(logged, r.name)
				if l.str("reason") != "deleted" {
					t.Errorf("replica %s logged %q with reason %q, want deleted: %s", r.name, l.msg(), l.str("reason"), l.raw)
				}
			}
		}
	}
	if len(logged) != 1 {
		t.Errorf("%d replica(s) (%v) logged \"session ended\" for session %s, want 1", len(logged), logged, sid[:8])
	}

	// The client carries on (not part of the spec: logged only).
	rc.call(t, "after", "echo", map[string]any{"message": "echo-after"}, false)
	kind, rest, ok := awaitResult(rc, "after", callTimeout)
	t.Logf("the client's call after the DELETE: %s %s (answered: %v)", kind, rest, ok)
}

// ---------------------------------------------------------------------------
// Session logs
// ---------------------------------------------------------------------------

// bridgeLogger is the bridge's logger name in Caddy's log.
const bridgeLogger = "http.handlers.mcp_sse_bridge"

// logLine is one JSON line of Caddy's log.
type logLine struct {
	raw    string
	fields map[string]any
}

func (l logLine) msg() string { return l.str("msg") }

func (l logLine) str(k string) string {
	s, _ := l.fields[k].(string)
	return s
}

// num returns a numeric field, and whether it is one.
func (l logLine) num(k string) (float64, bool) {
	v, ok := l.fields[k].(float64)
	return v, ok
}

// caddyLogs parses the JSON lines of Caddy's output.
func caddyLogs(out string) []logLine {
	var ls []logLine
	for _, raw := range strings.Split(out, "\n") {
		raw = strings.TrimSpace(raw)
		if !strings.HasPrefix(raw, "{") {
			continue
		}
		var f map[string]any
		if json.Unmarshal([]byte(raw), &f) == nil {
			ls = append(ls, logLine{raw: raw, fields: f})
		}
	}
	return ls
}

// bridgeLogs are the lines of the bridge's logger.
func bridgeLogs(out string) []logLine {
	var ls []logLine
	for _, l := range caddyLogs(out) {
		if l.str("logger") == bridgeLogger {
			ls = append(ls, l)
		}
	}
	return ls
}

// waitBridgeLog waits for a line of the bridge's logger with msg and
// session, and returns the lines so far that match.
func waitBridgeLog(t testing.TB, p *testenv.Process, msg, session string, timeout time.Duration) []logLine {
	t.Helper()
	var found []logLine
	p.MustWaitUntil(t, fmt.Sprintf("a log line %q for session %s", msg, session), timeout, func(out string) bool {
		found = found[:0]
		for _, l := range bridgeLogs(out) {
			if l.msg() == msg && l.str("session") == session {
				found = append(found, l)
			}
		}
		return len(found) > 0
	})
	return found
}

var shortSessionRe = regexp.MustCompile(`^[0-9a-f]{8}$`)

// TestSessionLogs runs Caddy with its log at DEBUG and a TypeScript SDK
// legacy client that sends `Authorization: Bearer <a distinctive token>`:
// it opens a session, initialises, calls echo twice (with a distinctive
// payload) and closes. The bridge logs, under its logger, one "session
// started" with the session id's first 8 hex digits and caller
// "authenticated", one debug "message" per relayed call (direction, kind,
// method), one "stream ended" with a reason, a duration and the messages it
// delivered, and, once session_ttl has passed, "session ended" with reason
// expired (sessions_ended_total{reason="expired"} is then 1). Every session
// field of the bridge's lines is 8 hex digits; no line of Caddy's output
// holds the token, the full session id or the payload.
func TestSessionLogs(t *testing.T) {
	requireNode(t)
	up := startUpstream(t, specGoStatefulSSE)
	c := startCaddyWith(t, caddyOptions{admin: true, debug: true}, site{body: bridgeBlock(up.url)})[0]
	hc := testenv.MustHTTPClient(t)
	token := "obs-logs-token-" + randomHex(12)
	payload := "obs-logs-payload-" + randomHex(8)

	oc := startObsClient(t, c.sseURL(), "Authorization: Bearer "+token)
	sid := oc.session
	sh := sid[:8]
	const calls = 2
	for i := range calls {
		oc.echo(t, fmt.Sprintf("%s-%d", payload, i))
	}
	oc.quit(t)

	ended := waitBridgeLog(t, c.proc, "stream ended", sh, promptly)
	if len(ended) != 1 {
		t.Errorf("%d \"stream ended\" lines for session %s, want 1", len(ended), sh)
	}
	l := ended[0]
	if l.str("reason") == "" {
		t.Errorf("\"stream ended\" has no reason: %s", l.raw)
	}
	if _, ok := l.fields["duration"]; !ok {
		t.Errorf("\"stream ended\" has no duration: %s", l.raw)
	}
	if n, ok := l.num("messages"); !ok || n < calls+1 {
		t.Errorf("\"stream ended\" has messages %v, want a number >= %d (initialize's answer and the calls'): %s", l.fields["messages"], calls+1, l.raw)
	}
	t.Logf("stream ended: %s", l.raw)

	out := c.proc.Output()
	var started, callMessages, answers int
	for _, l := range bridgeLogs(out) {
		if l.str("session") != sh {
			continue
		}
		switch l.msg() {
		case "session started":
			started++
			if l.str("level") != "info" || l.str("caller") != "authenticated" {
				t.Errorf("\"session started\": level %q, caller %q, want info and authenticated: %s", l.str("level"), l.str("caller"), l.raw)
			}
		case "message":
			if l.str("level") != "debug" {
				t.Errorf("a \"message\" line at level %q, want debug: %s", l.str("level"), l.raw)
			}
			switch {
			case l.str("direction") == "client_to_upstream" && l.str("kind") == "request" && l.str("method") == "tools/call":
				callMessages++
			case l.str("direction") == "upstream_to_client" && l.str("kind") == "response":
				answers++
			}
		}
	}
	if started != 1 {
		t.Errorf("%d \"session started\" lines for session %s, want 1", started, sh)
	}
	if callMessages != calls || answers < calls+1 {
		t.Errorf("debug \"message\" lines for session %s: %d tools/call requests to the upstream (want %d), %d responses to the client (want >= %d)", sh, callMessages, calls, answers, calls+1)
	}

	// After session_ttl (5 s) the released session is reaped.
	gone := waitBridgeLog(t, c.proc, "session ended", sh, 20*time.Second)
	if g := gone[0]; g.str("reason") != "expired" || g.fields["duration"] == nil {
		t.Errorf("\"session ended\": reason %q, duration %v, want expired and a duration: %s", g.str("reason"), g.fields["duration"], g.raw)
	} else if n, ok := g.num("delivered"); !ok || n < calls+1 {
		t.Errorf("\"session ended\": delivered %v, want a number >= %d: %s", g.fields["delivered"], calls+1, g.raw)
	}
	waitMetrics(t, hc, c.admin, "after the session expired", promptly, func(c *metricChecks) {
		c.eq(1, "sessions_ended_total", "reason", "expired")
		c.eq(1, "sessions_ended_total")
	})

	// Short ids only; no token, full id or payload anywhere.
	out = c.proc.Output()
	for _, l := range bridgeLogs(out) {
		if s, ok := l.fields["session"]; ok {
			if str, _ := s.(string); !shortSessionRe.MatchString(str) {
				t.Errorf("a line of the bridge has session %v, want 8 hex digits: %s", s, l.raw)
			}
		}
	}
	checkLogHoldsNone(t, out, map[string]string{"the token": token, "the full session id": sid, "a call's payload": payload})
}

// checkLogHoldsNone checks that no line of a process's output holds any of
// secrets (by what they are).
func checkLogHoldsNone(t testing.TB, out string, secrets map[string]string) {
	t.Helper()
	for what, secret := range secrets {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, secret) {
				t.Errorf("Caddy's log holds %s: %s", what, line)
			}
		}
	}
}
