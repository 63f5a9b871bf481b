package bridge

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Control payloads the bridge appends to a mailbox for the stream owner.
var (
	// controlUpstreamSession: the upstream session was (re)established and
	// initialised; (re)open the upstream GET stream.
	controlUpstreamSession = []byte("upstream-session")
)

// readBatch is how many mailbox entries the owner reads at once.
const readBatch = 64

// serveStream serves GET sse_path: the legacy event stream.
func (b *Bridge) serveStream(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rc := http.NewResponseController(w)

	sess, after, err := b.openSession(ctx, r)
	if err != nil {
		b.storeError(w, err)
		return
	}
	id := sess.ID
	wake, unsubscribe, err := b.store.Subscribe(ctx, id)
	if err != nil {
		b.storeError(w, err)
		return
	}
	defer unsubscribe()

	b.rememberCredentials(id, r)
	defer b.releaseStream(id)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	buf := appendEvent(nil, "", "endpoint", []byte(b.endpointURL(r, id)))
	if _, err := w.Write(buf); err != nil {
		return
	}
	if err := rc.Flush(); err != nil {
		return
	}
	b.log.Debug("stream opened", zap.String("session", id), zap.Uint64("after", after))

	// The owner keeps the single upstream GET stream for the session.
	streamCtx, stopPump := context.WithCancel(b.background)
	defer stopPump()
	var pump *upstreamPump
	startPump := func() {
		if pump != nil {
			pump.stop()
		}
		pump = b.startPump(streamCtx, id)
	}
	if sess.Initialized {
		startPump()
	}
	defer func() {
		if pump != nil {
			pump.stop()
		}
	}()

	keepalive := time.NewTicker(b.cfg.Keepalive)
	defer keepalive.Stop()
	for {
		msgs, err := b.store.Read(ctx, id, after, readBatch)
		if err != nil {
			if !errors.Is(err, sessionstore.ErrNotFound) && ctx.Err() == nil {
				b.log.Warn("reading mailbox", zap.String("session", id), zap.Error(err))
				// Keep the stream: the store may come back. Retry on the
				// next wake-up or keepalive.
			} else {
				return
			}
		}
		buf = buf[:0]
		for _, m := range msgs {
			after = m.Seq
			if m.Control {
				startPump()
				continue
			}
			buf = appendEvent(buf, id+"-"+strconv.FormatUint(m.Seq, 10), "message", m.Data)
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
		if len(msgs) > 0 {
			if err := b.store.Ack(ctx, id, after); err != nil && ctx.Err() == nil {
				b.log.Debug("acknowledging mailbox", zap.String("session", id), zap.Error(err))
			}
		}
		if len(msgs) == readBatch {
			continue
		}
		select {
		case <-wake:
		case <-keepalive.C:
			if _, err := w.Write([]byte(": ping\n\n")); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			b.renewLease(ctx, id)
		case <-ctx.Done():
			return
		case <-b.shuttingDown:
			_, _ = w.Write([]byte(": server shutting down, reconnect\n\n"))
			_ = rc.Flush()
			return
		}
	}
}

// openSession creates the session for a new stream, or resumes the one named
// by Last-Event-ID, and makes this replica its owner. It returns the mailbox
// position to stream from.
func (b *Bridge) openSession(ctx context.Context, r *http.Request) (*sessionstore.Session, uint64, error) {
	fp := fingerprint(r)
	now := b.now()
	if id, seq, ok := parseEventID(r.Header.Get("Last-Event-ID")); ok {
		sess, err := b.claim(ctx, id, fp)
		if err == nil {
			return sess, seq, nil
		}
		if !errors.Is(err, sessionstore.ErrNotFound) {
			return nil, 0, err
		}
	}
	sess := &sessionstore.Session{
		ID:              randomID(),
		Upstream:        b.cfg.Upstream.String(),
		Fingerprint:     fp,
		Owner:           b.cfg.ReplicaID,
		OwnerLeaseUntil: now.Add(b.lease()),
		CreatedAt:       now,
		ExpiresAt:       now.Add(b.lease() + b.cfg.SessionTTL),
	}
	if err := b.store.Create(ctx, sess); err != nil {
		return nil, 0, err
	}
	return sess, 0, nil
}

// claim makes this replica the owner of an existing session of the caller.
func (b *Bridge) claim(ctx context.Context, id, fp string) (*sessionstore.Session, error) {
	now := b.now()
	return b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Fingerprint != fp || s.Upstream != b.cfg.Upstream.String() {
			return sessionstore.ErrNotFound
		}
		s.Owner = b.cfg.ReplicaID
		s.OwnerLeaseUntil = now.Add(b.lease())
		s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
		return nil
	})
}

// lease is how long an owner's claim lasts without renewal: a few keepalive
// intervals, renewed on every keepalive.
func (b *Bridge) lease() time.Duration { return 3 * b.cfg.Keepalive }

func (b *Bridge) renewLease(ctx context.Context, id string) {
	if _, err := b.claimOwned(ctx, id); err != nil && ctx.Err() == nil {
		b.log.Debug("renewing lease", zap.String("session", id), zap.Error(err))
	}
}

func (b *Bridge) claimOwned(ctx context.Context, id string) (*sessionstore.Session, error) {
	now := b.now()
	return b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		s.Owner = b.cfg.ReplicaID
		s.OwnerLeaseUntil = now.Add(b.lease())
		s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
		return nil
	})
}

// releaseStream marks the session as without a stream: it stays resumable
// for the session TTL.
func (b *Bridge) releaseStream(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := b.now()
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Owner != b.cfg.ReplicaID {
			return errNotOwner
		}
		s.Owner = ""
		s.OwnerLeaseUntil = time.Time{}
		s.ExpiresAt = now.Add(b.cfg.SessionTTL)
		return nil
	})
	if err != nil && !errors.Is(err, errNotOwner) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Warn("releasing session", zap.String("session", id), zap.Error(err))
	}
	b.log.Debug("stream closed", zap.String("session", id))
}

var errNotOwner = errors.New("another replica owns the session")

// endpointURL is the absolute path of the message endpoint for the session,
// under the same prefix as the stream's original request path.
func (b *Bridge) endpointURL(r *http.Request, id string) string {
	orig := b.cfg.OriginalPath(r)
	prefix := ""
	if strings.HasSuffix(orig, r.URL.Path) {
		prefix = strings.TrimSuffix(orig, r.URL.Path)
	}
	return prefix + b.cfg.MessagePath + "?sessionId=" + id
}

// parseEventID splits a legacy event id "<session>-<seq>".
func parseEventID(v string) (string, uint64, bool) {
	i := strings.LastIndexByte(v, '-')
	if i <= 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(v[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return v[:i], seq, true
}
