package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Bounds of the resumption of an upstream response stream that ended before
// its response. Only attempts that bring nothing new count: a server that
// closes the stream on purpose to make the client poll (SEP-1699) sends a
// new event id each time and is followed for as long as it does.
const (
	resumeMinBackoff = 100 * time.Millisecond
	resumeMaxBackoff = 5 * time.Second
	maxIdleResumes   = 5
	// answeredPoll is how often a resumed stream checks whether its request
	// was answered elsewhere (servers that replay every stream on resume,
	// and keep the resumed stream open), and a translated call whether
	// another replica took its cancellation.
	answeredPoll = time.Second
	// seenEventsPerSession bounds the upstream event ids remembered per
	// session to recognise replays.
	seenEventsPerSession = 256
)

// relayStream relays an upstream response stream (body, or nothing when nil)
// to onMessage, which learns whether a message came from a resumption, and,
// while the request is unanswered, resumes the stream with GET and
// Last-Event-ID when it ends early. It gives up after maxIdleResumes
// attempts in a row that brought no new event, or when the upstream refuses
// to resume.
func (b *Bridge) relayStream(ctx context.Context, sess *sessionstore.Session, client http.Header, body io.Reader,
	lastID string, answered func() bool, onMessage func(msg []byte, resumed bool) bool, onEventID func(string)) {
	var (
		retry time.Duration
		err   error
	)
	if body != nil {
		var id string
		id, retry, _, err = b.relayEvents(body, sess.ID, func(m []byte) bool { return onMessage(m, false) }, onEventID)
		if id != "" {
			lastID = id
		}
	}
	backoff := resumeMinBackoff
	for idle := 0; !answered() && lastID != "" && idle < maxIdleResumes; {
		if err != nil {
			b.log.Debug("upstream response stream broke", zap.String("session", shortID(sess.ID)), zap.Error(err))
		}
		wait := backoff
		if retry > 0 {
			wait = retry // the server's own pace
		}
		if !sleepCtx(ctx, wait) {
			return
		}
		var (
			id  string
			got bool
			ok  bool
		)
		id, retry, got, ok, err = b.resumeOnce(ctx, sess, client, lastID, answered, onMessage, onEventID)
		if !ok {
			return
		}
		if got || (id != "" && id != lastID) {
			idle, backoff = 0, resumeMinBackoff
		} else {
			idle++
			backoff = min(2*backoff, resumeMaxBackoff)
		}
		if id != "" {
			lastID = id
		}
	}
}

// resumeOnce resumes an upstream response stream after lastID and relays
// it until it ends or answered() turns true (checked every answeredPoll).
// ok is false when the upstream refuses to resume.
func (b *Bridge) resumeOnce(ctx context.Context, sess *sessionstore.Session, client http.Header, lastID string, answered func() bool,
	onMessage func(msg []byte, resumed bool) bool, onEventID func(string)) (id string, retry time.Duration, got, ok bool, err error) {
	ctx, stop := untilSettled(ctx, answered)
	defer stop()
	b.metrics.resumed("request")
	r, err := b.do(ctx, labelStream, http.MethodGet, sess, client, nil, lastID)
	if err != nil {
		return "", 0, false, true, err
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		drain(r)
		return "", 0, false, false, nil
	}
	id, retry, got, err = b.relayEvents(r.Body, sess.ID, func(m []byte) bool { return onMessage(m, true) }, onEventID)
	return id, retry, got, true, err
}

// untilSettled returns a context that ends, besides with ctx, once
// settled() turns true (checked every answeredPoll), and the stop that ends
// it and its watcher.
func untilSettled(ctx context.Context, settled func() bool) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		tick := time.NewTicker(answeredPoll)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if settled() {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, func() { cancel(); <-watching }
}

// relayEvents reads an upstream event stream of the session sessionID (""
// for the bridge's own requests) and passes each message on, then the id
// of the event that carried it to onEventID (if not nil). Events with empty data (priming), other event names, comments
// and events this replica already relayed for the session (servers that
// replay on resume) pass no message on. It returns the last event id seen,
// the last retry hint, and whether any message was passed on.
func (b *Bridge) relayEvents(body io.Reader, sessionID string, onMessage func(msg []byte) bool, onEventID func(string)) (string, time.Duration, bool, error) {
	er := NewEventReader(body, int(b.cfg.MaxMessageSize)+4096)
	var (
		lastID string
		retry  time.Duration
		got    bool
	)
	for {
		ev, err := er.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return lastID, retry, got, err
		}
		if ev.Retry > 0 {
			retry = ev.Retry
		}
		if ev.HasID && ev.ID != "" {
			lastID = ev.ID
		}
		if b.relayEvent(ev, sessionID, onMessage) {
			got = true
		}
		if ev.HasID && ev.ID != "" && onEventID != nil {
			onEventID(ev.ID)
		}
	}
}

// relayEvent passes the messages of one upstream event on, unless the event
// carries none or was relayed before. It reports whether a message was
// relayed; only then does the event count as relayed (a response dropped
// here for not being this stream's may be another stream's to relay).
func (b *Bridge) relayEvent(ev Event, sessionID string, onMessage func(msg []byte) bool) bool {
	if (ev.Name != "" && ev.Name != "message") || len(bytes.TrimSpace(ev.Data)) == 0 {
		return false
	}
	dedup := ev.HasID && ev.ID != "" && sessionID != ""
	if dedup && b.relayedBefore(sessionID, ev.ID) {
		b.log.Debug("dropping a replayed upstream event", zap.String("session", shortID(sessionID)))
		return false
	}
	if !json.Valid(ev.Data) {
		b.log.Warn("dropping an upstream event that is not JSON", zap.String("session", shortID(sessionID)))
		return false
	}
	relayed := false
	if isArray(ev.Data) {
		for _, m := range SplitBatch(ev.Data) {
			relayed = onMessage(m) || relayed
		}
	} else {
		relayed = onMessage(ev.Data)
	}
	if relayed && dedup {
		b.markRelayed(sessionID, ev.ID)
	}
	return relayed
}

// answersCall reports whether a response on a request's own stream answers
// that request: it carries its id (as the upstream may have rewritten it),
// or null (servers' HTTP-level errors). Anything else there is a replay of
// another stream.
func answersCall(env Envelope, c *call) bool {
	return string(env.ID) == "null" || sameID(env.ID, c.env.ID)
}

// sameID reports whether two JSON-RPC ids are the same value: servers
// rewrite ids (numbers through float64, strings with their escapes
// decoded), so bytes alone do not tell.
func sameID(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	switch va.(type) {
	case string, float64:
		return va == vb
	}
	return false
}

// relayOther relays a message that is not the answer of the stream's own
// request, and reports whether it did: server requests and notifications go
// to the client; a response (a server replaying other streams on resume)
// only when it answers a request of this session still in flight, which it
// then settles in the store, so that it is delivered once.
func (b *Bridge) relayOther(ctx context.Context, sessionID string, msg []byte, env Envelope) bool {
	if env.Kind != KindResponse {
		b.noteMessage(sessionID, toClient, env)
		b.deliver(sessionID, msg)
		return true
	}
	reqs, err := b.store.ListRequests(ctx, sessionID)
	if err != nil {
		return false
	}
	for key, r := range reqs {
		if !sameID(r.ID, env.ID) {
			continue
		}
		answer := oneLine(ReplaceID(msg, env, r.ID))
		if done, err := b.store.FinishRequest(ctx, sessionID, key, sessionstore.Message{Data: answer}); err == nil && done {
			b.noteMessage(sessionID, toClient, env)
			return true
		}
	}
	b.log.Debug("dropping an upstream response to no request in flight", zap.String("session", shortID(sessionID)))
	return false
}

// answeredCheck returns what tells a resumed stream of c's request that it
// is done: a notification or response needs no answer; a request is
// answered here, or elsewhere (its record in the store is gone).
func (b *Bridge) answeredCheck(c *call) func() bool {
	return func() bool {
		if c.env.Kind != KindRequest || c.answered.Load() {
			return true
		}
		if !c.tracked {
			return false
		}
		reqs, err := b.store.ListRequests(b.background, c.sessionID)
		if errors.Is(err, sessionstore.ErrNotFound) {
			return true
		}
		_, inFlight := reqs[c.key]
		return err == nil && !inFlight
	}
}

// seenEvents remembers the upstream event ids relayed per session, the
// latest seenEventsPerSession of them.
type seenEvents struct {
	ids  map[string]struct{}
	ring []string
	next int
	// last is when an id was last recorded; idle sets are pruned.
	last time.Time
}

// relayedBefore reports whether an upstream event id was relayed for the
// session.
func (b *Bridge) relayedBefore(sessionID, eventID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := b.seen[sessionID]
	if seen == nil {
		return false
	}
	_, ok := seen.ids[eventID]
	return ok
}

// markRelayed records an upstream event id relayed for the session.
func (b *Bridge) markRelayed(sessionID, eventID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := b.seen[sessionID]
	if seen == nil {
		seen = &seenEvents{ids: make(map[string]struct{})}
		b.seen[sessionID] = seen
	}
	seen.last = b.now()
	if _, ok := seen.ids[eventID]; ok {
		return
	}
	if len(seen.ring) < seenEventsPerSession {
		seen.ring = append(seen.ring, eventID)
	} else {
		delete(seen.ids, seen.ring[seen.next])
		seen.ring[seen.next] = eventID
		seen.next = (seen.next + 1) % seenEventsPerSession
	}
	seen.ids[eventID] = struct{}{}
}
