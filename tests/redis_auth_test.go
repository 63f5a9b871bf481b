package tests

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// TestRedisWrongPassword: a Redis store configured with the wrong password
// is reported at start-up as refused credentials, not as an unreachable
// server, and the password appears neither in the log nor in the answers.
func TestRedisWrongPassword(t *testing.T) {
	redis := startRedis(t)
	admin := goredis.NewClient(&goredis.Options{Addr: redis.Addr()})
	defer admin.Close()
	if err := admin.ConfigSet(ctxTimeout(t, 5*time.Second), "requirepass", "right-secret").Err(); err != nil {
		t.Fatal(err)
	}
	up := startUpstream(t, specGoStatelessJSON)
	c := startCaddy(t, up.url, fmt.Sprintf("store redis %s {\n\t\t\tpassword wrong-secret\n\t\t}", redis.Addr()))
	c.proc.MustWaitOutput(t, regexp.MustCompile(`redis refused the credentials`), 20*time.Second)

	code, _, body := doRequest(t, testenv.MustHTTPClient(t), http.MethodGet, c.sseURL(), "", "")
	if code != http.StatusServiceUnavailable {
		t.Errorf("GET with the store refusing the credentials: %d %q, want 503", code, body)
	}
	if out := c.proc.Output(); strings.Contains(out, "wrong-secret") || strings.Contains(body, "wrong-secret") {
		t.Error("the password appears in the log or the answer")
	}
}
