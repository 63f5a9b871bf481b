package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
	"github.com/prometheus/procfs"
	"github.com/redis/go-redis/v9"
)

// The processes the bench measures (all in b.procs, to end with it), and
// what it reads of them from /proc and Redis.
const readyTimeout, stopGrace = 30 * time.Second, 3 * time.Second

// startRedis starts a redis-server, or returns why not.
func (b *bench) startRedis(ctx context.Context) string {
	if b.cfg.redisBin == "" {
		return `disabled with -redis-server ""`
	}
	bin, err := exec.LookPath(b.cfg.redisBin)
	if err != nil {
		return b.cfg.redisBin + " not on PATH"
	}
	b.redisVer = firstLine(commandOutput(ctx, bin, "--version"))
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	b.redis, err = testenv.StartRedis(ctx, testenv.RedisOptions{
		Bin: bin, Dir: b.tmp, OnStart: b.procs.Add,
		Args: []string{"--protected-mode", "yes", "--maxclients", strconv.Itoa(max(10000, b.cfg.idle+1000))},
	})
	if err != nil {
		return err.Error()
	}
	b.logf("redis-server at %s", b.redis.Addr())
	return ""
}

type caddyInst struct {
	*testenv.Caddy
	store string
}

func (ci *caddyInst) sseURL() string { return ci.URL(0) + "/sse" }

// bridgeBlock is the bench's site. Its sessions all come from one address:
// no limit on the new-session rate, and maxSessions from one caller; an
// identity secret, as a deployment on Redis has.
func bridgeBlock(upstream, store, redisAddr string, maxSessions int) string {
	storeBlock := fmt.Sprintf("store memory {\n\tmax_sessions %d\n\tmax_sessions_per_caller %[1]d\n}", maxSessions)
	if store == "redis" {
		storeBlock = fmt.Sprintf("store redis {\n\taddress %s\n\tmax_sessions_per_caller %d\n}", redisAddr, maxSessions)
	}
	return fmt.Sprintf("mcp_sse_bridge {\n\t\tupstream %s\n\t\tnew_session_rate 1000000\n\t\tidentity_secret mcp-bench-identity-secret\n\t\t%s\n\t}",
		upstream, strings.ReplaceAll(storeBlock, "\n", "\n\t\t"))
}

// startCaddy starts a fresh Caddy of the bridge for one phase.
func (b *bench) startCaddy(ctx context.Context, store, phase string) (*caddyInst, error) {
	redisAddr := ""
	if b.redis != nil {
		redisAddr = b.redis.Addr()
	}
	c, err := b.startSite(ctx, store+"-"+phase, "caddy ("+store+", "+phase+")",
		bridgeBlock(b.upstream.URL(), store, redisAddr, b.cfg.maxSessions()+2048))
	return &caddyInst{c, store}, err
}

// startSite starts a Caddy serving one site of body, in a directory of its
// own under the bench's (admin API on with -pprof).
func (b *bench) startSite(ctx context.Context, dirName, name, body string) (*testenv.Caddy, error) {
	dir := filepath.Join(b.tmp, dirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return testenv.StartCaddy(ctx, testenv.CaddyConfig{
		Bin: b.cfg.caddyBin, Dir: dir, Name: name, OnStart: b.procs.Add,
		Caddyfile: testenv.Caddyfile{Admin: b.cfg.pprofDir != "", Sites: []testenv.Site{{Body: body}}},
	})
}

// stopCaddy stops a phase's Caddy and keeps its log.
func (b *bench) stopCaddy(ci *caddyInst, res *storeResult) {
	_ = ci.Proc().Stop(stopGrace)
	res.logs += ci.Proc().Output()
}

type procMem struct{ rss, hwm int64 } // VmRSS and VmHWM (the peak), in bytes

func readMem(pid int) (procMem, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procMem{}, err
	}
	st, err := p.NewStatus()
	return procMem{rss: int64(st.VmRSS), hwm: int64(st.VmHWM)}, err
}

// readCPU is the user+system CPU time pid has used, 0 if unknown.
func readCPU(pid int) time.Duration {
	if p, err := procfs.NewProc(pid); err == nil {
		if st, err := p.Stat(); err == nil {
			return time.Duration(st.CPUTime() * float64(time.Second))
		}
	}
	return 0
}

// resetPeak resets pid's VmHWM to its RSS, so that a phase's peak is its own.
func resetPeak(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}

// redisClient has one connection (testenv.RedisClients leaves out only the
// one asking).
func redisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, DialTimeout: 2 * time.Second})
}

func flushRedis(ctx context.Context, addr string) error {
	c := redisClient(addr)
	defer c.Close()
	return c.FlushAll(ctx).Err()
}

// redisCommandStats returns the calls per command, nil without Redis.
func redisCommandStats(ctx context.Context, addr string) map[string]int64 {
	if addr == "" {
		return nil
	}
	c := redisClient(addr)
	defer c.Close()
	info, err := c.InfoMap(ctx, "commandstats").Result()
	if err != nil {
		return nil
	}
	return parseCommandStats(info["Commandstats"])
}

// parseCommandStats reads INFO commandstats ("cmdstat_get" → "calls=3,…").
func parseCommandStats(section map[string]string) map[string]int64 {
	m := map[string]int64{}
	for name, stats := range section {
		for kv := range strings.SplitSeq(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				m[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return m
}

// ownCommands are what the bench's own connections send.
var ownCommands = map[string]bool{
	"info": true, "ping": true, "flushall": true,
	"hello": true, "client|setinfo": true, "client|maint_notifications": true,
}

// commandDelta is after−before per command, but the bench's own and zeros.
func commandDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if n := v - before[k]; n > 0 && !ownCommands[k] {
			d[k] = n
		}
	}
	return d
}
