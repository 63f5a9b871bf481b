package testenv

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// NewHTTPClient returns a client for loopback servers with a transport of
// its own, so that its pool can be sized for the load (maxIdlePerHost idle
// connections per host) and its idle connections closed when done (goleak
// counts their goroutines). Dials time out after 5s; responses are not
// decompressed, so what the server sent is what is read.
func NewHTTPClient(maxIdlePerHost int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: maxIdlePerHost,
		DisableCompression:  true,
	}}
}

// CloseIdle closes the idle connections of a client from NewHTTPClient.
func CloseIdle(c *http.Client) {
	if tr, ok := c.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
}

// MustHTTPClient is NewHTTPClient for a test: 200 idle connections per
// host, closed when the test ends.
func MustHTTPClient(tb testing.TB) *http.Client {
	c := NewHTTPClient(200)
	tb.Cleanup(func() { CloseIdle(c) })
	return c
}

// respBodyLimit bounds the response body Do reads.
const respBodyLimit = 64 << 10

// Do sends one request, with contentType and the headers of hdrs in order
// (later ones win), and returns the status, the headers and (the first
// 64 KiB of) the body.
func Do(ctx context.Context, hc *http.Client, method, url, contentType, body string, hdrs ...http.Header) (int, http.Header, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, "", err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for _, h := range hdrs {
		for k, v := range h {
			req.Header[k] = v
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, respBodyLimit))
	return resp.StatusCode, resp.Header, string(b), nil
}
