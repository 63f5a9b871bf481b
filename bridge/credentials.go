package bridge

import (
	"net/http"
	"time"
)

// credential is what a stream's request carried for the upstream, kept for
// the upstream requests the bridge makes on its own (GET stream, DELETE).
// It lives in this process only, never in the store.
type credential struct {
	header http.Header
	// until is when an entry whose stream ended is dropped (zero while its
	// stream is open): the session TTL plus a margin, by when some replica
	// has reaped the session.
	until time.Time
}

func (b *Bridge) rememberCredentials(id string, header http.Header) *credential {
	c := &credential{header: header}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.credentials[id] = c
	return c
}

// refreshCredentials replaces what is remembered for a session streamed
// here with the credentials of a newer request of its caller (a refreshed
// token), so that the bridge's own upstream requests do not go on with an
// expired one.
func (b *Bridge) refreshCredentials(id string, r *http.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.credentials[id]; c != nil && c.header.Get("Authorization") != r.Header.Get("Authorization") {
		c.header = b.upstreamHeaders(r)
	}
}

// streamEnded starts the countdown of the credentials a stream left, unless
// a newer stream of the session replaced them.
func (b *Bridge) streamEnded(id string, c *credential) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.credentials[id] == c {
		c.until = b.now().Add(b.cfg.SessionTTL + time.Minute)
	}
}

func (b *Bridge) credentialsFor(id string) http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.credentials[id]; c != nil {
		return c.header
	}
	return nil
}

// pruneCredentials drops the credentials of streams that ended long ago,
// whichever replica reaped their sessions.
func (b *Bridge) pruneCredentials() {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, c := range b.credentials {
		if !c.until.IsZero() && c.until.Before(now) {
			b.forgetLocked(id)
		}
	}
	// Sessions whose requests passed through here, whoever streams them.
	for id, seen := range b.seen {
		if seen.last.Add(b.cfg.SessionTTL).Before(now) {
			delete(b.seen, id)
		}
	}
}

// forget drops what this process remembers of a session.
func (b *Bridge) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetLocked(id)
}

func (b *Bridge) forgetLocked(id string) {
	delete(b.credentials, id)
	delete(b.cancelled, id)
	delete(b.reinit, id)
	delete(b.seen, id)
}
