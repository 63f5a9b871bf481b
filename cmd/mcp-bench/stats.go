package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p ≤ 100) of sorted latencies by
// the nearest-rank method: the smallest value that at least p% of the values
// do not exceed. It returns 0 for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// loadStats summarises one load run.
type loadStats struct {
	calls    int           // calls completed inside the measuring window
	window   time.Duration // length of the measuring window
	errors   int
	firstErr error
	p50, p99 time.Duration
	// cpu is the CPU time used over the window by the bench itself, the
	// upstream, Caddy and redis-server.
	cpu [4]time.Duration
}

// cpuPerCall is the CPU time of process i (0 bench, 1 upstream, 2 Caddy, 3 redis-server)
// per completed call, in microseconds.
func (s loadStats) cpuPerCall(i int) float64 {
	if s.calls == 0 {
		return 0
	}
	return float64(s.cpu[i]) / float64(time.Microsecond) / float64(s.calls)
}

// rate is completed calls per second.
func (s loadStats) rate() float64 {
	if s.window <= 0 {
		return 0
	}
	return float64(s.calls) / s.window.Seconds()
}

// summarize sorts lat in place and fills in the percentiles.
func summarize(s loadStats, lat []time.Duration) loadStats {
	slices.Sort(lat)
	s.calls = len(lat)
	s.p50 = percentile(lat, 50)
	s.p99 = percentile(lat, 99)
	return s
}

// ms formats a duration in milliseconds with 3 decimals.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f", msf(d))
}

// msf is a duration in milliseconds as a float.
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// mib formats a byte count in MiB with 1 decimal.
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// verdict is PASS or MISS.
func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}
