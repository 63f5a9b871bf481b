// Command mcp-bench measures the MCP SSE bridge end to end and prints one
// report with the performance targets (targets.go) next to the numbers.
//
// It starts everything itself on 127.0.0.1 and stops it again: the go-sdk
// demo upstream (cmd/mcp-demo-upstream) in stateless JSON mode, the Caddy
// built from this repository bridging to it (memory store; and, when
// redis-server is on PATH and ./caddy has the redis store, again with a
// redis-server it starts), and its own lean clients (client.go):
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
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

const redisModule = "http.handlers.mcp_sse_bridge.stores.redis"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config holds the parsed flags.
type config struct {
	caddyBin, upstreamBin, redisBin string
	duration, warmup, timeout       time.Duration
	sessions                        []int
	idle, msgSize, rounds           int
	stores                          []string
	pprofDir                        string
	args                            []string // as given, for the report
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("mcp-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{args: args}
	var sessions, stores string
	var quick bool
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
	fs.BoolVar(&quick, "quick", false, "short run: -duration 2s -warmup 500ms -idle 1000 (flags given explicitly win)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"duration": "2s", "warmup": "500ms", "idle": "1000"} {
			if !set[name] {
				_ = fs.Set(name, v)
			}
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
		// Generous: per store, each throughput run twice (warm-up, start and
		// stop included), the idle run, the large message; all twice over.
		perStore := time.Duration(len(cfg.sessions)) * 2 * (cfg.duration + cfg.warmup + 10*time.Second)
		perStore += time.Minute + time.Duration(cfg.idle)*15*time.Millisecond
		cfg.timeout = 2*time.Duration(len(cfg.stores))*perStore + time.Minute
	}
	// The children run in their own directories.
	for _, p := range []*string{&cfg.caddyBin, &cfg.upstreamBin} {
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	return cfg, nil
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
		sig := <-sigs
		b.logf("%v: stopping", sig)
		b.interrupted.Store(true)
		cancel()
		<-sigs
		b.procs.Kill()
		os.Exit(130)
	}()

	if b.tmp, err = os.MkdirTemp("", "mcp-bench-"); err != nil {
		fmt.Fprintln(stderr, "mcp-bench:", err)
		return 1
	}
	defer os.RemoveAll(b.tmp)
	defer b.procs.Kill()

	err = b.runAll(ctx)
	b.procs.Stop(stopGrace)
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
	procs       testenv.Group // every process started, to end them all
	interrupted atomic.Bool

	loadStart   string
	nofile      uint64
	caddyVer    string
	caddyNofile uint64 // Caddy's soft RLIMIT_NOFILE
	upstream    *testenv.Upstream
	redis       *testenv.Redis
	redisNote   string // why there are no redis runs, if there are none
	redisVer    string
	results     []*storeResult
	failed      bool
}

// storeResult holds the measurements of one store configuration.
type storeResult struct {
	name       string
	note       string // why the store was not measured, if it was not
	rows       []*throughputRow
	idle       *idleResult
	big        *bigResult
	logs       logSummary
	setupError error
	// With -pprof: Caddy's CPU during the largest bridged run, its heap and
	// goroutines with the idle sessions open, what it allocated for the
	// large message.
	profile, heapProfile, allocProfile string
}

type throughputRow struct {
	sessions        int
	direct, bridged loadStats
	directErr       error
	bridgedErr      error
	peakHWM         int64 // VmHWM after the bridged run (reset before it when possible)
	redisConns      int   // peak during the bridged run; -1 unknown
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
	base, peak            int64 // RSS when the peak was reset (or the earlier peak), peak after
	reset                 bool
	bridgedLat, directLat time.Duration
	err                   error
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
	lim, err := testenv.RaiseNoFile(uint64(b.cfg.idle)*2 + 4096)
	if err != nil {
		b.logf("raising RLIMIT_NOFILE: %v", err)
	}
	b.nofile = lim
	if lim < uint64(b.cfg.idle)+1024 {
		b.logf("warning: RLIMIT_NOFILE is %d, too low for %d idle sessions", lim, b.cfg.idle)
	}
	b.caddyVer = firstLine(commandOutput(ctx, b.cfg.caddyBin, "version"))
	modules, err := testenv.CaddyModules(ctx, b.cfg.caddyBin)
	if err != nil {
		return err
	}
	if !strings.Contains(modules, "http.handlers.mcp_sse_bridge") {
		return fmt.Errorf("%s list-modules shows no mcp_sse_bridge module", b.cfg.caddyBin)
	}
	if err := b.startUpstream(ctx); err != nil {
		return err
	}
	b.logf("upstream at %s", b.upstream.URL())

	for _, store := range b.cfg.stores {
		if ctx.Err() != nil {
			break
		}
		res := &storeResult{name: store}
		b.results = append(b.results, res)
		if store == "redis" {
			if !strings.Contains(modules, redisModule) {
				b.redisNote = "not available: " + b.cfg.caddyBin + " list-modules has no " + redisModule
			} else if note := b.startRedis(ctx); note != "" {
				b.redisNote = "not available: " + note
			}
			if b.redisNote != "" {
				res.note = "redis: not available"
				b.logf("redis %s", b.redisNote)
				continue
			}
		}
		b.measureStore(ctx, res)
		if p := b.upstream.Proc(); p.Exited() {
			return fmt.Errorf("the upstream exited (%v):\n%s", p.Err(), p.Tail(20))
		}
	}
	return nil
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

// sleepCtx waits for d or the end of ctx and reports whether d passed.
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
