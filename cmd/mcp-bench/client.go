package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
)

// The benchmark's own MCP clients. Both speak raw HTTP and share everything
// but the transport: the payloads, the id bookkeeping, the answer checks and
// the HTTP client settings, so that the bridged/direct ratio measures the
// bridge and not the clients.
//
//   - legacyTransport: the 2024-11-05 HTTP+SSE transport through the bridge
//     (GET /sse, the endpoint event, POST …?sessionId=…, answers as
//     "event: message" on the stream, matched by id);
//   - directTransport: Streamable HTTP straight at the upstream (one POST per
//     message; a JSON answer, or an event stream carrying it).

const (
	// legacyProtocolVersion is what the legacy client asks for.
	legacyProtocolVersion = "2024-11-05"
	// maxEventSize bounds one server-sent event read by the clients.
	maxEventSize = 16 << 20
	// maxBody bounds a JSON response body read by the direct client.
	maxBody = 16 << 20
)

// newHTTPClient returns the HTTP client both transports use: loopback only,
// no compression, a large idle pool, no redirects.
func newHTTPClient() *http.Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// closeIdle releases the idle connections of a client made by newHTTPClient.
func closeIdle(c *http.Client) {
	if tr, ok := c.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
}

// transport carries JSON-RPC messages to a server. request sends a request
// whose id is id (its JSON text) and returns the response; notify sends a
// notification.
type transport interface {
	request(ctx context.Context, id string, body []byte) ([]byte, error)
	notify(ctx context.Context, body []byte) error
	close()
}

// session is one MCP client session over a transport.
type session struct {
	tr     transport
	nextID int64
}

// rpcError is a JSON-RPC error answer.
type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (e *rpcError) Error() string { return fmt.Sprintf("JSON-RPC error %d: %s", e.Code, e.Message) }

// appendRequest appends a JSON-RPC request to dst. params must be JSON.
func appendRequest(dst []byte, id, method string, params []byte) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"method":`...)
	dst = strconv.AppendQuote(dst, method)
	if params != nil {
		dst = append(dst, `,"params":`...)
		dst = append(dst, params...)
	}
	return append(dst, '}')
}

// call sends a request and returns its result, or the error it was answered
// with.
func (s *session) call(ctx context.Context, method string, params []byte) (json.RawMessage, error) {
	s.nextID++
	id := strconv.FormatInt(s.nextID, 10)
	body := appendRequest(make([]byte, 0, 96+len(params)), id, method, params)
	ans, err := s.tr.request(ctx, id, body)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *rpcError       `json:"error"`
	}
	if err := json.Unmarshal(ans, &resp); err != nil {
		return nil, fmt.Errorf("decoding the answer to %s: %w", method, err)
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	if resp.Result == nil {
		return nil, fmt.Errorf("the answer to %s has no result", method)
	}
	return resp.Result, nil
}

// initialize runs the MCP handshake: initialize, then
// notifications/initialized. It returns the negotiated protocol version.
func (s *session) initialize(ctx context.Context) (string, error) {
	params := `{"protocolVersion":"` + legacyProtocolVersion + `","capabilities":{},"clientInfo":{"name":"mcp-bench","version":"1.0.0"}}`
	res, err := s.call(ctx, "initialize", []byte(params))
	if err != nil {
		return "", fmt.Errorf("initialize: %w", err)
	}
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	if err := json.Unmarshal(res, &r); err != nil || r.ProtocolVersion == "" {
		return "", fmt.Errorf("initialize: no protocolVersion in result %.200s", res)
	}
	if d, ok := s.tr.(*directTransport); ok {
		// Like the bridge: every later message carries the version.
		d.protocolVersion = r.ProtocolVersion
	}
	if err := s.tr.notify(ctx, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)); err != nil {
		return "", fmt.Errorf("notifications/initialized: %w", err)
	}
	return r.ProtocolVersion, nil
}

// echoParams returns the params of tools/call echo with message.
func echoParams(message string) []byte {
	b, _ := json.Marshal(map[string]any{"name": "echo", "arguments": map[string]string{"message": message}})
	return b
}

// echoText returns the text of a tools/call result holding one text content.
func echoText(result json.RawMessage) (string, error) {
	var r struct {
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
		IsError bool `json:"isError"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return "", err
	}
	if r.IsError || len(r.Content) != 1 || r.Content[0].Type != "text" {
		return "", fmt.Errorf("unexpected tool result %.200s", result)
	}
	return r.Content[0].Text, nil
}

// peekID returns the JSON text of a message's id (empty for notifications).
func peekID(msg []byte) (string, error) {
	var env struct {
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(msg, &env); err != nil {
		return "", err
	}
	return string(env.ID), nil
}

// ---------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Legacy HTTP+SSE client (through the bridge)
// ---------------------------------------------------------------------------

// legacyTransport is one legacy session: the event stream and its message
// endpoint.
type legacyTransport struct {
	hc       *http.Client
	postURL  string
	cancel   context.CancelFunc
	done     chan struct{} // closed when the stream reader ends
	endpoint chan string

	mu      sync.Mutex
	pending map[string]chan []byte
	err     error // why the stream ended
	// stray counts messages that answered no pending request.
	stray int
}

// resolveEndpoint turns the data of an endpoint event into the absolute
// message URL, relative to the stream's URL. The endpoint must carry a
// sessionId and stay on the stream's origin.
func resolveEndpoint(stream *url.URL, data string) (string, error) {
	data = strings.TrimSpace(data)
	if data == "" {
		return "", errors.New("empty endpoint event")
	}
	ref, err := url.Parse(data)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", data, err)
	}
	u := stream.ResolveReference(ref)
	if u.Scheme != stream.Scheme || u.Host != stream.Host {
		return "", fmt.Errorf("endpoint %q leaves the stream's origin %s://%s", data, stream.Scheme, stream.Host)
	}
	if u.Query().Get("sessionId") == "" {
		return "", fmt.Errorf("endpoint %q has no sessionId", data)
	}
	return u.String(), nil
}

// openLegacy opens an event stream at sseURL and waits for its endpoint
// event. The stream lives until close, independent of ctx.
func openLegacy(ctx context.Context, hc *http.Client, sseURL string) (*legacyTransport, error) {
	base, err := url.Parse(sseURL)
	if err != nil {
		return nil, err
	}
	streamCtx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(streamCtx, http.MethodGet, sseURL, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := hc.Do(req)
		got <- result{resp, err}
	}()
	var resp *http.Response
	select {
	case r := <-got:
		if r.err != nil {
			cancel()
			return nil, r.err
		}
		resp = r.resp
	case <-ctx.Done():
		cancel()
		if r := <-got; r.resp != nil {
			r.resp.Body.Close()
		}
		return nil, ctx.Err()
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("GET %s: %s %s: %s", sseURL, resp.Status, resp.Header.Get("Content-Type"), bytes.TrimSpace(b))
	}
	t := &legacyTransport{
		hc:       hc,
		cancel:   cancel,
		done:     make(chan struct{}),
		endpoint: make(chan string, 1),
		pending:  make(map[string]chan []byte),
	}
	go t.readStream(resp.Body, base)
	select {
	case ep := <-t.endpoint:
		t.postURL = ep
		return t, nil
	case <-t.done:
		cancel()
		return nil, fmt.Errorf("stream ended before the endpoint event: %v", t.streamErr())
	case <-ctx.Done():
		t.close()
		return nil, ctx.Err()
	}
}

// readStream reads the event stream until it ends: the endpoint event first,
// then messages, each handed to the request waiting for its id.
func (t *legacyTransport) readStream(body io.ReadCloser, base *url.URL) {
	defer close(t.done)
	defer body.Close()
	sr := bridge.NewEventReader(body, maxEventSize)
	gotEndpoint := false
	for {
		ev, err := sr.Next()
		if err != nil {
			t.mu.Lock()
			t.err = err
			t.mu.Unlock()
			return
		}
		switch ev.Name {
		case "endpoint":
			if gotEndpoint {
				continue
			}
			ep, err := resolveEndpoint(base, string(ev.Data))
			if err != nil {
				t.mu.Lock()
				t.err = err
				t.mu.Unlock()
				return
			}
			gotEndpoint = true
			t.endpoint <- ep
		case "", "message":
			id, err := peekID(ev.Data)
			t.mu.Lock()
			ch, ok := t.pending[id]
			if ok && err == nil && id != "" {
				delete(t.pending, id)
			} else {
				ok = false
				t.stray++
			}
			t.mu.Unlock()
			if ok {
				ch <- ev.Data
			}
		}
	}
}

func (t *legacyTransport) streamErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil || errors.Is(t.err, io.EOF) {
		return errors.New("stream closed by the server")
	}
	return t.err
}

// post sends one message to the session's message endpoint and expects 202.
func (t *legacyTransport) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.postURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST %s: %s: %s", t.postURL, resp.Status, bytes.TrimSpace(b))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (t *legacyTransport) request(ctx context.Context, id string, body []byte) ([]byte, error) {
	ch := make(chan []byte, 1)
	t.mu.Lock()
	t.pending[id] = ch
	t.mu.Unlock()
	forget := func() {
		t.mu.Lock()
		delete(t.pending, id)
		t.mu.Unlock()
	}
	if err := t.post(ctx, body); err != nil {
		forget()
		return nil, err
	}
	select {
	case ans := <-ch:
		return ans, nil
	case <-t.done:
		forget()
		// The answer may have come just before the stream ended.
		select {
		case ans := <-ch:
			return ans, nil
		default:
		}
		return nil, fmt.Errorf("waiting for the answer to id %s: %w", id, t.streamErr())
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("waiting for the answer to id %s: %w", id, ctx.Err())
	}
}

func (t *legacyTransport) notify(ctx context.Context, body []byte) error { return t.post(ctx, body) }

// close ends the stream and waits for its reader.
func (t *legacyTransport) close() {
	t.cancel()
	<-t.done
}

// ---------------------------------------------------------------------------
// Streamable HTTP client (straight at the upstream)
// ---------------------------------------------------------------------------

// directTransport posts each message to the upstream's Streamable HTTP
// endpoint, with the headers the bridge would send.
type directTransport struct {
	hc              *http.Client
	url             string
	sessionID       string // Mcp-Session-Id, if the upstream issued one
	protocolVersion string // MCP-Protocol-Version, once negotiated
}

func (t *directTransport) post(ctx context.Context, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if t.sessionID != "" {
		req.Header.Set("Mcp-Session-Id", t.sessionID)
	}
	if t.protocolVersion != "" {
		req.Header.Set("MCP-Protocol-Version", t.protocolVersion)
	}
	return t.hc.Do(req)
}

func (t *directTransport) request(ctx context.Context, id string, body []byte) ([]byte, error) {
	resp, err := t.post(ctx, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("POST %s: %s: %s", t.url, resp.Status, bytes.TrimSpace(b))
	}
	if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" && t.sessionID == "" {
		t.sessionID = sid
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		ans, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if err != nil {
			return nil, err
		}
		got, err := peekID(ans)
		if err != nil {
			return nil, fmt.Errorf("decoding the answer to id %s: %w", id, err)
		}
		if got != id {
			return nil, fmt.Errorf("answer has id %s, want %s", got, id)
		}
		return ans, nil
	case "text/event-stream":
		sr := bridge.NewEventReader(resp.Body, maxEventSize)
		for {
			ev, err := sr.Next()
			if err != nil {
				return nil, fmt.Errorf("response stream for id %s ended without the answer: %w", id, err)
			}
			if ev.Name != "" && ev.Name != "message" {
				continue
			}
			if got, err := peekID(ev.Data); err == nil && got == id {
				return ev.Data, nil
			}
		}
	default:
		return nil, fmt.Errorf("POST %s: unexpected Content-Type %q", t.url, resp.Header.Get("Content-Type"))
	}
}

func (t *directTransport) notify(ctx context.Context, body []byte) error {
	resp, err := t.post(ctx, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", t.url, resp.Status)
	}
	return nil
}

func (t *directTransport) close() {}

// openSession opens and initialises a session of the given kind: "bridged"
// (legacy client to the bridge's sse URL) or "direct" (Streamable HTTP to
// the upstream URL).
func openSession(ctx context.Context, hc *http.Client, kind, target string) (*session, error) {
	var s *session
	switch kind {
	case "bridged":
		t, err := openLegacy(ctx, hc, target)
		if err != nil {
			return nil, err
		}
		s = &session{tr: t}
		if _, err := s.initialize(ctx); err != nil {
			t.close()
			return nil, err
		}
	case "direct":
		t := &directTransport{hc: hc, url: target}
		s = &session{tr: t}
		if _, err := s.initialize(ctx); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown session kind %q", kind)
	}
	return s, nil
}
