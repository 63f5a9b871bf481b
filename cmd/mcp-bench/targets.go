package main

import (
	"cmp"
	"fmt"
	"math"
	"strings"
)

// target is one performance goal of the bridge. The README's Performance
// section mirrors the targets table: a goal changes in both or in neither.
type target struct {
	name    string             // the report's row; "{store}" and "{size}" stand for the store and -message-size
	metric  string             // the quantity compared with the goal
	how     string             // how the bench measures it
	goal    map[string]float64 // per store, in goalFmt's unit; no goal, no row
	goalFmt string             // "≤ …" or "≥ …": which side of the goal meets it
	// measure returns the value in the goal's unit and how the report shows
	// it: "" when the results lack it, NaN (never met) when it had failures.
	measure func(res *storeResult) (float64, string)
}

// The session counts the throughput and the latency targets apply at.
const targetSessions, targetLatencySessions = 8, 1

// The scale targets apply to the run of targetScaleSessions making
// targetScaleCalls calls each (memory) and to the replicas run of
// targetReplicasSessions. The bound on Caddy's upstream connections is
// the bridge's default max_upstream_conns (the bench's Caddy sets none),
// which bounds the calls, plus the idle connections its pool for GET
// streams keeps (each session tries a GET stream once, which a stateless
// upstream refuses at once).
const (
	targetScaleSessions, targetScaleCalls, targetReplicasSessions = 5000, 10, 1000
	maxUpstreamConns, idleStreamConns, replicasP99Factor          = 512, 64, 3
)

var targets = []target{{
	name:    fmt.Sprintf("throughput, %d sessions, {store}", targetSessions),
	metric:  "bridged / direct calls per second",
	how:     "each session calls tools/call echo one call after another, direct and bridged in alternating slices",
	goal:    map[string]float64{"memory": 0.8, "redis": 0.6},
	goalFmt: "≥ %.2f× direct",
	measure: func(res *storeResult) (float64, string) {
		r := res.row(targetSessions)
		if r == nil {
			return 0, ""
		}
		ratio := r.bridged.rate() / r.direct.rate()
		return ratio, fmt.Sprintf("%.2f× (%.0f vs %.0f calls/s)", ratio, r.bridged.rate(), r.direct.rate())
	},
}, {
	name:    fmt.Sprintf("added p50 latency, %d session, {store}", targetLatencySessions),
	metric:  "bridged p50 − direct p50",
	how:     "the same calls from one session",
	goal:    map[string]float64{"memory": 0.3, "redis": 1},
	goalFmt: "≤ %.1f ms",
	measure: func(res *storeResult) (float64, string) {
		r := res.row(targetLatencySessions)
		if r == nil {
			return 0, ""
		}
		added := msf(r.bridged.p50 - r.direct.p50)
		return added, fmt.Sprintf("%+.4f ms (%s vs %s)", added, ms(r.bridged.p50), ms(r.direct.p50))
	},
}, {
	name:    "idle session RSS, {store}",
	metric:  "Caddy's RSS growth per open session",
	how:     "-idle sessions opened, initialised and kept open on a fresh Caddy, VmRSS after − before over the sessions; a failed session misses",
	goal:    map[string]float64{"memory": 30, "redis": 30},
	goalFmt: "≤ %.0f KiB each",
	measure: func(res *storeResult) (float64, string) {
		r := res.idle
		if r == nil || r.opened == 0 || r.after.rss == 0 {
			return 0, ""
		}
		shown := fmt.Sprintf("%.1f KiB (%d sessions)", idleKiB(r), r.opened)
		if r.failed > 0 {
			return math.NaN(), shown + fmt.Sprintf(", %d failed", r.failed)
		}
		return idleKiB(r), shown
	},
}, {
	name:    "Redis connections per replica (1 replica)",
	metric:  "the Redis connections of one Caddy",
	how:     "the peak of INFO clients (the bench's own left out) during each throughput run and with the idle sessions open",
	goal:    map[string]float64{"redis": 8},
	goalFmt: "≤ %.0f",
	measure: func(res *storeResult) (float64, string) {
		peak := -1
		var parts []string
		for _, r := range res.rows {
			if r.redisConns >= 0 {
				peak = max(peak, r.redisConns)
				parts = append(parts, fmt.Sprintf("%d with %d busy", r.redisConns, r.sessions))
			}
		}
		if r := res.idle; r != nil && r.redisConns >= 0 {
			peak = max(peak, r.redisConns)
			parts = append(parts, fmt.Sprintf("%d with %d idle", r.redisConns, r.opened))
		}
		if peak < 0 {
			return 0, ""
		}
		return float64(peak), fmt.Sprintf("%d (%s)", peak, strings.Join(parts, ", "))
	},
}, {
	name:    "peak RSS growth, one {size} message, {store}",
	metric:  "Caddy's peak RSS − RSS before",
	how:     "one tools/call echo of a -message-size string through a fresh Caddy, VmHWM after the call, reset before it",
	goal:    map[string]float64{"memory": 4, "redis": 4},
	goalFmt: "≤ %.1f MiB",
	measure: func(res *storeResult) (float64, string) {
		r := res.big
		if r == nil || r.peak == 0 {
			return 0, ""
		}
		return float64(r.peak-r.base) / (1 << 20), mib(r.peak - r.base)
	},
}, {
	name:    fmt.Sprintf("%d active sessions × %d calls, success, {store}", targetScaleSessions, targetScaleCalls),
	metric:  fmt.Sprintf("bridged calls answered with their id and echo text within %v, of all", scaleCallTimeout),
	how:     "-scale sessions opened and initialised, then each makes -scale-calls tools/call echo calls a jittered -think apart (½ to 1½ of it, the first after a random part of it); the same straight at the upstream first, then bridged on a fresh Caddy; a session that failed to open fails its calls",
	goal:    map[string]float64{"memory": 100},
	goalFmt: "≥ %.0f %%",
	measure: func(res *storeResult) (float64, string) {
		r := res.scaleRun(targetScaleSessions, targetScaleCalls)
		if r == nil {
			return 0, ""
		}
		d, br := r.direct.stats, r.bridged.stats
		return br.success(), fmt.Sprintf("%.2f %% (%d of %d calls; direct %.2f %%)", br.success(), br.calls, br.calls+br.errors, d.success())
	},
}, {
	name:    fmt.Sprintf("upstream connections, %d active sessions, {store}", targetScaleSessions),
	metric:  "Caddy's connections to the upstream: those that went to TIME_WAIT, of calls; ESTABLISHED at the peak",
	how:     fmt.Sprintf("/proc/net/tcp every %v through the bridged run of the success target: Caddy's ESTABLISHED sockets to the upstream's port (by inode, from /proc/<pid>/fd; its GET streams' too), and the TIME_WAIT sockets to that port new since the run began (Caddy closed them)", sampleInterval),
	goal:    map[string]float64{"memory": 2},
	goalFmt: fmt.Sprintf("≤ %%.0f %%%% in TIME_WAIT; ESTABLISHED ≤ %d (max_upstream_conns + %d idle for GET streams)", maxUpstreamConns+idleStreamConns, idleStreamConns),
	measure: func(res *storeResult) (float64, string) {
		r := res.scaleRun(targetScaleSessions, targetScaleCalls)
		if r == nil || r.timeWait < 0 || len(r.caddies) != 1 {
			return 0, ""
		}
		br, established, share := r.bridged.stats, r.caddies[0].upstreamConns, r.timeWaitShare()
		shown := fmt.Sprintf("%.2f %% (%d in %d calls); %d ESTABLISHED", share, r.timeWait, br.calls+br.errors, established)
		if established > maxUpstreamConns+idleStreamConns {
			return math.NaN(), shown
		}
		return share, shown
	},
}, {
	name:    fmt.Sprintf("2 replicas + Redis, %d sessions at moderate load, latency", targetReplicasSessions),
	metric:  "bridged p50 − direct p50, and bridged p99 / direct p99",
	how:     "-replicas-sessions sessions through a round-robin Caddy load balancer in front of 2 replicas on one Redis, each making -scale-calls calls a jittered -replicas-think apart (3 s: ~330 calls/s for 1,000 sessions); the same straight at the upstream first; a failed call misses",
	goal:    map[string]float64{"redis": 1.5},
	goalFmt: fmt.Sprintf("≤ %%.1f ms added p50; p99 ≤ %d× direct", replicasP99Factor),
	measure: func(res *storeResult) (float64, string) {
		r := res.scaleRun(targetReplicasSessions, 0)
		if r == nil || len(r.caddies) != 2 {
			return 0, ""
		}
		d, br := r.direct.stats, r.bridged.stats
		added, ratio := msf(br.p50-d.p50), float64(br.p99)/float64(max(d.p99, 1))
		shown := fmt.Sprintf("%+.2f ms p50 (%s vs %s); p99 %.1f× (%s vs %s); %.0f calls/s", added, ms(br.p50), ms(d.p50), ratio, ms(br.p99), ms(d.p99), br.rate())
		if br.errors > 0 || d.errors > 0 {
			return math.NaN(), shown + fmt.Sprintf("; %d/%d calls failed", d.errors, br.errors)
		}
		if ratio > replicasP99Factor {
			return math.NaN(), shown
		}
		return added, shown
	},
}}

// scaleRun returns the scale run of n sessions (and of calls calls each,
// unless 0) if both kinds made calls.
func (res *storeResult) scaleRun(n, calls int) *scaleRun {
	for _, r := range res.scale {
		if r.sessions == n && (calls == 0 || r.callsEach == calls) && r.direct.stats.calls+r.direct.stats.errors > 0 && r.bridged.stats.calls+r.bridged.stats.errors > 0 {
			return r
		}
	}
	return nil
}

// row returns the throughput row of n sessions if both kinds made calls.
func (res *storeResult) row(n int) *throughputRow {
	for _, r := range res.rows {
		if r.sessions == n && r.direct.calls > 0 && r.bridged.calls > 0 {
			return r
		}
	}
	return nil
}

// label is the target's name for a store ("": without it) and message size.
func (t target) label(store string, msgSize int) string {
	size := fmt.Sprintf("%d-byte", msgSize)
	if msgSize >= 1<<20 && msgSize%(1<<20) == 0 {
		size = fmt.Sprintf("%d MiB", msgSize>>20)
	}
	name := strings.ReplaceAll(t.name, "{size}", size)
	if store == "" {
		return strings.TrimSuffix(name, ", {store}")
	}
	return strings.ReplaceAll(name, "{store}", store)
}

type targetResult struct{ name, measured, goal, result string } // result: PASS, MISS or "-"

// evaluate holds each target against the results, store by store.
func (b *bench) evaluate() []targetResult {
	var out []targetResult
	for _, store := range b.cfg.stores {
		res, missing := &storeResult{}, "not measured"
		for _, r := range b.results {
			if r.name == store { // one not measured has no results
				res, missing = r, cmp.Or(r.note, missing)
			}
		}
		for _, t := range targets {
			goal, ok := t.goal[store]
			if !ok {
				continue
			}
			r := targetResult{t.label(store, b.cfg.msgSize), missing, fmt.Sprintf(t.goalFmt, goal), "-"}
			if v, shown := t.measure(res); shown != "" {
				r.measured, r.result = shown, "MISS"
				if atMost := strings.HasPrefix(t.goalFmt, "≤"); (atMost && v <= goal) || (!atMost && v >= goal) { // NaN is neither
					r.result = "PASS"
				}
			}
			out = append(out, r)
		}
	}
	return out
}
