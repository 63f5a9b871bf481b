package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// requestRest is what q:K holds: the request without its JSON-RPC id (kept
// byte for byte in i:K) and its last event id (e:K, updated on its own).
type requestRest struct {
	Replica           string `json:"replica"`
	UpstreamSessionID string `json:"upstream_session_id,omitempty"`
}

func encodeRest(r sessionstore.Request) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(requestRest{Replica: r.Replica, UpstreamSessionID: r.UpstreamSessionID}); err != nil {
		return "", fmt.Errorf("redis session store: encoding request: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// TrackRequest implements sessionstore.Store.
func (s *Store) TrackRequest(ctx context.Context, sessionID, key string, r sessionstore.Request) error {
	if sessionID == "" {
		return sessionstore.ErrNotFound
	}
	rest, err := encodeRest(r)
	if err != nil {
		return err
	}
	res, err := trackScript.Run(ctx, s.rdb(), []string{s.hashKey(sessionID), s.requestsKey(sessionID)},
		key, rest, []byte(r.ID), r.LastEventID).Int()
	if err != nil {
		return unavailable("tracking request", err)
	}
	switch res {
	case codeNotFound:
		return sessionstore.ErrNotFound
	case 0:
		return sessionstore.ErrExists
	}
	return nil
}

// ReassignRequest implements sessionstore.Store.
func (s *Store) ReassignRequest(ctx context.Context, sessionID, key string, r sessionstore.Request) (bool, error) {
	if sessionID == "" {
		return false, sessionstore.ErrNotFound
	}
	rest, err := encodeRest(r)
	if err != nil {
		return false, err
	}
	n, err := reassignScript.Run(ctx, s.rdb(), []string{s.requestsKey(sessionID)}, key, rest).Int()
	if err != nil {
		return false, unavailable("reassigning request", err)
	}
	return n == 1, nil
}

// SetRequestEventID implements sessionstore.Store.
func (s *Store) SetRequestEventID(ctx context.Context, sessionID, key, eventID string) error {
	if sessionID == "" {
		return nil
	}
	if err := eventIDScript.Run(ctx, s.rdb(), []string{s.requestsKey(sessionID)}, key, eventID).Err(); err != nil {
		return unavailable("recording event id", err)
	}
	return nil
}

// FinishRequest implements sessionstore.Store.
func (s *Store) FinishRequest(ctx context.Context, sessionID, key string, answer sessionstore.Message) (bool, error) {
	if sessionID == "" {
		return false, sessionstore.ErrNotFound
	}
	res, err := finishScript.Run(ctx, s.rdb(),
		[]string{s.hashKey(sessionID), s.mailboxKey(sessionID), s.requestsKey(sessionID)},
		boolArg(answer.Control), answer.Data, s.maxPending.Load(), s.channel, sessionID, key).Int64()
	if err != nil {
		return false, unavailable("finishing request", err)
	}
	switch {
	case res == codeNotFound:
		return false, sessionstore.ErrNotFound
	case res == codeFull:
		return false, sessionstore.ErrMailboxFull
	case res == 0:
		return false, nil
	case res < 0:
		return false, fmt.Errorf("%w: finishing request: unexpected result %d", sessionstore.ErrUnavailable, res)
	}
	return true, nil
}

// ClaimRequest implements sessionstore.Store.
func (s *Store) ClaimRequest(ctx context.Context, sessionID, key string) (bool, error) {
	if sessionID == "" {
		return false, sessionstore.ErrNotFound
	}
	// The claim needs no session (a missing one has no requests either);
	// only when nothing was claimed does EXISTS tell ErrNotFound apart.
	n, err := claimScript.Run(ctx, s.rdb(), []string{s.requestsKey(sessionID)}, key).Int()
	if err != nil {
		return false, unavailable("claiming request", err)
	}
	if n == 1 {
		return true, nil
	}
	exists, err := s.rdb().Exists(ctx, s.hashKey(sessionID)).Result()
	if err != nil {
		return false, unavailable("claiming request", err)
	}
	if exists == 0 {
		return false, sessionstore.ErrNotFound
	}
	return false, nil
}

// ListRequests implements sessionstore.Store.
func (s *Store) ListRequests(ctx context.Context, sessionID string) (map[string]sessionstore.Request, error) {
	if sessionID == "" {
		return nil, sessionstore.ErrNotFound
	}
	var (
		exists *goredis.IntCmd
		all    *goredis.MapStringStringCmd
	)
	_, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
		exists = p.Exists(ctx, s.hashKey(sessionID))
		all = p.HGetAll(ctx, s.requestsKey(sessionID))
		return nil
	})
	if err != nil {
		return nil, unavailable("listing requests", err)
	}
	if exists.Val() == 0 {
		return nil, sessionstore.ErrNotFound
	}
	fields := all.Val()
	out := make(map[string]sessionstore.Request)
	for f, v := range fields {
		key, ok := strings.CutPrefix(f, "q:")
		if !ok {
			continue
		}
		var rest requestRest
		if err := json.Unmarshal([]byte(v), &rest); err != nil {
			return nil, fmt.Errorf("redis session store: decoding request %q of session %q: %w", key, sessionID, err)
		}
		r := sessionstore.Request{
			Replica:           rest.Replica,
			UpstreamSessionID: rest.UpstreamSessionID,
			LastEventID:       fields["e:"+key],
		}
		if id, ok := fields["i:"+key]; ok && id != "" {
			r.ID = json.RawMessage(id)
		}
		out[key] = r
	}
	return out, nil
}

// Heartbeat implements sessionstore.Store: a key that expires after ttl.
func (s *Store) Heartbeat(ctx context.Context, replica string, ttl time.Duration) error {
	now := time.Now()
	_, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
		if ttl <= 0 {
			p.Del(ctx, s.replicaKey(replica))
		} else {
			p.Set(ctx, s.replicaKey(replica), "1", max(ttl, time.Millisecond))
		}
		// The index of beats' ends, for LapsedReplicas.
		index := s.replicasKey()
		p.ZAdd(ctx, index, goredis.Z{Score: float64(now.Add(max(ttl, 0)).UnixMilli()), Member: replica})
		p.ZRemRangeByScore(ctx, index, "-inf", strconv.FormatInt(now.Add(-sessionstore.LapsedReplicaMemory).UnixMilli(), 10))
		p.Expire(ctx, index, 2*sessionstore.LapsedReplicaMemory)
		return nil
	})
	if err != nil {
		return unavailable("heartbeat", err)
	}
	return nil
}

// LapsedReplicas implements sessionstore.Store.
func (s *Store) LapsedReplicas(ctx context.Context, since, now time.Time) ([]string, error) {
	replicas, err := s.rdb().ZRangeByScore(ctx, s.replicasKey(), &goredis.ZRangeBy{
		Min: "(" + strconv.FormatInt(since.UnixMilli(), 10),
		Max: strconv.FormatInt(now.UnixMilli(), 10),
	}).Result()
	if err != nil {
		return nil, unavailable("listing lapsed replicas", err)
	}
	return replicas, nil
}

// ReplicaAlive implements sessionstore.Store.
func (s *Store) ReplicaAlive(ctx context.Context, replica string) (bool, error) {
	n, err := s.rdb().Exists(ctx, s.replicaKey(replica)).Result()
	if err != nil {
		return false, unavailable("checking replica", err)
	}
	return n > 0, nil
}
