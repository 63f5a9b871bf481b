package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// The last step: what reaches the client's mailbox. A request's answer is
// appended exactly once (answer), or made up when the upstream failed
// (fail and its kin); other messages are delivered as they come; appends
// are retried while the mailbox is full or the store away.

// answer delivers the one answer to a client request: exactly once, even
// when another replica has claimed the request meanwhile (then it answers).
// A request the client cancelled gets no answer.
func (b *Bridge) answer(c *call, msg []byte) {
	if c.answered.Swap(true) {
		return
	}
	if b.wasCancelled(c.sessionID, c.env.ID) {
		if c.tracked {
			_, _ = b.store.ClaimRequest(b.background, c.sessionID, c.key)
		}
		return
	}
	if !c.tracked {
		b.deliver(c.sessionID, msg)
		return
	}
	data := oneLine(msg)
	b.retryAppend(c.sessionID, func() error {
		done, err := b.store.FinishRequest(b.background, c.sessionID, c.key, sessionstore.Message{Data: data})
		if err == nil && !done {
			b.log.Debug("another replica answered the request", zap.String("session", shortID(c.sessionID)))
		}
		return err
	})
}

// fail answers a client request with a JSON-RPC error carrying its id, unless
// the client cancelled it. Failures of notifications and responses are only
// logged: there is nobody to answer.
func (b *Bridge) fail(c *call, reason, message string) {
	if b.background.Err() != nil {
		// Cut short by a shutdown: its record (with the upstream event id)
		// is left to the replica that takes over.
		b.log.Info("request left to another replica", zap.String("session", shortID(c.sessionID)), zap.String("reason", message))
		return
	}
	if c.env.Kind != KindRequest {
		b.log.Warn("upstream did not take a client message",
			zap.String("session", shortID(c.sessionID)), zap.String("method", c.env.Method), zap.String("reason", message))
		return
	}
	b.metrics.errorAnswered(reason)
	b.answer(c, errorMessage(c.env.ID, codeInternalError, message))
}

// failUpstream answers a request whose upstream exchange failed with what
// happened, in words that name no address or internal detail; those go to
// the log.
func (b *Bridge) failUpstream(c *call, doing string, err error) {
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		b.upstreamFailed(c, "timeout", zap.String("while", doing), zap.Error(err))
		b.fail(c, "upstream_timeout", "upstream timed out ("+doing+")")
	case errors.As(err, &netErr):
		b.upstreamFailed(c, "unreachable", zap.String("while", doing), zap.Error(err))
		b.fail(c, "upstream_unreachable", "upstream unreachable ("+doing+")")
	default:
		b.upstreamFailed(c, "unreachable", zap.String("while", doing), zap.Error(err))
		b.fail(c, "upstream_unreachable", "upstream failed ("+doing+")")
	}
}

// upstreamFailed counts an upstream failure and logs it, with what the
// client is not told (addresses, causes); a replica shutting down cuts
// requests short on purpose, and says nothing.
func (b *Bridge) upstreamFailed(c *call, reason string, details ...zap.Field) {
	b.metrics.upstreamFailed(reason)
	if b.background.Err() != nil {
		return
	}
	fields := append([]zap.Field{zap.String("session", shortID(c.sessionID)), zap.String("method", methodLabel(c.env)),
		zap.String("reason", reason)}, details...)
	b.log.Warn("upstream request failed", fields...)
}

// failFromHTTP answers a request the upstream refused with an HTTP error:
// with the upstream's own JSON-RPC error when it sent one (re-keyed to the
// request's id; servers put null there), else with a made-up one.
func (b *Bridge) failFromHTTP(c *call, status int, body []byte) {
	b.upstreamFailed(c, "http_status", zap.Int("status", status))
	if c.env.Kind == KindRequest && json.Valid(body) && !isArray(body) {
		if env, err := PeekEnvelope(body); err == nil && env.Kind == KindResponse {
			if e := env.ErrorMember(body); e != nil {
				b.metrics.errorAnswered("upstream_error")
				b.answer(c, errorResponse(c.env.ID, e))
				return
			}
		}
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	msg := fmt.Sprintf("upstream answered HTTP %d", status)
	if text != "" {
		msg += ": " + text
	}
	b.fail(c, "upstream_error", msg)
}

// takeCancellation acts on a client's notifications/cancelled: the request
// it names is remembered as cancelled here (noteCancelled), its record is
// claimed whichever replica forwards it (claimCancelled), and a translated
// call forwarded here has its upstream stream closed at once
// (cancelTranslated).
func (b *Bridge) takeCancellation(ctx context.Context, sessionID string, msg []byte) {
	requestID := cancelledRequest(msg)
	if requestID == nil {
		return
	}
	b.noteCancelled(sessionID, requestID)
	b.claimCancelled(ctx, sessionID, requestID)
	b.cancelTranslated(sessionID, requestID)
}

// noteCancelled remembers a request id the client cancelled.
func (b *Bridge) noteCancelled(sessionID string, requestID json.RawMessage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.cancelled[sessionID]
	if set == nil {
		set = make(map[string]struct{})
		b.cancelled[sessionID] = set
	}
	if len(set) < b.cfg.MaxInflight {
		set[cancelKey(requestID)] = struct{}{}
	}
}

// claimCancelled removes the record of the cancelled request requestID,
// whichever replica forwards it: an answer that comes anyway is then
// dropped by whichever replica relays it (it finds no record to finish),
// and a translated call forwarded by another replica sees its record gone
// and closes its upstream stream (cancellable), which is how 2026-07-28
// cancels.
func (b *Bridge) claimCancelled(ctx context.Context, sessionID string, requestID json.RawMessage) {
	reqs, err := b.store.ListRequests(ctx, sessionID)
	if err != nil {
		return
	}
	for key, r := range reqs {
		if sameID(r.ID, requestID) {
			if _, err := b.store.ClaimRequest(ctx, sessionID, key); err != nil {
				b.log.Debug("claiming a cancelled request", zap.String("session", shortID(sessionID)), zap.Error(err))
			}
		}
	}
}

// cancelledRequest is the id a notifications/cancelled names, nil if none.
func cancelledRequest(msg []byte) json.RawMessage {
	var n struct {
		Params struct {
			RequestID json.RawMessage `json:"requestId"`
		} `json:"params"`
	}
	if json.Unmarshal(msg, &n) != nil || len(n.Params.RequestID) == 0 {
		return nil
	}
	return n.Params.RequestID
}

// cancelKey is a fixed-size stand-in for a request id, so that what is
// remembered per cancellation stays small whatever the id's length.
func cancelKey(id []byte) string {
	sum := sha256.Sum256(id)
	return string(sum[:16])
}

func (b *Bridge) wasCancelled(sessionID string, id json.RawMessage) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.cancelled[sessionID]
	if _, ok := set[cancelKey(id)]; ok {
		delete(set, cancelKey(id))
		return true
	}
	return false
}

// deliver appends a message for the client to the session's mailbox.
func (b *Bridge) deliver(sessionID string, data []byte) {
	data = oneLine(data)
	b.retryAppend(sessionID, func() error {
		_, err := b.store.Append(b.background, sessionID, sessionstore.Message{Data: data})
		return err
	})
}

// retryAppend runs an append until it succeeds. A full mailbox or a store
// failure is retried with backoff for up to the session TTL (the stream may
// be catching up, the store may be back); a session that is gone ends it.
func (b *Bridge) retryAppend(sessionID string, appendOnce func() error) {
	backoff := 10 * time.Millisecond
	deadline := time.Now().Add(b.cfg.SessionTTL)
	for {
		err := appendOnce()
		switch {
		case err == nil:
			return
		case errors.Is(err, sessionstore.ErrNotFound):
			b.log.Debug("dropping a message for a session that is gone", zap.String("session", shortID(sessionID)))
			return
		case time.Now().After(deadline) || b.background.Err() != nil:
			b.log.Error("message for the client lost", zap.String("session", shortID(sessionID)), zap.Error(err))
			return
		}
		select {
		case <-time.After(backoff):
		case <-b.background.Done():
		}
		backoff = min(2*backoff, time.Second)
	}
}
