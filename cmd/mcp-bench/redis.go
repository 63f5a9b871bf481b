package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// A few Redis commands in raw RESP: enough to count connections and to
// empty the database between runs, without a client library.

// redisCommand sends one command on conn and returns its reply: a string for
// simple and bulk strings, an int64 for integers.
func redisCommand(conn net.Conn, r *bufio.Reader, args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return readRESP(r)
}

// readRESP reads one reply (no arrays: the commands used here return none).
func readRESP(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("bad RESP bulk length %q", line)
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	default:
		return nil, fmt.Errorf("unsupported RESP reply %q", line)
	}
}

// redisDo opens a connection to addr, runs one command and closes it.
func redisDo(addr string, args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return redisCommand(conn, bufio.NewReader(conn), args...)
}

// redisClients counts the connections the Redis server at addr has, besides
// the one asking.
func redisClients(addr string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	self, err := redisCommand(conn, r, "CLIENT", "ID")
	if err != nil {
		return 0, err
	}
	list, err := redisCommand(conn, r, "CLIENT", "LIST")
	if err != nil {
		return 0, err
	}
	s, _ := list.(string)
	id, _ := self.(int64)
	return countClients(s, id), nil
}

// countClients counts the lines of a CLIENT LIST reply, except the client
// whose id is self.
func countClients(list string, self int64) int {
	n := 0
	for _, line := range strings.Split(list, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "id=") {
			continue
		}
		f, _, _ := strings.Cut(line, " ")
		if id, err := strconv.ParseInt(strings.TrimPrefix(f, "id="), 10, 64); err == nil && id == self {
			continue
		}
		n++
	}
	return n
}

// parseCommandStats returns the calls per command from an INFO commandstats
// reply ("cmdstat_get:calls=3,usec=…" lines).
func parseCommandStats(info string) map[string]int64 {
	m := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					m[strings.TrimPrefix(name, "cmdstat_")] = n
				}
			}
		}
	}
	return m
}

// redisCommandStats reads the calls per command of the server at addr.
func redisCommandStats(addr string) (map[string]int64, error) {
	v, err := redisDo(addr, "INFO", "commandstats")
	if err != nil {
		return nil, err
	}
	s, _ := v.(string)
	return parseCommandStats(s), nil
}

// benchCommands are the commands the benchmark itself sends to Redis; they
// are left out of the per-call counts.
var benchCommands = map[string]bool{"client|list": true, "client|id": true, "info": true, "ping": true, "flushall": true}

// commandDelta returns after-before per command, without the benchmark's own
// commands and without zeros.
func commandDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if benchCommands[k] {
			continue
		}
		if n := v - before[k]; n > 0 {
			d[k] = n
		}
	}
	return d
}
