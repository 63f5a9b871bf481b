package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/procfs"
)

// report prints everything measured so far: the setting, one table per
// phase, the targets, Caddy's logs and, with -pprof, its profiles.
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

// newTable returns a tabwriter for the report's tables, right-aligned
// (numbers) or left-aligned.
func newTable(w io.Writer, flags uint) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', flags)
}

// notes prints the report's remarks under a table.
func notes(sb *strings.Builder, notes []string) {
	for _, n := range notes {
		fmt.Fprintf(sb, "  ! %s\n", n)
	}
}

func (b *bench) header(sb *strings.Builder) {
	ctx := context.Background()
	cmd := shellQuote(append([]string{os.Args[0]}, b.cfg.args...))
	if via := os.Getenv("MCP_BENCH_VIA"); via != "" {
		cmd += "   (via " + via + ")"
	}
	fmt.Fprintf(sb, "==== mcp-bench: caddy-mcp-sse-bridge performance ====\n")
	t := newTable(sb, 0)
	fmt.Fprintf(t, "command\t%s\n", cmd)
	fmt.Fprintf(t, "date\t%s (took %s)\n", b.started.Format(time.RFC3339), time.Since(b.started).Round(time.Second))
	fmt.Fprintf(t, "machine\t%d CPUs (nproc %s), %s, %s\n", runtime.NumCPU(), commandOutput(ctx, "nproc"),
		cpuModel(), firstLine(commandOutput(ctx, "uname", "-sr")))
	fmt.Fprintf(t, "load average\t%s at start, %s at end (other work on the machine skews the numbers)\n", b.loadStart, loadAverage())
	fmt.Fprintf(t, "go\t%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(t, "caddy\t%s (%s), tree %s\n", b.cfg.caddyBin, b.caddyVer, gitDescribe(ctx))
	upstreamURL := ""
	if b.upstream != nil {
		upstreamURL = b.upstream.URL()
	}
	fmt.Fprintf(t, "upstream\t%s -mode stateless -json (go-sdk) at %s\n", b.cfg.upstreamBin, upstreamURL)
	if redis := cmp.Or(b.redisVer, b.redisNote); redis != "" {
		fmt.Fprintf(t, "redis\t%s\n", redis)
	}
	fmt.Fprintf(t, "open files\tRLIMIT_NOFILE %d set in the bench and inherited by its children (Caddy: %d)\n", b.nofile, b.caddyNofile)
	fmt.Fprintf(t, "settings\tthroughput: %v measured per kind (direct, bridged) in %d alternating rounds after %v warm-up each; sessions %s; %d idle sessions; %d-byte message\n",
		b.cfg.duration, b.cfg.rounds, b.cfg.warmup, strings.ReplaceAll(strings.Trim(fmt.Sprint(b.cfg.sessions), "[]"), " ", ","), b.cfg.idle, b.cfg.msgSize)
	t.Flush()
}

func (b *bench) throughputTable(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- throughput and latency: tools/call echo, each session one call at a time ----\n")
	fmt.Fprintf(sb, "direct = Streamable HTTP POSTs straight at the upstream; bridged = legacy HTTP+SSE client through Caddy\n")
	t := newTable(sb, tabwriter.AlignRight)
	fmt.Fprintf(t, "store\tsessions\tdirect calls/s\tbridged calls/s\tratio\tdirect p50 ms\tbridged p50 ms\tadded p50 ms\tdirect p99 ms\tbridged p99 ms\tadded p99 ms\terrors\tcaddy peak RSS\tredis conns\t\n")
	var remarks []string
	for _, res := range b.results {
		if res.note != "" {
			fmt.Fprintf(t, "%s\t%s\t\n", res.name, res.note)
			continue
		}
		for _, r := range res.rows {
			d, br := r.direct, r.bridged
			ratio, peak := "-", "-"
			if d.rate() > 0 {
				ratio = fmt.Sprintf("%.2f×", br.rate()/d.rate())
			}
			if r.peakHWM > 0 {
				peak = mib(r.peakHWM)
			}
			fmt.Fprintf(t, "%s\t%d\t%.0f\t%.0f\t%s\t%s\t%s\t%+.3f\t%s\t%s\t%+.3f\t%d/%d\t%s\t%s\t\n",
				res.name, r.sessions, d.rate(), br.rate(), ratio,
				ms(d.p50), ms(br.p50), msf(br.p50-d.p50), ms(d.p99), ms(br.p99), msf(br.p99-d.p99),
				d.errors, br.errors, peak, count(r.redisConns))
			for i, err := range []error{r.directErr, r.bridgedErr, d.firstErr, br.firstErr} {
				if err != nil {
					what := []string{"direct", "bridged", "direct call", "bridged call"}[i]
					remarks = append(remarks, fmt.Sprintf("%s, %d sessions, %s: %v", res.name, r.sessions, what, err))
				}
			}
		}
		if res.setupError != nil {
			remarks = append(remarks, fmt.Sprintf("%s: %v", res.name, res.setupError))
		}
	}
	t.Flush()
	fmt.Fprintf(sb, "errors = failed calls direct/bridged; caddy peak RSS = VmHWM over the bridged run (reset before it)\n")
	for _, res := range b.results {
		for _, r := range res.rows {
			if r.redisCmds != nil && r.bridged.calls > 0 {
				fmt.Fprintf(sb, "%s, %d sessions: Redis commands per bridged call %s\n", res.name, r.sessions, perCall(r.redisCmds, r.bridged.calls))
			}
		}
	}
	fmt.Fprintf(sb, "\nCPU time per call (µs, user+system from /proc/<pid>/stat over the window; the machine has %d CPUs for all of it)\n", runtime.NumCPU())
	t = newTable(sb, tabwriter.AlignRight)
	fmt.Fprintf(t, "store\tsessions\tdirect: client\tupstream\ttotal\tbridged: client\tupstream\tcaddy\tredis\ttotal\tcaddy CPU busy\t\n")
	for _, res := range b.results {
		for _, r := range res.rows {
			d, br := r.direct, r.bridged
			redis := "-"
			if res.name == "redis" {
				redis = fmt.Sprintf("%.0f", br.cpuPerCall(3))
			}
			fmt.Fprintf(t, "%s\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%.0f\t%.0f%%\t\n", res.name, r.sessions,
				d.cpuPerCall(0), d.cpuPerCall(1), d.cpuPerCall(0)+d.cpuPerCall(1),
				br.cpuPerCall(0), br.cpuPerCall(1), br.cpuPerCall(2), redis,
				br.cpuPerCall(0)+br.cpuPerCall(1)+br.cpuPerCall(2)+br.cpuPerCall(3),
				100*float64(br.cpu[2])/float64(br.window))
		}
	}
	t.Flush()
	notes(sb, remarks)
}

func (b *bench) idleTable(sb *strings.Builder) {
	if b.cfg.idle == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- idle sessions: opened, initialised (initialize + notifications/initialized), kept open ----\n")
	t := newTable(sb, tabwriter.AlignRight)
	fmt.Fprintf(t, "store\tsessions\topened\tfailed\topen time\tcaddy RSS before\tRSS after\tper session\tcaddy peak RSS\tredis conns\tstill answering\t\n")
	var remarks []string
	for _, res := range b.results {
		r := res.idle
		if res.note != "" || r == nil {
			continue
		}
		if r.err != nil {
			remarks = append(remarks, fmt.Sprintf("%s: %v", res.name, r.err))
			if r.before.rss == 0 {
				continue
			}
		}
		perSession := "-"
		if r.opened > 0 && r.after.rss > 0 {
			perSession = fmt.Sprintf("%.1f KiB", idleKiB(r))
		}
		fmt.Fprintf(t, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t\n", res.name, r.want, r.opened, r.failed,
			r.openTime.Round(10*time.Millisecond), mib(r.before.rss), mib(r.after.rss), perSession,
			mib(r.after.hwm), count(r.redisConns), r.checked-r.checkFailed, r.checked)
		if r.firstErr != nil {
			remarks = append(remarks, fmt.Sprintf("%s: %v", res.name, r.firstErr))
		}
	}
	t.Flush()
	for _, res := range b.results {
		r := res.idle
		if r == nil || r.opened == 0 || r.metricsBefore == nil || r.metricsAfter == nil {
			continue
		}
		a := r.metricsAfter
		per := func(name string, unit float64) float64 {
			return (a[name] - r.metricsBefore[name]) / unit / float64(r.opened)
		}
		fmt.Fprintf(sb, "%s, Go runtime of Caddy per idle session (admin /metrics): goroutines %.1f, heap in use %.1f KiB, stacks %.1f KiB\n",
			res.name, per("go_goroutines", 1), per("go_memstats_heap_inuse_bytes", 1024), per("go_memstats_stack_inuse_bytes", 1024))
		fmt.Fprintf(sb, "  after: heap in use %s, heap idle %s (released %s), next GC at %s, stacks %s, sys %s\n",
			mib(int64(a["go_memstats_heap_inuse_bytes"])), mib(int64(a["go_memstats_heap_idle_bytes"])),
			mib(int64(a["go_memstats_heap_released_bytes"])), mib(int64(a["go_memstats_next_gc_bytes"])),
			mib(int64(a["go_memstats_stack_inuse_bytes"])), mib(int64(a["go_memstats_sys_bytes"])))
	}
	notes(sb, remarks)
}

// idleKiB is Caddy's RSS growth per opened idle session.
func idleKiB(r *idleResult) float64 {
	return float64(r.after.rss-r.before.rss) / 1024 / float64(r.opened)
}

func (b *bench) bigTable(sb *strings.Builder) {
	if b.cfg.msgSize == 0 {
		return
	}
	fmt.Fprintf(sb, "\n---- one large message: tools/call echo of a %d-byte string (request and answer), fresh Caddy ----\n", b.cfg.msgSize)
	t := newTable(sb, tabwriter.AlignRight)
	fmt.Fprintf(t, "store\tcaddy RSS before\tpeak RSS during\tgrowth\tbridged ms\tdirect ms\t\n")
	var remarks []string
	for _, res := range b.results {
		r := res.big
		if res.note != "" || r == nil {
			continue
		}
		if r.err != nil {
			remarks = append(remarks, fmt.Sprintf("%s: %v", res.name, r.err))
		}
		if r.peak == 0 {
			continue
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t\n", res.name, mib(r.base), mib(r.peak), mib(r.peak-r.base), ms(r.bridgedLat), ms(r.directLat))
		if !r.reset {
			remarks = append(remarks, res.name+": could not reset VmHWM (clear_refs); growth is over the earlier peak")
		}
	}
	t.Flush()
	notes(sb, remarks)
}

// targetsTable prints the targets table (targets.go) held against the
// results, and how each target is measured.
func (b *bench) targetsTable(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- targets ----\n")
	t := newTable(sb, 0)
	fmt.Fprintf(t, "target\tmeasured\tgoal\tresult\n")
	n := map[string]int{}
	for _, r := range b.evaluate() {
		n[r.result]++
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", r.name, r.measured, r.goal, r.result)
	}
	t.Flush()
	fmt.Fprintf(sb, "%d PASS, %d MISS, %d not measured\n", n["PASS"], n["MISS"], n["-"])
	for _, t := range targets {
		if !slices.ContainsFunc(b.cfg.stores, func(s string) bool { _, ok := t.goal[s]; return ok }) {
			continue
		}
		fmt.Fprintf(sb, "  %s: %s; %s\n", t.label("", b.cfg.msgSize), t.metric, t.how)
	}
}

func (b *bench) logsAndProfiles(sb *strings.Builder) {
	fmt.Fprintf(sb, "\n---- caddy logs ----\n")
	for _, res := range b.results {
		if res.note == "" {
			fmt.Fprintf(sb, "%s: %s\n", res.name, res.logs.String())
		}
	}
	for _, res := range b.results {
		for _, p := range []struct{ title, text string }{
			{"CPU profile of Caddy, %s store, largest bridged run", res.profile},
			{"allocations of Caddy for the large message, %s store", res.allocProfile},
			{"heap of Caddy (in use), %s store, idle sessions open", res.heapProfile},
		} {
			if p.text != "" {
				fmt.Fprintf(sb, "\n---- "+p.title+" ----\n%s\n", res.name, strings.TrimRight(p.text, "\n"))
			}
		}
	}
}

// count formats a count, or "-" for unknown (negative).
func count(n int) string {
	if n < 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

// perCall formats command counts per call: "9.1 (evalsha 4.00, get 2.00, …)".
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
func gitDescribe(ctx context.Context) string {
	rev := commandOutput(ctx, "git", "rev-parse", "--short", "HEAD")
	if strings.Contains(rev, "(") {
		return "unknown (not a git checkout)"
	}
	if st := commandOutput(ctx, "git", "status", "--porcelain", "--untracked-files=no"); st != "" && !strings.Contains(st, "(exit") {
		return rev + " with uncommitted changes"
	}
	return rev
}

// loadAverage is the 1, 5 and 15 minutes' load averages.
func loadAverage() string {
	fs, _ := procfs.NewDefaultFS()
	if la, err := fs.LoadAvg(); err == nil {
		return fmt.Sprintf("%.2f %.2f %.2f", la.Load1, la.Load5, la.Load15)
	}
	return "?"
}

// cpuModel returns the CPU model name.
func cpuModel() string {
	fs, _ := procfs.NewDefaultFS()
	if ci, err := fs.CPUInfo(); err == nil && len(ci) > 0 {
		return ci[0].ModelName
	}
	return "?"
}

// shellQuote quotes args for display as a shell command.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.Trim(a, "-_./,=:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
