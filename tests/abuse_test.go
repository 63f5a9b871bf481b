package tests

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip (127.0.0.0/8 is all local on Linux): another client
// address for the bridge, as another machine would be.
func clientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	tr := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext,
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestStoreFillingAttack: one caller opening and dropping event streams as
// fast as it can gets 429 with Retry-After once its burst is spent, far
// below max_sessions, and a caller from another address still connects and
// calls.
func TestStoreFillingAttack(t *testing.T) {
	up := startUpstream(t, specGoStatelessJSON)
	c := startCaddy(t, up.url, "new_session_rate 5", "new_session_burst 20")
	flooder := clientFrom(t, "127.0.0.1")

	opened, refused := 0, 0
	deadline := time.Now().Add(20 * time.Second)
	for refused < 20 && time.Now().Before(deadline) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.sseURL(), nil)
		resp, err := flooder.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			opened++
		case http.StatusTooManyRequests:
			refused++
			if resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		default:
			t.Errorf("GET answered %s", resp.Status)
		}
		cancel() // drop the stream at once
		resp.Body.Close()
	}
	t.Logf("the flooder opened %d sessions before %d refusals", opened, refused)
	if refused == 0 {
		t.Fatal("the flooder was never refused")
	}
	if opened > 20+5*20 {
		t.Errorf("the flooder opened %d sessions, want about the burst (20) plus 5 a second", opened)
	}

	other := openRawSession(t, clientFrom(t, "127.0.0.2"), c.base, "/sse", nil)
	other.initialize(t)
	if msg := other.request(t, "7", "tools/call", `{"name":"echo","arguments":{"message":"still served"}}`); !bytes.Contains(msg, []byte("still served")) {
		t.Errorf("the other caller's call: %s", msg)
	}
}
