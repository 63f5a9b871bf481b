// Package memory is the embedded session store: everything lives in this
// process, so it serves a single Caddy instance (or several sites in one).
package memory

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"sync"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxSessions = 10000
	DefaultMaxPending  = 1024
	// DefaultReplayWindow is how many delivered messages are kept for
	// replay by default: a reconnecting client may have missed what was
	// flushed to a connection just before it broke.
	DefaultReplayWindow = 64
)

// Options bound the store.
type Options struct {
	// MaxSessions caps the number of sessions; Create fails beyond it.
	MaxSessions int
	// MaxPending caps the undelivered messages of one mailbox; Append fails
	// beyond it.
	MaxPending int
	// MaxSessionsPerCaller caps the live sessions of one Caller; Create
	// fails beyond it. Default: sessionstore.DefaultMaxSessionsPerCaller.
	MaxSessionsPerCaller int
	// ReplayWindow is how many delivered messages are kept for replay:
	// zero means the default, DefaultReplayWindow; a negative value keeps
	// none (as in the Redis store).
	ReplayWindow int
}

// Store is an in-process sessionstore.Store.
type Store struct {
	opts Options

	mu       sync.Mutex
	sessions map[string]*entry
	// replicas maps a replica to the end of its heartbeat.
	replicas map[string]time.Time
	// initializes holds each caller's latest initialize per upstream.
	initializes map[string]rememberedInitialize
	// callers holds the ids of each Caller's sessions.
	callers map[string]map[string]struct{}
	// identityKey is made at New and never leaves the process.
	identityKey []byte
}

type rememberedInitialize struct {
	msg   []byte
	until time.Time
}

type entry struct {
	session sessionstore.Session
	// mailbox holds messages with Seq in (base, base+len(mailbox)].
	mailbox []sessionstore.Message
	lastSeq uint64
	acked   uint64
	// subscribers are woken (non-blocking) on every append.
	subscribers map[chan struct{}]struct{}
	// requests are the session's requests in flight, by key.
	requests map[string]sessionstore.Request
}

// New returns an empty store.
func New(opts Options) *Store {
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxSessionsPerCaller <= 0 {
		opts.MaxSessionsPerCaller = sessionstore.DefaultMaxSessionsPerCaller
	}
	switch {
	case opts.ReplayWindow == 0:
		opts.ReplayWindow = DefaultReplayWindow
	case opts.ReplayWindow < 0:
		opts.ReplayWindow = 0
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return &Store{opts: opts, identityKey: key, sessions: make(map[string]*entry), replicas: make(map[string]time.Time),
		initializes: make(map[string]rememberedInitialize), callers: make(map[string]map[string]struct{})}
}

// SetLimits changes the limits in place (a configuration reload); zero or
// less means the default. Sessions and messages already held beyond a
// lowered limit stay.
func (st *Store) SetLimits(l sessionstore.Limits) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.opts.MaxSessions = cmp.Or(max(l.MaxSessions, 0), DefaultMaxSessions)
	st.opts.MaxPending = cmp.Or(max(l.MaxPending, 0), DefaultMaxPending)
	st.opts.MaxSessionsPerCaller = cmp.Or(max(l.MaxSessionsPerCaller, 0), sessionstore.DefaultMaxSessionsPerCaller)
}

func copySession(s *sessionstore.Session) *sessionstore.Session {
	c := *s
	if s.Initialize != nil {
		c.Initialize = append([]byte(nil), s.Initialize...)
	}
	c.Inputs = sessionstore.CloneInputs(s.Inputs)
	c.Subscriptions = append([]string(nil), s.Subscriptions...)
	return &c
}

// Create implements sessionstore.Store.
func (st *Store) Create(_ context.Context, s *sessionstore.Session) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.sessions[s.ID]; ok {
		return sessionstore.ErrExists
	}
	if len(st.sessions) >= st.opts.MaxSessions {
		return sessionstore.ErrTooManySessions
	}
	if s.Caller != "" {
		// Only a caller at its limit has its sessions counted one by one
		// (some may have expired): a busy caller's Create stays O(1).
		limit := st.opts.MaxSessionsPerCaller
		if len(st.callers[s.Caller]) >= limit && st.liveSessionsLocked(s.Caller, s.CreatedAt) >= limit {
			return sessionstore.ErrTooManyForCaller
		}
		if st.callers[s.Caller] == nil {
			st.callers[s.Caller] = make(map[string]struct{})
		}
		st.callers[s.Caller][s.ID] = struct{}{}
	}
	st.sessions[s.ID] = &entry{
		session:     *copySession(s),
		subscribers: make(map[chan struct{}]struct{}),
		requests:    make(map[string]sessionstore.Request),
	}
	return nil
}

// liveSessionsLocked counts the caller's sessions that expire after now
// (expired ones wait for the janitor, and count no more).
func (st *Store) liveSessionsLocked(caller string, now time.Time) int {
	n := 0
	for id := range st.callers[caller] {
		if e := st.sessions[id]; e != nil && e.session.ExpiresAt.After(now) {
			n++
		}
	}
	return n
}

// IdentityKey implements sessionstore.Store.
func (st *Store) IdentityKey(context.Context) ([]byte, error) {
	return append([]byte(nil), st.identityKey...), nil
}

// Get implements sessionstore.Store.
func (st *Store) Get(_ context.Context, id string) (*sessionstore.Session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return nil, sessionstore.ErrNotFound
	}
	return copySession(&e.session), nil
}

// Update implements sessionstore.Store.
func (st *Store) Update(_ context.Context, id string, fn func(*sessionstore.Session) error) (*sessionstore.Session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return nil, sessionstore.ErrNotFound
	}
	next := copySession(&e.session)
	if err := fn(next); err != nil {
		return nil, err
	}
	next.ID = id
	next.Caller = e.session.Caller // fixed at Create: the count follows it
	e.session = *copySession(next)
	return next, nil
}

// Delete implements sessionstore.Store.
func (st *Store) Delete(_ context.Context, id string) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return false, nil
	}
	delete(st.sessions, id)
	if ids := st.callers[e.session.Caller]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(st.callers, e.session.Caller)
		}
	}
	// Wake subscribers so that they notice the session is gone.
	for ch := range e.subscribers {
		wake(ch)
	}
	return true, nil
}

// Expired implements sessionstore.Store.
func (st *Store) Expired(_ context.Context, now time.Time, limit int) ([]*sessionstore.Session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []*sessionstore.Session
	for _, e := range st.sessions {
		if len(out) >= limit {
			break
		}
		if e.session.ExpiresAt.Before(now) {
			out = append(out, copySession(&e.session))
		}
	}
	return out, nil
}

// Adoptable implements sessionstore.Store.
func (st *Store) Adoptable(_ context.Context, fingerprint, upstream, protocolVersion string, now time.Time) (*sessionstore.Session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var best *sessionstore.Session
	held := false
	for _, e := range st.sessions {
		s := &e.session
		if s.Fingerprint != fingerprint || s.Upstream != upstream || !s.Initialized ||
			(protocolVersion != "" && s.ProtocolVersion != protocolVersion) {
			continue
		}
		if st.liveOwnerLocked(s, now) {
			held = true
			continue
		}
		if best == nil || s.ExpiresAt.After(best.ExpiresAt) {
			best = s
		}
	}
	switch {
	case best != nil:
		return copySession(best), nil
	case held:
		return nil, sessionstore.ErrAdoptionPending
	}
	return nil, sessionstore.ErrNotFound
}

// RememberInitialize implements sessionstore.Store. It keeps at most
// MaxSessions entries: expired ones go first, then an arbitrary one.
func (st *Store) RememberInitialize(_ context.Context, fingerprint, upstream string, msg []byte, ttl time.Duration) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	key := fingerprint + "\x00" + upstream
	if _, ok := st.initializes[key]; !ok && len(st.initializes) >= st.opts.MaxSessions {
		for k, r := range st.initializes {
			if r.until.Before(now) {
				delete(st.initializes, k)
			}
		}
		for k := range st.initializes {
			if len(st.initializes) < st.opts.MaxSessions {
				break
			}
			delete(st.initializes, k)
		}
	}
	st.initializes[key] = rememberedInitialize{msg: append([]byte(nil), msg...), until: now.Add(ttl)}
	return nil
}

// RecallInitialize implements sessionstore.Store.
func (st *Store) RecallInitialize(_ context.Context, fingerprint, upstream string) ([]byte, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r, ok := st.initializes[fingerprint+"\x00"+upstream]
	if !ok || !r.until.After(time.Now()) {
		return nil, sessionstore.ErrNotFound
	}
	return append([]byte(nil), r.msg...), nil
}

// liveOwnerLocked reports whether a stream holds the session: its lease
// runs and its replica's heartbeat too.
func (st *Store) liveOwnerLocked(s *sessionstore.Session, now time.Time) bool {
	return s.Owner != "" && s.OwnerLeaseUntil.After(now) &&
		st.replicas[sessionstore.OwnerReplica(s.Owner)].After(time.Now())
}

// Append implements sessionstore.Store.
func (st *Store) Append(_ context.Context, id string, m sessionstore.Message) (uint64, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return 0, sessionstore.ErrNotFound
	}
	return st.appendLocked(e, m)
}

func (st *Store) appendLocked(e *entry, m sessionstore.Message) (uint64, error) {
	if e.lastSeq-e.acked >= uint64(st.opts.MaxPending) {
		return 0, sessionstore.ErrMailboxFull
	}
	e.lastSeq++
	m.Seq = e.lastSeq
	m.Data = append([]byte(nil), m.Data...)
	e.mailbox = append(e.mailbox, m)
	for ch := range e.subscribers {
		wake(ch)
	}
	return m.Seq, nil
}

// Read implements sessionstore.Store.
func (st *Store) Read(_ context.Context, id string, after uint64, limit int) ([]sessionstore.Message, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return nil, sessionstore.ErrNotFound
	}
	if len(e.mailbox) == 0 || after >= e.lastSeq || limit <= 0 {
		return nil, nil
	}
	first := e.mailbox[0].Seq
	start := 0
	if after >= first {
		start = int(after - first + 1)
	}
	end := min(len(e.mailbox), start+limit)
	out := make([]sessionstore.Message, end-start)
	copy(out, e.mailbox[start:end])
	// Data slices are never modified after Append, so sharing them is safe.
	return out, nil
}

// Ack implements sessionstore.Store.
func (st *Store) Ack(_ context.Context, id, owner string, seq uint64) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return sessionstore.ErrNotFound
	}
	if owner != "" && e.session.Owner != owner {
		return sessionstore.ErrNotOwner
	}
	if seq > e.lastSeq {
		seq = e.lastSeq
	}
	if seq <= e.acked {
		return nil
	}
	e.acked = seq
	e.session.Delivered = seq
	// Keep ReplayWindow delivered messages; drop older ones.
	keepFrom := uint64(0)
	if seq > uint64(st.opts.ReplayWindow) {
		keepFrom = seq - uint64(st.opts.ReplayWindow)
	}
	drop := 0
	for drop < len(e.mailbox) && e.mailbox[drop].Seq <= keepFrom {
		e.mailbox[drop].Data = nil // let the payload go now
		drop++
	}
	// Reslicing keeps this O(dropped); append reallocates (copying only the
	// live entries) when the array's tail is used up.
	e.mailbox = e.mailbox[drop:]
	return nil
}

// Subscribe implements sessionstore.Store.
func (st *Store) Subscribe(_ context.Context, id string) (<-chan struct{}, func(), error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[id]
	if !ok {
		return nil, nil, sessionstore.ErrNotFound
	}
	ch := make(chan struct{}, 1)
	e.subscribers[ch] = struct{}{}
	return ch, func() {
		st.mu.Lock()
		defer st.mu.Unlock()
		delete(e.subscribers, ch)
	}, nil
}

// TrackRequest implements sessionstore.Store.
func (st *Store) TrackRequest(_ context.Context, sessionID, key string, r sessionstore.Request) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[sessionID]
	if !ok {
		return sessionstore.ErrNotFound
	}
	if _, ok := e.requests[key]; ok {
		return sessionstore.ErrExists
	}
	r.ID = append(json.RawMessage(nil), r.ID...)
	e.requests[key] = r
	return nil
}

// SetRequestEventID implements sessionstore.Store.
func (st *Store) SetRequestEventID(_ context.Context, sessionID, key, eventID string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if e, ok := st.sessions[sessionID]; ok {
		if r, ok := e.requests[key]; ok {
			r.LastEventID = eventID
			e.requests[key] = r
		}
	}
	return nil
}

// FinishRequest implements sessionstore.Store.
func (st *Store) FinishRequest(_ context.Context, sessionID, key string, answer sessionstore.Message) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[sessionID]
	if !ok {
		return false, sessionstore.ErrNotFound
	}
	if _, ok := e.requests[key]; !ok {
		return false, nil
	}
	if _, err := st.appendLocked(e, answer); err != nil {
		return false, err
	}
	delete(e.requests, key)
	return true, nil
}

// ReassignRequest implements sessionstore.Store.
func (st *Store) ReassignRequest(_ context.Context, sessionID, key string, r sessionstore.Request) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[sessionID]
	if !ok {
		return false, sessionstore.ErrNotFound
	}
	cur, ok := e.requests[key]
	if !ok {
		return false, nil
	}
	cur.Replica, cur.UpstreamSessionID = r.Replica, r.UpstreamSessionID
	e.requests[key] = cur
	return true, nil
}

// ClaimRequest implements sessionstore.Store.
func (st *Store) ClaimRequest(_ context.Context, sessionID, key string) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[sessionID]
	if !ok {
		return false, sessionstore.ErrNotFound
	}
	if _, ok := e.requests[key]; !ok {
		return false, nil
	}
	delete(e.requests, key)
	return true, nil
}

// ListRequests implements sessionstore.Store.
func (st *Store) ListRequests(_ context.Context, sessionID string) (map[string]sessionstore.Request, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.sessions[sessionID]
	if !ok {
		return nil, sessionstore.ErrNotFound
	}
	out := make(map[string]sessionstore.Request, len(e.requests))
	for k, r := range e.requests {
		out[k] = r
	}
	return out, nil
}

// Heartbeat implements sessionstore.Store.
func (st *Store) Heartbeat(_ context.Context, replica string, ttl time.Duration) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	st.replicas[replica] = now.Add(max(ttl, 0))
	for r, until := range st.replicas {
		if until.Before(now.Add(-sessionstore.LapsedReplicaMemory)) {
			delete(st.replicas, r)
		}
	}
	return nil
}

// LapsedReplicas implements sessionstore.Store.
func (st *Store) LapsedReplicas(_ context.Context, since, now time.Time) ([]string, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []string
	for r, until := range st.replicas {
		if until.After(since) && !until.After(now) {
			out = append(out, r)
		}
	}
	return out, nil
}

// ReplicaAlive implements sessionstore.Store.
func (st *Store) ReplicaAlive(_ context.Context, replica string) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.replicas[replica].After(time.Now()), nil
}

// Len reports the number of sessions, for metrics and tests.
func (st *Store) Len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions)
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

var _ sessionstore.Store = (*Store)(nil)
