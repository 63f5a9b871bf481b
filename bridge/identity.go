package bridge

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
)

// Who a request comes from, as the store may know it: never the credentials
// themselves, only keyed hashes of them, so that a copy of the store does
// not tell which token or address a session belongs to, nor lets anyone
// check a guess without the key.

// loadIdentityKey makes sure the fingerprint key is known: the configured
// identity secret, else the store's key, read once.
func (b *Bridge) loadIdentityKey(ctx context.Context) error {
	if b.identityKey.Load() != nil {
		return nil
	}
	var key []byte
	if b.cfg.IdentitySecret != "" {
		sum := sha256.Sum256([]byte("mcp-sse-bridge identity secret\x00" + b.cfg.IdentitySecret))
		key = sum[:]
	} else {
		var err error
		if key, err = b.store.IdentityKey(ctx); err != nil {
			return fmt.Errorf("reading the identity key: %w", err)
		}
	}
	b.identityKey.CompareAndSwap(nil, &key)
	return nil
}

// fingerprint identifies the caller by a keyed hash of its identity (see
// identityOf), so that a session id alone does not let another caller use
// the session.
func (b *Bridge) fingerprint(r *http.Request) string {
	return b.keyedHash("identity", b.identityOf(r)...)
}

// identityOf is what identifies the caller: Config.Identity's value when
// configured and not empty (a user verified in front of the bridge, which
// stays the same when its tokens are refreshed), else its Authorization
// and its TLS client certificate, so that a route where the identity is
// missing does not make every caller one anonymous caller. All empty: an
// anonymous caller.
func (b *Bridge) identityOf(r *http.Request) []string {
	if b.cfg.Identity != nil {
		if id := b.cfg.Identity(r); id != "" {
			return []string{"user", id}
		}
	}
	return []string{"credentials", r.Header.Get("Authorization"), clientCertificate(r)}
}

// caller names whom a new session counts against for the sessions-per-
// caller limit: the identity when it means something, else the client
// address (anonymous callers share one fingerprint, but not one limit).
// Credentials mean something when a configured identity vouches for them,
// or the upstream checks them (it refused anonymous probes): against an
// upstream that takes anyone, made-up tokens would be as many callers.
func (b *Bridge) caller(r *http.Request) string {
	id := b.identityOf(r)
	vouched := id[0] == "user"
	if vouched || (!isAnonymous(id) && !b.upstreamOpen()) {
		return "c" + b.keyedHash("identity", id...)
	}
	return "a" + b.keyedHash("address", b.cfg.ClientAddress(r))
}

// hasIdentity reports whether the caller is not anonymous.
func (b *Bridge) hasIdentity(r *http.Request) bool { return !isAnonymous(b.identityOf(r)) }

// isAnonymous reports whether an identity (from identityOf) names nobody.
func isAnonymous(id []string) bool {
	for _, part := range id[1:] {
		if part != "" {
			return false
		}
	}
	return true
}

// clientCertificate is the hash of the request's TLS client certificate,
// or "" without one.
func clientCertificate(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:])
}

// keyedHash is HMAC-SHA-256 under the identity key of the parts (each
// length-prefixed, so that no two lists hash alike), in 32 hex digits.
func (b *Bridge) keyedHash(kind string, parts ...string) string {
	key := b.identityKey.Load()
	if key == nil {
		// loadIdentityKey runs before any request is served; a bridge
		// used otherwise (tests) must not silently share one key.
		panic("bridge: identity key not loaded")
	}
	mac := hmac.New(sha256.New, *key)
	for _, p := range append([]string{kind}, parts...) {
		fmt.Fprintf(mac, "%d:%s\x00", len(p), p)
	}
	return hex.EncodeToString(mac.Sum(nil)[:16])
}
