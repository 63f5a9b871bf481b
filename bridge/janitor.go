package bridge

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// expiryBatch bounds the sessions reaped per janitor pass.
const expiryBatch = 256

// runJanitor beats this replica's heartbeat and reaps expired sessions: it removes them from the store and
// ends their upstream sessions with DELETE. Whichever replica's janitor
// deletes a session first does the DELETE; the others see it gone.
func (b *Bridge) runJanitor() {
	defer b.wg.Done()
	interval := min(max(b.cfg.SessionTTL/10, time.Second), 30*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	beat := time.NewTicker(b.heartbeatInterval())
	defer beat.Stop()
	b.heartbeat()
	acted := map[string]time.Time{}
	for {
		select {
		case <-beat.C:
			b.heartbeat()
			b.takeOverLapsed(acted)
		case <-t.C:
			b.reapExpired()
			b.pruneCredentials()
			b.sessionCache.prune(b.now())
		case <-b.stopJanitor:
			return
		case <-b.background.Done():
			return
		}
	}
}

func (b *Bridge) reapExpired() {
	ctx, cancel := context.WithTimeout(b.background, 30*time.Second)
	defer cancel()
	expired, err := b.store.Expired(ctx, b.now(), expiryBatch)
	if err != nil {
		b.log.Warn("listing expired sessions", zap.Error(err))
		return
	}
	for _, s := range expired {
		// Sessions of other bridges sharing the store are reaped too: the
		// record names its upstream.
		deleted, err := b.store.Delete(ctx, s.ID)
		if err != nil || !deleted {
			continue
		}
		if s.UpstreamSessionID != "" {
			resp, err := b.do(ctx, labelDelete, http.MethodDelete, s, b.credentialsFor(s.ID), nil, "")
			if err != nil {
				b.log.Debug("ending upstream session", zap.String("session", shortID(s.ID)), zap.Error(err))
			} else {
				drain(resp)
			}
		}
		b.forget(s.ID)
		reason := "expired"
		if neverInitialized(s) && s.Link == "" {
			reason = "uninitialized"
		}
		b.sessionEnded(s, reason)
	}
}
