package main

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisProbe asks the bench's redis-server about Caddy's use of it: how many
// connections it holds and which commands it sends. It is one go-redis
// connection (PoolSize 1), so that exactly one connection, the probe's own,
// is left out of the counts.
type redisProbe struct{ c *redis.Client }

func newRedisProbe(addr string) *redisProbe {
	return &redisProbe{redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, DialTimeout: 2 * time.Second})}
}

// clients counts the connections the server has besides the probe's.
func (p *redisProbe) clients(ctx context.Context) (int, error) {
	info, err := p.c.InfoMap(ctx, "clients").Result()
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(info["Clients"]["connected_clients"])
	return n - 1, err
}

// commandStats returns the calls per command ("get", "client|list", …) from
// INFO commandstats, whose lines are "cmdstat_get:calls=3,usec=…".
func (p *redisProbe) commandStats(ctx context.Context) (map[string]int64, error) {
	info, err := p.c.InfoMap(ctx, "commandstats").Result()
	if err != nil {
		return nil, err
	}
	return parseCommandStats(info["Commandstats"]), nil
}

func parseCommandStats(section map[string]string) map[string]int64 {
	m := map[string]int64{}
	for name, stats := range section {
		for _, kv := range strings.Split(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					m[strings.TrimPrefix(name, "cmdstat_")] = n
				}
			}
		}
	}
	return m
}

// probeCommands are what the probe itself sends to Redis, connection set-up
// included; they are left out of the per-call counts.
var probeCommands = map[string]bool{
	"info": true, "ping": true, "flushall": true,
	"hello": true, "client|setinfo": true, "client|maint_notifications": true,
}

// commandDelta returns after-before per command, without the probe's own
// commands and without zeros.
func commandDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if n := v - before[k]; n > 0 && !probeCommands[k] {
			d[k] = n
		}
	}
	return d
}
