package tests

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// summaryRe is legacy-client.mjs's last line.
var summaryRe = regexp.MustCompile(`^(\d+) passed, (\d+) failed$`)

// TestTypeScriptLegacyClient runs the official TypeScript SDK's legacy
// HTTP+SSE client (tests/node/legacy-client.mjs, every scenario that applies)
// through Caddy against each upstream, and expects every scenario to pass.
func TestTypeScriptLegacyClient(t *testing.T) {
	requireNode(t)
	for _, spec := range allUpstreams {
		t.Run(spec.name, func(t *testing.T) {
			up := startUpstream(t, spec)
			cd := startCaddy(t, up.url)

			runLegacyClientScript(t, spec, cd.sseURL())
		})
	}
}

// runLegacyClientScript runs legacy-client.mjs, every scenario that applies
// to spec (or as extra flags say), against sseURL, and expects all to pass
// and no answer to arrive for an unknown (already answered) request.
func runLegacyClientScript(t *testing.T, spec upstreamSpec, sseURL string, extra ...string) {
	t.Helper()
	requireNode(t)
	args := append([]string{"legacy-client.mjs",
		"--url", sseURL,
		"--upstream", spec.scriptUpstream(),
		"--timeout", "15000",
		"--verbose", // logs every client error, duplicates included
	}, extra...)
	if f := spec.features(); f != "" {
		args = append(args, "--features", f)
	}
	if spec.kind == kindGo {
		args = append(args, "--header", "Authorization: Bearer e2e-"+spec.name)
	}
	start := time.Now()
	p := startNodeScript(t, "legacy-client.mjs", false, args...)
	err := p.MustWaitExit(t, 3*time.Minute)
	out := p.Output()
	t.Logf("legacy-client.mjs took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("legacy-client.mjs failed: %v\n%s", err, out)
	}
	last := lastLine(out)
	m := summaryRe.FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("last line %q is not a summary\n%s", last, out)
	}
	passed, _ := strconv.Atoi(m[1])
	failed, _ := strconv.Atoi(m[2])
	if failed != 0 || passed == 0 {
		t.Fatalf("want N passed (N > 0), 0 failed; got %q\n%s", last, out)
	}
	if n := strings.Count(out, "unknown message ID"); n > 0 {
		t.Fatalf("the client got %d answer(s) to requests it no longer waited for (duplicates or late answers):\n%s", n, out)
	}
}
