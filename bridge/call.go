package bridge

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// A call is one client message on its way: its slot among the session's
// messages in flight, its record in the store while it is a request in
// flight, and what its POST learns of it.

// upstreamStatus is what a legacy POST learns about its upstream request.
type upstreamStatus struct {
	code int
	// challenge: 401/403 with WWW-Authenticate, passed back on the POST.
	challenge *authChallenge
}

// call is one client message on its way upstream.
type call struct {
	sessionID string
	session   *sessionstore.Session
	msg       []byte
	env       Envelope
	client    http.Header
	// clientVersion is the MCP-Protocol-Version the client sent, for a
	// revived session's minimal initialize.
	clientVersion string
	// metadataURL is the bridge's protected-resource metadata URL for the
	// client's stream, named in a challenge passed back to it.
	metadataURL string
	status      chan *upstreamStatus
	reported    bool
	// post is where the client's POST stands: a refusal of the client's
	// credentials goes back on the POST while it waits, and a call whose
	// POST was accepted (202) must be answered on the stream instead.
	post atomic.Int32
	// answered is set once the request's answer is settled here; the
	// watcher of a resumed stream reads it from another goroutine.
	answered atomic.Bool
	// key names the request in the store's requests in flight; tracked is
	// set once it is recorded there.
	key     string
	tracked bool
	// inputRequired is a translated upstream's answer that asks the client
	// for input (inputs.go), set instead of answering.
	inputRequired []byte
	// relayAs is set, instead of answering, when a translated call found
	// its upstream back on initialize-based revisions: the session as it is
	// relayed from now on (relayFromNow).
	relayAs *sessionstore.Session
}

// acquire reserves n in-flight message slots for the session.
func (b *Bridge) acquire(id string, n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight[id]+n > b.cfg.MaxInflight {
		return false
	}
	b.inflight[id] += n
	return true
}

func (b *Bridge) release(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight[id] <= 1 {
		delete(b.inflight, id)
	} else {
		b.inflight[id]--
	}
}

// track records a request in flight, so that another replica answers it if
// this one dies. Without the record (store trouble) the request still goes.
// It reports false when a copy of the request is in flight already and
// this one is not to be forwarded (see settleDuplicate).
func (b *Bridge) track(ctx context.Context, c *call, sess *sessionstore.Session) bool {
	if c.tracked {
		return true // a retry after re-initialisation keeps its record
	}
	c.key = string(c.env.ID)
	for {
		err := b.store.TrackRequest(ctx, c.sessionID, c.key, sessionstore.Request{
			ID:                c.env.ID,
			Replica:           b.cfg.ReplicaID,
			UpstreamSessionID: sess.UpstreamSessionID,
		})
		switch {
		case err == nil:
			c.tracked = true
			return true
		case errors.Is(err, sessionstore.ErrExists):
			if !b.settleDuplicate(ctx, c) {
				return false
			}
		default:
			b.log.Warn("recording a request in flight", zap.String("session", shortID(c.sessionID)), zap.Error(err))
			return true
		}
	}
}

// untrack drops the record of a request that was not accepted.
func (b *Bridge) untrack(c *call) {
	if c.tracked {
		_, _ = b.store.ClaimRequest(b.background, c.sessionID, c.key)
		c.tracked = false
	}
}

// Where a call's POST stands (call.post).
const (
	postWaiting int32 = iota
	postAccepted
	postRefused
)

// accept marks the call's POST as answered 202; it reports false when the
// call was refused first (its challenge must answer the POST).
func (c *call) accept() bool {
	return c.post.CompareAndSwap(postWaiting, postAccepted) || c.post.Load() == postAccepted
}

// refuse marks the call as refused by the upstream while its POST waits;
// it reports false when the POST was accepted already.
func (c *call) refuse() bool { return c.post.CompareAndSwap(postWaiting, postRefused) }

func (c *call) report(st *upstreamStatus) {
	if !c.reported {
		c.reported = true
		c.status <- st
	}
}
