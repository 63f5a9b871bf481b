package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// TestHostileRequests sends hostile and malformed requests to a real Caddy
// running the bridge, one subtest each. Every case asserts its status (and
// the body's words or the JSON-RPC answer where that matters) as
// docs/design.md §9 has it, and that nothing of it reached the upstream:
// Caddy talks to the go-sdk demo upstream through a recording proxy, every
// hostile request carries a unique marker (in its body, and in its headers'
// hostile values), and the proxy must never see a marker of a request that
// was refused, nor any hostile header value at all. Two legitimate sessions
// (each with its own credentials) run a real initialize and tools/call round
// trip before the first group, after every group and while a slowloris body
// trickles in; their answers must be theirs and nothing else may reach
// their streams. A probe session, whose credentials the hostile requests
// use, receives the answers of the malformed-but-valid messages (odd ids),
// and only those.
func TestHostileRequests(t *testing.T) {
	start := time.Now()
	up := startUpstream(t, specGoStatefulSSE)
	u, err := url.Parse(up.url)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t, u.Scheme+"://"+u.Host)
	cd := startCaddy(t, rec.srv.URL+"/mcp")
	e := &hostileEnv{
		cd:     cd,
		host:   strings.TrimPrefix(cd.base, "http://"),
		hc:     testenv.MustHTTPClient(t),
		rec:    rec,
		vetted: map[*recPost]bool{},
	}
	e.legit = []*legitSession{
		{name: "alice", hdr: http.Header{"Authorization": {"Bearer legit-alice-token"}}},
		{name: "bob", hdr: http.Header{"Authorization": {"Bearer legit-bob-token"}}},
	}
	for _, l := range e.legit {
		l.rs = openRawSession(t, e.hc, cd.base, "/sse", l.hdr)
		l.id = sessionOf(t, l.rs.endpoint)
	}
	e.probe = openRawSession(t, e.hc, cd.base, "/sse", probeAuth)
	e.probeID = sessionOf(t, e.probe.endpoint)
	initRaw(t, e.probe, "probe-setup")
	e.resume = openRawSession(t, e.hc, cd.base, "/sse", resumeAuth)
	e.resumeID = sessionOf(t, e.resume.endpoint)
	initRaw(t, e.resume, "probe-resume-setup")

	groups := e.groups()
	total := 0
	for _, g := range groups {
		total += len(g.cases)
	}
	if total < 60 {
		t.Fatalf("only %d cases", total)
	}
	t.Run("legitimate sessions before the first group", func(t *testing.T) { e.checkpoint(t, "start") })
	n := 0
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, c := range g.cases {
				n++
				marker := fmt.Sprintf("hostile-%03d", n)
				t.Run(c.name, func(t *testing.T) { e.runCase(t, c, marker) })
			}
		})
		t.Run("legitimate sessions after "+g.name, func(t *testing.T) { e.checkpoint(t, "after "+g.name) })
	}
	t.Run("nothing refused ever reached the upstream", func(t *testing.T) { e.finalCheck(t) })
	select {
	case <-cd.proc.Done():
		t.Fatalf("Caddy exited: %v", cd.proc.Err())
	default:
	}
	t.Logf("%d hostile cases in %d groups, %v", total, len(groups), time.Since(start).Round(time.Millisecond))
}

var (
	probeAuth  = http.Header{"Authorization": {"Bearer probe-token"}}
	resumeAuth = http.Header{"Authorization": {"Bearer probe-resume-token"}}
)

// hostileEnv is the running Caddy, the recorder in front of the upstream,
// and the sessions the cases aim at or must leave alone.
type hostileEnv struct {
	cd   *caddy
	host string // 127.0.0.1:PORT of Caddy
	hc   *http.Client
	rec  *recorder

	legit    []*legitSession
	probe    *rawSession // the hostile requests' own session (probeAuth)
	probeID  string
	resume   *rawSession // a session resumed past its end (resumeAuth)
	resumeID string
	fences   int

	// watchers are event streams hostile GETs opened: nothing may arrive on
	// them but their endpoint event.
	watchers []watched
	// refused holds the markers of the requests that must never reach the
	// upstream.
	refused []string
	// vetted holds the upstream POSTs a case accounted for.
	vetted map[*recPost]bool
	// checked counts the upstream POSTs the checkpoints looked at;
	// headersSeen the requests whose headers were looked at.
	checked     int
	headersSeen struct{ posts, streams int }
}

type watched struct {
	name   string
	stream *rawStream
}

// legitSession is a legacy client minding its own business.
type legitSession struct {
	name   string
	hdr    http.Header
	rs     *rawSession
	id     string // its bridge session
	rounds int
	// upstream is the upstream session id its last round trip used.
	upstream string
}

// hostileGroup is a set of cases run between two checkpoints.
type hostileGroup struct {
	name  string
	cases []hostileCase
}

// hostileCase sends one hostile request and asserts the answer. do returns
// how many upstream POSTs must carry the marker (0: the request was refused
// and nothing of it may reach the upstream) and how many other upstream
// POSTs it made the bridge send and checked itself.
type hostileCase struct {
	name string
	do   func(t *testing.T, m string) (marked, extra int)
}

// runCase runs one case and checks what reached the upstream meanwhile.
func (e *hostileEnv) runCase(t *testing.T, c hostileCase, m string) {
	before := e.postCount()
	marked, extra := c.do(t, m)
	if marked > 0 {
		e.rec.waitFor(t, fmt.Sprintf("%d upstream POSTs carrying %s", marked, m), promptly, func() bool {
			n := 0
			for _, p := range e.rec.posts[before:] {
				if bytes.Contains(p.body, []byte(m)) {
					n++
				}
			}
			return n >= marked
		})
	} else {
		e.refused = append(e.refused, m)
	}
	var gotMarked, other int
	for _, p := range e.postsSince(before) {
		switch {
		case bytes.Contains(p.body, []byte(m)):
			gotMarked++
		case isOurs(p):
			continue // a legitimate session's or the probe's own traffic
		default:
			other++
			if other > extra {
				t.Errorf("an upstream POST nobody accounts for: %s %q", p.header.Get("Mcp-Session-Id"), short(string(p.body)))
			}
		}
		e.vetted[p] = true
	}
	if gotMarked != marked {
		t.Errorf("%d upstream POSTs carried the request's marker %s, want %d", gotMarked, m, marked)
	}
	if other < extra {
		t.Errorf("%d other upstream POSTs, want %d", other, extra)
	}
	e.checkHeaders(t)
}

// isOurs reports whether an upstream POST belongs to a legitimate session or
// to the probe's own setup and fences.
func isOurs(p *recPost) bool {
	return bytes.Contains(p.body, []byte("legit-")) || bytes.Contains(p.body, []byte("probe-")) ||
		bytes.Contains(p.body, []byte(`"id":"mcp-sse-bridge-discover"`)) // the bridge's own, at a legitimate initialize
}

func (e *hostileEnv) postCount() int {
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	return len(e.rec.posts)
}

func (e *hostileEnv) postsSince(i int) []*recPost {
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	return append([]*recPost(nil), e.rec.posts[i:]...)
}

// checkHeaders fails if a request the upstream got since the last look
// carries a hostile value in a header: hostile header values always hold a
// marker.
func (e *hostileEnv) checkHeaders(t *testing.T) {
	t.Helper()
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	check := func(kind string, h http.Header) {
		for k, vs := range h {
			for _, v := range vs {
				if strings.Contains(v, "hostile-") {
					t.Errorf("an upstream %s carried a hostile header value: %s: %q", kind, k, short(v))
				}
			}
		}
	}
	for _, p := range e.rec.posts[e.headersSeen.posts:] {
		check("POST", p.header)
	}
	for _, s := range e.rec.streams[e.headersSeen.streams:] {
		check("GET", s.header)
	}
	e.headersSeen.posts, e.headersSeen.streams = len(e.rec.posts), len(e.rec.streams)
}

// checkpoint makes both legitimate sessions run a real initialize and
// tools/call round trip, fences the probe's stream, checks that the hostile
// streams got nothing, and that every upstream POST since the last
// checkpoint is accounted for.
func (e *hostileEnv) checkpoint(t *testing.T, label string) {
	for _, l := range e.legit {
		l.roundTrip(t, e.rec, label)
	}
	e.fence(t)
	for _, w := range e.watchers {
		select {
		case ev := <-w.stream.events:
			t.Errorf("the stream a hostile GET opened (%s) got an event: %s %q", w.name, ev.Name, short(string(ev.Data)))
		default:
		}
	}
	// Every upstream POST since the last checkpoint that no case accounted
	// for (one that came late, say) must be a legitimate session's or the
	// probe's own, and carry no refused request's marker.
	posts := e.postsSince(e.checked)
	e.checked += len(posts)
	for _, p := range posts {
		if e.vetted[p] {
			continue
		}
		if !isOurs(p) {
			t.Errorf("an upstream POST nobody accounts for: %s %q", p.header.Get("Mcp-Session-Id"), short(string(p.body)))
		}
		for _, m := range e.refused {
			if bytes.Contains(p.body, []byte(m)) {
				t.Errorf("the refused request %s reached the upstream: %q", m, short(string(p.body)))
			}
		}
	}
	e.checkHeaders(t)
}

func (e *hostileEnv) finalCheck(t *testing.T) {
	e.checkpoint(t, "the end")
	e.rec.mu.Lock()
	n := len(e.rec.posts)
	e.rec.mu.Unlock()
	t.Logf("the upstream got %d POSTs in all; %d requests were refused without a trace upstream", n, len(e.refused))
}

// fence sends a ping on the probe's session and waits for its answer: the
// probe's stream must have carried nothing else since the last fence but
// the answers the cases waited for.
func (e *hostileEnv) fence(t *testing.T) {
	t.Helper()
	e.fences++
	id := fmt.Sprintf(`"probe-fence-%d"`, e.fences)
	res := e.probe.request(t, id, "ping", fmt.Sprintf(`{"_meta":{"marker":%s}}`, id))
	if !bytes.Contains(res, []byte(`"result":{}`)) {
		t.Errorf("the probe's fence ping: %s", res)
	}
	if len(e.probe.stream.other) > 0 {
		t.Errorf("the probe's stream carried messages nobody asked for: %q", e.probe.stream.other)
		e.probe.stream.other = nil
	}
}

// roundTrip initialises the session again (a real upstream initialize) and
// calls echo; both answers must be its own, and nothing else may reach its
// stream.
func (l *legitSession) roundTrip(t *testing.T, rec *recorder, label string) {
	t.Helper()
	l.rounds++
	m := fmt.Sprintf("legit-%s-%d", l.name, l.rounds)
	initRaw(t, l.rs, m)
	msg := fmt.Sprintf("%s, %s", m, label)
	res := l.rs.request(t, fmt.Sprintf(`"%s-call"`, m), "tools/call", fmt.Sprintf(`{"name":"echo","arguments":{"message":%q}}`, msg))
	if got := echoResult(t, res); got != msg {
		t.Errorf("%s: echo %q answered %q", l.name, msg, got)
	}
	// The call went upstream (recorded before it was proxied) on the
	// session's new upstream session.
	rec.mu.Lock()
	for _, p := range rec.posts {
		if bytes.Contains(p.body, []byte(msg)) {
			l.upstream = p.header.Get("Mcp-Session-Id")
		}
	}
	rec.mu.Unlock()
	if l.upstream == "" {
		t.Errorf("%s: no upstream POST of the call with an Mcp-Session-Id", l.name)
	}
	if len(l.rs.stream.other) > 0 {
		t.Errorf("%s's stream carried messages that are not its answers: %q", l.name, l.rs.stream.other)
		l.rs.stream.other = nil
	}
}

// initRaw runs the initialize handshake on a raw session, with the marker in
// both messages so that the recorder can tell them apart.
func initRaw(t *testing.T, rs *rawSession, m string) {
	t.Helper()
	res := rs.request(t, fmt.Sprintf(`"%s-init"`, m), "initialize",
		fmt.Sprintf(`{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":%q,"version":"0"}}`, m))
	var init struct {
		Result *struct {
			ProtocolVersion string `json:"protocolVersion"`
			ServerInfo      struct {
				Name string `json:"name"`
			} `json:"serverInfo"`
		} `json:"result"`
	}
	if err := json.Unmarshal(res, &init); err != nil || init.Result == nil || init.Result.ProtocolVersion == "" || init.Result.ServerInfo.Name != "mcp-demo-upstream" {
		t.Fatalf("%s: initialize answered %s", m, short(string(res)))
	}
	body := fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta":{"marker":%q}}}`, m)
	if code, resp := rs.post(t, body); code != http.StatusAccepted {
		t.Fatalf("%s: notifications/initialized: %d %s", m, code, resp)
	}
}

// echoResult returns the text of an echo call's result, or fails.
func echoResult(t *testing.T, msg []byte) string {
	t.Helper()
	var res struct {
		Result *struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"result"`
	}
	if err := json.Unmarshal(msg, &res); err != nil || res.Result == nil || len(res.Result.Content) != 1 {
		t.Fatalf("not an echo result: %s", short(string(msg)))
	}
	return res.Result.Content[0].Text
}

// sessionOf returns the session id an endpoint event names.
func sessionOf(t testing.TB, endpoint string) string {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	id := u.Query().Get("sessionId")
	if len(id) != 32 {
		t.Fatalf("endpoint %q does not name a 32-digit session", endpoint)
	}
	return id
}

// ---------------------------------------------------------------------------
// Sending requests
// ---------------------------------------------------------------------------

// hreq is one request sent with net/http.
type hreq struct {
	method, path, ctype, body string
	hdr                       http.Header // a nil value deletes the field
}

type hresp struct {
	status int
	header http.Header
	body   string // for an event stream: its first event
}

// send sends r to Caddy and returns the answer.
func (e *hostileEnv) send(t *testing.T, r hreq) hresp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, e.cd.base+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if r.ctype != "" {
		req.Header.Set("Content-Type", r.ctype)
	}
	for k, vs := range r.hdr {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, short(r.path), err)
	}
	defer resp.Body.Close()
	return hresp{resp.StatusCode, resp.Header, readAnswer(resp)}
}

// readAnswer reads a response body, or the first event of an event stream.
func readAnswer(resp *http.Response) string {
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		ev, err := bridge.NewEventReader(resp.Body, 1<<20).Next()
		if err != nil {
			return "event stream: " + err.Error()
		}
		return "event " + ev.Name + ": " + string(ev.Data)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b)
}

// expect checks a status and, if want is not empty, words of the body.
func expect(t *testing.T, got hresp, status int, want string) {
	t.Helper()
	if got.status != status {
		t.Errorf("status %d %q, want %d", got.status, short(got.body), status)
	} else if want != "" && !strings.Contains(got.body, want) {
		t.Errorf("body %q, want it to contain %q", short(got.body), want)
	}
}

// rawExchange writes data on a new connection (from another goroutine, so
// that an early answer is read while a large body is still going out),
// half-closes it if asked, and reads one answer.
func (e *hostileEnv) rawExchange(t *testing.T, data []byte, halfClose bool) hresp {
	t.Helper()
	conn, br := e.rawSend(t, data, halfClose)
	defer conn.Close()
	return readRawAnswer(t, conn, br)
}

// rawSend dials Caddy and writes data; the caller reads the answers.
func (e *hostileEnv) rawSend(t *testing.T, data []byte, halfClose bool) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	written := make(chan struct{})
	go func() {
		defer close(written)
		if _, err := conn.Write(data); err == nil && halfClose {
			_ = conn.(*net.TCPConn).CloseWrite()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-written
	})
	return conn, bufio.NewReader(conn)
}

func readRawAnswer(t *testing.T, conn net.Conn, br *bufio.Reader) hresp {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	return hresp{resp.StatusCode, resp.Header, readAnswer(resp)}
}

// rawRequest builds a request by hand: the request line, Host, the given
// header lines (sent exactly as they are, CR, LF and NUL included), and body.
func (e *hostileEnv) rawRequest(method, target string, lines []string, body string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, e.host)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return []byte(b.String())
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

// call is a valid tools/call of echo carrying the marker.
func call(id, m string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"echo","arguments":{"message":%q}}}`, id, m)
}

// rawCall is call with the message's bytes as they are, not escaped.
func rawCall(m, message string) string {
	return `{"jsonrpc":"2.0","id":"` + m + `","method":"tools/call","params":{"name":"echo","arguments":{"message":"` + message + `"}}}`
}

// notification is a valid notification carrying the marker: it gets no
// answer on the stream, should it be forwarded by mistake.
func notification(m string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":%q,"reason":%q}}`, m+"-none", m)
}

func (e *hostileEnv) probePath() string { return "/messages?sessionId=" + e.probeID }

// postProbe is a POST of body to the probe's session with its credentials.
func (e *hostileEnv) postProbe(body string) hreq {
	return hreq{method: http.MethodPost, path: e.probePath(), ctype: "application/json", body: body, hdr: probeAuth}
}

// refused is a case whose request must get status with words of want in the
// body, and of which nothing may reach the upstream.
func (e *hostileEnv) refusedCase(name string, build func(m string) hreq, status int, want string) hostileCase {
	return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
		expect(t, e.send(t, build(m)), status, want)
		return 0, 0
	}}
}

// rawRefused is refusedCase for a request written by hand.
func (e *hostileEnv) rawRefused(name string, build func(m string) []byte, halfClose bool, status int, want string) hostileCase {
	return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
		expect(t, e.rawExchange(t, build(m), halfClose), status, want)
		return 0, 0
	}}
}

func with(h http.Header, kv ...string) http.Header {
	out := h.Clone()
	if out == nil {
		out = http.Header{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out.Add(kv[i], kv[i+1])
	}
	return out
}

func (e *hostileEnv) groups() []hostileGroup {
	return []hostileGroup{
		{"methods", e.methodCases()},
		{"session ids", e.sessionIDCases()},
		{"bodies", e.bodyCases()},
		{"sizes and framing", e.sizeCases()},
		{"content type, origin and credentials", e.gateCases()},
		{"odd ids and batches", e.idCases()},
		{"headers", e.headerCases()},
	}
}

// methodCases: other methods on either endpoint are 405 with Allow, and do
// nothing (DELETE on the message endpoint ends no session).
func (e *hostileEnv) methodCases() []hostileCase {
	var cs []hostileCase
	for _, c := range []struct{ method, path, allow, words string }{
		{http.MethodPut, "/sse", "GET, OPTIONS", "takes GET"},
		{http.MethodDelete, "/sse", "GET, OPTIONS", "takes GET"},
		{http.MethodPatch, "/sse", "GET, OPTIONS", "takes GET"},
		{http.MethodPost, "/sse", "GET, OPTIONS", "takes GET"},
		{http.MethodPut, "/messages", "POST, OPTIONS", "takes POST"},
		{http.MethodDelete, "/messages", "POST, OPTIONS", "takes POST"},
		{http.MethodPatch, "/messages", "POST, OPTIONS", "takes POST"},
		{http.MethodGet, "/messages", "POST, OPTIONS", "takes POST"},
	} {
		cs = append(cs, hostileCase{name: c.method + " " + c.path, do: func(t *testing.T, m string) (int, int) {
			path := c.path
			if path == "/messages" {
				path = e.probePath()
			}
			body := ""
			if c.method != http.MethodGet {
				body = call(`"`+m+`"`, m)
			}
			got := e.send(t, hreq{method: c.method, path: path, ctype: "application/json", body: body, hdr: probeAuth})
			expect(t, got, http.StatusMethodNotAllowed, c.words)
			if allow := got.header.Get("Allow"); allow != c.allow {
				t.Errorf("Allow = %q, want %q", allow, c.allow)
			}
			return 0, 0
		}})
	}
	// TRACE would echo the request, credentials included.
	cs = append(cs, hostileCase{name: "TRACE /messages does not echo the credentials", do: func(t *testing.T, m string) (int, int) {
		got := e.send(t, hreq{method: http.MethodTrace, path: e.probePath(), hdr: with(probeAuth, "X-Marker", m)})
		expect(t, got, http.StatusMethodNotAllowed, "takes POST")
		if strings.Contains(got.body, "probe-token") || strings.Contains(got.body, m) {
			t.Errorf("TRACE echoed the request: %q", got.body)
		}
		return 0, 0
	}})
	return cs
}

// sessionIDCases: a POST needs one sessionId of the bridge's form that
// belongs to its caller (§9: 400 without one, 404 otherwise).
func (e *hostileEnv) sessionIDCases() []hostileCase {
	post := func(query string, hdr http.Header) func(m string) hreq {
		return func(m string) hreq {
			return hreq{method: http.MethodPost, path: "/messages" + query, ctype: "application/json", body: call(`"`+m+`"`, m), hdr: hdr}
		}
	}
	id := e.probeID
	cs := []hostileCase{
		e.refusedCase("no sessionId", post("", probeAuth), http.StatusBadRequest, "missing sessionId"),
		e.refusedCase("empty sessionId", post("?sessionId=", probeAuth), http.StatusBadRequest, "missing sessionId"),
		e.refusedCase("sessionId spelt SessionId", post("?SessionId="+id, probeAuth), http.StatusBadRequest, "missing sessionId"),
		// A sessionId sent twice: which value counts would be up to whoever
		// reads the URL (a proxy in front may authorise the last one), so
		// like Authorization sent twice it is refused, nothing forwarded.
		e.refusedCase("sessionId twice (own, then another caller's)", func(m string) hreq {
			return hreq{method: http.MethodPost, path: "/messages?sessionId=" + id + "&sessionId=" + e.legit[0].id,
				ctype: "application/json", body: notification(m), hdr: probeAuth}
		}, http.StatusBadRequest, "sessionId must be sent once"),
		e.refusedCase("sessionId longer than Caddy's header limit", post("?sessionId="+strings.Repeat("a", 40_000), probeAuth), http.StatusRequestHeaderFieldsTooLarge, ""),
		e.refusedCase("sessionId of 10,000 characters", post("?sessionId="+strings.Repeat("a", 10_000), probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId of 64 hex digits (own id twice)", post("?sessionId="+id+id, probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId of 31 hex digits (own id cut short)", post("?sessionId="+id[:31], probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("non-hex sessionId of 32 characters", post("?sessionId="+id[:31]+"g", probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("upper-case sessionId (own id)", post("?sessionId="+strings.ToUpper(id), probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId with a percent-encoded CRLF", post("?sessionId="+id+"%0d%0aX-Injected:%20yes", probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId with a percent-encoded NUL", post("?sessionId="+id[:16]+"%00"+id[17:], probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId with a percent-encoded leading space", post("?sessionId=%20"+id, probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("sessionId as a path traversal", post("?sessionId=..%2F..%2F"+id, probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("another caller's session: other credentials", post("?sessionId="+id, http.Header{"Authorization": {"Bearer mallory-token"}}), http.StatusNotFound, "session not found"),
		e.refusedCase("another caller's session: no credentials", post("?sessionId="+id, http.Header{"Authorization": nil}), http.StatusNotFound, "session not found"),
		e.refusedCase("another caller's session: a legitimate session's id", post("?sessionId="+e.legit[0].id, probeAuth), http.StatusNotFound, "session not found"),
		e.refusedCase("another caller's session: credentials with a suffix", post("?sessionId="+id, http.Header{"Authorization": {"Bearer probe-token2"}}), http.StatusNotFound, "session not found"),
	}
	return cs
}

// bodyCases: a body that is not JSON, not UTF-8 or not a JSON-RPC message is
// 400 (§9), nothing forwarded.
func (e *hostileEnv) bodyCases() []hostileCase {
	bad := func(name string, body func(m string) string, want string) hostileCase {
		return e.refusedCase(name, func(m string) hreq { return e.postProbe(body(m)) }, http.StatusBadRequest, want)
	}
	const (
		notJSON = "invalid message: body is not valid JSON"
		notUTF8 = "invalid message: body is not valid UTF-8"
		notRPC  = "invalid message: "
	)
	deep := func(open, close string, n int) string { return strings.Repeat(open, n) + strings.Repeat(close, n) }
	return []hostileCase{
		bad("not JSON", func(m string) string { return "hello " + m }, notJSON),
		// RFC 8259 §4 leaves duplicate member names to the receiver: an
		// upstream that keeps the first id and method would run another
		// request than the one the bridge tracks. Refused.
		bad("duplicate id and method members", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":"%s-first","method":"ping","id":"%s-last","method":"tools/call","params":{"name":"echo","arguments":{"message":%q}}}`, m, m, m)
		}, "sent twice"),
		bad("truncated JSON", func(m string) string { c := call(`"`+m+`"`, m); return c[:len(c)-2] }, notJSON),
		bad("trailing data after the message", func(m string) string { return call(`"`+m+`"`, m) + ` {"x":1}` }, notJSON),
		bad("two messages back to back", func(m string) string { return call(`"`+m+`-1"`, m) + call(`"`+m+`-2"`, m) }, notJSON),
		bad("empty body", func(string) string { return "" }, notJSON),
		bad("byte order mark", func(m string) string { return "\xef\xbb\xbf" + call(`"`+m+`"`, m) }, notJSON),
		bad("UTF-16 body", func(m string) string { return utf16LE(call(`"`+m+`"`, m)) }, notJSON),
		bad("invalid UTF-8 inside a JSON string", func(m string) string { return rawCall(m, m+"\xff\xfe") }, notUTF8),
		bad("overlong UTF-8 encoding inside a JSON string", func(m string) string { return rawCall(m, m+"\xc0\xaf") }, notUTF8),
		bad("UTF-8-encoded surrogate inside a JSON string", func(m string) string { return rawCall(m, m+"\xed\xa0\x80") }, notUTF8),
		bad("invalid UTF-8 in a member name", func(m string) string {
			return `{"jsonrpc":"2.0","id":"` + m + `","method":"ping","params":{"k` + "\xff" + `":"` + m + `"}}`
		}, notUTF8),
		bad("nesting 100,000 arrays deep in params", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":"ping","params":{"deep":%s}}`, m, deep("[", "]", 100_000))
		}, notJSON),
		bad("nesting 100,000 objects deep as the body", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":"ping","params":`, m) + deep(`{"a":`, "}", 100_000) + "}"
		}, notJSON),
		bad("nesting 100,000 batches deep", func(m string) string { return deep("[", "]", 100_000) + m }, notJSON),
		bad("missing jsonrpc", func(m string) string { return fmt.Sprintf(`{"id":%q,"method":"ping"}`, m) }, `jsonrpc member must be "2.0"`),
		bad("jsonrpc 1.0", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"1.0","id":%q,"method":"ping"}`, m) }, `jsonrpc member must be "2.0"`),
		bad("jsonrpc as a number", func(m string) string { return fmt.Sprintf(`{"jsonrpc":2.0,"id":%q,"method":"ping"}`, m) }, `jsonrpc member must be "2.0"`),
		bad("method not a string", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":42}`, m) }, "method must be a non-empty string"),
		bad("empty method", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":""}`, m) }, "method must be a non-empty string"),
		bad("null id on a request", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":null,"method":"ping","params":{"m":%q}}`, m)
		}, "id must be a string or a number"),
		bad("object id", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","id":{"m":%q},"method":"ping"}`, m) }, "id must be a string or a number"),
		bad("boolean id", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":true,"method":"ping","params":{"m":%q}}`, m)
		}, "id must be a string or a number"),
		bad("array id", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","id":[%q],"method":"ping"}`, m) }, "id must be a string or a number"),
		bad("method and result together", func(m string) string {
			return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":"ping","result":{}}`, m)
		}, "cannot have both"),
		bad("response without an id", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","result":{"m":%q}}`, m) }, "a response needs an id"),
		bad("neither method nor result", func(m string) string { return fmt.Sprintf(`{"jsonrpc":"2.0","id":%q}`, m) }, "not a JSON-RPC request"),
		bad("a JSON string", func(m string) string { return fmt.Sprintf("%q", m) }, "not a JSON object"),
		bad("batch: empty", func(string) string { return "[]" }, "empty batch"),
		bad("batch: a valid request and an invalid member", func(m string) string {
			return "[" + call(`"`+m+`"`, m) + fmt.Sprintf(`,{"jsonrpc":"1.0","id":"%s-2","method":"ping"}]`, m)
		}, notRPC),
		bad("batch: numbers", func(m string) string { return fmt.Sprintf(`[1,2,%q]`, m) }, "not a JSON object"),
		bad("batch: a batch inside a batch", func(m string) string { return "[[" + call(`"`+m+`"`, m) + "]]" }, "not a JSON object"),
	}
}

// utf16LE encodes ASCII s as UTF-16LE.
func utf16LE(s string) string {
	var b strings.Builder
	for i := range len(s) {
		b.WriteByte(s[i])
		b.WriteByte(0)
	}
	return b.String()
}

// sizeCases: bodies over max_message_size (4 MiB by default) are 413;
// bodies shorter than announced are 400 (§9); framing errors are refused by
// the HTTP server; nothing is forwarded, and nothing hangs the server.
func (e *hostileEnv) sizeCases() []hostileCase {
	big := func(m string, size int) string {
		head := fmt.Sprintf(`{"jsonrpc":"2.0","id":%q,"method":"tools/call","params":{"name":"echo","arguments":{"message":"`, m)
		return head + strings.Repeat("x", size-len(head)-4) + `"}}}`
	}
	probeLines := []string{"Authorization: Bearer probe-token", "Content-Type: application/json"}
	return []hostileCase{
		e.rawRefused("10 MiB body", func(m string) []byte {
			return e.rawRequest(http.MethodPost, e.probePath(), probeLines, big(m, 10<<20))
		}, false, http.StatusRequestEntityTooLarge, "larger than max_message_size"),
		e.rawRefused("batch over max_message_size", func(m string) []byte {
			items := make([]string, 0, 70)
			for i := range 70 { // 70 × 64 KiB > 4 MiB
				items = append(items, call(fmt.Sprintf(`"%s-%d"`, m, i), m+strings.Repeat("y", 64<<10)))
			}
			return e.rawRequest(http.MethodPost, e.probePath(), probeLines, "["+strings.Join(items, ",")+"]")
		}, false, http.StatusRequestEntityTooLarge, "larger than max_message_size"),
		e.rawRefused("chunked body over max_message_size", func(m string) []byte {
			body := big(m, 5<<20)
			lines := append(probeLines[:2:2], "Transfer-Encoding: chunked")
			var b bytes.Buffer
			b.Write(e.rawRequest(http.MethodPost, e.probePath(), lines, ""))
			for chunk := range slices.Chunk([]byte(body), 64<<10) {
				fmt.Fprintf(&b, "%x\r\n%s\r\n", len(chunk), chunk)
			}
			b.WriteString("0\r\n\r\n")
			return b.Bytes()
		}, false, http.StatusRequestEntityTooLarge, "larger than max_message_size"),
		{name: "initialize over 64 KiB: a JSON-RPC error, nothing upstream, the session as it was", do: func(t *testing.T, m string) (int, int) {
			res := e.probe.request(t, `"`+m+`"`, "initialize", fmt.Sprintf(`{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":%q,"version":"0"}}`, m+strings.Repeat("n", 64<<10)))
			if !bytes.Contains(res, []byte(`"code":-32602`)) || !bytes.Contains(res, []byte("initialize larger than")) {
				t.Errorf("answered %s, want invalid params naming the bound", short(string(res)))
			}
			return 0, 0
		}},
		e.rawRefused("body shorter than its Content-Length (client half-closes)", func(m string) []byte {
			body := call(`"`+m+`"`, m)
			lines := append(probeLines[:2:2], fmt.Sprintf("Content-Length: %d", len(body)+40))
			return append(e.rawRequest(http.MethodPost, e.probePath(), lines, ""), body...)
		}, true, http.StatusBadRequest, "reading body"),
		{name: "lying Content-Length: 10 MiB announced, 200 bytes sent, then closed", do: func(t *testing.T, m string) (int, int) {
			body := call(`"`+m+`"`, m+strings.Repeat("z", 100))
			lines := append(probeLines[:2:2], fmt.Sprintf("Content-Length: %d", 10<<20))
			got := e.rawExchange(t, append(e.rawRequest(http.MethodPost, e.probePath(), lines, ""), body...), true)
			// Both rows of §9 apply: shorter than its Content-Length (400),
			// and announced over max_message_size (413).
			if got.status != http.StatusBadRequest && got.status != http.StatusRequestEntityTooLarge {
				t.Errorf("status %d %q, want 400 or 413", got.status, short(got.body))
			}
			t.Logf("answered %d %q", got.status, strings.TrimSpace(got.body))
			return 0, 0
		}},
		{name: "slowloris: a body trickled one byte a second", do: e.slowloris},
		e.rawRefused("two different Content-Length fields", func(m string) []byte {
			body := call(`"`+m+`"`, m)
			lines := append(probeLines[:2:2], fmt.Sprintf("Content-Length: %d", len(body)), fmt.Sprintf("Content-Length: %d", len(body)-1))
			return append(e.rawRequest(http.MethodPost, e.probePath(), lines, ""), body...)
		}, false, http.StatusBadRequest, ""),
		{name: "Content-Length with chunked Transfer-Encoding, smuggling a second request", do: e.smuggle},
		// Caddy's own limit (16 KiB by default) answers before the bridge.
		e.rawRefused("header block of 1 MiB", func(m string) []byte {
			lines := append(probeLines[:2:2], "X-Padding: "+m+strings.Repeat("p", 1<<20))
			return e.rawRequest(http.MethodPost, e.probePath(), lines, call(`"`+m+`"`, m))
		}, false, http.StatusRequestHeaderFieldsTooLarge, ""),
	}
}

// slowloris trickles a body one byte a second for 3 s, while both
// legitimate sessions run a round trip after every byte; then the client
// half-closes and the incomplete body is refused. The harness's Caddyfile
// sets no read_body timeout and Caddy has none by default (only read_header,
// 1 min), so this test's own bound ends the trickle, and the server must
// neither crash nor stall the other sessions meanwhile.
func (e *hostileEnv) slowloris(t *testing.T, m string) (int, int) {
	body := call(`"`+m+`"`, m)
	head := e.rawRequest(http.MethodPost, e.probePath(),
		[]string{"Authorization: Bearer probe-token", "Content-Type: application/json", fmt.Sprintf("Content-Length: %d", len(body))}, "")
	conn, err := net.DialTimeout("tcp", e.host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(head); err != nil {
		t.Fatal(err)
	}
	const trickled = 4
	sent := make(chan error, trickled)
	go func() {
		defer close(sent)
		tick := time.NewTicker(time.Second) // the attacker's pace, not a wait
		defer tick.Stop()
		for i := range trickled {
			if i > 0 {
				<-tick.C
			}
			_, err := conn.Write([]byte{body[i]})
			sent <- err
			if err != nil {
				return
			}
		}
	}()
	// After each byte, while the body is still incomplete, both
	// legitimate sessions run a round trip.
	for i := range trickled {
		if err, ok := <-sent; !ok || err != nil {
			t.Fatalf("the server dropped the trickling connection after %d bytes: %v", i, err)
		}
		for _, l := range e.legit {
			l.roundTrip(t, e.rec, fmt.Sprintf("during the slowloris, after %d bytes", i+1))
		}
	}
	<-sent // closed once the trickle is over
	select {
	case <-e.cd.proc.Done():
		t.Fatalf("Caddy exited: %v", e.cd.proc.Err())
	default:
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	got := readRawAnswer(t, conn, bufio.NewReader(conn))
	expect(t, got, http.StatusBadRequest, fmt.Sprintf("body ended after %d of %d bytes", trickled, len(body)))
	return 0, 0
}

// smuggle sends Content-Length and Transfer-Encoding: chunked together (RFC
// 9112 §6.3: the chunked framing wins, or the server refuses), with a second
// request after the chunked body that aims at a legitimate session. The
// first is served by its chunked framing or refused; the second, if the
// connection stays open, is an ordinary request of the probe's caller to
// another caller's session: 404, nothing forwarded.
func (e *hostileEnv) smuggle(t *testing.T, m string) (int, int) {
	first := call(`"`+m+`-te"`, m)
	second := call(`"`+m+`-smuggled"`, m)
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer probe-token\r\nContent-Type: application/json\r\n"+
		"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", e.probePath(), e.host, len(first), first)
	b.Write(e.rawRequest(http.MethodPost, "/messages?sessionId="+e.legit[1].id,
		[]string{"Authorization: Bearer probe-token", "Content-Type: application/json"}, second))
	conn, br := e.rawSend(t, []byte(b.String()), false)
	got := readRawAnswer(t, conn, br)
	marked := 0
	switch got.status {
	case http.StatusAccepted:
		marked = 1
		res := e.probe.stream.message(t, `"`+m+`-te"`, callTimeout)
		if text := echoResult(t, res); text != m {
			t.Errorf("the chunked request's answer: %q, want %q", text, m)
		}
	case http.StatusBadRequest:
	default:
		t.Errorf("status %d %q, want 202 (chunked framing) or 400", got.status, short(got.body))
	}
	// RFC 9112 §6.3 says the server MUST close the connection after such a
	// request; Go's server (Caddy's) keeps it open. What follows is then a
	// request of its own, and must be judged as one.
	second2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Logf("the connection closed after the first answer (%v)", err)
		return marked, 0
	}
	defer second2.Body.Close()
	t.Logf("SURPRISE: the connection stayed open after Content-Length with Transfer-Encoding; the next request got %s", second2.Status)
	if second2.StatusCode != http.StatusNotFound {
		t.Errorf("the request after the chunked body: %s %q, want 404", second2.Status, short(readAnswer(second2)))
	}
	return marked, 0
}

// gateCases: Content-Type (415), Origin (403), credentials sent twice or in
// the URL (400), checked before anything is accepted.
func (e *hostileEnv) gateCases() []hostileCase {
	ct := func(name, ctype string) hostileCase {
		return e.refusedCase("Content-Type "+name, func(m string) hreq {
			r := e.postProbe(call(`"`+m+`"`, m))
			r.ctype = ctype
			return r
		}, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
	}
	origin := func(name, method, origin string) hostileCase {
		return e.refusedCase(name, func(m string) hreq {
			if method == http.MethodGet {
				return hreq{method: method, path: "/sse?m=" + m, hdr: http.Header{"Origin": {origin}}}
			}
			r := e.postProbe(call(`"`+m+`"`, m))
			r.hdr = with(probeAuth, "Origin", origin)
			return r
		}, http.StatusForbidden, "origin not allowed")
	}
	return []hostileCase{
		ct("missing", ""),
		ct("text/plain", "text/plain"),
		ct("application/jsonx", "application/jsonx"),
		ct("application/json-seq", "application/json-seq"),
		ct("multipart/form-data", "multipart/form-data; boundary=x"),
		ct("malformed (application/json;;=)", "application/json;;="),
		origin("forged Origin on GET /sse", http.MethodGet, "http://evil.example"),
		origin("forged Origin on POST", http.MethodPost, "http://evil.example"),
		origin("Origin null", http.MethodPost, "null"),
		origin("Origin whose host starts with the bridge's", http.MethodPost, "http://"+e.host+".evil.example"),
		e.refusedCase("Authorization twice on POST", func(m string) hreq {
			r := e.postProbe(call(`"`+m+`"`, m))
			r.hdr = http.Header{"Authorization": {"Bearer probe-token", "Bearer " + m}}
			return r
		}, http.StatusBadRequest, "Authorization must be sent once"),
		e.refusedCase("Authorization twice on GET /sse", func(m string) hreq {
			return hreq{method: http.MethodGet, path: "/sse", hdr: http.Header{"Authorization": {"Bearer " + m, "Bearer probe-token"}}}
		}, http.StatusBadRequest, "Authorization must be sent once"),
		// Tokens in the URL end up in logs: MCP forbids them, the bridge
		// refuses them.
		e.refusedCase("access_token in the /sse URL", func(m string) hreq {
			return hreq{method: http.MethodGet, path: "/sse?access_token=" + m}
		}, http.StatusBadRequest, "access token"),
		e.refusedCase("access_token in the /messages URL", func(m string) hreq {
			r := e.postProbe(notification(m)) // no answer on the stream, should it go through
			r.path += "&access_token=" + m
			return r
		}, http.StatusBadRequest, "access token"),
	}
}

// idCases: valid messages with odd ids are forwarded, and their answers
// (the upstream's, or the bridge's error) come back on the caller's stream
// with the id byte for byte (§7.1).
func (e *hostileEnv) idCases() []hostileCase {
	odd := func(name string, id func(m string) string) hostileCase {
		return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
			e.oddID(t, id(m), call(id(m), m), m)
			return 1, 0
		}}
	}
	return []hostileCase{
		odd("a 2,000-digit number id", func(string) string { return "9" + strings.Repeat("0123456789", 200)[1:] }),
		odd("a 10,000-character string id", func(m string) string { return `"` + m + strings.Repeat("s", 10_000) + `"` }),
		odd("a negative id", func(string) string { return "-4242" }),
		odd("a fractional id", func(string) string { return "42.125" }),
		odd("an id with an exponent", func(string) string { return "-1.5E+300" }),
		odd("negative zero as id", func(string) string { return "-0" }),
		odd("an id of unicode escapes", func(m string) string { return `"` + m + `\u00fc\ud83d\ude00\u2028\u0000"` }),
		odd("an id of escaped quotes, slashes and controls", func(m string) string { return `"` + m + `\"\\\/\b\f\n\r\t"` }),
		odd("an id of raw UTF-8", func(m string) string { return `"` + m + `-ü€😀` + "\u2028" + `"` }),
		{name: "batch: a request and a notification", do: func(t *testing.T, m string) (int, int) {
			id := `"` + m + `-batch"`
			e.oddID(t, id, "["+call(id, m)+","+notification(m)+"]", m)
			return 2, 0
		}},
		{name: "nesting 5,000 deep inside the arguments (under the decoder's limit)", do: func(t *testing.T, m string) (int, int) {
			id := `"` + m + `-deep"`
			body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"echo","arguments":{"message":%q,"deep":%s}}}`,
				id, m, strings.Repeat("[", 5000)+strings.Repeat("]", 5000))
			e.oddID(t, id, body, m)
			return 1, 0
		}},
	}
}

// oddID posts body (a request with the given raw id) to the probe's session
// and checks that its answer arrives on the probe's stream under that id,
// byte for byte: the echo result, or a JSON-RPC error.
func (e *hostileEnv) oddID(t *testing.T, id, body, m string) {
	t.Helper()
	expect(t, e.send(t, e.postProbe(body)), http.StatusAccepted, "")
	res := e.probe.stream.message(t, id, callTimeout)
	if !bytes.Contains(res, []byte(`"id":`+id)) {
		t.Errorf("the answer does not carry the id byte for byte: %s", short(string(res)))
	}
	var ans struct {
		JSONRPC string          `json:"jsonrpc"`
		Result  json.RawMessage `json:"result"`
		Error   *struct {
			Code    *int   `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(res, &ans); err != nil || ans.JSONRPC != "2.0" {
		t.Fatalf("the answer is not JSON-RPC: %v: %s", err, short(string(res)))
	}
	switch {
	case ans.Result != nil && ans.Error == nil:
		// The deep case's extra argument may make the tool answer an error
		// result; an echo result must carry the message.
		if bytes.Contains(ans.Result, []byte(`"isError":true`)) {
			t.Logf("a tool error result: %s", short(string(ans.Result)))
		} else if text := echoResult(t, res); text != m {
			t.Errorf("echo answered %q, want %q", text, m)
		}
	case ans.Error != nil && ans.Result == nil:
		if ans.Error.Code == nil || ans.Error.Message == "" {
			t.Errorf("an error without code or message: %s", short(string(res)))
		}
		t.Logf("a JSON-RPC error: %d %s", *ans.Error.Code, short(ans.Error.Message))
	default:
		t.Errorf("neither a result nor an error: %s", short(string(res)))
	}
}

// headerCases: header values the bridge reads or must not pass on.
// Mcp-Session-Id and Last-Event-ID never go upstream (the bridge sets its
// own), MCP-Protocol-Version goes as negotiated; values with CR or NUL are
// refused by the HTTP server; Last-Event-ID resumes only its caller's own
// session.
func (e *hostileEnv) headerCases() []hostileCase {
	// forwarded posts a call to the probe's session with extra headers and
	// checks that it is served, and that the upstream got it with the
	// probe's own upstream session and none of the headers' values.
	forwarded := func(name string, hdr func(m string) http.Header) hostileCase {
		return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
			id := `"` + m + `"`
			r := e.postProbe(call(id, m))
			r.hdr = hdr(m)
			e.servedOnProbe(t, m, id, e.send(t, r))
			return 1, 0
		}}
	}
	rawForwarded := func(name string, lines func(m string) []string) hostileCase {
		return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
			id := `"` + m + `"`
			req := e.rawRequest(http.MethodPost, e.probePath(),
				append([]string{"Authorization: Bearer probe-token", "Content-Type: application/json"}, lines(m)...), call(id, m))
			e.servedOnProbe(t, m, id, e.rawExchange(t, req, false))
			return 1, 0
		}}
	}
	rawPOST := func(name string, line func(m string) string) hostileCase {
		return e.rawRefused(name, func(m string) []byte {
			return e.rawRequest(http.MethodPost, e.probePath(),
				[]string{"Authorization: Bearer probe-token", "Content-Type: application/json", line(m)}, call(`"`+m+`"`, m))
		}, false, http.StatusBadRequest, "")
	}
	legitUp := func() string { return e.legit[0].upstream }
	return []hostileCase{
		forwarded("Mcp-Session-Id naming a legitimate session's upstream session", func(m string) http.Header {
			return with(probeAuth, "Mcp-Session-Id", legitUp(), "X-Marker", m)
		}),
		forwarded("Mcp-Session-Id of 8 KiB", func(m string) http.Header {
			return with(probeAuth, "Mcp-Session-Id", m+strings.Repeat("i", 8<<10))
		}),
		forwarded("MCP-Protocol-Version of 8 KiB", func(m string) http.Header {
			return with(probeAuth, "MCP-Protocol-Version", m+strings.Repeat("v", 8<<10))
		}),
		forwarded("MCP-Protocol-Version not a token", func(m string) http.Header {
			return with(probeAuth, "MCP-Protocol-Version", `2025-03-26", "`+m+`": "x`)
		}),
		forwarded("Last-Event-ID on a POST", func(m string) http.Header {
			return with(probeAuth, "Last-Event-ID", e.legit[0].id+"-0-"+m)
		}),
		rawForwarded("Mcp-Session-Id folded over two lines (obs-fold)", func(m string) []string {
			return []string{"Mcp-Session-Id: " + legitUp(), " " + m}
		}),
		rawForwarded("MCP-Protocol-Version split by a bare LF into an Mcp-Session-Id", func(m string) []string {
			return []string{"MCP-Protocol-Version: 2025-03-26\nMcp-Session-Id: " + legitUp(), "X-Marker: " + m}
		}),
		rawPOST("Mcp-Session-Id with a bare CR", func(m string) string { return "Mcp-Session-Id: " + legitUp() + "\r" + m }),
		rawPOST("MCP-Protocol-Version with a NUL", func(m string) string { return "MCP-Protocol-Version: 2025-03-26\x00" + m }),
		rawPOST("Mcp-Session-Id with DEL", func(m string) string { return "Mcp-Session-Id: " + m + "\x7f" }),
		{name: "MCP-Protocol-Version injected into a revived session's initialize", do: e.reviveInjection},
		e.watch("Last-Event-ID naming another caller's session", func(m string) (http.Header, string) {
			return http.Header{"Authorization": {"Bearer mallory-token"}, "Last-Event-ID": {e.probeID + "-0"}, "X-Marker": {m}}, e.probeID
		}),
		e.watch("Last-Event-ID naming a legitimate session, without credentials", func(m string) (http.Header, string) {
			return http.Header{"Last-Event-ID": {e.legit[1].id + "-0"}, "X-Marker": {m}}, e.legit[1].id
		}),
		e.watch("Last-Event-ID naming a legitimate session, with the probe's credentials", func(m string) (http.Header, string) {
			return with(probeAuth, "Last-Event-ID", e.legit[0].id+"-1", "X-Marker", m), e.legit[0].id
		}),
		e.watch("Last-Event-ID not a token", func(m string) (http.Header, string) {
			return http.Header{"Last-Event-ID": {`"` + m + `" ü ../../` + e.probeID + `-0 ;`}}, e.probeID
		}),
		e.watch("Last-Event-ID of 8 KiB", func(m string) (http.Header, string) {
			return http.Header{"Last-Event-ID": {m + strings.Repeat("9", 8<<10)}}, ""
		}),
		e.watch("Last-Event-ID with a position beyond 64 bits", func(m string) (http.Header, string) {
			return with(probeAuth, "Last-Event-ID", e.probeID+"-18446744073709551616", "X-Marker", m), e.probeID
		}),
		e.watch("Mcp-Session-Id on GET /sse naming a legitimate upstream session", func(m string) (http.Header, string) {
			return http.Header{"Mcp-Session-Id": {legitUp()}, "X-Marker": {m}}, ""
		}),
		e.watch("MCP-Protocol-Version not a token on GET /sse", func(m string) (http.Header, string) {
			return http.Header{"MCP-Protocol-Version": {`2024-11-05"` + m + strings.Repeat("v", 4096)}}, ""
		}),
		e.rawRefused("Last-Event-ID with a bare CR", func(m string) []byte {
			return e.rawRequest(http.MethodGet, "/sse", []string{"Last-Event-ID: " + e.probeID + "\r-0" + m}, "")
		}, false, http.StatusBadRequest, ""),
		{name: "Last-Event-ID past the end of the caller's own session", do: e.pastTheEnd},
	}
}

// servedOnProbe checks that a call to the probe's session was accepted and
// answered there, and that the upstream got it on an upstream session that
// is no legitimate session's.
func (e *hostileEnv) servedOnProbe(t *testing.T, m, id string, got hresp) {
	t.Helper()
	expect(t, got, http.StatusAccepted, "")
	if got.status != http.StatusAccepted {
		return
	}
	res := e.probe.stream.message(t, id, callTimeout)
	if text := echoResult(t, res); text != m {
		t.Errorf("echo answered %q, want %q", text, m)
	}
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	for _, p := range e.rec.posts {
		if !bytes.Contains(p.body, []byte(m)) {
			continue
		}
		up := p.header.Get("Mcp-Session-Id")
		for _, l := range e.legit {
			if up == "" || up == l.upstream {
				t.Errorf("the call went upstream on session %q (%s's is %q)", up, l.name, l.upstream)
			}
		}
	}
}

// watch is a case whose GET /sse must open a new session of its own (200,
// endpoint event, not the session named by victim), on whose stream nothing
// ever arrives; the stream stays open until the test ends and the
// checkpoints look at it.
func (e *hostileEnv) watch(name string, build func(m string) (hdr http.Header, victim string)) hostileCase {
	return hostileCase{name: name, do: func(t *testing.T, m string) (int, int) {
		hdr, victim := build(m)
		rs := openRawSession(t, e.hc, e.cd.base, "/sse", hdr)
		id := sessionOf(t, rs.endpoint)
		if victim != "" && id == victim {
			t.Errorf("the GET got the session its Last-Event-ID named (%s)", id)
		}
		for _, l := range e.legit {
			if id == l.id {
				t.Errorf("the GET got %s's session", l.name)
			}
		}
		e.watchers = append(e.watchers, watched{name, rs.stream})
		return 0, 0
	}}
}

// pastTheEnd resumes the resume session with a Last-Event-ID far past what it
// sent: 200, the same session, resumed from what its client was given
// (nothing replayed), and a later call's answer arrives.
func (e *hostileEnv) pastTheEnd(t *testing.T, m string) (int, int) {
	hdr := with(resumeAuth, "Last-Event-ID", e.resumeID+"-18446744073709551615")
	rs := openRawSession(t, e.hc, e.cd.base, "/sse", hdr)
	if id := sessionOf(t, rs.endpoint); id != e.resumeID {
		t.Fatalf("the GET opened %s, want the session it resumes, %s", id, e.resumeID)
	}
	id := `"` + m + `"`
	if code, resp := rs.post(t, call(id, m)); code != http.StatusAccepted {
		t.Fatalf("POST after the resume: %d %s", code, resp)
	}
	res := rs.stream.message(t, id, callTimeout)
	if text := echoResult(t, res); text != m {
		t.Errorf("echo answered %q, want %q", text, m)
	}
	if len(rs.stream.other) > 0 {
		t.Errorf("the resumed stream replayed earlier messages: %q", rs.stream.other)
	}
	return 1, 0
}

// reviveInjection POSTs to a well-formed session id that was never minted
// (§9: 202, the session is recreated and revived) from a caller with no
// remembered initialize, with an MCP-Protocol-Version that would break out
// of the JSON string of the minimal initialize the bridge sends upstream.
// The revival initialize must carry the default version and nothing of the
// header.
func (e *hostileEnv) reviveInjection(t *testing.T, m string) (int, int) {
	before := e.postCount()
	gone := randomHex(16)
	pv := `2025-03-26","capabilities":{"sampling":{}},"` + m + `":"`
	got := e.send(t, hreq{method: http.MethodPost, path: "/messages?sessionId=" + gone, ctype: "application/json",
		body: call(`"`+m+`"`, m), hdr: http.Header{"Authorization": {"Bearer reviver-token"}, "MCP-Protocol-Version": {pv}}})
	expect(t, got, http.StatusAccepted, "")
	e.rec.waitFor(t, "the revived session's call upstream", promptly, func() bool {
		for _, p := range e.rec.posts[before:] {
			if bytes.Contains(p.body, []byte(m)) {
				return true
			}
		}
		return false
	})
	extra := 0
	for _, p := range e.postsSince(before) {
		switch {
		case bytes.Contains(p.body, []byte(m)):
		case bytes.Contains(p.body, []byte(`"initialize"`)):
			extra++
			var init struct {
				Params struct {
					ProtocolVersion string          `json:"protocolVersion"`
					Capabilities    json.RawMessage `json:"capabilities"`
				} `json:"params"`
			}
			if err := json.Unmarshal(p.body, &init); err != nil || init.Params.ProtocolVersion != "2025-03-26" || string(init.Params.Capabilities) != "{}" {
				t.Errorf("the revival's initialize: %s", short(string(p.body)))
			}
		case bytes.Contains(p.body, []byte(`"notifications/initialized"`)):
			extra++
		}
	}
	if extra != 2 {
		t.Errorf("%d revival POSTs (initialize, notifications/initialized), want 2", extra)
	}
	return 1, extra
}
