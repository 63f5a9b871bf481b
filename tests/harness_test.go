// Package tests holds the end-to-end tests of the bridge. They start real
// processes on 127.0.0.1: Caddy built from this repository with the
// mcp_sse_bridge module, real Streamable HTTP upstreams (the Go demo upstream
// of cmd/mcp-demo-upstream and the TypeScript server-everything), and real
// legacy HTTP+SSE clients (the official TypeScript SDK through
// tests/node/legacy-client.mjs, the official Go SDK in process). The
// processes come from internal/testenv; this file holds what is particular
// to these tests: the binaries, the upstream matrix, the sites' bridge
// configuration.
//
// Environment:
//
//	CADDY_BIN, DEMO_UPSTREAM_BIN  prebuilt binaries instead of building them
//	E2E_RACE=1                    build the binaries with -race
//	E2E_DEBUG=1                   run Caddy with debug logs (shown on failure)
//	NODE                          the node executable (default: node on PATH)
package tests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// Paths resolved by TestMain.
var (
	repoRoot  string // the module root
	nodeDir   string // tests/node
	caddyBin  string
	demoBin   string
	nodeBin   string
	nodeErr   error  // why node is unusable, if it is
	everyPath string // server-everything's entry point
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	repoRoot = filepath.Dir(wd)
	nodeDir = filepath.Join(wd, "node")
	everyPath = filepath.Join(nodeDir, "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")

	binDir, err := os.MkdirTemp("", "mcp-bridge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)

	caddyBin = os.Getenv("CADDY_BIN")
	demoBin = os.Getenv("DEMO_UPSTREAM_BIN")
	race := os.Getenv("E2E_RACE") == "1"
	var builds []func() error
	if caddyBin == "" {
		caddyBin = filepath.Join(binDir, "caddy")
		builds = append(builds, func() error {
			return testenv.GoBuild(context.Background(), repoRoot, caddyBin, "./cmd/caddy", race)
		})
	}
	if demoBin == "" {
		demoBin = filepath.Join(binDir, "mcp-demo-upstream")
		builds = append(builds, func() error {
			return testenv.GoBuild(context.Background(), repoRoot, demoBin, "./cmd/mcp-demo-upstream", race)
		})
	}
	// Build concurrently with setting up node.
	buildErrs := make(chan error, len(builds))
	for _, b := range builds {
		go func() { buildErrs <- b() }()
	}
	nodeErr = setupNode()
	failed := false
	for range builds {
		if err := <-buildErrs; err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			failed = true
		}
	}
	if failed {
		return 1
	}

	code := m.Run()

	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	return code
}

// setupNode finds node and installs tests/node's packages if needed.
func setupNode() error {
	var err error
	if nodeBin, err = testenv.FindNode(); err != nil {
		return err
	}
	return testenv.EnsureNodeModules(context.Background(), nodeDir,
		filepath.Join(nodeDir, "node_modules", "@modelcontextprotocol", "sdk"),
		filepath.Join(nodeDir, "node_modules", "sdk-old"),
		everyPath,
	)
}

func requireNode(t testing.TB) {
	t.Helper()
	if nodeErr != nil {
		t.Fatalf("node is needed for this test: %v", nodeErr)
	}
}

// startNodeScript runs a script of tests/node (args[0]) for the test; with
// stdin, the test drives it through its standard input.
func startNodeScript(t testing.TB, name string, stdin bool, args ...string) *testenv.Process {
	t.Helper()
	requireNode(t)
	return testenv.MustStart(t, testenv.Command{Name: name, Path: nodeBin, Args: args, Dir: nodeDir, Stdin: stdin})
}

// e2eDebug says whether Caddy logs at DEBUG (E2E_DEBUG=1).
func e2eDebug() bool { return os.Getenv("E2E_DEBUG") == "1" }

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
		caddyModules, caddyModulesErr = testenv.CaddyModules(context.Background(), caddyBin)
	})
	if caddyModulesErr != nil {
		t.Fatal(caddyModulesErr)
	}
	if !strings.Contains(caddyModules, "http.handlers.mcp_sse_bridge.stores.redis") {
		t.Fatalf("the Caddy under test (%s) lacks the module http.handlers.mcp_sse_bridge.stores.redis", caddyBin)
	}
}

// ---------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------

// upstreamKind says which server implementation an upstream runs.
type upstreamKind string

const (
	kindEverything upstreamKind = "everything" // @modelcontextprotocol/server-everything
	kindGo         upstreamKind = "go"         // cmd/mcp-demo-upstream
)

// upstreamSpec describes one upstream configuration under test.
type upstreamSpec struct {
	name string
	kind upstreamKind
	args []string // demo upstream flags besides -addr
	// stateful: the upstream keeps sessions, so it can send server→client
	// requests (sampling, elicitation, roots).
	stateful bool
	// progress: progress notifications of a call reach the client.
	progress bool
	// modernOnly: the upstream speaks only MCP 2026-07-28 (the bridge
	// translates).
	modernOnly bool
}

// clientInput reports whether the upstream can ask the client for input
// (sampling, elicitation, roots): over its session's streams, or, for a
// 2026-07-28 upstream, with input requests the bridge translates.
func (s upstreamSpec) clientInput() bool { return s.stateful || s.modernOnly }

// features is the --features value for legacy-client.mjs.
func (s upstreamSpec) features() string {
	if s.clientInput() {
		return "sampling,elicitation,roots"
	}
	return ""
}

// scriptUpstream is the --upstream value for legacy-client.mjs.
func (s upstreamSpec) scriptUpstream() string {
	if s.modernOnly {
		return "go-modern"
	}
	if s.kind == kindGo && !s.stateful {
		return "go-stateless"
	}
	return string(s.kind)
}

var (
	specEverything      = upstreamSpec{name: "everything", kind: kindEverything, stateful: true, progress: true}
	specGoStatefulSSE   = upstreamSpec{name: "go-stateful-sse", kind: kindGo, args: []string{"-mode", "stateful"}, stateful: true, progress: true}
	specGoStatelessJSON = upstreamSpec{name: "go-stateless-json", kind: kindGo, args: []string{"-mode", "stateless", "-json"}}
	specGoStatefulJSON  = upstreamSpec{name: "go-stateful-json", kind: kindGo, args: []string{"-mode", "stateful", "-json"}, stateful: true, progress: true}
	// go-sdk v1.8 restricted to 2026-07-28 (which it serves stateless only).
	specGoModernOnly = upstreamSpec{name: "go-modern-only", kind: kindGo, args: []string{"-mode", "stateless", "-modern-only"}, progress: true, modernOnly: true}
)

// allUpstreams is the matrix the client suites run against.
var allUpstreams = []upstreamSpec{specEverything, specGoStatefulSSE, specGoStatelessJSON, specGoStatefulJSON, specGoModernOnly}

// upstream is a running upstream MCP server. Its methods report failures to
// (and tie its processes to) the test that started it: call them from that
// test, not from a subtest.
type upstream struct {
	spec upstreamSpec
	port int
	url  string // the Streamable HTTP endpoint
	srv  *testenv.Upstream
	t    testing.TB
}

// startUpstream starts an upstream on a free port.
func startUpstream(t testing.TB, spec upstreamSpec) *upstream {
	t.Helper()
	u := &upstream{spec: spec, t: t}
	name := "upstream " + spec.name
	switch spec.kind {
	case kindEverything:
		requireNode(t)
		u.srv = testenv.MustEverything(t, testenv.EverythingOptions{Node: nodeBin, Script: everyPath, Dir: nodeDir, Name: name})
	case kindGo:
		u.srv = testenv.MustDemoUpstream(t, testenv.DemoOptions{Bin: demoBin, Args: spec.args, Name: name})
	}
	u.port, u.url = u.srv.Port(), u.srv.URL()
	return u
}

// proc is the upstream's current process.
func (u *upstream) proc() *testenv.Process { return u.srv.Proc() }

// stop kills the upstream abruptly, as a crash would.
func (u *upstream) stop() { u.srv.Kill() }

// start starts the upstream again, on the same port, once stopped.
func (u *upstream) start() {
	u.t.Helper()
	u.srv.MustRestart(u.t)
}

// restart kills the upstream and starts a new process on the same port.
func (u *upstream) restart() {
	u.t.Helper()
	u.stop()
	u.start()
}

// ---------------------------------------------------------------------------
// Caddy
// ---------------------------------------------------------------------------

// caddy is one site of a running Caddy built from this repository.
type caddy struct {
	port  int
	base  string // http://127.0.0.1:PORT
	admin string // http://127.0.0.1:ADMINPORT, the admin endpoint; "" when it is off
	proc  *testenv.Process
}

// bridgeBlock is an mcp_sse_bridge directive for upstreamURL with short
// keepalive and session TTL, plus extra lines inside its block.
func bridgeBlock(upstreamURL string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mcp_sse_bridge {\n\t\tupstream %s\n\t\tkeepalive 1s\n\t\tsession_ttl 5s\n", upstreamURL)
	for _, l := range extra {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	b.WriteString("\t}")
	return b.String()
}

// startCaddy starts Caddy with one site on a free port that bridges to
// upstreamURL.
func startCaddy(t testing.TB, upstreamURL string, extra ...string) *caddy {
	t.Helper()
	return startCaddySites(t, site{body: bridgeBlock(upstreamURL, extra...)})[0]
}

// site is one site of a generated Caddyfile: http://127.0.0.1:port, bound to
// 127.0.0.1 only. Port 0 picks a free port.
type site struct {
	port int
	body string // the content of the site block
}

// caddyOptions are global options of a generated Caddyfile.
type caddyOptions struct {
	// admin turns the admin endpoint on, on a free loopback port
	// (caddy.admin); without it the Caddyfile has `admin off`.
	admin bool
	// debug sets the log level to DEBUG whatever E2E_DEBUG says.
	debug bool
}

// startCaddySites starts one Caddy process serving sites and returns a
// handle per site (they share the process).
func startCaddySites(t testing.TB, sites ...site) []*caddy {
	t.Helper()
	return startCaddyWith(t, caddyOptions{}, sites...)
}

// startCaddyWith is startCaddySites with global options.
func startCaddyWith(t testing.TB, opts caddyOptions, sites ...site) []*caddy {
	t.Helper()
	cf := testenv.Caddyfile{Admin: opts.admin, Debug: opts.debug || e2eDebug()}
	for _, st := range sites {
		cf.Sites = append(cf.Sites, testenv.Site{Port: st.port, Body: st.body})
	}
	c := testenv.MustCaddy(t, testenv.CaddyConfig{Bin: caddyBin, Caddyfile: cf})
	handles := make([]*caddy, len(sites))
	for i, st := range c.Caddyfile().Sites {
		handles[i] = &caddy{port: st.Port, base: c.URL(i), admin: c.AdminURL(), proc: c.Proc()}
	}
	return handles
}

// sseURL is the legacy event stream URL.
func (c *caddy) sseURL() string { return c.base + "/sse" }

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

// doRequest sends one request and returns the status, headers and body.
func doRequest(t testing.TB, hc *http.Client, method, url, contentType, body string, hdrs ...http.Header) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	code, h, b, err := testenv.Do(ctx, hc, method, url, contentType, body, hdrs...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return code, h, b
}

// maxProxiedBody bounds the request bodies the test's proxies buffer.
const maxProxiedBody = 8 << 20

// bufferBody reads a request's body into memory and gives the request that
// copy, so that a proxy in the test forwards it as a load balancer with
// request buffering does. Streamed through httputil.ReverseProxy, the body
// races the response: Go's HTTP/1 server drains and closes an unread request
// body once the response begins, the transport's last read of it then fails,
// and the transport closes the upstream connection in the middle of the
// response (golang/go#40747), cutting a long call's event stream.
func bufferBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxProxiedBody))
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	return body, nil
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

// ctxTimeout is a context for one call that fails instead of hanging.
func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// isTimeout reports whether err is a context deadline.
func isTimeout(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
