package bridge

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// heartbeatInterval is how often this replica beats: often, because other
// replicas take over its sessions and requests once its heartbeat lapses
// (a client whose stream died with a replica reconnects after about 3 s),
// and cheap, one store write per replica.
func (b *Bridge) heartbeatInterval() time.Duration { return min(b.cfg.Keepalive, time.Second) }

// heartbeatTTL is how long a beat counts: three intervals.
func (b *Bridge) heartbeatTTL() time.Duration { return 3 * b.heartbeatInterval() }

// takeOverLapsed makes this replica's streams answer, at once, the requests
// of replicas whose heartbeat lapsed or that stopped, rather than at their
// next keepalive. acted remembers the replicas seen lapsed (and when), so
// that each is acted on once; it is pruned here.
func (b *Bridge) takeOverLapsed(acted map[string]time.Time) {
	ctx, cancel := context.WithTimeout(b.background, b.heartbeatTTL())
	defer cancel()
	now := b.now()
	// A window wider than a beat tolerates clocks that differ a little.
	lapsed, err := b.store.LapsedReplicas(ctx, now.Add(-lapseWindow), now)
	if err != nil {
		return
	}
	poke := false
	for _, r := range lapsed {
		if _, seen := acted[r]; !seen && r != b.cfg.ReplicaID {
			acted[r] = now
			poke = true
			b.log.Info("a replica stopped: taking over its requests", zap.String("replica", r))
		}
	}
	for r, at := range acted {
		if at.Before(now.Add(-2 * lapseWindow)) {
			delete(acted, r)
		}
	}
	if poke {
		b.pokeStreams()
	}
}

// lapseWindow is how far back takeOverLapsed looks for lapsed replicas.
const lapseWindow = time.Minute

// heartbeat marks this replica alive.
func (b *Bridge) heartbeat() {
	ctx, cancel := context.WithTimeout(b.background, b.heartbeatTTL())
	defer cancel()
	if err := b.store.Heartbeat(ctx, b.cfg.ReplicaID, b.heartbeatTTL()); err != nil {
		b.log.Warn("replica heartbeat", zap.Error(err))
	}
}

// recoverOrphans answers the session's requests whose forwarding replica
// died: the stream owner claims each one (so that exactly one replica
// answers), then resumes its upstream response stream from the last event id
// relayed, goes on with a translated call that waited for the client's input
// (resumeRound), or answers it with a JSON-RPC error.
func (b *Bridge) recoverOrphans(ctx context.Context, sessionID string) {
	reqs, err := b.store.ListRequests(ctx, sessionID)
	if err != nil {
		return
	}
	// One liveness look-up per replica, however many of its requests.
	dead := map[string]bool{}
	for key, r := range reqs {
		if r.Replica == b.cfg.ReplicaID {
			continue
		}
		isDead, known := dead[r.Replica]
		if !known {
			alive, err := b.store.ReplicaAlive(ctx, r.Replica)
			isDead = err == nil && !alive
			dead[r.Replica] = isDead
		}
		if !isDead {
			continue
		}
		claimed, err := b.store.ClaimRequest(ctx, sessionID, key)
		if err != nil || !claimed {
			continue
		}
		b.log.Info("answering a request whose replica died",
			zap.String("session", shortID(sessionID)), zap.String("replica", r.Replica), zap.Bool("resumable", r.LastEventID != ""))
		b.startWork()
		go b.answerOrphan(sessionID, key, r)
	}
}

// settleDuplicate handles a request whose id is already in flight in the
// session: a client never reuses an id within a session (the spec forbids
// it, and a new incarnation gets its own session or retires the old
// requests), so it is the same POST sent again, as a load balancer does when
// the replica it first went to died or stopped. It reports whether to
// forward the request now.
//
// The first copy's replica answers it while it lives; this copy takes the
// record over meanwhile (so that the orphan recovery, which answers a dead
// replica's requests with an error when it cannot resume them, leaves it
// alone) and waits. When that replica dies, this copy claims the request
// and resumes its upstream stream where the replica left it, or goes on
// with the round of input requests a translated call waits for, or, when
// it had neither, forwards the request again; when the request is
// answered, this copy is dropped. The client gets one answer either way.
func (b *Bridge) settleDuplicate(ctx context.Context, c *call) bool {
	first := ""
	for {
		reqs, err := b.store.ListRequests(ctx, c.sessionID)
		r, found := reqs[c.key]
		switch {
		case err != nil:
		case !found:
			return false // answered by its first copy's replica
		case first == "":
			first = r.Replica
			if first != b.cfg.ReplicaID {
				waiting := r
				waiting.Replica = b.cfg.ReplicaID
				if _, err := b.store.ReassignRequest(ctx, c.sessionID, c.key, waiting); err == nil {
					defer b.giveBack(c, r)
				}
			}
		default:
			if alive, err := b.store.ReplicaAlive(ctx, first); err == nil && !alive {
				if claimed, err := b.store.ClaimRequest(ctx, c.sessionID, c.key); err == nil && claimed {
					if r.LastEventID == "" && !b.roundPending(ctx, c.sessionID, c.key) {
						b.log.Info("a request sent again after its replica died: forwarding it anew", zap.String("session", shortID(c.sessionID)))
						return true
					}
					b.startWork()
					b.answerOrphan(c.sessionID, c.key, r)
					return false
				}
			}
		}
		// A beat: the first copy's replica cannot be seen dead sooner.
		if !sleepCtx(ctx, b.heartbeatInterval()) {
			return false
		}
	}
}

// giveBack returns a request taken over by settleDuplicate to its first
// replica's name when this replica stops waiting for it (shutdown), so that
// whoever outlives which answers it.
func (b *Bridge) giveBack(c *call, r sessionstore.Request) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := b.store.ReassignRequest(ctx, c.sessionID, c.key, r); err != nil {
		b.log.Debug("giving a request back to its replica", zap.String("session", shortID(c.sessionID)), zap.Error(err))
	}
}

// answerOrphan answers a request whose replica died, claimed under key: it
// records the request again as this replica's (so that another replica
// recovers it should this one die too, and so that a response arriving on
// another stream settles it), resumes its upstream response stream, and
// answers with an error when that is impossible or ends without a response.
func (b *Bridge) answerOrphan(sessionID, key string, r sessionstore.Request) {
	defer b.endWork()
	ctx := b.background
	sess, err := b.store.Get(ctx, sessionID)
	if err != nil {
		return
	}
	c := &call{sessionID: sessionID, session: sess, env: Envelope{Kind: KindRequest, ID: r.ID}, key: key}
	r.Replica = b.cfg.ReplicaID
	if err := b.store.TrackRequest(ctx, sessionID, key, r); err == nil {
		c.tracked = true
	}
	if token, p := pendingRound(sess, key); p != nil {
		// A translated call that waited for the client's input.
		b.resumeRound(ctx, c, sess, token, p)
		return
	}
	if r.LastEventID != "" && r.UpstreamSessionID == sess.UpstreamSessionID {
		b.relayStream(ctx, sess, b.credentialsFor(sessionID), nil, r.LastEventID, b.answeredCheck(c),
			func(msg []byte, _ bool) bool {
				env, err := PeekEnvelope(msg)
				switch {
				case err != nil:
					return false
				case env.Kind == KindResponse && answersCall(env, c):
					b.noteMessage(sessionID, toClient, env)
					b.answer(c, ReplaceID(msg, env, r.ID))
					return true
				default:
					return b.relayOther(ctx, sessionID, msg, env)
				}
			},
			func(eventID string) {
				if err := b.store.SetRequestEventID(ctx, sessionID, key, eventID); err != nil {
					b.log.Debug("recording the upstream event id", zap.String("session", shortID(sessionID)), zap.Error(err))
				}
			})
	}
	// Settled elsewhere meanwhile, this does nothing: the record is gone.
	b.fail(c, "replica_stopped", "the bridge replica forwarding this request stopped before the upstream answered")
}
