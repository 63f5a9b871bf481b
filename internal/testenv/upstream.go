package testenv

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"
)

// The MCP upstreams the bridge is tested against: the Go demo upstream
// (cmd/mcp-demo-upstream, the official go-sdk) and the TypeScript
// reference server @modelcontextprotocol/server-everything, run by node.

// DemoOptions describes a run of cmd/mcp-demo-upstream.
type DemoOptions struct {
	Bin  string // the built demo upstream; required
	Port int    // 0: the upstream picks a free port itself
	// Args are its flags besides -addr: its modes ("-mode", "stateless",
	// "-json", "-event-store", ...).
	Args    []string
	Dir     string
	Name    string // "mcp-demo-upstream" if empty
	LogFile string
	OnStart func(*Process)
}

// EverythingOptions describes a run of server-everything's Streamable
// HTTP transport.
type EverythingOptions struct {
	Node string // the node executable; "node" (on PATH) if empty
	// Script is server-everything's entry point
	// (node_modules/@modelcontextprotocol/server-everything/dist/index.js);
	// required.
	Script  string
	Dir     string // the working directory (the node project)
	Port    int    // 0: a free port
	Name    string // "server-everything" if empty
	LogFile string
	OnStart func(*Process)
}

// Upstream is a running MCP server speaking Streamable HTTP.
type Upstream struct {
	cmd     Command
	port    int
	url     string
	ready   *regexp.Regexp
	proc    *Process
	runs    int
	setPort func(*Command, int)
}

var (
	// demoListeningRe is the demo upstream's first line, once it listens.
	demoListeningRe = regexp.MustCompile(`listening on (http://127\.0\.0\.1:(\d+)/mcp)\n`)
	// everythingListeningRe is server-everything's line once it listens.
	everythingListeningRe = regexp.MustCompile(`listening on port (\d+)`)
)

// StartDemoUpstream starts the demo upstream and waits for its "listening
// on URL" line, which names its port.
func StartDemoUpstream(ctx context.Context, opts DemoOptions) (*Upstream, error) {
	if opts.Bin == "" {
		return nil, errors.New("testenv: DemoOptions.Bin is required")
	}
	if opts.Name == "" {
		opts.Name = "mcp-demo-upstream"
	}
	u := &Upstream{
		cmd:   Command{Name: opts.Name, Path: opts.Bin, Dir: opts.Dir, LogFile: opts.LogFile, OnStart: opts.OnStart},
		port:  opts.Port,
		ready: demoListeningRe,
		setPort: func(c *Command, port int) {
			c.Args = append([]string{"-addr", Addr(port)}, opts.Args...)
		},
	}
	if err := u.start(ctx); err != nil {
		return nil, err
	}
	return u, nil
}

// StartEverything starts server-everything on its Streamable HTTP
// transport and waits for its "listening on port" line.
func StartEverything(ctx context.Context, opts EverythingOptions) (*Upstream, error) {
	if opts.Script == "" {
		return nil, errors.New("testenv: EverythingOptions.Script is required")
	}
	if opts.Node == "" {
		opts.Node = "node"
	}
	if opts.Name == "" {
		opts.Name = "server-everything"
	}
	if opts.Port == 0 {
		// It reads its port from PORT and cannot pick one itself.
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		opts.Port = port
	}
	u := &Upstream{
		cmd: Command{Name: opts.Name, Path: opts.Node, Args: []string{opts.Script, "streamableHttp"},
			Dir: opts.Dir, LogFile: opts.LogFile, OnStart: opts.OnStart},
		port:  opts.Port,
		ready: everythingListeningRe,
		setPort: func(c *Command, port int) {
			c.Env = []string{"PORT=" + strconv.Itoa(port)}
		},
	}
	if err := u.start(ctx); err != nil {
		return nil, err
	}
	return u, nil
}

// start runs the upstream on u.port (0: its choice) and waits until it
// listens.
func (u *Upstream) start(ctx context.Context) error {
	u.runs++
	c := u.cmd
	if u.runs > 1 {
		c.Name = fmt.Sprintf("%s #%d", c.Name, u.runs)
	}
	u.setPort(&c, u.port)
	p, err := Start(c)
	if err != nil {
		return err
	}
	m, err := p.WaitOutput(ctx, u.ready)
	if err != nil {
		p.Kill()
		return fmt.Errorf("%w\n%s", err, p.Tail(30))
	}
	if u.port == 0 {
		u.port, _ = strconv.Atoi(m[len(m)-1])
	}
	u.url = fmt.Sprintf("http://%s/mcp", Addr(u.port))
	u.proc = p
	return nil
}

// URL is the upstream's Streamable HTTP endpoint.
func (u *Upstream) URL() string { return u.url }

// Port is the upstream's port.
func (u *Upstream) Port() int { return u.port }

// Proc is the upstream's current process.
func (u *Upstream) Proc() *Process { return u.proc }

// Kill ends the upstream abruptly, as a crash would.
func (u *Upstream) Kill() { u.proc.Kill() }

// Restart kills the upstream (if it runs) and starts a new process on the
// same port.
func (u *Upstream) Restart(ctx context.Context) error {
	u.proc.Kill()
	return u.start(ctx)
}

// MustDemoUpstream is StartDemoUpstream for a test; restarts are tied to
// the test too.
func MustDemoUpstream(tb testing.TB, opts DemoOptions) *Upstream {
	tb.Helper()
	opts.OnStart = then(opts.OnStart, watcher(tb))
	return mustReady(tb, "the demo upstream", func(ctx context.Context) (*Upstream, error) { return StartDemoUpstream(ctx, opts) })
}

// MustEverything is StartEverything for a test; restarts are tied to the
// test too.
func MustEverything(tb testing.TB, opts EverythingOptions) *Upstream {
	tb.Helper()
	opts.OnStart = then(opts.OnStart, watcher(tb))
	return mustReady(tb, "server-everything", func(ctx context.Context) (*Upstream, error) { return StartEverything(ctx, opts) })
}

// MustRestart is Restart for a test.
func (u *Upstream) MustRestart(tb testing.TB) {
	tb.Helper()
	ctx, cancel := timeoutCtx(DefaultReadyTimeout)
	defer cancel()
	if err := u.Restart(ctx); err != nil {
		tb.Fatalf("restarting %s: %v", u.cmd.Name, err)
	}
}
