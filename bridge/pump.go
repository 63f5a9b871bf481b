package bridge

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Pace of the upstream GET stream's reconnection when the upstream gives no
// retry hint: it doubles while streams bring nothing, and a stream that
// delivered something or stayed open for pumpMaxBackoff resets it. The
// stream is kept for as long as the session lives.
const (
	pumpMinBackoff = 500 * time.Millisecond
	pumpMaxBackoff = 30 * time.Second
)

// upstreamPump relays the session's upstream GET stream (server-initiated
// requests and notifications) to its mailbox. One per session, run by the
// stream owner.
type upstreamPump struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *upstreamPump) stop() {
	p.cancel()
	<-p.done
}

func (b *Bridge) startPump(parent context.Context, id string) *upstreamPump {
	ctx, cancel := context.WithCancel(parent)
	p := &upstreamPump{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		b.runPump(ctx, id)
	}()
	return p
}

func (b *Bridge) runPump(ctx context.Context, id string) {
	var (
		lastID  string
		backoff = pumpMinBackoff
	)
	for ctx.Err() == nil {
		sess, err := b.store.Get(ctx, id)
		if err != nil || !sess.Initialized {
			return
		}
		if sess.Translated {
			b.runListen(ctx, sess) // no GET stream in that revision
			return
		}
		if lastID == "" {
			// After a takeover: resume where the previous owner stopped.
			lastID = sess.StreamLastEventID
		}
		opened := time.Now()
		if lastID != "" {
			b.metrics.resumed("stream")
		}
		resp, err := b.do(ctx, labelStream, http.MethodGet, sess, b.credentialsFor(id), nil, lastID)
		if ctx.Err() == nil {
			// Connected, refused or unreachable: either way requests need
			// not wait for this stream any longer.
			b.markStreamReady(ctx, id, sess.UpstreamSessionID)
		}
		var (
			progressed bool
			retry      time.Duration
		)
		if err == nil {
			var keep bool
			progressed, retry, lastID, keep = b.pumpOnce(ctx, sess, resp, lastID)
			if !keep {
				return
			}
		}
		switch {
		case retry > 0:
			backoff = retry // the server's own pace
		case progressed || time.Since(opened) >= pumpMaxBackoff:
			backoff = pumpMinBackoff
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		if retry == 0 {
			backoff = min(2*backoff, pumpMaxBackoff)
		}
	}
}

// pumpOnce relays one upstream GET response. It reports whether a message
// came, the retry hint, the stream's last event id, and whether to go on
// (false when the upstream has no GET stream for us: 405, or 404 for a
// session that is gone, which the next POST re-initialises and signals).
func (b *Bridge) pumpOnce(ctx context.Context, sess *sessionstore.Session, resp *http.Response, lastID string) (bool, time.Duration, string, bool) {
	defer drain(resp)
	id := sess.ID
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case resp.StatusCode == http.StatusOK && mt == "text/event-stream":
	case resp.StatusCode == http.StatusConflict, resp.StatusCode >= 500:
		// A previous GET is still open upstream, or a passing fault.
		return false, 0, lastID, true
	default:
		if resp.StatusCode != http.StatusMethodNotAllowed {
			b.log.Debug("no upstream GET stream", zap.String("session", shortID(id)), zap.Int("status", resp.StatusCode))
		}
		return false, 0, lastID, false
	}
	onMessage := func(msg []byte) bool {
		env, err := PeekEnvelope(msg)
		if err != nil {
			b.log.Debug("dropping an invalid upstream message", zap.String("session", shortID(id)), zap.Error(err))
			return false
		}
		return b.relayOther(ctx, id, msg, env)
	}
	onEventID := func(eventID string) { b.recordStreamEventID(ctx, id, sess.UpstreamSessionID, eventID) }
	last, retry, got, err := b.relayEvents(resp.Body, id, onMessage, onEventID)
	if err != nil && ctx.Err() == nil {
		b.log.Debug("upstream GET stream broke", zap.String("session", shortID(id)), zap.Error(err))
	}
	if last != "" {
		lastID = last
	}
	return got, retry, lastID, true
}

// recordStreamEventID keeps the upstream GET stream's position in the store
// for a future owner.
func (b *Bridge) recordStreamEventID(ctx context.Context, id, upstreamSessionID, eventID string) {
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.UpstreamSessionID != upstreamSessionID {
			return errStale
		}
		s.StreamLastEventID = eventID
		return nil
	})
	if err != nil && !errors.Is(err, errStale) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Debug("recording the upstream GET stream position", zap.String("session", shortID(id)), zap.Error(err))
	}
}

// streamReadyMark is the Session.StreamReadyFor value for an upstream session.
func streamReadyMark(upstreamSessionID string) string { return "s:" + upstreamSessionID }

func (b *Bridge) markStreamReady(ctx context.Context, id, upstreamSessionID string) {
	mark := streamReadyMark(upstreamSessionID)
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.UpstreamSessionID != upstreamSessionID || s.StreamReadyFor == mark {
			return errStale
		}
		s.StreamReadyFor = mark
		return nil
	})
	if err != nil && !errors.Is(err, errStale) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Debug("marking the upstream GET stream ready", zap.String("session", shortID(id)), zap.Error(err))
	}
}

var errStale = errors.New("stale update")

// streamReadyWait bounds how long a request waits for the owner to connect
// the upstream GET stream after (re)initialisation.
const streamReadyWait = 3 * time.Second

// awaitStream holds a request until the session's upstream GET stream is
// connected, so that an upstream in JSON-response mode has somewhere to send
// the requests it makes of the client while serving this one. Only the first
// requests of an upstream session wait, and only while a stream owner lives.
func (b *Bridge) awaitStream(ctx context.Context, sess *sessionstore.Session) *sessionstore.Session {
	deadline := time.Now().Add(streamReadyWait)
	for sess.Initialized && sess.StreamReadyFor != streamReadyMark(sess.UpstreamSessionID) &&
		sess.Owner != "" && sess.OwnerLeaseUntil.After(b.now()) && time.Now().Before(deadline) {
		if !sleepCtx(ctx, 10*time.Millisecond) {
			break
		}
		next, err := b.store.Get(ctx, sess.ID)
		if err != nil {
			break
		}
		sess = next
	}
	return sess
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}
