package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// promptly bounds how long a failure may take to reach the client as a
// JSON-RPC error; the clients' own timeouts are much longer.
const promptly = 5 * time.Second

// ---------------------------------------------------------------------------
// A TypeScript legacy client driven line by line (tests/node/restart-client.mjs)
// ---------------------------------------------------------------------------

type tsDriver struct {
	p       *testenv.Process
	results int // result lines consumed
}

var (
	tsReadyRe  = regexp.MustCompile(`(?m)^ready$`)
	tsResultRe = regexp.MustCompile(`(?m)^(ok|is-error|rpc-error|timeout|fail) (.*)$`)
)

// startTSDriver connects restart-client.mjs to the bridge.
func startTSDriver(t testing.TB, c *caddy) *tsDriver {
	t.Helper()
	requireNode(t)
	p := startNodeScript(t, "restart-client.mjs", true,
		"restart-client.mjs", "--url", c.sseURL(), "--timeout", "20000")
	p.MustWaitOutput(t, tsReadyRe, 30*time.Second)
	t.Cleanup(func() { p.Stdin().Close() })
	return &tsDriver{p: p}
}

// call makes the script call echo with msg and returns the result line's
// kind and rest.
func (d *tsDriver) call(t testing.TB, msg string) (kind, rest string) {
	t.Helper()
	if _, err := fmt.Fprintf(d.p.Stdin(), "call %s\n", msg); err != nil {
		t.Fatalf("writing to restart-client.mjs: %v", err)
	}
	var m []string
	d.p.MustWaitUntil(t, "a result line", 30*time.Second, func(out string) bool {
		all := tsResultRe.FindAllStringSubmatch(out, -1)
		if len(all) > d.results {
			m = all[d.results]
			return true
		}
		return false
	})
	d.results++
	return m[1], m[2]
}

// echoOK makes the script call echo and checks the answer.
func (d *tsDriver) echoOK(t testing.TB, tb toolTable, msg string) {
	t.Helper()
	kind, rest := d.call(t, msg)
	var text string
	if kind != "ok" || json.Unmarshal([]byte(rest), &text) != nil || text != tb.echoText(msg) {
		t.Fatalf("TypeScript client: echo %q gave %s %s, want ok %q", msg, kind, rest, tb.echoText(msg))
	}
}

// echoOK calls echo with the Go client and checks the answer.
func (gc *goClient) echoOK(t testing.TB, tb toolTable, msg string) {
	t.Helper()
	if got := gc.callText(t, tb.echo, map[string]any{"message": msg}); got != tb.echoText(msg) {
		t.Fatalf("%s: echo %q = %q, want %q", gc.label, msg, got, tb.echoText(msg))
	}
}

// bothClients starts an upstream of spec behind Caddy and connects a Go SDK
// and a TypeScript SDK legacy client, each of which calls echo once.
func bothClients(t *testing.T, spec upstreamSpec) (*upstream, *goClient, *tsDriver) {
	t.Helper()
	tb := tables[spec.kind]
	up := startUpstream(t, spec)
	cd := startCaddy(t, up.url)
	gc := connectGo(t, cd, "go", goClientOptions{})
	ts := startTSDriver(t, cd)
	gc.echoOK(t, tb, "go, first call")
	ts.echoOK(t, tb, "ts, first call")
	return up, gc, ts
}

// ---------------------------------------------------------------------------
// (a) The upstream restarts mid-session
// ---------------------------------------------------------------------------

// TestUpstreamRestart kills the upstream in the middle of a legacy session
// and starts a new process on the same port. The bridge must re-initialise
// the upstream session transparently: the next calls of a Go SDK client and
// of a TypeScript SDK client succeed, server→client requests included, and
// the resource the Go client subscribed to before the restart still brings
// it updates (server-everything sends them once a session that subscribed
// calls toggle-subscriber-updates).
func TestUpstreamRestart(t *testing.T) {
	const subscribed = "demo://resource/static/document/architecture.md"
	for _, spec := range []upstreamSpec{specGoStatefulSSE, specGoStatefulJSON, specEverything} {
		t.Run(spec.name, func(t *testing.T) {
			tb := tables[spec.kind]
			up, gc, ts := bothClients(t, spec)
			if spec.kind == kindEverything {
				if err := gc.session.Subscribe(ctxTimeout(t, callTimeout), &mcp.SubscribeParams{URI: subscribed}); err != nil {
					t.Fatalf("subscribing: %v", err)
				}
			}

			up.restart()

			if spec.kind == kindEverything {
				t.Run("resource updates after the restart", func(t *testing.T) {
					if text := gc.callText(t, "toggle-subscriber-updates", map[string]any{}); !strings.HasPrefix(text, "Started") {
						t.Fatalf("toggle-subscriber-updates: %q", text)
					}
					// The first update goes out at once, perhaps before
					// the bridge's GET stream on the new upstream session
					// is open; the next comes 5 s later.
					gc.waitFor(t, "an update of the subscribed resource", 3*5*time.Second, func() bool {
						return slices.Contains(gc.updated, subscribed)
					})
				})
			}

			if spec.kind == kindGo {
				// The first call on the new upstream session makes the
				// upstream ask the client (sampling): the new session knows
				// the client's capabilities (the bridge replayed its
				// initialize) and its server→client requests reach the
				// client. (server-everything registers its sampling tool
				// only some time after initialization.)
				t.Run("first call after the restart asks the client", func(t *testing.T) {
					text := gc.callText(t, tb.sample, tb.sampleArgs("after-restart"))
					if !tb.sampleDone(text) {
						t.Fatalf("sampling after the restart: %q", short(text))
					}
				})
			}
			t.Run("calls after the restart", func(t *testing.T) {
				gc.echoOK(t, tb, "go after restart")
				ts.echoOK(t, tb, "ts after restart")
				gc.echoOK(t, tb, "go after restart, again")
				ts.echoOK(t, tb, "ts after restart, again")
				text := gc.callText(t, tb.sample, tb.sampleArgs("after-restart-2"))
				if !tb.sampleDone(text) {
					t.Fatalf("sampling after the restart: %q", short(text))
				}
			})
		})
	}
}

// TestUpstreamEraRolloutAndRollback replaces the upstream, on the same
// address, under connected Go SDK and TypeScript SDK legacy clients:
// server-everything (the initialize era), then the demo upstream of
// 2026-07-28 only (a rollout), then server-everything again (the rollout
// rolled back). The bridge relays, then translates, then relays again in a
// new upstream session opened with each client's initialize; every call is
// answered, and the clients notice nothing.
func TestUpstreamEraRolloutAndRollback(t *testing.T) {
	legacy, modern := tables[kindEverything], tables[kindGo]
	up, gc, ts := bothClients(t, specEverything)

	up.stop()
	rollout := testenv.MustDemoUpstream(t, testenv.DemoOptions{Bin: demoBin, Port: up.port,
		Args: specGoModernOnly.args, Name: "upstream " + specGoModernOnly.name + " (the rollout)"})
	gc.echoOK(t, modern, "go, after the rollout")
	ts.echoOK(t, modern, "ts, after the rollout")
	gc.echoOK(t, modern, "go, after the rollout, again")

	rollout.Kill()
	up.start()
	gc.echoOK(t, legacy, "go, after the rollback")
	ts.echoOK(t, legacy, "ts, after the rollback")
	gc.echoOK(t, legacy, "go, after the rollback, again")
	ts.echoOK(t, legacy, "ts, after the rollback, again")
}

// TestServerRequestFirstCall makes a server→client request (sampling) the
// very first call of a session: right after initialize, and right after the
// bridge re-initialised the upstream session. Upstreams in JSON response mode
// send such requests on their GET stream, so the bridge must have that stream
// open before it forwards the call. The window is small, so the test repeats
// the attempt.
func TestServerRequestFirstCall(t *testing.T) {
	const fresh, restarts = 30, 4
	for _, spec := range []upstreamSpec{specGoStatefulJSON, specGoStatefulSSE} {
		t.Run(spec.name, func(t *testing.T) {
			tb := tables[spec.kind]
			up := startUpstream(t, spec)
			cd := startCaddy(t, up.url)
			check := func(gc *goClient, when string, i int) bool {
				res, err := gc.call(t, tb.sample, tb.sampleArgs(fmt.Sprintf("%s-%d", when, i)))
				switch {
				case err != nil:
					t.Errorf("%s, attempt %d: sampling as the first call: %v", when, i, err)
				case res.IsError || !tb.sampleDone(textOf(res)):
					t.Errorf("%s, attempt %d: sampling as the first call: isError=%v %q", when, i, res.IsError, short(textOf(res)))
				default:
					return true
				}
				return false
			}
			failed := 0
			for i := range fresh {
				gc := connectGo(t, cd, fmt.Sprintf("fresh-%d", i), goClientOptions{})
				if !check(gc, "right after initialize", i) {
					failed++
				}
				_ = gc.session.Close()
			}
			if failed > 0 {
				t.Logf("%d of %d fresh sessions failed", failed, fresh)
			}
			failed = 0
			gc := connectGo(t, cd, "restarts", goClientOptions{})
			for i := range restarts {
				up.restart()
				if !check(gc, "right after the upstream restarted", i) {
					failed++
				}
			}
			if failed > 0 {
				t.Logf("%d of %d re-initialised sessions failed", failed, restarts)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// (b) The upstream is down
// ---------------------------------------------------------------------------

// TestUpstreamDown stops the upstream: a call must get a JSON-RPC error
// promptly, not hang until the client's timeout. Once the upstream is back
// on the same port, the next call works.
func TestUpstreamDown(t *testing.T) {
	for _, spec := range []upstreamSpec{specGoStatefulSSE, specGoStatelessJSON, specEverything} {
		t.Run(spec.name, func(t *testing.T) {
			tb := tables[spec.kind]
			up, gc, ts := bothClients(t, spec)

			up.stop()

			start := time.Now()
			_, err := gc.call(t, tb.echo, map[string]any{"message": "go during the outage"})
			elapsed := time.Since(start)
			var rpcErr *jsonrpc.Error
			switch {
			case err == nil:
				t.Fatal("Go client: a call while the upstream is down succeeded")
			case !errors.As(err, &rpcErr):
				t.Fatalf("Go client: want a JSON-RPC error while the upstream is down, got %v (after %v)", err, elapsed)
			case elapsed > promptly:
				t.Fatalf("Go client: the error took %v (want < %v): %v", elapsed, promptly, err)
			}
			t.Logf("Go client got %v after %v", rpcErr, elapsed.Round(time.Millisecond))

			start = time.Now()
			kind, rest := ts.call(t, "ts during the outage")
			elapsed = time.Since(start)
			if kind != "rpc-error" || elapsed > promptly {
				t.Fatalf("TypeScript client: want a prompt rpc-error while the upstream is down, got %s %s after %v", kind, rest, elapsed)
			}
			t.Logf("TypeScript client got %s %s after %v", kind, rest, elapsed.Round(time.Millisecond))

			up.start()

			gc.echoOK(t, tb, "go after the outage")
			ts.echoOK(t, tb, "ts after the outage")
		})
	}
}

// TestUpstreamDiesMidCall kills the upstream while a call is in flight: the
// client must get a JSON-RPC error for it promptly (every request is
// answered exactly once), and the session keeps working once the upstream is
// back.
func TestUpstreamDiesMidCall(t *testing.T) {
	for _, spec := range allUpstreams {
		t.Run(spec.name, func(t *testing.T) {
			tb := tables[spec.kind]
			up := startUpstream(t, spec)
			cd := startCaddy(t, up.url)
			gc := connectGo(t, cd, "go", goClientOptions{})
			gc.echoOK(t, tb, "before")

			// A call that takes long enough to be in flight for sure.
			name, args := tb.progress, map[string]any{"steps": 100, "delayMs": 300}
			if spec.kind == kindEverything {
				args = map[string]any{"duration": 30, "steps": 30}
			}
			done := gc.startCall(t, name, args, "mid-call", callTimeout)
			// The upstream is working on the call once its first progress
			// notification arrived or, where progress cannot reach the
			// client, once the bridge has accepted the POST.
			if spec.progress {
				gc.waitFor(t, "the first progress notification", promptly, func() bool { return len(gc.progress["mid-call"]) > 0 })
			} else {
				waitCount(t, "the bridge accepting the call", func() int {
					gc.tap.mu.Lock()
					defer gc.tap.mu.Unlock()
					n := 0
					for _, b := range gc.tap.accepted {
						if bytes.Contains(b, []byte(`"mid-call"`)) {
							n++
						}
					}
					return n
				}, func(n int) bool { return n > 0 })
			}
			killed := time.Now()
			up.stop()

			var o callOutcome
			select {
			case o = <-done:
			case <-time.After(callTimeout + time.Second):
				t.Fatal("the call never returned")
			}
			var rpcErr *jsonrpc.Error
			switch {
			case o.err == nil:
				t.Fatalf("the call succeeded although the upstream died: %q", textOf(o.res))
			case !errors.As(o.err, &rpcErr):
				t.Fatalf("want a JSON-RPC error for the call the upstream dropped, got %v after %v", o.err, o.at.Sub(killed))
			case o.at.Sub(killed) > promptly:
				t.Fatalf("the error took %v after the kill (want < %v): %v", o.at.Sub(killed), promptly, o.err)
			}
			t.Logf("got %v, %v after the kill", rpcErr, o.at.Sub(killed).Round(time.Millisecond))

			up.start()
			gc.echoOK(t, tb, "after")
		})
	}
}

// ---------------------------------------------------------------------------
// Raw legacy protocol over net/http
// ---------------------------------------------------------------------------

// rawStream is a legacy event stream read with bridge.EventReader.
type rawStream struct {
	resp   *http.Response
	events chan bridge.Event
	done   chan struct{}
	err    error // why the reader stopped, valid after done
	// other holds the messages skipped while waiting for a given id.
	other [][]byte
}

// getEventStream GETs url with hdr and expects a 200 event stream; cancel
// ends it from the client's side.
func getEventStream(t testing.TB, hc *http.Client, url string, hdr http.Header) (resp *http.Response, ctx context.Context, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel = context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err = hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	return resp, ctx, cancel
}

// openRawStream GETs url and expects a 200 event stream.
func openRawStream(t testing.TB, hc *http.Client, url string, hdr http.Header) *rawStream {
	t.Helper()
	resp, ctx, cancel := getEventStream(t, hc, url, hdr)
	s := &rawStream{resp: resp, events: make(chan bridge.Event, 1024), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		er := bridge.NewEventReader(resp.Body, 16<<20)
		for {
			ev, err := er.Next()
			if err != nil {
				s.err = err
				return
			}
			select {
			case s.events <- ev:
			case <-ctx.Done():
				s.err = ctx.Err()
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-s.done
	})
	return s
}

// next returns the next event.
func (s *rawStream) next(t testing.TB, timeout time.Duration) bridge.Event {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case ev := <-s.events:
		return ev
	case <-s.done:
		select {
		case ev := <-s.events:
			return ev
		default:
		}
		t.Fatalf("the event stream ended: %v", s.err)
	case <-timer.C:
		t.Fatalf("no event within %v", timeout)
	}
	return bridge.Event{}
}

// message waits for the message event whose JSON-RPC id is exactly id (the
// raw bytes) and returns its data.
func (s *rawStream) message(t testing.TB, id string, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no message with id %s within %v (other messages: %q)", id, timeout, s.other)
		}
		ev := s.next(t, left)
		if ev.Name != "message" {
			t.Fatalf("unexpected event %q: %q", ev.Name, ev.Data)
		}
		var env struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(ev.Data, &env); err != nil {
			t.Fatalf("message is not JSON: %v: %q", err, ev.Data)
		}
		if string(env.ID) == id {
			return ev.Data
		}
		s.other = append(s.other, ev.Data)
	}
}

// rawSession is a legacy session driven by hand.
type rawSession struct {
	hc       *http.Client
	base     string      // http://127.0.0.1:PORT
	hdr      http.Header // sent with the GET and every POST
	stream   *rawStream
	endpoint string // the endpoint event's data
}

// openRawSession opens the stream at base+ssePath and reads the endpoint
// event, which must come first and be an absolute path.
func openRawSession(t testing.TB, hc *http.Client, base, ssePath string, hdr http.Header) *rawSession {
	t.Helper()
	s := openRawStream(t, hc, base+ssePath, hdr)
	ev := s.next(t, promptly)
	if ev.Name != "endpoint" {
		t.Fatalf("first event is %q (%q), want endpoint", ev.Name, ev.Data)
	}
	ep := string(ev.Data)
	if !strings.HasPrefix(ep, "/") || strings.HasPrefix(ep, "//") {
		t.Fatalf("endpoint %q is not an absolute path", ep)
	}
	return &rawSession{hc: hc, base: base, hdr: hdr, stream: s, endpoint: ep}
}

func (rs *rawSession) url() string { return rs.base + rs.endpoint }

// post sends body to url with the session's headers, then hdr.
func (rs *rawSession) postTo(t testing.TB, method, url, contentType, body string, hdr http.Header) (int, http.Header, string) {
	t.Helper()
	return doRequest(t, rs.hc, method, url, contentType, body, rs.hdr, hdr)
}

// post POSTs a JSON body to the session's endpoint.
func (rs *rawSession) post(t testing.TB, body string) (int, string) {
	t.Helper()
	code, _, resp := rs.postTo(t, http.MethodPost, rs.url(), "application/json", body, nil)
	return code, resp
}

// request POSTs a JSON-RPC request, expects 202, and returns the message
// with the same id from the stream.
func (rs *rawSession) request(t testing.TB, id, method, params string) []byte {
	t.Helper()
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":%q`, id, method)
	if params != "" {
		body += `,"params":` + params
	}
	body += "}"
	if code, resp := rs.post(t, body); code != http.StatusAccepted {
		t.Fatalf("POST %s: %d %s, want 202", body, code, resp)
	}
	return rs.stream.message(t, id, callTimeout)
}

// initialize runs the initialize handshake by hand.
func (rs *rawSession) initialize(t testing.TB) {
	t.Helper()
	res := rs.request(t, `"init-1"`, "initialize",
		`{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"e2e-raw","version":"0"}}`)
	if !bytes.Contains(res, []byte(`"result"`)) {
		t.Fatalf("initialize failed: %s", res)
	}
	if code, resp := rs.post(t, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", code, resp)
	}
}

// ---------------------------------------------------------------------------
// (c) DESIGN §6: status codes on the legacy side
// ---------------------------------------------------------------------------

// TestStatusCodes checks every row of DESIGN §6 with raw HTTP against Caddy,
// plus the event stream's headers and endpoint event.
func TestStatusCodes(t *testing.T) {
	demo := startUpstream(t, specGoStatefulSSE)
	every := startUpstream(t, specEverything)
	logDir := t.TempDir()
	accessLog := filepath.Join(logDir, "upstream-access.log")
	proxyPort, deadPort := testenv.MustFreePort(t), testenv.MustFreePort(t)
	deadUpstream := fmt.Sprintf("http://127.0.0.1:%d/mcp", deadPort) // nothing listens there

	sites := startCaddySites(t,
		// The main bridge reaches the demo upstream through a logging
		// reverse proxy, so that the test can count what was forwarded.
		site{body: bridgeBlock(fmt.Sprintf("http://127.0.0.1:%d/mcp", proxyPort))},
		site{port: proxyPort, body: fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t}\n\treverse_proxy 127.0.0.1:%d", accessLog, demo.port)},
		site{body: bridgeBlock(demo.url, "max_message_size 1KB", "allowed_origins http://allowed.example")},
		site{body: "handle_path /prefix/* {\n\t\t" + bridgeBlock(demo.url) + "\n\t}"},
		site{body: bridgeBlock(deadUpstream)},
		site{body: bridgeBlock(demo.url, "store memory {\n\t\t\tname full\n\t\t\tmax_sessions 1\n\t\t}")},
		// The demo upstream's server answers other paths with a plain 404.
		site{body: bridgeBlock(fmt.Sprintf("http://127.0.0.1:%d/no-such-path", demo.port))},
		site{body: bridgeBlock(every.url)},
	)
	mainSite, smallSite, prefixSite, deadSite, fullSite := sites[0], sites[2], sites[3], sites[4], sites[5]
	wrongPathSite, everySite := sites[6], sites[7]
	hc := testenv.MustHTTPClient(t)

	// forwardedPOSTs counts the POSTs that reached the upstream.
	forwardedPOSTs := func() int {
		data, err := os.ReadFile(accessLog)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		n := 0
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var entry struct {
				Request struct {
					Method string `json:"method"`
				} `json:"request"`
			}
			if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Request.Method == http.MethodPost {
				n++
			}
		}
		return n
	}

	t.Run("stream headers and endpoint event", func(t *testing.T) {
		s := openRawStream(t, hc, mainSite.sseURL(), nil)
		h := s.resp.Header
		if mt := h.Get("Content-Type"); !strings.HasPrefix(mt, "text/event-stream") {
			t.Errorf("Content-Type = %q, want text/event-stream", mt)
		}
		if cc := h.Get("Cache-Control"); !strings.Contains(cc, "no-transform") {
			t.Errorf("Cache-Control = %q, want it to contain no-transform", cc)
		}
		if v := h.Get("X-Accel-Buffering"); v != "no" {
			t.Errorf("X-Accel-Buffering = %q, want no", v)
		}
		ev := s.next(t, promptly)
		if ev.Name != "endpoint" {
			t.Fatalf("first event is %q, want endpoint", ev.Name)
		}
		if !regexp.MustCompile(`^/messages\?sessionId=[0-9A-Za-z_-]{22,}$`).Match(ev.Data) {
			t.Fatalf("endpoint %q is not an absolute /messages?sessionId=… path with a long id", ev.Data)
		}
	})

	t.Run("keepalive comments", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, mainSite.sseURL(), nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("no keepalive comment within 5s (keepalive is 1s): %v", err)
			}
			if strings.HasPrefix(line, ":") {
				return
			}
		}
	})

	t.Run("handle_path prefix", func(t *testing.T) {
		rs := openRawSession(t, hc, prefixSite.base, "/prefix/sse", nil)
		if !strings.HasPrefix(rs.endpoint, "/prefix/messages?sessionId=") {
			t.Fatalf("endpoint %q does not start with /prefix/messages", rs.endpoint)
		}
		rs.initialize(t)
		if res := rs.request(t, `7`, "ping", ""); !bytes.Contains(res, []byte(`"result":{}`)) {
			t.Fatalf("ping through the prefixed endpoint: %s", res)
		}
	})

	t.Run("POST without sessionId is 400", func(t *testing.T) {
		code, _, body := doRequest(t, hc, http.MethodPost, mainSite.base+"/messages", "application/json", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
		if code != http.StatusBadRequest {
			t.Fatalf("got %d %s, want 400", code, body)
		}
	})

	t.Run("sessionId the bridge never minted is 404", func(t *testing.T) {
		code, _, body := doRequest(t, hc, http.MethodPost, mainSite.base+"/messages?sessionId=not-a-bridge-session",
			"application/json", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
		if code != http.StatusNotFound {
			t.Fatalf("got %d %s, want 404", code, body)
		}
	})

	t.Run("another identity's session is 404", func(t *testing.T) {
		alice := http.Header{"Authorization": {"Bearer alice-token"}}
		rs := openRawSession(t, hc, mainSite.base, "/sse", alice)
		ping := `{"jsonrpc":"2.0","id":"x","method":"ping"}`
		for _, h := range []http.Header{{"Authorization": {"Bearer mallory-token"}}, {"Authorization": nil}} {
			code, _, body := doRequest(t, hc, http.MethodPost, rs.url(), "application/json", ping, h)
			if code != http.StatusNotFound {
				t.Errorf("POST with Authorization %q to alice's session: %d %s, want 404", h.Get("Authorization"), code, body)
			}
		}
		// Alice herself is served.
		rs.initialize(t)
		if res := rs.request(t, `"alice-ping"`, "ping", ""); !bytes.Contains(res, []byte(`"result"`)) {
			t.Fatalf("alice's own ping: %s", res)
		}
	})

	t.Run("invalid bodies are 400 and not forwarded", func(t *testing.T) {
		rs := openRawSession(t, hc, mainSite.base, "/sse", nil)
		rs.initialize(t)
		// Wait until the handshake's POSTs are all in the log.
		waitCount(t, "the handshake's POSTs in the access log", forwardedPOSTs, func(n int) bool { return n >= 2 })
		before := forwardedPOSTs()
		for _, body := range []string{
			`{"jsonrpc":"2.0","id":1,"method":"ping"`, // truncated
			`not json at all`,
			`{"jsonrpc":"2.0","id":1,"method":"ping"} trailing`,
			"\xff\xfe{}",
			``,
		} {
			if code, resp := rs.post(t, body); code != http.StatusBadRequest {
				t.Errorf("body %q: %d %s, want 400", body, code, resp)
			}
		}
		for _, body := range []string{
			`{"hello":"world"}`,
			`[1,2,3]`,
			`"a string"`,
			`42`,
			`null`,
			`[]`,
			`{"jsonrpc":"1.0","id":1,"method":"ping"}`,
			`{"jsonrpc":"2.0","id":1}`,
			`{"jsonrpc":"2.0","method":42}`,
			`{"jsonrpc":"2.0","id":{"an":"object"},"method":"ping"}`,
		} {
			if code, resp := rs.post(t, body); code != http.StatusBadRequest {
				t.Errorf("body %s: %d %s, want 400", body, code, resp)
			}
		}
		// A valid call afterwards works, and is the only POST forwarded.
		if res := rs.request(t, `"after-invalid"`, "ping", ""); !bytes.Contains(res, []byte(`"result":{}`)) {
			t.Fatalf("ping after the invalid bodies: %s", res)
		}
		waitCount(t, "the ping's POST in the access log", forwardedPOSTs, func(n int) bool { return n >= before+1 })
		if n := forwardedPOSTs(); n != before+1 {
			t.Fatalf("%d POSTs reached the upstream since the invalid bodies, want exactly 1 (the ping)", n-before)
		}
		if len(rs.stream.other) > 0 {
			t.Fatalf("the stream carried answers to invalid bodies: %q", rs.stream.other)
		}
	})

	t.Run("body over max_message_size is 413", func(t *testing.T) {
		rs := openRawSession(t, hc, smallSite.base, "/sse", nil)
		big := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":%q}}}`, strings.Repeat("x", 2000))
		if code, resp := rs.post(t, big); code != http.StatusRequestEntityTooLarge {
			t.Fatalf("2 KB body with max_message_size 1KB: %d %s, want 413", code, resp)
		}
		// A small message on the same site is fine.
		rs.initialize(t)
		if res := rs.request(t, `"small"`, "ping", ""); !bytes.Contains(res, []byte(`"result"`)) {
			t.Fatalf("small ping: %s", res)
		}
	})

	t.Run("wrong Content-Type is 415", func(t *testing.T) {
		rs := openRawSession(t, hc, mainSite.base, "/sse", nil)
		ping := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"} {
			code, _, body := rs.postTo(t, http.MethodPost, rs.url(), ct, ping, nil)
			if code != http.StatusUnsupportedMediaType {
				t.Errorf("Content-Type %q: %d %s, want 415", ct, code, body)
			}
		}
		// Parameters are fine.
		code, _, body := rs.postTo(t, http.MethodPost, rs.url(), "application/json; charset=utf-8", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, nil)
		if code != http.StatusAccepted {
			t.Errorf("Content-Type application/json; charset=utf-8: %d %s, want 202", code, body)
		}
	})

	t.Run("foreign Origin is 403", func(t *testing.T) {
		evil := http.Header{"Origin": {"http://evil.example"}}
		code, _, body := doRequest(t, hc, http.MethodGet, mainSite.sseURL(), "", "", evil)
		if code != http.StatusForbidden {
			t.Errorf("GET /sse with Origin http://evil.example: %d %s, want 403", code, body)
		}
		rs := openRawSession(t, hc, mainSite.base, "/sse", nil)
		code, _, body = rs.postTo(t, http.MethodPost, rs.url(), "application/json", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, evil)
		if code != http.StatusForbidden {
			t.Errorf("POST with Origin http://evil.example: %d %s, want 403", code, body)
		}
		// The allowed origin, and the request's own host, are fine.
		s := openRawStream(t, hc, smallSite.sseURL(), http.Header{"Origin": {"http://allowed.example"}})
		if got := s.resp.Header.Get("Access-Control-Allow-Origin"); got != "http://allowed.example" {
			t.Errorf("Access-Control-Allow-Origin = %q, want http://allowed.example", got)
		}
		if ev := s.next(t, promptly); ev.Name != "endpoint" {
			t.Errorf("first event with an allowed Origin is %q", ev.Name)
		}
		openRawStream(t, hc, mainSite.sseURL(), http.Header{"Origin": {mainSite.base}})
		// allowed_origins of one site does not allow the origin on another.
		code, _, body = doRequest(t, hc, http.MethodGet, mainSite.sseURL(), "", "", http.Header{"Origin": {"http://allowed.example"}})
		if code != http.StatusForbidden {
			t.Errorf("GET /sse on a site without allowed_origins, Origin http://allowed.example: %d %s, want 403", code, body)
		}
	})

	t.Run("wrong methods are 405 with Allow", func(t *testing.T) {
		for _, c := range []struct{ method, path, allow string }{
			{http.MethodPost, "/sse", http.MethodGet},
			{http.MethodPut, "/sse", http.MethodGet},
			{http.MethodDelete, "/sse", http.MethodGet},
			{http.MethodPut, "/messages?sessionId=x", http.MethodPost},
			{http.MethodGet, "/messages?sessionId=x", http.MethodPost},
			{http.MethodDelete, "/messages?sessionId=x", http.MethodPost},
		} {
			code, h, body := doRequest(t, hc, c.method, mainSite.base+c.path, "application/json", `{}`)
			if code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d %s, want 405", c.method, c.path, code, body)
				continue
			}
			if allow := h.Get("Allow"); !strings.Contains(allow, c.allow) {
				t.Errorf("%s %s: Allow = %q, want it to contain %s", c.method, c.path, allow, c.allow)
			}
		}
	})

	t.Run("store full is 503 with Retry-After", func(t *testing.T) {
		openRawSession(t, hc, fullSite.base, "/sse", nil) // the only session allowed
		code, h, body := doRequest(t, hc, http.MethodGet, fullSite.sseURL(), "", "")
		if code != http.StatusServiceUnavailable {
			t.Fatalf("second stream with max_sessions 1: %d %s, want 503", code, body)
		}
		if h.Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
	})

	// The upstream refused or failed a request: 202, then a JSON-RPC error
	// with the request's id, byte for byte, on the stream.
	ids := []string{`"req-ü-1"`, `"req-\u00fc-2"`, `12345678901234567890`, `-0.5e+3`, `"with \"quotes\" and \\ and \n"`, `0`}
	for _, c := range []struct {
		name string
		site *caddy
	}{
		{"upstream unreachable", deadSite},
		{"upstream answered HTTP 404 without JSON-RPC", wrongPathSite},
	} {
		t.Run(c.name+": 202 then an error with the same id", func(t *testing.T) {
			rs := openRawSession(t, hc, c.site.base, "/sse", nil) // no initialize
			for _, id := range ids {
				start := time.Now()
				msg := rs.request(t, id, "tools/call", `{"name":"echo","arguments":{"message":"x"}}`)
				checkErrorAnswer(t, msg, id, time.Since(start), bridgeMadeError)
				t.Logf("id %s: %s", id, msg)
			}
		})
	}

	// A call on a stream that never initialised comes from a client that
	// initialised elsewhere (a session lost with its store, a client that
	// reconnected without saying so): the bridge opens an upstream session
	// for it, and the call is served under its own id, byte for byte.
	for _, site := range []*caddy{everySite, smallSite} {
		t.Run("call without initialize is served: "+site.base, func(t *testing.T) {
			rs := openRawSession(t, hc, site.base, "/sse", nil)
			results := 0
			for _, id := range ids {
				msg := rs.request(t, id, "tools/call", `{"name":"echo","arguments":{"message":"x"}}`)
				if !bytes.Contains(msg, []byte(`"id":`+id)) {
					t.Errorf("answer for %s does not carry its id byte for byte: %s", id, msg)
				}
				if bytes.Contains(msg, []byte(`"result"`)) {
					results++
				}
				t.Logf("id %s: %s", id, msg)
			}
			// server-everything refuses ids beyond JavaScript's integers;
			// the others are served.
			if results < len(ids)-1 {
				t.Errorf("%d of %d calls got a result", results, len(ids))
			}
		})
	}
}

// errorOrigin says who made a JSON-RPC error the client gets.
type errorOrigin int

const (
	// bridgeMadeError: the bridge made the error up; it must carry a
	// JSON-RPC error code.
	bridgeMadeError errorOrigin = iota
	// upstreamError: the upstream sent a JSON-RPC error; the client gets
	// that error object under its own request id, not a wrapper.
	upstreamError
)

// checkErrorAnswer checks that msg is a JSON-RPC error response carrying id
// byte for byte.
func checkErrorAnswer(t testing.TB, msg []byte, id string, took time.Duration, origin errorOrigin) {
	t.Helper()
	var resp struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(msg, &resp); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, msg)
	}
	if string(resp.ID) != id || !bytes.Contains(msg, []byte(`"id":`+id)) {
		t.Errorf("answer id = %s, want %s byte for byte: %s", resp.ID, id, msg)
	}
	if resp.JSONRPC != "2.0" || resp.Error == nil || resp.Result != nil || resp.Error.Message == "" {
		t.Errorf("answer is not a JSON-RPC error response: %s", msg)
	} else if origin == bridgeMadeError && resp.Error.Code >= -32000 {
		t.Errorf("the bridge's error has code %d, want a JSON-RPC error code (< -32000): %s", resp.Error.Code, msg)
	} else if origin == upstreamError && strings.HasPrefix(resp.Error.Message, "upstream answered HTTP") {
		t.Errorf("the upstream's own JSON-RPC error was wrapped instead of re-keyed to the request's id: %s", msg)
	}
	if took > promptly {
		t.Errorf("the error took %v, want < %v", took, promptly)
	}
}

// waitCount polls count until ok holds, for at most a few seconds.
func waitCount(t testing.TB, what string, count func() int, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(promptly)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !ok(count()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (count %d)", what, count())
		}
		<-tick.C
	}
}
