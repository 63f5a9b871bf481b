package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Notifications of a translated session. MCP 2026-07-28 has no GET stream:
// a client that wants list-changed notifications and resource updates
// holds a subscriptions/listen request open, naming what it wants. For a
// translated session the stream owner holds one, in place of the GET
// stream (pump.go starts it), asking for every list-changed kind the
// upstream offers and for the resources the client subscribed to; what it
// brings goes to the client's mailbox. resources/subscribe and
// unsubscribe change the session's list and make the owner open the
// stream again with it. The revision has no resumption: a new owner, or a
// broken stream, opens a new one.

// maxSubscriptions bounds the resources one session subscribes to.
const maxSubscriptions = 256

// runListen holds the session's subscriptions/listen stream until ctx
// ends, opening it again after it breaks (with the GET stream's backoff).
func (b *Bridge) runListen(ctx context.Context, sess *sessionstore.Session) {
	backoff := pumpMinBackoff
	for ctx.Err() == nil {
		filter := b.listenFilter(ctx, sess)
		if filter == nil {
			return // nothing the upstream would send
		}
		opened := time.Now()
		if b.listenOnce(ctx, sess, filter) || time.Since(opened) >= pumpMaxBackoff {
			backoff = pumpMinBackoff
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, pumpMaxBackoff)
	}
}

// listenFilter is what to listen for: the list-changed kinds the upstream
// offers, and the session's subscriptions if it offers those; nil for
// nothing.
func (b *Bridge) listenFilter(ctx context.Context, sess *sessionstore.Session) map[string]any {
	d, err := b.discover(ctx, b.credentialsFor(sess.ID))
	if err != nil {
		return nil
	}
	var caps struct {
		Tools, Prompts, Resources *struct {
			ListChanged bool `json:"listChanged"`
			Subscribe   bool `json:"subscribe"`
		}
	}
	_ = json.Unmarshal(d.capabilities, &caps)
	filter := map[string]any{}
	if caps.Tools != nil && caps.Tools.ListChanged {
		filter["toolsListChanged"] = true
	}
	if caps.Prompts != nil && caps.Prompts.ListChanged {
		filter["promptsListChanged"] = true
	}
	if caps.Resources != nil && caps.Resources.ListChanged {
		filter["resourcesListChanged"] = true
	}
	if caps.Resources != nil && caps.Resources.Subscribe && len(sess.Subscriptions) > 0 {
		filter["resourceSubscriptions"] = sess.Subscriptions
	}
	if len(filter) == 0 {
		return nil
	}
	return filter
}

// listenOnce holds one listen stream; it reports whether a notification
// came.
func (b *Bridge) listenOnce(ctx context.Context, sess *sessionstore.Session, filter map[string]any) bool {
	params, _ := json.Marshal(map[string]any{"notifications": filter})
	msg := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":"mcp-sse-bridge-listen-%s","method":"subscriptions/listen","params":%s}`, randomID()[:16], params)
	env, err := PeekEnvelope(msg)
	if err != nil {
		return false
	}
	body, header, err := modernRequest(msg, env, sess)
	if err != nil {
		return false
	}
	for k, v := range b.credentialsFor(sess.ID) {
		header[k] = v
	}
	resp, err := b.do(ctx, labelListen, http.MethodPost, sess, header, body, "")
	if err != nil {
		if ctx.Err() == nil {
			b.log.Debug("opening the notification stream", zap.String("session", shortID(sess.ID)), zap.Error(err))
		}
		return false
	}
	defer drain(resp)
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		b.log.Debug("no notification stream", zap.String("session", shortID(sess.ID)), zap.Int("status", resp.StatusCode))
		return false
	}
	got := false
	onMessage := func(msg []byte) bool {
		env, err := PeekEnvelope(msg)
		switch {
		case err != nil || env.Kind == KindResponse:
			return false // the upstream ended the stream (or broke it)
		case env.Method == "notifications/subscriptions/acknowledged":
			return true
		}
		got = true
		return b.relayOther(ctx, sess.ID, msg, env)
	}
	if _, _, _, err := b.relayEvents(resp.Body, sess.ID, onMessage, nil); err != nil && ctx.Err() == nil {
		b.log.Debug("notification stream broke", zap.String("session", shortID(sess.ID)), zap.Error(err))
	}
	return got
}
