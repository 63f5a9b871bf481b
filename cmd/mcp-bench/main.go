// Command mcp-bench measures the MCP SSE bridge end to end and prints one
// report with the performance targets next to the numbers.
//
// It starts everything itself on 127.0.0.1 and stops it again: the go-sdk
// demo upstream (cmd/mcp-demo-upstream) in stateless JSON mode, the Caddy
// built from this repository bridging to it (memory store; and, when
// redis-server is on PATH and ./caddy has the redis store, again with a
// redis-server it starts), and its own lean clients:
//
//   - throughput and latency: N sessions each calling tools/call echo one
//     call after another for a fixed time, through the bridge (legacy
//     HTTP+SSE client) and straight at the upstream (Streamable HTTP client,
//     same code paths but the transport); Caddy's peak RSS and the Redis
//     connection count during each bridged run;
//   - idle sessions: S legacy sessions opened, initialised and kept open;
//     Caddy's RSS before and after, per session; Redis connections;
//   - one 1 MiB message: Caddy's peak RSS growth while one echo of a 1 MiB
//     string goes through.
//
// Usage:
//
//	go build -o .bin/mcp-bench ./cmd/mcp-bench && .bin/mcp-bench [flags]
//	./xcaddy.sh bench                      (builds everything first)
//	BENCH_FLAGS=-quick ./xcaddy.sh bench   (2 s runs, 1000 idle sessions)
//
// Run it from the repository root (or pass -caddy and -upstream-bin). The
// report goes to stdout, progress to stderr. The exit status is 0 when every
// measurement ran (whether or not the targets were met), 1 when one failed,
// 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

// Targets (issue "Performance: a benchmark, and targets close to the limit").
const (
	targetSessions        = 8   // throughput targets apply at this session count
	targetRatioMemory     = 0.8 // bridged/direct throughput, memory store
	targetRatioRedis      = 0.6 // … redis store
	targetLatencySessions = 1   // added-latency targets apply at this count
	targetAddedP50Memory  = 300 * time.Microsecond
	targetAddedP50Redis   = time.Millisecond
	targetIdleKiB         = 30.0    // RSS per idle session
	targetRedisConns      = 8       // Redis connections per replica
	targetBigGrowth       = 4 << 20 // peak RSS growth for one 1 MiB message
)

const redisModule = "http.handlers.mcp_sse_bridge.stores.redis"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config holds the parsed flags.
type config struct {
	caddyBin    string
	upstreamBin string
	redisBin    string
	duration    time.Duration
	warmup      time.Duration
	sessions    []int
	idle        int
	msgSize     int
	stores      []string
	pprofDir    string
	timeout     time.Duration
	rounds      int
	quick       bool
	args        []string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("mcp-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{args: args}
	var sessions, stores string
	fs.StringVar(&cfg.caddyBin, "caddy", "./caddy", "the Caddy binary built from this repository")
	fs.StringVar(&cfg.upstreamBin, "upstream-bin", ".bin/mcp-demo-upstream", "the demo upstream binary (go build ./cmd/mcp-demo-upstream)")
	fs.StringVar(&cfg.redisBin, "redis-server", "redis-server", `redis-server binary (looked up on PATH); "" skips the redis runs`)
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "measuring time of each throughput run")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "warm-up time of each kind of session before each throughput run (not measured)")
	fs.IntVar(&cfg.rounds, "rounds", 4, "each throughput run alternates direct and bridged slices over this many rounds (duration/rounds each)")
	fs.StringVar(&sessions, "sessions", "1,8", "comma-separated session counts of the throughput runs")
	fs.IntVar(&cfg.idle, "idle", 10000, "idle sessions to open (0 skips the idle run)")
	fs.IntVar(&cfg.msgSize, "message-size", 1<<20, "size in bytes of the large echoed string (0 skips the run)")
	fs.StringVar(&stores, "stores", "memory,redis", "stores to measure: memory, redis")
	fs.StringVar(&cfg.pprofDir, "pprof", "", "directory for CPU profiles of Caddy during the largest bridged run (enables Caddy's admin API on a loopback port); the top functions are added to the report")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "overall time limit (default: estimated from the other flags)")
	fs.BoolVar(&cfg.quick, "quick", false, "short run: -duration 2s -warmup 500ms -idle 1000 (flags given explicitly win)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		if !set["duration"] {
			cfg.duration = 2 * time.Second
		}
		if !set["warmup"] {
			cfg.warmup = 500 * time.Millisecond
		}
		if !set["idle"] {
			cfg.idle = 1000
		}
	}
	if cfg.duration <= 0 || cfg.warmup < 0 || cfg.idle < 0 || cfg.msgSize < 0 || cfg.rounds <= 0 {
		return nil, errors.New("-duration and -rounds must be positive; -warmup, -idle and -message-size not negative")
	}
	for _, f := range strings.Split(sessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > 1000 {
			return nil, fmt.Errorf("bad -sessions entry %q (want 1…1000)", f)
		}
		cfg.sessions = append(cfg.sessions, n)
	}
	for _, s := range strings.Split(stores, ",") {
		s = strings.TrimSpace(s)
		if s != "memory" && s != "redis" {
			return nil, fmt.Errorf("unknown store %q in -stores", s)
		}
		cfg.stores = append(cfg.stores, s)
	}
	if cfg.timeout <= 0 {
		cfg.timeout = estimate(cfg)
	}
	// The children run in their own directories.
	for _, p := range []*string{&cfg.caddyBin, &cfg.upstreamBin} {
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	return cfg, nil
}

// estimate is a generous time limit for the whole run.
func estimate(cfg *config) time.Duration {
	perStore := time.Duration(len(cfg.sessions)) * 2 * (cfg.duration + cfg.warmup + 10*time.Second)
	perStore += 30*time.Second + time.Duration(cfg.idle)*15*time.Millisecond // idle run
	perStore += 30 * time.Second                                             // 1 MiB run, starts and stops
	return 2*time.Duration(len(cfg.stores))*perStore + time.Minute
}

// run is main without the exit.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "mcp-bench:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()

	b := &bench{cfg: cfg, progress: stderr, started: time.Now()}
	// First signal: stop measuring, report what there is, clean up. Second:
	// kill the children and leave at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		b.logf("%v: stopping", sig)
		b.interrupted.Store(true)
		cancel()
		if _, ok := <-sigs; ok {
			b.kids.killAll()
			os.Exit(130)
		}
	}()

	b.tmp, err = os.MkdirTemp("", "mcp-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "mcp-bench:", err)
		return 1
	}
	defer os.RemoveAll(b.tmp)
	defer b.kids.killAll()

	err = b.runAll(ctx)
	b.kids.stopAll()
	b.report(stdout)
	switch {
	case b.interrupted.Load():
		fmt.Fprintln(stderr, "mcp-bench: interrupted; the report is partial")
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "mcp-bench:", err)
		return 1
	case b.failed:
		fmt.Fprintln(stderr, "mcp-bench: some measurements failed (see the report)")
		return 1
	}
	return 0
}

// bench is one benchmark run and its results.
type bench struct {
	cfg         *config
	progress    io.Writer
	started     time.Time
	tmp         string
	kids        children
	interrupted atomic.Bool

	loadStart   string
	nofile      uint64
	caddyVer    string
	upstreamURL string
	upstream    *child
	redis       *child
	redisAddr   string
	redisNote   string // why there are no redis runs, if there are none
	redisVer    string
	results     []*storeResult
	failed      bool
	caddyLimits string
}

// storeResult holds the measurements of one store configuration.
type storeResult struct {
	name    string
	note    string // why the store was not measured, if it was not
	rows    []*throughputRow
	idle    *idleResult
	big     *bigResult
	profile string
	// heapProfile: Caddy's heap and goroutines with the idle sessions open
	// (-pprof).
	heapProfile string
	// allocProfile: what Caddy allocated for the large message (-pprof).
	allocProfile string
	logs         logSummary
	setupError   error
}

type throughputRow struct {
	sessions        int
	direct, bridged loadStats
	directErr       error
	bridgedErr      error
	peakHWM         int64 // VmHWM after the bridged run (reset before it when possible)
	hwmReset        bool
	redisConns      int // peak during the bridged run; -1 unknown
	// redisCmds: Redis commands per command name over the measuring rounds
	// (the bridged calls are all that uses Redis then).
	redisCmds map[string]int64
}

type idleResult struct {
	want, opened, failed int
	firstErr             error
	openTime             time.Duration
	before, after        procMem
	redisConns           int
	checked, checkFailed int
	err                  error
	// Go runtime metrics of Caddy before and after (-pprof only).
	metricsBefore, metricsAfter map[string]float64
	heapBefore                  string // baseline heap profile (-pprof only)
}

type bigResult struct {
	size                  int
	base, peak            int64 // RSS when the peak was reset (or the earlier peak), peak after
	reset                 bool
	bridgedLat, directLat time.Duration
	err                   error
	allocs                string // allocation profile of the bridged call (-pprof)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "mcp-bench %5.1fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

// runAll starts the shared processes and measures each store.
func (b *bench) runAll(ctx context.Context) error {
	b.loadStart = loadAverage()
	for _, p := range []string{b.cfg.caddyBin, b.cfg.upstreamBin} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%v (run from the repository root after ./xcaddy.sh build, or use -caddy / -upstream-bin)", err)
		}
	}
	// Each idle session holds a connection in this process and one in
	// Caddy; the children inherit the raised limit.
	want := uint64(b.cfg.idle)*2 + 4096
	lim, err := raiseNoFile(want)
	if err != nil {
		b.logf("raising RLIMIT_NOFILE: %v", err)
	}
	b.nofile = lim
	if lim < uint64(b.cfg.idle)+1024 {
		b.logf("warning: RLIMIT_NOFILE is %d, too low for %d idle sessions", lim, b.cfg.idle)
	}
	b.caddyVer = firstLine(commandOutput(ctx, b.cfg.caddyBin, "version"))
	modules := commandOutput(ctx, b.cfg.caddyBin, "list-modules")
	if !strings.Contains(modules, "http.handlers.mcp_sse_bridge") {
		return fmt.Errorf("%s list-modules shows no mcp_sse_bridge module", b.cfg.caddyBin)
	}

	// The upstream, shared by every run.
	up, upOut, err := b.startUpstream(ctx)
	if err != nil {
		return err
	}
	b.upstreamURL = upOut
	b.upstream = up

	for _, store := range b.cfg.stores {
		if ctx.Err() != nil {
			break
		}
		res := &storeResult{name: store}
		b.results = append(b.results, res)
		var redisAddr string
		if store == "redis" {
			if !strings.Contains(modules, redisModule) {
				res.note = "redis: not available"
				b.redisNote = "not available: " + b.cfg.caddyBin + " list-modules has no " + redisModule
				b.logf("redis %s", b.redisNote)
				continue
			}
			addr, note := b.startRedis(ctx)
			if addr == "" {
				res.note = "redis: not available"
				b.redisNote = "not available: " + note
				b.logf("redis %s", b.redisNote)
				continue
			}
			redisAddr = addr
			b.redisAddr = addr
		}
		b.measureStore(ctx, res, redisAddr)
		if up.exited() {
			return fmt.Errorf("the upstream exited (%v):\n%s", up.err, up.logTail(20))
		}
	}
	return nil
}

// startUpstream starts the demo upstream in stateless JSON mode.
func (b *bench) startUpstream(ctx context.Context) (*child, string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(b.tmp, "upstream.log")
	c, err := b.kids.start("upstream", b.tmp, logPath, nil, pw, b.cfg.upstreamBin, "-addr", "127.0.0.1:0", "-mode", "stateless", "-json")
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, "", err
	}
	rest, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		pr.Close()
		return nil, "", err
	}
	u, err := readListening(ctx, c, pr, rest, 20*time.Second)
	if err != nil {
		return nil, "", err
	}
	b.logf("upstream at %s", u)
	return c, u, nil
}

// startRedis starts a redis-server on a free loopback port without
// persistence. It returns its address, or "" and why not.
func (b *bench) startRedis(ctx context.Context) (string, string) {
	if b.cfg.redisBin == "" {
		return "", "disabled with -redis-server \"\""
	}
	bin, err := exec.LookPath(b.cfg.redisBin)
	if err != nil {
		return "", b.cfg.redisBin + " not on PATH"
	}
	b.redisVer = firstLine(commandOutput(ctx, bin, "--version"))
	port, err := freePort()
	if err != nil {
		return "", err.Error()
	}
	dir := filepath.Join(b.tmp, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err.Error()
	}
	c, err := b.kids.start("redis-server", dir, filepath.Join(dir, "redis.log"), nil, nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--protected-mode", "yes",
		"--maxclients", strconv.Itoa(max(10000, b.cfg.idle+1000)))
	if err != nil {
		return "", err.Error()
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	b.redis = c
	if err := waitTCP(ctx, c, addr, 10*time.Second); err != nil {
		return "", err.Error()
	}
	for i := 0; ; i++ {
		v, err := redisDo(addr, "PING")
		if err == nil && v == "PONG" {
			break
		}
		if i == 50 {
			return "", fmt.Sprintf("PING: %v %v", v, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.logf("redis-server at %s", addr)
	return addr, ""
}

// ---------------------------------------------------------------------------
// Caddy
// ---------------------------------------------------------------------------

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

// startCaddy starts a fresh Caddy for one phase.
func (b *bench) startCaddy(ctx context.Context, store, redisAddr, label string, withAdmin bool) (*caddyInst, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.tmp, store+"-"+label)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ci := &caddyInst{store: store, base: fmt.Sprintf("http://127.0.0.1:%d", port), log: filepath.Join(dir, "caddy.log")}
	admin := "off"
	if withAdmin {
		ap, err := freePort()
		if err != nil {
			return nil, err
		}
		ci.admin = fmt.Sprintf("127.0.0.1:%d", ap)
		admin = ci.admin
	}
	text := caddyfileText(port, admin, b.upstreamURL, storeBlock(store, redisAddr, b.cfg.idle+2048))
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return nil, err
	}
	env := []string{
		"HOME=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
	}
	c, err := b.kids.start("caddy ("+store+", "+label+")", dir, ci.log, env, nil, b.cfg.caddyBin,
		"run", "--config", path, "--adapter", "caddyfile")
	if err != nil {
		return nil, err
	}
	ci.c = c
	if err := waitTCP(ctx, c, fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second); err != nil {
		c.kill()
		return nil, err
	}
	if ci.admin != "" {
		if err := waitTCP(ctx, c, ci.admin, 10*time.Second); err != nil {
			c.kill()
			return nil, err
		}
	}
	if b.caddyLimits == "" {
		b.caddyLimits = openFilesLimit(c.pid())
	}
	return ci, nil
}

// stopCaddy stops a phase's Caddy and adds its warnings and errors to the
// store's log summary.
func (b *bench) stopCaddy(ci *caddyInst, res *storeResult) {
	ci.c.stop()
	res.logs.add(ci.log)
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

// measureStore runs the three phases for one store.
func (b *bench) measureStore(ctx context.Context, res *storeResult, redisAddr string) {
	flush := func() {
		if redisAddr != "" {
			if _, err := redisDo(redisAddr, "FLUSHALL"); err != nil {
				b.logf("redis FLUSHALL: %v", err)
			}
		}
	}

	// Throughput and latency.
	flush()
	ci, err := b.startCaddy(ctx, res.name, redisAddr, "throughput", b.cfg.pprofDir != "")
	if err != nil {
		res.setupError = err
		b.failed = true
		b.logf("%s: starting caddy: %v", res.name, err)
		return
	}
	maxN := 0
	for _, n := range b.cfg.sessions {
		maxN = max(maxN, n)
	}
	for _, n := range b.cfg.sessions {
		if ctx.Err() != nil {
			break
		}
		row := &throughputRow{sessions: n, redisConns: -1}
		res.rows = append(res.rows, row)
		b.logf("%s: %d session(s), direct and bridged in %d alternating rounds", res.name, n, b.cfg.rounds)
		row.hwmReset = resetPeak(ci.c.pid())
		smp := startSampler(ci.c.pid(), redisAddr, 100*time.Millisecond)
		var during func()
		if ci.admin != "" && n == maxN {
			during = func() { res.profile = b.profile(ctx, ci, res.name, n) }
		}
		b.interleaved(ctx, row, ci.sseURL(), redisAddr, ci.c.pid(), during)
		smp.finish()
		if m, err := readMem(ci.c.pid()); err == nil {
			row.peakHWM = m.hwm
		}
		if !row.hwmReset {
			row.peakHWM = max(row.peakHWM, smp.maxRSS)
		}
		row.redisConns = smp.maxRedis
		if row.directErr != nil || row.bridgedErr != nil || row.direct.errors > 0 || row.bridged.errors > 0 {
			b.failed = true
		}
		if ci.c.exited() {
			res.setupError = fmt.Errorf("caddy exited (%v):\n%s", ci.c.err, ci.c.logTail(20))
			b.failed = true
			return
		}
	}
	b.stopCaddy(ci, res)

	// Idle sessions.
	if b.cfg.idle > 0 && ctx.Err() == nil {
		flush()
		b.logf("%s: %d idle sessions", res.name, b.cfg.idle)
		ci, err := b.startCaddy(ctx, res.name, redisAddr, "idle", b.cfg.pprofDir != "")
		if err != nil {
			res.idle = &idleResult{err: err}
		} else {
			var whileOpen func(*idleResult)
			if ci.admin != "" {
				whileOpen = func(r *idleResult) { res.heapProfile = b.heapProfile(ctx, ci, r) }
			}
			res.idle = b.idleSessions(ctx, ci, redisAddr, whileOpen)
			b.stopCaddy(ci, res)
		}
		if res.idle.err != nil || res.idle.failed > 0 || res.idle.checkFailed > 0 {
			b.failed = true
		}
	}

	// One large message.
	if b.cfg.msgSize > 0 && ctx.Err() == nil {
		flush()
		b.logf("%s: one %d-byte message", res.name, b.cfg.msgSize)
		ci, err := b.startCaddy(ctx, res.name, redisAddr, "message", b.cfg.pprofDir != "")
		if err != nil {
			res.big = &bigResult{err: err}
		} else {
			res.big = b.bigMessage(ctx, ci)
			res.allocProfile = res.big.allocs
			b.stopCaddy(ci, res)
		}
		if res.big.err != nil {
			b.failed = true
		}
	}
}

// loadRun is a set of open sessions of one kind for the throughput runs.
type loadRun struct {
	kind     string
	hc       *http.Client
	sessions []*session
	params   []byte
	checked  []bool
}

const loadMessage = "hello from mcp-bench"

// openLoad opens and initialises n sessions of the given kind.
func openLoad(ctx context.Context, kind, target string, n int) (*loadRun, error) {
	lr := &loadRun{kind: kind, hc: newHTTPClient(), sessions: make([]*session, n), params: echoParams(loadMessage), checked: make([]bool, n)}
	setupCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range lr.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lr.sessions[i], errs[i] = openSession(setupCtx, lr.hc, kind, target)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		lr.close()
		return nil, fmt.Errorf("opening %s sessions: %w", kind, err)
	}
	return lr, nil
}

func (lr *loadRun) close() {
	for _, s := range lr.sessions {
		if s != nil {
			s.tr.close()
		}
	}
	closeIdle(lr.hc)
}

// slice is what one measuring slice of a load run produced.
type slice struct {
	lat      []time.Duration
	errors   int
	firstErr error
	cpu      [4]time.Duration
}

// run has every session call echo one call after another for warmup+window.
// Calls that start and end inside the window count. The CPU time of this
// process, the upstream and Caddy (caddyPid) over the window is recorded.
func (lr *loadRun) run(ctx context.Context, warmup, window time.Duration, pids [4]int) slice {
	var out slice
	t0 := time.Now().Add(warmup)
	t1 := t0.Add(window)
	cpuDone := make(chan [4]time.Duration, 1)
	go func() {
		var before, after [4]time.Duration
		sleepCtx(ctx, time.Until(t0))
		for i, p := range pids {
			before[i] = readCPU(p)
		}
		sleepCtx(ctx, time.Until(t1))
		for i, p := range pids {
			after[i] = readCPU(p) - before[i]
		}
		cpuDone <- after
	}()
	lats := make([][]time.Duration, len(lr.sessions))
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for i, s := range lr.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1<<12)
			for ctx.Err() == nil {
				begin := time.Now()
				if !begin.Before(t1) {
					break
				}
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				res, err := s.call(callCtx, "tools/call", lr.params)
				cancel()
				end := time.Now()
				if err == nil && !lr.checked[i] {
					var text string
					if text, err = echoText(res); err == nil && text != loadMessage {
						err = fmt.Errorf("echo returned %q, want %q", text, loadMessage)
					}
					lr.checked[i] = true
				}
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					mu.Lock()
					out.errors++
					if out.firstErr == nil {
						out.firstErr = err
					}
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if !begin.Before(t0) && !end.After(t1) {
					lat = append(lat, end.Sub(begin))
				}
			}
			lats[i] = lat
		}()
	}
	wg.Wait()
	out.cpu = <-cpuDone
	for _, l := range lats {
		out.lat = append(out.lat, l...)
	}
	return out
}

// interleaved measures direct and bridged sessions (n of each) in
// alternating slices, so that other load on the machine hits both alike:
// warm-up of each, then cfg.rounds rounds of one slice each (the order
// alternates from round to round). during runs alongside the measuring
// rounds.
func (b *bench) interleaved(ctx context.Context, row *throughputRow, bridgeURL, redisAddr string, caddyPid int, during func()) {
	n := row.sessions
	direct, err := openLoad(ctx, "direct", b.upstreamURL, n)
	if err != nil {
		row.directErr = err
		return
	}
	defer direct.close()
	bridged, err := openLoad(ctx, "bridged", bridgeURL, n)
	if err != nil {
		row.bridgedErr = err
		return
	}
	defer bridged.close()
	pids := [4]int{os.Getpid(), b.upstream.pid(), caddyPid, 0}
	if redisAddr != "" && b.redis != nil {
		pids[3] = b.redis.pid()
	}
	// Warm-up: nothing recorded.
	direct.run(ctx, 0, b.cfg.warmup, pids)
	bridged.run(ctx, 0, b.cfg.warmup, pids)

	var cmdsBefore map[string]int64
	if redisAddr != "" {
		cmdsBefore, _ = redisCommandStats(redisAddr)
	}
	defer func() {
		if cmdsBefore != nil {
			if after, err := redisCommandStats(redisAddr); err == nil {
				row.redisCmds = commandDelta(cmdsBefore, after)
			}
		}
	}()
	doneDuring := make(chan struct{})
	go func() {
		defer close(doneDuring)
		if during != nil {
			during()
		}
	}()
	sliceLen := b.cfg.duration / time.Duration(b.cfg.rounds)
	var dLat, bLat []time.Duration
	add := func(st *loadStats, lat *[]time.Duration, s slice) {
		*lat = append(*lat, s.lat...)
		st.errors += s.errors
		if st.firstErr == nil {
			st.firstErr = s.firstErr
		}
		for i := range st.cpu {
			st.cpu[i] += s.cpu[i]
		}
	}
	for r := 0; r < b.cfg.rounds && ctx.Err() == nil; r++ {
		order := []*loadRun{direct, bridged}
		if r%2 == 1 {
			order = []*loadRun{bridged, direct}
		}
		for _, lr := range order {
			s := lr.run(ctx, 0, sliceLen, pids)
			if lr == direct {
				add(&row.direct, &dLat, s)
			} else {
				add(&row.bridged, &bLat, s)
			}
		}
	}
	<-doneDuring
	row.direct.window = sliceLen * time.Duration(b.cfg.rounds)
	row.bridged.window = row.direct.window
	row.direct = summarize(row.direct, dLat)
	row.bridged = summarize(row.bridged, bLat)
	if ctx.Err() != nil {
		row.bridgedErr = ctx.Err()
	}
}

// idleSessions opens cfg.idle legacy sessions, initialises them and keeps
// them open, and measures Caddy's RSS before and after. whileOpen, if not
// nil, runs after the measurement, before the sessions are closed.
func (b *bench) idleSessions(ctx context.Context, ci *caddyInst, redisAddr string, whileOpen func(*idleResult)) *idleResult {
	r := &idleResult{want: b.cfg.idle, redisConns: -1}
	hc := newHTTPClient()
	defer closeIdle(hc)
	pid := ci.c.pid()

	// Warm up the code paths (a few sessions, closed again), so that the
	// baseline is a Caddy that has served the bridge, not a cold one.
	for range 16 {
		s, err := openSession(ctx, hc, "bridged", ci.sseURL())
		if err != nil {
			r.err = fmt.Errorf("warm-up session: %w", err)
			return r
		}
		s.tr.close()
	}
	if !sleepCtx(ctx, time.Second) {
		r.err = ctx.Err()
		return r
	}
	if ci.admin != "" {
		// -pprof: a heap profile of the baseline (after a GC, so that the
		// difference to the one taken with the sessions open shows what
		// they hold).
		r.heapBefore = b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", fmt.Sprintf("caddy-%s-idle-before.heap.pprof", ci.store))
		r.metricsBefore = b.goMetrics(ctx, ci)
	}
	var err error
	if r.before, err = readMem(pid); err != nil {
		r.err = err
		return r
	}

	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(b.cfg.idle)*10*time.Millisecond)
	defer cancel()
	sessions := make([]*session, b.cfg.idle)
	var (
		next     atomic.Int64
		mu       sync.Mutex
		wg       sync.WaitGroup
		progress atomic.Int64
	)
	begin := time.Now()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(sessions) || openCtx.Err() != nil {
					return
				}
				s, err := openSession(openCtx, hc, "bridged", ci.sseURL())
				mu.Lock()
				if err != nil {
					r.failed++
					if r.firstErr == nil {
						r.firstErr = err
					}
				} else {
					sessions[i] = s
					r.opened++
				}
				mu.Unlock()
				if p := progress.Add(1); p%2000 == 0 {
					b.logf("  %d sessions opened", p)
				}
			}
		}()
	}
	wg.Wait()
	r.openTime = time.Since(begin)
	defer func() {
		var wg sync.WaitGroup
		for _, s := range sessions {
			if s != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.tr.close()
				}()
			}
		}
		wg.Wait()
	}()
	if r.opened+r.failed < len(sessions) && r.firstErr == nil {
		r.firstErr = fmt.Errorf("only %d of %d sessions attempted in time: %v", r.opened+r.failed, len(sessions), openCtx.Err())
	}

	// Let the sessions' background work (the upstream GET stream attempt)
	// end, then measure.
	if !sleepCtx(ctx, 2*time.Second) {
		r.err = ctx.Err()
		return r
	}
	if r.after, err = readMem(pid); err != nil {
		r.err = err
		return r
	}
	if redisAddr != "" {
		if c, err := redisClients(redisAddr); err == nil {
			r.redisConns = c
		}
	}
	if ci.admin != "" {
		r.metricsAfter = b.goMetrics(ctx, ci)
	}
	if whileOpen != nil {
		whileOpen(r)
	}
	// The sessions still work.
	for i := 0; i < len(sessions) && r.checked < 8; i += max(1, len(sessions)/8) {
		s := sessions[i]
		if s == nil {
			continue
		}
		r.checked++
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := s.call(callCtx, "tools/call", echoParams("still there?"))
		cancel()
		if err != nil {
			r.checkFailed++
			if r.firstErr == nil {
				r.firstErr = fmt.Errorf("call on an idle session: %w", err)
			}
		}
	}
	return r
}

// bigMessage relays one echo of a cfg.msgSize string through a fresh Caddy
// and measures its peak RSS growth.
func (b *bench) bigMessage(ctx context.Context, ci *caddyInst) *bigResult {
	r := &bigResult{size: b.cfg.msgSize}
	hc := newHTTPClient()
	defer closeIdle(hc)
	pid := ci.c.pid()
	callCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	s, err := openSession(callCtx, hc, "bridged", ci.sseURL())
	if err != nil {
		r.err = err
		return r
	}
	defer s.tr.close()
	for range 3 {
		if _, err := s.call(callCtx, "tools/call", echoParams("warm-up")); err != nil {
			r.err = fmt.Errorf("warm-up call: %w", err)
			return r
		}
	}
	big := strings.Repeat("x", b.cfg.msgSize)
	params := echoParams(big)
	if !sleepCtx(ctx, 500*time.Millisecond) {
		r.err = ctx.Err()
		return r
	}
	before, err := readMem(pid)
	if err != nil {
		r.err = err
		return r
	}
	r.reset = resetPeak(pid)
	r.base = before.hwm
	if r.reset {
		if m, err := readMem(pid); err == nil {
			r.base = m.rss
		}
	}
	// With -pprof: allocation profiles before and after, to see what the
	// message cost (the large allocations are all sampled). Fetching them
	// runs a GC in Caddy, so the peak differs a little from a run without.
	var allocsBefore string
	hcProf := newHTTPClient()
	defer closeIdle(hcProf)
	allocsFile := func(stage string) string {
		if ci.admin == "" || os.MkdirAll(b.cfg.pprofDir, 0o755) != nil {
			return ""
		}
		// The allocation counts are published by a garbage collection:
		// heap?gc=1 runs one first.
		f := filepath.Join(b.cfg.pprofDir, fmt.Sprintf("caddy-%s-message-%s.allocs.pprof", ci.store, stage))
		out, err := fetchToFile(callCtx, hcProf, "http://"+ci.admin+"/debug/pprof/heap?gc=1", f)
		if err != nil {
			return ""
		}
		return out
	}
	allocsBefore = allocsFile("before")
	check := func(res []byte, err error) error {
		if err != nil {
			return err
		}
		text, err := echoText(res)
		if err != nil {
			return err
		}
		if len(text) != len(big) {
			return fmt.Errorf("echo returned %d bytes, want %d", len(text), len(big))
		}
		return nil
	}
	start := time.Now()
	res, err := s.call(callCtx, "tools/call", params)
	r.bridgedLat = time.Since(start)
	if err := check(res, err); err != nil {
		r.err = fmt.Errorf("bridged: %w", err)
		return r
	}
	after, err := readMem(pid)
	if err != nil {
		r.err = err
		return r
	}
	r.peak = after.hwm
	if allocsBefore != "" {
		if allocsAfter := allocsFile("after"); allocsAfter != "" {
			top := commandOutput(ctx, "go", "tool", "pprof", "-top", "-sample_index=alloc_space", "-nodecount=20",
				"-base", allocsBefore, b.cfg.caddyBin, allocsAfter)
			r.allocs = fmt.Sprintf("profiles %s and %s\n\n%s", allocsBefore, allocsAfter, trimPprof(top))
		}
	}

	d, err := openSession(callCtx, hc, "direct", b.upstreamURL)
	if err != nil {
		r.err = fmt.Errorf("direct: %w", err)
		return r
	}
	start = time.Now()
	res, err = d.call(callCtx, "tools/call", params)
	r.directLat = time.Since(start)
	if err := check(res, err); err != nil {
		r.err = fmt.Errorf("direct: %w", err)
	}
	return r
}

// profile fetches a CPU profile of Caddy over the measuring window of the
// running load, saves it, and returns the top functions.
func (b *bench) profile(ctx context.Context, ci *caddyInst, store string, n int) string {
	// The rounds take twice the duration (direct and bridged slices); Caddy
	// is idle during the direct ones.
	secs := max(1, int(2*b.cfg.duration/time.Second)-1)
	if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
		return "profile: " + err.Error()
	}
	file := filepath.Join(b.cfg.pprofDir, fmt.Sprintf("caddy-%s-%dsessions.cpu.pprof", store, n))
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", ci.admin, secs)
	hc := newHTTPClient()
	defer closeIdle(hc)
	pctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	out, err := fetchToFile(pctx, hc, url, file)
	if err != nil {
		return "profile: " + err.Error()
	}
	top := commandOutput(ctx, "go", "tool", "pprof", "-top", "-nodecount=25", b.cfg.caddyBin, out)
	cum := commandOutput(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=25", b.cfg.caddyBin, out)
	return fmt.Sprintf("profile saved to %s (%ds over the interleaved rounds: Caddy works in the bridged slices only)\n\n%s\n%s", out, secs, trimPprof(top), trimPprof(cum))
}

// goMetrics reads the Go runtime gauges from Caddy's admin /metrics.
func (b *bench) goMetrics(ctx context.Context, ci *caddyInst) map[string]float64 {
	hc := newHTTPClient()
	defer closeIdle(hc)
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(mctx, http.MethodGet, "http://"+ci.admin+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return parseGoMetrics(string(body))
}

// goMetricNames are the Prometheus gauges goMetrics keeps.
var goMetricNames = []string{
	"go_goroutines",
	"go_memstats_heap_inuse_bytes",
	"go_memstats_heap_alloc_bytes",
	"go_memstats_stack_inuse_bytes",
	"go_memstats_heap_idle_bytes",
	"go_memstats_heap_released_bytes",
	"go_memstats_next_gc_bytes",
	"go_memstats_sys_bytes",
}

// parseGoMetrics extracts goMetricNames from Prometheus text exposition.
func parseGoMetrics(text string) map[string]float64 {
	m := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		name, val, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		for _, want := range goMetricNames {
			if name == want {
				if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
					m[name] = v
				}
			}
		}
	}
	return m
}

// fetchProfile saves an admin pprof endpoint's answer under the profile
// directory and returns the file, or "".
func (b *bench) fetchProfile(ctx context.Context, ci *caddyInst, path, name string) string {
	if err := os.MkdirAll(b.cfg.pprofDir, 0o755); err != nil {
		return ""
	}
	hc := newHTTPClient()
	defer closeIdle(hc)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := fetchToFile(pctx, hc, "http://"+ci.admin+path, filepath.Join(b.cfg.pprofDir, name))
	if err != nil {
		b.logf("fetching %s: %v", path, err)
		return ""
	}
	return out
}

// heapProfile fetches Caddy's heap profile (after a GC) and goroutine count
// while the idle sessions are open and summarises what they hold, compared
// with the baseline profile.
func (b *bench) heapProfile(ctx context.Context, ci *caddyInst, r *idleResult) string {
	out := b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", fmt.Sprintf("caddy-%s-%didle.heap.pprof", ci.store, r.opened))
	if out == "" {
		return "heap profile: not available"
	}
	live := ""
	if m := b.goMetrics(ctx, ci); m != nil && r.opened > 0 && r.metricsBefore != nil {
		live = fmt.Sprintf("live heap (after a GC, both times): %+.1f KiB per session; stacks %+.1f KiB per session\n",
			(m["go_memstats_heap_alloc_bytes"]-r.metricsBefore["go_memstats_heap_alloc_bytes"])/1024/float64(r.opened),
			(m["go_memstats_stack_inuse_bytes"]-r.metricsBefore["go_memstats_stack_inuse_bytes"])/1024/float64(r.opened))
	}
	gfile := b.fetchProfile(ctx, ci, "/debug/pprof/goroutine?debug=1", fmt.Sprintf("caddy-%s-%didle.goroutines.txt", ci.store, r.opened))
	goroutines := "?"
	if data, err := os.ReadFile(gfile); gfile != "" && err == nil {
		goroutines = strings.TrimPrefix(firstLine(string(data)), "goroutine profile: ")
	}
	args := []string{"tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25"}
	if r.heapBefore != "" {
		args = append(args, "-base", r.heapBefore)
	}
	top := commandOutput(ctx, "go", append(args, b.cfg.caddyBin, out)...)
	return fmt.Sprintf("profiles %s (base %s); goroutines: %s\n%s\n%s", out, r.heapBefore, goroutines, live, trimPprof(top))
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// commandOutput runs a short command and returns its output, or the error.
func commandOutput(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return strings.TrimSpace(string(out) + " (" + err.Error() + ")")
	}
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// trimPprof drops pprof's preamble lines before "Showing nodes".
func trimPprof(s string) string {
	if i := strings.Index(s, "Showing nodes"); i >= 0 {
		return s[i:]
	}
	return s
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuModel returns the CPU model name from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// shellQuote quotes args for display as a shell command.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r == '/' || r == ',' || r == '=' || r == ':' ||
				r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// newTable returns a tabwriter for the report's tables.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

// tabwriterLeft returns a tabwriter with left-aligned columns.
func tabwriterLeft(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}
