package bridge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// JSON-RPC error codes the bridge uses for answers it has to make up.
const (
	codeInternalError = -32603
)

// maxErrorBody bounds how much of an upstream error body is read.
const maxErrorBody = 64 << 10

// upstreamStatus is what a legacy POST learns about its upstream request.
type upstreamStatus struct {
	code int
	// challenge: 401/403 with WWW-Authenticate, passed back on the POST.
	challenge *authChallenge
}

// call is one client message on its way upstream.
type call struct {
	sessionID string
	session   *sessionstore.Session
	msg       []byte
	env       Envelope
	client    http.Header
	// clientVersion is the MCP-Protocol-Version the client sent, for a
	// revived session's minimal initialize.
	clientVersion string
	// metadataURL is the bridge's protected-resource metadata URL for the
	// client's stream, named in a challenge passed back to it.
	metadataURL string
	status      chan *upstreamStatus
	reported    bool
	// post is where the client's POST stands: a refusal of the client's
	// credentials goes back on the POST while it waits, and a call whose
	// POST was accepted (202) must be answered on the stream instead.
	post atomic.Int32
	// answered is set once the request's answer is settled here; the
	// watcher of a resumed stream reads it from another goroutine.
	answered atomic.Bool
	// key names the request in the store's requests in flight; tracked is
	// set once it is recorded there.
	key     string
	tracked bool
}

// track records a request in flight, so that another replica answers it if
// this one dies. Without the record (store trouble) the request still goes.
// It reports false when a copy of the request is in flight already and
// this one is not to be forwarded (see settleDuplicate).
func (b *Bridge) track(ctx context.Context, c *call, sess *sessionstore.Session) bool {
	if c.tracked {
		return true // a retry after re-initialisation keeps its record
	}
	c.key = string(c.env.ID)
	for {
		err := b.store.TrackRequest(ctx, c.sessionID, c.key, sessionstore.Request{
			ID:                c.env.ID,
			Replica:           b.cfg.ReplicaID,
			UpstreamSessionID: sess.UpstreamSessionID,
		})
		switch {
		case err == nil:
			c.tracked = true
			return true
		case errors.Is(err, sessionstore.ErrExists):
			if !b.settleDuplicate(ctx, c) {
				return false
			}
		default:
			b.log.Warn("recording a request in flight", zap.String("session", shortID(c.sessionID)), zap.Error(err))
			return true
		}
	}
}

// Where a call's POST stands (call.post).
const (
	postWaiting int32 = iota
	postAccepted
	postRefused
)

// accept marks the call's POST as answered 202; it reports false when the
// call was refused first (its challenge must answer the POST).
func (c *call) accept() bool {
	return c.post.CompareAndSwap(postWaiting, postAccepted) || c.post.Load() == postAccepted
}

// refuse marks the call as refused by the upstream while its POST waits;
// it reports false when the POST was accepted already.
func (c *call) refuse() bool { return c.post.CompareAndSwap(postWaiting, postRefused) }

// untrack drops the record of a request that was not accepted.
func (b *Bridge) untrack(c *call) {
	if c.tracked {
		_, _ = b.store.ClaimRequest(b.background, c.sessionID, c.key)
		c.tracked = false
	}
}

func (c *call) report(st *upstreamStatus) {
	if !c.reported {
		c.reported = true
		c.status <- st
	}
}

// forward sends one client message upstream and relays everything the
// upstream answers to the session's mailbox.
func (b *Bridge) forward(c *call) {
	defer b.endWork()
	defer c.report(nil)
	defer b.release(c.sessionID)
	ctx := b.background
	// The session as the POST loaded it; each message works on its own copy.
	sessCopy := *c.session
	sess := &sessCopy
	if c.env.Kind == KindNotification && c.env.Method == "notifications/cancelled" {
		b.noteCancelled(c.sessionID, c.msg)
	}
	isInit := isInitialize(c.env)
	switch {
	case isInit:
		if !neverInitialized(sess) {
			// The client initialises again: answers to what it asked before
			// must not reach it under ids it may use again.
			b.retireRequests(ctx, c.sessionID)
		}
		// A new upstream session: none of the old one's headers.
		sess.UpstreamSessionID, sess.ProtocolVersion = "", ""
	case c.env.Kind == KindRequest && neverInitialized(sess):
		// A returning client with nothing to adopt, or whose session was
		// lost: give it an upstream session as it was initialised.
		// Should that fail, the message goes as it is: the upstream's own
		// answer tells the client best what is wrong.
		if revived, err := b.revive(ctx, sess, c.client, c.clientVersion); err == nil {
			sess = revived
		} else {
			b.log.Warn("opening an upstream session for a returning client",
				zap.String("session", shortID(c.sessionID)), zap.Error(err))
		}
	}
	for attempt := 0; ; attempt++ {
		if c.env.Kind == KindRequest {
			if !isInit {
				sess = b.awaitStream(ctx, sess)
			}
			if !b.track(ctx, c, sess) {
				return
			}
		}
		sent := time.Now()
		resp, err := b.do(ctx, http.MethodPost, sess, c.client, c.msg, "")
		if err != nil {
			b.failUpstream(c, "forwarding", err)
			return
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			c.report(&upstreamStatus{code: resp.StatusCode})
			b.relayResponse(ctx, sess, c, resp, isInit)
			b.metrics.upstreamTook(methodLabel(c.env), time.Since(sent))
			if c.env.Kind == KindNotification && c.env.Method == "notifications/initialized" {
				b.markInitialized(ctx, c.sessionID)
			}
			return
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		if attempt == 0 && !isInit && upstreamSessionLost(sess, resp.StatusCode, body) {
			b.log.Info("upstream session lost, re-initialising",
				zap.String("session", shortID(c.sessionID)), zap.Int("status", resp.StatusCode))
			fresh, err := b.reinitialize(ctx, sess, c.client)
			if err != nil {
				b.failUpstream(c, "re-initialising the lost upstream session", err)
				return
			}
			sess = fresh
			continue
		}
		if challenge := b.challengeFrom(resp, body, c.metadataURL); challenge != nil && c.refuse() {
			// Not accepted: the client sends the message again with new
			// credentials, under the same id.
			b.untrack(c)
			c.report(&upstreamStatus{code: resp.StatusCode, challenge: challenge})
			return
		}
		c.report(&upstreamStatus{code: resp.StatusCode})
		b.failFromHTTP(c, resp.StatusCode, body)
		return
	}
}

// upstreamSessionLost recognises an upstream that no longer knows the
// session: 404 as the spec says, or the 400 "no valid session" that real
// servers send.
func upstreamSessionLost(sess *sessionstore.Session, status int, body []byte) bool {
	if sess.UpstreamSessionID == "" {
		return false
	}
	return status == http.StatusNotFound ||
		(status == http.StatusBadRequest && bytes.Contains(bytes.ToLower(body), []byte("session")))
}

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
			b.metrics.upstreamFailed("invalid_response")
			b.fail(c, "upstream_error", "upstream response larger than max_message_size")
			return
		case !json.Valid(body):
			if len(bytes.TrimSpace(body)) > 0 {
				b.metrics.upstreamFailed("invalid_response")
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
	if c.env.Kind == KindRequest && !c.answered.Load() {
		b.metrics.upstreamFailed("ended_without_answer")
		b.fail(c, "no_answer", "upstream ended the request without a response")
	}
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
	sess, err := b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		s.UpstreamSessionID = upstreamSessionID
		s.ProtocolVersion = result.Result.ProtocolVersion
		s.Initialize = c.msg
		s.Initialized = false
		s.StreamLastEventID = ""
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

// do sends one upstream request with the session's headers.
func (b *Bridge) do(ctx context.Context, method string, sess *sessionstore.Session, client http.Header, body []byte, lastEventID string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	target := sess.Upstream // the session's own upstream (the janitor reaps any bridge's sessions)
	if target == "" {
		target = b.cfg.Upstream.String()
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range client {
		req.Header[k] = v
	}
	switch method {
	case http.MethodPost:
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
	case http.MethodGet:
		req.Header.Set("Accept", "text/event-stream")
	}
	if sess.UpstreamSessionID != "" {
		req.Header.Set("Mcp-Session-Id", sess.UpstreamSessionID)
	}
	if sess.ProtocolVersion != "" {
		req.Header.Set("MCP-Protocol-Version", sess.ProtocolVersion)
	}
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "caddy-mcp-sse-bridge")
	}
	via := b.client
	if method == http.MethodGet {
		via = b.streamClient
	}
	resp, err := via.Do(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	b.metrics.upstreamRequest(upstreamMethodLabel(method, body), status)
	return resp, err
}

// upstreamMethodLabel is the method label of an upstream request.
func upstreamMethodLabel(method string, body []byte) string {
	switch method {
	case http.MethodGet:
		return "stream"
	case http.MethodDelete:
		return "delete"
	}
	env, err := PeekEnvelope(body)
	if err != nil {
		return "other"
	}
	return methodLabel(env)
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
	if b.background.Err() == nil {
		b.log.Warn("upstream request failed", zap.String("session", shortID(c.sessionID)), zap.String("method", methodLabel(c.env)),
			zap.String("while", doing), zap.Error(err))
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		b.metrics.upstreamFailed("timeout")
		b.fail(c, "upstream_timeout", "upstream timed out ("+doing+")")
	case errors.As(err, &netErr):
		b.metrics.upstreamFailed("unreachable")
		b.fail(c, "upstream_unreachable", "upstream unreachable ("+doing+")")
	default:
		b.metrics.upstreamFailed("unreachable")
		b.fail(c, "upstream_unreachable", "upstream failed ("+doing+")")
	}
}

// failFromHTTP answers a request the upstream refused with an HTTP error:
// with the upstream's own JSON-RPC error when it sent one (re-keyed to the
// request's id; servers put null there), else with a made-up one.
func (b *Bridge) failFromHTTP(c *call, status int, body []byte) {
	b.metrics.upstreamFailed("http_status")
	b.log.Warn("upstream request failed", zap.String("session", shortID(c.sessionID)), zap.String("method", methodLabel(c.env)),
		zap.String("reason", "http_status"), zap.Int("status", status))
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

// noteCancelled remembers a request id the client cancelled.
func (b *Bridge) noteCancelled(sessionID string, msg []byte) {
	var n struct {
		Params struct {
			RequestID json.RawMessage `json:"requestId"`
		} `json:"params"`
	}
	if json.Unmarshal(msg, &n) != nil || len(n.Params.RequestID) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.cancelled[sessionID]
	if set == nil {
		set = make(map[string]struct{})
		b.cancelled[sessionID] = set
	}
	if len(set) < b.cfg.MaxInflight {
		set[cancelKey(n.Params.RequestID)] = struct{}{}
	}
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

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// markInitialized records that the upstream accepted the client's
// notifications/initialized and tells the stream owner to open the upstream
// GET stream.
func (b *Bridge) markInitialized(ctx context.Context, id string) {
	if _, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		s.Initialized = true
		return nil
	}); err != nil {
		b.log.Warn("recording initialization", zap.String("session", shortID(id)), zap.Error(err))
		return
	}
	b.signalUpstreamSession(ctx, id)
}
