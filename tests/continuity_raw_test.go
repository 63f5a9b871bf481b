package tests

// Session continuity, checked with raw HTTP on both sides of the bridge: new
// legacy clients never get the answers of earlier clients (even when they
// send MCP-Protocol-Version on their first GET, and share or lack
// credentials), upstream response streams closed before their response are
// resumed until answered, replays on resumption are filtered, and the
// upstream GET stream is reopened for as long as the session lives.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// ---------------------------------------------------------------------------
// 1. A new client never gets another client's answers
// ---------------------------------------------------------------------------

const (
	// contWindow is how long each client keeps its stream open after its
	// initialize was answered: longer than adopt_hold (1s), so that a late
	// answer of the previous client arrives while this stream is open and
	// no hold applies any more.
	contWindow = 3 * time.Second
	// contSlowMs is the duration of each client's slow call. It is still in
	// flight when its client closes the stream (contWindow after initialize)
	// and is answered about 1.5 s into the next client's life (after the
	// 1 s hold, 1.5 s before that client closes its stream).
	contSlowMs = 4500
	// The protocol version a TypeScript SDK client sends on its GETs.
	contProtocolVersion = "2025-11-25"
)

var endpointRe = regexp.MustCompile(`^/messages\?sessionId=[0-9A-Za-z_-]{22,}$`)

// contClient is one raw legacy client that numbers its request ids from 0,
// like the TypeScript SDK: initialize is 0, then echo and slow are 1 and 2 in
// an order that depends on the client's position, so that its ids collide
// with the ids the previous client left in flight.
type contClient struct {
	label   string
	hdr     http.Header // GET and every POST
	echoID  string
	slowID  string
	echoMsg string

	rs       *rawSession
	took     time.Duration // GET sent → endpoint event read
	initAt   time.Time     // the initialize answer was read
	slowPost <-chan postOutcome
	slowAt   time.Time // the slow call was sent
	closedAt time.Time // the client closed its stream
	// ownSlow: the client stays until its slow call is answered (otherwise
	// it closes its stream while that call is in flight).
	ownSlow bool
	// msgs holds the messages returned by rawStream.message; the others
	// the stream carried are in rs.stream.other.
	msgs [][]byte
	// misc holds events other than message events after the endpoint.
	misc []bridge.Event
}

func newContClient(label string, i int, hdr http.Header) *contClient {
	c := &contClient{label: label, hdr: hdr, echoMsg: fmt.Sprintf("echo of %s, %s", label, randomHex(6))}
	if i%2 == 0 {
		c.slowID, c.echoID = "1", "2"
	} else {
		c.echoID, c.slowID = "1", "2"
	}
	return c
}

// open GETs the event stream and reads the endpoint event.
func (c *contClient) open(t testing.TB, hc *http.Client, base string) {
	t.Helper()
	start := time.Now()
	c.rs = openRawSession(t, hc, base, "/sse", c.hdr)
	c.took = time.Since(start)
	t.Logf("%s: %s after %v", c.label, c.rs.endpoint, c.took)
	if !endpointRe.MatchString(c.rs.endpoint) {
		t.Errorf("%s: endpoint %q is not /messages?sessionId=<long id>", c.label, c.rs.endpoint)
	}
}

// start initializes the session, calls echo and waits for its answer, and
// sends the slow call without waiting for it.
func (c *contClient) start(t testing.TB) {
	t.Helper()
	init := c.rs.request(t, "0", "initialize",
		fmt.Sprintf(`{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":%q,"version":"0"}}`, contProtocolVersion, c.label))
	c.initAt = time.Now()
	c.msgs = append(c.msgs, init)
	if code, resp := c.rs.post(t, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != http.StatusAccepted {
		t.Fatalf("%s: notifications/initialized: %d %s, want 202", c.label, code, resp)
	}
	c.msgs = append(c.msgs, c.rs.request(t, c.echoID, "tools/call",
		fmt.Sprintf(`{"name":"echo","arguments":{"message":%q}}`, c.echoMsg)))
	// The demo upstream sends the slow call's status line only with its
	// result, and the bridge answers the POST after at most 2 s: send it from
	// another goroutine so that the client goes on meanwhile.
	c.slowAt = time.Now()
	c.slowPost = postBackground(c.rs.hc, c.rs.url(), c.hdr,
		fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"slow","arguments":{"ms":%d}}}`, c.slowID, contSlowMs))
}

// awaitSlow waits for the client's own slow answer.
func (c *contClient) awaitSlow(t testing.TB) {
	t.Helper()
	c.ownSlow = true
	c.msgs = append(c.msgs, c.rs.stream.message(t, c.slowID, contSlowMs*time.Millisecond+promptly))
}

// finish keeps the stream open until at least until, closes it, collects
// what it still carried and checks that the slow POST was accepted.
func (c *contClient) finish(t testing.TB, until time.Time) {
	t.Helper()
	time.Sleep(time.Until(until)) // the stream stays open for a while: nothing to wait for
	s := c.rs.stream
	s.resp.Body.Close()
	<-s.done
	c.closedAt = time.Now()
	for more := true; more; {
		select {
		case ev := <-s.events:
			if ev.Name == "message" {
				s.other = append(s.other, ev.Data)
			} else {
				c.misc = append(c.misc, ev)
			}
		default:
			more = false
		}
	}
	select {
	case o := <-c.slowPost:
		if o.err != nil || o.code != http.StatusAccepted {
			t.Errorf("%s: POST of the slow call (id %s): %d %s %v, want 202", c.label, c.slowID, o.code, o.body, o.err)
		}
	case <-time.After(callTimeout):
		t.Errorf("%s: the POST of the slow call got no status within %v", c.label, callTimeout)
	}
}

// check verifies that the client got exactly one answer to each of its own
// requests, with its own content, and nothing else.
func (c *contClient) check(t testing.TB) {
	t.Helper()
	all := append(slices.Clone(c.msgs), c.rs.stream.other...)
	counts := map[string]int{}
	for _, m := range all {
		var env struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Result *struct {
				ProtocolVersion string          `json:"protocolVersion"`
				ServerInfo      json.RawMessage `json:"serverInfo"`
				Content         []struct {
					Text string `json:"text"`
				} `json:"content"`
			} `json:"result"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(m, &env); err != nil {
			t.Errorf("%s: a message event is not JSON (%v): %q", c.label, err, m)
			continue
		}
		if env.Method != "" {
			t.Errorf("%s: unexpected message (the demo upstream sends no notification or request in this scenario): %s", c.label, short(string(m)))
			continue
		}
		id := string(env.ID)
		counts[id]++
		text := ""
		if env.Result != nil && len(env.Result.Content) > 0 {
			text = env.Result.Content[0].Text
		}
		switch {
		case env.Result == nil:
			t.Errorf("%s: got a non-result answer for id %s: %s", c.label, id, short(string(m)))
		case id == "0":
			if env.Result.ProtocolVersion == "" || len(env.Result.ServerInfo) == 0 {
				t.Errorf("%s: the answer with id 0 is not an initialize result: %s", c.label, short(string(m)))
			}
		case id == c.echoID:
			if text != c.echoMsg {
				t.Errorf("%s: the answer with id %s (its echo call with %q) carries %q: another client's answer: %s",
					c.label, id, c.echoMsg, text, short(string(m)))
			}
		case id == c.slowID:
			if !c.ownSlow {
				t.Errorf("%s: got a slow answer with id %s although it closed its stream before its own slow call (%d ms) could finish: "+
					"it is another client's answer: %s", c.label, id, contSlowMs, short(string(m)))
			} else if text != "slept" {
				t.Errorf("%s: its slow call (id %s) was answered %s", c.label, id, short(string(m)))
			}
		default:
			t.Errorf("%s: got an answer to id %s, which it never sent (it sent 0, %s, %s): %s", c.label, id, c.echoID, c.slowID, short(string(m)))
		}
	}
	want := map[string]int{"0": 1, c.echoID: 1, c.slowID: 0}
	if c.ownSlow {
		want[c.slowID] = 1
	}
	for id, n := range want {
		if counts[id] > n {
			t.Errorf("%s: %d answers with id %s, want %d", c.label, counts[id], id, n)
		}
	}
	for _, ev := range c.misc {
		t.Errorf("%s: unexpected %q event after the endpoint: %q", c.label, ev.Name, ev.Data)
	}
}

// TestNewClientNeverGetsAnotherClientsAnswers runs legacy clients one after
// the other against the Go demo upstream, each leaving a slow call in flight
// when it goes, all sending MCP-Protocol-Version on their first GET (which
// lets the bridge adopt their predecessor's session behind the scenes) and
// numbering their ids from 0, so that the ids collide. Every client must get
// exactly its own answers, and its endpoint event at once.
func TestNewClientNeverGetsAnotherClientsAnswers(t *testing.T) {
	up := startUpstream(t, specGoStatefulSSE)
	cd := startCaddy(t, up.url, "adopt any", "adopt_hold 1s")
	hc := testenv.MustHTTPClient(t)

	var mu sync.Mutex
	endpoints := map[string]string{} // endpoint → client
	t.Cleanup(func() {
		// For the record: what the bridge did about adoption.
		var lines []string
		for _, l := range strings.Split(cd.proc.Output(), "\n") {
			if strings.Contains(strings.ToLower(l), "adopt") {
				lines = append(lines, l)
			}
		}
		t.Logf("Caddy log lines mentioning adoption (%d):\n%s", len(lines), strings.Join(lines, "\n"))
	})

	// The two passes run side by side (each takes about 14 s).
	for _, pass := range []struct{ name, auth string }{
		{"anonymous", ""},
		{"shared Authorization", "Bearer shared"},
	} {
		t.Run(pass.name, func(t *testing.T) {
			t.Parallel()
			hdr := http.Header{"Mcp-Protocol-Version": {contProtocolVersion}}
			if pass.auth != "" {
				hdr.Set("Authorization", pass.auth)
			}
			var clients []*contClient
			add := func(i int) *contClient {
				c := newContClient(fmt.Sprintf("%s client %d", pass.name, i), i, hdr)
				clients = append(clients, c)
				return c
			}
			// Three clients in a row: each one starts as soon as the
			// previous one closed its stream with its slow call in flight.
			for i := range 3 {
				c := add(i)
				c.open(t, hc, cd.base)
				c.start(t)
				c.finish(t, c.initAt.Add(contWindow))
			}
			// Two clients at once; they stay until their own slow answers.
			d, e := add(3), add(4)
			d.open(t, hc, cd.base)
			e.open(t, hc, cd.base)
			d.start(t)
			e.start(t)
			d.awaitSlow(t)
			e.awaitSlow(t)
			d.finish(t, d.initAt.Add(contWindow))
			e.finish(t, e.initAt.Add(contWindow))

			// The scenario's timing: each earlier client's slow answer was
			// due while the next clients' streams were open, after the hold.
			for i, nexts := range [][]int{{1}, {2}, {3, 4}} {
				c := clients[i]
				due := c.slowAt.Add(contSlowMs * time.Millisecond)
				for _, j := range nexts {
					next := clients[j]
					if !due.After(next.initAt.Add(time.Second)) || !due.Before(next.closedAt) {
						t.Errorf("timing: %s's slow answer was due at +%v, outside %s's window after the hold (+%v…+%v)",
							c.label, due.Sub(c.initAt), next.label, next.initAt.Add(time.Second).Sub(c.initAt), next.closedAt.Sub(c.initAt))
					}
				}
			}

			var took []time.Duration
			for _, c := range clients {
				c.check(t)
				took = append(took, c.took)
				if c.took > time.Second {
					t.Errorf("%s: the endpoint event came %v after the GET, want < 1s", c.label, c.took)
				}
				mu.Lock()
				if other, dup := endpoints[c.rs.endpoint]; dup {
					t.Errorf("%s got the endpoint %s that %s got before: every GET without Last-Event-ID must get a new session", c.label, c.rs.endpoint, other)
				}
				endpoints[c.rs.endpoint] = c.label
				mu.Unlock()
			}
			slices.Sort(took)
			if med := took[len(took)/2]; med > 50*time.Millisecond {
				t.Errorf("median time from GET to endpoint event %v, want ≤ 50ms (all: %v)", med, took)
			}
			t.Logf("GET → endpoint: %v", took)
		})
	}
}

// postOutcome is the result of a POST sent by postBackground.
type postOutcome struct {
	code int
	body string
	err  error
}

// postBackground POSTs a JSON body with hdr from its own goroutine, for a
// request the test must not wait on; doRequest and rawSession.post report
// failures with t.Fatal, which only the test's goroutine may call.
func postBackground(hc *http.Client, url string, hdr http.Header, body string) <-chan postOutcome {
	out := make(chan postOutcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			out <- postOutcome{err: err}
			return
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			out <- postOutcome{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		out <- postOutcome{code: resp.StatusCode, body: string(b)}
	}()
	return out
}

// ---------------------------------------------------------------------------
// A raw Streamable HTTP upstream
// ---------------------------------------------------------------------------

// rawUpstream is a Streamable HTTP server written by hand, in process, so
// that tests can make it do what real servers do at the edges of the
// specification: close response streams early (SEP-1699 polling), replay too
// much on resumption, drop the GET stream. The MCP basics are fixed:
// initialize issues Mcp-Session-Id and answers with the client's id byte for
// byte, notifications and responses get 202, ping gets {}, DELETE gets 200,
// requests without a known session get 404. tools/call and GET are the
// test's to answer.
type rawUpstream struct {
	srv  *httptest.Server
	url  string
	quit chan struct{} // closed when the test ends: held streams return

	// initSSE: initialize is answered as an event stream with a priming
	// event and an event id on the result (as the TypeScript SDK's server
	// with an event store does), not as JSON.
	initSSE bool
	// onCall answers a tools/call request (id is the raw JSON id).
	onCall func(w http.ResponseWriter, r *http.Request, id, params json.RawMessage)
	// onGet answers a GET with Accept: text/event-stream; lastEventID is
	// the request's Last-Event-ID ("" when absent).
	onGet func(w http.ResponseWriter, r *http.Request, lastEventID string)

	mu         sync.Mutex
	sessions   map[string]bool
	gets       []upstreamGet
	violations []string // protocol errors by the bridge
	nextEvent  int
	// sent is every event with an id sent on any stream, in order, with
	// priming events as {} (as the TypeScript SDK's event store keeps them).
	sent []sentEvent
}

type upstreamGet struct {
	lastEventID string
	at, ended   time.Time
}

type sentEvent struct {
	id   string
	data string
}

const rawInitResult = `{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"raw","version":"0"}}`

// startRawUpstream starts u. Start it before Caddy, so that its cleanup runs
// after Caddy is gone.
func startRawUpstream(t testing.TB, u *rawUpstream) *rawUpstream {
	t.Helper()
	u.quit = make(chan struct{})
	u.sessions = map[string]bool{}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	u.url = u.srv.URL + "/mcp"
	t.Cleanup(func() {
		close(u.quit)
		u.srv.CloseClientConnections()
		u.srv.Close()
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, v := range u.violations {
			t.Errorf("raw upstream: %s", v)
		}
	})
	return u
}

func (u *rawUpstream) violation(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.violations = append(u.violations, fmt.Sprintf(format, args...))
}

func (u *rawUpstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/mcp" {
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodPost:
		u.servePOST(w, r)
	case http.MethodGet:
		if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			u.violation("GET without Accept: text/event-stream (%q)", r.Header.Get("Accept"))
			http.Error(w, "not acceptable", http.StatusNotAcceptable)
			return
		}
		if r.Header.Get("Mcp-Session-Id") == "" {
			// The bridge's authorization probe before a stream opens: a
			// GET without a session, which real servers refuse so.
			http.Error(w, "Bad Request: Mcp-Session-Id header is required", http.StatusBadRequest)
			return
		}
		if !u.knownSession(r) {
			http.Error(w, "session not found", http.StatusNotFound)
			return
		}
		u.mu.Lock()
		i := len(u.gets)
		u.gets = append(u.gets, upstreamGet{lastEventID: r.Header.Get("Last-Event-ID"), at: time.Now()})
		u.mu.Unlock()
		u.onGet(w, r, r.Header.Get("Last-Event-ID"))
		u.mu.Lock()
		u.gets[i].ended = time.Now()
		u.mu.Unlock()
	case http.MethodDelete:
		w.WriteHeader(http.StatusOK)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func (u *rawUpstream) knownSession(r *http.Request) bool {
	sid := r.Header.Get("Mcp-Session-Id")
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.sessions[sid] {
		u.violations = append(u.violations, fmt.Sprintf("%s with unknown Mcp-Session-Id %q", r.Method, sid))
		return false
	}
	return true
}

func (u *rawUpstream) servePOST(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var msg struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
	}
	if err != nil || json.Unmarshal(body, &msg) != nil {
		u.violation("POST with a body that is not a JSON object: %q", body)
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if acc := r.Header.Get("Accept"); !strings.Contains(acc, "application/json") || !strings.Contains(acc, "text/event-stream") {
		u.violation("POST with Accept %q, want both application/json and text/event-stream", acc)
	}
	if msg.Method == "server/discover" && r.Header.Get("Mcp-Session-Id") == "" {
		// The bridge asking which MCP era this is: a server of the
		// initialize era refuses a request without a session, as the
		// TypeScript SDK's does.
		http.Error(w, "Bad Request: No valid session ID provided", http.StatusBadRequest)
		return
	}
	if msg.Method == "initialize" {
		u.mu.Lock()
		sid := fmt.Sprintf("raw-session-%d", len(u.sessions)+1)
		u.sessions[sid] = true
		u.mu.Unlock()
		w.Header().Set("Mcp-Session-Id", sid)
		res := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, msg.ID, rawInitResult)
		if u.initSSE {
			sseStart(w)
			u.prime(w, "")
			u.sendEvent(w, res)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, res)
		return
	}
	if !u.knownSession(r) {
		http.Error(w, "session not found", http.StatusNotFound)
		return
	}
	switch {
	case len(msg.ID) == 0 || msg.Method == "": // a notification or a response
		w.WriteHeader(http.StatusAccepted)
	case msg.Method == "ping":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{}}`, msg.ID)
	case msg.Method == "tools/call" && u.onCall != nil:
		u.onCall(w, r, msg.ID, msg.Params)
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"method not found"}}`, msg.ID)
	}
}

// getsSeen returns the GETs so far.
func (u *rawUpstream) getsSeen() []upstreamGet {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.gets)
}

// eventID returns a new event id, unique in the session.
func (u *rawUpstream) eventID() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.nextEvent++
	return "ev-" + strconv.Itoa(u.nextEvent)
}

// prime sends a priming event (an id and empty data, SEP-1699), with a
// retry field if retry is not empty; it is logged as {}.
func (u *rawUpstream) prime(w http.ResponseWriter, retry string) string {
	id := u.eventID()
	u.mu.Lock()
	u.sent = append(u.sent, sentEvent{id: id, data: "{}"})
	u.mu.Unlock()
	if retry != "" {
		sseWrite(w, "retry: "+retry, "id: "+id, "data: ")
	} else {
		sseWrite(w, "id: "+id, "data: ")
	}
	return id
}

// sendEvent sends data as a message event with a new id and logs it.
func (u *rawUpstream) sendEvent(w http.ResponseWriter, data string) string {
	id := u.eventID()
	u.mu.Lock()
	u.sent = append(u.sent, sentEvent{id: id, data: data})
	u.mu.Unlock()
	sseWrite(w, "event: message", "id: "+id, "data: "+data)
	return id
}

// hold keeps a stream open until the request or the test ends.
func (u *rawUpstream) hold(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-u.quit:
	}
}

// sseStart sends the status line and headers of an event stream at once.
func sseStart(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache, no-transform")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
}

// sseWrite sends one event made of lines and flushes it.
func sseWrite(w http.ResponseWriter, lines ...string) {
	for _, l := range lines {
		io.WriteString(w, l+"\n")
	}
	io.WriteString(w, "\n")
	_ = http.NewResponseController(w).Flush()
}

// awaitMessage reads s until a message event for which match holds and
// returns its data; the message events read before it go to s.other.
func awaitMessage(t testing.TB, s *rawStream, what string, timeout time.Duration, match func([]byte) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no %s within %v (other messages: %q)", what, timeout, s.other)
		}
		ev := s.next(t, left)
		if ev.Name != "message" {
			t.Fatalf("unexpected event %q: %q", ev.Name, ev.Data)
		}
		if match(ev.Data) {
			return ev.Data
		}
		s.other = append(s.other, ev.Data)
	}
}

// rpcShape is what the tests look at in a JSON-RPC message.
type rpcShape struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  struct {
		Data string `json:"data"`
	} `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

// parseRPC parses a message event's data; ok is false unless it is one
// JSON-RPC 2.0 message (request, notification or response).
func parseRPC(data []byte) (m rpcShape, ok bool) {
	if json.Unmarshal(data, &m) != nil || m.JSONRPC != "2.0" {
		return m, false
	}
	return m, m.Method != "" || (len(m.ID) > 0 && (m.Result != nil || m.Error != nil))
}

// ---------------------------------------------------------------------------
// 2. A response stream closed before its response is resumed until answered
// ---------------------------------------------------------------------------

// TestResumeUntilAnswered: the upstream answers tools/call with a stream that
// carries only a priming event and ends (SEP-1699 polling, as the TypeScript
// SDK's server does when it closes a request's SSE stream with
// closeSSEStream), and every resumption with Last-Event-ID does the same,
// with a new event id and retry: 50, ten times; the eleventh resumption
// carries the result. Each attempt makes progress, so the bridge must go on
// until the result, honouring retry, and deliver it exactly once.
func TestResumeUntilAnswered(t *testing.T) {
	const polls = 10
	var (
		mu      sync.Mutex
		callID  json.RawMessage
		lastID  string // the last event id sent on the call's streams
		resumes int
	)
	const resultText = "answered after 11 resumptions"
	u := &rawUpstream{}
	u.onCall = func(w http.ResponseWriter, r *http.Request, id, _ json.RawMessage) {
		sseStart(w)
		pid := u.prime(w, "50")
		mu.Lock()
		callID, lastID = id, pid
		mu.Unlock()
	}
	u.onGet = func(w http.ResponseWriter, r *http.Request, lastEventID string) {
		if lastEventID == "" { // the session's GET stream: nothing on it
			sseStart(w)
			u.hold(r)
			return
		}
		mu.Lock()
		resumes++
		n, want, id := resumes, lastID, callID
		mu.Unlock()
		if lastEventID != want {
			u.violation("resumption %d with Last-Event-ID %q, want %q (the last event id sent)", n, lastEventID, want)
		}
		if n > polls+1 {
			u.violation("resumption %d after the result was sent", n)
			http.Error(w, "no such stream", http.StatusBadRequest)
			return
		}
		sseStart(w)
		if n <= polls {
			pid := u.prime(w, "50")
			mu.Lock()
			lastID = pid
			mu.Unlock()
			return
		}
		u.sendEvent(w, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":%q}]}}`, id, resultText))
	}
	startRawUpstream(t, u)
	cd := startCaddy(t, u.url)
	hc := testenv.MustHTTPClient(t)
	rs := openRawSession(t, hc, cd.base, "/sse", nil)
	rs.initialize(t)

	start := time.Now()
	msg := rs.request(t, `"poll-me"`, "tools/call", `{"name":"wait","arguments":{}}`)
	took := time.Since(start)
	m, ok := parseRPC(msg)
	if !ok || m.Error != nil || !bytes.Contains(m.Result, []byte(resultText)) {
		t.Fatalf("the call's answer after %v: %s, want the result %q", took, msg, resultText)
	}
	t.Logf("answered after %v", took)

	// A barrier, then a few retry periods in which no further resumption
	// and no second answer may come.
	rs.request(t, `"barrier"`, "ping", "")
	time.Sleep(300 * time.Millisecond) // nothing to wait for: checking that nothing more happens
	for more := true; more; {
		select {
		case ev := <-rs.stream.events:
			rs.stream.other = append(rs.stream.other, ev.Data)
		default:
			more = false
		}
	}
	for _, o := range rs.stream.other {
		t.Errorf("unexpected message besides the result: %s", short(string(o)))
	}

	var resumed []upstreamGet
	for _, g := range u.getsSeen() {
		if g.lastEventID != "" {
			resumed = append(resumed, g)
		}
	}
	if len(resumed) != polls+1 {
		t.Errorf("the upstream saw %d resumptions (GET with Last-Event-ID), want %d", len(resumed), polls+1)
	}
	// retry: 50 is honoured: no resumption follows the previous stream's
	// end much sooner (half of it allows for jitter).
	for i := 1; i < len(resumed); i++ {
		if gap := resumed[i].at.Sub(resumed[i-1].ended); gap < 25*time.Millisecond {
			t.Errorf("resumption %d came %v after the previous stream ended, want about retry: 50ms", i+1, gap)
		}
	}
	if took > promptly {
		t.Errorf("the result took %v, want < %v (11 attempts with retry: 50)", took, promptly)
	}
}

// ---------------------------------------------------------------------------
// 3. Replays on resumption are filtered
// ---------------------------------------------------------------------------

// TestResumeReplaysFiltered: the upstream's GET stream sends a notification
// with an event id and ends; on the GET with Last-Event-ID it replays every
// event it ever sent in the session, on any stream (the answers to
// initialize and to two calls, {} for each priming event, the notification
// already relayed), then sends one new notification and stays open. This is
// what a server whose event store ignores stream identity does, and the
// TypeScript SDK's event store stores priming events as {}. The client must
// see each answer once, each notification once, and no invalid message.
func TestResumeReplaysFiltered(t *testing.T) {
	const (
		oldNote = `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","logger":"raw","data":"old notification"}}`
		newNote = `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","logger":"raw","data":"new notification"}}`
	)
	release := make(chan struct{}) // the first GET stream may send its notification and end
	var (
		mu        sync.Mutex
		oldNoteID string
	)
	u := &rawUpstream{initSSE: true}
	u.onCall = func(w http.ResponseWriter, r *http.Request, id, params json.RawMessage) {
		var p struct {
			Arguments struct {
				Message string `json:"message"`
			} `json:"arguments"`
		}
		_ = json.Unmarshal(params, &p)
		sseStart(w)
		u.prime(w, "")
		u.sendEvent(w, fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":%q}]}}`, id, p.Arguments.Message))
	}
	u.onGet = func(w http.ResponseWriter, r *http.Request, lastEventID string) {
		mu.Lock()
		first := oldNoteID == ""
		mu.Unlock()
		sseStart(w)
		if lastEventID == "" {
			if !first {
				u.violation("the GET stream was reopened without Last-Event-ID although it carried event ids")
				u.hold(r)
				return
			}
			u.prime(w, "")
			select {
			case <-release:
			case <-r.Context().Done():
				return
			case <-u.quit:
				return
			}
			id := u.sendEvent(w, oldNote)
			mu.Lock()
			oldNoteID = id
			mu.Unlock()
			return
		}
		mu.Lock()
		want := oldNoteID
		mu.Unlock()
		if lastEventID != want {
			u.violation("GET stream resumed with Last-Event-ID %q, want %q (the last event id on it)", lastEventID, want)
		}
		u.mu.Lock()
		replay := slices.Clone(u.sent)
		u.mu.Unlock()
		for _, ev := range replay {
			sseWrite(w, "event: message", "id: "+ev.id, "data: "+ev.data)
		}
		u.sendEvent(w, newNote)
		u.hold(r)
	}
	startRawUpstream(t, u)
	cd := startCaddy(t, u.url)
	hc := testenv.MustHTTPClient(t)
	rs := openRawSession(t, hc, cd.base, "/sse", nil)
	rs.initialize(t)
	waitCount(t, "the bridge's GET stream", func() int { return len(u.getsSeen()) }, func(n int) bool { return n >= 1 })

	for _, c := range []struct{ id, msg string }{{`"call-a"`, "answer a"}, {`"call-b"`, "answer b"}} {
		res := rs.request(t, c.id, "tools/call", fmt.Sprintf(`{"name":"echo","arguments":{"message":%q}}`, c.msg))
		if !bytes.Contains(res, []byte(`"text":"`+c.msg+`"`)) {
			t.Fatalf("call %s: %s", c.id, res)
		}
	}
	close(release)
	isNew := func(b []byte) bool { m, ok := parseRPC(b); return ok && m.Params.Data == "new notification" }
	awaitMessage(t, rs.stream, "new notification after the resumption", promptly, isNew)
	rs.request(t, `"barrier"`, "ping", "")

	oldSeen := 0
	for _, o := range rs.stream.other {
		m, ok := parseRPC(o)
		switch {
		case !ok:
			t.Errorf("the client got an invalid message (a replayed priming event?): %q", o)
		case m.Method == "notifications/message" && m.Params.Data == "old notification":
			oldSeen++
		case isNew(o):
			t.Errorf("the new notification was delivered twice")
		case len(m.ID) > 0:
			t.Errorf("a replayed answer to id %s was delivered again: %s", m.ID, short(string(o)))
		default:
			t.Errorf("unexpected message: %s", short(string(o)))
		}
	}
	if oldSeen != 1 {
		t.Errorf("the old notification was delivered %d times, want once", oldSeen)
	}
	gets := u.getsSeen()
	if len(gets) < 2 || gets[1].lastEventID == "" {
		t.Errorf("the upstream saw GETs %+v, want a second one with Last-Event-ID", gets)
	}
}

// ---------------------------------------------------------------------------
// 4. The upstream GET stream is reopened for as long as the session lives
// ---------------------------------------------------------------------------

// TestUpstreamGETStreamKeptOpen: the upstream answers the session's GET
// stream with 200, retry: 100 and an immediate end, twenty times in a row
// (what a server behind a proxy with a short idle timeout, or one that
// closes idle standalone streams, looks like); the 21st GET stays open. The
// bridge must keep reopening it, about every 100 ms, and a notification the
// upstream then sends on it must reach the legacy client.
func TestUpstreamGETStreamKeptOpen(t *testing.T) {
	const drops = 20
	notify := make(chan string)
	u := &rawUpstream{}
	var (
		mu   sync.Mutex
		seen int
	)
	u.onGet = func(w http.ResponseWriter, r *http.Request, _ string) {
		mu.Lock()
		seen++
		n := seen
		mu.Unlock()
		sseStart(w)
		if n <= drops {
			sseWrite(w, "retry: 100")
			return
		}
		for {
			select {
			case msg := <-notify:
				sseWrite(w, "event: message", "data: "+msg)
			case <-r.Context().Done():
				return
			case <-u.quit:
				return
			}
		}
	}
	startRawUpstream(t, u)
	cd := startCaddy(t, u.url)
	hc := testenv.MustHTTPClient(t)
	rs := openRawSession(t, hc, cd.base, "/sse", nil)
	rs.initialize(t)

	deadline := time.Now().Add(10 * time.Second)
	for len(u.getsSeen()) < drops+1 {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream saw %d GETs in 10s, want %d (the bridge stopped reopening its GET stream?): %s",
				len(u.getsSeen()), drops+1, getGaps(u.getsSeen()))
		}
		time.Sleep(20 * time.Millisecond) // polling a condition
	}
	const note = `{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}`
	select {
	case notify <- note:
	case <-time.After(promptly):
		t.Fatalf("the 21st GET stream is not open any more: GETs %s", getGaps(u.getsSeen()))
	}
	awaitMessage(t, rs.stream, "tools/list_changed notification", promptly, func(b []byte) bool {
		m, ok := parseRPC(b)
		return ok && m.Method == "notifications/tools/list_changed"
	})
	for _, o := range rs.stream.other {
		t.Errorf("unexpected message: %s", short(string(o)))
	}
	gets := u.getsSeen()
	if len(gets) < drops+1 {
		t.Errorf("the upstream saw %d GETs, want ≥ %d", len(gets), drops+1)
	}
	for i := 1; i < len(gets) && i <= drops; i++ {
		if gap := gets[i].at.Sub(gets[i-1].ended); gap < 50*time.Millisecond { // half of retry: 100, for jitter
			t.Errorf("GET %d came %v after the previous stream ended, want about retry: 100ms", i+1, gap)
		}
	}
	t.Logf("GETs: %s", getGaps(gets))
}

// getGaps describes the GETs as the delays between one's end and the next.
func getGaps(gets []upstreamGet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d GETs; gaps:", len(gets))
	for i := 1; i < len(gets); i++ {
		if gets[i-1].ended.IsZero() {
			b.WriteString(" (open)")
			continue
		}
		fmt.Fprintf(&b, " %v", gets[i].at.Sub(gets[i-1].ended).Round(time.Millisecond))
	}
	return b.String()
}
