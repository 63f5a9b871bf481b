// Package storetest is the contract suite that every sessionstore.Store
// implementation must pass. An implementation's tests call Run with a
// factory for empty stores:
//
//	func TestContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) sessionstore.Store {
//			return memory.New(memory.Options{MaxPending: storetest.MaxPending})
//		})
//	}
//
// What the factory must return:
//
//   - an empty store, of its own (tests run one after another and each gets
//     a fresh store; a shared backend must be partitioned, e.g. by a random
//     key prefix per call), released by the factory through t.Cleanup;
//   - room for at least MinSessions sessions (ErrTooManySessions is
//     checked by RunLimits, which asks for stores with limits of its own);
//   - mailboxes that hold exactly MaxPending undelivered (unacknowledged)
//     messages: the MaxPending+1st Append fails with ErrMailboxFull;
//   - MaxSessionsPerCaller live sessions per Session.Caller: the next
//     Create with that Caller fails with ErrTooManyForCaller.
//
// Expired and Adoptable are checked by exact results, so the store must
// not hold sessions of other tests.
//
// Nothing else about the store's bounds is assumed: in particular the suite
// works with any replay window (delivered messages kept after Ack).
//
// The limits themselves (sessionstore.Limits, and SetLimits changing them in
// place) are the contract of RunLimits, whose factory is given the limits
// each of its tests needs.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// MaxPending is the mailbox capacity, in undelivered messages, that the
// factory passed to Run must configure.
const MaxPending = 128

// MaxSessionsPerCaller is the per-caller limit the factory passed to Run
// must configure.
const MaxSessionsPerCaller = 5

// MinSessions is how many sessions the store must be able to hold at once.
const MinSessions = 100

// waitTimeout bounds every wait for a wake-up.
const waitTimeout = 5 * time.Second

// Run runs the contract suite against the stores newStore returns.
func Run(t *testing.T, newStore func(t *testing.T) sessionstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st sessionstore.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateExists", testCreateExists},
		{"CreateCopiesInput", testCreateCopiesInput},
		{"GetReturnsCopy", testGetReturnsCopy},
		{"MissingSession", testMissingSession},
		{"Update", testUpdate},
		{"UpdateErrorAborts", testUpdateErrorAborts},
		{"UpdateKeepsID", testUpdateKeepsID},
		{"UpdateAtomic", testUpdateAtomic},
		{"Delete", testDelete},
		{"DeleteExactlyOnce", testDeleteExactlyOnce},
		{"Expired", testExpired},
		{"ExpiredLimit", testExpiredLimit},
		{"NonPositiveLimits", testNonPositiveLimits},
		{"AppendSeq", testAppendSeq},
		{"ReadAfterLimit", testReadAfterLimit},
		{"AckKeepsUnacked", testAckKeepsUnacked},
		{"MailboxFull", testMailboxFull},
		{"MailboxesSeparate", testMailboxesSeparate},
		{"SubscribeWakesOnAppend", testSubscribeWakesOnAppend},
		{"SubscribeWakesAllSubscribers", testSubscribeWakesAll},
		{"DeleteWakesSubscribers", testDeleteWakesSubscribers},
		{"Unsubscribe", testUnsubscribe},
		{"ControlRoundTrip", testControlRoundTrip},
		{"ConcurrentAppend", testConcurrentAppend},
		{"DataCopied", testDataCopied},
		{"DeleteRemovesMailbox", testDeleteRemovesMailbox},
		{"AckRecordsDelivered", testAckRecordsDelivered},
		{"AckChecksOwner", testAckChecksOwner},
		{"Adoptable", testAdoptable},
		{"AdoptableNone", testAdoptableNone},
		{"RememberInitialize", testRememberInitialize},
		{"SessionsPerCaller", testSessionsPerCaller},
		{"IdentityKey", testIdentityKey},
	}
	for _, tc := range append(tests, requestTests...) {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			if st == nil {
				t.Fatal("newStore returned nil")
			}
			tc.fn(t, st)
		})
	}
}

var idCounter struct {
	sync.Mutex
	n int
}

// newID returns a session id unique within the test binary.
func newID(prefix string) string {
	idCounter.Lock()
	defer idCounter.Unlock()
	idCounter.n++
	return fmt.Sprintf("storetest-%s-%d-%d", prefix, time.Now().UnixNano(), idCounter.n)
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sampleSession returns a session with every field set. Times are in UTC
// without monotonic readings, so that a store that serialises them gives
// them back equal.
func sampleSession(id string) *sessionstore.Session {
	now := time.Now().UTC().Round(0).Truncate(time.Millisecond)
	return &sessionstore.Session{
		ID:                id,
		Upstream:          "http://upstream.example/mcp",
		Fingerprint:       "fp-0123456789abcdef",
		UpstreamSessionID: "upstream-session-1",
		ProtocolVersion:   "2025-06-18",
		Initialize:        []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}`),
		Initialized:       true,
		StreamReadyFor:    "s:upstream-session-1",
		StreamLastEventID: "stream-0_3",
		Owner:             "replica-a",
		OwnerLeaseUntil:   now.Add(45 * time.Second),
		CreatedAt:         now,
		ExpiresAt:         now.Add(10 * time.Minute),
	}
}

func mustCreate(t *testing.T, ctx context.Context, st sessionstore.Store, s *sessionstore.Session) {
	t.Helper()
	if err := st.Create(ctx, s); err != nil {
		t.Fatalf("Create(%q): %v", s.ID, err)
	}
}

func newSession(t *testing.T, ctx context.Context, st sessionstore.Store) string {
	t.Helper()
	s := sampleSession(newID("s"))
	mustCreate(t, ctx, st, s)
	return s.ID
}

func equalSessions(a, b *sessionstore.Session) bool {
	return a.ID == b.ID &&
		a.Upstream == b.Upstream &&
		a.Fingerprint == b.Fingerprint &&
		a.Caller == b.Caller &&
		a.UpstreamSessionID == b.UpstreamSessionID &&
		a.ProtocolVersion == b.ProtocolVersion &&
		bytes.Equal(a.Initialize, b.Initialize) &&
		a.Initialized == b.Initialized &&
		a.StreamReadyFor == b.StreamReadyFor &&
		a.StreamLastEventID == b.StreamLastEventID &&
		a.Owner == b.Owner &&
		a.OwnerLeaseUntil.Equal(b.OwnerLeaseUntil) &&
		a.Delivered == b.Delivered &&
		a.CreatedAt.Equal(b.CreatedAt) &&
		a.ExpiresAt.Equal(b.ExpiresAt)
}

func checkSession(t *testing.T, what string, got, want *sessionstore.Session) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: nil session", what)
	}
	if !equalSessions(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, *got, *want)
	}
}

func testCreateGet(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	want := sampleSession(newID("get"))
	mustCreate(t, ctx, st, want)
	got, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "Get after Create", got, want)

	// A session with only the required fields round-trips too.
	minimal := &sessionstore.Session{ID: newID("min"), Upstream: "http://u/", Fingerprint: "f"}
	mustCreate(t, ctx, st, minimal)
	got, err = st.Get(ctx, minimal.ID)
	if err != nil {
		t.Fatalf("Get(minimal): %v", err)
	}
	checkSession(t, "Get(minimal)", got, minimal)
	if len(got.Initialize) != 0 {
		t.Errorf("minimal session: Initialize = %q, want empty", got.Initialize)
	}
}

func testCreateExists(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	first := sampleSession(newID("dup"))
	mustCreate(t, ctx, st, first)
	second := sampleSession(first.ID)
	second.Owner = "replica-b"
	second.Fingerprint = "someone-else"
	if err := st.Create(ctx, second); !errors.Is(err, sessionstore.ErrExists) {
		t.Fatalf("second Create with the same id: err = %v, want ErrExists", err)
	}
	got, err := st.Get(ctx, first.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "session after a refused Create", got, first)
}

func testCreateCopiesInput(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	s := sampleSession(newID("cp"))
	want := sampleSession(s.ID)
	want.CreatedAt, want.ExpiresAt, want.OwnerLeaseUntil = s.CreatedAt, s.ExpiresAt, s.OwnerLeaseUntil
	mustCreate(t, ctx, st, s)
	// The caller keeps using its value; the store must not see that.
	s.Owner = "changed"
	s.Initialize[0] = 'X'
	got, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "stored session after the caller changed its copy", got, want)
}

func testGetReturnsCopy(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	want := sampleSession(newID("gc"))
	mustCreate(t, ctx, st, want)
	got, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	got.Owner = "changed"
	got.Initialized = false
	if len(got.Initialize) > 0 {
		got.Initialize[0] = 'X'
	}
	again, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "second Get after changing the first result", again, want)

	// The same holds for what Update returns.
	upd, err := st.Update(ctx, want.ID, func(*sessionstore.Session) error { return nil })
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	upd.Owner = "changed again"
	if len(upd.Initialize) > 0 {
		upd.Initialize[0] = 'Y'
	}
	again, err = st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "Get after changing Update's result", again, want)
}

func testMissingSession(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newID("missing")
	if s, err := st.Get(ctx, id); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Get: (%v, %v), want ErrNotFound", s, err)
	}
	called := false
	if s, err := st.Update(ctx, id, func(*sessionstore.Session) error { called = true; return nil }); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Update: (%v, %v), want ErrNotFound", s, err)
	}
	if called {
		t.Error("Update called fn for a missing session")
	}
	if ok, err := st.Delete(ctx, id); ok || err != nil {
		t.Errorf("Delete: (%v, %v), want (false, nil)", ok, err)
	}
	if seq, err := st.Append(ctx, id, sessionstore.Message{Data: []byte(`{}`)}); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Append: (%d, %v), want ErrNotFound", seq, err)
	}
	if msgs, err := st.Read(ctx, id, 0, 10); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Read: (%v, %v), want ErrNotFound", msgs, err)
	}
	if err := st.Ack(ctx, id, "", 1); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Ack: %v, want ErrNotFound", err)
	}
	ch, cancel, err := st.Subscribe(ctx, id)
	if !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Subscribe: (%v, %v), want ErrNotFound", ch, err)
	}
	if cancel != nil && err == nil {
		cancel()
	}
	// Nothing above may have created the session.
	if _, err := st.Get(ctx, id); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Get after calls on a missing session: %v, want ErrNotFound", err)
	}
}

func testUpdate(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	want := sampleSession(newID("upd"))
	mustCreate(t, ctx, st, want)
	later := want.ExpiresAt.Add(time.Hour)
	got, err := st.Update(ctx, want.ID, func(s *sessionstore.Session) error {
		checkSession(t, "fn's argument", s, want)
		s.UpstreamSessionID = "upstream-session-2"
		s.ProtocolVersion = "2025-11-25"
		s.Initialize = []byte(`{"jsonrpc":"2.0","id":"re","method":"initialize"}`)
		s.Initialized = false
		s.Owner = ""
		s.OwnerLeaseUntil = time.Time{}
		s.ExpiresAt = later
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	want.UpstreamSessionID = "upstream-session-2"
	want.ProtocolVersion = "2025-11-25"
	want.Initialize = []byte(`{"jsonrpc":"2.0","id":"re","method":"initialize"}`)
	want.Initialized = false
	want.Owner = ""
	want.OwnerLeaseUntil = time.Time{}
	want.ExpiresAt = later
	checkSession(t, "Update's result", got, want)
	stored, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "Get after Update", stored, want)
	if !stored.OwnerLeaseUntil.IsZero() {
		t.Errorf("OwnerLeaseUntil = %v, want the zero time", stored.OwnerLeaseUntil)
	}
}

func testUpdateErrorAborts(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	want := sampleSession(newID("abort"))
	mustCreate(t, ctx, st, want)
	errStop := errors.New("stop right there")
	got, err := st.Update(ctx, want.ID, func(s *sessionstore.Session) error {
		s.Owner = "should not stick"
		s.Initialized = false
		return fmt.Errorf("wrapped: %w", errStop)
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Update: err = %v, want fn's error", err)
	}
	if got != nil {
		t.Errorf("Update returned %+v with an error, want nil", *got)
	}
	stored, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	checkSession(t, "session after an aborted Update", stored, want)

	// fn may return the store's own sentinel errors (the bridge returns
	// ErrNotFound from fn to hide another caller's session).
	if _, err := st.Update(ctx, want.ID, func(*sessionstore.Session) error { return sessionstore.ErrNotFound }); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Update with fn returning ErrNotFound: err = %v", err)
	}
	if _, err := st.Get(ctx, want.ID); err != nil {
		t.Errorf("session gone after fn returned ErrNotFound: %v", err)
	}
}

func testUpdateKeepsID(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	want := sampleSession(newID("keep"))
	mustCreate(t, ctx, st, want)
	other := newID("other")
	got, err := st.Update(ctx, want.ID, func(s *sessionstore.Session) error {
		s.ID = other
		s.Owner = "replica-z"
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if got.ID != want.ID {
		t.Errorf("Update result ID = %q, want %q", got.ID, want.ID)
	}
	stored, err := st.Get(ctx, want.ID)
	if err != nil {
		t.Fatalf("Get(original id): %v", err)
	}
	if stored.ID != want.ID || stored.Owner != "replica-z" {
		t.Errorf("stored: ID %q Owner %q, want %q and %q", stored.ID, stored.Owner, want.ID, "replica-z")
	}
	if _, err := st.Get(ctx, other); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Get(new id set by fn): %v, want ErrNotFound (Update must not rename)", err)
	}
}

// testUpdateAtomic increments a counter kept in ProtocolVersion from 50
// goroutines: no increment may be lost, whatever retries the store makes.
func testUpdateAtomic(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	s := sampleSession(newID("atomic"))
	s.ProtocolVersion = "0"
	mustCreate(t, ctx, st, s)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := st.Update(ctx, s.ID, func(s *sessionstore.Session) error {
				v, err := strconv.Atoi(s.ProtocolVersion)
				if err != nil {
					return err
				}
				s.ProtocolVersion = strconv.Itoa(v + 1)
				return nil
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Update: %v", err)
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.ProtocolVersion != strconv.Itoa(n) {
		t.Errorf("counter = %s after %d concurrent increments", got.ProtocolVersion, n)
	}
}

func testDelete(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	keep := newSession(t, ctx, st)
	id := newSession(t, ctx, st)
	ok, err := st.Delete(ctx, id)
	if err != nil || !ok {
		t.Fatalf("Delete: (%v, %v), want (true, nil)", ok, err)
	}
	if _, err := st.Get(ctx, id); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if ok, err := st.Delete(ctx, id); ok || err != nil {
		t.Errorf("second Delete: (%v, %v), want (false, nil)", ok, err)
	}
	if _, err := st.Get(ctx, keep); err != nil {
		t.Errorf("Get(other session) after Delete: %v", err)
	}
	// The id can be used again.
	again := sampleSession(id)
	again.Owner = "replica-new"
	if err := st.Create(ctx, again); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
	got, err := st.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.Owner != "replica-new" {
		t.Errorf("re-created session Owner = %q", got.Owner)
	}
}

func testDeleteExactlyOnce(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	const sessions, callers = 10, 20
	for range sessions {
		id := newSession(t, ctx, st)
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			deleted int
		)
		start := make(chan struct{})
		for range callers {
			wg.Go(func() {
				<-start
				ok, err := st.Delete(ctx, id)
				if err != nil {
					t.Errorf("Delete: %v", err)
				}
				if ok {
					mu.Lock()
					deleted++
					mu.Unlock()
				}
			})
		}
		close(start)
		wg.Wait()
		if deleted != 1 {
			t.Errorf("session %s: %d concurrent Deletes reported true, want exactly 1", id, deleted)
		}
	}
}

func testExpired(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	now := time.Now().UTC().Round(0).Truncate(time.Millisecond)
	expired := map[string]bool{}
	for i := range 5 {
		s := sampleSession(newID("exp"))
		s.ExpiresAt = now.Add(-time.Duration(i+1) * time.Minute)
		mustCreate(t, ctx, st, s)
		expired[s.ID] = true
	}
	live := map[string]bool{}
	for i := range 5 {
		s := sampleSession(newID("live"))
		s.ExpiresAt = now.Add(time.Duration(i+1) * time.Minute)
		mustCreate(t, ctx, st, s)
		live[s.ID] = true
	}
	got, err := st.Expired(ctx, now, 100)
	if err != nil {
		t.Fatalf("Expired: %v", err)
	}
	seen := map[string]bool{}
	for _, s := range got {
		if s == nil {
			t.Fatal("Expired returned a nil session")
		}
		if seen[s.ID] {
			t.Errorf("Expired listed %s twice", s.ID)
		}
		seen[s.ID] = true
		if !expired[s.ID] {
			t.Errorf("Expired listed %s, which expires at %v (now %v)", s.ID, s.ExpiresAt, now)
		}
		if !s.ExpiresAt.Before(now) {
			t.Errorf("Expired listed %s with ExpiresAt %v not before %v", s.ID, s.ExpiresAt, now)
		}
		if s.Upstream == "" || s.Fingerprint == "" || s.UpstreamSessionID == "" {
			t.Errorf("Expired returned an incomplete record: %+v", *s)
		}
	}
	for id := range expired {
		if !seen[id] {
			t.Errorf("Expired did not list expired session %s", id)
		}
	}
	// Once time moves on, the live ones expire too.
	got, err = st.Expired(ctx, now.Add(time.Hour), 100)
	if err != nil {
		t.Fatalf("Expired(later): %v", err)
	}
	if len(got) != len(expired)+len(live) {
		t.Errorf("Expired(an hour later) listed %d sessions, want %d", len(got), len(expired)+len(live))
	}
	// Deleted sessions are no longer listed.
	for id := range expired {
		if _, err := st.Delete(ctx, id); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	got, err = st.Expired(ctx, now, 100)
	if err != nil {
		t.Fatalf("Expired: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("Expired after deleting the expired sessions listed %d", len(got))
	}
}

func testExpiredLimit(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	now := time.Now().UTC().Round(0)
	for range 7 {
		s := sampleSession(newID("lim"))
		s.ExpiresAt = now.Add(-time.Second)
		mustCreate(t, ctx, st, s)
	}
	for _, limit := range []int{1, 3, 7} {
		got, err := st.Expired(ctx, now, limit)
		if err != nil {
			t.Fatalf("Expired(limit %d): %v", limit, err)
		}
		if len(got) != limit {
			t.Errorf("Expired(limit %d) returned %d sessions", limit, len(got))
		}
	}
	got, err := st.Expired(ctx, now, 50)
	if err != nil {
		t.Fatalf("Expired: %v", err)
	}
	if len(got) != 7 {
		t.Errorf("Expired(limit 50) returned %d sessions, want all 7", len(got))
	}
}

func appendN(t *testing.T, ctx context.Context, st sessionstore.Store, id string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		seq, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(i)})
		if err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
		if seq != uint64(i) {
			t.Fatalf("Append #%d returned Seq %d", i, seq)
		}
	}
}

func msgData(i int) []byte {
	return []byte(`{"jsonrpc":"2.0","method":"notifications/message","params":{"n":` + strconv.Itoa(i) + `}}`)
}

// checkMessages checks that msgs are exactly the entries with the given
// sequence numbers, as appended by appendN.
func checkMessages(t *testing.T, what string, msgs []sessionstore.Message, seqs ...uint64) {
	t.Helper()
	got := make([]uint64, len(msgs))
	for i, m := range msgs {
		got[i] = m.Seq
	}
	if !slices.Equal(got, seqs) {
		t.Errorf("%s: Seqs %v, want %v", what, got, seqs)
		return
	}
	for _, m := range msgs {
		if want := msgData(int(m.Seq)); !bytes.Equal(m.Data, want) {
			t.Errorf("%s: message %d data %q, want %q", what, m.Seq, m.Data, want)
		}
		if m.Control {
			t.Errorf("%s: message %d has Control set", what, m.Seq)
		}
	}
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func testAppendSeq(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	if msgs, err := st.Read(ctx, id, 0, 10); err != nil || len(msgs) != 0 {
		t.Fatalf("Read on an empty mailbox: (%v, %v)", msgs, err)
	}
	appendN(t, ctx, st, id, 1, 5)
	// A Seq chosen by the caller is ignored.
	seq, err := st.Append(ctx, id, sessionstore.Message{Seq: 1000, Data: msgData(6)})
	if err != nil || seq != 6 {
		t.Fatalf("Append with Seq 1000 set: (%d, %v), want (6, nil)", seq, err)
	}
	msgs, err := st.Read(ctx, id, 0, 100)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "Read(0, 100)", msgs, seqRange(1, 6)...)
	// Seqs keep growing after Ack.
	if err := st.Ack(ctx, id, "", 6); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	appendN(t, ctx, st, id, 7, 2)
}

func testReadAfterLimit(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	appendN(t, ctx, st, id, 1, 10)
	cases := []struct {
		after uint64
		limit int
		want  []uint64
	}{
		{0, 100, seqRange(1, 10)},
		{0, 10, seqRange(1, 10)},
		{0, 3, seqRange(1, 3)},
		{3, 4, seqRange(4, 7)},
		{7, 100, seqRange(8, 10)},
		{9, 1, []uint64{10}},
		{10, 5, nil},
		{11, 5, nil},
		{1 << 40, 5, nil},
	}
	for _, c := range cases {
		msgs, err := st.Read(ctx, id, c.after, c.limit)
		if err != nil {
			t.Fatalf("Read(%d, %d): %v", c.after, c.limit, err)
		}
		checkMessages(t, fmt.Sprintf("Read(%d, %d)", c.after, c.limit), msgs, c.want...)
	}
	// Reading does not consume.
	msgs, err := st.Read(ctx, id, 0, 100)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "second Read(0, 100)", msgs, seqRange(1, 10)...)
}

func testAckKeepsUnacked(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	appendN(t, ctx, st, id, 1, 10)
	if err := st.Ack(ctx, id, "", 6); err != nil {
		t.Fatalf("Ack(6): %v", err)
	}
	msgs, err := st.Read(ctx, id, 6, 100)
	if err != nil {
		t.Fatalf("Read(6): %v", err)
	}
	checkMessages(t, "Read(6) after Ack(6)", msgs, seqRange(7, 10)...)

	// From the start: some acknowledged entries may be kept for replay, but
	// whatever comes back is in order, gap-free, and ends with every
	// unacknowledged entry.
	msgs, err = st.Read(ctx, id, 0, 100)
	if err != nil {
		t.Fatalf("Read(0): %v", err)
	}
	if len(msgs) < 4 {
		t.Fatalf("Read(0) after Ack(6) returned %d messages, want at least the 4 unacknowledged", len(msgs))
	}
	first := msgs[0].Seq
	if first < 1 || first > 7 {
		t.Errorf("Read(0) after Ack(6) starts at %d", first)
	} else {
		checkMessages(t, "Read(0) after Ack(6)", msgs, seqRange(first, 10)...)
	}

	// Ack is idempotent, never goes backwards, and tolerates Seqs not yet
	// assigned.
	for _, seq := range []uint64{6, 3, 0} {
		if err := st.Ack(ctx, id, "", seq); err != nil {
			t.Fatalf("Ack(%d): %v", seq, err)
		}
	}
	msgs, err = st.Read(ctx, id, 6, 100)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "Read(6) after repeated and older Acks", msgs, seqRange(7, 10)...)
	if err := st.Ack(ctx, id, "", 1000); err != nil {
		t.Fatalf("Ack(1000): %v", err)
	}
	appendN(t, ctx, st, id, 11, 1)
	msgs, err = st.Read(ctx, id, 10, 100)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "Read(10) after Ack beyond the end and one Append", msgs, 11)
}

func testMailboxFull(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	appendN(t, ctx, st, id, 1, MaxPending)
	if seq, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(MaxPending + 1)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Fatalf("Append #%d into a mailbox of %d: (%d, %v), want ErrMailboxFull", MaxPending+1, MaxPending, seq, err)
	}
	// A refused Append uses no Seq (appendN below checks the numbering).
	msgs, err := st.Read(ctx, id, MaxPending-1, 10)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "tail of a full mailbox", msgs, MaxPending)
	// Delivering frees room.
	if err := st.Ack(ctx, id, "", 2); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	appendN(t, ctx, st, id, MaxPending+1, 2)
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(MaxPending + 3)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("Append beyond the room freed by Ack(2): %v, want ErrMailboxFull", err)
	}
	// Another session's mailbox is not affected.
	other := newSession(t, ctx, st)
	appendN(t, ctx, st, other, 1, 1)
}

func testMailboxesSeparate(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	a := newSession(t, ctx, st)
	b := newSession(t, ctx, st)
	appendN(t, ctx, st, a, 1, 3)
	appendN(t, ctx, st, b, 1, 2)
	msgs, err := st.Read(ctx, a, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "mailbox a", msgs, 1, 2, 3)
	msgs, err = st.Read(ctx, b, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "mailbox b", msgs, 1, 2)
	if err := st.Ack(ctx, a, "", 3); err != nil {
		t.Fatal(err)
	}
	msgs, err = st.Read(ctx, b, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "mailbox b after acknowledging a", msgs, 1, 2)
}

func subscribe(t *testing.T, ctx context.Context, st sessionstore.Store, id string) <-chan struct{} {
	t.Helper()
	ch, cancel, err := st.Subscribe(ctx, id)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if ch == nil || cancel == nil {
		t.Fatalf("Subscribe returned channel %v, cancel nil=%v", ch, cancel == nil)
	}
	t.Cleanup(cancel)
	return ch
}

func awaitWake(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: no wake-up within %v", what, waitTimeout)
	}
}

func testSubscribeWakesOnAppend(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	ch := subscribe(t, ctx, st, id)
	go func() {
		_, _ = st.Append(ctx, id, sessionstore.Message{Data: msgData(1)})
	}()
	awaitWake(t, ch, "Append from another goroutine")
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "Read after the wake-up", msgs, 1)

	// Wake-ups coalesce: several Appends while nobody listens leave at
	// least one wake-up, and the reader then sees them all.
	appendN(t, ctx, st, id, 2, 5)
	awaitWake(t, ch, "five Appends")
	msgs, err = st.Read(ctx, id, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "Read after coalesced wake-ups", msgs, seqRange(2, 6)...)

	// A subscription to one session is not woken by another's mailbox.
	// Stores may wake asynchronously, but in order: once a marker
	// session's wake-up arrived, every wake-up published before it has.
	other, marker := newSession(t, ctx, st), newSession(t, ctx, st)
	markerWake := subscribe(t, ctx, st, marker)
	appendN(t, ctx, st, marker, 1, 1)
	awaitWake(t, markerWake, "the first marker Append")
	drain(ch)
	appendN(t, ctx, st, other, 1, 1)
	appendN(t, ctx, st, marker, 2, 1)
	awaitWake(t, markerWake, "the marker Append after the other session's")
	select {
	case <-ch:
		t.Error("subscription woken by another session's Append")
	default:
	}
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func testSubscribeWakesAll(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	var chans []<-chan struct{}
	for range 3 {
		chans = append(chans, subscribe(t, ctx, st, id))
	}
	appendN(t, ctx, st, id, 1, 1)
	for i, ch := range chans {
		awaitWake(t, ch, fmt.Sprintf("subscriber %d", i))
	}
	// Ending one subscription leaves the others working.
	ch, cancel, err := st.Subscribe(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	_ = ch
	appendN(t, ctx, st, id, 2, 1)
	for i, ch := range chans {
		awaitWake(t, ch, fmt.Sprintf("subscriber %d after another unsubscribed", i))
	}
}

// testUnsubscribe: an ended subscription is not woken any more; ending it
// twice, or after its session is gone, is harmless.
func testUnsubscribe(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	ch, cancel, err := st.Subscribe(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	cancel() // twice is harmless
	appendN(t, ctx, st, id, 1, 1)
	// A wake-up of a subscription made after that Append, by a second one,
	// proves that the first Append's wake-up has been dispatched (stores
	// may dispatch asynchronously).
	later := subscribe(t, ctx, st, id)
	appendN(t, ctx, st, id, 2, 1)
	awaitWake(t, later, "a subscription made after the first Append")
	select {
	case <-ch:
		t.Error("an ended subscription was woken")
	default:
	}
	_, cancel, err = st.Subscribe(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	cancel()
}

func testDeleteWakesSubscribers(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	ch := subscribe(t, ctx, st, id)
	go func() {
		_, _ = st.Delete(ctx, id)
	}()
	awaitWake(t, ch, "Delete")
	if _, err := st.Read(ctx, id, 0, 10); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Read after the wake-up for Delete: %v, want ErrNotFound", err)
	}
}

func testControlRoundTrip(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	in := []sessionstore.Message{
		{Data: []byte(`{"jsonrpc":"2.0","id":1,"result":{}}`)},
		{Control: true, Data: []byte("upstream-session")},
		{Data: []byte(`{"jsonrpc":"2.0","method":"x"}`)},
		{Control: true, Data: nil},
	}
	for i, m := range in {
		seq, err := st.Append(ctx, id, m)
		if err != nil || seq != uint64(i+1) {
			t.Fatalf("Append #%d: (%d, %v)", i+1, seq, err)
		}
	}
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(in) {
		t.Fatalf("Read returned %d messages, want %d", len(msgs), len(in))
	}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) || m.Control != in[i].Control || !bytes.Equal(m.Data, in[i].Data) {
			t.Errorf("message %d: {Seq %d Control %v Data %q}, want {Seq %d Control %v Data %q}",
				i, m.Seq, m.Control, m.Data, i+1, in[i].Control, in[i].Data)
		}
	}
}

func testConcurrentAppend(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	const writers, each = 20, 5 // 100 messages, within MaxPending
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seqs = map[uint64]string{}
	)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			var last uint64
			for i := range each {
				data := fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)
				seq, err := st.Append(ctx, id, sessionstore.Message{Data: []byte(data)})
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				if seq <= last {
					t.Errorf("writer %d: Seq %d after %d", w, seq, last)
				}
				last = seq
				mu.Lock()
				if prev, dup := seqs[seq]; dup {
					t.Errorf("Seq %d assigned twice (%s and %s)", seq, prev, data)
				}
				seqs[seq] = data
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	const total = writers * each
	for s := uint64(1); s <= total; s++ {
		if _, ok := seqs[s]; !ok {
			t.Errorf("Seq %d never assigned (gap)", s)
		}
	}
	msgs, err := st.Read(ctx, id, 0, total+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != total {
		t.Fatalf("Read returned %d messages, want %d", len(msgs), total)
	}
	perWriter := map[string]int{}
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("Read position %d has Seq %d", i, m.Seq)
		}
		if string(m.Data) != seqs[m.Seq] {
			t.Errorf("Seq %d: data %q, Append of that Seq carried %q", m.Seq, m.Data, seqs[m.Seq])
		}
		// Each writer's messages come back in the order it appended them.
		var w, n int
		if _, err := fmt.Sscanf(string(m.Data), `{"w":%d,"i":%d}`, &w, &n); err != nil {
			t.Fatalf("data %q: %v", m.Data, err)
		}
		key := strconv.Itoa(w)
		if n != perWriter[key] {
			t.Errorf("writer %d: message %d read where %d was expected", w, n, perWriter[key])
		}
		perWriter[key] = n + 1
	}
}

func testDataCopied(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	buf := []byte(`{"jsonrpc":"2.0","method":"a"}`)
	want := string(buf)
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: buf}); err != nil {
		t.Fatal(err)
	}
	// The caller reuses its buffer, as a reader loop would.
	copy(buf, `{"jsonrpc":"2.0","method":"b"}`)
	buf[0] = 'X'
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || string(msgs[0].Data) != want {
		t.Errorf("stored data changed with the caller's slice: %q, want %q", datas(msgs), want)
	}

	// Same with a slice that shares its array with more data.
	big := []byte(`{"n":1}{"n":2}`)
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: big[:7]}); err != nil {
		t.Fatal(err)
	}
	copy(big, `{"n":9}`)
	msgs, err = st.Read(ctx, id, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || string(msgs[0].Data) != `{"n":1}` {
		t.Errorf("stored data %q, want %q", datas(msgs), `{"n":1}`)
	}
}

func testDeleteRemovesMailbox(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	s := sampleSession(newID("delmb"))
	mustCreate(t, ctx, st, s)
	appendN(t, ctx, st, s.ID, 1, 3)
	if ok, err := st.Delete(ctx, s.ID); !ok || err != nil {
		t.Fatalf("Delete: (%v, %v)", ok, err)
	}
	if err := st.Create(ctx, sampleSession(s.ID)); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
	msgs, err := st.Read(ctx, s.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 0 {
		t.Errorf("re-created session inherited %d mailbox entries", len(msgs))
	}
	// And its Seqs start from 1 again.
	appendN(t, ctx, st, s.ID, 1, 1)
}

func datas(msgs []sessionstore.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Data)
	}
	return out
}

func testAckRecordsDelivered(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	delivered := func() uint64 {
		t.Helper()
		s, err := st.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		return s.Delivered
	}
	if d := delivered(); d != 0 {
		t.Fatalf("Delivered of a new session = %d", d)
	}
	appendN(t, ctx, st, id, 1, 5)
	if d := delivered(); d != 0 {
		t.Errorf("Delivered after Append only = %d, want 0", d)
	}
	steps := []struct{ ack, want uint64 }{{3, 3}, {2, 3}, {3, 3}, {5, 5}}
	for _, step := range steps {
		if err := st.Ack(ctx, id, "", step.ack); err != nil {
			t.Fatalf("Ack(%d): %v", step.ack, err)
		}
		if d := delivered(); d != step.want {
			t.Errorf("Delivered after Ack(%d) = %d, want %d", step.ack, d, step.want)
		}
	}
	// Updates that do not touch it keep it.
	if _, err := st.Update(ctx, id, func(s *sessionstore.Session) error { s.Owner = "other"; return nil }); err != nil {
		t.Fatal(err)
	}
	if d := delivered(); d != 5 {
		t.Errorf("Delivered after an unrelated Update = %d, want 5", d)
	}
}

// testAckChecksOwner: an Ack naming an owner other than the session's
// changes nothing and reports ErrNotOwner; the right owner's Ack works.
func testAckChecksOwner(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	if _, err := st.Update(ctx, id, func(s *sessionstore.Session) error { s.Owner = "new-stream"; return nil }); err != nil {
		t.Fatal(err)
	}
	appendN(t, ctx, st, id, 1, 4)
	if err := st.Ack(ctx, id, "old-stream", 4); !errors.Is(err, sessionstore.ErrNotOwner) {
		t.Fatalf("Ack by a replaced owner: %v, want ErrNotOwner", err)
	}
	s, err := st.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Delivered != 0 {
		t.Errorf("a refused Ack moved Delivered to %d", s.Delivered)
	}
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	checkMessages(t, "Read(0) after a refused Ack", msgs, seqRange(1, 4)...)
	if err := st.Ack(ctx, id, "new-stream", 4); err != nil {
		t.Fatalf("Ack by the owner: %v", err)
	}
	if s, err = st.Get(ctx, id); err != nil || s.Delivered != 4 {
		t.Fatalf("Delivered after the owner's Ack = %v (%v), want 4", s.Delivered, err)
	}
}

// testAdoptable: among the caller's initialised sessions for the upstream
// and protocol version, Adoptable offers the one without a live owner that
// was released last.
func testAdoptable(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	now := time.Now().UTC().Round(0).Truncate(time.Millisecond)
	const fp, up, pv = "fp-adopt", "http://upstream.example/mcp", "2025-06-18"
	mk := func(prefix string, mutate func(s *sessionstore.Session)) string {
		s := sampleSession(newID(prefix))
		s.Fingerprint, s.Upstream, s.ProtocolVersion = fp, up, pv
		s.Initialized = true
		s.Owner, s.OwnerLeaseUntil = "", time.Time{}
		s.ExpiresAt = now.Add(time.Minute)
		mutate(s)
		mustCreate(t, ctx, st, s)
		return s.ID
	}
	// The replicas holding streams are alive; "replica-gone" is not.
	for _, r := range []string{"replica-a", "replica-b"} {
		if err := st.Heartbeat(ctx, r, 10*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	mk("released-early", func(s *sessionstore.Session) { s.ExpiresAt = now.Add(time.Minute) })
	mk("released-later", func(s *sessionstore.Session) { s.ExpiresAt = now.Add(2 * time.Minute) })
	// Not candidates, although they would win on ExpiresAt.
	mk("live-owner", func(s *sessionstore.Session) {
		s.Owner, s.OwnerLeaseUntil, s.ExpiresAt = "replica-a/1", now.Add(30*time.Second), now.Add(9*time.Minute)
	})
	mk("not-initialized", func(s *sessionstore.Session) { s.Initialized, s.ExpiresAt = false, now.Add(9*time.Minute) })
	mk("other-caller", func(s *sessionstore.Session) { s.Fingerprint, s.ExpiresAt = "fp-other", now.Add(9*time.Minute) })
	mk("other-upstream", func(s *sessionstore.Session) {
		s.Upstream, s.ExpiresAt = "http://elsewhere/mcp", now.Add(9*time.Minute)
	})
	mk("other-version", func(s *sessionstore.Session) { s.ProtocolVersion, s.ExpiresAt = "2024-11-05", now.Add(9*time.Minute) })
	// An owner whose lease lapsed does not hold the session any more.
	lapsed := mk("lapsed-owner", func(s *sessionstore.Session) {
		s.Owner, s.OwnerLeaseUntil, s.ExpiresAt = "replica-dead/1", now.Add(-time.Second), now.Add(3*time.Minute)
	})

	got, err := st.Adoptable(ctx, fp, up, pv, now)
	if err != nil {
		t.Fatalf("Adoptable: %v", err)
	}
	if got.ID != lapsed {
		t.Fatalf("Adoptable picked %s, want %s (no live owner, latest ExpiresAt)", got.ID, lapsed)
	}
	stored, err := st.Get(ctx, lapsed)
	if err != nil {
		t.Fatal(err)
	}
	checkSession(t, "Adoptable's result", got, stored)
	// It is a copy.
	got.Owner = "changed"
	if again, _ := st.Get(ctx, lapsed); again.Owner == "changed" {
		t.Error("changing Adoptable's result changed the stored session")
	}
	// It only looks: the session is not claimed.
	if again, _ := st.Get(ctx, lapsed); again.Owner != "replica-dead/1" {
		t.Errorf("Adoptable changed the owner to %q", again.Owner)
	}

	// Once claimed, the next best is offered.
	if _, err := st.Update(ctx, lapsed, func(s *sessionstore.Session) error {
		s.Owner, s.OwnerLeaseUntil = "replica-b/2", now.Add(time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err = st.Adoptable(ctx, fp, up, pv, now)
	if err != nil {
		t.Fatalf("Adoptable after claiming the best: %v", err)
	}
	if !strings.Contains(got.ID, "released-later") {
		t.Errorf("Adoptable picked %s, want the released-later session", got.ID)
	}
	// A session whose lease runs but whose replica died (no heartbeat) has
	// no live owner either, and it wins on ExpiresAt.
	crashed := mk("crashed-owner", func(s *sessionstore.Session) {
		s.Owner, s.OwnerLeaseUntil, s.ExpiresAt = "replica-gone/7", now.Add(time.Minute), now.Add(4*time.Minute)
	})
	got, err = st.Adoptable(ctx, fp, up, pv, now)
	if err != nil {
		t.Fatalf("Adoptable with a crashed owner: %v", err)
	}
	if got.ID != crashed {
		t.Errorf("Adoptable picked %s, want %s (its replica has no heartbeat)", got.ID, crashed)
	}
	if _, err := st.Delete(ctx, crashed); err != nil {
		t.Fatal(err)
	}
	// Time moves on and the live owner's lease lapses: it becomes the best.
	got, err = st.Adoptable(ctx, fp, up, pv, now.Add(5*time.Minute))
	if err != nil {
		t.Fatalf("Adoptable later: %v", err)
	}
	if !strings.Contains(got.ID, "live-owner") {
		t.Errorf("Adoptable five minutes later picked %s, want the session whose lease lapsed", got.ID)
	}
}

func testAdoptableNone(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	now := time.Now()
	if s, err := st.Adoptable(ctx, "fp-none", "http://u/", "2025-06-18", now); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Adoptable on an empty store: (%v, %v), want ErrNotFound", s, err)
	}
	if err := st.Heartbeat(ctx, "replica-a", time.Minute); err != nil {
		t.Fatal(err)
	}
	s := sampleSession(newID("owned"))
	s.Fingerprint, s.Owner, s.OwnerLeaseUntil = "fp-none", "replica-a/1", now.Add(time.Minute)
	mustCreate(t, ctx, st, s)
	if got, err := st.Adoptable(ctx, "fp-none", s.Upstream, s.ProtocolVersion, now); !errors.Is(err, sessionstore.ErrAdoptionPending) {
		t.Errorf("Adoptable with only a live-owned session: (%v, %v), want ErrAdoptionPending", got, err)
	}
	if got, err := st.Adoptable(ctx, "fp-none", s.Upstream, "1999-01-01", now); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Adoptable for another version: (%v, %v), want ErrNotFound", got, err)
	}
	// Released, it is offered for its version and for any version.
	if _, err := st.Update(ctx, s.ID, func(s *sessionstore.Session) error { s.Owner = ""; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, pv := range []string{s.ProtocolVersion, ""} {
		if got, err := st.Adoptable(ctx, "fp-none", s.Upstream, pv, now); err != nil || got.ID != s.ID {
			t.Errorf("Adoptable(version %q) of a released session: (%v, %v), want it", pv, got, err)
		}
	}
}

// testRememberInitialize: a caller's latest initialize is kept per caller
// and upstream, replaced by the next one, and forgotten after its TTL.
func testRememberInitialize(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	const up = "http://upstream.example/mcp"
	if got, err := st.RecallInitialize(ctx, "fp-init", up); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Fatalf("RecallInitialize of nothing: (%q, %v), want ErrNotFound", got, err)
	}
	first, second := []byte(`{"jsonrpc":"2.0","id":0,"method":"initialize"}`), []byte(`{"jsonrpc":"2.0","id":"x","method":"initialize"}`)
	for _, msg := range [][]byte{first, second} {
		if err := st.RememberInitialize(ctx, "fp-init", up, msg, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.RememberInitialize(ctx, "fp-init-other", up, first, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got, err := st.RecallInitialize(ctx, "fp-init", up); err != nil || string(got) != string(second) {
		t.Errorf("RecallInitialize: (%q, %v), want the latest %q", got, err, second)
	}
	if got, err := st.RecallInitialize(ctx, "fp-init", "http://elsewhere/mcp"); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("RecallInitialize for another upstream: (%q, %v), want ErrNotFound", got, err)
	}
	if err := st.RememberInitialize(ctx, "fp-init-short", up, first, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := st.RecallInitialize(ctx, "fp-init-short", up)
		if errors.Is(err, sessionstore.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an initialize remembered for 50ms is still recalled after 5s (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testSessionsPerCaller: a caller holds at most MaxSessionsPerCaller live
// sessions; other callers and sessions without a Caller are not counted
// against it; a deleted or expired session frees its place; Update never
// changes a session's Caller.
func testSessionsPerCaller(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	caller := newID("caller")
	create := func(caller string) (*sessionstore.Session, error) {
		s := sampleSession(newID("s"))
		s.Caller = caller
		return s, st.Create(ctx, s)
	}
	var held []*sessionstore.Session
	for range MaxSessionsPerCaller {
		s, err := create(caller)
		if err != nil {
			t.Fatalf("Create within the caller's limit: %v", err)
		}
		held = append(held, s)
	}
	if _, err := create(caller); !errors.Is(err, sessionstore.ErrTooManyForCaller) {
		t.Fatalf("Create beyond %d sessions of one caller: %v, want ErrTooManyForCaller", MaxSessionsPerCaller, err)
	}
	if _, err := create(newID("other-caller")); err != nil {
		t.Errorf("Create for another caller: %v", err)
	}
	if _, err := create(""); err != nil {
		t.Errorf("Create without a caller: %v", err)
	}

	got, err := st.Update(ctx, held[0].ID, func(s *sessionstore.Session) error {
		s.Caller = "someone-else"
		return nil
	})
	if err != nil || got.Caller != caller {
		t.Fatalf("Update that changes Caller: (%+v, %v), want the Caller kept", got, err)
	}
	if ok, err := st.Delete(ctx, held[0].ID); !ok || err != nil {
		t.Fatalf("Delete: (%v, %v)", ok, err)
	}
	if _, err := create(caller); err != nil {
		t.Fatalf("Create after one of the caller's sessions was deleted: %v", err)
	}
	if _, err := create(caller); !errors.Is(err, sessionstore.ErrTooManyForCaller) {
		t.Fatalf("Create beyond the limit again: %v, want ErrTooManyForCaller", err)
	}
	// An expired session waits for the janitor; it no longer counts.
	if _, err := st.Update(ctx, held[1].ID, func(s *sessionstore.Session) error {
		s.ExpiresAt = time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := create(caller); err != nil {
		t.Errorf("Create when one of the caller's sessions has expired: %v", err)
	}
}

// testIdentityKey: the store's identity key is long enough and stable.
func testIdentityKey(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	first, err := st.IdentityKey(ctx)
	if err != nil || len(first) < 32 {
		t.Fatalf("IdentityKey: (%d bytes, %v), want at least 32 bytes", len(first), err)
	}
	again, err := st.IdentityKey(ctx)
	if err != nil || !bytes.Equal(first, again) {
		t.Errorf("IdentityKey again: (%x, %v), want the same key %x", again, err, first)
	}
}
