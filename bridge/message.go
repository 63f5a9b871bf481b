package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"
	"unicode/utf8"
)

// The message endpoint, first step of a message's way: POST message_path
// checks what the client sent, finds the session it serves, starts a call
// per message (call.go) and answers 202 once the upstream took them.

// serveMessage serves POST message_path?sessionId=…: one JSON-RPC message
// (or a batch, which is split) for the session's upstream.
func (b *Bridge) serveMessage(w http.ResponseWriter, r *http.Request) {
	ids := r.URL.Query()["sessionId"]
	switch {
	case len(ids) == 0 || ids[0] == "":
		b.refuse(w, http.StatusBadRequest, "bad_request", "missing sessionId query parameter")
		return
	case len(ids) > 1:
		// Which one counts would be up to whoever reads it.
		b.refuse(w, http.StatusBadRequest, "bad_request", "sessionId must be sent once")
		return
	}
	id := ids[0]
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		b.refuse(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json")
		return
	}
	if r.ContentLength > b.cfg.MaxMessageSize {
		b.refuse(w, http.StatusRequestEntityTooLarge, "too_large", "message larger than max_message_size")
		return
	}
	// A body trickled in (slowloris) must not hold the request forever.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := readBody(http.MaxBytesReader(w, r.Body, b.cfg.MaxMessageSize), r.ContentLength, b.cfg.MaxMessageSize)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			b.refuse(w, http.StatusRequestEntityTooLarge, "too_large", "message larger than max_message_size")
			return
		}
		b.refuse(w, http.StatusBadRequest, "bad_request", "reading body: "+err.Error())
		return
	}
	msgs, envs, errMsg := parseMessages(body)
	if errMsg != "" {
		b.refuse(w, http.StatusBadRequest, "bad_request", "invalid message: "+errMsg)
		return
	}
	sess, tracked, err := b.messageTarget(r.Context(), r, id, envs)
	if err != nil {
		b.storeError(w, err)
		return
	}
	id = sess.ID
	b.refreshCredentials(id, r)

	// Every message in flight holds a slot (each is a goroutine and an
	// upstream request), notifications and responses included.
	if !b.acquire(id, len(msgs)) {
		w.Header().Set("Retry-After", "1")
		b.refuse(w, http.StatusServiceUnavailable, "inflight_limit", "too many messages in flight for this session")
		return
	}

	client := b.upstreamHeaders(r)
	metadataURL := b.resourceMetadataURL(r)
	calls := make([]*call, len(msgs))
	for i := range msgs {
		calls[i] = &call{
			sessionID:     id,
			session:       sess,
			msg:           msgs[i],
			env:           envs[i],
			client:        client,
			clientVersion: r.Header.Get("MCP-Protocol-Version"),
			metadataURL:   metadataURL,
			status:        make(chan *upstreamStatus, 1),
		}
		if tracked {
			calls[i].key, calls[i].tracked = string(envs[i].ID), true
		}
		b.startWork()
		go b.forward(calls[i])
	}
	for _, env := range envs {
		b.noteMessage(id, fromClient, env)
	}
	if challenge := awaitAcceptance(r.Context(), calls); challenge != nil {
		b.metrics.refusedFor("unauthorized")
		// The upstream refused the client's credentials: the POST says so,
		// so that the client runs its authorization flow and sends again.
		challenge.write(w)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// awaitAcceptance waits until the upstream took every call, or defaultAcceptWait
// passed (whatever happens later reaches the client on its stream), and
// marks the calls accepted. It returns the challenge of a call the
// upstream refused for the client's credentials before that.
func awaitAcceptance(ctx context.Context, calls []*call) *authChallenge {
	timer := time.NewTimer(defaultAcceptWait)
	defer timer.Stop()
	received := make([]*upstreamStatus, len(calls))
wait:
	for i, c := range calls {
		select {
		case received[i] = <-c.status:
			if received[i] != nil && received[i].challenge != nil {
				// The other messages of a batch go on: their outcomes reach
				// the client on its stream (a client that sends the batch
				// again after its authorization flow may run them twice).
				for _, other := range calls {
					other.accept()
				}
				return received[i].challenge
			}
		case <-timer.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	for i, c := range calls {
		if !c.accept() {
			// Refused meanwhile: its status carries the challenge.
			if received[i] == nil {
				received[i] = <-c.status
			}
			if received[i] != nil && received[i].challenge != nil {
				return received[i].challenge
			}
		}
	}
	return nil
}

// bodyReadTimeout bounds the reading of a POST body.
const bodyReadTimeout = 30 * time.Second

func isInitialize(env Envelope) bool {
	return env.Kind == KindRequest && env.Method == "initialize"
}

// readBody reads a body into a buffer sized once from its announced length
// (-1 if unknown; net/http holds a body to its Content-Length), instead of
// one grown by doubling: a 1 MiB message then costs 1 MiB, not up to 2.
func readBody(r io.Reader, length, limit int64) ([]byte, error) {
	if length < 0 || length > limit {
		return io.ReadAll(r)
	}
	buf := make([]byte, length)
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || (errors.Is(err, io.EOF) && length > 0) {
		// Shorter than announced: an incomplete message is not acted on
		// (RFC 9112 §6.3).
		err = fmt.Errorf("body ended after %d of %d bytes", n, length)
	}
	return buf[:n], err
}

// parseMessages validates a POST body and splits a batch into messages.
func parseMessages(body []byte) ([][]byte, []Envelope, string) {
	if !json.Valid(body) {
		return nil, nil, "body is not valid JSON"
	}
	if !utf8.Valid(body) {
		// JSON between systems is UTF-8 (RFC 8259 §8.1); Go's decoder would
		// pass such bytes on.
		return nil, nil, "body is not valid UTF-8"
	}
	var msgs [][]byte
	if isArray(body) {
		for _, m := range SplitBatch(body) {
			msgs = append(msgs, m)
		}
		if len(msgs) == 0 {
			return nil, nil, "empty batch"
		}
	} else {
		msgs = [][]byte{body}
	}
	envs := make([]Envelope, len(msgs))
	for i, m := range msgs {
		env, err := PeekEnvelope(m)
		if err != nil {
			return nil, nil, err.Error()
		}
		envs[i] = env
	}
	return msgs, envs, ""
}

// upstreamHeaders are the headers that travel upstream on behalf of the
// client: its Authorization, plus the configured header_up fields. Host,
// Origin, Last-Event-ID and Mcp-Session-Id never do.
func (b *Bridge) upstreamHeaders(r *http.Request) http.Header {
	h := http.Header{}
	if v := r.Header.Values("Authorization"); len(v) > 0 {
		h["Authorization"] = v
	}
	if b.cfg.HeaderUp != nil {
		b.cfg.HeaderUp(r, h)
	}
	return h
}
