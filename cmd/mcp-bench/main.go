// Command mcp-bench measures the MCP SSE bridge end to end against the demo
// upstream, a Caddy built from this tree and a redis-server, all of which it
// starts on loopback, and prints one report with the targets (targets.go).
// Run it from the repository root, or as ./xcaddy.sh bench (BENCH_FLAGS=-quick
// for a short run). Exit status: 0 when every measurement ran (targets met
// or not), 1 when one failed, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

const redisModule = "http.handlers.mcp_sse_bridge.stores.redis"

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcp-bench:", err)
		os.Exit(2)
	}
	os.Exit(run(cfg))
}

type config struct {
	caddyBin, upstreamBin, redisBin string
	duration, warmup, timeout       time.Duration
	sessions                        []int
	idle, msgSize, rounds           int
	stores                          []string
	pprofDir                        string
	// The scale phase (scale.go): sessions open at once, each making
	// scaleCalls calls a think time apart.
	scale                []int
	scaleCalls           int
	think, replicasThink time.Duration
	replicasSessions     int
	args                 []string // as given, for the report
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("mcp-bench", flag.ExitOnError)
	cfg := &config{args: args}
	var sessions, stores, scale string
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
	fs.StringVar(&scale, "scale", "1000,5000", `comma-separated session counts of the scale runs (memory store); "" or 0 skips them`)
	fs.IntVar(&cfg.scaleCalls, "scale-calls", 10, "tools/call echo calls of each session in the scale and replicas runs")
	fs.DurationVar(&cfg.think, "think", 200*time.Millisecond, "think time between a session's calls in the scale runs (jittered: ½ to 1½ of it)")
	fs.IntVar(&cfg.replicasSessions, "replicas-sessions", 1000, "sessions of the run through 2 replicas on Redis behind a load balancer (redis store; 0 skips it)")
	fs.DurationVar(&cfg.replicasThink, "replicas-think", 3*time.Second, "think time between a session's calls in the replicas run (1,000 sessions at 3s: ~330 calls/s)")
	fs.StringVar(&cfg.pprofDir, "pprof", "", "directory for profiles of Caddy (enables its admin API on a loopback port); their top functions are added to the report")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "overall time limit (default: estimated from the other flags)")
	quick := fs.Bool("quick", false, "short run: -duration 2s -warmup 500ms -idle 1000 -scale 200 -replicas-sessions 200 -scale-calls 5 (flags given explicitly win)")
	_ = fs.Parse(args) // exits on errors and -h
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"duration": "2s", "warmup": "500ms", "idle": "1000",
			"scale": "200", "replicas-sessions": "200", "scale-calls": "5"} {
			if !set[name] {
				_ = fs.Set(name, v)
			}
		}
	}
	if cfg.duration <= 0 || cfg.warmup < 0 || cfg.idle < 0 || cfg.msgSize < 0 || cfg.rounds <= 0 {
		return nil, errors.New("-duration and -rounds must be positive; -warmup, -idle and -message-size not negative")
	}
	if cfg.scaleCalls <= 0 || cfg.think < 0 || cfg.replicasThink < 0 || cfg.replicasSessions < 0 {
		return nil, errors.New("-scale-calls must be positive; -think, -replicas-think and -replicas-sessions not negative")
	}
	for _, f := range strings.Split(sessions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > 1000 {
			return nil, fmt.Errorf("bad -sessions entry %q (want 1…1000)", f)
		}
		cfg.sessions = append(cfg.sessions, n)
	}
	for f := range strings.SplitSeq(scale, ",") {
		if f = strings.TrimSpace(f); f == "" || f == "0" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad -scale entry %q (want a positive count)", f)
		}
		cfg.scale = append(cfg.scale, n)
	}
	for _, s := range strings.Split(stores, ",") {
		if s = strings.TrimSpace(s); s != "memory" && s != "redis" {
			return nil, fmt.Errorf("unknown store %q in -stores", s)
		}
		cfg.stores = append(cfg.stores, s)
	}
	if cfg.timeout <= 0 { // generous: twice the expected time
		perStore := 2*time.Duration(len(cfg.sessions))*(cfg.duration+cfg.warmup+10*time.Second) + time.Minute + time.Duration(cfg.idle)*15*time.Millisecond
		var scaleTime time.Duration // memory: each -scale run; redis: the replicas run
		for _, n := range cfg.scale {
			if slices.Contains(cfg.stores, "memory") {
				scaleTime += cfg.scaleRunTime(n, cfg.think)
			}
		}
		if slices.Contains(cfg.stores, "redis") {
			scaleTime += cfg.scaleRunTime(cfg.replicasSessions, cfg.replicasThink)
		}
		cfg.timeout = 2*(time.Duration(len(cfg.stores))*perStore+scaleTime) + time.Minute
	}
	// The children run in directories of their own.
	cfg.caddyBin, _ = filepath.Abs(cfg.caddyBin)
	cfg.upstreamBin, _ = filepath.Abs(cfg.upstreamBin)
	return cfg, nil
}

func run(cfg *config) int {
	// A first signal stops the measuring and reports what there is; a
	// second ends the bench, and its children with it (Pdeathsig).
	b := &bench{cfg: cfg, started: time.Now()}
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	context.AfterFunc(sigCtx, func() {
		if stop(); !errors.Is(context.Cause(sigCtx), context.Canceled) {
			b.logf("%v: stopping", context.Cause(sigCtx))
		}
	})
	ctx, cancel := context.WithTimeout(sigCtx, cfg.timeout)
	defer cancel()
	defer func() { _ = os.RemoveAll(b.tmp) }()
	defer b.procs.Kill()
	err := b.runAll(ctx)
	b.procs.Stop(stopGrace)
	b.report(os.Stdout)
	switch {
	case sigCtx.Err() != nil:
		err = errors.New("interrupted; the report is partial")
	case err == nil && b.failed:
		err = errors.New("some measurements failed (see the report)")
	case err == nil:
		return 0
	}
	fmt.Fprintln(os.Stderr, "mcp-bench:", err)
	return 1
}

// bench is one benchmark run and its results.
type bench struct {
	cfg                 *config
	started             time.Time
	tmp                 string
	procs               testenv.Group // every process started, to end them all
	loadStart, caddyVer string
	nofile              uint64 // RLIMIT_NOFILE, inherited by the children
	upstream            *testenv.Upstream
	redis               *testenv.Redis
	redisVer, redisNote string // redisNote: why there are no redis runs
	results             []*storeResult
	failed              bool
}

// storeResult holds the measurements of one store.
type storeResult struct {
	name                               string
	note                               string // why the store was not measured, if it was not
	rows                               []*throughputRow
	idle                               *idleResult
	big                                *bigResult
	scale                              []*scaleRun         // memory: one per -scale count; redis: the replicas run
	logs                               string              // Caddy's, of every phase
	remarks                            map[string][]string // failures and caveats, by section
	profile, heapProfile, allocProfile string              // -pprof: top functions
}

type throughputRow struct {
	sessions        int
	direct, bridged loadStats
	peakHWM         int64            // VmHWM after the bridged run (reset before it)
	redisConns      int              // peak during the run; -1 unknown
	redisCmds       map[string]int64 // Redis commands over the measuring rounds
}

type idleResult struct {
	opened, failed              int
	openTime                    time.Duration
	before, after               procMem
	redisConns                  int
	checked, checkFailed        int
	metricsBefore, metricsAfter map[string]float64 // -pprof: Caddy's Go runtime
	heapBefore                  string             // -pprof: baseline heap profile
}

type bigResult struct {
	base, peak            int64 // RSS at the peak's reset (or the earlier peak), peak after
	reset                 bool
	bridgedLat, directLat time.Duration
}

// fail notes a failed measurement under a section of the report.
func (b *bench) fail(res *storeResult, section, format string, args ...any) {
	b.failed = true
	res.remarks[section] = append(res.remarks[section], fmt.Sprintf(format, args...))
	b.logf("%s", res.remarks[section][len(res.remarks[section])-1])
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mcp-bench %5.1fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

// runAll starts the shared processes and measures each store.
func (b *bench) runAll(ctx context.Context) (err error) {
	if b.tmp, err = os.MkdirTemp("", "mcp-bench-"); err != nil {
		return err
	}
	b.loadStart = loadAverage()
	for _, p := range []string{b.cfg.caddyBin, b.cfg.upstreamBin} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%v (run from the repository root after ./xcaddy.sh build, or use -caddy / -upstream-bin)", err)
		}
	}
	// Each session open holds up to two connections here (its stream, its
	// POSTs') and as many in Caddy.
	if b.nofile, err = testenv.RaiseNoFile(2*uint64(b.cfg.maxSessions()) + 4096); err != nil {
		b.logf("raising RLIMIT_NOFILE: %v (now %d)", err, b.nofile)
	}
	b.caddyVer = firstLine(commandOutput(ctx, b.cfg.caddyBin, "version"))
	modules, err := testenv.CaddyModules(ctx, b.cfg.caddyBin)
	if err != nil {
		return err
	}
	if !strings.Contains(modules, "http.handlers.mcp_sse_bridge") {
		return fmt.Errorf("%s list-modules shows no mcp_sse_bridge module", b.cfg.caddyBin)
	}
	upCtx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if b.upstream, err = testenv.StartDemoUpstream(upCtx, testenv.DemoOptions{
		Bin: b.cfg.upstreamBin, Args: []string{"-mode", "stateless", "-json"}, Dir: b.tmp, OnStart: b.procs.Add,
	}); err != nil {
		return err
	}
	b.logf("upstream at %s", b.upstream.URL())

	for _, store := range b.cfg.stores {
		if ctx.Err() != nil {
			break
		}
		res := &storeResult{name: store, remarks: map[string][]string{}}
		b.results = append(b.results, res)
		if store == "redis" {
			note := b.cfg.caddyBin + " list-modules has no " + redisModule
			if strings.Contains(modules, redisModule) {
				note = b.startRedis(ctx)
			}
			if note != "" {
				b.redisNote, res.note = "not available: "+note, "redis: not available"
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
		out = fmt.Appendf(out, " (%v)", err)
	}
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}
