package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// LimitedStore is a store whose sessionstore.Limits can be changed in place
// (a configuration reload), as RunLimits needs.
type LimitedStore interface {
	sessionstore.Store
	SetLimits(l sessionstore.Limits)
}

// RunLimits runs the contract of sessionstore.Limits: what a store refuses
// beyond its limits, and limits changed in place by SetLimits. Each test
// asks newStore for a store with its own limits; the factory must return:
//
//   - an empty store of its own, released through t.Cleanup, as for Run;
//   - exactly the limits l (a zero field means the store's default);
//   - a replay window of at least one delivered message (the mailbox test
//     checks that a delivered message kept for replay does not count
//     against MaxPending).
//
// An implementation's tests call it beside Run:
//
//	func TestLimits(t *testing.T) {
//		storetest.RunLimits(t, func(t *testing.T, l sessionstore.Limits) storetest.LimitedStore {
//			return memory.New(memory.Options{MaxSessions: l.MaxSessions, MaxPending: l.MaxPending,
//				MaxSessionsPerCaller: l.MaxSessionsPerCaller, ReplayWindow: 10})
//		})
//	}
//
// The stores' defaults are not part of the contract: each implementation
// tests its own.
func RunLimits(t *testing.T, newStore func(t *testing.T, l sessionstore.Limits) LimitedStore) {
	tests := []struct {
		name   string
		limits sessionstore.Limits
		fn     func(t *testing.T, st LimitedStore)
	}{
		{"MaxSessions", sessionstore.Limits{MaxSessions: 3}, testMaxSessions},
		{"MaxPending", sessionstore.Limits{MaxPending: 2}, testMaxPending},
		{"SetLimits", sessionstore.Limits{MaxPending: 8}, testSetLimits},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t, tc.limits)
			if st == nil {
				t.Fatal("newStore returned nil")
			}
			tc.fn(t, st)
		})
	}
}

// sessionCount returns how many sessions the store holds (none of them
// expires within a day).
func sessionCount(t *testing.T, st sessionstore.Store) int {
	t.Helper()
	all, err := st.Expired(ctxFor(t), time.Now().Add(24*time.Hour), MinSessions)
	if err != nil {
		t.Fatalf("Expired: %v", err)
	}
	return len(all)
}

// testMaxSessions: with MaxSessions 3, a fourth Create fails with
// ErrTooManySessions until a Delete makes room.
func testMaxSessions(t *testing.T, st LimitedStore) {
	ctx := ctxFor(t)
	var ids []string
	for range 3 {
		ids = append(ids, newSession(t, ctx, st))
	}
	if err := st.Create(ctx, sampleSession(newID("s3"))); !errors.Is(err, sessionstore.ErrTooManySessions) {
		t.Fatalf("fourth Create: %v, want ErrTooManySessions", err)
	}
	// An id that exists is reported as such even when the store is full.
	if err := st.Create(ctx, sampleSession(ids[0])); !errors.Is(err, sessionstore.ErrExists) {
		t.Errorf("Create(existing id) on a full store: %v, want ErrExists", err)
	}
	if n := sessionCount(t, st); n != 3 {
		t.Errorf("store holds %d sessions, want 3", n)
	}
	if ok, err := st.Delete(ctx, ids[1]); !ok || err != nil {
		t.Fatalf("Delete: (%v, %v)", ok, err)
	}
	if err := st.Create(ctx, sampleSession(newID("s3"))); err != nil {
		t.Errorf("Create after a Delete made room: %v", err)
	}
	if n := sessionCount(t, st); n != 3 {
		t.Errorf("store holds %d sessions, want 3", n)
	}
	if err := st.Create(ctx, sampleSession(newID("s4"))); !errors.Is(err, sessionstore.ErrTooManySessions) {
		t.Errorf("Create on a full store again: %v, want ErrTooManySessions", err)
	}
}

// testMaxPending: with MaxPending 2, the third undelivered message is
// refused, by Append and by FinishRequest alike; delivered messages kept for
// replay do not count.
func testMaxPending(t *testing.T, st LimitedStore) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	appendN(t, ctx, st, id, 1, 2)
	if seq, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(3)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Fatalf("third Append with MaxPending 2: (%d, %v), want ErrMailboxFull", seq, err)
	}
	// Delivered messages kept for replay do not count.
	if err := st.Ack(ctx, id, "", 1); err != nil {
		t.Fatal(err)
	}
	if seq, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(3)}); err != nil || seq != 3 {
		t.Fatalf("Append after Ack(1): (%d, %v), want (3, nil)", seq, err)
	}
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(4)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("Append beyond MaxPending again: %v, want ErrMailboxFull", err)
	}
	// FinishRequest appends too, and is refused the same way, keeping the
	// request.
	if err := st.TrackRequest(ctx, id, "k", sessionstore.Request{ID: []byte("1"), Replica: "r"}); err != nil {
		t.Fatal(err)
	}
	if done, err := st.FinishRequest(ctx, id, "k", sessionstore.Message{Data: msgData(4)}); done || !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("FinishRequest into a full mailbox: (%v, %v), want ErrMailboxFull", done, err)
	}
	if reqs, err := st.ListRequests(ctx, id); err != nil || len(reqs) != 1 {
		t.Errorf("requests after a refused FinishRequest: (%v, %v), want the request kept", reqs, err)
	}
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkMessages(t, "Read(0) (1 kept for replay)", msgs, 1, 2, 3)
}

// testSetLimits: a lowered mailbox bound applies to the next append.
func testSetLimits(t *testing.T, st LimitedStore) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	st.SetLimits(sessionstore.Limits{MaxPending: 1})
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, id, sessionstore.Message{Data: msgData(2)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("second append with max_pending lowered to 1: %v, want ErrMailboxFull", err)
	}
}

// testNonPositiveLimits (part of Run): a limit of zero or less returns
// nothing from Read and Expired; it must not panic the process.
func testNonPositiveLimits(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	appendN(t, ctx, st, id, 1, 3)
	old := sampleSession(newID("old"))
	old.ExpiresAt = time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	mustCreate(t, ctx, st, old)
	for _, limit := range []int{0, -1} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("Read(0, %d) panicked: %v", limit, r)
				}
			}()
			if msgs, err := st.Read(ctx, id, 0, limit); err != nil || len(msgs) != 0 {
				t.Errorf("Read(0, %d) = (%d messages, %v), want none", limit, len(msgs), err)
			}
		}()
		if got, err := st.Expired(ctx, time.Now(), limit); err != nil || len(got) != 0 {
			t.Errorf("Expired(limit %d) = (%d sessions, %v), want none", limit, len(got), err)
		}
	}
	if _, err := st.Read(ctx, newID("missing"), 0, 0); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Read(missing, limit 0): %v, want ErrNotFound", err)
	}
	if msgs, err := st.Read(ctx, id, ^uint64(0), 10); err != nil || len(msgs) != 0 {
		t.Errorf("Read(after max uint64) = (%v, %v), want none", msgs, err)
	}
}
