package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

// The benchmark's own MCP clients. Both speak raw HTTP and share everything
// but the transport (payloads, id bookkeeping, answer checks, HTTP client
// settings), so that the bridged/direct ratio measures the bridge and not
// the clients:
//
//   - legacyTransport: the 2024-11-05 HTTP+SSE transport through the bridge
//     (GET /sse, the endpoint event, POST …?sessionId=…, answers as
//     "event: message" on the stream, matched by id);
//   - directTransport: Streamable HTTP straight at the upstream, which the
//     bench runs in JSON mode: one POST per message, the answer its body.

const (
	// legacyProtocolVersion is what the legacy client asks for.
	legacyProtocolVersion = "2024-11-05"
	// maxMessage bounds one event or response body read by the clients.
	maxMessage = 16 << 20
)

// newHTTPClient returns the HTTP client both transports use: loopback, no
// compression, an idle connection kept for every session.
func newHTTPClient() *http.Client { return testenv.NewHTTPClient(4096) }

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

// appendRequest appends a JSON-RPC request to dst, without the cost of
// json.Marshal on the measured path. params must be JSON.
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
	ans, err := s.tr.request(ctx, id, appendRequest(make([]byte, 0, 96+len(params)), id, method, params))
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
// notifications/initialized.
func (s *session) initialize(ctx context.Context) error {
	params := `{"protocolVersion":"` + legacyProtocolVersion + `","capabilities":{},"clientInfo":{"name":"mcp-bench","version":"1.0.0"}}`
	res, err := s.call(ctx, "initialize", []byte(params))
	if err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	if err := json.Unmarshal(res, &r); err != nil || r.ProtocolVersion == "" {
		return fmt.Errorf("initialize: no protocolVersion in result %.200s", res)
	}
	if d, ok := s.tr.(*directTransport); ok {
		// Like the bridge: every later message carries the version.
		d.protocolVersion = r.ProtocolVersion
	}
	if err := s.tr.notify(ctx, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)); err != nil {
		return fmt.Errorf("notifications/initialized: %w", err)
	}
	return nil
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

// answerID returns the JSON text of a message's id, "" for anything but a
// response.
func answerID(msg []byte) string {
	env, err := bridge.PeekEnvelope(msg)
	if err != nil || env.Kind != bridge.KindResponse {
		return ""
	}
	return string(env.ID)
}

// postJSON POSTs body to u with the given header and, when the answer's
// status is one of want, returns its header and body; otherwise an error
// with the start of the body.
func postJSON(ctx context.Context, hc *http.Client, u string, body []byte, header http.Header, want ...int) (http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	ans, err := io.ReadAll(io.LimitReader(resp.Body, maxMessage))
	if err == nil && !slices.Contains(want, resp.StatusCode) {
		err = fmt.Errorf("POST %s: %s: %.512s", u, resp.Status, bytes.TrimSpace(ans))
	}
	return resp.Header, ans, err
}

// legacyTransport is one legacy session: the event stream and its message
// endpoint.
type legacyTransport struct {
	hc      *http.Client
	postURL string
	cancel  context.CancelFunc
	done    chan struct{} // closed when the stream reader ends

	mu      sync.Mutex
	pending map[string]chan []byte
	err     error // why the stream ended
	stray   int   // messages that answered no pending request
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
// event. ctx bounds the opening only: the stream lives until close.
func openLegacy(ctx context.Context, hc *http.Client, sseURL string) (_ *legacyTransport, err error) {
	base, err := url.Parse(sseURL)
	if err != nil {
		return nil, err
	}
	streamCtx, cancel := context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	req, err := http.NewRequestWithContext(streamCtx, http.MethodGet, sseURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s %s: %s", sseURL, resp.Status, resp.Header.Get("Content-Type"), bytes.TrimSpace(b))
	}
	t := &legacyTransport{hc: hc, cancel: cancel, done: make(chan struct{}), pending: map[string]chan []byte{}}
	endpoint := make(chan string, 1)
	go t.readStream(resp.Body, base, endpoint)
	select {
	case t.postURL = <-endpoint:
		if !stop() { // ctx ended: the stream is being cancelled
			t.close()
			return nil, ctx.Err()
		}
		return t, nil
	case <-t.done:
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("stream ended before the endpoint event: %v", t.streamErr())
	}
}

// readStream reads the event stream until it ends: the endpoint event first,
// then messages, each handed to the request waiting for its id.
func (t *legacyTransport) readStream(body io.ReadCloser, base *url.URL, endpoint chan<- string) {
	defer close(t.done)
	defer body.Close()
	sr := bridge.NewEventReader(body, maxMessage)
	fail := func(err error) {
		t.mu.Lock()
		t.err = err
		t.mu.Unlock()
	}
	for {
		ev, err := sr.Next()
		if err != nil {
			fail(err)
			return
		}
		switch ev.Name {
		case "endpoint":
			if endpoint == nil {
				continue
			}
			ep, err := resolveEndpoint(base, string(ev.Data))
			if err != nil {
				fail(err)
				return
			}
			endpoint <- ep
			endpoint = nil
		case "", "message":
			id := answerID(ev.Data)
			t.mu.Lock()
			ch, ok := t.pending[id]
			if ok && id != "" {
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

// notify sends one message to the session's message endpoint and expects
// 202.
func (t *legacyTransport) notify(ctx context.Context, body []byte) error {
	_, _, err := postJSON(ctx, t.hc, t.postURL, body, nil, http.StatusAccepted)
	return err
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
	if err := t.notify(ctx, body); err != nil {
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

// close ends the stream and waits for its reader.
func (t *legacyTransport) close() {
	t.cancel()
	<-t.done
}

// directTransport posts each message to the upstream's Streamable HTTP
// endpoint, with the headers the bridge would send.
type directTransport struct {
	hc              *http.Client
	url             string
	sessionID       string // Mcp-Session-Id, if the upstream issued one
	protocolVersion string // MCP-Protocol-Version, once negotiated
}

func (t *directTransport) post(ctx context.Context, body []byte, want ...int) (http.Header, []byte, error) {
	h := http.Header{"Accept": {"application/json, text/event-stream"}}
	if t.sessionID != "" {
		h.Set("Mcp-Session-Id", t.sessionID)
	}
	if t.protocolVersion != "" {
		h.Set("MCP-Protocol-Version", t.protocolVersion)
	}
	return postJSON(ctx, t.hc, t.url, body, h, want...)
}

func (t *directTransport) request(ctx context.Context, id string, body []byte) ([]byte, error) {
	h, ans, err := t.post(ctx, body, http.StatusOK)
	if err != nil {
		return nil, err
	}
	if t.sessionID == "" {
		t.sessionID = h.Get("Mcp-Session-Id")
	}
	if mt, _, _ := mime.ParseMediaType(h.Get("Content-Type")); mt != "application/json" {
		return nil, fmt.Errorf("POST %s: Content-Type %q, want application/json (is the upstream in -json mode?)", t.url, mt)
	}
	if got := answerID(ans); got != id {
		return nil, fmt.Errorf("answer has id %q, want %s", got, id)
	}
	return ans, nil
}

func (t *directTransport) notify(ctx context.Context, body []byte) error {
	_, _, err := t.post(ctx, body, http.StatusAccepted, http.StatusOK)
	return err
}

func (t *directTransport) close() {}

// openSession opens and initialises a session of the given kind: "bridged"
// (legacy client to the bridge's sse URL) or "direct" (Streamable HTTP to
// the upstream URL).
func openSession(ctx context.Context, hc *http.Client, kind, target string) (*session, error) {
	var tr transport = &directTransport{hc: hc, url: target}
	if kind == "bridged" {
		t, err := openLegacy(ctx, hc, target)
		if err != nil {
			return nil, err
		}
		tr = t
	}
	s := &session{tr: tr}
	if err := s.initialize(ctx); err != nil {
		tr.close()
		return nil, err
	}
	return s, nil
}
