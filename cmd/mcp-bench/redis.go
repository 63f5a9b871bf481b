package main

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// What the bench asks the redis-server it started, through go-redis: which
// commands Caddy sends (INFO commandstats), and FLUSHALL between phases.
// Each question uses a connection of its own, closed again, like
// testenv.RedisClients, which counts the connections, leaving its own out.

// withRedis runs f with a client of one connection to addr.
func withRedis(addr string, f func(*redis.Client) error) error {
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, DialTimeout: 2 * time.Second})
	defer c.Close()
	return f(c)
}

// flushRedis empties the server, so that each phase starts from nothing.
func flushRedis(ctx context.Context, addr string) error {
	return withRedis(addr, func(c *redis.Client) error { return c.FlushAll(ctx).Err() })
}

// redisCommandStats returns the calls per command ("get", "evalsha", …).
func redisCommandStats(ctx context.Context, addr string) (map[string]int64, error) {
	var info map[string]map[string]string
	err := withRedis(addr, func(c *redis.Client) (err error) {
		info, err = c.InfoMap(ctx, "commandstats").Result()
		return err
	})
	return parseCommandStats(info["Commandstats"]), err
}

// parseCommandStats reads INFO commandstats' section, whose lines are
// "cmdstat_get:calls=3,usec=…".
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

// ownCommands are what the bench's own connections send (set-up included);
// they are left out of the per-call counts.
var ownCommands = map[string]bool{
	"info": true, "ping": true, "flushall": true,
	"hello": true, "client|setinfo": true, "client|maint_notifications": true,
}

// commandDelta returns after-before per command, without the bench's own
// commands and without zeros.
func commandDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if n := v - before[k]; n > 0 && !ownCommands[k] {
			d[k] = n
		}
	}
	return d
}
