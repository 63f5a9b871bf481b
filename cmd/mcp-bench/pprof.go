package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// With -pprof, Caddy runs with its admin API on a loopback port; the bench
// saves its profiles under the -pprof directory and reports their top
// functions. adminClient asks for no compression: Caddy's gzip would show.
var adminClient = newHTTPClient()

func adminGet(ctx context.Context, ci *caddyInst, path string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ci.AdminURL()+path, nil)
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	return body, err
}

// saveProfile saves what the admin endpoint path answers as caddy-<store>-name
// in the -pprof directory and returns the file, "" if that failed.
func (b *bench) saveProfile(ctx context.Context, ci *caddyInst, path, name string, timeout time.Duration) string {
	file := filepath.Join(b.cfg.pprofDir, "caddy-"+ci.store+"-"+name)
	body, err := adminGet(ctx, ci, path, timeout)
	if err == nil {
		err = errors.Join(os.MkdirAll(b.cfg.pprofDir, 0o755), os.WriteFile(file, body, 0o644))
	}
	if err != nil {
		b.logf("fetching %s: %v", path, err)
		return ""
	}
	return file
}

// pprofTop runs go tool pprof -top on file, from "Showing nodes" on.
func (b *bench) pprofTop(ctx context.Context, file string, args ...string) string {
	out := commandOutput(ctx, "go", append(append([]string{"tool", "pprof", "-top"}, args...), b.cfg.caddyBin, file)...)
	if i := strings.Index(out, "Showing nodes"); i >= 0 {
		return out[i:]
	}
	return out
}

// cpuProfile profiles Caddy over the measuring rounds of the running load.
func (b *bench) cpuProfile(ctx context.Context, ci *caddyInst, n int) string {
	secs := max(1, int(2*b.cfg.duration/time.Second)-1) // the rounds take twice the duration
	file := b.saveProfile(ctx, ci, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs),
		fmt.Sprintf("%dsessions.cpu.pprof", n), time.Duration(secs+30)*time.Second)
	if file == "" {
		return "profile: not available"
	}
	return fmt.Sprintf("profile saved to %s (%ds over the interleaved rounds: Caddy works in the bridged slices only)\n\n%s\n%s",
		file, secs, b.pprofTop(ctx, file, "-nodecount=25"), b.pprofTop(ctx, file, "-cum", "-nodecount=25"))
}

// goMetrics reads the unlabelled go_* values of Caddy's admin /metrics.
func goMetrics(ctx context.Context, ci *caddyInst) map[string]float64 {
	body, err := adminGet(ctx, ci, "/metrics", 10*time.Second)
	if err != nil {
		return nil
	}
	m := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		name, v, _ := strings.Cut(line, " ")
		if f, err := strconv.ParseFloat(v, 64); err == nil && strings.HasPrefix(name, "go_") {
			m[name] = f
		}
	}
	return m
}

// heapProfile summarises what the open idle sessions hold against the
// baseline.
func (b *bench) heapProfile(ctx context.Context, ci *caddyInst, r *idleResult) string {
	r.metricsAfter = goMetrics(ctx, ci)
	file := b.saveProfile(ctx, ci, "/debug/pprof/heap?gc=1", fmt.Sprintf("%didle.heap.pprof", r.opened), 30*time.Second)
	if file == "" {
		return "heap profile: not available"
	}
	return fmt.Sprintf("profiles %s (base %s)\n\n%s", file, r.heapBefore,
		b.pprofTop(ctx, file, "-sample_index=inuse_space", "-nodecount=25", "-base", r.heapBefore))
}

// allocProfile runs measured between two heap profiles of Caddy and returns
// what it allocated meanwhile. Their GC (heap?gc=1) moves the peak a little.
func (b *bench) allocProfile(ctx context.Context, ci *caddyInst, measured func()) string {
	before := b.saveProfile(ctx, ci, "/debug/pprof/heap?gc=1", "message-before.allocs.pprof", time.Minute)
	measured()
	after := b.saveProfile(ctx, ci, "/debug/pprof/heap?gc=1", "message-after.allocs.pprof", time.Minute)
	if before == "" || after == "" {
		return ""
	}
	return fmt.Sprintf("profiles %s and %s\n\n%s", before, after,
		b.pprofTop(ctx, after, "-sample_index=alloc_space", "-nodecount=20", "-base", before))
}
