package redis

import (
	"cmp"
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Defaults of Options.
const (
	DefaultKeyPrefix    = "mcpbridge:"
	DefaultMaxSessions  = 100000
	DefaultMaxPending   = 1024
	DefaultReplayWindow = 64
	DefaultRetention    = time.Hour
)

const (
	// updateTries bounds the compare-and-set rounds of one Update.
	updateTries = 100
	// adoptPage and adoptPages bound the candidates Adoptable examines.
	adoptPage  = 32
	adoptPages = 8
	// expiredScanFactor bounds the index entries Expired examines, as a
	// multiple of its limit (stale entries are skipped, not returned).
	expiredScanFactor = 4
	// indexSyncRounds bounds the write-then-verify rounds of index updates;
	// a round is needed only when another Update came in between, so the
	// bound matters only under heavy contention on one session (readers
	// check index entries against the records anyway).
	indexSyncRounds = 10
	// readyWait bounds how long Subscribe waits for the wake-up
	// subscription to be confirmed the first time.
	readyWait = 2 * time.Second
	// maxKeyTTL caps key TTLs (far-future ExpiresAt, huge Retention).
	maxKeyTTL = 10 * 365 * 24 * time.Hour
)

// Options configure the store. Zero values take the defaults.
type Options struct {
	// KeyPrefix starts every key and the wake-up channel; default
	// "mcpbridge:". It must not contain '{' or '}' (the session id is the
	// Cluster hash tag).
	KeyPrefix string
	// MaxSessions caps the number of sessions, approximately (the expiry
	// index is counted, which may briefly hold entries of sessions already
	// gone); Create beyond it returns sessionstore.ErrTooManySessions.
	// Default 100000.
	MaxSessions int
	// MaxPending caps the undelivered messages of one mailbox; Append beyond
	// it returns sessionstore.ErrMailboxFull. Default 1024.
	MaxPending int
	// MaxSessionsPerCaller caps the live sessions of one Session.Caller;
	// Create beyond it returns sessionstore.ErrTooManyForCaller. Default
	// sessionstore.DefaultMaxSessionsPerCaller.
	MaxSessionsPerCaller int
	// ReplayWindow is how many delivered messages are kept for
	// Last-Event-ID replay. Zero means the default, 64; a negative value
	// keeps none.
	ReplayWindow int
	// Retention is how long keys outlive a session's ExpiresAt, so that the
	// janitor of some replica still finds the session (and its upstream
	// session id, to end it) after it expired. Every key's TTL is
	// (ExpiresAt - now) + Retention, refreshed when ExpiresAt changes.
	// Default one hour.
	Retention time.Duration
	// Logger receives reconnection notices; nil discards them.
	Logger *zap.Logger
}

// Store is a sessionstore.Store on Redis (single server, Sentinel or
// Cluster). See the package documentation for the key layout.
type Store struct {
	// client is the current client (SwapClient replaces it), under
	// clientMu.
	clientMu sync.RWMutex
	client   goredis.UniversalClient
	opts     Options
	log      *zap.Logger
	// The limits, which SetLimits changes in place.
	maxSessions, maxPending, maxPerCaller atomic.Int64

	prefix  string
	expiry  string // ZSET of all sessions by ExpiresAt
	channel string // wake-up channel

	// pubsub is the wake-up subscription on the current client, and done is
	// closed when its listener ends; both under clientMu.
	pubsub *goredis.PubSub
	done   chan struct{}
	// stopRefresh ends, and refreshDone reports the end of, the Cluster
	// slot map refresher.
	stopRefresh, refreshDone chan struct{}
	ready                    chan struct{} // closed on the first subscription confirmation
	readyOnce                sync.Once
	closeOnce                sync.Once

	mu     sync.Mutex
	subs   map[string]map[chan struct{}]struct{}
	closed bool
}

// New returns a store on client and starts its wake-up subscriber: one
// Pub/Sub connection, whatever the number of sessions. The store does not
// own the client: Close the store first, then the client.
func New(client goredis.UniversalClient, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redis session store: nil client")
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = DefaultKeyPrefix
	}
	if strings.ContainsAny(opts.KeyPrefix, "{}") {
		return nil, fmt.Errorf("redis session store: key prefix %q must not contain '{' or '}'", opts.KeyPrefix)
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	switch {
	case opts.ReplayWindow == 0:
		opts.ReplayWindow = DefaultReplayWindow
	case opts.ReplayWindow < 0:
		opts.ReplayWindow = 0
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	opts.Retention = min(opts.Retention, maxKeyTTL)
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		client:      client,
		opts:        opts,
		log:         log,
		prefix:      opts.KeyPrefix,
		expiry:      opts.KeyPrefix + "expiry",
		channel:     opts.KeyPrefix + "wake",
		done:        make(chan struct{}),
		ready:       make(chan struct{}),
		stopRefresh: make(chan struct{}),
		subs:        make(map[string]map[chan struct{}]struct{}),
	}
	s.SetLimits(sessionstore.Limits{MaxSessions: opts.MaxSessions, MaxPending: opts.MaxPending,
		MaxSessionsPerCaller: opts.MaxSessionsPerCaller})
	s.subscribe()
	s.refreshDone = make(chan struct{})
	go s.refreshClusterState()
	return s, nil
}

// clusterRefresh is how often a Cluster client reloads its slot map. go-redis
// reloads it on MOVED answers and once a minute; a master that died answers
// nothing, so without this the slots it served stay unreachable for up to a
// minute after their replica was promoted.
const clusterRefresh = time.Second

// refreshClusterState reloads a Cluster client's slot map every
// clusterRefresh until Close (the client may change with SwapClient).
func (s *Store) refreshClusterState() {
	defer close(s.refreshDone)
	tick := time.NewTicker(clusterRefresh)
	defer tick.Stop()
	for {
		select {
		case <-s.stopRefresh:
			return
		case <-tick.C:
			if cc, ok := s.rdb().(*goredis.ClusterClient); ok {
				cc.ReloadState(context.Background())
			}
		}
	}
}

// subscribe starts the wake-up subscription on the current client. It does
// not wait for Redis: if it is down, go-redis keeps reconnecting and
// resubscribing in the background. Call with clientMu held or before the
// store is shared.
func (s *Store) subscribe() {
	s.pubsub = s.client.Subscribe(context.Background(), s.channel)
	go s.listen(s.pubsub.ChannelWithSubscriptions(), s.done)
}

// Client returns the store's current client.
func (s *Store) Client() goredis.UniversalClient { return s.rdb() }

// rdb returns the current client.
func (s *Store) rdb() goredis.UniversalClient {
	s.clientMu.RLock()
	defer s.clientMu.RUnlock()
	return s.client
}

// SwapClient makes client the store's client (a configuration reload that
// changed how to reach the same Redis: credentials, TLS, pool size) and
// returns the previous one, whose wake-up subscription it ends. Sessions,
// streams and subscribers carry on; the caller closes the old client once
// the operations still using it are done.
func (s *Store) SwapClient(client goredis.UniversalClient) goredis.UniversalClient {
	s.clientMu.Lock()
	old, oldSub, oldDone := s.client, s.pubsub, s.done
	s.client, s.done = client, make(chan struct{})
	s.subscribe()
	s.clientMu.Unlock()
	_ = oldSub.Close()
	<-oldDone
	return old
}

// SetLimits changes the limits in place (a configuration reload); zero or
// less means the default.
func (s *Store) SetLimits(l sessionstore.Limits) {
	s.maxSessions.Store(int64(cmp.Or(max(l.MaxSessions, 0), DefaultMaxSessions)))
	s.maxPending.Store(int64(cmp.Or(max(l.MaxPending, 0), DefaultMaxPending)))
	s.maxPerCaller.Store(int64(cmp.Or(max(l.MaxSessionsPerCaller, 0), sessionstore.DefaultMaxSessionsPerCaller)))
}

// Close stops the wake-up subscriber. It does not close the client. Open
// subscriptions are not woken again.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stopRefresh)
		<-s.refreshDone
		s.clientMu.Lock()
		defer s.clientMu.Unlock()
		_ = s.pubsub.Close()
		<-s.done
	})
	return nil
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb().Ping(ctx).Err(); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

// Keys. All keys of one session share the hash tag {id}, so they live in
// one Cluster slot and one script can touch them all.

func (s *Store) hashKey(id string) string     { return s.prefix + "{" + id + "}" }
func (s *Store) mailboxKey(id string) string  { return s.prefix + "{" + id + "}:m" }
func (s *Store) requestsKey(id string) string { return s.prefix + "{" + id + "}:r" }
func (s *Store) replicaKey(r string) string   { return s.prefix + "replica:" + r }
func (s *Store) replicasKey() string          { return s.prefix + "replicas" }
func (s *Store) adoptKey(fp string) string    { return s.prefix + "adopt:" + fp }
func (s *Store) callerKey(c string) string    { return s.prefix + "caller:" + c }

// initializeKey names a caller's remembered initialize for an upstream; the
// upstream URL is hashed to keep the key short and free of its characters.
func (s *Store) initializeKey(fp, upstream string) string {
	sum := sha256.Sum256([]byte(upstream))
	return s.prefix + "init:" + fp + ":" + hex.EncodeToString(sum[:8])
}

// unavailable wraps a failure of Redis so that errors.Is(err,
// sessionstore.ErrUnavailable) holds (and errors.Is on the cause, such as a
// context error, too).
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", sessionstore.ErrUnavailable, what, err)
}

// keyTTL is the TTL of a session's keys: until ExpiresAt, plus Retention.
func (s *Store) keyTTL(expiresAt time.Time) int64 {
	d := time.Until(expiresAt) // saturates instead of overflowing
	d = max(d, 0)
	d = min(d, maxKeyTTL)
	return max((d + s.opts.Retention).Milliseconds(), 1)
}

// score is the index score of ExpiresAt: Unix milliseconds, rounded down.
func score(t time.Time) int64 { return t.UnixMilli() }

// encode returns the stored form of a session. Delivered is kept in its
// own field (acked), never in the record.
func encode(sess *sessionstore.Session) (string, error) {
	c := *sess
	c.Delivered = 0
	b, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("redis session store: encoding session: %w", err)
	}
	return string(b), nil
}

// decode builds a session from the stored record and acked position.
func decode(id string, rec, acked any) (*sessionstore.Session, error) {
	str, ok := rec.(string)
	if !ok {
		return nil, sessionstore.ErrNotFound
	}
	var sess sessionstore.Session
	if err := json.Unmarshal([]byte(str), &sess); err != nil {
		return nil, fmt.Errorf("redis session store: decoding session %q: %w", sessionstore.ShortID(id), err)
	}
	sess.ID = id
	sess.Delivered = 0
	if a, ok := acked.(string); ok {
		sess.Delivered, _ = strconv.ParseUint(a, 10, 64)
	}
	return &sess, nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Create implements sessionstore.Store.
func (s *Store) Create(ctx context.Context, sess *sessionstore.Session) error {
	if sess.ID == "" {
		return errors.New("redis session store: empty session id")
	}
	id := sess.ID
	rec, err := encode(sess)
	if err != nil {
		return err
	}
	exp, ttl := score(sess.ExpiresAt), s.keyTTL(sess.ExpiresAt)

	// Reserve a place in the expiry index first (this is also the session
	// count): a session then never exists without an index entry that
	// leads the janitor to it, and a stale entry left by a failure here is
	// dropped by Expired.
	reserved, err := indexAddScript.Run(ctx, s.rdb(), []string{s.expiry}, exp, id, ttl, s.maxSessions.Load()).Int()
	if err != nil {
		return unavailable("reserving session", err)
	}
	if reserved == 0 {
		n, err := s.rdb().Exists(ctx, s.hashKey(id)).Result()
		switch {
		case err != nil:
			return unavailable("creating session", err)
		case n > 0:
			return sessionstore.ErrExists
		default:
			return sessionstore.ErrTooManySessions
		}
	}

	if sess.Caller != "" {
		// The caller's place next, so that a caller at its limit takes no
		// session. If the session is not made after all, the entry stays
		// until its score (the session's ExpiresAt) passes.
		reserved, err := callerReserveScript.Run(ctx, s.rdb(), []string{s.callerKey(sess.Caller)},
			exp, id, ttl, s.maxPerCaller.Load(), score(sess.CreatedAt)).Int()
		if err != nil {
			return unavailable("reserving session", err)
		}
		if reserved == 0 {
			s.rdb().ZRem(ctx, s.expiry, id)
			return sessionstore.ErrTooManyForCaller
		}
	}
	created, err := createScript.Run(ctx, s.rdb(), []string{s.hashKey(id), s.mailboxKey(id), s.requestsKey(id)},
		rec, sess.Owner, exp, sess.Fingerprint, ttl, sess.Caller).Int()
	if err != nil {
		return unavailable("creating session", err)
	}
	if created == 0 {
		return sessionstore.ErrExists
	}
	// The reservation did not move the score of an entry left over from an
	// earlier session with this id; the adoption index is new.
	if err := s.syncIndexes(ctx, id, exp, sess.Fingerprint, "", sess.Caller, ttl); err != nil {
		return unavailable("indexing session", err)
	}
	return nil
}

// Get implements sessionstore.Store.
func (s *Store) Get(ctx context.Context, id string) (*sessionstore.Session, error) {
	if id == "" {
		return nil, sessionstore.ErrNotFound
	}
	vals, err := s.rdb().HMGet(ctx, s.hashKey(id), "rec", "acked").Result()
	if err != nil {
		return nil, unavailable("reading session", err)
	}
	return decode(id, vals[0], vals[1])
}

// Update implements sessionstore.Store. It reads the record, applies fn and
// stores the result if nothing changed the record meanwhile (a version
// compare-and-set in one script), else starts again: fn may run several
// times. Appends and Acks do not count as changes, so a busy mailbox does
// not starve Update.
func (s *Store) Update(ctx context.Context, id string, fn func(*sessionstore.Session) error) (*sessionstore.Session, error) {
	if id == "" {
		return nil, sessionstore.ErrNotFound
	}
	keys := []string{s.hashKey(id), s.mailboxKey(id), s.requestsKey(id)}
	for try := range updateTries {
		if try > 0 {
			if err := backoff(ctx, try); err != nil {
				return nil, unavailable("updating session", err)
			}
		}
		vals, err := s.rdb().HMGet(ctx, keys[0], "rec", "acked", "v").Result()
		if err != nil {
			return nil, unavailable("reading session", err)
		}
		cur, err := decode(id, vals[0], vals[1])
		if err != nil {
			return nil, err
		}
		version, _ := vals[2].(string)
		next := copySession(cur)
		if err := fn(next); err != nil {
			return nil, err
		}
		next.ID = id
		next.Caller = cur.Caller // fixed at Create: the count follows it
		next.Delivered = cur.Delivered
		rec, err := encode(next)
		if err != nil {
			return nil, err
		}
		exp, ttl := score(next.ExpiresAt), s.keyTTL(next.ExpiresAt)
		res, err := updateScript.Run(ctx, s.rdb(), keys,
			version, rec, next.Owner, exp, next.Fingerprint, ttl).Int()
		if err != nil {
			return nil, unavailable("updating session", err)
		}
		switch res {
		case codeNotFound:
			return nil, sessionstore.ErrNotFound
		case codeConflict:
			continue
		}
		if exp != score(cur.ExpiresAt) || next.Fingerprint != cur.Fingerprint {
			if err := s.syncIndexes(ctx, id, exp, next.Fingerprint, cur.Fingerprint, cur.Caller, ttl); err != nil {
				// The session is updated; the indexes are repaired by the
				// next writer or by Expired.
				s.log.Warn("indexing session", zap.String("session", sessionstore.ShortID(id)), zap.Error(err))
			}
		}
		return next, nil
	}
	return nil, fmt.Errorf("%w: updating session %q: still contended after %d tries", sessionstore.ErrUnavailable, sessionstore.ShortID(id), updateTries)
}

// backoff waits a short random time that grows with the try.
func backoff(ctx context.Context, try int) error {
	d := time.Duration(rand.Int64N(int64(min(try, 20))*int64(250*time.Microsecond) + 1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func copySession(sess *sessionstore.Session) *sessionstore.Session {
	c := *sess
	if sess.Initialize != nil {
		c.Initialize = append([]byte(nil), sess.Initialize...)
	}
	return &c
}

// syncIndexes makes the session's entries in the expiry, adoption and
// caller indexes match the record, which lives in another slot: write, then
// read the record back and write again if it changed meanwhile. Whoever
// writes an index last has then seen the latest record, so concurrent
// Updates cannot leave an outdated score behind. oldFp, if not empty and
// not fp, is an adoption index the session leaves.
func (s *Store) syncIndexes(ctx context.Context, id string, exp int64, fp, oldFp, caller string, ttl int64) error {
	for range indexSyncRounds {
		calls := []*scriptCall{
			{script: indexAddScript, keys: []string{s.expiry}, args: []any{exp, id, ttl, 0}},
			{script: indexAddScript, keys: []string{s.adoptKey(fp)}, args: []any{exp, id, ttl, 0}},
		}
		if caller != "" {
			calls = append(calls, &scriptCall{script: indexAddScript, keys: []string{s.callerKey(caller)}, args: []any{exp, id, ttl, 0}})
		}
		var extra []goredis.Cmder
		if oldFp != "" && oldFp != fp {
			extra = append(extra, goredis.NewIntCmd(ctx, "zrem", s.adoptKey(oldFp), id))
		}
		if err := s.runScripts(ctx, calls, extra...); err != nil {
			return err
		}
		vals, err := s.rdb().HMGet(ctx, s.hashKey(id), "exp", "fp").Result()
		if err != nil {
			return err
		}
		curExp, ok := vals[0].(string)
		if !ok {
			// Deleted meanwhile: take the entries out again.
			_, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
				p.ZRem(ctx, s.expiry, id)
				p.ZRem(ctx, s.adoptKey(fp), id)
				if caller != "" {
					p.ZRem(ctx, s.callerKey(caller), id)
				}
				return nil
			})
			return err
		}
		curFp, _ := vals[1].(string)
		if curExp == strconv.FormatInt(exp, 10) && curFp == fp {
			return nil
		}
		if e, err := strconv.ParseInt(curExp, 10, 64); err == nil {
			exp = e
		}
		oldFp, fp = fp, curFp
		// The TTL only grows, so the index still outlives the session.
	}
	return nil
}

type scriptCall struct {
	script *goredis.Script
	keys   []string
	args   []any
	cmd    *goredis.Cmd
}

// runScripts runs scripts (and plain commands) in one pipeline, falling
// back to EVAL for scripts a node has not cached yet. In a Cluster the
// pipeline fans out to the nodes concerned.
func (s *Store) runScripts(ctx context.Context, calls []*scriptCall, cmds ...goredis.Cmder) error {
	pipe := s.rdb().Pipeline()
	for _, c := range calls {
		c.cmd = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	for _, cmd := range cmds {
		_ = pipe.Process(ctx, cmd)
	}
	_, _ = pipe.Exec(ctx)
	for _, c := range calls {
		if err := c.cmd.Err(); err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
			c.cmd = c.script.Run(ctx, s.rdb(), c.keys, c.args...)
		}
		if err := c.cmd.Err(); err != nil {
			return err
		}
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements sessionstore.Store. One script removes all keys if the
// session exists, so exactly one concurrent caller gets true, and wakes the
// subscribers; the index entries are removed after.
func (s *Store) Delete(ctx context.Context, id string) (bool, error) {
	if id == "" {
		return false, nil
	}
	res, err := deleteScript.Run(ctx, s.rdb(), []string{s.hashKey(id), s.mailboxKey(id), s.requestsKey(id)}, s.channel, id).Slice()
	if errors.Is(err, goredis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, unavailable("deleting session", err)
	}
	var fp, caller string
	if len(res) > 1 {
		fp, _ = res[0].(string)
		caller, _ = res[1].(string)
	}
	if _, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
		p.ZRem(ctx, s.expiry, id)
		p.ZRem(ctx, s.adoptKey(fp), id)
		if caller != "" {
			p.ZRem(ctx, s.callerKey(caller), id)
		}
		return nil
	}); err != nil {
		// Deleted; readers of the indexes drop entries of missing sessions.
		s.log.Debug("removing index entries", zap.String("session", sessionstore.ShortID(id)), zap.Error(err))
	}
	return true, nil
}

// load reads the records of ids in one pipeline; missing sessions are nil.
func (s *Store) load(ctx context.Context, ids []string) ([]*sessionstore.Session, error) {
	cmds := make([]*goredis.SliceCmd, len(ids))
	_, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, s.hashKey(id), "rec", "acked")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]*sessionstore.Session, len(ids))
	for i, cmd := range cmds {
		vals := cmd.Val()
		if vals[0] == nil {
			continue
		}
		sess, err := decode(ids[i], vals[0], vals[1])
		if err != nil {
			s.log.Warn("skipping undecodable session", zap.String("session", sessionstore.ShortID(ids[i])), zap.Error(err))
			continue
		}
		out[i] = sess
	}
	return out, nil
}

// Expired implements sessionstore.Store. It reads the expiry index up to
// now and checks every entry against its record: entries of sessions that
// are gone are removed, entries with an outdated score are corrected.
func (s *Store) Expired(ctx context.Context, now time.Time, limit int) ([]*sessionstore.Session, error) {
	if limit <= 0 {
		return nil, nil
	}
	maxScore := strconv.FormatInt(score(now), 10)
	var (
		out     []*sessionstore.Session
		seen    = map[string]bool{}
		gone    []string
		stale   []*sessionstore.Session
		offset  int64
		scanned int
	)
	for len(out) < limit && scanned < expiredScanFactor*limit+64 {
		count := int64(min(limit-len(out)+8, 1000))
		entries, err := s.rdb().ZRangeByScoreWithScores(ctx, s.expiry, &goredis.ZRangeBy{
			Min: "-inf", Max: maxScore, Offset: offset, Count: count,
		}).Result()
		if err != nil {
			return nil, unavailable("listing expired sessions", err)
		}
		if len(entries) == 0 {
			break
		}
		ids := make([]string, len(entries))
		for i, e := range entries {
			ids[i], _ = e.Member.(string)
		}
		offset += int64(len(ids))
		scanned += len(ids)
		sessions, err := s.load(ctx, ids)
		if err != nil {
			return nil, unavailable("loading expired sessions", err)
		}
		for i, sess := range sessions {
			id := ids[i]
			switch {
			case seen[id]:
			case sess == nil:
				gone = append(gone, id)
			case !sess.ExpiresAt.Before(now):
				if float64(score(sess.ExpiresAt)) != entries[i].Score {
					stale = append(stale, sess)
				}
			case len(out) < limit:
				out = append(out, sess)
			}
			seen[id] = true
		}
		if int64(len(ids)) < count {
			break
		}
	}
	// Repairs come last, so that they do not shift the offsets above.
	if len(gone) > 0 {
		if err := s.rdb().ZRem(ctx, s.expiry, anys(gone)...).Err(); err != nil {
			s.log.Debug("removing index entries", zap.Error(err))
		}
	}
	for _, sess := range stale {
		exp := score(sess.ExpiresAt)
		if err := s.syncIndexes(ctx, sess.ID, exp, sess.Fingerprint, "", sess.Caller, s.keyTTL(sess.ExpiresAt)); err != nil {
			s.log.Debug("correcting index entry", zap.String("session", sessionstore.ShortID(sess.ID)), zap.Error(err))
		}
	}
	return out, nil
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// Adoptable implements sessionstore.Store. It reads the caller's adoption
// index newest first and checks the candidates against their records,
// dropping entries that no longer belong there.
func (s *Store) Adoptable(ctx context.Context, fingerprint, upstream, protocolVersion string, now time.Time) (*sessionstore.Session, error) {
	key := s.adoptKey(fingerprint)
	var drop []string
	defer func() {
		if len(drop) > 0 {
			if err := s.rdb().ZRem(ctx, key, anys(drop)...).Err(); err != nil {
				s.log.Debug("removing adoption index entries", zap.Error(err))
			}
		}
	}()
	held := false
	for page := range adoptPages {
		ids, err := s.rdb().ZRevRangeByScore(ctx, key, &goredis.ZRangeBy{
			Min: "-inf", Max: "+inf", Offset: int64(page * adoptPage), Count: adoptPage,
		}).Result()
		if err != nil {
			return nil, unavailable("listing sessions", err)
		}
		if len(ids) == 0 {
			break
		}
		sessions, err := s.load(ctx, ids)
		if err != nil {
			return nil, unavailable("loading sessions", err)
		}
		var best *sessionstore.Session
		for i, sess := range sessions {
			switch {
			case sess == nil || sess.Fingerprint != fingerprint:
				drop = append(drop, ids[i])
			case sess.Upstream != upstream || !sess.Initialized ||
				(protocolVersion != "" && sess.ProtocolVersion != protocolVersion):
			case sess.Owner != "" && sess.OwnerLeaseUntil.After(now) && s.replicaAliveOr(ctx, sess.Owner):
				held = true
			case best == nil || sess.ExpiresAt.After(best.ExpiresAt):
				best = sess
			}
		}
		// Entries are ordered by ExpiresAt, so the best of the first page
		// that has a candidate is the best of all.
		if best != nil {
			return best, nil
		}
		if len(ids) < adoptPage {
			break
		}
	}
	if held {
		return nil, sessionstore.ErrAdoptionPending
	}
	return nil, sessionstore.ErrNotFound
}

// RememberInitialize implements sessionstore.Store.
func (s *Store) RememberInitialize(ctx context.Context, fingerprint, upstream string, msg []byte, ttl time.Duration) error {
	if err := s.rdb().Set(ctx, s.initializeKey(fingerprint, upstream), msg, min(ttl, maxKeyTTL)).Err(); err != nil {
		return unavailable("remembering initialize", err)
	}
	return nil
}

// RecallInitialize implements sessionstore.Store.
func (s *Store) RecallInitialize(ctx context.Context, fingerprint, upstream string) ([]byte, error) {
	msg, err := s.rdb().Get(ctx, s.initializeKey(fingerprint, upstream)).Bytes()
	switch {
	case errors.Is(err, goredis.Nil):
		return nil, sessionstore.ErrNotFound
	case err != nil:
		return nil, unavailable("recalling initialize", err)
	}
	return msg, nil
}

// IdentityKey implements sessionstore.Store: the first replica to ask
// stores a random key (SET NX, no TTL), and every replica reads that one.
func (s *Store) IdentityKey(ctx context.Context) ([]byte, error) {
	fresh := make([]byte, 32)
	if _, err := cryptorand.Read(fresh); err != nil {
		return nil, err
	}
	key := s.prefix + "identity-key"
	if err := s.rdb().SetNX(ctx, key, fresh, 0).Err(); err != nil {
		return nil, unavailable("making the identity key", err)
	}
	stored, err := s.rdb().Get(ctx, key).Bytes()
	if err != nil {
		return nil, unavailable("reading the identity key", err)
	}
	return stored, nil
}

// replicaAliveOr reports whether the replica named in owner has a live
// heartbeat; when Redis cannot say, it assumes so (a live owner is never
// robbed of its session for want of an answer).
func (s *Store) replicaAliveOr(ctx context.Context, owner string) bool {
	alive, err := s.ReplicaAlive(ctx, sessionstore.OwnerReplica(owner))
	return alive || err != nil
}

// Append implements sessionstore.Store.
func (s *Store) Append(ctx context.Context, id string, m sessionstore.Message) (uint64, error) {
	if id == "" {
		return 0, sessionstore.ErrNotFound
	}
	res, err := appendScript.Run(ctx, s.rdb(), []string{s.hashKey(id), s.mailboxKey(id)},
		boolArg(m.Control), m.Data, s.maxPending.Load(), s.channel, id).Int64()
	if err != nil {
		return 0, unavailable("appending message", err)
	}
	switch {
	case res == codeNotFound:
		return 0, sessionstore.ErrNotFound
	case res == codeFull:
		return 0, sessionstore.ErrMailboxFull
	case res <= 0:
		return 0, fmt.Errorf("%w: appending message: unexpected result %d", sessionstore.ErrUnavailable, res)
	}
	return uint64(res), nil
}

// Read implements sessionstore.Store.
func (s *Store) Read(ctx context.Context, id string, after uint64, limit int) ([]sessionstore.Message, error) {
	if id == "" {
		return nil, sessionstore.ErrNotFound
	}
	var (
		exists *goredis.IntCmd
		rng    *goredis.XMessageSliceCmd
	)
	read := limit > 0 && after < math.MaxUint64
	_, err := s.rdb().Pipelined(ctx, func(p goredis.Pipeliner) error {
		exists = p.Exists(ctx, s.hashKey(id))
		if read {
			rng = p.XRangeN(ctx, s.mailboxKey(id), strconv.FormatUint(after+1, 10)+"-0", "+", int64(limit))
		}
		return nil
	})
	if err != nil {
		return nil, unavailable("reading mailbox", err)
	}
	if exists.Val() == 0 {
		return nil, sessionstore.ErrNotFound
	}
	if !read {
		return nil, nil
	}
	entries := rng.Val()
	if len(entries) == 0 {
		return nil, nil
	}
	out := make([]sessionstore.Message, 0, len(entries))
	for _, e := range entries {
		seqStr, _, _ := strings.Cut(e.ID, "-")
		seq, err := strconv.ParseUint(seqStr, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("redis session store: mailbox entry id %q: %w", e.ID, err)
		}
		c, _ := e.Values["c"].(string)
		d, _ := e.Values["d"].(string)
		out = append(out, sessionstore.Message{Seq: seq, Control: c == "1", Data: []byte(d)})
	}
	return out, nil
}

// Ack implements sessionstore.Store.
func (s *Store) Ack(ctx context.Context, id, owner string, seq uint64) error {
	if id == "" {
		return sessionstore.ErrNotFound
	}
	res, err := ackScript.Run(ctx, s.rdb(), []string{s.hashKey(id), s.mailboxKey(id)},
		owner, strconv.FormatUint(seq, 10), s.opts.ReplayWindow).Int()
	if err != nil {
		return unavailable("acknowledging messages", err)
	}
	switch res {
	case codeNotFound:
		return sessionstore.ErrNotFound
	case codeNotOwner:
		return sessionstore.ErrNotOwner
	}
	return nil
}

// Subscribe implements sessionstore.Store. Subscriptions are local: the
// store's single Pub/Sub connection receives the wake-ups of all sessions
// and hands them out here.
func (s *Store) Subscribe(ctx context.Context, id string) (<-chan struct{}, func(), error) {
	if id == "" {
		return nil, nil, sessionstore.ErrNotFound
	}
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: store closed", sessionstore.ErrUnavailable)
	}
	set := s.subs[id]
	if set == nil {
		set = make(map[chan struct{}]struct{})
		s.subs[id] = set
	}
	set[ch] = struct{}{}
	s.mu.Unlock()
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if set := s.subs[id]; set != nil {
				delete(set, ch)
				if len(set) == 0 {
					delete(s.subs, id)
				}
			}
		})
	}
	// Registered before the check, so that a Delete right after the check
	// still wakes this subscriber.
	n, err := s.rdb().Exists(ctx, s.hashKey(id)).Result()
	if err != nil {
		cancel()
		return nil, nil, unavailable("subscribing", err)
	}
	if n == 0 {
		cancel()
		return nil, nil, sessionstore.ErrNotFound
	}
	// Until the wake-up subscription is first confirmed, Appends could go
	// unnoticed (the confirmation then wakes everyone): wait for it a
	// little, so that a new store behaves like a running one.
	select {
	case <-s.ready:
	default:
		t := time.NewTimer(readyWait)
		select {
		case <-s.ready:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return ch, cancel, nil
}

// listen dispatches wake-ups until the Pub/Sub is closed.
func (s *Store) listen(msgs <-chan any, done chan struct{}) {
	defer close(done)
	confirmed := false
	for msg := range msgs {
		switch msg := msg.(type) {
		case *goredis.Message:
			s.wake(msg.Payload)
		case *goredis.Subscription:
			if msg.Kind != "subscribe" {
				continue
			}
			// A (re)subscription: wake-ups may have been missed while the
			// connection was down, so every subscriber looks again.
			if confirmed {
				s.log.Info("wake-up subscription re-established, waking all streams", zap.String("channel", s.channel))
			}
			confirmed = true
			s.readyOnce.Do(func() { close(s.ready) })
			s.wakeAll()
		}
	}
}

func (s *Store) wake(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs[id] {
		notify(ch)
	}
}

func (s *Store) wakeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, set := range s.subs {
		for ch := range set {
			notify(ch)
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

var _ sessionstore.Store = (*Store)(nil)
