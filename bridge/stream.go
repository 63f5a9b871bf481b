package bridge

import (
	"bytes"
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

// serveStream serves GET sse_path: the legacy event stream. Its steps:
// open the session (resume the one Last-Event-ID names, or a new one),
// send the endpoint event at once, take the connection off net/http where
// it can (detach.go), then relay the mailbox until the client leaves,
// adopting the caller's released session on the way where the continuity
// rules (continuity.go) say so.
func (b *Bridge) serveStream(w http.ResponseWriter, r *http.Request) {
	b.streamOpened(1)
	ls, ok := b.startStream(w, r)
	if !ok {
		b.streamOpened(-1)
		return
	}
	if ctx, ok := ls.detach(); ok {
		go ls.relay(ctx)
		return
	}
	ls.relay(r.Context())
}

// streamOpened counts streams opening (+1) and ending (-1).
func (b *Bridge) streamOpened(delta int64) {
	b.streams.Add(delta)
	b.metrics.streamOpened(float64(delta))
}

// startStream opens the stream's session and sends the endpoint event; on
// false the client has had its answer and nothing is held.
func (b *Bridge) startStream(w http.ResponseWriter, r *http.Request) (*legacyStream, bool) {
	ctx := r.Context()
	// A stream that will need a new session takes its place in its
	// address's rate before anything, the authorization probe included,
	// goes upstream.
	admitted := false
	if r.Header.Get("Last-Event-ID") == "" {
		if err := b.admitNewSession(r); err != nil {
			b.storeError(w, err)
			return nil, false
		}
		admitted = true
	}
	if c := b.probeAuthorization(ctx, r); c != nil {
		b.metrics.refusedFor("unauthorized")
		c.write(w)
		return nil, false
	}
	ls := &legacyStream{
		admitted:       admitted,
		b:              b,
		out:            responseOut{w: w, rc: http.NewResponseController(w)},
		r:              r,
		clientGone:     ctx.Done(),
		fingerprint:    b.fingerprint(r),
		upstreamHeader: b.upstreamHeaders(r),
		owner:          b.cfg.ReplicaID + "/" + randomID()[:12],
		creds:          map[string]*credential{},
		opened:         time.Now(),
		endReason:      "client gone",
	}
	sess, resumed, err := ls.open(ctx)
	if err != nil {
		b.storeError(w, err)
		return nil, false
	}
	ls.addr = sess.ID
	if err := ls.follow(ctx, sess.ID); err != nil {
		b.releaseSession(sess.ID, ls.owner)
		b.storeError(w, err)
		return nil, false
	}
	if !ls.sendEndpoint() {
		ls.end()
		return nil, false
	}
	b.log.Debug("stream opened", zap.String("session", shortID(ls.addr)), zap.Uint64("after", ls.after), zap.Bool("resumed", resumed))
	ls.initialized = sess.Initialized
	if pv := r.Header.Get("MCP-Protocol-Version"); !resumed && pv != "" && b.mayAdopt(r) {
		// Perhaps a returning client (or a new one of an SDK that sends the
		// header at once): look for its released session.
		ls.protocolVersion = pv
		ls.seekUntil = time.Now().Add(b.adoptWindow())
	}
	return ls, true
}

// relay serves the stream until it ends, then releases what it holds.
func (ls *legacyStream) relay(ctx context.Context) {
	b := ls.b
	defer b.streamOpened(-1)
	defer ls.end()
	ls.pumpCtx, ls.stopPumps = context.WithCancel(b.background)
	if ls.initialized {
		ls.startPump()
	}
	ls.seek(ctx)
	b.recoverOrphans(ctx, ls.cur)
	ls.run(ctx)
}

// legacyStream is one client's event stream.
type legacyStream struct {
	b   *Bridge
	out streamOut
	// r is the stream's request, for its opening only: a detached stream
	// outlives it.
	r *http.Request
	// clientGone is closed when the client has left.
	clientGone <-chan struct{}
	// fingerprint and upstreamHeader are what the stream keeps of its
	// request: its caller, and the headers the bridge's own upstream
	// requests for its sessions carry.
	fingerprint    string
	upstreamHeader http.Header
	owner          string // this stream's name in the sessions' Owner field
	// addr is the session named in the endpoint event; cur is the session
	// whose mailbox is streamed: addr, or the session addr adopted.
	addr, cur   string
	after       uint64 // the mailbox position of cur reached
	initialized bool   // cur was initialised when the stream opened
	wake        <-chan struct{}
	unsubscribe func()
	creds       map[string]*credential
	buf         []byte

	pumpCtx   context.Context
	stopPumps context.CancelFunc
	pump      *upstreamPump

	// Adoption by a GET that may come from a returning client: seeking until
	// seekUntil, then holding the adopted session until the hold ends.
	protocolVersion string
	seekUntil       time.Time
	held            string
	adoptTimer      *time.Timer

	// admitted is set when the new-session rate already counted this
	// stream.
	admitted bool

	// For the "stream ended" log: when it opened, what it delivered, and
	// why it ended.
	opened    time.Time
	delivered int
	endReason string
}

// open resumes the session Last-Event-ID names (the caller's own), or
// creates a new one, owned by this stream.
func (ls *legacyStream) open(ctx context.Context) (*sessionstore.Session, bool, error) {
	b := ls.b
	fp := ls.fingerprint
	if id, seq, ok := parseEventID(ls.r.Header.Get("Last-Event-ID")); ok {
		var sess *sessionstore.Session
		err := b.retryUnavailable(ctx, func() (err error) {
			sess, err = b.claim(ctx, id, fp, ls.owner)
			return err
		})
		if err == nil {
			// A position past what the client was given would skip every
			// later message: resume from what it was given at most.
			ls.after = min(seq, sess.Delivered)
			return sess, true, nil
		}
		if !errors.Is(err, sessionstore.ErrNotFound) {
			return nil, false, err
		}
	}
	if !ls.admitted {
		if err := b.admitNewSession(ls.r); err != nil {
			return nil, false, err
		}
	}
	now := b.now()
	sess := &sessionstore.Session{
		ID:              randomID(),
		Upstream:        b.cfg.Upstream.String(),
		Fingerprint:     fp,
		Caller:          b.caller(ls.r),
		Owner:           ls.owner,
		OwnerLeaseUntil: now.Add(b.lease()),
		CreatedAt:       now,
		ExpiresAt:       now.Add(b.lease() + b.cfg.SessionTTL),
	}
	err := b.retryUnavailable(ctx, func() error { return b.store.Create(ctx, sess) })
	if err == nil {
		b.sessionStarted(ls.r, sess)
	}
	return sess, false, err
}

// follow makes id the session whose mailbox the stream relays: subscribed
// to before anything is read, its credentials kept for background requests.
func (ls *legacyStream) follow(ctx context.Context, id string) error {
	wake, unsubscribe, err := ls.b.store.Subscribe(ctx, id)
	if err != nil {
		return err
	}
	if ls.unsubscribe != nil {
		ls.unsubscribe()
	}
	ls.wake, ls.unsubscribe, ls.cur = wake, unsubscribe, id
	if ls.creds[id] == nil {
		ls.creds[id] = ls.b.rememberCredentials(id, ls.upstreamHeader)
	}
	return nil
}

// sendEndpoint writes the response headers and the endpoint event.
func (ls *legacyStream) sendEndpoint() bool {
	w := ls.out.(responseOut).w
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	ls.buf = appendEvent(ls.buf[:0], "", "endpoint", []byte(ls.b.endpointURL(ls.r, ls.addr)))
	return ls.write(ls.buf)
}

// run relays the mailbox until the client leaves, the session is taken
// over or gone, or the server shuts down.
func (ls *legacyStream) run(ctx context.Context) {
	b := ls.b
	keepalive := time.NewTicker(b.cfg.Keepalive)
	defer keepalive.Stop()
	for {
		if !ls.relayMailbox(ctx) {
			return
		}
		pokes := b.streamPokes()
		var adoptTick <-chan time.Time
		if ls.adoptTimer != nil {
			adoptTick = ls.adoptTimer.C
		}
		select {
		case <-ls.wake:
		case <-adoptTick:
			ls.adoptTimer = nil
			if ls.held != "" {
				ls.syncLink(ctx, true)
			} else {
				ls.seek(ctx)
			}
		case <-keepalive.C:
			if !ls.write([]byte(": ping\n\n")) || !ls.renewLeases(ctx) {
				ls.ended("write failed or session taken over")
				return
			}
			b.recoverOrphans(ctx, ls.cur)
		case <-pokes:
			b.recoverOrphans(ctx, ls.cur)
		case <-ctx.Done():
			return
		case <-b.shuttingDown:
			ls.ended("server shutting down")
			// What is already in the mailbox goes out first.
			if ls.relayMailbox(ctx) {
				ls.write([]byte(": server shutting down, reconnect\n\n"))
			}
			return
		}
	}
}

// relayMailbox sends what the mailbox of cur holds after the stream's
// position, acknowledges it, and acts on control messages. It reports false
// when the stream must end.
func (ls *legacyStream) relayMailbox(ctx context.Context) bool {
	b := ls.b
	for {
		msgs, err := b.store.Read(ctx, ls.cur, ls.after, readBatch)
		if err != nil {
			if errors.Is(err, sessionstore.ErrNotFound) {
				ls.ended("session ended")
				return false
			}
			if ctx.Err() != nil {
				return false
			}
			// Keep the stream: the store may come back. Retry on the next
			// wake-up or keepalive.
			b.log.Warn("reading mailbox", zap.String("session", shortID(ls.cur)), zap.Error(err))
			return true
		}
		b.metrics.mailboxRead(len(msgs))
		ls.buf = ls.buf[:0]
		linkChanged := false
		for _, m := range msgs {
			ls.after = m.Seq
			if m.Control {
				if bytes.Equal(m.Data, controlUpstreamSession) {
					ls.startPump()
					continue
				}
				// A link control may switch mailboxes: act on it once this
				// position is acknowledged.
				linkChanged = true
				break
			}
			if !ls.appendMessage(m) {
				ls.ended("write failed")
				return false
			}
			ls.delivered++
		}
		if len(ls.buf) > 0 && !ls.write(ls.buf) {
			ls.ended("write failed")
			return false
		}
		if cap(ls.buf) > maxKeptBuffer {
			ls.buf = nil // a large message's buffer is not kept for the stream's life
		}
		if len(msgs) > 0 && !ls.ack(ctx) {
			return false
		}
		if linkChanged {
			ls.syncLink(ctx, false)
			continue
		}
		if len(msgs) < readBatch {
			return true
		}
	}
}

// appendMessage adds one message event to the stream's buffer; a large one
// is written at once, without being copied.
func (ls *legacyStream) appendMessage(m sessionstore.Message) bool {
	eventID := ls.cur + "-" + strconv.FormatUint(m.Seq, 10)
	if len(m.Data) <= maxKeptBuffer {
		ls.buf = appendEvent(ls.buf, eventID, "message", m.Data)
		return true
	}
	ls.buf = appendEvent(ls.buf, eventID, "message", nil)
	ls.buf = ls.buf[:len(ls.buf)-2] // up to "data: "
	if !ls.writeRaw(ls.buf) || !ls.writeRaw(m.Data) {
		return false
	}
	ls.buf = append(ls.buf[:0], '\n', '\n')
	return true
}

// ack records the stream's position. A stream whose session was taken over
// by a newer stream (which replays from its own position) or is gone ends.
func (ls *legacyStream) ack(ctx context.Context) bool {
	err := ls.b.store.Ack(ctx, ls.cur, ls.owner, ls.after)
	switch {
	case errors.Is(err, sessionstore.ErrNotOwner), errors.Is(err, sessionstore.ErrNotFound):
		return false
	case err != nil && ctx.Err() == nil:
		ls.b.log.Debug("acknowledging mailbox", zap.String("session", shortID(ls.cur)), zap.Error(err))
	}
	return true
}

// seek looks for the caller's released session to adopt, held, and keeps
// looking every seekInterval until the adoption window closes.
func (ls *legacyStream) seek(ctx context.Context) {
	b := ls.b
	if ls.seekUntil.IsZero() || ls.cur != ls.addr {
		return
	}
	addr := &sessionstore.Session{ID: ls.addr, Fingerprint: ls.fingerprint}
	adopted, err := b.linkAdoptable(ctx, addr, ls.owner, b.now().Add(b.lease()), ls.protocolVersion, true)
	switch {
	case err == nil:
		ls.seekUntil = time.Time{}
		ls.held = adopted.ID
		ls.creds[adopted.ID] = b.rememberCredentials(adopted.ID, ls.upstreamHeader)
		ls.adoptTimer = time.NewTimer(b.cfg.AdoptHold)
	case errors.Is(err, errStale) || time.Now().Add(seekInterval).After(ls.seekUntil):
		ls.seekUntil = time.Time{} // the client showed it is new, or nothing turned up
	default:
		ls.adoptTimer = time.NewTimer(seekInterval)
	}
}

// syncLink brings the stream in line with its address session's link:
// follow a committed link, give back a session held for a client that
// showed it is new, and, when holdEnded, commit a held link.
func (ls *legacyStream) syncLink(ctx context.Context, holdEnded bool) {
	b := ls.b
	if ls.cur != ls.addr {
		return // already streaming the adopted session
	}
	addr, err := b.store.Get(ctx, ls.addr)
	if err != nil {
		return
	}
	if addr.NoAdopt || addr.Link != "" {
		ls.seekUntil = time.Time{}
	}
	switch {
	case addr.Link == "":
		if ls.held != "" {
			b.log.Info("the client showed it is new: adoption undone",
				zap.String("session", shortID(ls.addr)), zap.String("adopted", shortID(ls.held)))
			b.releaseSession(ls.held, ls.owner)
			ls.held, ls.adoptTimer = "", nil
		}
	case addr.LinkHeld && holdEnded:
		if _, err := b.store.Update(ctx, ls.addr, func(s *sessionstore.Session) error {
			if s.Link != addr.Link || !s.LinkHeld {
				return errStale
			}
			s.LinkHeld = false
			return nil
		}); err != nil {
			ls.syncLink(ctx, false) // the client spoke meanwhile
			return
		}
		ls.switchTo(ctx, addr.Link)
	case !addr.LinkHeld:
		ls.switchTo(ctx, addr.Link)
	}
}

// switchTo makes the stream relay the adopted session id: claim it, follow
// its mailbox from what its client was last given, run its upstream GET
// stream, and answer its requests whose replica died.
func (ls *legacyStream) switchTo(ctx context.Context, id string) {
	b := ls.b
	sess, err := b.claimReleased(ctx, &sessionstore.Session{ID: id}, ls.owner, b.now().Add(b.lease()))
	if err == nil {
		err = ls.follow(ctx, id)
	}
	if err != nil {
		b.log.Warn("taking up the adopted session", zap.String("session", shortID(ls.addr)), zap.String("adopted", shortID(id)), zap.Error(err))
		return
	}
	if ls.held != "" && ls.held != id {
		b.releaseSession(ls.held, ls.owner)
	}
	ls.after, ls.held, ls.adoptTimer, ls.seekUntil = sess.Delivered, "", nil, time.Time{}
	ls.stopPump()
	if sess.Initialized {
		ls.startPump()
	}
	b.log.Info("stream continues the adopted session", zap.String("session", shortID(ls.addr)), zap.String("adopted", shortID(id)))
	b.recoverOrphans(ctx, id)
}

// startPump (re)starts the upstream GET stream of the session relayed.
func (ls *legacyStream) startPump() {
	ls.stopPump()
	ls.pump = ls.b.startPump(ls.pumpCtx, ls.cur)
}

func (ls *legacyStream) stopPump() {
	if ls.pump != nil {
		ls.pump.stop()
		ls.pump = nil
	}
}

// renewLeases extends the stream's claims. It reports false when the stream
// must end: another stream took its session over, or the session is gone.
func (ls *legacyStream) renewLeases(ctx context.Context) bool {
	for _, id := range ls.sessions() {
		if !ls.b.renewLease(ctx, id, ls.owner) && id == ls.cur {
			return false
		}
	}
	return true
}

// sessions lists the sessions the stream holds: its address, the session
// it relays, and one held for adoption.
func (ls *legacyStream) sessions() []string {
	ids := []string{ls.addr}
	if ls.cur != ls.addr {
		ids = append(ids, ls.cur)
	}
	if ls.held != "" {
		ids = append(ids, ls.held)
	}
	return ids
}

// end releases what the stream holds (its sessions stay resumable for the
// session TTL) and starts the countdown of the credentials it kept.
func (ls *legacyStream) end() {
	ls.out.close()
	if ls.stopPumps != nil {
		ls.stopPump()
		ls.stopPumps()
	}
	if ls.unsubscribe != nil {
		ls.unsubscribe()
	}
	for _, id := range ls.sessions() {
		ls.b.releaseSession(id, ls.owner)
	}
	for id, c := range ls.creds {
		ls.b.streamEnded(id, c)
	}
	ls.b.log.Info("stream ended", zap.String("session", shortID(ls.addr)), zap.String("reason", ls.endReason),
		zap.Duration("duration", time.Since(ls.opened).Round(time.Millisecond)), zap.Int("messages", ls.delivered))
}

// ended records why the stream ends, unless the client left first.
func (ls *legacyStream) ended(reason string) {
	select {
	case <-ls.clientGone:
	default:
		ls.endReason = reason
	}
}

// write sends p to the client at once.
func (ls *legacyStream) write(p []byte) bool {
	return ls.writeRaw(p) && ls.out.flush() == nil
}

// writeRaw writes to the client within StreamWriteTimeout: a client that
// stops reading is disconnected rather than holding the stream, and resumes
// from the store when it reconnects.
func (ls *legacyStream) writeRaw(p []byte) bool {
	return ls.out.write(p, time.Now().Add(ls.b.cfg.StreamWriteTimeout)) == nil
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
		s.ReleasedAt = time.Time{}
		return nil
	})
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
		b.log.Debug("stream lost its session", zap.String("session", shortID(id)), zap.Error(err))
		return false
	default:
		if ctx.Err() == nil {
			b.log.Warn("renewing lease", zap.String("session", shortID(id)), zap.Error(err))
		}
		return true
	}
}

// releaseSession marks the session as without a stream: it stays
// resumable for the session TTL, or, when its client never used it (no
// initialize, no link), for the much shorter UninitializedTTL: such a
// session is worth nothing to anyone, and a caller opening and dropping
// streams must not fill the store with them.
func (b *Bridge) releaseSession(id, owner string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := b.now()
	_, err := b.store.Update(ctx, id, func(s *sessionstore.Session) error {
		if s.Owner != owner {
			return sessionstore.ErrNotOwner
		}
		s.Owner = ""
		s.OwnerLeaseUntil = time.Time{}
		s.ReleasedAt = now
		ttl := b.cfg.SessionTTL
		if neverInitialized(s) && s.Link == "" {
			ttl = min(ttl, b.cfg.UninitializedTTL)
		}
		s.ExpiresAt = now.Add(ttl)
		return nil
	})
	if err != nil && !errors.Is(err, sessionstore.ErrNotOwner) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Warn("releasing session", zap.String("session", shortID(id)), zap.Error(err))
	}
}

// endpointURL is the absolute path of the message endpoint for the session,
// under the same prefix as the stream's original request path.
func (b *Bridge) endpointURL(r *http.Request, id string) string {
	return b.clientPrefix(r) + b.cfg.MessagePath + "?sessionId=" + id
}

// parseEventID splits a legacy event id "<session>-<seq>"; the session part
// must have the form of the ids the bridge mints.
func parseEventID(v string) (string, uint64, bool) {
	i := strings.LastIndexByte(v, '-')
	if i <= 0 || !validSessionID(v[:i]) {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(v[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return v[:i], seq, true
}
