package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/bridge"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
)

const maxMessage = 16 << 20 // bounds one event or response body

func newHTTPClient() *http.Client { return testenv.NewHTTPClient(4096) } // an idle connection per session

// session is the bench's own MCP client: legacy HTTP+SSE through the
// bridge (POSTs to the endpoint event's URL, answers on the stream) or
// Streamable HTTP straight at the upstream in JSON mode (answers in the
// POST's body). Both share all but that, so the bridged/direct ratio
// measures the bridge and not the clients.
type session struct {
	hc      *http.Client
	postURL string
	header  http.Header // direct only: what the bridge would send
	nextID  int64
	// Legacy only: the event stream.
	cancel context.CancelFunc
	done   chan struct{} // closed when the stream ends
	err    error         // why it ended; read after done
	events chan []byte   // its messages
}

// openSession opens and initialises a session: "bridged" at the bridge's
// sse URL or "direct" at the upstream's.
func openSession(ctx context.Context, hc *http.Client, kind, target string) (*session, error) {
	s := &session{hc: hc, postURL: target}
	if kind == "direct" {
		s.header = http.Header{"Accept": {"application/json, text/event-stream"}}
	} else if err := s.openStream(ctx, target); err != nil {
		return nil, err
	}
	res, err := s.call(ctx, "initialize", []byte(`{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"mcp-bench","version":"1.0.0"}}`))
	var r struct{ ProtocolVersion string }
	if err == nil && (json.Unmarshal(res, &r) != nil || r.ProtocolVersion == "") {
		err = fmt.Errorf("no protocolVersion in result %.200s", res)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("initialize: %w", err)
	}
	if s.header != nil {
		s.header.Set("MCP-Protocol-Version", r.ProtocolVersion)
	}
	if _, err := s.post(ctx, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), http.StatusAccepted, http.StatusOK); err != nil {
		s.close()
		return nil, fmt.Errorf("notifications/initialized: %w", err)
	}
	return s, nil
}

// openStream opens the event stream at sseURL and waits for its endpoint
// event; ctx bounds the opening, not the stream.
func (s *session) openStream(ctx context.Context, sseURL string) error {
	streamCtx, cancel := context.WithCancel(context.Background())
	defer context.AfterFunc(ctx, cancel)()
	req, _ := http.NewRequestWithContext(streamCtx, http.MethodGet, sseURL, nil) // our own URL
	req.Header.Set("Accept", "text/event-stream")
	resp, err := s.hc.Do(req)
	if err == nil && resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		err = fmt.Errorf("GET %s: %s: %s", sseURL, resp.Status, bytes.TrimSpace(b))
	}
	if err != nil {
		cancel()
		return err
	}
	s.cancel, s.done, s.events = cancel, make(chan struct{}), make(chan []byte, 1)
	endpoint := make(chan string, 1)
	go s.readStream(streamCtx, resp.Body, req.URL, endpoint)
	select {
	case s.postURL = <-endpoint:
		return nil
	case <-s.done:
		return fmt.Errorf("stream ended before the endpoint event: %w", s.err)
	}
}

// readStream reads the stream until it ends: the endpoint event, then
// messages for request to pick its answer from.
func (s *session) readStream(ctx context.Context, body io.ReadCloser, base *url.URL, endpoint chan<- string) {
	defer close(s.done)
	defer body.Close()
	sr := bridge.NewEventReader(body, maxMessage)
	for {
		ev, err := sr.Next()
		if err != nil {
			s.err = err
			return
		}
		switch ev.Name {
		case "endpoint":
			if u, err := base.Parse(strings.TrimSpace(string(ev.Data))); err == nil && endpoint != nil {
				endpoint <- u.String()
				endpoint = nil
			}
		case "", "message":
			select {
			case s.events <- ev.Data:
			case <-ctx.Done():
			}
		}
	}
}

func (s *session) close() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
}

// call sends a request and returns its result.
func (s *session) call(ctx context.Context, method string, params []byte) (json.RawMessage, error) {
	s.nextID++
	id := strconv.FormatInt(s.nextID, 10)
	// Appended, not marshalled: the client's CPU is measured too.
	body := make([]byte, 0, 64+len(method)+len(params))
	body = append(append(append(body, `{"jsonrpc":"2.0","id":`...), id...), `,"method":"`...)
	body = append(append(append(append(body, method...), `","params":`...), params...), '}')
	ans, err := s.request(ctx, id, body)
	if err != nil {
		return nil, err
	}
	var resp struct{ Result json.RawMessage }
	if err := json.Unmarshal(ans, &resp); err != nil || resp.Result == nil {
		return nil, fmt.Errorf("%s: no result in the answer %.300s", method, ans)
	}
	return resp.Result, nil
}

// request sends a request and returns the answer: the POST's body (direct)
// or the stream's message with its id (legacy; one request at a time).
func (s *session) request(ctx context.Context, id string, body []byte) ([]byte, error) {
	if s.done == nil {
		ans, err := s.post(ctx, body, http.StatusOK)
		if got := answerID(ans); err == nil && got != id {
			err = fmt.Errorf("answer has id %q, want %s (is the upstream in -json mode?)", got, id)
		}
		return ans, err
	}
	if _, err := s.post(ctx, body, http.StatusAccepted); err != nil {
		return nil, err
	}
	for {
		select {
		case ans := <-s.events:
			if answerID(ans) == id {
				return ans, nil
			}
		case <-s.done:
			return nil, fmt.Errorf("waiting for the answer to id %s: stream ended: %w", id, s.err)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the answer to id %s: %w", id, ctx.Err())
		}
	}
}

// post returns the answer's body if its status is one of want.
func (s *session) post(ctx context.Context, body []byte, want ...int) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.postURL, bytes.NewReader(body)) // a parsed URL
	maps.Copy(req.Header, s.header)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	ans, err := io.ReadAll(io.LimitReader(resp.Body, maxMessage))
	if err == nil && !slices.Contains(want, resp.StatusCode) {
		err = fmt.Errorf("POST %s: %s: %.512s", s.postURL, resp.Status, bytes.TrimSpace(ans))
	}
	return ans, err
}

// answerID returns the JSON text of a response's id, "" for other messages.
func answerID(msg []byte) string {
	env, err := bridge.PeekEnvelope(msg)
	if err != nil || env.Kind != bridge.KindResponse {
		return ""
	}
	return string(env.ID)
}

func echoParams(message string) []byte {
	b, _ := json.Marshal(map[string]any{"name": "echo", "arguments": map[string]string{"message": message}})
	return b
}

// checkEcho checks that an echo's result holds msg.
func checkEcho(res json.RawMessage, msg []byte) error {
	if !bytes.Contains(res, msg) {
		return fmt.Errorf("echo returned %.200s, want %.40q…", res, msg)
	}
	return nil
}
