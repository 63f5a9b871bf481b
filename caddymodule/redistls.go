package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// RedisTLS configures TLS to Redis, as Caddy users know it from
// reverse_proxy's transport and caddy-storage-redis. Any field set turns TLS
// on.
type RedisTLS struct {
	// CA is a PEM file of the certificate authorities that sign the Redis
	// server's certificate (a private CA). Default: the system's roots.
	CA string `json:"ca,omitempty"`
	// CAPEM is the same as PEM text, for configurations that carry it inline.
	CAPEM string `json:"ca_pem,omitempty"`
	// Cert and Key are PEM files of a client certificate and its key, for
	// servers that authenticate clients (tls-auth-clients yes).
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// ServerName is the name checked against the server's certificate.
	// Default: the host of the address.
	ServerName string `json:"server_name,omitempty"`
	// InsecureSkipVerify turns off the server certificate check. For tests
	// only: anyone on the path can read and change the traffic. A warning is
	// logged.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// set reports whether any TLS option is given.
func (t *RedisTLS) set() bool { return t != nil && *t != RedisTLS{} }

// validate checks what can be checked without reading files.
func (t *RedisTLS) validate() error {
	if t == nil {
		return nil
	}
	if (t.Cert == "") != (t.Key == "") {
		return errors.New("redis store: tls cert and key go together")
	}
	if t.CA != "" && t.CAPEM != "" {
		return errors.New("redis store: tls ca and ca_pem exclude each other")
	}
	return nil
}

// config builds the client's TLS configuration (t may be nil: defaults).
func (t *RedisTLS) config(logger *zap.Logger) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg, nil
	}
	caPEM := []byte(t.CAPEM)
	if t.CA != "" {
		b, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("redis store: tls ca: %w", err)
		}
		caPEM = b
	}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("redis store: tls ca holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" {
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("redis store: tls cert and key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	cfg.ServerName = t.ServerName
	if t.InsecureSkipVerify {
		logger.Warn("redis store: TLS server certificate check turned off (insecure_skip_verify): anyone on the path can read and change the traffic")
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

// unmarshalCaddyfile reads a tls block:
//
//	tls {
//		ca <file>
//		ca_pem <pem>
//		cert <file>
//		key <file>
//		server_name <name>
//		insecure_skip_verify
//	}
func (t *RedisTLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "insecure_skip_verify" {
			if d.NextArg() {
				return d.ArgErr()
			}
			t.InsecureSkipVerify = true
			continue
		}
		target := map[string]*string{"ca": &t.CA, "ca_pem": &t.CAPEM, "cert": &t.Cert, "key": &t.Key, "server_name": &t.ServerName}[opt]
		if target == nil {
			return d.Errf("unrecognized redis tls option: %s", opt)
		}
		if !d.AllArgs(target) {
			return d.ArgErr()
		}
	}
	return nil
}
