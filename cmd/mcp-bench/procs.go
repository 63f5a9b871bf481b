package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

// child is a process the benchmark started, in its own process group, killed
// with it (Pdeathsig) should the benchmark die without cleaning up.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // cmd.Wait's result, valid after done
}

// children tracks every child so that all are ended on exit.
type children struct {
	mu   sync.Mutex
	list []*child
}

// start runs bin with args; its output goes to logPath (stdout too, unless
// stdout is given).
func (cs *children) start(name, dir, logPath string, env []string, stdout io.Writer, bin string, args ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop asks the process group to terminate, and kills it after a grace
// period.
func (c *child) stop() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(3 * time.Second):
	}
	c.kill()
}

// kill ends the process group at once and waits for the process.
func (c *child) kill() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	<-c.done
}

// logTail returns the last lines of the child's output.
func (c *child) logTail(lines int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// killAll kills every child still running.
func (cs *children) killAll() { cs.each((*child).kill) }

// stopAll stops every child still running, politely first.
func (cs *children) stopAll() { cs.each((*child).stop) }

// each runs f on every child at once and waits for all.
func (cs *children) each(f func(*child)) {
	cs.mu.Lock()
	list := append([]*child(nil), cs.list...)
	cs.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range list {
		wg.Go(func() { f(c) })
	}
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Ports and readiness
// ---------------------------------------------------------------------------

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP polls a TCP connect to addr until it succeeds, the child exits, or
// the timeout passes.
func waitTCP(ctx context.Context, c *child, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s accepts no connections after %v: %v", c.name, addr, timeout, err)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-c.done:
			return fmt.Errorf("%s exited (%v) before listening on %s:\n%s", c.name, c.err, addr, c.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var listeningRe = regexp.MustCompile(`^listening on (http://127\.0\.0\.1:[0-9]+/mcp)$`)

// readListening reads the upstream's first stdout line (its URL) from r,
// then copies the rest of r to rest.
func readListening(ctx context.Context, c *child, r io.Reader, rest io.Writer, timeout time.Duration) (string, error) {
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		br := bufio.NewReader(r)
		line, err := br.ReadString('\n')
		got <- result{strings.TrimRight(line, "\r\n"), err}
		_, _ = io.Copy(rest, br)
	}()
	select {
	case res := <-got:
		if res.err != nil {
			return "", fmt.Errorf("%s: reading its address: %v\n%s", c.name, res.err, c.logTail(20))
		}
		m := listeningRe.FindStringSubmatch(res.line)
		if m == nil {
			return "", fmt.Errorf("%s: first line %q is not %q", c.name, res.line, listeningRe)
		}
		return m[1], nil
	case <-time.After(timeout):
		return "", fmt.Errorf("%s did not announce its address within %v", c.name, timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// startUpstream starts the demo upstream in stateless JSON mode and returns
// its URL.
func (b *bench) startUpstream(ctx context.Context) (*child, string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer pr.Close()
	logPath := filepath.Join(b.tmp, "upstream.log")
	c, err := b.kids.start("upstream", b.tmp, logPath, nil, pw, b.cfg.upstreamBin, "-addr", "127.0.0.1:0", "-mode", "stateless", "-json")
	pw.Close()
	if err != nil {
		return nil, "", err
	}
	rest, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, "", err
	}
	u, err := readListening(ctx, c, pr, rest, 20*time.Second)
	return c, u, err
}

// startRedis starts a redis-server on a free loopback port without
// persistence. It returns why not, or "".
func (b *bench) startRedis(ctx context.Context) string {
	if b.cfg.redisBin == "" {
		return `disabled with -redis-server ""`
	}
	bin, err := exec.LookPath(b.cfg.redisBin)
	if err != nil {
		return b.cfg.redisBin + " not on PATH"
	}
	b.redisVer = firstLine(commandOutput(ctx, bin, "--version"))
	port, err := freePort()
	if err != nil {
		return err.Error()
	}
	dir := filepath.Join(b.tmp, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err.Error()
	}
	c, err := b.kids.start("redis-server", dir, filepath.Join(dir, "redis.log"), nil, nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--protected-mode", "yes",
		"--maxclients", strconv.Itoa(max(10000, b.cfg.idle+1000)))
	if err != nil {
		return err.Error()
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitTCP(ctx, c, addr, 10*time.Second); err != nil {
		return err.Error()
	}
	b.redis, b.redisProbe = c, newRedisProbe(addr)
	for i := 0; ; i++ { // TCP is up; Redis may still be loading
		err := b.redisProbe.c.Ping(ctx).Err()
		if err == nil {
			break
		}
		if i == 50 || !sleepCtx(ctx, 100*time.Millisecond) {
			return "PING: " + err.Error()
		}
	}
	b.logf("redis-server at %s", addr)
	return ""
}

// caddyInst is the Caddy of one phase.
type caddyInst struct {
	c     *child
	store string
	base  string // http://127.0.0.1:PORT
	admin string // admin address, if enabled
	log   string
}

func (ci *caddyInst) sseURL() string { return ci.base + "/sse" }

// caddyfileText is the generated configuration: one site on 127.0.0.1:port
// bridging to upstream, with the given store block, admin as given ("off" or
// an address).
func caddyfileText(port int, admin, upstream, store string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n\n", admin)
	// The bench opens its thousands of sessions from one address.
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tmcp_sse_bridge {\n\t\tupstream %s\n\t\tnew_session_rate 1000000\n", port, upstream)
	for _, l := range strings.Split(strings.TrimSpace(store), "\n") {
		fmt.Fprintf(&b, "\t\t%s\n", l)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// storeBlock is the Caddyfile store block for a store.
func storeBlock(store, redisAddr string, maxSessions int) string {
	if store == "redis" {
		return fmt.Sprintf("store redis {\n\taddress %s\n}", redisAddr)
	}
	return fmt.Sprintf("store memory {\n\tmax_sessions %d\n}", maxSessions)
}

// startCaddy starts a fresh Caddy for one phase, with the admin API on a
// loopback port when profiling.
func (b *bench) startCaddy(ctx context.Context, store, phase string) (*caddyInst, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.tmp, store+"-"+phase)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ci := &caddyInst{store: store, base: fmt.Sprintf("http://127.0.0.1:%d", port), log: filepath.Join(dir, "caddy.log")}
	admin := "off"
	if b.cfg.pprofDir != "" {
		ap, err := freePort()
		if err != nil {
			return nil, err
		}
		ci.admin = fmt.Sprintf("127.0.0.1:%d", ap)
		admin = ci.admin
	}
	redisAddr := ""
	if store == "redis" {
		redisAddr = b.redisProbe.c.Options().Addr
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfileText(port, admin, b.upstreamURL, storeBlock(store, redisAddr, b.cfg.idle+2048))), 0o600); err != nil {
		return nil, err
	}
	env := []string{"HOME=" + dir, "XDG_DATA_HOME=" + filepath.Join(dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(dir, "config")}
	c, err := b.kids.start("caddy ("+store+", "+phase+")", dir, ci.log, env, nil, b.cfg.caddyBin, "run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	ci.c = c
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", port), ci.admin} {
		if addr == "" {
			continue
		}
		if err := waitTCP(ctx, c, addr, 30*time.Second); err != nil {
			c.kill()
			return nil, err
		}
	}
	if b.caddyNofile == 0 {
		b.caddyNofile = openFilesLimit(c.pid())
	}
	return ci, nil
}

// stopCaddy stops a phase's Caddy and adds its warnings and errors to the
// store's log summary.
func (b *bench) stopCaddy(ci *caddyInst, res *storeResult) {
	ci.c.stop()
	res.logs.add(ci.log)
}
