package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// The third step: the upstream's answer to a call is relayed (event
// streams and their resumption: resume.go).

// relayResponse relays a 2xx upstream answer: a JSON body, an event stream,
// or nothing (for notifications and responses).
func (b *Bridge) relayResponse(ctx context.Context, sess *sessionstore.Session, c *call, resp *http.Response, isInit bool) {
	defer resp.Body.Close()
	upstreamSessionID := resp.Header.Get("Mcp-Session-Id")
	onMessage := func(msg []byte, resumed bool) bool {
		env, err := PeekEnvelope(msg)
		if err != nil {
			b.log.Debug("dropping an invalid upstream message", zap.String("session", shortID(c.sessionID)), zap.Error(err))
			return false
		}
		// On the request's own stream a response is its answer (whatever
		// the upstream made of its id); a resumed stream may replay others.
		if env.Kind == KindResponse && c.env.Kind == KindRequest && (!resumed || answersCall(env, c)) {
			if isInit {
				if err := b.recordInitialize(ctx, c, upstreamSessionID, msg, env); err != nil {
					b.log.Warn("recording initialize", zap.String("session", shortID(c.sessionID)), zap.Error(err))
				}
			}
			if !sess.Translated && clientSetting(c.env.Method) && env.ErrorMember(msg) == nil {
				b.recordSetting(ctx, c) // for the next upstream session (settings.go)
			}
			if sess.Translated && c.env.Method == "tools/list" {
				b.params.learn(msg) // the tools' argument headers (paramheaders.go)
			}
			if sess.Translated && inputRequired(msg) {
				// Not the answer yet: the client is asked, and the call
				// sent again with what it answers (inputs.go).
				c.inputRequired = append([]byte(nil), msg...)
				return true
			}
			// The response on a request's own stream answers that request;
			// give it the client's id byte for byte.
			b.noteMessage(c.sessionID, toClient, env)
			b.answer(c, ReplaceID(msg, env, c.env.ID))
			return true
		}
		return b.relayOther(ctx, c.sessionID, msg, env)
	}
	// Every event id, priming events' included, is where another replica
	// would resume this stream, should this one die before the response.
	onEventID := func(eventID string) {
		if !c.tracked || c.answered.Load() {
			return
		}
		if err := b.store.SetRequestEventID(ctx, c.sessionID, c.key, eventID); err != nil {
			b.log.Debug("recording the upstream event id", zap.String("session", shortID(c.sessionID)), zap.Error(err))
		}
	}

	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case mt == "text/event-stream":
		b.relayStream(ctx, sess, c.client, resp.Body, "", b.answeredCheck(c), onMessage, onEventID)
	case mt == "application/json":
		body, err := readBody(io.LimitReader(resp.Body, b.cfg.MaxMessageSize+1), resp.ContentLength, b.cfg.MaxMessageSize)
		switch {
		case err != nil:
			b.failUpstream(c, "reading the response", err)
			return
		case int64(len(body)) > b.cfg.MaxMessageSize:
			b.upstreamFailed(c, "invalid_response", zap.String("error", "response larger than max_message_size"))
			b.fail(c, "upstream_error", "upstream response larger than max_message_size")
			return
		case !json.Valid(body):
			if len(bytes.TrimSpace(body)) > 0 {
				b.upstreamFailed(c, "invalid_response", zap.String("error", "response is not valid JSON"))
				b.fail(c, "upstream_error", "upstream response is not valid JSON")
				return
			}
		case isArray(body):
			for _, m := range SplitBatch(body) {
				onMessage(m, false)
			}
		default:
			onMessage(body, false)
		}
	}
	if c.env.Kind == KindRequest && !c.answered.Load() && c.inputRequired == nil {
		b.upstreamFailed(c, "ended_without_answer")
		b.fail(c, "no_answer", "upstream ended the request without a response")
	}
}

// maxKeptInitialize bounds a client's initialize. The bridge keeps it in
// the session record, which every POST of the session may load, and per
// caller for initialize_ttl, and stamps its capabilities on every request
// of a translated session: a large one would cost at each of them. Real
// clients send a few hundred bytes.
const maxKeptInitialize = 64 << 10

// refuseInitialize answers an initialize over maxKeptInitialize with a
// JSON-RPC error; nothing goes upstream and the session stays as it was.
func (b *Bridge) refuseInitialize(c *call) {
	c.report(&upstreamStatus{code: http.StatusAccepted})
	b.metrics.errorAnswered("initialize_too_large")
	b.answer(c, errorMessage(c.env.ID, codeInvalidParams, fmt.Sprintf("initialize larger than %d KiB", maxKeptInitialize>>10)))
}

// recordInitialize stores what the initialize exchange negotiated, before the
// client sees the result (its next POST needs it).
func (b *Bridge) recordInitialize(ctx context.Context, c *call, upstreamSessionID string, resp []byte, env Envelope) error {
	if env.ErrorMember(resp) != nil {
		return nil
	}
	var result struct {
		Result struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"result"`
	}
	if err := json.Unmarshal(resp, &result); err != nil {
		return fmt.Errorf("decoding initialize result: %w", err)
	}
	b.sessionCache.drop(c.sessionID)
	sess, err := b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		s.UpstreamSessionID = upstreamSessionID
		s.ProtocolVersion = result.Result.ProtocolVersion
		s.Initialize = c.msg
		s.Initialized = false
		s.StreamLastEventID = ""
		forgetSettings(s) // the client starts over
		return nil
	})
	if err != nil {
		return err
	}
	// Kept beyond the session, to revive the caller's next lost session.
	if err := b.store.RememberInitialize(ctx, sess.Fingerprint, sess.Upstream, c.msg, b.cfg.InitializeTTL); err != nil {
		b.log.Debug("remembering the caller's initialize", zap.String("session", shortID(c.sessionID)), zap.Error(err))
	}
	return nil
}
