package tests

// The driver of tests/node/replica-client.mjs: a TypeScript SDK legacy
// client that reports which replica served each of its requests.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// replicaClient drives replica-client.mjs: a TypeScript SDK legacy client
// that reports which replica served each of its requests.
type replicaClient struct {
	p *testenv.Process
}

var (
	rcGetRe     = regexp.MustCompile(`(?m)^get (\S+) (\S+) pv=(\S+) lei=(\S+)$`)
	rcSessionRe = regexp.MustCompile(`(?m)^session (\S+)$`)
	rcPostRe    = regexp.MustCompile(`(?m)^post (\S+) (\S+) (\S+) (\S+) (\S+)$`)
	rcStatsRe   = regexp.MustCompile(`(?m)^stats (.*)$`)
)

// startReplicaClient connects replica-client.mjs to sseURL.
func startReplicaClient(t testing.TB, sseURL string) *replicaClient {
	t.Helper()
	requireNode(t)
	p := startNodeScript(t, "replica-client.mjs", true,
		"replica-client.mjs", "--url", sseURL, "--timeout", "30000")
	p.MustWaitOutput(t, tsReadyRe, 30*time.Second)
	t.Cleanup(func() { p.Stdin().Close() })
	return &replicaClient{p: p}
}

func (rc *replicaClient) send(t testing.TB, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(rc.p.Stdin(), line); err != nil {
		t.Fatalf("writing to replica-client.mjs: %v", err)
	}
}

// call starts a tool call tagged tag; with progress, it carries a progress
// token.
func (rc *replicaClient) call(t testing.TB, tag, tool string, args any, progress bool) {
	t.Helper()
	data, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := "call"
	if progress {
		cmd = "callp"
	}
	rc.send(t, fmt.Sprintf("%s %s %s %s", cmd, tag, tool, data))
}

// result waits for the result line of the call tagged tag: its kind and the
// rest of the line.
func (rc *replicaClient) result(t testing.TB, tag string, timeout time.Duration) (kind, rest string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^result ` + regexp.QuoteMeta(tag) + ` (\S+) ?(.*)$`)
	m := rc.p.MustWaitOutput(t, re, timeout)
	if n := len(re.FindAllString(rc.p.Output(), -1)); n != 1 {
		t.Fatalf("replica-client.mjs: %d result lines for %s", n, tag)
	}
	return m[1], m[2]
}

// callText calls a tool, waits for its result and checks it succeeded.
func (rc *replicaClient) callText(t testing.TB, tag, tool string, args any) string {
	t.Helper()
	rc.call(t, tag, tool, args, false)
	kind, rest := rc.result(t, tag, callTimeout+10*time.Second)
	var text string
	if kind != "ok" || json.Unmarshal([]byte(rest), &text) != nil {
		t.Fatalf("TypeScript client: %s (%s) gave %s %s, want ok", tag, tool, kind, rest)
	}
	return text
}

// echoOK calls the demo upstream's echo and checks the answer.
func (rc *replicaClient) echoOK(t testing.TB, tag string) {
	t.Helper()
	msg := "echo-" + tag
	if got := rc.callText(t, tag, "echo", map[string]any{"message": msg}); got != msg {
		t.Fatalf("TypeScript client: echo %q = %q", msg, got)
	}
}

// waitProgress waits for progress n of the call tagged tag.
func (rc *replicaClient) waitProgress(t testing.TB, tag string, n int, timeout time.Duration) {
	t.Helper()
	rc.p.MustWaitOutput(t, regexp.MustCompile(fmt.Sprintf(`(?m)^progress %s %d$`, regexp.QuoteMeta(tag), n)), timeout)
}

// progressSeen returns the progress values reported for tag.
func (rc *replicaClient) progressSeen(tag string) []int {
	var ps []int
	re := regexp.MustCompile(`(?m)^progress ` + regexp.QuoteMeta(tag) + ` (\d+)$`)
	for _, m := range re.FindAllStringSubmatch(rc.p.Output(), -1) {
		n, _ := strconv.Atoi(m[1])
		ps = append(ps, n)
	}
	return ps
}

// rcGet is one GET of the client's event stream.
type rcGet struct {
	status, replica, protocolVersion, lastEventID string
}

// gets returns the GETs of the event stream so far.
func (rc *replicaClient) gets() []rcGet {
	var gs []rcGet
	for _, m := range rcGetRe.FindAllStringSubmatch(rc.p.Output(), -1) {
		gs = append(gs, rcGet{m[1], m[2], m[3], m[4]})
	}
	return gs
}

// waitGets waits until the event stream was opened n times and returns the
// GETs.
func (rc *replicaClient) waitGets(t testing.TB, n int, timeout time.Duration) []rcGet {
	t.Helper()
	rc.p.MustWaitUntil(t, fmt.Sprintf("%d GETs of the event stream", n), timeout, func(out string) bool {
		return len(rcGetRe.FindAllString(out, -1)) >= n
	})
	return rc.gets()
}

// sessions returns the POST endpoint's session ids, in order.
func (rc *replicaClient) sessions() []string {
	var ss []string
	for _, m := range rcSessionRe.FindAllStringSubmatch(rc.p.Output(), -1) {
		ss = append(ss, m[1])
	}
	return ss
}

// rcPost is one POST of the client.
type rcPost struct {
	status, replica, method, id, tag string
}

func (rc *replicaClient) posts() []rcPost {
	var ps []rcPost
	for _, m := range rcPostRe.FindAllStringSubmatch(rc.p.Output(), -1) {
		ps = append(ps, rcPost{m[1], m[2], m[3], m[4], m[5]})
	}
	return ps
}

// postOf waits for the POST of the call tagged tag.
func (rc *replicaClient) postOf(t testing.TB, tag string, timeout time.Duration) rcPost {
	t.Helper()
	var found rcPost
	rc.p.MustWaitUntil(t, "the POST of "+tag, timeout, func(string) bool {
		for _, p := range rc.posts() {
			if p.tag == tag {
				found = p
				return true
			}
		}
		return false
	})
	return found
}

// rcStats is the script's bookkeeping of requests and answers.
type rcStats struct {
	Sent       int            `json:"sent"`
	Answered   int            `json:"answered"`
	Missing    []string       `json:"missing"`
	Duplicates map[string]int `json:"duplicates"`
	Unexpected []string       `json:"unexpected"`
	UnknownID  int            `json:"unknownId"`
	Gets       int            `json:"gets"`
}

// stats asks the script for its bookkeeping.
func (rc *replicaClient) stats(t testing.TB) rcStats {
	t.Helper()
	before := len(rcStatsRe.FindAllString(rc.p.Output(), -1))
	rc.send(t, "stats")
	var line string
	rc.p.MustWaitUntil(t, "a stats line", 10*time.Second, func(out string) bool {
		all := rcStatsRe.FindAllStringSubmatch(out, -1)
		if len(all) > before {
			line = all[before][1]
			return true
		}
		return false
	})
	var st rcStats
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		t.Fatalf("replica-client.mjs stats %q: %v", line, err)
	}
	return st
}

// checkExactlyOnce checks that every request the client sent got exactly
// one answer, and that no answer came for an unknown request.
func (rc *replicaClient) checkExactlyOnce(t testing.TB) rcStats {
	t.Helper()
	st := rc.stats(t)
	if len(st.Missing) > 0 || len(st.Duplicates) > 0 || len(st.Unexpected) > 0 || st.UnknownID > 0 || st.Answered != st.Sent {
		t.Errorf("TypeScript client: not every request was answered exactly once: %+v", st)
	} else {
		t.Logf("TypeScript client: %d requests, each answered exactly once; %d GET(s) of the event stream", st.Sent, st.Gets)
	}
	return st
}
