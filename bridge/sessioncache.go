package bridge

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// The session cache saves a POST one store round trip (of five per call on
// Redis). A call to a session of a stateless upstream that is settled (its
// client initialised it, nothing links it elsewhere, its stream's upstream
// side is known) is checked against a record kept here for a second
// instead of the store's: the record of the request in flight, which the
// store keeps anyway, proves in the same round trip that the session still
// exists. A session gone since (expired, deleted, a store restarted) makes
// the POST look it up again, so it is recreated as without the cache.
// Nothing a settled session's POST reads can change meanwhile for a
// stateless upstream but its protocol version, by a second initialize,
// which the upstream does not hold the client to. A stateful upstream's
// session id can change under a record (re-initialisation), so those
// sessions are never cached.

// sessionCacheTTL is how long a cached record is used.
const sessionCacheTTL = time.Second

// maxCachedSessions bounds the cache; only sessions with a call in the
// last sessionCacheTTL are in it.
const maxCachedSessions = 16384

type sessionCache struct {
	ttl     time.Duration // sessionCacheTTL; tests lengthen it
	mu      sync.Mutex
	entries map[string]cachedSession
}

type cachedSession struct {
	sess  *sessionstore.Session // read-only: shared by the calls that use it
	until time.Time
}

func newSessionCache() *sessionCache {
	return &sessionCache{ttl: sessionCacheTTL, entries: make(map[string]cachedSession)}
}

// cacheable reports whether a session's record may be cached.
func cacheable(s *sessionstore.Session) bool {
	return s.Initialized && s.Link == "" && s.UpstreamSessionID == "" && s.StreamReadyFor == streamReadyMark("")
}

func (c *sessionCache) get(id string, now time.Time) *sessionstore.Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || now.After(e.until) {
		return nil
	}
	return e.sess
}

// put caches s, unless the cache is full of records still in use.
func (c *sessionCache) put(s *sessionstore.Session, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedSessions {
		c.pruneLocked(now)
		if len(c.entries) >= maxCachedSessions {
			return
		}
	}
	c.entries[s.ID] = cachedSession{sess: s, until: now.Add(c.ttl)}
}

// prune drops the records no longer used (the janitor's, so that idle
// sessions hold none).
func (c *sessionCache) prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
}

func (c *sessionCache) pruneLocked(now time.Time) {
	for id, e := range c.entries {
		if now.After(e.until) {
			delete(c.entries, id)
		}
	}
}

func (c *sessionCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, id)
}

// messageTarget finds the session a POST's messages go to, and reports
// whether the store already records its one request as in flight (see the
// session cache above).
func (b *Bridge) messageTarget(ctx context.Context, r *http.Request, id string, envs []Envelope) (*sessionstore.Session, bool, error) {
	initialize := false
	for _, env := range envs {
		initialize = initialize || isInitialize(env)
	}
	if initialize {
		b.sessionCache.drop(id)
	} else if len(envs) == 1 && envs[0].Kind == KindRequest {
		if sess := b.sessionCache.get(id, b.now()); sess != nil &&
			sess.Fingerprint == b.fingerprint(r) && sess.Upstream == b.cfg.Upstream.String() {
			err := b.store.TrackRequest(ctx, id, string(envs[0].ID), sessionstore.Request{
				ID:      envs[0].ID,
				Replica: b.cfg.ReplicaID,
			})
			if err == nil {
				return sess, true, nil
			}
			// Gone, a copy of the request in flight, or store trouble: the
			// way without the cache deals with each.
			b.sessionCache.drop(id)
		}
	}
	sess, err := b.postTarget(ctx, r, id, initialize)
	if err == nil && sess.ID == id && cacheable(sess) {
		b.sessionCache.put(sess, b.now())
	}
	return sess, false, err
}
