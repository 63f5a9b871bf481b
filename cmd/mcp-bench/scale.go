package main

// The scale phase: thousands of sessions open at once, each making a few
// calls a think time apart, the same load sent straight to the upstream
// and then through the bridge; with the memory store on one Caddy (one run
// per -scale count), and with the redis store through two replicas behind
// a load balancer (the replicas run).

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
	"github.com/prometheus/procfs"
)

const (
	scaleCallTimeout = 30 * time.Second // a call answered later fails; generous, as thousands of sessions queue on 2 cores
	scaleOpenWorkers = 64               // sessions opening at a time
	sampleInterval   = 500 * time.Millisecond
)

// scaleRun is one run of the scale phase.
type scaleRun struct {
	sessions, callsEach int
	think               time.Duration
	direct, bridged     scaleSide
	caddies             []caddyUsage // over the bridged run, one per replica
	timeWait            int          // Caddy's upstream connections that went to TIME_WAIT in the bridged run; -1 unknown
	benchFDs            int          // the bench's peak open files in the bridged run
}

// scaleSide is what one kind of session (direct, bridged) of a run did.
type scaleSide struct {
	stats      loadStats // calls: answered in time, window: from the first call to the last answer
	openTime   time.Duration
	openFailed int
}

// caddyUsage is what a Caddy replica held during a bridged run.
type caddyUsage struct {
	upstreamConns int   // peak ESTABLISHED connections to the upstream's port
	fds           int   // peak open files
	peakHWM       int64 // VmHWM, reset before the run
}

// success is the share of the calls answered in time, in %.
func (s loadStats) success() float64 {
	return 100 * float64(s.calls) / float64(max(s.calls+s.errors, 1))
}

// timeWaitShare is the upstream connections that went to TIME_WAIT in the
// bridged run, in % of its calls.
func (r *scaleRun) timeWaitShare() float64 {
	return 100 * float64(r.timeWait) / float64(max(r.bridged.stats.calls+r.bridged.stats.errors, 1))
}

// scaleRunTime estimates a scale run of n sessions, direct and bridged:
// opening at ~10 ms a session, then the calls at 1,000 calls/s or the think
// times, whichever take longer, and a fresh Caddy.
func (cfg *config) scaleRunTime(n int, think time.Duration) time.Duration {
	if n == 0 {
		return 0
	}
	calls := time.Duration(n*cfg.scaleCalls) * time.Millisecond
	thinking := time.Duration(cfg.scaleCalls) * think * 3 / 2
	return 2*(time.Duration(n)*10*time.Millisecond+max(calls, thinking)) + 10*time.Second
}

// maxSessions is the most sessions a phase opens at once.
func (cfg *config) maxSessions() int {
	n := cfg.idle
	for _, s := range cfg.scale {
		n = max(n, s)
	}
	return max(n, cfg.replicasSessions)
}

// scaleMemory is one run of n sessions on a fresh Caddy with the memory
// store.
func (b *bench) scaleMemory(ctx context.Context, ci *caddyInst, res *storeResult, n int) error {
	run := &scaleRun{sessions: n, callsEach: b.cfg.scaleCalls, think: b.cfg.think}
	res.scale = append(res.scale, run)
	return b.measureScale(ctx, res, run, ci.sseURL(), ci)
}

// scaleReplicas is the replicas run: two Caddy replicas of the bridge on
// Redis, and a third Caddy in front, a round-robin load balancer with no
// affinity (as README's "Several replicas" has it).
func (b *bench) scaleReplicas(ctx context.Context, res *storeResult) {
	if err := flushRedis(ctx, b.redis.Addr()); err != nil {
		b.logf("redis FLUSHALL: %v", err)
	}
	var replicas []*caddyInst
	var lb *caddyInst
	defer func() { // the load balancer first: its streams end before the replicas'
		for _, ci := range append([]*caddyInst{lb}, replicas...) {
			if ci != nil && ci.Caddy != nil {
				b.stopCaddy(ci, res)
			}
		}
	}()
	err := func() error {
		for i := range 2 {
			ci, err := b.startCaddy(ctx, res.name, fmt.Sprintf("replica-%d", i+1))
			if err != nil {
				return err
			}
			replicas = append(replicas, ci)
		}
		c, err := b.startSite(ctx, "load-balancer", "caddy (load balancer)", loadBalancerBlock(replicas))
		if err != nil {
			return err
		}
		lb = &caddyInst{c, res.name}
		run := &scaleRun{sessions: b.cfg.replicasSessions, callsEach: b.cfg.scaleCalls, think: b.cfg.replicasThink}
		res.scale = append(res.scale, run)
		return b.measureScale(ctx, res, run, lb.sseURL(), replicas...)
	}()
	if err != nil {
		b.fail(res, "scale", "%s, 2 replicas: %v", res.name, err)
	}
}

// loadBalancerBlock spreads requests over the replicas round robin and
// streams their responses as they come.
func loadBalancerBlock(replicas []*caddyInst) string {
	var addrs []string
	for _, ci := range replicas {
		addrs = append(addrs, testenv.Addr(ci.Caddyfile().Sites[0].Port))
	}
	return fmt.Sprintf("reverse_proxy %s {\n\t\tlb_policy round_robin\n\t\tflush_interval -1\n\t}", strings.Join(addrs, " "))
}

// measureScale sends the run's load straight to the upstream, then
// through the bridge at sseURL, sampling the bridge's Caddy replicas
// meanwhile. It returns an error if a replica exited; failed calls are
// remarks.
func (b *bench) measureScale(ctx context.Context, res *storeResult, run *scaleRun, sseURL string, replicas ...*caddyInst) error {
	pids := make([]int, len(replicas))
	for i, ci := range replicas {
		pids[i] = ci.Proc().Pid()
	}
	// The direct run is sampled too, and its samples dropped: reading
	// /proc costs CPU, which then weighs on both kinds alike.
	b.logf("%s: scale, %d sessions × %d calls, think %v, through %d replica(s): direct", res.name, run.sessions, run.callsEach, run.think, len(replicas))
	run.direct = scaleLoad(ctx, "direct", b.upstream.URL(), run, newUsageSampler(b.upstream.Port(), pids).sample)
	for _, pid := range pids {
		resetPeak(pid)
	}
	b.logf("%s: scale, %d sessions: bridged", res.name, run.sessions)
	u := newUsageSampler(b.upstream.Port(), pids)
	run.bridged = scaleLoad(ctx, "bridged", sseURL, run, u.sample)
	run.caddies, run.timeWait, run.benchFDs = u.usage, len(u.timeWait), u.benchFDs
	if u.err != nil {
		run.timeWait = -1
		b.fail(res, "scale", "%s, %d sessions: reading /proc: %v", res.name, run.sessions, u.err)
	}
	for i, pid := range pids {
		if m, err := readMem(pid); err == nil {
			run.caddies[i].peakHWM = m.hwm
		}
	}
	for i, side := range []scaleSide{run.direct, run.bridged} {
		if s := side.stats; s.errors > 0 {
			b.fail(res, "scale", "%s, %d sessions, %s: %d of %d calls failed (%d sessions did not open), the first: %v",
				res.name, run.sessions, []string{"direct", "bridged"}[i], s.errors, s.calls+s.errors, side.openFailed, s.firstErr)
		}
	}
	for _, ci := range replicas {
		if p := ci.Proc(); p.Exited() {
			return fmt.Errorf("%s exited (%v):\n%s", p.Name(), p.Err(), p.Tail(20))
		}
	}
	return nil
}

// scaleLoad opens run.sessions sessions of one kind at target, some at a
// time, then has each make run.callsEach echo calls: the first after a
// random part of the think time, so that the sessions spread out, each
// next one a jittered think time (½ to 1½ of it) after the answer. A
// session that failed to open fails all its calls. sample runs on a
// ticker throughout and once after the last answer, before the sessions
// close.
func scaleLoad(ctx context.Context, kind, target string, run *scaleRun, sample func()) scaleSide {
	var side scaleSide
	hc := testenv.NewHTTPClient(run.sessions + 64) // a bridged session keeps its POSTs' connection between calls
	defer hc.CloseIdleConnections()
	stopSampling := sampleMeanwhile(sample)
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(run.sessions)*10*time.Millisecond)
	begin := time.Now()
	sessions, errs := openSessions(openCtx, hc, kind, target, run.sessions, scaleOpenWorkers)
	side.openTime = time.Since(begin)
	cancel()
	defer closeAll(sessions)

	var mu sync.Mutex
	var lat []time.Duration
	record := func(l []time.Duration, failed int, err error) {
		mu.Lock()
		defer mu.Unlock()
		lat, side.stats.errors = append(lat, l...), side.stats.errors+failed
		side.stats.firstErr = cmp.Or(side.stats.firstErr, err)
	}
	var wg sync.WaitGroup
	begin = time.Now()
	for i, s := range sessions {
		if s == nil {
			side.openFailed++
			record(nil, run.callsEach, fmt.Errorf("opening: %w", errs[i]))
			continue
		}
		wg.Go(func() {
			record(sessionCalls(ctx, s, fmt.Sprintf("mcp-bench %s session %d", kind, i), run.callsEach, run.think))
		})
	}
	wg.Wait()
	side.stats.window = time.Since(begin)
	stopSampling()
	side.stats = summarize(side.stats, lat)
	return side
}

// sessionCalls makes calls echo calls on s, each with its own text, and
// returns the latencies of those answered in time and the failures.
func sessionCalls(ctx context.Context, s *session, tag string, calls int, think time.Duration) (lat []time.Duration, failed int, firstErr error) {
	pause := jitter(think)
	for i := range calls {
		if err := testenv.Sleep(ctx, pause); err != nil {
			return lat, failed + calls - i, cmp.Or(firstErr, err)
		}
		msg := fmt.Sprintf("%s call %d", tag, i+1)
		callCtx, cancel := context.WithTimeout(ctx, scaleCallTimeout)
		begin := time.Now()
		res, err := s.call(callCtx, "tools/call", echoParams(msg))
		d := time.Since(begin)
		cancel()
		if err == nil {
			err = checkEcho(res, []byte(msg))
		}
		if err != nil {
			failed++
			firstErr = cmp.Or(firstErr, fmt.Errorf("call %d: %w", i+1, err))
		} else {
			lat = append(lat, d)
		}
		pause = think/2 + jitter(think)
	}
	return lat, failed, firstErr
}

// jitter is a random duration in [0, d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// sampleMeanwhile calls sample now and every sampleInterval until stop is
// called, and once more then; stop returns after that last one.
func sampleMeanwhile(sample func()) (stop func()) {
	stopping, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(sampleInterval)
		defer t.Stop()
		for sample(); ; sample() {
			select {
			case <-stopping:
				sample()
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(stopping); <-stopped }
}

// usageSampler follows, through a bridged run, the Caddy replicas'
// connections to the upstream and open files, and the bench's open files.
// A TIME_WAIT socket belongs to no process: those to the upstream's port
// that appear during the run are Caddy's, as the bench's direct
// connections closed before it began.
type usageSampler struct {
	port           uint64 // the upstream's
	pids           []int  // the replicas'
	usage          []caddyUsage
	benchFDs       int
	timeWaitBefore map[string]bool // by local address: at the start
	timeWait       map[string]bool // since, seen in any sample (each lasts 60 s)
	err            error           // the first failure to read /proc
}

func newUsageSampler(port int, pids []int) *usageSampler {
	u := &usageSampler{port: uint64(port), pids: pids, usage: make([]caddyUsage, len(pids)),
		timeWaitBefore: map[string]bool{}, timeWait: map[string]bool{}}
	tcp, err := procFS().NetTCP()
	u.err = err
	countUpstream(tcp, u.port, nil, nil, u.timeWaitBefore)
	return u
}

func (u *usageSampler) sample() {
	owners := map[uint64]int{} // socket inode → replica
	for i, pid := range u.pids {
		targets, err := procFDTargets(pid)
		if err != nil {
			u.err = cmp.Or(u.err, err)
			continue
		}
		u.usage[i].fds = max(u.usage[i].fds, len(targets))
		for _, t := range targets {
			if inode, ok := socketInode(t); ok {
				owners[inode] = i
			}
		}
	}
	if p, err := procfs.Self(); err == nil {
		if n, err := p.FileDescriptorsLen(); err == nil {
			u.benchFDs = max(u.benchFDs, n)
		}
	}
	tcp, err := procFS().NetTCP()
	if err != nil {
		u.err = cmp.Or(u.err, err)
		return
	}
	established, timeWait := make([]int, len(u.pids)), map[string]bool{}
	countUpstream(tcp, u.port, owners, established, timeWait)
	for i, n := range established {
		u.usage[i].upstreamConns = max(u.usage[i].upstreamConns, n)
	}
	for a := range timeWait {
		if !u.timeWaitBefore[a] {
			u.timeWait[a] = true
		}
	}
}

func procFDTargets(pid int) ([]string, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return nil, err
	}
	return p.FileDescriptorTargets()
}

// TCP states in /proc/net/tcp.
const tcpEstablished, tcpTimeWait = 1, 6

// countUpstream goes through the sockets of tcp connected to port: it
// counts the ESTABLISHED ones in established by owner (owners maps a
// socket's inode to an index of established), and adds the TIME_WAIT ones,
// which no process owns, to timeWait by local address.
func countUpstream(tcp procfs.NetTCP, port uint64, owners map[uint64]int, established []int, timeWait map[string]bool) {
	for _, s := range tcp {
		if s.RemPort != port {
			continue
		}
		switch s.St {
		case tcpEstablished:
			if i, ok := owners[s.Inode]; ok {
				established[i]++
			}
		case tcpTimeWait:
			timeWait[net.JoinHostPort(s.LocalAddr.String(), strconv.FormatUint(s.LocalPort, 10))] = true
		}
	}
}

// socketInode is the inode of a /proc/<pid>/fd link to a socket
// ("socket:[123]").
func socketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if s, ok = strings.CutSuffix(s, "]"); !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}
