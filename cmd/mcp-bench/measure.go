package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// measureStore measures one store in phases, each on a fresh Caddy and an
// empty Redis: throughput and latency, idle sessions, one large message,
// and the scale phase (scale.go).
func (b *bench) measureStore(ctx context.Context, res *storeResult) {
	phase := func(name string, f func(ci *caddyInst) error) error {
		if res.name == "redis" {
			if err := flushRedis(ctx, b.redis.Addr()); err != nil {
				b.logf("redis FLUSHALL: %v", err)
			}
		}
		ci, err := b.startCaddy(ctx, res.name, name)
		if err == nil {
			err = f(ci)
			b.stopCaddy(ci, res)
		}
		if err != nil {
			b.fail(res, name, "%s: %v", res.name, err)
		}
		return err
	}
	err := phase("throughput", func(ci *caddyInst) error {
		for _, n := range b.cfg.sessions {
			if ctx.Err() != nil {
				break
			}
			b.logf("%s: %d session(s), direct and bridged in %d alternating rounds", res.name, n, b.cfg.rounds)
			res.rows = append(res.rows, b.throughput(ctx, ci, res, n))
			if p := ci.Proc(); p.Exited() {
				return fmt.Errorf("caddy exited (%v):\n%s", p.Err(), p.Tail(20))
			}
		}
		return nil
	})
	if b.cfg.idle > 0 && err == nil && ctx.Err() == nil {
		b.logf("%s: %d idle sessions", res.name, b.cfg.idle)
		res.idle = &idleResult{redisConns: -1}
		_ = phase("idle", func(ci *caddyInst) error { return b.idleSessions(ctx, ci, res) })
	}
	if b.cfg.msgSize > 0 && err == nil && ctx.Err() == nil {
		b.logf("%s: one %d-byte message", res.name, b.cfg.msgSize)
		res.big = &bigResult{}
		_ = phase("message", func(ci *caddyInst) error { return b.bigMessage(ctx, ci, res) })
	}
	if res.name == "memory" {
		for _, n := range b.cfg.scale {
			if err != nil || ctx.Err() != nil {
				break
			}
			_ = phase(fmt.Sprintf("scale-%d", n), func(ci *caddyInst) error { return b.scaleMemory(ctx, ci, res, n) })
		}
	}
	if res.name == "redis" && b.cfg.replicasSessions > 0 && err == nil && ctx.Err() == nil {
		b.scaleReplicas(ctx, res)
	}
}

// loadStats sums up the measured slices of one kind of session.
type loadStats struct {
	calls    int // completed inside the measuring window
	window   time.Duration
	errors   int
	firstErr error // of the measured calls
	p50, p99 time.Duration
	cpu      [4]time.Duration // over the window: the bench, the upstream, Caddy, redis-server
}

func (s loadStats) rate() float64 { return float64(s.calls) / max(s.window.Seconds(), 1e-9) }

// cpuPerCall is process i's CPU time per call, in µs.
func (s loadStats) cpuPerCall(i int) float64 {
	return float64(s.cpu[i]) / float64(time.Microsecond) / float64(max(s.calls, 1))
}

// percentile is the p-th percentile of sorted, by nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(1, min(int(math.Ceil(p/100*float64(len(sorted)))), len(sorted)))-1]
}

// summarize sorts lat in place and fills in the calls and percentiles.
func summarize(s loadStats, lat []time.Duration) loadStats {
	slices.Sort(lat)
	s.calls, s.p50, s.p99 = len(lat), percentile(lat, 50), percentile(lat, 99)
	return s
}

// openSessions opens n sessions, workers at a time; a failed one is nil.
func openSessions(ctx context.Context, hc *http.Client, kind, target string, n, workers int) ([]*session, []error) {
	sessions, errs := make([]*session, n), make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, workers) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if errs[i] = ctx.Err(); errs[i] == nil {
					sessions[i], errs[i] = openSession(ctx, hc, kind, target)
				}
			}
		})
	}
	wg.Wait()
	return sessions, errs
}

// closeAll closes the sessions that opened, at once.
func closeAll(sessions []*session) {
	var wg sync.WaitGroup
	for _, s := range sessions {
		if s != nil {
			wg.Go(s.close)
		}
	}
	wg.Wait()
}

// loadRun is n open sessions of one kind and what they recorded.
type loadRun struct {
	kind     string
	sessions []*session
	stats    loadStats
	lat      []time.Duration
}

var loadMessage, loadParams = []byte("hello from mcp-bench"), echoParams("hello from mcp-bench")

func openLoad(ctx context.Context, hc *http.Client, kind, target string, n int) (*loadRun, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sessions, errs := openSessions(ctx, hc, kind, target, n, n)
	return &loadRun{kind: kind, sessions: sessions}, cmp.Or(errs...)
}

// run has every session call echo one call after another for window; if
// measured, it records the calls that end inside the window, the failed
// ones, and the CPU time of pids (0: none). It samples meanwhile.
func (lr *loadRun) run(ctx context.Context, window time.Duration, pids [4]int, measured bool, sample func()) {
	t1, cpu0 := time.Now().Add(window), [4]time.Duration{}
	for i, p := range pids {
		cpu0[i] = readCPU(p)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range lr.sessions {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<12)
			for begin := time.Now(); ctx.Err() == nil && begin.Before(t1); begin = time.Now() {
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				res, err := s.call(callCtx, "tools/call", loadParams)
				cancel()
				end := time.Now()
				if err == nil {
					err = checkEcho(res, loadMessage)
				}
				switch {
				case err != nil && ctx.Err() == nil && measured:
					mu.Lock()
					lr.stats.errors++
					lr.stats.firstErr = cmp.Or(lr.stats.firstErr, err)
					mu.Unlock()
					fallthrough
				case err != nil:
					time.Sleep(10 * time.Millisecond)
				case !end.After(t1):
					lat = append(lat, end.Sub(begin))
				}
			}
			if measured {
				mu.Lock()
				lr.lat = append(lr.lat, lat...)
				mu.Unlock()
			}
		})
	}
	for ctx.Err() == nil && time.Now().Before(t1) { // the window ends at t1, not with the last call
		sample()
		_ = testenv.Sleep(ctx, min(400*time.Millisecond, time.Until(t1))) // Redis's INFO is not free
	}
	for i, p := range pids {
		if measured {
			lr.stats.cpu[i] += readCPU(p) - cpu0[i]
		}
	}
	wg.Wait()
}

// throughput measures n direct and n bridged sessions in alternating
// slices, so that other load on the machine hits both alike: a warm-up of
// each, then cfg.rounds rounds of one slice each, the order alternating.
func (b *bench) throughput(ctx context.Context, ci *caddyInst, res *storeResult, n int) *throughputRow {
	row := &throughputRow{sessions: n, redisConns: -1}
	redisAddr, pid := "", ci.Proc().Pid()
	pids := [4]int{os.Getpid(), b.upstream.Proc().Pid(), pid, 0}
	sample := func() {} // the peak of Redis connections
	if res.name == "redis" {
		redisAddr, pids[3] = b.redis.Addr(), b.redis.Proc().Pid()
		sample = func() {
			if c, err := testenv.RedisClients(ctx, redisAddr); err == nil {
				row.redisConns = max(row.redisConns, c)
			}
		}
	}
	resetPeak(pid)
	defer func() {
		if m, err := readMem(pid); err == nil {
			row.peakHWM = m.hwm
		}
	}()
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	direct, err1 := openLoad(ctx, hc, "direct", b.upstream.URL(), n)
	defer closeAll(direct.sessions)
	bridged, err2 := openLoad(ctx, hc, "bridged", ci.sseURL(), n)
	defer closeAll(bridged.sessions)
	if err := cmp.Or(err1, err2); err != nil {
		b.fail(res, "throughput", "%s, %d sessions, opening: %v", res.name, n, err)
		return row
	}
	direct.run(ctx, b.cfg.warmup, pids, false, sample)
	bridged.run(ctx, b.cfg.warmup, pids, false, sample)
	cmdsBefore := redisCommandStats(ctx, redisAddr)
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		if ci.AdminURL() != "" && n == slices.Max(b.cfg.sessions) {
			res.profile = b.cpuProfile(ctx, ci, n)
		}
	}()
	sliceLen := b.cfg.duration / time.Duration(b.cfg.rounds)
	for r := 0; r < b.cfg.rounds && ctx.Err() == nil; r++ {
		for _, lr := range [][]*loadRun{{direct, bridged}, {bridged, direct}}[r%2] {
			lr.run(ctx, sliceLen, pids, true, sample)
		}
	}
	<-profiled
	if after := redisCommandStats(ctx, redisAddr); after != nil && cmdsBefore != nil {
		row.redisCmds = commandDelta(cmdsBefore, after)
	}
	direct.stats.window, bridged.stats.window = sliceLen*time.Duration(b.cfg.rounds), sliceLen*time.Duration(b.cfg.rounds)
	row.direct, row.bridged = summarize(direct.stats, direct.lat), summarize(bridged.stats, bridged.lat)
	for _, lr := range []*loadRun{direct, bridged} {
		if err := cmp.Or(lr.stats.firstErr, ctx.Err()); err != nil {
			b.fail(res, "throughput", "%s, %d sessions, %s call: %v", res.name, n, lr.kind, err)
		}
	}
	return row
}

// idleSessions opens cfg.idle bridged sessions and keeps them open, and
// measures Caddy's RSS before and after.
func (b *bench) idleSessions(ctx context.Context, ci *caddyInst, res *storeResult) (err error) {
	r, hc, pid := res.idle, newHTTPClient(), ci.Proc().Pid()
	defer hc.CloseIdleConnections()
	// The baseline is a Caddy that has served the bridge, not a cold one.
	warm, errs := openSessions(ctx, hc, "bridged", ci.sseURL(), 16, 1)
	closeAll(warm)
	if err := cmp.Or(errs...); err != nil {
		return fmt.Errorf("warm-up session: %w", err)
	}
	if err := testenv.Sleep(ctx, time.Second); err != nil {
		return err
	}
	if ci.AdminURL() != "" {
		r.heapBefore = b.saveProfile(ctx, ci, "/debug/pprof/heap?gc=1", "idle-before.heap.pprof", 30*time.Second)
		r.metricsBefore = goMetrics(ctx, ci)
	}
	if r.before, err = readMem(pid); err != nil {
		return err
	}
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(b.cfg.idle)*10*time.Millisecond)
	defer cancel()
	begin := time.Now()
	all, errs := openSessions(openCtx, hc, "bridged", ci.sseURL(), b.cfg.idle, 32)
	r.openTime = time.Since(begin)
	defer closeAll(all)
	sessions := slices.DeleteFunc(slices.Clone(all), func(s *session) bool { return s == nil })
	if r.opened, r.failed = len(sessions), b.cfg.idle-len(sessions); r.failed > 0 {
		b.fail(res, "idle", "%s: %d sessions failed to open, the first: %v", res.name, r.failed, cmp.Or(errs...))
	}

	// Let the sessions' background work (the upstream GET attempt) end.
	if err := testenv.Sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	if r.after, err = readMem(pid); err != nil {
		return err
	}
	if res.name == "redis" {
		if c, err := testenv.RedisClients(ctx, b.redis.Addr()); err == nil {
			r.redisConns = c
		}
	}
	if ci.AdminURL() != "" {
		res.heapProfile = b.heapProfile(ctx, ci, r)
	}
	// Up to 8 sessions, spread out, still answer.
	var checkErr error
	for i := 0; i < len(sessions) && r.checked < 8; i += max(1, len(sessions)/8) {
		r.checked++
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := sessions[i].call(callCtx, "tools/call", echoParams("still there?")); err != nil {
			r.checkFailed++
			checkErr = cmp.Or(checkErr, err)
		}
		cancel()
	}
	if checkErr != nil {
		return fmt.Errorf("%d calls on idle sessions failed, the first: %w", r.checkFailed, checkErr)
	}
	return nil
}

// bigMessage relays one echo of a cfg.msgSize string and measures Caddy's
// peak RSS growth.
func (b *bench) bigMessage(ctx context.Context, ci *caddyInst, res *storeResult) error {
	r, hc, pid := res.big, newHTTPClient(), ci.Proc().Pid()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	big := []byte(strings.Repeat("x", b.cfg.msgSize))
	params := echoParams(string(big))
	call := func(s *session) (d time.Duration, err error) {
		start := time.Now()
		result, err := s.call(ctx, "tools/call", params)
		if d = time.Since(start); err == nil {
			err = checkEcho(result, big)
		}
		return d, err
	}
	s, err := openSession(ctx, hc, "bridged", ci.sseURL())
	if err != nil {
		return err
	}
	defer s.close()
	for range 3 {
		if _, err := s.call(ctx, "tools/call", echoParams("warm-up")); err != nil {
			return fmt.Errorf("warm-up call: %w", err)
		}
	}
	if err := testenv.Sleep(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	before, err := readMem(pid)
	if err != nil {
		return err
	}
	if r.base, r.reset = before.hwm, resetPeak(pid); r.reset {
		r.base = before.rss
	}
	measured := func() {
		var after procMem
		if r.bridgedLat, err = call(s); err == nil {
			after, err = readMem(pid)
		}
		r.peak = after.hwm
	}
	if ci.AdminURL() != "" {
		res.allocProfile = b.allocProfile(ctx, ci, measured)
	} else {
		measured()
	}
	if err != nil {
		return fmt.Errorf("bridged: %w", err)
	}
	d, err := openSession(ctx, hc, "direct", b.upstream.URL())
	if err == nil {
		r.directLat, err = call(d)
	}
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	return nil
}
