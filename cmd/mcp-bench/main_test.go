package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
	"github.com/prometheus/procfs"
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
		"5000 active sessions × 10 calls, success, memory | not measured | ≥ 100 % | -",
		"upstream connections, 5000 active sessions, memory | not measured | ≤ 2 % in TIME_WAIT; ESTABLISHED ≤ 576 (max_upstream_conns + 64 idle for GET streams) | -",
		"throughput, 8 sessions, redis | redis: not available | ≥ 0.60× direct | -",
		"added p50 latency, 1 session, redis | redis: not available | ≤ 1.0 ms | -",
		"idle session RSS, redis | redis: not available | ≤ 30 KiB each | -",
		"Redis connections per replica (1 replica) | redis: not available | ≤ 8 | -",
		"peak RSS growth, one 1 MiB message, redis | redis: not available | ≤ 4.0 MiB | -",
		"2 replicas + Redis, 1000 sessions at moderate load, latency | redis: not available | ≤ 1.5 ms added p50; p99 ≤ 3× direct | -",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("evaluate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestScaleTargets(t *testing.T) {
	stats := func(calls, errors int, p50, p99 time.Duration) scaleSide {
		return scaleSide{stats: loadStats{calls: calls, errors: errors, window: 10 * time.Second, p50: p50, p99: p99}}
	}
	milli := time.Millisecond
	evaluate := func(memory, redis []*scaleRun) (got []string) {
		b := &bench{cfg: &config{stores: []string{"memory", "redis"}}, results: []*storeResult{{name: "memory", scale: memory}, {name: "redis", scale: redis}}}
		for _, r := range b.evaluate() {
			if strings.Contains(r.name, "sessions ×") || strings.Contains(r.name, "upstream connections") || strings.Contains(r.name, "replicas") {
				got = append(got, r.name+" | "+r.measured+" | "+r.result)
			}
		}
		return got
	}
	for _, tc := range []struct {
		memory, redis []*scaleRun
		want          []string
	}{{
		memory: []*scaleRun{
			{sessions: 1000, callsEach: 10, direct: stats(10000, 0, milli, milli), bridged: stats(9000, 1000, milli, milli), caddies: []caddyUsage{{}}, timeWait: 9000},
			{sessions: 5000, callsEach: 10, direct: stats(50000, 0, milli, milli), bridged: stats(50000, 0, milli, milli), caddies: []caddyUsage{{upstreamConns: 512}}, timeWait: 100},
		},
		redis: []*scaleRun{{sessions: 1000, callsEach: 10, direct: stats(10000, 0, milli, 4*milli), bridged: stats(10000, 0, 2*milli, 12*milli), caddies: make([]caddyUsage, 2)}},
		want: []string{
			"5000 active sessions × 10 calls, success, memory | 100.00 % (50000 of 50000 calls; direct 100.00 %) | PASS",
			"upstream connections, 5000 active sessions, memory | 0.20 % (100 in 50000 calls); 512 ESTABLISHED | PASS",
			"2 replicas + Redis, 1000 sessions at moderate load, latency | +1.00 ms p50 (2.000 vs 1.000); p99 3.0× (12.000 vs 4.000); 1000 calls/s | PASS",
		},
	}, {
		memory: []*scaleRun{
			{sessions: 5000, callsEach: 5, direct: stats(25000, 0, milli, milli), bridged: stats(25000, 0, milli, milli), caddies: []caddyUsage{{}}},
			{sessions: 5000, callsEach: 10, direct: stats(50000, 0, milli, milli), bridged: stats(49990, 10, milli, milli), caddies: []caddyUsage{{upstreamConns: 577}}, timeWait: 0},
		},
		redis: []*scaleRun{{sessions: 1000, callsEach: 10, direct: stats(10000, 0, milli, 4*milli), bridged: stats(9999, 1, 2*milli, 12*milli), caddies: make([]caddyUsage, 2)}},
		want: []string{
			"5000 active sessions × 10 calls, success, memory | 99.98 % (49990 of 50000 calls; direct 100.00 %) | MISS",
			"upstream connections, 5000 active sessions, memory | 0.00 % (0 in 50000 calls); 577 ESTABLISHED | MISS",
			"2 replicas + Redis, 1000 sessions at moderate load, latency | +1.00 ms p50 (2.000 vs 1.000); p99 3.0× (12.000 vs 4.000); 1000 calls/s; 0/1 calls failed | MISS",
		},
	}, {
		redis: []*scaleRun{{sessions: 1000, callsEach: 10, direct: stats(10000, 0, milli, 4*milli), bridged: stats(10000, 0, 2*milli, 13*milli), caddies: make([]caddyUsage, 2)}},
		want: []string{
			"5000 active sessions × 10 calls, success, memory | not measured | -",
			"upstream connections, 5000 active sessions, memory | not measured | -",
			"2 replicas + Redis, 1000 sessions at moderate load, latency | +1.00 ms p50 (2.000 vs 1.000); p99 3.2× (13.000 vs 4.000); 1000 calls/s | MISS",
		},
	}} {
		if got := evaluate(tc.memory, tc.redis); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("evaluate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}

// TestCountUpstream reads a /proc/net/tcp of connections to an upstream on
// port 8080 (1F90): Caddy's (inodes 11, 12), another process's (13), one
// in TIME_WAIT, one from the upstream's side, and others.
func TestCountUpstream(t *testing.T) {
	dir := t.TempDir()
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 10 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 11 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:9C41 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C42 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 13 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:9C43 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   5: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 14 1 0000000000000000 20 4 30 10 -1
   6: 0100007F:9C44 0100007F:1F91 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   7: 0100007F:9C45 0100007F:1F90 08 00000000:00000000 00:00000000 00000000     0        0 15 1 0000000000000000 20 4 30 10 -1
`
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "net", "tcp"), []byte(tcp), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := procfs.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := fs.NetTCP()
	if err != nil {
		t.Fatal(err)
	}
	established, timeWait := make([]int, 2), map[string]bool{}
	countUpstream(lines, 8080, map[uint64]int{11: 0, 12: 0, 15: 1, 14: 1}, established, timeWait)
	if established[0] != 2 || established[1] != 0 || len(timeWait) != 1 || !timeWait["127.0.0.1:40003"] {
		t.Errorf("countUpstream: established %v, TIME_WAIT %v; want [2 0], [127.0.0.1:40003]", established, timeWait)
	}
}

func TestSocketInode(t *testing.T) {
	for target, want := range map[string]uint64{"socket:[123]": 123, "socket:[]": 0, "pipe:[5]": 0, "/dev/null": 0, "socket:[12": 0} {
		if got, ok := socketInode(target); got != want || ok != (want != 0) {
			t.Errorf("socketInode(%q) = %d, %v", target, got, ok)
		}
	}
}

func TestLogSummary(t *testing.T) {
	log := `{"level":"info","logger":"http","msg":"admin endpoint disabled"}
{"level":"warn","logger":"http.handlers.reverse_proxy","msg":"aborting with incomplete response","error":"reading: context canceled"}
{"level":"warn","logger":"http.handlers.reverse_proxy","msg":"aborting with incomplete response","error":"reading: unexpected EOF"}
{"level":"error","logger":"http.handlers.mcp_sse_bridge","msg":"lost","error":"x"}
not JSON
`
	want := "1 warnings, 1 errors\n         1× error: http.handlers.mcp_sse_bridge: lost (first: x)\n" +
		"         1× warn: http.handlers.reverse_proxy: aborting with incomplete response (first: reading: unexpected EOF)"
	if got := logSummary(log); got != want {
		t.Errorf("logSummary:\n%s\nwant:\n%s", got, want)
	}
}
