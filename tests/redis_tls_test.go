package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// testCA is a private certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mcp-bridge e2e CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.write(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

// issue writes a certificate for name (a server's DNS name, or a client's
// common name) and its key, and returns their paths.
func (ca *testCA) issue(t testing.TB, name string, usage x509.ExtKeyUsage) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name+".pem", "CERTIFICATE", der), ca.write(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
}

func (ca *testCA) write(t testing.TB, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (ca *testCA) path() string { return filepath.Join(ca.dir, "ca.pem") }

// TestRedisTLS: a Redis that speaks only TLS, with a certificate from a
// private CA and client certificates required (tls-auth-clients), serves
// the bridge when the Caddyfile alone names the CA, the client certificate
// and the server name; without the client certificate the store is out of
// reach (503), which the log names.
func TestRedisTLS(t *testing.T) {
	requireRedisModule(t)
	ca := newTestCA(t)
	serverCert, serverKey := ca.issue(t, "redis.test", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "bridge", x509.ExtKeyUsageClientAuth)
	redis := testenv.MustRedis(t, testenv.RedisOptions{Dir: ca.dir, Name: "redis-server (TLS)",
		TLS: &testenv.RedisTLS{Cert: serverCert, Key: serverKey, CA: ca.path(), AuthClients: true}})
	port := redis.Port()
	up := startUpstream(t, specGoStatelessJSON)

	// Two stores (key prefixes): sites that name the same data share one
	// store and its client.
	tlsBlock := func(withClientCert bool) string {
		b := fmt.Sprintf("store redis rediss://127.0.0.1:%d {\n\t\t\tkey_prefix cert-%v:\n\t\t\ttls {\n\t\t\t\tca %s\n\t\t\t\tserver_name redis.test\n",
			port, withClientCert, ca.path())
		if withClientCert {
			b += fmt.Sprintf("\t\t\t\tcert %s\n\t\t\t\tkey %s\n", clientCert, clientKey)
		}
		return b + "\t\t\t}\n\t\t}"
	}
	sites := startCaddySites(t,
		site{body: bridgeBlock(up.url, tlsBlock(true))},
		site{body: bridgeBlock(up.url, tlsBlock(false))},
	)
	withCert, withoutCert := sites[0], sites[1]

	gc := connectGo(t, withCert, "tls", goClientOptions{})
	gc.echoOK(t, tables[kindGo], "over TLS with a client certificate")

	hc := testenv.MustHTTPClient(t)
	code, h, body := doRequest(t, hc, http.MethodGet, withoutCert.sseURL(), "", "")
	if code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("GET through a store without the client certificate: %d %q, want 503 with Retry-After", code, body)
	}
	if strings.Contains(body, "127.0.0.1") {
		t.Errorf("the 503 body shows the store's address: %q", body)
	}
}
