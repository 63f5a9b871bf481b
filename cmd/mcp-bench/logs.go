package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
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

// addFrom reads Caddy's log (JSON lines).
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
