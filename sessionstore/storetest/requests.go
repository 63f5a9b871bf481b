package storetest

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// requestTests are the contract of sessionstore.Requests.
var requestTests = []struct {
	name string
	fn   func(t *testing.T, st sessionstore.Store)
}{
	{"TrackListClaim", testTrackListClaim},
	{"FinishAppendsOnce", testFinishAppendsOnce},
	{"FinishOrClaimExactlyOnce", testFinishOrClaimExactlyOnce},
	{"RequestsGoWithSession", testRequestsGoWithSession},
	{"Heartbeat", testHeartbeat},
	{"LapsedReplicas", testLapsedReplicas},
}

func testTrackListClaim(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	r := sessionstore.Request{ID: []byte(`"req-ü-1"`), Replica: "replica-b", UpstreamSessionID: "up-1"}
	if err := st.TrackRequest(ctx, id, `"req-ü-1"`, r); err != nil {
		t.Fatalf("TrackRequest: %v", err)
	}
	if err := st.TrackRequest(ctx, id, "12345678901234567890", sessionstore.Request{ID: []byte("12345678901234567890"), Replica: "replica-c"}); err != nil {
		t.Fatalf("TrackRequest: %v", err)
	}
	// The same key again (a request sent twice) changes nothing.
	if err := st.TrackRequest(ctx, id, "12345678901234567890", sessionstore.Request{ID: []byte("1"), Replica: "replica-d"}); !errors.Is(err, sessionstore.ErrExists) {
		t.Errorf("TrackRequest of a key in flight: %v, want ErrExists", err)
	}
	if err := st.SetRequestEventID(ctx, id, `"req-ü-1"`, "stream-1_7"); err != nil {
		t.Fatalf("SetRequestEventID: %v", err)
	}
	// Reassigned, it keeps its event id; a missing one is not written.
	if ok, err := st.ReassignRequest(ctx, id, `"req-ü-1"`, sessionstore.Request{Replica: "replica-x", UpstreamSessionID: "up-1"}); err != nil || !ok {
		t.Fatalf("ReassignRequest: %v, %v", ok, err)
	}
	if got, err := st.ListRequests(ctx, id); err != nil || got[`"req-ü-1"`].Replica != "replica-x" || got[`"req-ü-1"`].LastEventID != "stream-1_7" {
		t.Errorf("after ReassignRequest: %+v, %v; want replica-x with its event id", got[`"req-ü-1"`], err)
	}
	if ok, err := st.ReassignRequest(ctx, id, "no-such-request", sessionstore.Request{Replica: "replica-x"}); err != nil || ok {
		t.Errorf("ReassignRequest of a missing request: %v, %v; want false", ok, err)
	}
	if ok, err := st.ReassignRequest(ctx, id, `"req-ü-1"`, sessionstore.Request{Replica: "replica-b", UpstreamSessionID: "up-1"}); err != nil || !ok {
		t.Fatalf("ReassignRequest back: %v, %v", ok, err)
	}
	if err := st.SetRequestEventID(ctx, id, "no-such-request", "x"); err != nil {
		t.Errorf("SetRequestEventID on a missing request: %v, want nil", err)
	}
	got, err := st.ListRequests(ctx, id)
	if err != nil {
		t.Fatalf("ListRequests: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("ListRequests returned %d requests, want 2: %v", len(got), got)
	}
	g := got[`"req-ü-1"`]
	if !bytes.Equal(g.ID, r.ID) || g.Replica != "replica-b" || g.UpstreamSessionID != "up-1" || g.LastEventID != "stream-1_7" {
		t.Errorf("request read back as %+v", g)
	}
	if string(got["12345678901234567890"].ID) != "12345678901234567890" {
		t.Errorf("numeric id read back as %s", got["12345678901234567890"].ID)
	}
	claimed, err := st.ClaimRequest(ctx, id, `"req-ü-1"`)
	if err != nil || !claimed {
		t.Fatalf("ClaimRequest = %v, %v; want true", claimed, err)
	}
	if claimed, err = st.ClaimRequest(ctx, id, `"req-ü-1"`); err != nil || claimed {
		t.Fatalf("second ClaimRequest = %v, %v; want false", claimed, err)
	}
	if got, _ = st.ListRequests(ctx, id); len(got) != 1 {
		t.Errorf("after a claim ListRequests returned %d requests, want 1", len(got))
	}
	if _, err := st.ListRequests(ctx, "storetest-missing"); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("ListRequests of a missing session: %v, want ErrNotFound", err)
	}
}

func testFinishAppendsOnce(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	if err := st.TrackRequest(ctx, id, "1", sessionstore.Request{ID: []byte("1"), Replica: "a"}); err != nil {
		t.Fatal(err)
	}
	answer := sessionstore.Message{Data: []byte(`{"jsonrpc":"2.0","id":1,"result":{}}`)}
	done, err := st.FinishRequest(ctx, id, "1", answer)
	if err != nil || !done {
		t.Fatalf("FinishRequest = %v, %v; want true", done, err)
	}
	if done, err = st.FinishRequest(ctx, id, "1", answer); err != nil || done {
		t.Fatalf("second FinishRequest = %v, %v; want false", done, err)
	}
	msgs, err := st.Read(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, answer.Data) {
		t.Fatalf("mailbox after two FinishRequest calls: %v, want the answer once", msgs)
	}
	if got, _ := st.ListRequests(ctx, id); len(got) != 0 {
		t.Errorf("a finished request is still listed: %v", got)
	}
}

// testFinishOrClaimExactlyOnce races the forwarding replica's FinishRequest
// against another replica's ClaimRequest: exactly one of them wins.
func testFinishOrClaimExactlyOnce(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	const n = 20
	for i := range n {
		key := string(rune('a' + i))
		if err := st.TrackRequest(ctx, id, key, sessionstore.Request{ID: []byte(`"` + key + `"`), Replica: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		finished, taken int
	)
	for i := range n {
		key := string(rune('a' + i))
		wg.Add(2)
		go func() {
			defer wg.Done()
			done, err := st.FinishRequest(ctx, id, key, sessionstore.Message{Data: []byte(`{"k":"` + key + `"}`)})
			if err != nil {
				t.Error(err)
			}
			if done {
				mu.Lock()
				finished++
				mu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			claimed, err := st.ClaimRequest(ctx, id, key)
			if err != nil {
				t.Error(err)
			}
			if claimed {
				mu.Lock()
				taken++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if finished+taken != n {
		t.Fatalf("%d finished + %d claimed, want exactly %d in all", finished, taken, n)
	}
	msgs, err := st.Read(ctx, id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != finished {
		t.Errorf("%d answers appended, want %d (one per finished request)", len(msgs), finished)
	}
}

func testRequestsGoWithSession(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	id := newSession(t, ctx, st)
	if err := st.TrackRequest(ctx, id, "1", sessionstore.Request{ID: []byte("1"), Replica: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := st.TrackRequest(ctx, id, "2", sessionstore.Request{ID: []byte("2")}); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("TrackRequest on a deleted session: %v, want ErrNotFound", err)
	}
	if _, err := st.FinishRequest(ctx, id, "1", sessionstore.Message{Data: []byte("{}")}); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("FinishRequest on a deleted session: %v, want ErrNotFound", err)
	}
	// A session created again under the same id starts with no requests.
	mustCreate(t, ctx, st, sampleSession(id))
	if got, err := st.ListRequests(ctx, id); err != nil || len(got) != 0 {
		t.Errorf("requests of a re-created session: %v, %v; want none", got, err)
	}
}

func testHeartbeat(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	replica := newID("replica")
	if alive, err := st.ReplicaAlive(ctx, replica); err != nil || alive {
		t.Fatalf("ReplicaAlive before any heartbeat = %v, %v; want false", alive, err)
	}
	if err := st.Heartbeat(ctx, replica, time.Minute); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if alive, err := st.ReplicaAlive(ctx, replica); err != nil || !alive {
		t.Fatalf("ReplicaAlive after a heartbeat = %v, %v; want true", alive, err)
	}
	short := newID("replica")
	if err := st.Heartbeat(ctx, short, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		alive, err := st.ReplicaAlive(ctx, short)
		if err != nil {
			t.Fatal(err)
		}
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a heartbeat with a 50ms TTL still counts after 5s")
		}
		time.Sleep(20 * time.Millisecond) // waiting for a TTL to pass is waiting for time itself
	}
}

// testLapsedReplicas: replicas whose heartbeat ran out, or that stopped it,
// are listed for the window in which that happened, and live ones never.
func testLapsedReplicas(t *testing.T, st sessionstore.Store) {
	ctx := ctxFor(t)
	start := time.Now().Add(-time.Millisecond)
	live, lapsing, stopped := newID("live"), newID("lapsing"), newID("stopped")
	for _, beat := range []struct {
		replica string
		ttl     time.Duration
	}{{live, time.Minute}, {lapsing, 50 * time.Millisecond}, {stopped, time.Minute}, {stopped, 0}} {
		if err := st.Heartbeat(ctx, beat.replica, beat.ttl); err != nil {
			t.Fatalf("Heartbeat(%s, %v): %v", beat.replica, beat.ttl, err)
		}
	}
	lapsed := func(since, now time.Time) map[string]bool {
		t.Helper()
		list, err := st.LapsedReplicas(ctx, since, now)
		if err != nil {
			t.Fatalf("LapsedReplicas: %v", err)
		}
		out := map[string]bool{}
		for _, r := range list {
			out[r] = true
		}
		return out
	}
	if got := lapsed(start, time.Now()); !got[stopped] || got[live] || got[lapsing] {
		t.Errorf("lapsed right after the beats: %v; want %s only among ours", got, stopped)
	}
	deadline := time.Now().Add(waitTimeout)
	for !lapsed(start, time.Now())[lapsing] {
		if time.Now().After(deadline) {
			t.Fatal("a heartbeat with a 50ms TTL is not listed as lapsed after 5s")
		}
		time.Sleep(20 * time.Millisecond) // waiting for a TTL to pass is waiting for time itself
	}
	later := time.Now()
	if got := lapsed(later, later.Add(time.Second)); got[lapsing] || got[stopped] || got[live] {
		t.Errorf("lapsed after they were listed: %v; want none of ours", got)
	}
	if got := lapsed(later, later.Add(2*time.Minute)); !got[live] {
		t.Errorf("lapsed in two minutes: %v; want %s, whose beat lasts one", got, live)
	}
}
