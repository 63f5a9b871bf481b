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
}}

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
