package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Continuity: which earlier session a request continues. The rules, and why
// they are safe, are in docs/design.md ("Continuity"). In short:
//
//   - Last-Event-ID naming a session of the caller resumes it: only the
//     client that read that stream knows the id.
//   - Every other GET gets a new session, and its endpoint event, at once.
//     That session is the client's address; it may later link to (adopt)
//     the caller's released session, whose state then serves it.
//   - A GET with MCP-Protocol-Version may be a returning client: its stream
//     seeks an adoptable session for adoptWindow and links it held. The
//     adopted session's messages stay back for AdoptHold; the client's own
//     initialize drops the link (it is new), its first other POST or the
//     end of the hold commits it.
//   - A first POST that is not initialize, on a session that never was
//     initialised, comes from a returning client: it adopts (committed at
//     once) or, with nothing to adopt, the session is revived: the bridge
//     opens an upstream session with the caller's remembered initialize.
//   - A POST to a session that is gone recreates it under its id and
//     revives it.

// Control payloads for the stream of an address session.
var (
	// controlLinkCommit: the session's link is committed; stream the
	// adopted session.
	controlLinkCommit = []byte("link-commit")
	// controlLinkDrop: the client showed it is new; stop seeking, and give
	// back a session held for adoption.
	controlLinkDrop = []byte("link-drop")
)

// seekInterval is how often a stream that may adopt looks for a session.
const seekInterval = 250 * time.Millisecond

// mayAdopt reports whether the caller may be given a released session
// without proof, by the adopt setting.
func (b *Bridge) mayAdopt(r *http.Request) bool {
	switch b.cfg.Adopt {
	case AdoptOff:
		return false
	case AdoptAuthenticated:
		return b.hasIdentity(r)
	}
	return true
}

// adoptWindow bounds how long a returning client's adoption waits for a
// session still held by a stream whose replica may have died: until that
// replica's heartbeat has lapsed, plus one beat.
func (b *Bridge) adoptWindow() time.Duration { return b.heartbeatTTL() + b.heartbeatInterval() }

// neverInitialized reports whether no initialize ever reached the upstream
// for the session: a non-initialize message on it comes from a client that
// initialised elsewhere (it returns) or whose session is gone.
func neverInitialized(s *sessionstore.Session) bool {
	return !s.Initialized && len(s.Initialize) == 0
}

// linkAdoptable links the address session addr to the caller's most
// recently released session, claimed for owner until leaseUntil. held says
// whether the link awaits confirmation. It returns the adopted session, or
// sessionstore.ErrNotFound, sessionstore.ErrAdoptionPending, or errStale
// when addr may no longer adopt.
func (b *Bridge) linkAdoptable(ctx context.Context, addr *sessionstore.Session, owner string, leaseUntil time.Time,
	protocolVersion string, held bool) (*sessionstore.Session, error) {
	for range 3 {
		cand, err := b.store.Adoptable(ctx, addr.Fingerprint, b.cfg.Upstream.String(), protocolVersion, b.now())
		if err != nil {
			return nil, err
		}
		adopted, err := b.claimReleased(ctx, cand, owner, leaseUntil)
		if errors.Is(err, sessionstore.ErrNotOwner) || errors.Is(err, sessionstore.ErrNotFound) {
			continue // another stream was quicker; try the next candidate
		}
		if err != nil {
			return nil, err
		}
		_, err = b.store.Update(ctx, addr.ID, func(s *sessionstore.Session) error {
			if s.NoAdopt || s.Link != "" || !neverInitialized(s) {
				return errStale
			}
			s.Link, s.LinkHeld = adopted.ID, held
			return nil
		})
		if err != nil {
			b.releaseSession(adopted.ID, owner)
			return nil, err
		}
		how := "post"
		if held {
			how = "get"
		}
		b.metrics.adopted(how)
		b.log.Info("adopted the caller's released session",
			zap.String("session", shortID(addr.ID)), zap.String("adopted", shortID(adopted.ID)), zap.Bool("held", held))
		return adopted, nil
	}
	return nil, sessionstore.ErrNotFound
}

// claimReleased makes owner the owner of a session Adoptable offered.
// Adoptable offers a session whose owner's lease still runs only when that
// owner's replica died; the claim may then take it from exactly that owner.
func (b *Bridge) claimReleased(ctx context.Context, cand *sessionstore.Session, owner string, leaseUntil time.Time) (*sessionstore.Session, error) {
	now := b.now()
	deadOwner := ""
	if cand.Owner != "" && cand.OwnerLeaseUntil.After(now) {
		deadOwner = cand.Owner
	}
	return b.store.Update(ctx, cand.ID, func(s *sessionstore.Session) error {
		if s.Owner != "" && s.OwnerLeaseUntil.After(now) && s.Owner != deadOwner && s.Owner != owner {
			return sessionstore.ErrNotOwner
		}
		s.Owner, s.OwnerLeaseUntil = owner, leaseUntil
		s.ExpiresAt = now.Add(b.lease() + b.cfg.SessionTTL)
		s.ReleasedAt = time.Time{}
		return nil
	})
}

// postTarget returns the session a POST to id serves: the session itself,
// the one it links to, or the caller's released one it adopts now. A
// session that is gone is recreated (and revived by forward). It returns
// sessionstore.ErrNotFound for another caller's session.
func (b *Bridge) postTarget(ctx context.Context, r *http.Request, id string, initialize bool) (*sessionstore.Session, error) {
	fp := b.fingerprint(r)
	sess, err := b.loadOrRecreate(ctx, r, id, fp)
	if err != nil {
		return nil, err
	}
	if sess.Fingerprint != fp || sess.Upstream != b.cfg.Upstream.String() {
		// Another caller's session looks exactly like a missing one.
		return nil, sessionstore.ErrNotFound
	}
	if initialize {
		sess, err = b.markNew(ctx, sess)
		if err != nil {
			return nil, err
		}
	}
	if sess.Link != "" {
		if target := b.followLink(ctx, sess); target != nil {
			return target, nil
		}
	}
	if !initialize && neverInitialized(sess) && !sess.NoAdopt && b.mayAdopt(r) {
		if adopted := b.adoptOnPost(ctx, sess, r.Header.Get("MCP-Protocol-Version")); adopted != nil {
			return adopted, nil
		}
	}
	return sess, nil
}

// loadOrRecreate loads the session, or recreates one that is gone (store
// restarted, session expired) under its id for the caller, so that its
// client carries on instead of failing: ids the bridge never minted are
// refused.
func (b *Bridge) loadOrRecreate(ctx context.Context, r *http.Request, id, fp string) (*sessionstore.Session, error) {
	var sess *sessionstore.Session
	err := b.retryUnavailable(ctx, func() (err error) {
		sess, err = b.store.Get(ctx, id)
		return err
	})
	if !errors.Is(err, sessionstore.ErrNotFound) || !validSessionID(id) {
		return sess, err
	}
	if err := b.admitNewSession(r); err != nil {
		return nil, err
	}
	now := b.now()
	sess = &sessionstore.Session{
		ID:          id,
		Upstream:    b.cfg.Upstream.String(),
		Fingerprint: fp,
		Caller:      b.caller(r),
		NoAdopt:     true,
		CreatedAt:   now,
		// As long as a session a stream opened: its client is about to
		// reconnect its stream (the TS SDK waits 3 s) and adopt it.
		ExpiresAt: now.Add(b.lease() + b.cfg.SessionTTL),
	}
	err = b.store.Create(ctx, sess)
	if errors.Is(err, sessionstore.ErrExists) {
		return b.store.Get(ctx, id) // recreated by a concurrent POST
	}
	if err != nil {
		return nil, err
	}
	b.sessionStarted(r, sess)
	b.log.Info("recreated a session that was gone", zap.String("session", shortID(id)))
	return sess, nil
}

// validSessionID reports whether id has the form of the ids the bridge mints.
func validSessionID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := range len(id) {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// markNew records that the session's client sent its own initialize: it is
// new, so it never adopts, and a link still held is dropped before anything
// of the adopted session reached it. Its stream is told.
func (b *Bridge) markNew(ctx context.Context, sess *sessionstore.Session) (*sessionstore.Session, error) {
	if sess.NoAdopt && !sess.LinkHeld {
		return sess, nil
	}
	updated, err := b.store.Update(ctx, sess.ID, func(s *sessionstore.Session) error {
		s.NoAdopt = true
		if s.LinkHeld {
			s.Link, s.LinkHeld = "", false
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.signal(ctx, sess.ID, controlLinkDrop)
	return updated, nil
}

// followLink returns the session an address links to, committing a held
// link (a POST other than initialize shows the client returns), or nil when
// the linked session is gone (the address then stands alone).
func (b *Bridge) followLink(ctx context.Context, addr *sessionstore.Session) *sessionstore.Session {
	if addr.LinkHeld {
		if _, err := b.store.Update(ctx, addr.ID, func(s *sessionstore.Session) error {
			if s.Link != addr.Link {
				return errStale
			}
			s.LinkHeld = false
			return nil
		}); err == nil {
			b.signal(ctx, addr.ID, controlLinkCommit)
		}
	}
	target, err := b.store.Get(ctx, addr.Link)
	if err == nil && target.Fingerprint == addr.Fingerprint {
		return target
	}
	if _, err := b.store.Update(ctx, addr.ID, func(s *sessionstore.Session) error {
		s.Link, s.LinkHeld = "", false
		return nil
	}); err != nil {
		b.log.Debug("unlinking from a session that is gone", zap.String("session", shortID(addr.ID)), zap.Error(err))
	}
	return nil
}

// adoptOnPost gives a returning client whose stream did not recognise it
// (it reconnected with neither Last-Event-ID nor MCP-Protocol-Version) its
// released session at its first call, waiting up to adoptWindow for one
// held by a stream whose replica may have died. It returns nil when there
// is nothing to adopt.
func (b *Bridge) adoptOnPost(ctx context.Context, addr *sessionstore.Session, protocolVersion string) *sessionstore.Session {
	deadline := time.Now().Add(b.adoptWindow())
	for {
		adopted, err := b.linkAdoptable(ctx, addr, addr.Owner, addr.OwnerLeaseUntil, protocolVersion, false)
		if err == nil {
			b.signal(ctx, addr.ID, controlLinkCommit)
			return adopted
		}
		if !errors.Is(err, sessionstore.ErrAdoptionPending) || time.Now().After(deadline) || !sleepCtx(ctx, seekInterval) {
			if !errors.Is(err, sessionstore.ErrNotFound) && !errors.Is(err, sessionstore.ErrAdoptionPending) {
				b.log.Debug("adopting at the first call", zap.String("session", shortID(addr.ID)), zap.Error(err))
			}
			return nil
		}
	}
}

// revive opens an upstream session for a session whose client never
// initialised it here (its session was lost, or it returned with nothing to
// adopt), with the caller's last initialize if remembered, else a minimal
// one, so that the client's call succeeds. Concurrent callers share one.
func (b *Bridge) revive(ctx context.Context, sess *sessionstore.Session, client http.Header, protocolVersion string) (*sessionstore.Session, error) {
	lock := b.reinitLock(sess.ID)
	lock.Lock()
	defer lock.Unlock()
	cur, err := b.store.Get(ctx, sess.ID)
	if err != nil {
		return nil, fmt.Errorf("loading session: %w", err)
	}
	if !neverInitialized(cur) {
		return cur, nil // revived by a concurrent request
	}
	init, err := b.store.RecallInitialize(ctx, cur.Fingerprint, cur.Upstream)
	if err != nil {
		if !errors.Is(err, sessionstore.ErrNotFound) {
			b.log.Warn("recalling the caller's initialize", zap.String("session", shortID(cur.ID)), zap.Error(err))
		}
		init = minimalInitialize(protocolVersion)
	}
	b.metrics.adopted("revive")
	b.log.Info("reviving a session for a returning client", zap.String("session", shortID(cur.ID)), zap.Bool("remembered", err == nil))
	if _, ok := b.translates(ctx, client); ok {
		return b.reviveTranslated(ctx, cur, init)
	}
	return b.openUpstreamSession(ctx, cur, init, client)
}

// minimalInitialize is the initialize sent for a client whose own is not
// known: its protocol version (as its MCP-Protocol-Version header says, or
// the version servers assume without one), no capabilities.
func minimalInitialize(protocolVersion string) []byte {
	if protocolVersion == "" || !validHeaderToken(protocolVersion) {
		protocolVersion = "2025-03-26"
	}
	return fmt.Appendf(nil, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":%q,`+
		`"capabilities":{},"clientInfo":{"name":"mcp-sse-bridge-revived-client","version":"0"}}}`, protocolVersion)
}

// validHeaderToken reports whether v is a short run of visible ASCII without
// quotes or backslashes, safe to place in a JSON string as it is.
func validHeaderToken(v string) bool {
	if len(v) > 32 {
		return false
	}
	for i := range len(v) {
		if c := v[i]; c <= ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// signal appends a control message for the session's stream owner.
func (b *Bridge) signal(ctx context.Context, id string, control []byte) {
	if _, err := b.store.Append(ctx, id, sessionstore.Message{Control: true, Data: control}); err != nil {
		b.log.Warn("signalling the stream owner", zap.String("session", shortID(id)), zap.Error(err))
	}
}

// retireRequests forgets the session's requests in flight, so that their
// late answers are dropped: the client initialised again, and a new client
// incarnation must not get answers to ids its predecessor used.
func (b *Bridge) retireRequests(ctx context.Context, id string) {
	reqs, err := b.store.ListRequests(ctx, id)
	if err != nil {
		return
	}
	for key := range reqs {
		_, _ = b.store.ClaimRequest(ctx, id, key)
	}
}
