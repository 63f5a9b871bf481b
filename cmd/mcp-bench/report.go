package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// logSummary counts the warnings and errors Caddy logged during a store's
// runs, by message.
type logSummary struct {
	warn, error int
	msgs        map[string]int    // "level: logger: msg" → count
	example     map[string]string // "level: logger: msg" → the first one's error field
}

// startupNoise are warnings every Caddy run of the benchmark logs.
var startupNoise = map[string]bool{
	"admin endpoint disabled":                true,
	"HTTP/2 skipped because it requires TLS": true,
	"HTTP/3 skipped because it requires TLS": true,
	"exiting; byeee!! 👋":                     true,
}

// add reads a Caddy log file (JSON lines).
func (l *logSummary) add(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	l.addFrom(f)
}

func (l *logSummary) addFrom(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Level  string `json:"level"`
			Logger string `json:"logger"`
			Msg    string `json:"msg"`
			Error  string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || startupNoise[e.Msg] {
			continue
		}
		switch e.Level {
		case "warn":
			l.warn++
		case "error", "dpanic", "panic", "fatal":
			l.error++
		default:
			continue
		}
		if l.msgs == nil {
			l.msgs = map[string]int{}
			l.example = map[string]string{}
		}
		key := e.Level + ": " + e.Logger + ": " + e.Msg
		l.msgs[key]++
		if _, ok := l.example[key]; !ok && e.Error != "" {
			l.example[key] = e.Error
		}
	}
}

func (l *logSummary) String() string {
	s := fmt.Sprintf("%d warnings, %d errors", l.warn, l.error)
	keys := make([]string, 0, len(l.msgs))
	for k := range l.msgs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return l.msgs[keys[i]] > l.msgs[keys[j]] })
	for i, k := range keys {
		if i == 5 {
			s += fmt.Sprintf("\n    … %d more kinds", len(keys)-5)
			break
		}
		s += fmt.Sprintf("\n    %6d× %s", l.msgs[k], k)
		if e := l.example[k]; e != "" {
			if len(e) > 160 {
				e = e[:160] + "…"
			}
			s += " (first: " + e + ")"
		}
	}
	return s
}

// fetchToFile GETs url into file and returns the file's path.
func fetchToFile(ctx context.Context, hc *http.Client, url, file string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(file)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "", err
	}
	return file, f.Close()
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

// targetRow is one line of the targets table.
type targetRow struct {
	what, measured, goal string
	pass                 *bool // nil: not measured
	note                 string
}

func passed(ok bool) *bool { return &ok }

// report prints everything measured so far.
func (b *bench) report(w io.Writer) {
	var sb strings.Builder
	b.header(&sb)
	b.throughputTable(&sb)
	b.idleTable(&sb)
	b.bigTable(&sb)
	b.targetsTable(&sb)
	b.logsAndProfiles(&sb)
	_, _ = io.WriteString(w, sb.String())
}

func (b *bench) header(sb *strings.Builder) {
	cmd := shellQuote(append([]string{os.Args[0]}, b.cfg.args...))
	if via := os.Getenv("MCP_BENCH_VIA"); via != "" {
		cmd += "   (via " + via + ")"
	}
	fmt.Fprintf(sb, "==== mcp-bench: caddy-mcp-sse-bridge performance ====\n")
	t := tabwriterLeft(sb)
	fmt.Fprintf(t, "command\t%s\n", cmd)
	fmt.Fprintf(t, "date\t%s (took %s)\n", b.started.Format(time.RFC3339), time.Since(b.started).Round(time.Second))
	fmt.Fprintf(t, "machine\t%d CPUs (nproc %s), %s, %s\n", runtime.NumCPU(), strings.TrimSpace(commandOutput(context.Background(), "nproc")),
		cpuModel(), firstLine(commandOutput(context.Background(), "uname", "-sr")))
	fmt.Fprintf(t, "load average\t%s at start, %s at end (other work on the machine skews the numbers)\n", b.loadStart, loadAverage())
	fmt.Fprintf(t, "go\t%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(t, "caddy\t%s (%s), tree %s\n", b.cfg.caddyBin, b.caddyVer, gitDescribe())
	fmt.Fprintf(t, "upstream\t%s -mode stateless -json (go-sdk) at %s\n", b.cfg.upstreamBin, b.upstreamURL)
	switch {
	case b.redisAddr != "" || b.redisVer != "":
		fmt.Fprintf(t, "redis\t%s\n", b.redisVer)
	case b.redisNote != "":
		fmt.Fprintf(t, "redis\t%s\n", b.redisNote)
	}
	fmt.Fprintf(t, "open files\tRLIMIT_NOFILE %d set in the bench and inherited by its children (Caddy: %s)\n", b.nofile, b.caddyLimits)
	fmt.Fprintf(t, "settings\tthroughput: %v measured per kind (direct, bridged) in %d alternating rounds after %v warm-up each; sessions %s; %d idle sessions; %d-byte message\n",
		b.cfg.duration, b.cfg.rounds, b.cfg.warmup, joinInts(b.cfg.sessions), b.cfg.idle, b.cfg.msgSize)
	t.Flush()
}

func (b *bench) throughputTable(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- throughput and latency: tools/call echo, each session one call at a time ----\n")
	fmt.Fprintf(sb, "direct = Streamable HTTP POSTs straight at the upstream; bridged = legacy HTTP+SSE client through Caddy\n")
	t := newTable(sb)
	fmt.Fprintf(t, "store\tsessions\tdirect calls/s\tbridged calls/s\tratio\tdirect p50 ms\tbridged p50 ms\tadded p50 ms\tdirect p99 ms\tbridged p99 ms\tadded p99 ms\terrors\tcaddy peak RSS\tredis conns\t\n")
	var notes []string
	for _, res := range b.results {
		if res.note != "" {
			fmt.Fprintf(t, "%s\t%s\t\n", res.name, res.note)
			continue
		}
		for _, r := range res.rows {
			d, br := r.direct, r.bridged
			ratio := "-"
			if d.rate() > 0 {
				ratio = fmt.Sprintf("%.2f×", br.rate()/d.rate())
			}
			conns := "-"
			if r.redisConns >= 0 {
				conns = fmt.Sprint(r.redisConns)
			}
			peak := "-"
			if r.peakHWM > 0 {
				peak = mib(r.peakHWM)
			}
			fmt.Fprintf(t, "%s\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%+.3f\t%s\t%s\t%+.3f\t%d/%d\t%s\t%s\t\n",
				res.name, r.sessions, d.rate(), br.rate(), ratio,
				ms(d.p50), ms(br.p50), msf(br.p50-d.p50), ms(d.p99), ms(br.p99), msf(br.p99-d.p99),
				d.errors, br.errors, peak, conns)
			for _, e := range []struct {
				what string
				err  error
			}{{"direct", r.directErr}, {"bridged", r.bridgedErr}, {"direct call", d.firstErr}, {"bridged call", br.firstErr}} {
				if e.err != nil {
					notes = append(notes, fmt.Sprintf("%s, %d sessions, %s: %v", res.name, r.sessions, e.what, e.err))
				}
			}
		}
		if res.setupError != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", res.name, res.setupError))
		}
	}
	t.Flush()
	fmt.Fprintf(sb, "errors = failed calls direct/bridged; caddy peak RSS = VmHWM over the bridged run (reset before it)\n")
	for _, res := range b.results {
		for _, r := range res.rows {
			if r.redisCmds == nil || r.bridged.calls == 0 {
				continue
			}
			fmt.Fprintf(sb, "%s, %d sessions: Redis commands per bridged call %s\n", res.name, r.sessions, perCall(r.redisCmds, r.bridged.calls))
		}
	}
	fmt.Fprintf(sb, "\nCPU time per call (µs, user+system from /proc/<pid>/stat over the window; the machine has %d CPUs for all of it)\n", runtime.NumCPU())
	t = newTable(sb)
	fmt.Fprintf(t, "store\tsessions\tdirect: client\tupstream\ttotal\tbridged: client\tupstream\tcaddy\tredis\ttotal\tcaddy CPU busy\t\n")
	for _, res := range b.results {
		for _, r := range res.rows {
			d, br := r.direct, r.bridged
			dt := d.cpuPerCall(0) + d.cpuPerCall(1)
			bt := br.cpuPerCall(0) + br.cpuPerCall(1) + br.cpuPerCall(2) + br.cpuPerCall(3)
			redis := "-"
			if res.name == "redis" {
				redis = fmt.Sprintf("%.0f", br.cpuPerCall(3))
			}
			fmt.Fprintf(t, "%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%.0f\t%.0f%%\t\n", res.name, r.sessions,
				d.cpuPerCall(0), d.cpuPerCall(1), dt, br.cpuPerCall(0), br.cpuPerCall(1), br.cpuPerCall(2), redis, bt,
				100*float64(br.cpu[2])/float64(br.window))
		}
	}
	t.Flush()
	for _, n := range notes {
		fmt.Fprintf(sb, "  ! %s\n", n)
	}
}

func (b *bench) idleTable(sb *strings.Builder) {
	if b.cfg.idle == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- idle sessions: opened, initialised (initialize + notifications/initialized), kept open ----\n")
	t := newTable(sb)
	fmt.Fprintf(t, "store\tsessions\topened\tfailed\topen time\tcaddy RSS before\tRSS after\tper session\tcaddy peak RSS\tredis conns\tstill answering\t\n")
	var notes []string
	for _, res := range b.results {
		r := res.idle
		if res.note != "" || r == nil {
			continue
		}
		if r.err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", res.name, r.err))
			if r.before.rss == 0 {
				continue
			}
		}
		conns := "-"
		if r.redisConns >= 0 {
			conns = fmt.Sprint(r.redisConns)
		}
		fmt.Fprintf(t, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t\n", res.name, r.want, r.opened, r.failed,
			r.openTime.Round(10*time.Millisecond), mib(r.before.rss), mib(r.after.rss), kibPerSession(r),
			mib(r.after.hwm), conns, r.checked-r.checkFailed, r.checked)
		if r.firstErr != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", res.name, r.firstErr))
		}
	}
	t.Flush()
	for _, res := range b.results {
		r := res.idle
		if r == nil || r.opened == 0 || r.metricsBefore == nil || r.metricsAfter == nil {
			continue
		}
		per := func(name string) string {
			return fmt.Sprintf("%.1f", (r.metricsAfter[name]-r.metricsBefore[name])/float64(r.opened))
		}
		fmt.Fprintf(sb, "%s, Go runtime of Caddy per idle session (admin /metrics): goroutines %s, heap in use %s KiB, stacks %s KiB\n",
			res.name, per("go_goroutines"),
			fmt.Sprintf("%.1f", (r.metricsAfter["go_memstats_heap_inuse_bytes"]-r.metricsBefore["go_memstats_heap_inuse_bytes"])/1024/float64(r.opened)),
			fmt.Sprintf("%.1f", (r.metricsAfter["go_memstats_stack_inuse_bytes"]-r.metricsBefore["go_memstats_stack_inuse_bytes"])/1024/float64(r.opened)))
		fmt.Fprintf(sb, "  after: heap in use %s, heap idle %s (released %s), next GC at %s, stacks %s, sys %s\n",
			mib(int64(r.metricsAfter["go_memstats_heap_inuse_bytes"])), mib(int64(r.metricsAfter["go_memstats_heap_idle_bytes"])),
			mib(int64(r.metricsAfter["go_memstats_heap_released_bytes"])), mib(int64(r.metricsAfter["go_memstats_next_gc_bytes"])),
			mib(int64(r.metricsAfter["go_memstats_stack_inuse_bytes"])), mib(int64(r.metricsAfter["go_memstats_sys_bytes"])))
	}
	for _, n := range notes {
		fmt.Fprintf(sb, "  ! %s\n", n)
	}
}

// kibPerSession is the RSS growth per opened idle session.
func kibPerSession(r *idleResult) string {
	if r.opened == 0 || r.after.rss == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f KiB", idleKiB(r))
}

func idleKiB(r *idleResult) float64 {
	return float64(r.after.rss-r.before.rss) / 1024 / float64(r.opened)
}

func (b *bench) bigTable(sb *strings.Builder) {
	if b.cfg.msgSize == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- one large message: tools/call echo of a %d-byte string (request and answer), fresh Caddy ----\n", b.cfg.msgSize)
	t := newTable(sb)
	fmt.Fprintf(t, "store\tcaddy RSS before\tpeak RSS during\tgrowth\tbridged ms\tdirect ms\t\n")
	var notes []string
	for _, res := range b.results {
		r := res.big
		if res.note != "" || r == nil {
			continue
		}
		if r.err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", res.name, r.err))
		}
		if r.peak == 0 {
			continue
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t\n", res.name, mib(r.base), mib(r.peak), mib(r.peak-r.base), ms(r.bridgedLat), ms(r.directLat))
		if !r.reset {
			notes = append(notes, res.name+": could not reset VmHWM (clear_refs); growth is over the earlier peak")
		}
	}
	t.Flush()
	for _, n := range notes {
		fmt.Fprintf(sb, "  ! %s\n", n)
	}
}

// targets evaluates the targets against the results.
func (b *bench) targets() []targetRow {
	var rows []targetRow
	for _, store := range b.cfg.stores {
		var res *storeResult
		for _, r := range b.results {
			if r.name == store {
				res = r
			}
		}
		missing := "not measured"
		if res != nil && res.note != "" {
			missing = res.note
		}
		ratioGoal, p50Goal := targetRatioMemory, targetAddedP50Memory
		if store == "redis" {
			ratioGoal, p50Goal = targetRatioRedis, targetAddedP50Redis
		}
		row := func(n int) *throughputRow {
			if res == nil {
				return nil
			}
			for _, r := range res.rows {
				if r.sessions == n && r.direct.calls > 0 && r.bridged.calls > 0 {
					return r
				}
			}
			return nil
		}

		tr := targetRow{what: fmt.Sprintf("throughput, %d sessions, %s", targetSessions, store), goal: fmt.Sprintf("≥ %.2f× direct", ratioGoal)}
		if r := row(targetSessions); r != nil {
			ratio := r.bridged.rate() / r.direct.rate()
			tr.measured = fmt.Sprintf("%.2f× (%.0f vs %.0f calls/s)", ratio, r.bridged.rate(), r.direct.rate())
			tr.pass = passed(ratio >= ratioGoal)
		} else {
			tr.note = missing
		}
		rows = append(rows, tr)

		tr = targetRow{what: fmt.Sprintf("added p50 latency, %d session, %s", targetLatencySessions, store), goal: fmt.Sprintf("≤ %.1f ms", float64(p50Goal)/1e6)}
		if r := row(targetLatencySessions); r != nil {
			added := r.bridged.p50 - r.direct.p50
			tr.measured = fmt.Sprintf("%+.4f ms (%s vs %s)", msf(added), ms(r.bridged.p50), ms(r.direct.p50))
			tr.pass = passed(added <= p50Goal)
		} else {
			tr.note = missing
		}
		rows = append(rows, tr)

		tr = targetRow{what: fmt.Sprintf("idle session RSS, %s", store), goal: fmt.Sprintf("≤ %.0f KiB each", targetIdleKiB)}
		if res != nil && res.idle != nil && res.idle.opened > 0 && res.idle.after.rss > 0 {
			k := idleKiB(res.idle)
			tr.measured = fmt.Sprintf("%.1f KiB (%d sessions)", k, res.idle.opened)
			tr.pass = passed(k <= targetIdleKiB && res.idle.failed == 0)
			if res.idle.failed > 0 {
				tr.measured += fmt.Sprintf(", %d failed", res.idle.failed)
			}
		} else {
			tr.note = missing
		}
		rows = append(rows, tr)

		if store == "redis" {
			tr = targetRow{what: "Redis connections per replica (1 replica)", goal: fmt.Sprintf("≤ %d", targetRedisConns)}
			peak := -1
			var parts []string
			if res != nil {
				for _, r := range res.rows {
					if r.redisConns >= 0 {
						peak = max(peak, r.redisConns)
						parts = append(parts, fmt.Sprintf("%d with %d busy", r.redisConns, r.sessions))
					}
				}
				if res.idle != nil && res.idle.redisConns >= 0 {
					peak = max(peak, res.idle.redisConns)
					parts = append(parts, fmt.Sprintf("%d with %d idle", res.idle.redisConns, res.idle.opened))
				}
			}
			if peak >= 0 {
				tr.measured = fmt.Sprintf("%d (%s)", peak, strings.Join(parts, ", "))
				tr.pass = passed(peak <= targetRedisConns)
			} else {
				tr.note = missing
			}
			rows = append(rows, tr)
		}

		tr = targetRow{what: fmt.Sprintf("peak RSS growth, one %s message, %s", sizeName(b.cfg.msgSize), store), goal: "≤ " + mib(targetBigGrowth)}
		if res != nil && res.big != nil && res.big.peak > 0 && res.big.err == nil {
			g := res.big.peak - res.big.base
			tr.measured = mib(g)
			tr.pass = passed(g <= targetBigGrowth)
		} else {
			tr.note = missing
		}
		rows = append(rows, tr)
	}
	return rows
}

func (b *bench) targetsTable(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- targets ----\n")
	t := tabwriterLeft(sb)
	fmt.Fprintf(t, "target\tmeasured\tgoal\tresult\n")
	var pass, miss, na int
	for _, r := range b.targets() {
		switch {
		case r.pass == nil:
			na++
			fmt.Fprintf(t, "%s\t%s\t%s\t-\n", r.what, r.note, r.goal)
		case *r.pass:
			pass++
			fmt.Fprintf(t, "%s\t%s\t%s\tPASS\n", r.what, r.measured, r.goal)
		default:
			miss++
			fmt.Fprintf(t, "%s\t%s\t%s\tMISS\n", r.what, r.measured, r.goal)
		}
	}
	t.Flush()
	fmt.Fprintf(sb, "%d PASS, %d MISS, %d not measured\n", pass, miss, na)
}

func (b *bench) logsAndProfiles(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- caddy logs ----\n")
	for _, res := range b.results {
		if res.note != "" {
			continue
		}
		fmt.Fprintf(sb, "%s: %s\n", res.name, res.logs.String())
	}
	for _, res := range b.results {
		if res.profile != "" {
			fmt.Fprintf(sb, "\n---- CPU profile of Caddy, %s store, largest bridged run ----\n%s\n", res.name, strings.TrimRight(res.profile, "\n"))
		}
		if res.allocProfile != "" {
			fmt.Fprintf(sb, "\n---- allocations of Caddy for the large message, %s store ----\n%s\n", res.name, strings.TrimRight(res.allocProfile, "\n"))
		}
		if res.heapProfile != "" {
			fmt.Fprintf(sb, "\n---- heap of Caddy (in use), %s store, idle sessions open ----\n%s\n", res.name, strings.TrimRight(res.heapProfile, "\n"))
		}
	}
}

// ---------------------------------------------------------------------------

// msf is a duration in milliseconds as a float.
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}

// sizeName names a byte count: "1 MiB", "64 KiB", or bytes.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d-byte", n)
}

// gitDescribe names the source tree: commit and whether it has changes.
func gitDescribe() string {
	ctx := context.Background()
	rev := commandOutput(ctx, "git", "rev-parse", "--short", "HEAD")
	if strings.Contains(rev, "(") {
		return "unknown (not a git checkout)"
	}
	if st := commandOutput(ctx, "git", "status", "--porcelain", "--untracked-files=no"); st != "" && !strings.Contains(st, "(exit") {
		return rev + " with uncommitted changes"
	}
	return rev
}

// perCall formats command counts per call: "9.1 (evalsha 4.0, get 2.0, …)".
func perCall(cmds map[string]int64, calls int) string {
	var total int64
	keys := make([]string, 0, len(cmds))
	for k, v := range cmds {
		total += v
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return cmds[keys[i]] > cmds[keys[j]] })
	parts := make([]string, 0, len(keys))
	for i, k := range keys {
		if i == 16 {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(cmds[k])/float64(calls)))
	}
	return fmt.Sprintf("%.1f (%s)", float64(total)/float64(calls), strings.Join(parts, ", "))
}
