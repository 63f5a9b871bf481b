package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// With -pprof, Caddy runs with its admin API on a loopback port, and the
// bench saves profiles of it under the -pprof directory and adds their top
// functions to the report: CPU over the largest bridged run, the heap that
// the idle sessions hold, the allocations of the large message.

// fetchProfile saves the answer of an admin endpoint (path) under the
// profile directory as name and returns the file, or "".
func (b *bench) fetchProfile(ctx context.Context, ci *caddyInst, path, name string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	file := filepath.Join(b.cfg.pprofDir, name)
	body, err := adminGet(ctx, ci, path)
	if err == nil {
		err = os.MkdirAll(b.cfg.pprofDir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(file, body, 0o644)
	}
	if err != nil {
		b.logf("fetching %s: %v", path, err)
		return ""
	}
	return file
}

// adminClient asks for no compression: Caddy's gzip would show in its
// allocation profile.
var adminClient = newHTTPClient()

// adminGet GETs path from Caddy's admin API.
func adminGet(ctx context.Context, ci *caddyInst, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ci.AdminURL()+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, err
}

// pprofTop runs go tool pprof -top with args and the Caddy binary on file,
// dropping the preamble before "Showing nodes".
func (b *bench) pprofTop(ctx context.Context, file string, args ...string) string {
	args = append(append([]string{"tool", "pprof", "-top"}, args...), b.cfg.caddyBin, file)
	out := commandOutput(ctx, "go", args...)
	if i := strings.Index(out, "Showing nodes"); i >= 0 {
		return out[i:]
	}
	return out
}

// cpuProfile profiles Caddy over the measuring rounds of the running load
// and returns the top functions, flat and cumulative.
func (b *bench) cpuProfile(ctx context.Context, ci *caddyInst, n int) string {
	// The rounds take twice the duration (direct and bridged slices); Caddy
	// is idle during the direct ones.
	secs := max(1, int(2*b.cfg.duration/time.Second)-1)
	file := b.fetchProfile(ctx, ci, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs),
		fmt.Sprintf("caddy-%s-%dsessions.cpu.pprof", ci.store, n), time.Duration(secs+30)*time.Second)
	if file == "" {
		return "profile: not available"
	}
	return fmt.Sprintf("profile saved to %s (%ds over the interleaved rounds: Caddy works in the bridged slices only)\n\n%s\n%s",
		file, secs, b.pprofTop(ctx, file, "-nodecount=25"), b.pprofTop(ctx, file, "-cum", "-nodecount=25"))
}

// goMetrics reads the gauges of Caddy's Go runtime (go_goroutines,
// go_memstats_heap_inuse_bytes, …) from its admin /metrics.
func goMetrics(ctx context.Context, ci *caddyInst) map[string]float64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	body, err := adminGet(ctx, ci, "/metrics")
	if err != nil {
		return nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil
	}
	m := map[string]float64{}
	for name, f := range families {
		if strings.HasPrefix(name, "go_") && f.GetType() == dto.MetricType_GAUGE && len(f.GetMetric()) == 1 {
			m[name] = f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return m
}

// heapBaseline takes Caddy's heap profile (after a GC) and runtime metrics
// before the idle sessions open, for heapProfile to compare with.
func (b *bench) heapBaseline(ctx context.Context, ci *caddyInst, r *idleResult) {
	r.heapBefore = b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", fmt.Sprintf("caddy-%s-idle-before.heap.pprof", ci.store), 30*time.Second)
	r.metricsBefore = goMetrics(ctx, ci)
}

// heapProfile fetches Caddy's heap profile (after a GC), runtime metrics and
// goroutines while the idle sessions are open and summarises what they hold,
// compared with the baseline.
func (b *bench) heapProfile(ctx context.Context, ci *caddyInst, r *idleResult) string {
	r.metricsAfter = goMetrics(ctx, ci)
	file := b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", fmt.Sprintf("caddy-%s-%didle.heap.pprof", ci.store, r.opened), 30*time.Second)
	if file == "" {
		return "heap profile: not available"
	}
	live := ""
	if m := goMetrics(ctx, ci); m != nil && r.opened > 0 && r.metricsBefore != nil {
		perSession := func(name string) float64 { return (m[name] - r.metricsBefore[name]) / 1024 / float64(r.opened) }
		live = fmt.Sprintf("live heap (after a GC, both times): %+.1f KiB per session; stacks %+.1f KiB per session\n",
			perSession("go_memstats_heap_alloc_bytes"), perSession("go_memstats_stack_inuse_bytes"))
	}
	goroutines := "?"
	gfile := b.fetchProfile(ctx, ci, "/debug/pprof/goroutine?debug=1", fmt.Sprintf("caddy-%s-%didle.goroutines.txt", ci.store, r.opened), 30*time.Second)
	if data, err := os.ReadFile(gfile); gfile != "" && err == nil {
		goroutines = strings.TrimPrefix(firstLine(string(data)), "goroutine profile: ")
	}
	args := []string{"-sample_index=inuse_space", "-nodecount=25"}
	if r.heapBefore != "" {
		args = append(args, "-base", r.heapBefore)
	}
	return fmt.Sprintf("profiles %s (base %s); goroutines: %s\n%s\n%s", file, r.heapBefore, goroutines, live, b.pprofTop(ctx, file, args...))
}

// allocProfile runs measured between two allocation profiles of Caddy and
// returns what it allocated meanwhile (the large allocations are all
// sampled). Fetching a profile runs a GC in Caddy first (heap?gc=1, which
// publishes the counts), so the peak differs a little from a run without.
func (b *bench) allocProfile(ctx context.Context, ci *caddyInst, measured func()) string {
	name := func(stage string) string { return fmt.Sprintf("caddy-%s-message-%s.allocs.pprof", ci.store, stage) }
	before := b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", name("before"), 60*time.Second)
	measured()
	if before == "" {
		return ""
	}
	after := b.fetchProfile(ctx, ci, "/debug/pprof/heap?gc=1", name("after"), 60*time.Second)
	if after == "" {
		return ""
	}
	top := b.pprofTop(ctx, after, "-sample_index=alloc_space", "-nodecount=20", "-base", before)
	return fmt.Sprintf("profiles %s and %s\n\n%s", before, after, top)
}
