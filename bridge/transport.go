package bridge

import (
	"net"
	"net/http"
	"time"
)

// newUpstreamTransports makes the transports of upstream requests: one for
// calls (POSTs, DELETEs, probes), whose connections are reused and bounded
// by MaxUpstreamConns, so that thousands of sessions share a few
// connections and requests beyond the bound wait for one; and one for the
// long-lived GET streams (a session's server→client stream, a resumed
// response stream), which would otherwise hold the calls' connections for
// as long as they last. Both speak HTTP/2 where the upstream offers it (TLS
// ALPN), or h2c with UpstreamH2C.
func newUpstreamTransports(cfg Config) (calls, streams *http.Transport) {
	calls = baseTransport(cfg)
	calls.MaxConnsPerHost = cfg.MaxUpstreamConns
	calls.MaxIdleConnsPerHost = cfg.MaxUpstreamConns
	calls.MaxIdleConns = cfg.MaxUpstreamConns
	streams = baseTransport(cfg)
	// A GET stream that ends is reopened at once: keep a few connections.
	streams.MaxIdleConnsPerHost = 64
	streams.MaxIdleConns = 64
	return calls, streams
}

func baseTransport(cfg Config) *http.Transport {
	t := &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Bounds a black-holed upstream. A streaming answer sends its
		// headers at once and is never cut; a JSON-mode upstream sends them
		// only with the result, so the bound must outlast its longest call.
		ResponseHeaderTimeout: cfg.UpstreamHeaderTimeout,
		IdleConnTimeout:       90 * time.Second,
	}
	if cfg.UpstreamH2C && cfg.Upstream.Scheme == "http" {
		// Prior knowledge: a plain-text upstream that speaks HTTP/2.
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		t.Protocols = &p
	}
	return t
}
