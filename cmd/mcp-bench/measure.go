package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The three phases of a store's measurement, each with a fresh Caddy:
// throughput and latency, idle sessions, one large message.

// measureStore runs the three phases for one store.
func (b *bench) measureStore(ctx context.Context, res *storeResult) {
	// phase runs f against a fresh Caddy on an empty Redis.
	phase := func(name string, f func(ci *caddyInst)) error {
		if b.redisProbe != nil && res.name == "redis" {
			if err := b.redisProbe.c.FlushAll(ctx).Err(); err != nil {
				b.logf("redis FLUSHALL: %v", err)
			}
		}
		ci, err := b.startCaddy(ctx, res.name, name)
		if err != nil {
			return err
		}
		f(ci)
		b.stopCaddy(ci, res)
		return nil
	}

	err := phase("throughput", func(ci *caddyInst) {
		for _, n := range b.cfg.sessions {
			if ctx.Err() != nil {
				return
			}
			b.logf("%s: %d session(s), direct and bridged in %d alternating rounds", res.name, n, b.cfg.rounds)
			row := b.throughput(ctx, ci, res, n)
			res.rows = append(res.rows, row)
			if row.directErr != nil || row.bridgedErr != nil || row.direct.errors > 0 || row.bridged.errors > 0 {
				b.failed = true
			}
			if ci.c.exited() {
				res.setupError = fmt.Errorf("caddy exited (%v):\n%s", ci.c.err, ci.c.logTail(20))
				b.failed = true
				return
			}
		}
	})
	if err != nil || res.setupError != nil {
		if err != nil {
			res.setupError = err
			b.logf("%s: starting caddy: %v", res.name, err)
		}
		b.failed = true
		return
	}

	if b.cfg.idle > 0 && ctx.Err() == nil {
		b.logf("%s: %d idle sessions", res.name, b.cfg.idle)
		if err := phase("idle", func(ci *caddyInst) { res.idle = b.idleSessions(ctx, ci, res) }); err != nil {
			res.idle = &idleResult{err: err}
		}
		b.failed = b.failed || res.idle.err != nil || res.idle.failed > 0 || res.idle.checkFailed > 0
	}

	if b.cfg.msgSize > 0 && ctx.Err() == nil {
		b.logf("%s: one %d-byte message", res.name, b.cfg.msgSize)
		if err := phase("message", func(ci *caddyInst) { res.big = b.bigMessage(ctx, ci, res) }); err != nil {
			res.big = &bigResult{err: err}
		}
		b.failed = b.failed || res.big.err != nil
	}
}

// loadRun is a set of open sessions of one kind for the throughput runs.
type loadRun struct {
	hc       *http.Client
	sessions []*session
	params   []byte
	checked  []bool // whether session i's first answer was checked
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

// slice is what one measuring slice of a load run produced.
type slice struct {
	lat      []time.Duration
	errors   int
	firstErr error
	cpu      [4]time.Duration
}

// run has every session call echo one call after another for window. Calls
// that start and end inside it count. The CPU time of the processes pids
// (the bench, the upstream, Caddy, redis-server; 0 for none) over the window
// is recorded.
func (lr *loadRun) run(ctx context.Context, window time.Duration, pids [4]int) slice {
	var out slice
	t0 := time.Now()
	t1 := t0.Add(window)
	var cpu0 [4]time.Duration
	for i, p := range pids {
		cpu0[i] = readCPU(p)
	}
	lats := make([][]time.Duration, len(lr.sessions))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, s := range lr.sessions {
		wg.Go(func() {
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
					out.firstErr = cmp.Or(out.firstErr, err)
					mu.Unlock()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if !end.After(t1) {
					lat = append(lat, end.Sub(begin))
				}
			}
			lats[i] = lat
		})
	}
	// The window ends at t1, not when the last call does.
	sleepCtx(ctx, time.Until(t1))
	for i, p := range pids {
		out.cpu[i] = readCPU(p) - cpu0[i]
	}
	wg.Wait()
	for _, l := range lats {
		out.lat = append(out.lat, l...)
	}
	return out
}

// throughput measures direct and bridged sessions (n of each) in
// alternating slices, so that other load on the machine hits both alike:
// warm-up of each, then cfg.rounds rounds of one slice each (the order
// alternates from round to round). Caddy's peak RSS and the Redis
// connections are sampled meanwhile; with -pprof, the largest run is
// profiled.
func (b *bench) throughput(ctx context.Context, ci *caddyInst, res *storeResult, n int) *throughputRow {
	row := &throughputRow{sessions: n, redisConns: -1}
	var probe *redisProbe
	pids := [4]int{os.Getpid(), b.upstream.pid(), ci.c.pid(), 0}
	if res.name == "redis" {
		probe, pids[3] = b.redisProbe, b.redis.pid()
	}
	hwmReset := resetPeak(ci.c.pid())
	smp := startSampler(ctx, ci.c.pid(), probe, 100*time.Millisecond)
	defer func() {
		smp.finish()
		if m, err := readMem(ci.c.pid()); err == nil {
			row.peakHWM = m.hwm
		}
		if !hwmReset {
			row.peakHWM = max(row.peakHWM, smp.maxRSS)
		}
		row.redisConns = smp.maxRedis
	}()
	direct, err := openLoad(ctx, "direct", b.upstreamURL, n)
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
	direct.run(ctx, b.cfg.warmup, pids)
	bridged.run(ctx, b.cfg.warmup, pids)
	var cmdsBefore map[string]int64
	if probe != nil {
		cmdsBefore, _ = probe.commandStats(ctx)
	}
	profiled := make(chan struct{})
	go func() {
		defer close(profiled)
		if ci.admin != "" && n == maxOf(b.cfg.sessions) {
			res.profile = b.cpuProfile(ctx, ci, n)
		}
	}()
	sliceLen := b.cfg.duration / time.Duration(b.cfg.rounds)
	var dLat, bLat []time.Duration
	add := func(st *loadStats, lat *[]time.Duration, s slice) {
		*lat = append(*lat, s.lat...)
		st.errors += s.errors
		st.firstErr = cmp.Or(st.firstErr, s.firstErr)
		for i := range st.cpu {
			st.cpu[i] += s.cpu[i]
		}
	}
	for r := 0; r < b.cfg.rounds && ctx.Err() == nil; r++ {
		// Direct first in even rounds, bridged first in odd ones.
		for k := range 2 {
			if (r+k)%2 == 0 {
				add(&row.direct, &dLat, direct.run(ctx, sliceLen, pids))
			} else {
				add(&row.bridged, &bLat, bridged.run(ctx, sliceLen, pids))
			}
		}
	}
	<-profiled
	if cmdsBefore != nil {
		if after, err := probe.commandStats(ctx); err == nil {
			row.redisCmds = commandDelta(cmdsBefore, after)
		}
	}
	row.direct.window = sliceLen * time.Duration(b.cfg.rounds)
	row.bridged.window = row.direct.window
	row.direct = summarize(row.direct, dLat)
	row.bridged = summarize(row.bridged, bLat)
	if ctx.Err() != nil {
		row.bridgedErr = ctx.Err()
	}
	return row
}

func maxOf(v []int) int {
	m := 0
	for _, n := range v {
		m = max(m, n)
	}
	return m
}

// idleSessions opens cfg.idle legacy sessions, initialises them and keeps
// them open, and measures Caddy's RSS before and after.
func (b *bench) idleSessions(ctx context.Context, ci *caddyInst, res *storeResult) *idleResult {
	r := &idleResult{want: b.cfg.idle, redisConns: -1}
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
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
		b.heapBaseline(ctx, ci, r)
	}
	var err error
	if r.before, err = readMem(pid); err != nil {
		r.err = err
		return r
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
		r.err = ctx.Err()
		return r
	}
	if r.after, err = readMem(pid); err != nil {
		r.err = err
		return r
	}
	if res.name == "redis" {
		if c, err := b.redisProbe.clients(ctx); err == nil {
			r.redisConns = c
		}
	}
	if ci.admin != "" {
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
	return r
}

// bigMessage relays one echo of a cfg.msgSize string through a fresh Caddy
// and measures its peak RSS growth.
func (b *bench) bigMessage(ctx context.Context, ci *caddyInst, res *storeResult) *bigResult {
	r := &bigResult{size: b.cfg.msgSize}
	hc := newHTTPClient()
	defer hc.CloseIdleConnections()
	pid := ci.c.pid()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	s, err := openSession(ctx, hc, "bridged", ci.sseURL())
	if err != nil {
		r.err = err
		return r
	}
	defer s.tr.close()
	for range 3 {
		if _, err := s.call(ctx, "tools/call", echoParams("warm-up")); err != nil {
			r.err = fmt.Errorf("warm-up call: %w", err)
			return r
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
	if m, err := readMem(pid); err == nil && r.reset {
		r.base = m.rss
	}
	measured := func() {
		if r.bridgedLat, err = call(s); err != nil {
			r.err = fmt.Errorf("bridged: %w", err)
			return
		}
		after, err := readMem(pid)
		r.peak, r.err = after.hwm, err
	}
	if ci.admin != "" {
		res.allocProfile = b.allocProfile(ctx, ci, measured)
	} else {
		measured()
	}
	if r.err != nil {
		return r
	}

	d, err := openSession(ctx, hc, "direct", b.upstreamURL)
	if err != nil {
		r.err = fmt.Errorf("direct: %w", err)
		return r
	}
	if r.directLat, err = call(d); err != nil {
		r.err = fmt.Errorf("direct: %w", err)
	}
	return r
}
