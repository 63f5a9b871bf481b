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

// maxKeptBuffer bounds the write buffer a stream keeps between batches.
const maxKeptBuffer = 64 << 10

// serveStream serves GET sse_path: the legacy event stream.
func (b *Bridge) serveStream(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rc := http.NewResponseController(w)

	// Each stream owns its session under its own name, so that a stream
	// replaced by a newer one (even on this replica) notices and ends.
	owner := b.cfg.ReplicaID + "/" + randomID()[:12]
	var (
		sess  *sessionstore.Session
		after uint64
	)
	err := b.retryUnavailable(ctx, func() (err error) {
		sess, after, err = b.openSession(ctx, r, owner)
		return err
	})
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

	cred := b.rememberCredentials(id, r)
	defer b.streamEnded(id, cred)
	defer b.releaseStream(id, owner)

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

	b.recoverOrphans(ctx, id)
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
			eventID := id + "-" + strconv.FormatUint(m.Seq, 10)
			if len(m.Data) > maxKeptBuffer {
				// A large message goes out without being copied into buf.
				buf = appendEvent(buf, eventID, "message", nil)
				buf = buf[:len(buf)-2] // up to "data: "
				if _, err := w.Write(buf); err != nil {
					return
				}
				if _, err := w.Write(m.Data); err != nil {
					return
				}
				buf = append(buf[:0], '\n', '\n')
				continue
			}
			buf = appendEvent(buf, eventID, "message", m.Data)
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			if cap(buf) > maxKeptBuffer {
				buf = nil // a large message's buffer is not kept for the stream's life
			}
		}
		if len(msgs) > 0 {
			err := b.store.Ack(ctx, id, owner, after)
			switch {
			case errors.Is(err, sessionstore.ErrNotOwner), errors.Is(err, sessionstore.ErrNotFound):
				// Taken over by a newer stream (which replays from its own
				// position), or gone.
				return
			case err != nil && ctx.Err() == nil:
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
			if !b.renewLease(ctx, id, owner) {
				return
			}
			b.recoverOrphans(ctx, id)
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
func (b *Bridge) openSession(ctx context.Context, r *http.Request, owner string) (*sessionstore.Session, uint64, error) {
	fp := fingerprint(r)
	now := b.now()
	if id, seq, ok := parseEventID(r.Header.Get("Last-Event-ID")); ok {
		sess, err := b.claim(ctx, id, fp, owner)
		if err == nil {
			return sess, seq, nil
		}
		if !errors.Is(err, sessionstore.ErrNotFound) {
			return nil, 0, err
		}
	}
	// A client that initialised earlier and now reconnects without
	// Last-Event-ID (the TypeScript SDK's SSEClientTransport does, and never
	// initialises again) still sends MCP-Protocol-Version, which a new
	// client cannot: give it back its most recent session.
	if pv := r.Header.Get("MCP-Protocol-Version"); pv != "" {
		// The session may still be held by the replica that just died with
		// the client's stream: wait, briefly, for its heartbeat to lapse.
		deadline := time.Now().Add(b.heartbeatTTL() + b.heartbeatInterval())
		for {
			sess, err := b.adopt(ctx, fp, pv, owner)
			if err == nil {
				return sess, sess.Delivered, nil
			}
			if !errors.Is(err, sessionstore.ErrNotFound) {
				return nil, 0, err
			}
			if time.Now().After(deadline) || !sleepCtx(ctx, 250*time.Millisecond) {
				break
			}
		}
	}
	sess := &sessionstore.Session{
		ID:              randomID(),
		Upstream:        b.cfg.Upstream.String(),
		Fingerprint:     fp,
		Owner:           owner,
		OwnerLeaseUntil: now.Add(b.lease()),
		CreatedAt:       now,
		ExpiresAt:       now.Add(b.lease() + b.cfg.SessionTTL),
	}
	if err := b.store.Create(ctx, sess); err != nil {
		return nil, 0, err
	}
	return sess, 0, nil
}

// claim makes a new stream the owner of an existing session of the caller;
// a stream that held it before ends at its next keepalive.
func (b *Bridge) claim(ctx context.Context, id, fp, owner string) (*sessionstore.Session, error) {
	now := b.now()
	return b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Fingerprint != fp || s.Upstream != b.cfg.Upstream.String() {
			return sessionstore.ErrNotFound
		}
		s.Owner = owner
		s.OwnerLeaseUntil = now.Add(b.lease())
		s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
		return nil
	})
}

// adopt claims the caller's most recently released session for the
// protocol version. Another stream may claim the same one at the same time;
// the loser tries the next candidate.
func (b *Bridge) adopt(ctx context.Context, fp, protocolVersion, owner string) (*sessionstore.Session, error) {
	for range 3 {
		now := b.now()
		cand, err := b.store.Adoptable(ctx, fp, b.cfg.Upstream.String(), protocolVersion, now)
		if err != nil {
			return nil, err
		}
		// Adoptable offers a session whose owner's lease still runs only when
		// that owner's replica died; the claim may then take it from exactly
		// that owner.
		deadOwner := ""
		if cand.Owner != "" && cand.OwnerLeaseUntil.After(now) {
			deadOwner = cand.Owner
		}
		sess, err := b.store.Update(ctx, cand.ID, func(s *sessionstore.Session) error {
			if s.Owner != "" && s.OwnerLeaseUntil.After(now) && s.Owner != deadOwner {
				return sessionstore.ErrNotOwner
			}
			s.Owner = owner
			s.OwnerLeaseUntil = now.Add(b.lease())
			s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
			return nil
		})
		if err == nil {
			b.log.Info("stream adopted its caller's previous session", zap.String("session", sess.ID))
			return sess, nil
		}
		if !errors.Is(err, sessionstore.ErrNotOwner) && !errors.Is(err, sessionstore.ErrNotFound) {
			return nil, err
		}
	}
	return nil, sessionstore.ErrNotFound
}

// lease is how long an owner's claim lasts without renewal: a few keepalive
// intervals, renewed on every keepalive.
func (b *Bridge) lease() time.Duration { return 3 * b.cfg.Keepalive }

// renewLease extends the stream's claim on its session. It reports false
// when the stream must end: another stream took the session over, or the
// session is gone. A store failure keeps the stream (the store may be back
// before the lease lapses).
func (b *Bridge) renewLease(ctx context.Context, id, owner string) bool {
	now := b.now()
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Owner != owner {
			return sessionstore.ErrNotOwner
		}
		s.OwnerLeaseUntil = now.Add(b.lease())
		s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
		return nil
	})
	switch {
	case err == nil:
		return true
	case errors.Is(err, sessionstore.ErrNotOwner), errors.Is(err, sessionstore.ErrNotFound):
		b.log.Debug("stream lost its session", zap.String("session", id), zap.Error(err))
		return false
	default:
		if ctx.Err() == nil {
			b.log.Warn("renewing lease", zap.String("session", id), zap.Error(err))
		}
		return true
	}
}

// releaseStream marks the session as without a stream: it stays resumable
// for the session TTL.
func (b *Bridge) releaseStream(id, owner string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := b.now()
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Owner != owner {
			return sessionstore.ErrNotOwner
		}
		s.Owner = ""
		s.OwnerLeaseUntil = time.Time{}
		s.ExpiresAt = now.Add(b.cfg.SessionTTL)
		return nil
	})
	if err != nil && !errors.Is(err, sessionstore.ErrNotOwner) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Warn("releasing session", zap.String("session", id), zap.Error(err))
	}
	b.log.Debug("stream closed", zap.String("session", id))
}

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
