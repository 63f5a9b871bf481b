package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// The three phases of a store's measurement, each with a fresh Caddy:
// throughput and latency, idle sessions, one large message.

// measureStore runs the three phases for one store.
func (b *bench) measureStore(ctx context.Context, res *storeResult) {
	// phase runs f against a fresh Caddy on an empty Redis.
	phase := func(name string, f func(ci *caddyInst) error) error {
		if res.name == "redis" {
			if err := flushRedis(ctx, b.redis.Addr()); err != nil {
				b.logf("redis FLUSHALL: %v", err)
			}
		}
		ci, err := b.startCaddy(ctx, res.name, name)
		if err != nil {
			return fmt.Errorf("starting caddy: %w", err)
		}
		defer b.stopCaddy(ci, res)
		return f(ci)
	}

	res.setupError = phase("throughput", func(ci *caddyInst) error {
		for _, n := range b.cfg.sessions {
			if ctx.Err() != nil {
				break
			}
			b.logf("%s: %d session(s), direct and bridged in %d alternating rounds", res.name, n, b.cfg.rounds)
			row := b.throughput(ctx, ci, res, n)
			res.rows = append(res.rows, row)
			if row.directErr != nil || row.bridgedErr != nil || row.direct.errors > 0 || row.bridged.errors > 0 {
				b.failed = true
			}
			if p := ci.Proc(); p.Exited() {
				return fmt.Errorf("caddy exited (%v):\n%s", p.Err(), p.Tail(20))
			}
		}
		return nil
	})
	if res.setupError != nil {
		b.logf("%s: %v", res.name, res.setupError)
		b.failed = true
		return
	}

	if b.cfg.idle > 0 && ctx.Err() == nil {
		b.logf("%s: %d idle sessions", res.name, b.cfg.idle)
		res.idle = &idleResult{want: b.cfg.idle, redisConns: -1}
		res.idle.err = phase("idle", func(ci *caddyInst) error { return b.idleSessions(ctx, ci, res) })
		b.failed = b.failed || res.idle.err != nil || res.idle.failed > 0 || res.idle.checkFailed > 0
	}

	if b.cfg.msgSize > 0 && ctx.Err() == nil {
		b.logf("%s: one %d-byte message", res.name, b.cfg.msgSize)
		res.big = &bigResult{}
		res.big.err = phase("message", func(ci *caddyInst) error { return b.bigMessage(ctx, ci, res) })
		b.failed = b.failed || res.big.err != nil
	}
}

// loadRun is a set of open sessions of one kind for the throughput runs,
// and what its measured slices recorded.
type loadRun struct {
	hc       *http.Client
	sessions []*session
	params   []byte
	checked  []bool // whether session i's first answer was checked
	stats    loadStats
	lat      []time.Duration
}

const loadMessage = "hello from mcp-bench"

// openSessions opens and initialises n sessions of kind at target, workers
// at a time, until ctx ends. A session that failed is nil, with its error.
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

// openLoad opens and initialises n sessions of the given kind, all at once.
func openLoad(ctx context.Context, kind, target string, n int) (*loadRun, error) {
	lr := &loadRun{hc: newHTTPClient(), params: echoParams(loadMessage), checked: make([]bool, n)}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var errs []error
	lr.sessions, errs = openSessions(ctx, lr.hc, kind, target, n, n)
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
	lr.hc.CloseIdleConnections()
}

// run has every session call echo one call after another for window. When
// measured, the calls that start and end inside the window, the failed
// ones, and the CPU time of the processes pids (the bench, the upstream,
// Caddy, redis-server; 0 for none) over the window are recorded.
func (lr *loadRun) run(ctx context.Context, window time.Duration, pids [4]int, measured bool) {
	t1 := time.Now().Add(window)
	var cpu0 [4]time.Duration
	for i, p := range pids {
		cpu0[i] = readCPU(p)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, s := range lr.sessions {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<12)
			for begin := time.Now(); ctx.Err() == nil && begin.Before(t1); begin = time.Now() {
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
	// The window ends at t1, not when the last call does.
	sleepCtx(ctx, time.Until(t1))
	for i, p := range pids {
		if measured {
			lr.stats.cpu[i] += readCPU(p) - cpu0[i]
		}
	}
	wg.Wait()
}

// throughput measures direct and bridged sessions (n of each) in
// alternating slices, so that other load on the machine hits both alike:
// warm-up of each, then cfg.rounds rounds of one slice each (the order
// alternates from round to round). Caddy's peak RSS and the Redis
// connections are sampled meanwhile; with -pprof, the largest run is
// profiled.
func (b *bench) throughput(ctx context.Context, ci *caddyInst, res *storeResult, n int) *throughputRow {
	row := &throughputRow{sessions: n, redisConns: -1}
	redisAddr := ""
	pid := ci.Proc().Pid()
	pids := [4]int{os.Getpid(), b.upstream.Proc().Pid(), pid, 0}
	if res.name == "redis" {
		redisAddr, pids[3] = b.redis.Addr(), b.redis.Proc().Pid()
	}
	hwmReset := resetPeak(pid)
	smp := startSampler(ctx, pid, redisAddr, 100*time.Millisecond)
	defer func() {
		smp.finish()
		if m, err := readMem(pid); err == nil {
			row.peakHWM = m.hwm
		}
		if !hwmReset {
			row.peakHWM = max(row.peakHWM, smp.maxRSS)
		}
		row.redisConns = smp.maxRedis
	}()
	direct, err := openLoad(ctx, "direct", b.upstream.URL(), n)
	if err != nil {
		row.directErr = err
		return row
	}
	defer direct.close()
	bridged, err := openLoad(ctx, "bridged", ci.sseURL(), n)
	if err != nil {
		row.bridgedErr = err
		return row
	}
	defer bridged.close()

	// Warm-up: nothing recorded.
	direct.run(ctx, b.cfg.warmup, pids, false)
	bridged.run(ctx, b.cfg.warmup, pids, false)
	var cmdsBefore map[string]int64
	if redisAddr != "" {
		cmdsBefore, _ = redisCommandStats(ctx, redisAddr)
	}
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		if ci.AdminURL() != "" && n == slices.Max(b.cfg.sessions) {
			res.profile = b.cpuProfile(ctx, ci, n)
		}
	}()
	sliceLen := b.cfg.duration / time.Duration(b.cfg.rounds)
	for r := 0; r < b.cfg.rounds && ctx.Err() == nil; r++ {
		// Direct first in even rounds, bridged first in odd ones.
		for _, lr := range [][]*loadRun{{direct, bridged}, {bridged, direct}}[r%2] {
			lr.run(ctx, sliceLen, pids, true)
		}
	}
	<-profiled
	if cmdsBefore != nil {
		if after, err := redisCommandStats(ctx, redisAddr); err == nil {
			row.redisCmds = commandDelta(cmdsBefore, after)
		}
	}
	direct.stats.window = sliceLen * time.Duration(b.cfg.rounds)
	bridged.stats.window = direct.stats.window
	row.direct = summarize(direct.stats, direct.lat)
	row.bridged = summarize(bridged.stats, bridged.lat)
	if ctx.Err() != nil {
		row.bridgedErr = ctx.Err()
	}
	return row
}

// idleSessions opens cfg.idle legacy sessions, initialises them and keeps
// them open, and measures Caddy's RSS before and after into res.idle.
func (b *bench) idleSessions(ctx context.Context, ci *caddyInst, res *storeResult) error {
	r := res.idle
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	pid := ci.Proc().Pid()

	// Warm up the code paths (a few sessions, closed again), so that the
	// baseline is a Caddy that has served the bridge, not a cold one.
	for range 16 {
		s, err := openSession(ctx, hc, "bridged", ci.sseURL())
		if err != nil {
			return fmt.Errorf("warm-up session: %w", err)
		}
		s.tr.close()
	}
	if !sleepCtx(ctx, time.Second) {
		return ctx.Err()
	}
	if ci.AdminURL() != "" {
		b.heapBaseline(ctx, ci, r)
	}
	var err error
	if r.before, err = readMem(pid); err != nil {
		return err
	}

	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(b.cfg.idle)*10*time.Millisecond)
	defer cancel()
	begin := time.Now()
	sessions, errs := openSessions(openCtx, hc, "bridged", ci.sseURL(), b.cfg.idle, 32)
	r.openTime = time.Since(begin)
	defer func() {
		var wg sync.WaitGroup
		for _, s := range sessions {
			if s != nil {
				wg.Go(s.tr.close)
			}
		}
		wg.Wait()
	}()
	for _, err := range errs {
		if err != nil {
			r.failed++
			r.firstErr = cmp.Or(r.firstErr, err)
		}
	}
	r.opened = len(sessions) - r.failed

	// Let the sessions' background work (the upstream GET stream attempt)
	// end, then measure.
	if !sleepCtx(ctx, 2*time.Second) {
		return ctx.Err()
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
	// The sessions still work.
	for i := 0; i < len(sessions) && r.checked < 8; i += max(1, len(sessions)/8) {
		if sessions[i] == nil {
			continue
		}
		r.checked++
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := sessions[i].call(callCtx, "tools/call", echoParams("still there?"))
		cancel()
		if err != nil {
			r.checkFailed++
			r.firstErr = cmp.Or(r.firstErr, fmt.Errorf("call on an idle session: %w", err))
		}
	}
	return nil
}

// bigMessage relays one echo of a cfg.msgSize string through a fresh Caddy
// and measures its peak RSS growth into res.big.
func (b *bench) bigMessage(ctx context.Context, ci *caddyInst, res *storeResult) error {
	r := res.big
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	pid := ci.Proc().Pid()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	s, err := openSession(ctx, hc, "bridged", ci.sseURL())
	if err != nil {
		return err
	}
	defer s.tr.close()
	for range 3 {
		if _, err := s.call(ctx, "tools/call", echoParams("warm-up")); err != nil {
			return fmt.Errorf("warm-up call: %w", err)
		}
	}
	big := strings.Repeat("x", b.cfg.msgSize)
	params := echoParams(big)
	// call sends the message on s and checks the echo.
	call := func(s *session) (time.Duration, error) {
		start := time.Now()
		res, err := s.call(ctx, "tools/call", params)
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		if text, err := echoText(res); err != nil || len(text) != len(big) {
			return d, cmp.Or(err, fmt.Errorf("echo returned %d bytes, want %d", len(text), len(big)))
		}
		return d, nil
	}
	if !sleepCtx(ctx, 500*time.Millisecond) {
		return ctx.Err()
	}
	before, err := readMem(pid)
	if err != nil {
		return err
	}
	r.reset = resetPeak(pid)
	r.base = before.hwm
	if m, err := readMem(pid); err == nil && r.reset {
		r.base = m.rss
	}
	measured := func() {
		if r.bridgedLat, err = call(s); err != nil {
			err = fmt.Errorf("bridged: %w", err)
			return
		}
		var after procMem
		after, err = readMem(pid)
		r.peak = after.hwm
	}
	if ci.AdminURL() != "" {
		res.allocProfile = b.allocProfile(ctx, ci, measured)
	} else {
		measured()
	}
	if err != nil {
		return err
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
