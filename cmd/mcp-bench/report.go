package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/procfs"
)

// report prints what was measured: the setting, a section per phase, the
// targets, Caddy's logs and, with -pprof, its profiles.
func (b *bench) report(sb io.Writer) {
	b.header(sb)
	b.throughputSection(sb)
	b.idleSection(sb)
	b.bigSection(sb)
	b.scaleSection(sb)
	b.targetsSection(sb)
	fmt.Fprintf(sb, "\n---- caddy logs ----\n")
	for _, res := range b.results {
		if res.note == "" {
			fmt.Fprintf(sb, "%s: %s\n", res.name, logSummary(res.logs))
		}
	}
	for _, res := range b.results {
		for _, p := range [][2]string{
			{"CPU profile of Caddy, %s store, largest bridged run", res.profile},
			{"allocations of Caddy for the large message, %s store", res.allocProfile},
			{"heap of Caddy (in use), %s store, idle sessions open", res.heapProfile},
		} {
			if p[1] != "" {
				fmt.Fprintf(sb, "\n---- "+p[0]+" ----\n%s\n", res.name, strings.TrimRight(p[1], "\n"))
			}
		}
	}
}

// remarks returns the remarks of a section, store by store.
func (b *bench) remarks(section string) (out []string) {
	for _, res := range b.results {
		out = append(out, res.remarks[section]...)
	}
	return out
}

// table prints tab-separated lines in aligned columns, right-aligned
// (numbers) or left-aligned, then the remarks.
func table(sb io.Writer, right bool, lines []string, remarks ...string) {
	flags, end := uint(0), "\n"
	if right {
		flags, end = tabwriter.AlignRight, "\t\n"
	}
	t := tabwriter.NewWriter(sb, 0, 0, 2, ' ', flags)
	for _, l := range lines {
		_, _ = io.WriteString(t, l+end)
	}
	_ = t.Flush()
	for _, r := range remarks {
		fmt.Fprintf(sb, "  ! %s\n", r)
	}
}

func (b *bench) header(sb io.Writer) {
	ctx, args := context.Background(), append([]string{os.Args[0]}, b.cfg.args...)
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\*?;&|<>(){}") {
			args[i] = strconv.Quote(a)
		}
	}
	cmd := strings.Join(args, " ")
	if via := os.Getenv("MCP_BENCH_VIA"); via != "" {
		cmd += "   (via " + via + ")"
	}
	upstreamURL := ""
	if b.upstream != nil {
		upstreamURL = b.upstream.URL()
	}
	cpu, fs := "?", procFS()
	if ci, err := fs.CPUInfo(); err == nil && len(ci) > 0 {
		cpu = ci[0].ModelName
	}
	sessions, scale := commaList(b.cfg.sessions), cmp.Or(commaList(b.cfg.scale), "none")
	fmt.Fprintf(sb, "==== mcp-bench: caddy-mcp-sse-bridge performance ====\n")
	lines := []string{
		"command\t" + cmd,
		fmt.Sprintf("date\t%s (took %s)", b.started.Format(time.RFC3339), time.Since(b.started).Round(time.Second)),
		fmt.Sprintf("machine\t%d CPUs, %s, %s", runtime.NumCPU(), cpu, firstLine(commandOutput(ctx, "uname", "-sr"))),
		fmt.Sprintf("load average\t%s at start, %s at end (other work on the machine skews the numbers)", b.loadStart, loadAverage()),
		fmt.Sprintf("go\t%s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH),
		fmt.Sprintf("caddy\t%s (%s), tree %s", b.cfg.caddyBin, b.caddyVer,
			firstLine(commandOutput(ctx, "git", "describe", "--always", "--dirty= with uncommitted changes"))),
		fmt.Sprintf("upstream\t%s -mode stateless -json (go-sdk) at %s", b.cfg.upstreamBin, upstreamURL),
	}
	if redis := cmp.Or(b.redisVer, b.redisNote); redis != "" {
		lines = append(lines, "redis\t"+redis)
	}
	table(sb, false, append(lines,
		fmt.Sprintf("open files\tRLIMIT_NOFILE %d set in the bench and inherited by its children", b.nofile),
		fmt.Sprintf("settings\tthroughput: %v measured per kind (direct, bridged) in %d alternating rounds after %v warm-up each; sessions %s; %d idle sessions; %d-byte message",
			b.cfg.duration, b.cfg.rounds, b.cfg.warmup, sessions, b.cfg.idle, b.cfg.msgSize),
		fmt.Sprintf("\tscale: sessions %s (memory) and %d through 2 replicas (redis), %d calls each, think %v and %v (replicas)",
			scale, b.cfg.replicasSessions, b.cfg.scaleCalls, b.cfg.think, b.cfg.replicasThink)))
}

func (b *bench) throughputSection(sb io.Writer) {
	fmt.Fprintf(sb, "\n---- throughput and latency: tools/call echo, each session one call at a time ----\n")
	fmt.Fprintf(sb, "direct = Streamable HTTP POSTs straight at the upstream; bridged = legacy HTTP+SSE client through Caddy\n")
	lines := []string{"store\tsessions\tdirect calls/s\tbridged calls/s\tratio\tdirect p50 ms\tbridged p50 ms\tadded p50 ms\tdirect p99 ms\tbridged p99 ms\tadded p99 ms\terrors\tcaddy peak RSS\tredis conns"}
	cpuLines := []string{"store\tsessions\tdirect: client\tupstream\ttotal\tbridged: client\tupstream\tcaddy\tredis\ttotal\tcaddy CPU busy"}
	var cmds []string
	for _, res := range b.results {
		if res.note != "" {
			lines = append(lines, res.name+"\t"+res.note)
		}
		for _, r := range res.rows {
			d, br := r.direct, r.bridged
			ratio, peak, redis := "-", "-", "-"
			if d.rate() > 0 {
				ratio = fmt.Sprintf("%.2f×", br.rate()/d.rate())
			}
			if r.peakHWM > 0 {
				peak = mib(r.peakHWM)
			}
			if res.name == "redis" {
				redis = fmt.Sprintf("%.0f", br.cpuPerCall(3))
			}
			lines = append(lines, fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%+.3f\t%s\t%s\t%+.3f\t%d/%d\t%s\t%s",
				res.name, r.sessions, d.rate(), br.rate(), ratio, ms(d.p50), ms(br.p50), msf(br.p50-d.p50),
				ms(d.p99), ms(br.p99), msf(br.p99-d.p99), d.errors, br.errors, peak, count(r.redisConns)))
			cpuLines = append(cpuLines, fmt.Sprintf("%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%.0f\t%.0f%%", res.name, r.sessions,
				d.cpuPerCall(0), d.cpuPerCall(1), d.cpuPerCall(0)+d.cpuPerCall(1),
				br.cpuPerCall(0), br.cpuPerCall(1), br.cpuPerCall(2), redis,
				br.cpuPerCall(0)+br.cpuPerCall(1)+br.cpuPerCall(2)+br.cpuPerCall(3), 100*float64(br.cpu[2])/float64(br.window)))
			if r.redisCmds != nil && br.calls > 0 {
				cmds = append(cmds, fmt.Sprintf("%s, %d sessions: Redis commands per bridged call %s\n", res.name, r.sessions, perCall(r.redisCmds, br.calls)))
			}
		}
	}
	table(sb, true, lines)
	fmt.Fprintf(sb, "errors = failed calls direct/bridged; caddy peak RSS = VmHWM over the bridged run (reset before it)\n%s", strings.Join(cmds, ""))
	fmt.Fprintf(sb, "\nCPU time per call (µs, user+system from /proc/<pid>/stat over the window; the machine has %d CPUs for all of it)\n", runtime.NumCPU())
	table(sb, true, cpuLines, b.remarks("throughput")...)
}

func (b *bench) idleSection(sb io.Writer) {
	if b.cfg.idle == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- idle sessions: opened, initialised (initialize + notifications/initialized), kept open ----\n")
	lines := []string{"store\tsessions\topened\tfailed\topen time\tcaddy RSS before\tRSS after\tper session\tcaddy peak RSS\tredis conns\tstill answering"}
	for _, res := range b.results {
		r := res.idle
		if r == nil || r.before.rss == 0 {
			continue
		}
		perSession := "-"
		if r.opened > 0 && r.after.rss > 0 {
			perSession = fmt.Sprintf("%.1f KiB", idleKiB(r))
		}
		lines = append(lines, fmt.Sprintf("%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d", res.name, b.cfg.idle, r.opened, r.failed,
			r.openTime.Round(10*time.Millisecond), mib(r.before.rss), mib(r.after.rss), perSession,
			mib(r.after.hwm), count(r.redisConns), r.checked-r.checkFailed, r.checked))
	}
	table(sb, true, lines)
	for _, res := range b.results {
		if r := res.idle; r != nil && r.opened > 0 && r.metricsBefore != nil && r.metricsAfter != nil {
			per := func(name string, unit float64) float64 {
				return (r.metricsAfter[name] - r.metricsBefore[name]) / unit / float64(r.opened)
			}
			fmt.Fprintf(sb, "%s, Go runtime of Caddy per idle session (admin /metrics): goroutines %.1f, heap in use %.1f KiB, stacks %.1f KiB\n",
				res.name, per("go_goroutines", 1), per("go_memstats_heap_inuse_bytes", 1024), per("go_memstats_stack_inuse_bytes", 1024))
		}
	}
	table(sb, false, nil, b.remarks("idle")...)
}

// idleKiB is Caddy's RSS growth per opened idle session.
func idleKiB(r *idleResult) float64 {
	return float64(r.after.rss-r.before.rss) / 1024 / float64(r.opened)
}

func (b *bench) bigSection(sb io.Writer) {
	if b.cfg.msgSize == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- one large message: tools/call echo of a %d-byte string (request and answer), fresh Caddy ----\n", b.cfg.msgSize)
	lines := []string{"store\tcaddy RSS before\tpeak RSS during\tgrowth\tbridged ms\tdirect ms"}
	remarks := b.remarks("message")
	for _, res := range b.results {
		r := res.big
		if r == nil || r.peak == 0 {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", res.name, mib(r.base), mib(r.peak), mib(r.peak-r.base), ms(r.bridgedLat), ms(r.directLat)))
		if !r.reset {
			remarks = append(remarks, res.name+": could not reset VmHWM (clear_refs); growth is over the earlier peak")
		}
	}
	table(sb, true, lines, remarks...)
}

func (b *bench) scaleSection(sb io.Writer) {
	remarks := b.remarks("scale")
	for _, n := range b.cfg.scale {
		remarks = append(remarks, b.remarks(fmt.Sprintf("scale-%d", n))...)
	}
	if !slices.ContainsFunc(b.results, func(res *storeResult) bool { return len(res.scale) > 0 }) && len(remarks) == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- scale: sessions open at once, each making tools/call echo calls a jittered think time apart ----\n")
	fmt.Fprintf(sb, "memory: one Caddy; redis: 2 replicas behind a round-robin Caddy load balancer; direct first, then bridged (fresh Caddy)\n")
	lines := []string{"store\tsessions\tcalls each\tthink\topen s direct/bridged\tsuccess direct\tbridged\tdirect calls/s\tbridged calls/s\tdirect p50 ms\tbridged p50 ms\tdirect p99 ms\tbridged p99 ms"}
	usage := []string{"store\tsessions\tupstream conns (peak)\tTIME_WAIT\tof calls\tcaddy peak RSS\tcaddy peak fds\tbench peak fds"}
	for _, res := range b.results {
		for _, r := range res.scale {
			d, br := r.direct.stats, r.bridged.stats
			lines = append(lines, fmt.Sprintf("%s\t%d\t%d\t%v\t%.1f/%.1f\t%.2f%%\t%.2f%%\t%.0f\t%.0f\t%s\t%s\t%s\t%s",
				res.name, r.sessions, r.callsEach, r.think, r.direct.openTime.Seconds(), r.bridged.openTime.Seconds(),
				d.success(), br.success(), d.rate(), br.rate(), ms(d.p50), ms(br.p50), ms(d.p99), ms(br.p99)))
			var conns, rss, fds []string
			for _, c := range r.caddies {
				conns, rss, fds = append(conns, fmt.Sprint(c.upstreamConns)), append(rss, mib(c.peakHWM)), append(fds, fmt.Sprint(c.fds))
			}
			share := "-"
			if r.timeWait >= 0 {
				share = fmt.Sprintf("%.2f%%", r.timeWaitShare())
			}
			usage = append(usage, fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d", res.name, r.sessions,
				strings.Join(conns, " / "), count(r.timeWait), share, strings.Join(rss, " / "), strings.Join(fds, " / "), r.benchFDs))
		}
	}
	table(sb, true, lines)
	fmt.Fprintf(sb, "success = calls answered with their id and echo text within %v; calls/s = answered calls from the first call to the last answer\n", scaleCallTimeout)
	fmt.Fprintf(sb, "\nCaddy over the bridged run (per replica: a / b), from /proc every %v\n", sampleInterval)
	table(sb, true, usage)
	fmt.Fprintf(sb, "upstream conns = Caddy's ESTABLISHED sockets to the upstream's port (calls' and GET streams' alike); TIME_WAIT = sockets to it that\n"+
		"went to TIME_WAIT during the run (Caddy closed them; all replicas), of calls; caddy peak RSS = VmHWM (reset before the run); fds = entries of /proc/<pid>/fd\n")
	table(sb, false, nil, remarks...)
}

// targetsSection holds the targets against the results, and says how each
// is measured.
func (b *bench) targetsSection(sb io.Writer) {
	fmt.Fprintf(sb, "\n---- targets ----\n")
	lines := []string{"target\tmeasured\tgoal\tresult"}
	n := map[string]int{}
	for _, r := range b.evaluate() {
		n[r.result]++
		lines = append(lines, strings.Join([]string{r.name, r.measured, r.goal, r.result}, "\t"))
	}
	table(sb, false, lines)
	fmt.Fprintf(sb, "%d PASS, %d MISS, %d not measured\n", n["PASS"], n["MISS"], n["-"])
	for _, t := range targets {
		if slices.ContainsFunc(b.cfg.stores, func(s string) bool { _, ok := t.goal[s]; return ok }) {
			fmt.Fprintf(sb, "  %s: %s; %s\n", t.label("", b.cfg.msgSize), t.metric, t.how)
		}
	}
}

// startupNoise are warnings every Caddy of the bench logs.
var startupNoise = map[string]bool{
	"admin endpoint disabled":                true,
	"HTTP/2 skipped because it requires TLS": true,
	"HTTP/3 skipped because it requires TLS": true,
	"exiting; byeee!! 👋":                     true,
}

// clientClosedStream tells the load balancer's warning for each stream the
// bench's sessions close (the replicas run) from a fault.
func clientClosedStream(logger, msg, err string) bool {
	return logger == "http.handlers.reverse_proxy" && msg == "aborting with incomplete response" && strings.HasSuffix(err, "context canceled")
}

// logSummary counts the warnings and errors in Caddy's log (JSON lines) by
// "level: logger: msg", with the first one's error field.
func logSummary(log string) string {
	var warn, errs int
	count, first := map[string]int{}, map[string]string{}
	for line := range strings.SplitSeq(log, "\n") {
		var e struct{ Level, Logger, Msg, Error string }
		if json.Unmarshal([]byte(line), &e) != nil || startupNoise[e.Msg] || clientClosedStream(e.Logger, e.Msg, e.Error) {
			continue
		}
		switch e.Level {
		case "warn":
			warn++
		case "error", "dpanic", "panic", "fatal":
			errs++
		default:
			continue
		}
		key := e.Level + ": " + e.Logger + ": " + e.Msg
		if count[key]++; first[key] == "" {
			first[key] = e.Error
		}
	}
	s := fmt.Sprintf("%d warnings, %d errors", warn, errs)
	for i, k := range byCount(count) {
		if i == 5 {
			return s + fmt.Sprintf("\n    … %d more kinds", len(count)-5)
		}
		s += fmt.Sprintf("\n    %6d× %s", count[k], k)
		if e := first[k]; len(e) > 160 {
			s += " (first: " + e[:160] + "…)"
		} else if e != "" {
			s += " (first: " + e + ")"
		}
	}
	return s
}

func ms(d time.Duration) string   { return fmt.Sprintf("%.3f", msf(d)) }
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mib(b int64) string          { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// commaList formats counts as "1,8".
func commaList(ns []int) string {
	return strings.ReplaceAll(strings.Trim(fmt.Sprint(ns), "[]"), " ", ",")
}

// count formats a count, "-" for unknown (negative).
func count(n int) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

// perCall formats command counts per call: "6.0 (evalsha 4.00, get 2.00)".
func perCall(cmds map[string]int64, calls int) string {
	var total int64
	var parts []string
	for i, k := range byCount(cmds) {
		if total += cmds[k]; i < 16 {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(cmds[k])/float64(calls)))
		} else if i == 16 {
			parts = append(parts, "…")
		}
	}
	return fmt.Sprintf("%.1f (%s)", float64(total)/float64(calls), strings.Join(parts, ", "))
}

// byCount returns the keys of m, the largest count first.
func byCount[N int | int64](m map[string]N) []string {
	return slices.SortedFunc(maps.Keys(m), func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), strings.Compare(a, b)) })
}

func loadAverage() string {
	if la, err := procFS().LoadAvg(); err == nil {
		return fmt.Sprintf("%.2f %.2f %.2f", la.Load1, la.Load5, la.Load15)
	}
	return "?"
}

func procFS() procfs.FS {
	fs, _ := procfs.NewDefaultFS()
	return fs
}
