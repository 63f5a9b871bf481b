package bridge

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// The second step: a call goes upstream (forward), with the session's
// headers (do); an upstream that lost the session gets a new one (reinit.go).

// JSON-RPC error codes the bridge uses for answers it has to make up.
const (
	codeMethodNotFound = -32601
	codeInvalidParams  = -32602
	codeInternalError  = -32603
)

// maxErrorBody bounds how much of an upstream error body is read.
const maxErrorBody = 64 << 10

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
		b.takeCancellation(ctx, c.sessionID, c.msg)
	}
	isInit := isInitialize(c.env)
	if c.env.Kind == KindRequest && c.env.Method == "server/discover" && b.hidesModernEra(ctx, c) {
		return
	}
	switch {
	case isInit && len(c.msg) > maxKeptInitialize:
		b.refuseInitialize(c)
		return
	case isInit:
		if !neverInitialized(sess) {
			// The client initialises again: answers to what it asked before
			// must not reach it under ids it may use again.
			b.retireRequests(ctx, c.sessionID)
		}
		if d, ok := b.translates(ctx, c.client); ok {
			b.initializeLocally(ctx, c, d)
			return
		}
		// A new upstream session: none of the old one's headers.
		sess.UpstreamSessionID, sess.ProtocolVersion, sess.Translated = "", "", false
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
	if sess.Translated && !isInit {
		// A revived session of such an upstream is translated at once.
		if b.translatedLocally(ctx, c) {
			return
		}
		if sess = b.forwardTranslated(ctx, c, sess); sess == nil {
			return
		}
		// The upstream went back to initialize-based revisions: relayed.
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
		resp, err := b.do(ctx, methodLabel(c.env), http.MethodPost, sess, c.client, c.msg, "")
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
		if attempt == 0 && !isInit && eraChanged(resp.StatusCode, body) {
			if fresh, ok := b.translateFromNow(ctx, c, sess); ok {
				if !b.translatedLocally(ctx, c) && b.forwardTranslated(ctx, c, fresh) != nil {
					b.fail(c, "upstream_error", "the upstream changed protocol revisions twice during the call")
				}
				return
			}
		}
		b.settleRefusal(c, resp, body)
		return
	}
}

// settleRefusal answers a call the upstream answered with an error status
// (body is what it said): a refusal of the client's credentials goes back
// on the waiting POST, anything else is the call's error answer.
func (b *Bridge) settleRefusal(c *call, resp *http.Response, body []byte) {
	if challenge := b.challengeFrom(resp, body, c.metadataURL); challenge != nil && c.refuse() {
		// Not accepted: the client sends the message again with new
		// credentials, under the same id.
		b.untrack(c)
		c.report(&upstreamStatus{code: resp.StatusCode, challenge: challenge})
		return
	}
	c.report(&upstreamStatus{code: resp.StatusCode})
	b.failFromHTTP(c, resp.StatusCode, body)
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

// do sends one upstream request with the session's headers. label names it
// in the metrics (methodLabel of the message a POST carries, labelStream,
// labelDelete): the callers know it, so nothing is parsed again here.
func (b *Bridge) do(ctx context.Context, label, method string, sess *sessionstore.Session, client http.Header, body []byte, lastEventID string) (*http.Response, error) {
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
	switch {
	case sess.Translated:
		req.Header.Set("MCP-Protocol-Version", modernVersion)
	case sess.ProtocolVersion != "":
		req.Header.Set("MCP-Protocol-Version", sess.ProtocolVersion)
	}
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "caddy-mcp-sse-bridge")
	}
	via := b.client
	if method == http.MethodGet || label == labelListen {
		via = b.streamClient // long-lived: not the calls' connections
	}
	resp, err := via.Do(req)
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	b.metrics.upstreamRequest(label, status)
	return resp, err
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
