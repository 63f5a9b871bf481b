package sessionstore

import (
	"context"
	"time"
)

// Observer is told about every call of an observed store: its operation's
// name (create, get, update, …), how long it took and its error.
type Observer func(op string, took time.Duration, err error)

// Observe returns st with every call reported to observe, for metrics.
func Observe(st Store, observe Observer) Store {
	return &observed{st: st, observe: observe}
}

type observed struct {
	st      Store
	observe Observer
}

// done reports a call that started at start and returned err.
func (o *observed) done(op string, start time.Time, err *error) {
	o.observe(op, time.Since(start), *err)
}

func (o *observed) Create(ctx context.Context, s *Session) (err error) {
	defer o.done("create", time.Now(), &err)
	return o.st.Create(ctx, s)
}

func (o *observed) Get(ctx context.Context, id string) (sess *Session, err error) {
	defer o.done("get", time.Now(), &err)
	return o.st.Get(ctx, id)
}

func (o *observed) Update(ctx context.Context, id string, fn func(*Session) error) (sess *Session, err error) {
	defer o.done("update", time.Now(), &err)
	return o.st.Update(ctx, id, fn)
}

func (o *observed) Delete(ctx context.Context, id string) (deleted bool, err error) {
	defer o.done("delete", time.Now(), &err)
	return o.st.Delete(ctx, id)
}

func (o *observed) Expired(ctx context.Context, now time.Time, limit int) (list []*Session, err error) {
	defer o.done("expired", time.Now(), &err)
	return o.st.Expired(ctx, now, limit)
}

func (o *observed) Adoptable(ctx context.Context, fingerprint, upstream, protocolVersion string, now time.Time) (sess *Session, err error) {
	defer o.done("adoptable", time.Now(), &err)
	return o.st.Adoptable(ctx, fingerprint, upstream, protocolVersion, now)
}

func (o *observed) RememberInitialize(ctx context.Context, fingerprint, upstream string, msg []byte, ttl time.Duration) (err error) {
	defer o.done("remember_initialize", time.Now(), &err)
	return o.st.RememberInitialize(ctx, fingerprint, upstream, msg, ttl)
}

func (o *observed) RecallInitialize(ctx context.Context, fingerprint, upstream string) (msg []byte, err error) {
	defer o.done("recall_initialize", time.Now(), &err)
	return o.st.RecallInitialize(ctx, fingerprint, upstream)
}

func (o *observed) IdentityKey(ctx context.Context) (key []byte, err error) {
	defer o.done("identity_key", time.Now(), &err)
	return o.st.IdentityKey(ctx)
}

func (o *observed) Append(ctx context.Context, id string, m Message) (seq uint64, err error) {
	defer o.done("append", time.Now(), &err)
	return o.st.Append(ctx, id, m)
}

func (o *observed) Read(ctx context.Context, id string, after uint64, limit int) (msgs []Message, err error) {
	defer o.done("read", time.Now(), &err)
	return o.st.Read(ctx, id, after, limit)
}

func (o *observed) Ack(ctx context.Context, id, owner string, seq uint64) (err error) {
	defer o.done("ack", time.Now(), &err)
	return o.st.Ack(ctx, id, owner, seq)
}

func (o *observed) Subscribe(ctx context.Context, id string) (ch <-chan struct{}, stop func(), err error) {
	defer o.done("subscribe", time.Now(), &err)
	return o.st.Subscribe(ctx, id)
}

func (o *observed) TrackRequest(ctx context.Context, sessionID, key string, r Request) (err error) {
	defer o.done("track_request", time.Now(), &err)
	return o.st.TrackRequest(ctx, sessionID, key, r)
}

func (o *observed) SetRequestEventID(ctx context.Context, sessionID, key, eventID string) (err error) {
	defer o.done("set_request_event_id", time.Now(), &err)
	return o.st.SetRequestEventID(ctx, sessionID, key, eventID)
}

func (o *observed) FinishRequest(ctx context.Context, sessionID, key string, answer Message) (done bool, err error) {
	defer o.done("finish_request", time.Now(), &err)
	return o.st.FinishRequest(ctx, sessionID, key, answer)
}

func (o *observed) ReassignRequest(ctx context.Context, sessionID, key string, r Request) (found bool, err error) {
	defer o.done("reassign_request", time.Now(), &err)
	return o.st.ReassignRequest(ctx, sessionID, key, r)
}

func (o *observed) ClaimRequest(ctx context.Context, sessionID, key string) (claimed bool, err error) {
	defer o.done("claim_request", time.Now(), &err)
	return o.st.ClaimRequest(ctx, sessionID, key)
}

func (o *observed) ListRequests(ctx context.Context, sessionID string) (reqs map[string]Request, err error) {
	defer o.done("list_requests", time.Now(), &err)
	return o.st.ListRequests(ctx, sessionID)
}

func (o *observed) Heartbeat(ctx context.Context, replica string, ttl time.Duration) (err error) {
	defer o.done("heartbeat", time.Now(), &err)
	return o.st.Heartbeat(ctx, replica, ttl)
}

func (o *observed) LapsedReplicas(ctx context.Context, since, now time.Time) (replicas []string, err error) {
	defer o.done("lapsed_replicas", time.Now(), &err)
	return o.st.LapsedReplicas(ctx, since, now)
}

func (o *observed) ReplicaAlive(ctx context.Context, replica string) (alive bool, err error) {
	defer o.done("replica_alive", time.Now(), &err)
	return o.st.ReplicaAlive(ctx, replica)
}

// Interface guard
var _ Store = (*observed)(nil)
