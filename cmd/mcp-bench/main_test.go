package main

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

func TestStats(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	for _, tc := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{{nil, 50, 0}, {[]time.Duration{7}, 99, 7}, {[]time.Duration{1, 2}, 50, 1}, {[]time.Duration{1, 2}, 99, 2},
		{hundred, 50, 50}, {hundred, 99, 99}, {hundred, 100, 100}, {hundred, 0.001, 1}} {
		if got := percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("percentile(%d values, p%v) = %v, want %v", len(tc.in), tc.p, got, tc.want)
		}
	}
	s := summarize(loadStats{window: 2 * time.Second, cpu: [4]time.Duration{2: 5 * time.Microsecond}}, []time.Duration{5, 1, 4, 2, 3})
	if s.calls != 5 || s.p50 != 3 || s.p99 != 5 || s.rate() != 2.5 || s.cpuPerCall(2) != 1 {
		t.Errorf("summarize = %+v, rate %v, Caddy CPU per call %v µs", s, s.rate(), s.cpuPerCall(2))
	}
}

func TestCommandStats(t *testing.T) {
	before := parseCommandStats(map[string]string{"cmdstat_get": "calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0", "cmdstat_info": "calls=1,usec=1"})
	after := parseCommandStats(map[string]string{"cmdstat_get": "calls=30,usec=5", "cmdstat_evalsha": "calls=40,usec=9", "cmdstat_info": "calls=3,usec=1", "cmdstat_hello": "calls=9,usec=1"})
	d := commandDelta(before, after)
	if len(d) != 2 || d["get"] != 20 || d["evalsha"] != 40 {
		t.Errorf("commandDelta = %v", d)
	}
	if got := perCall(d, 10); got != "6.0 (evalsha 4.00, get 2.00)" {
		t.Errorf("perCall = %q", got)
	}
}

func TestBridgeBlock(t *testing.T) {
	cf := testenv.Caddyfile{Sites: []testenv.Site{{Port: 8080, Body: bridgeBlock("http://127.0.0.1:9/mcp", "memory", "", 12000)}}}
	want := "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tgrace_period 1s\n}\n\n" +
		"http://127.0.0.1:8080 {\n\tbind 127.0.0.1\n\tmcp_sse_bridge {\n\t\tupstream http://127.0.0.1:9/mcp\n\t\tnew_session_rate 1000000\n" +
		"\t\tidentity_secret mcp-bench-identity-secret\n\t\tstore memory {\n\t\t\tmax_sessions 12000\n\t\t\tmax_sessions_per_caller 12000\n\t\t}\n\t}\n}\n"
	if got := cf.String(); got != want {
		t.Errorf("Caddyfile:\n%s\nwant:\n%s", got, want)
	}
	if got := bridgeBlock("u", "redis", "127.0.0.1:6379", 1); !strings.Contains(got, "\t\tstore redis {\n\t\t\taddress 127.0.0.1:6379\n\t\t\tmax_sessions_per_caller 1\n\t\t}\n") {
		t.Errorf("redis store block %q", got)
	}
}

func TestTargets(t *testing.T) {
	stats := func(calls int, p50 time.Duration) loadStats {
		return loadStats{calls: calls, window: time.Second, p50: p50}
	}
	b := &bench{cfg: &config{stores: []string{"memory", "redis"}, msgSize: 1 << 20}, results: []*storeResult{{
		name: "memory",
		rows: []*throughputRow{
			{sessions: 1, direct: stats(1000, time.Millisecond), bridged: stats(600, 1200*time.Microsecond), redisConns: -1},
			{sessions: 8, direct: stats(1000, 0), bridged: stats(900, 0), redisConns: -1},
		},
		idle: &idleResult{opened: 1000, failed: 2, before: procMem{rss: 10 << 20}, after: procMem{rss: 30 << 20}, redisConns: -1},
	}, {name: "redis", note: "redis: not available"}}}
	var got []string
	for _, r := range b.evaluate() {
		got = append(got, r.name+" | "+r.measured+" | "+r.goal+" | "+r.result)
	}
	want := []string{
		"throughput, 8 sessions, memory | 0.90× (900 vs 1000 calls/s) | ≥ 0.80× direct | PASS",
		"added p50 latency, 1 session, memory | +0.2000 ms (1.200 vs 1.000) | ≤ 0.3 ms | PASS",
		"idle session RSS, memory | 20.5 KiB (1000 sessions), 2 failed | ≤ 30 KiB each | MISS",
		"peak RSS growth, one 1 MiB message, memory | not measured | ≤ 4.0 MiB | -",
		"throughput, 8 sessions, redis | redis: not available | ≥ 0.60× direct | -",
		"added p50 latency, 1 session, redis | redis: not available | ≤ 1.0 ms | -",
		"idle session RSS, redis | redis: not available | ≤ 30 KiB each | -",
		"Redis connections per replica (1 replica) | redis: not available | ≤ 8 | -",
		"peak RSS growth, one 1 MiB message, redis | redis: not available | ≤ 4.0 MiB | -",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("evaluate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
