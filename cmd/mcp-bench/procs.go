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
)

// The processes the bench measures, started through internal/testenv (the
// harness the tests use too), each in b.procs so that all end with the
// bench: the demo upstream and redis-server for the whole run, a fresh
// Caddy for each phase.

// readyTimeout bounds the wait for a process to be ready.
const readyTimeout = 30 * time.Second

// startUpstream starts the demo upstream in stateless JSON mode.
func (b *bench) startUpstream(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	b.upstream, err = testenv.StartDemoUpstream(ctx, testenv.DemoOptions{
		Bin: b.cfg.upstreamBin, Args: []string{"-mode", "stateless", "-json"}, Dir: b.tmp, OnStart: b.procs.Add,
	})
	return err
}

// startRedis starts a redis-server without persistence, allowing a client
// per idle session and more. It returns why not, or "".
func (b *bench) startRedis(ctx context.Context) string {
	if b.cfg.redisBin == "" {
		return `disabled with -redis-server ""`
	}
	bin, err := exec.LookPath(b.cfg.redisBin)
	if err != nil {
		return b.cfg.redisBin + " not on PATH"
	}
	b.redisVer = firstLine(commandOutput(ctx, bin, "--version"))
	dir := filepath.Join(b.tmp, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	b.redis, err = testenv.StartRedis(ctx, testenv.RedisOptions{
		Bin: bin, Dir: dir, OnStart: b.procs.Add,
		Args: []string{"--protected-mode", "yes", "--maxclients", strconv.Itoa(max(10000, b.cfg.idle+1000))},
	})
	if err != nil {
		return err.Error()
	}
	b.logf("redis-server at %s", b.redis.Addr())
	return ""
}

// caddyInst is the Caddy of one phase.
type caddyInst struct {
	*testenv.Caddy
	store string
}

func (ci *caddyInst) sseURL() string { return ci.URL(0) + "/sse" }

// bridgeBlock is the bench's site: the bridge to upstream with the store
// given. The bench opens its thousands of sessions from one address as one
// caller: the new-session rate is unlimited, and the store takes
// maxSessions in all and from that caller.
func bridgeBlock(upstream, store, redisAddr string, maxSessions int) string {
	storeBlock := fmt.Sprintf("store memory {\n\tmax_sessions %d\n\tmax_sessions_per_caller %[1]d\n}", maxSessions)
	if store == "redis" {
		storeBlock = fmt.Sprintf("store redis {\n\taddress %s\n\tmax_sessions_per_caller %d\n}", redisAddr, maxSessions)
	}
	return fmt.Sprintf("mcp_sse_bridge {\n\t\tupstream %s\n\t\tnew_session_rate 1000000\n\t\t%s\n\t}",
		upstream, strings.ReplaceAll(storeBlock, "\n", "\n\t\t"))
}

// startCaddy starts a fresh Caddy for one phase, with the admin API on a
// loopback port when profiling.
func (b *bench) startCaddy(ctx context.Context, store, phase string) (*caddyInst, error) {
	dir := filepath.Join(b.tmp, store+"-"+phase)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	redisAddr := ""
	if b.redis != nil {
		redisAddr = b.redis.Addr()
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	c, err := testenv.StartCaddy(ctx, testenv.CaddyConfig{
		Bin: b.cfg.caddyBin, Dir: dir, Name: "caddy (" + store + ", " + phase + ")", OnStart: b.procs.Add,
		Caddyfile: testenv.Caddyfile{Admin: b.cfg.pprofDir != "", Sites: []testenv.Site{{
			Body: bridgeBlock(b.upstream.URL(), store, redisAddr, b.cfg.idle+2048),
		}}},
	})
	if err != nil {
		return nil, err
	}
	if b.caddyNofile == 0 {
		b.caddyNofile = openFilesLimit(c.Proc().Pid())
	}
	return &caddyInst{c, store}, nil
}

// stopCaddy stops a phase's Caddy and adds its warnings and errors to the
// store's log summary.
func (b *bench) stopCaddy(ci *caddyInst, res *storeResult) {
	_ = ci.Proc().Stop(stopGrace)
	res.logs.addFrom(strings.NewReader(ci.Proc().Output()))
}

// stopGrace is how long a process may take to exit on SIGTERM.
const stopGrace = 3 * time.Second
