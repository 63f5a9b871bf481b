package caddymodule

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestCaddyfileAdapt adapts each testdata/adapt/*.caddyfiletest: a Caddyfile,
// a line of dashes, then the expected JSON config, or "error: <substring>".
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".caddyfiletest"), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), "\n----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- separator", f)
			}
			got, _, err := adapter.Adapt([]byte(input), nil)
			if wantErr, isErr := strings.CutPrefix(strings.TrimSpace(want), "error: "); isErr {
				if err == nil || !strings.Contains(err.Error(), wantErr) {
					t.Fatalf("want error containing %q, got %v", wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			gotBuf, err := normalizeJSON(got)
			if err != nil {
				t.Fatal(err)
			}
			wantBuf, err := normalizeJSON([]byte(want))
			if err != nil {
				t.Fatalf("expected JSON in %s: %v", f, err)
			}
			if gotBuf.String() != wantBuf.String() {
				t.Errorf("adapted config differs\n--- got\n%s\n--- want\n%s", gotBuf.String(), wantBuf.String())
			}
		})
	}
}

func normalizeJSON(b []byte) (*bytes.Buffer, error) {
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return nil, err
	}
	err := json.Indent(&out, compact.Bytes(), "", "\t")
	return &out, err
}
