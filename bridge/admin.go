package bridge

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// SessionInfo is what an operator sees of a session (the admin API).
type SessionInfo struct {
	ID string `json:"id"`
	// State is "streaming" while a stream holds the session, else
	// "released" (waiting for its client to come back).
	State string `json:"state"`
	// OwnerReplica is the replica whose stream holds the session.
	OwnerReplica     string  `json:"owner_replica"`
	AgeSeconds       float64 `json:"age_seconds"`
	IdleSeconds      float64 `json:"idle_seconds"`
	Upstream         string  `json:"upstream"`
	ProtocolVersion  string  `json:"protocol_version"`
	Initialized      bool    `json:"initialized"`
	RequestsInFlight int     `json:"requests_in_flight"`
}

// ListSessions describes up to limit sessions of store, whichever replica
// holds them.
func ListSessions(ctx context.Context, store sessionstore.Store, limit int, now time.Time) ([]SessionInfo, error) {
	// Expired with a time after every session's expiry lists them all.
	all, err := store.Expired(ctx, now.AddDate(100, 0, 0), limit)
	if err != nil {
		return nil, fmt.Errorf("listing sessions: %w", err)
	}
	out := make([]SessionInfo, 0, len(all))
	for _, s := range all {
		info := SessionInfo{
			ID:              s.ID,
			State:           "released",
			AgeSeconds:      seconds(now.Sub(s.CreatedAt)),
			Upstream:        withoutQuery(s.Upstream),
			ProtocolVersion: s.ProtocolVersion,
			Initialized:     s.Initialized,
		}
		if s.Owner != "" && s.OwnerLeaseUntil.After(now) {
			info.State, info.OwnerReplica = "streaming", sessionstore.OwnerReplica(s.Owner)
		} else if !s.ReleasedAt.IsZero() {
			info.IdleSeconds = seconds(now.Sub(s.ReleasedAt))
		}
		if reqs, err := store.ListRequests(ctx, s.ID); err == nil {
			info.RequestsInFlight = len(reqs)
		}
		out = append(out, info)
	}
	return out, nil
}

// withoutQuery drops a URL's query, where upstreams are sometimes given
// secrets, from what the admin API shows.
func withoutQuery(raw string) string {
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		return raw[:i]
	}
	return raw
}

func seconds(d time.Duration) float64 { return math.Round(max(d, 0).Seconds()*1000) / 1000 }

// Store is the store the bridge keeps its sessions in, as New was given
// it: bridges sharing a store return the same value.
func (b *Bridge) Store() sessionstore.Store { return b.givenStore }

// EndSession ends a session at an operator's request: it is removed from
// the store (its stream, on whichever replica, ends at once and its client
// gets a new session when it reconnects) and its upstream session gets
// DELETE. It reports false for an unknown session.
func (b *Bridge) EndSession(ctx context.Context, id string) (bool, error) {
	s, err := b.store.Get(ctx, id)
	if errors.Is(err, sessionstore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	deleted, err := b.store.Delete(ctx, id)
	if err != nil || !deleted {
		return deleted, err
	}
	if s.UpstreamSessionID != "" {
		if resp, err := b.do(ctx, labelDelete, http.MethodDelete, s, b.credentialsFor(id), nil, ""); err != nil {
			b.log.Debug("ending upstream session", zap.String("session", shortID(id)), zap.Error(err))
		} else {
			drain(resp)
		}
	}
	b.forget(id)
	b.sessionEnded(s, "deleted")
	return true, nil
}
