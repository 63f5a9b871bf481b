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
// relayed, or answers it with a JSON-RPC error.
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
			zap.String("session", sessionID), zap.String("replica", r.Replica), zap.Bool("resumable", r.LastEventID != ""))
		go b.answerOrphan(sessionID, r)
	}
}

func (b *Bridge) answerOrphan(sessionID string, r sessionstore.Request) {
	ctx := b.background
	answered := false
	sess, err := b.store.Get(ctx, sessionID)
	if err != nil {
		return
	}
	if r.LastEventID != "" && r.UpstreamSessionID == sess.UpstreamSessionID {
		orphan := &call{sessionID: sessionID, env: Envelope{Kind: KindRequest, ID: r.ID}}
		b.relayStream(ctx, sess, b.credentialsFor(sessionID), nil, r.LastEventID,
			func() bool { return answered },
			func(msg []byte, _ bool) {
				env, err := PeekEnvelope(msg)
				switch {
				case err != nil || answered:
				case env.Kind == KindResponse && answersCall(env, orphan):
					answered = true
					b.deliver(sessionID, ReplaceID(msg, env, r.ID))
				default:
					b.relayOther(ctx, sessionID, msg, env)
				}
			}, nil)
	}
	if !answered {
		b.deliver(sessionID, errorMessage(r.ID, codeInternalError,
			"the bridge replica forwarding this request stopped before the upstream answered"))
	}
}
