// Package tests holds the end-to-end tests of the bridge. They start real
// processes on 127.0.0.1: Caddy built from this repository with the
// mcp_sse_bridge module, real Streamable HTTP upstreams (the Go demo upstream
// of cmd/mcp-demo-upstream and the TypeScript server-everything), and real
// legacy HTTP+SSE clients (the official TypeScript SDK through
// tests/node/legacy-client.mjs, the official Go SDK in process).
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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
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
	var builds []func() error
	if caddyBin == "" {
		caddyBin = filepath.Join(binDir, "caddy")
		builds = append(builds, func() error { return goBuild(caddyBin, "./cmd/caddy") })
	}
	if demoBin == "" {
		demoBin = filepath.Join(binDir, "mcp-demo-upstream")
		builds = append(builds, func() error { return goBuild(demoBin, "./cmd/mcp-demo-upstream") })
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

// goBuild builds a main package of this module into out.
func goBuild(out, pkg string) error {
	args := []string{"build", "-o", out}
	if os.Getenv("E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, buf.Bytes())
	}
	return nil
}

// setupNode finds node and installs tests/node's packages if needed.
func setupNode() error {
	nodeBin = os.Getenv("NODE")
	if nodeBin == "" {
		p, err := exec.LookPath("node")
		if err != nil {
			return fmt.Errorf("node not found on PATH: %v", err)
		}
		nodeBin = p
	}
	installed := true
	for _, p := range []string{
		filepath.Join(nodeDir, "node_modules", "@modelcontextprotocol", "sdk"),
		filepath.Join(nodeDir, "node_modules", "sdk-old"),
		everyPath,
	} {
		if _, err := os.Stat(p); err != nil {
			installed = false
		}
	}
	if installed {
		return nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return fmt.Errorf("tests/node/node_modules is missing and npm is not on PATH: %v", err)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = nodeDir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("npm ci in tests/node: %v\n%s", err, buf.Bytes())
	}
	return nil
}

func requireNode(t testing.TB) {
	t.Helper()
	if nodeErr != nil {
		t.Fatalf("node is needed for this test: %v", nodeErr)
	}
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

// output collects a process's stdout and stderr and lets tests wait for a
// pattern to show up in it.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// snapshot returns the output so far and a channel closed on the next write.
func (o *output) snapshot() (string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String(), o.changed
}

// proc is a child process in its own process group.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *output
	// stdin is the write end of the process's standard input, if asked for.
	stdin io.WriteCloser
	done  chan struct{} // closed once the process has exited
	err   error         // cmd.Wait's result, valid after done
}

type procOptions struct {
	dir   string
	env   []string // added to the test's environment
	stdin bool
}

// startProc starts a process whose output is kept for the test's log and
// whose whole process group is killed when the test ends.
func startProc(t testing.TB, name string, opts procOptions, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: newOutput(), done: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Dir = opts.dir
	cmd.Env = append(os.Environ(), opts.env...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if opts.stdin {
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatalf("%s: stdin: %v", name, err)
		}
		p.stdin = w
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race (see its output below)", name)
		}
		if t.Failed() {
			t.Logf("---- output of %s (%s) ----\n%s---- end of %s ----", name, strings.Join(cmd.Args, " "), p.out.String(), name)
		}
	})
	return p
}

// kill ends the process group at once and waits for the process.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// waitOutput waits until re matches the process's output and returns the
// submatches. It fails the test if the process exits or the timeout passes
// first.
func (p *proc) waitOutput(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	var m []string
	p.waitUntil(t, fmt.Sprintf("output matching %q", re), timeout, func(s string) bool {
		m = re.FindStringSubmatch(s)
		return m != nil
	})
	return m
}

// waitUntil waits until cond holds for the process's output so far. It fails
// the test if the process exits or the timeout passes first.
func (p *proc) waitUntil(t testing.TB, what string, timeout time.Duration, cond func(out string) bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s, changed := p.out.snapshot()
		if cond(s) {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			if cond(p.out.String()) {
				return
			}
			t.Fatalf("%s exited (%v) before its output showed %s", p.name, p.err, what)
		case <-timer.C:
			t.Fatalf("%s: no %s within %v", p.name, what, timeout)
		}
	}
}

// wait waits for the process to exit on its own.
func (p *proc) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v", p.name, timeout)
		return nil
	}
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitTCP polls a TCP connect to addr until it succeeds, p exits, or the
// timeout passes.
func waitTCP(t testing.TB, p *proc, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not accept connections within %v: %v", p.name, addr, timeout, err)
		}
		select {
		case <-tick.C:
		case <-p.done:
			t.Fatalf("%s exited (%v) before %s accepted connections", p.name, p.err, addr)
		}
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
}

// features is the --features value for legacy-client.mjs.
func (s upstreamSpec) features() string {
	if s.stateful {
		return "sampling,elicitation,roots"
	}
	return ""
}

// scriptUpstream is the --upstream value for legacy-client.mjs.
func (s upstreamSpec) scriptUpstream() string {
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
)

// allUpstreams is the matrix the client suites run against.
var allUpstreams = []upstreamSpec{specEverything, specGoStatefulSSE, specGoStatelessJSON, specGoStatefulJSON}

// upstream is a running upstream MCP server. Its methods report failures to
// (and tie its processes to) the test that started it: call them from that
// test, not from a subtest.
type upstream struct {
	spec upstreamSpec
	port int
	url  string // the Streamable HTTP endpoint
	proc *proc
	t    testing.TB
	runs int
}

var listeningRe = regexp.MustCompile(`listening on (http://127\.0\.0\.1:(\d+)/mcp)\n`)

// startUpstream starts an upstream on a free port.
func startUpstream(t testing.TB, spec upstreamSpec) *upstream {
	t.Helper()
	u := &upstream{spec: spec, t: t}
	if spec.kind == kindEverything {
		u.port = freePort(t)
	}
	u.start()
	return u
}

// start runs the upstream on u.port (0 for the demo: any free port).
func (u *upstream) start() {
	t := u.t
	t.Helper()
	u.runs++
	name := fmt.Sprintf("upstream %s #%d", u.spec.name, u.runs)
	switch u.spec.kind {
	case kindEverything:
		requireNode(t)
		u.proc = startProc(t, name, procOptions{dir: nodeDir, env: []string{"PORT=" + strconv.Itoa(u.port)}},
			nodeBin, everyPath, "streamableHttp")
		waitTCP(t, u.proc, fmt.Sprintf("127.0.0.1:%d", u.port), 20*time.Second)
		u.url = fmt.Sprintf("http://127.0.0.1:%d/mcp", u.port)
	case kindGo:
		args := append([]string{"-addr", fmt.Sprintf("127.0.0.1:%d", u.port)}, u.spec.args...)
		u.proc = startProc(t, name, procOptions{}, demoBin, args...)
		m := u.proc.waitOutput(t, listeningRe, 20*time.Second)
		u.url = m[1]
		u.port, _ = strconv.Atoi(m[2])
	}
}

// stop kills the upstream abruptly, as a crash would.
func (u *upstream) stop() { u.proc.kill() }

// restart kills the upstream and starts a new process on the same port.
func (u *upstream) restart() {
	u.t.Helper()
	u.stop()
	u.start()
}

// ---------------------------------------------------------------------------
// Caddy
// ---------------------------------------------------------------------------

// caddy is a running Caddy built from this repository.
type caddy struct {
	port  int
	base  string // http://127.0.0.1:PORT
	admin string // http://127.0.0.1:ADMINPORT, the admin endpoint; "" when it is off
	proc  *proc
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
	dir := t.TempDir()
	var cf strings.Builder
	adminPort, admin := 0, ""
	if opts.admin {
		adminPort = freePort(t)
		admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
		fmt.Fprintf(&cf, "{\n\tadmin 127.0.0.1:%d\n", adminPort)
	} else {
		cf.WriteString("{\n\tadmin off\n")
	}
	cf.WriteString("\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n")
	if opts.debug || os.Getenv("E2E_DEBUG") == "1" {
		cf.WriteString("\tdebug\n")
	}
	cf.WriteString("}\n")
	handles := make([]*caddy, len(sites))
	for i, st := range sites {
		port := st.port
		if port == 0 {
			port = freePort(t)
		}
		handles[i] = &caddy{port: port, base: fmt.Sprintf("http://127.0.0.1:%d", port), admin: admin}
		fmt.Fprintf(&cf, "\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n\t%s\n}\n", port, st.body)
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"HOME=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
	}
	p := startProc(t, "caddy", procOptions{dir: dir, env: env}, caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- Caddyfile ----\n%s", cf.String())
		}
	})
	for _, h := range handles {
		h.proc = p
		waitTCP(t, p, fmt.Sprintf("127.0.0.1:%d", h.port), 20*time.Second)
	}
	if opts.admin {
		waitTCP(t, p, fmt.Sprintf("127.0.0.1:%d", adminPort), 10*time.Second)
	}
	return handles
}

// sseURL is the legacy event stream URL.
func (c *caddy) sseURL() string { return c.base + "/sse" }

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

// newHTTPClient returns an HTTP client with its own transport, whose idle
// connections are closed when the test ends (so that goleak stays quiet).
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 200,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
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
