package bridge

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
)

// forwardedCalls counts the tools/call requests the upstream got.
func forwardedCalls(u *testUpstream) int {
	n := 0
	for _, r := range u.requests() {
		if strings.Contains(r.Body, `"tools/call"`) {
			n++
		}
	}
	return n
}

// TestInvalidUTF8Refused: JSON between systems is UTF-8 (RFC 8259 §8.1): a
// body with invalid bytes inside a string gets 400, nothing is forwarded,
// and the session goes on.
func TestInvalidUTF8Refused(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	before := forwardedCalls(up)
	body := "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"\xff\xfe\"}}}"
	if code := s.post(t, body); code != http.StatusBadRequest {
		t.Errorf("POST with invalid UTF-8: %d, want 400", code)
	}
	s.mustPost(t, echoCall(`3`, "still here"))
	if text := resultText(t, s.awaitResponse(t, `3`).data); text != "echo: still here" {
		t.Errorf("answer 3: %q", text)
	}
	if n := forwardedCalls(up) - before; n != 1 {
		t.Errorf("the upstream got %d calls, want only the valid one", n)
	}
}

// TestShortBodyRefused: a body that ends before its Content-Length (the
// client shut its side early) is incomplete (RFC 9112 §6.3): 400, nothing
// forwarded.
func TestShortBodyRefused(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	before := forwardedCalls(up)

	u, err := url.Parse(e.srv.URL + s.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := echoCall(`2`, "cut short")
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		u.RequestURI(), u.Host, len(body)+40, body)
	_ = conn.(*net.TCPConn).CloseWrite()
	_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST whose body ends early: %d, want 400", resp.StatusCode)
	}
	s.mustPost(t, echoCall(`3`, "complete"))
	s.awaitResponse(t, `3`)
	if n := forwardedCalls(up) - before; n != 1 {
		t.Errorf("the upstream got %d calls, want only the complete one", n)
	}
}

// TestLastEventIDPastTheEnd: a Last-Event-ID beyond anything the session
// sent resumes from what its client was given, not at a position that
// would skip every later message.
func TestLastEventIDPastTheEnd(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	a := openStream(t, e, nil)
	a.initialize(t)
	a.close()
	awaitReleased(t, e, a.sessionID)

	b := openStream(t, e, http.Header{"Last-Event-Id": {a.sessionID + "-18446744073709551615"}})
	if b.sessionID != a.sessionID {
		t.Fatalf("the GET resumed %s, want %s", b.sessionID, a.sessionID)
	}
	b.mustPost(t, echoCall(`2`, "after the resume"))
	if text := resultText(t, b.awaitResponse(t, `2`).data); text != "echo: after the resume" {
		t.Errorf("answer 2: %q", text)
	}
}

// TestDuplicateAuthorizationRefused: a single-valued field sent twice gets
// 400 on either endpoint, so that the session check and the upstream never
// read different credentials.
func TestDuplicateAuthorizationRefused(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, http.Header{"Authorization": {"Bearer one"}})
	s.initialize(t)
	two := http.Header{"Authorization": {"Bearer one", "Bearer two"}}
	if code, _, _ := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", two, ""); code != http.StatusBadRequest {
		t.Errorf("GET with two Authorization headers: %d, want 400", code)
	}
	before := forwardedCalls(up)
	if code, _, _ := postRaw(t, e.srv.URL+s.endpoint, echoCall(`2`, "x"), two, "application/json"); code != http.StatusBadRequest {
		t.Errorf("POST with two Authorization headers: %d, want 400", code)
	}
	if n := forwardedCalls(up) - before; n != 0 {
		t.Errorf("the upstream got %d calls, want none", n)
	}
}

// TestUninitializedSessionsExpireSoon: a stream that never initialised its
// session leaves it for UninitializedTTL, not for the session TTL, so that
// a caller opening and dropping streams cannot fill the store.
func TestUninitializedSessionsExpireSoon(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{SessionTTL: time.Hour, UninitializedTTL: 30 * time.Second})
	idle := openStream(t, e, nil)
	used := openStream(t, e, nil)
	used.initialize(t)
	idle.close()
	used.close()
	awaitReleased(t, e, idle.sessionID)
	awaitReleased(t, e, used.sessionID)
	for id, want := range map[string]time.Duration{idle.sessionID: 30 * time.Second, used.sessionID: time.Hour} {
		sess, err := e.store.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(sess.ExpiresAt); left > want || left < want-time.Minute/2 {
			t.Errorf("session %s expires in %v, want about %v", id, left.Round(time.Second), want)
		}
	}
}

// TestUpstreamHeaderTimeout: a black-holed upstream (it takes the
// connection and never answers) gets each request a JSON-RPC error that
// says it timed out, soon after UpstreamHeaderTimeout; a call whose answer
// streams for longer than that timeout is not cut.
func TestUpstreamHeaderTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("black hole", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held := make(chan net.Conn, 16)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				held <- c // taken, never answered
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			close(held)
			for c := range held {
				c.Close()
			}
		})
		e := newEnv(t, "http://"+ln.Addr().String()+"/mcp", nil, &Config{UpstreamHeaderTimeout: timeout})
		s := openStream(t, e, nil)
		start := time.Now()
		s.post(t, initializeRequest)
		ev := s.awaitResponse(t, `1`)
		if !strings.Contains(ev.data, "upstream timed out") {
			t.Errorf("answer to initialize: %s, want an error saying the upstream timed out", ev.data)
		}
		if took := time.Since(start); took > 10*timeout {
			t.Errorf("the error took %v with a %v header timeout", took, timeout)
		}
	})
	t.Run("long streamed call", func(t *testing.T) {
		up := newFakeUpstream(t, handwrittenUpstream(func(w http.ResponseWriter, env Envelope) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			for i := range 5 { // 1 s of progress, longer than the timeout
				fmt.Fprintf(w, "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p\",\"progress\":%d}}\n\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(200 * time.Millisecond) // the upstream's pace
			}
			fmt.Fprintf(w, "data: {\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"done\"}]}}\n\n", env.ID)
		}))
		e := newEnv(t, up.URL, nil, &Config{UpstreamHeaderTimeout: timeout})
		s := openStream(t, e, nil)
		s.initialize(t)
		s.mustPost(t, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"p"}}}`)
		if text := resultText(t, s.awaitResponse(t, `2`).data); text != "done" {
			t.Errorf("the long streamed call: %q, want done", text)
		}
	})
}

// TestNewSessionRate: one client address opening sessions faster than
// NewSessionRate allows gets 429 with Retry-After once its burst is spent,
// while another address still connects and calls.
func TestNewSessionRate(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{NewSessionRate: 0.01, NewSessionBurst: 3,
		ClientAddress: func(r *http.Request) string { return r.Header.Get("X-Test-Client") }})
	flood := http.Header{"X-Test-Client": {"flooder"}}
	for range 3 {
		openStream(t, e, flood).close()
	}
	code, h, _ := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", flood, "")
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("fourth new session from one address: %d, Retry-After %q; want 429 with Retry-After", code, h.Get("Retry-After"))
	}
	// A POST to a session that is gone would recreate it: it counts too.
	code, h, _ = postRaw(t, e.srv.URL+"/messages?sessionId=0123456789abcdef0123456789abcdef", echoCall(`1`, "x"), flood, "application/json")
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Errorf("a recreating POST from the same address: %d, want 429 with Retry-After", code)
	}
	other := openStream(t, e, http.Header{"X-Test-Client": {"someone else"}})
	other.initialize(t)
	other.mustPost(t, echoCall(`2`, "still served"))
	if text := resultText(t, other.awaitResponse(t, `2`).data); text != "echo: still served" {
		t.Errorf("answer to the other address: %q", text)
	}
}

// TestBoundedMemories: what a replica remembers per client address (the
// new-session rate) and per session (upstream event ids relayed) stays
// within its bound, forgetting the oldest first.
func TestBoundedMemories(t *testing.T) {
	r := newSessionRate(1, 1)
	now := time.Now()
	for i := range maxRateKeys + 10 {
		r.allow(fmt.Sprint("10.0.0.", i), now)
	}
	if n := len(r.limiters); n > maxRateKeys {
		t.Errorf("%d client addresses remembered, want at most %d", n, maxRateKeys)
	}

	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	for i := range seenEventsPerSession + 1 {
		e.bridge.markRelayed("s", fmt.Sprint("ev-", i))
	}
	if e.bridge.relayedBefore("s", "ev-0") {
		t.Error("the oldest event id is still remembered past the bound")
	}
	if !e.bridge.relayedBefore("s", fmt.Sprint("ev-", seenEventsPerSession)) {
		t.Error("the newest event id is forgotten")
	}

	// The session cache holds at most maxCachedSessions records; once they
	// are past their use, a new one takes the room.
	cache := newSessionCache()
	for i := range maxCachedSessions + 10 {
		cache.put(&sessionstore.Session{ID: fmt.Sprint("s-", i)}, now)
	}
	if n := len(cache.entries); n > maxCachedSessions {
		t.Errorf("%d session records cached, want at most %d", n, maxCachedSessions)
	}
	later := now.Add(2 * sessionCacheTTL)
	if cache.put(&sessionstore.Session{ID: "later"}, later); cache.get("later", later) == nil {
		t.Error("a cache full of records no longer used takes no new one")
	}

	// The tools whose argument marks are learnt: at most maxToolSchemas.
	var tools strings.Builder
	for i := range maxToolSchemas + 10 {
		if i > 0 {
			tools.WriteByte(',')
		}
		fmt.Fprintf(&tools, `{"name":"tool-%d","inputSchema":{"type":"object"}}`, i)
	}
	params := newParamHeaders()
	params.learn([]byte(`{"jsonrpc":"2.0","id":1,"result":{"tools":[` + tools.String() + `]}}`))
	if n := len(params.tools); n != maxToolSchemas {
		t.Errorf("the marks of %d tools kept, want %d", n, maxToolSchemas)
	}
}

// TestSubscriptionsBounded: a translated session subscribes to at most
// maxSubscriptions resources; the next subscribe gets a JSON-RPC error.
func TestSubscriptionsBounded(t *testing.T) {
	up := newModernUpstream(t, modernVersion)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	s.initialize(t)
	if _, err := e.store.Update(context.Background(), s.sessionID, func(sess *sessionstore.Session) error {
		for i := range maxSubscriptions {
			sess.Subscriptions = append(sess.Subscriptions, fmt.Sprint("demo://doc-", i))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.mustPost(t, `{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"demo://one-too-many"}}`)
	if got := s.awaitResponse(t, "2").data; !strings.Contains(got, `"error"`) || !strings.Contains(got, "subscriptions") {
		t.Errorf("subscribe beyond the bound answered %s, want an error naming the bound", got)
	}
}

// TestSettingsBounded: what a session keeps of its client's settings is
// bounded. A translated session answers a log level outside the spec's
// levels, a URI over maxSubscriptionURI and a subscription past
// maxSubscriptionBytes with JSON-RPC errors; a relayed session relays them
// (the upstream decides) but keeps none of them for a new upstream session.
func TestSettingsBounded(t *testing.T) {
	longURI := `"demo://` + strings.Repeat("u", maxSubscriptionURI) + `"`
	refused := []string{
		`{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"loud"}}`,
		`{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":` + longURI + `}}`,
	}
	t.Run("translated", func(t *testing.T) {
		up := newModernUpstream(t, modernVersion)
		e := newEnv(t, up.URL, nil, nil)
		s := openStream(t, e, nil)
		s.initialize(t)
		for _, msg := range refused {
			s.mustPost(t, msg)
		}
		got, _ := s.awaitResponses(t, "2", "3")
		for id, ev := range got {
			if !strings.Contains(ev.data, `"code":-32602`) {
				t.Errorf("request %s answered %s, want invalid params", id, ev.data)
			}
		}
		// Near the total bound: the next URI that would pass it is refused.
		if _, err := e.store.Update(context.Background(), s.sessionID, func(sess *sessionstore.Session) error {
			for i := 0; subscriptionBytes(sess) < maxSubscriptionBytes-maxSubscriptionURI/2; i++ {
				sess.Subscriptions = append(sess.Subscriptions, fmt.Sprintf("demo://%d-%s", i, strings.Repeat("x", maxSubscriptionURI-16)))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		s.mustPost(t, `{"jsonrpc":"2.0","id":4,"method":"resources/subscribe","params":{"uri":"demo://`+strings.Repeat("y", maxSubscriptionURI-16)+`"}}`)
		if got := s.awaitResponse(t, "4").data; !strings.Contains(got, `"error"`) || !strings.Contains(got, "KiB") {
			t.Errorf("a subscription past the total bound answered %s, want an error naming it", got)
		}
	})
	t.Run("relayed", func(t *testing.T) {
		up := newMCPUpstream(t, statefulSSE)
		e := newEnv(t, up.URL, nil, nil)
		s := openStream(t, e, nil)
		s.initialize(t)
		s.mustPost(t, refused[1])
		if got := s.awaitResponse(t, "3").data; !strings.Contains(got, `"result"`) {
			t.Fatalf("the upstream refused the long URI: %s", got)
		}
		s.mustPost(t, `{"jsonrpc":"2.0","id":5,"method":"resources/subscribe","params":{"uri":"demo://kept"}}`)
		s.awaitResponse(t, "5")
		sess, err := e.store.Get(context.Background(), s.sessionID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(sess.Subscriptions, []string{"demo://kept"}) {
			t.Errorf("the session keeps the subscriptions %.80q, want only demo://kept", sess.Subscriptions)
		}
	})
}

// TestInitializeTooLarge: an initialize over maxKeptInitialize (which the
// bridge would keep and replay) gets a JSON-RPC error with its id, nothing
// goes upstream, and the client can then initialise.
func TestInitializeTooLarge(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, nil)
	large := `{"jsonrpc":"2.0","id":"big","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"` +
		strings.Repeat("n", maxKeptInitialize) + `","version":"1"}}}`
	s.mustPost(t, large)
	if got := s.awaitResponse(t, `"big"`).data; !strings.Contains(got, `"code":-32602`) || !strings.Contains(got, "initialize larger than") {
		t.Errorf("the large initialize answered %.200s, want invalid params naming the bound", got)
	}
	for _, r := range up.requests() {
		if strings.Contains(r.Body, `"initialize"`) {
			t.Fatalf("the large initialize went upstream")
		}
	}
	s.initialize(t)
	s.mustPost(t, echoCall("7", "after"))
	if got := resultText(t, s.awaitResponse(t, "7").data); got != "echo: after" {
		t.Errorf("echo after initialising answered %q", got)
	}
}

// TestSessionsPerCaller: one caller (a credential, or an anonymous client
// address) holds at most max_sessions_per_caller live sessions; beyond it a
// new stream gets 429 with Retry-After, and other callers still connect.
func TestSessionsPerCaller(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	store := memory.New(memory.Options{MaxSessionsPerCaller: 2})
	e := newEnv(t, up.URL, store, &Config{
		ClientAddress: func(r *http.Request) string { return r.Header.Get("X-Test-Client") }})
	for _, caller := range []http.Header{
		{"Authorization": {"Bearer A"}, "X-Test-Client": {"one"}},
		{"X-Test-Client": {"anonymous-1"}},
	} {
		for range 2 {
			openStream(t, e, caller)
		}
		code, h, body := doRaw(t, http.MethodGet, e.srv.URL+"/sse", "", caller, "")
		if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
			t.Errorf("third session of caller %v: %d %q, Retry-After %q; want 429 with Retry-After", caller, code, body, h.Get("Retry-After"))
		}
	}
	// Another credential from the same address, and another anonymous
	// address, are other callers.
	for _, other := range []http.Header{
		{"Authorization": {"Bearer B"}, "X-Test-Client": {"one"}},
		{"X-Test-Client": {"anonymous-2"}},
	} {
		s := openStream(t, e, other)
		s.initialize(t)
		s.mustPost(t, echoCall(`2`, "served"))
		if text := resultText(t, s.awaitResponse(t, `2`).data); text != "echo: served" {
			t.Errorf("answer to another caller %v: %q", other, text)
		}
	}
}

// TestSlowClientDisconnected: a client that stops reading its stream is
// disconnected after StreamWriteTimeout instead of holding the stream, and
// gets every message from the store when it reconnects with Last-Event-ID.
func TestSlowClientDisconnected(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	// The replay window the Caddy module gives the memory store: messages
	// written into socket buffers the client never read are sent again.
	e := newEnv(t, up.URL, memory.New(memory.Options{ReplayWindow: 64}), &Config{StreamWriteTimeout: 300 * time.Millisecond})
	// The client: a raw connection with a small receive buffer that reads
	// the endpoint event and then nothing (a stalled consumer).
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(conn, "GET /sse HTTP/1.1\r\nHost: bridge\r\nAccept: text/event-stream\r\n\r\n")
	br := bufio.NewReader(conn)
	var id string
	for id == "" {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the endpoint: %v", err)
		}
		if _, rest, ok := strings.Cut(line, "sessionId="); ok {
			id = strings.TrimSpace(rest)
		}
	}
	// 16 MiB for it: far more than the socket buffers hold.
	const messages, size = 16, 1 << 20
	for i := range messages {
		data := fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/message","params":{"n":%d,"pad":"%s"}}`, i, strings.Repeat("x", size))
		if _, err := e.store.Append(context.Background(), id, sessionstore.Message{Data: []byte(data)}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sess, err := e.store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if sess.Owner == "" {
			break // the stream ended and released the session
		}
		if time.Now().After(deadline) {
			t.Fatalf("a client that reads nothing still holds its stream after 10 s (timeout 300 ms)")
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.Close()

	s := openStream(t, e, http.Header{"Last-Event-ID": {id + "-0"}})
	for i := range messages {
		ev := s.nextEvent(t)
		if !strings.Contains(ev.data, fmt.Sprintf(`"n":%d,`, i)) || len(ev.data) < size {
			t.Fatalf("message %d after reconnecting: %.80s… (%d bytes)", i, ev.data, len(ev.data))
		}
	}
}

// TestFingerprintIsKeyed: the store holds a keyed hash of the caller's
// credentials, never the credentials nor their plain hash; replicas sharing
// a store share its key (a session opened on one is the caller's on the
// other), and a configured identity secret gives other fingerprints.
func TestFingerprintIsKeyed(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	store := memory.New(memory.Options{})
	replicaA, replicaB := newEnv(t, up.URL, store, nil), newEnv(t, up.URL, store, nil)
	withSecret := newEnv(t, up.URL, store, &Config{IdentitySecret: "configured secret"})
	const token = "Bearer secret-token-123"
	hdr := http.Header{"Authorization": {token}}
	fingerprintOf := func(e *testEnv) string {
		s := openStream(t, e, hdr)
		sess, err := store.Get(context.Background(), s.sessionID)
		if err != nil {
			t.Fatal(err)
		}
		return sess.Fingerprint
	}
	fpA, fpB, fpSecret := fingerprintOf(replicaA), fingerprintOf(replicaB), fingerprintOf(withSecret)
	plain := sha256.Sum256([]byte(token))
	for _, fp := range []string{fpA, fpSecret} {
		if strings.Contains(fp, "secret-token") || strings.HasPrefix(hex.EncodeToString(plain[:]), fp) {
			t.Errorf("fingerprint %q reveals the token or its plain hash", fp)
		}
	}
	if fpA != fpB {
		t.Errorf("two replicas of one store: fingerprints %q and %q, want the same", fpA, fpB)
	}
	if fpA == fpSecret {
		t.Error("a configured identity secret gives the same fingerprint as the store's key")
	}
	// A session streamed by one replica takes the caller's POSTs on another.
	s := openStream(t, replicaA, hdr)
	if code, _, body := postRaw(t, replicaB.srv.URL+s.endpoint, initializeRequest, hdr, "application/json"); code != http.StatusAccepted {
		t.Errorf("POST to the other replica: %d %q, want 202", code, body)
	}
	s.awaitResponse(t, `1`)
}

// TestIdentityOutlivesTokens: with Identity configured (a user verified in
// front of the bridge), a session belongs to that user whatever token each
// request carries, so a refreshed token keeps the session; another user's
// requests still get 404.
func TestIdentityOutlivesTokens(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	e := newEnv(t, up.URL, nil, &Config{Identity: func(r *http.Request) string { return r.Header.Get("X-Verified-User") }})
	s := openStream(t, e, http.Header{"X-Verified-User": {"alice"}, "Authorization": {"Bearer first"}})
	s.initialize(t)
	refreshed := http.Header{"X-Verified-User": {"alice"}, "Authorization": {"Bearer refreshed"}}
	if code, _, body := postRaw(t, e.srv.URL+s.endpoint, echoCall(`2`, "after refresh"), refreshed, "application/json"); code != http.StatusAccepted {
		t.Fatalf("POST with a refreshed token: %d %q, want 202", code, body)
	}
	if text := resultText(t, s.awaitResponse(t, `2`).data); text != "echo: after refresh" {
		t.Errorf("answer after the refresh: %q", text)
	}
	other := http.Header{"X-Verified-User": {"bob"}, "Authorization": {"Bearer refreshed"}}
	if code, _, body := postRaw(t, e.srv.URL+s.endpoint, echoCall(`3`, "hijack"), other, "application/json"); code != http.StatusNotFound {
		t.Errorf("POST by another user with the same token: %d %q, want 404", code, body)
	}
}

// TestRefusedCallSentAgain: a call the upstream refuses for the client's
// credentials (401 while its POST waits) is not accepted: the POST gets the
// 401, nothing of it stays in flight, and the same message sent again (the
// TypeScript SDK's retry after refreshing its token, same id) is forwarded
// and answered. A refusal that comes after the POST got 202 is answered on
// the stream with a JSON-RPC error instead, so no accepted call goes
// unanswered.
func TestRefusedCallSentAgain(t *testing.T) {
	up := newMCPUpstream(t, statefulSSE)
	var refusals atomic.Int32
	refusals.Store(1)
	var delay atomic.Int64
	up.mu.Lock()
	inner := up.handler
	up.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		if strings.Contains(string(body), `"tools/call"`) && refusals.Load() > 0 {
			refusals.Add(-1)
			time.Sleep(time.Duration(delay.Load()))
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	})
	up.mu.Unlock()
	e := newEnv(t, up.URL, nil, nil)
	s := openStream(t, e, http.Header{"Authorization": {"Bearer t"}})
	s.initialize(t)

	if code, _, body := postRaw(t, e.srv.URL+s.endpoint, echoCall(`7`, "again"), s.header, "application/json"); code != http.StatusUnauthorized {
		t.Fatalf("a refused call: %d %q, want 401", code, body)
	}
	s.mustPost(t, echoCall(`7`, "again"))
	if text := resultText(t, s.awaitResponse(t, `7`).data); text != "echo: again" {
		t.Errorf("the call sent again: %q", text)
	}

	// Refused only after the POST was accepted (202 after defaultAcceptWait).
	delay.Store(int64(defaultAcceptWait + 500*time.Millisecond))
	refusals.Store(1)
	s.mustPost(t, echoCall(`8`, "late"))
	if ev := s.awaitResponse(t, `8`); !strings.Contains(ev.data, `"error"`) || !strings.Contains(ev.data, "401") {
		t.Errorf("a call refused after its POST was accepted: %s, want a JSON-RPC error naming the 401", ev.data)
	}
}
