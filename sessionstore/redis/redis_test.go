package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/storetest"
)

func TestContract(t *testing.T) {
	requireRedis(t)
	t.Run("Single", func(t *testing.T) {
		for _, window := range []int{-1, 3, 0} {
			t.Run("ReplayWindow="+strconv.Itoa(window), func(t *testing.T) {
				storetest.Run(t, func(t *testing.T) sessionstore.Store {
					return newStore(t, newSingleClient(t), Options{
						MaxSessions:          storetest.MinSessions,
						MaxPending:           storetest.MaxPending,
						ReplayWindow:         window,
						MaxSessionsPerCaller: storetest.MaxSessionsPerCaller,
					})
				})
			})
		}
	})
	t.Run("Cluster", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) sessionstore.Store {
			return newStore(t, newClusterClient(t), Options{
				MaxSessions:          storetest.MinSessions,
				MaxPending:           storetest.MaxPending,
				MaxSessionsPerCaller: storetest.MaxSessionsPerCaller,
			})
		})
	})
}

func session(id string) *sessionstore.Session {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &sessionstore.Session{
		ID:          id,
		Upstream:    "http://upstream.example/mcp",
		Fingerprint: "fp",
		CreatedAt:   now,
		ExpiresAt:   now.Add(time.Minute),
	}
}

func create(tb testing.TB, st *Store, id string) {
	tb.Helper()
	if err := st.Create(context.Background(), session(id)); err != nil {
		tb.Fatalf("Create(%s): %v", id, err)
	}
}

func appendN(tb testing.TB, st *Store, id string, n int) {
	tb.Helper()
	for i := range n {
		if _, err := st.Append(context.Background(), id, sessionstore.Message{Data: []byte(`{"n":` + strconv.Itoa(i) + `}`)}); err != nil {
			tb.Fatalf("Append #%d: %v", i+1, err)
		}
	}
}

func seqs(t *testing.T, st *Store, id string, after uint64) []uint64 {
	t.Helper()
	msgs, err := st.Read(context.Background(), id, after, 10000)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	out := []uint64{}
	for _, m := range msgs {
		out = append(out, m.Seq)
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	out := []uint64{}
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func awaitWake(t *testing.T, ch <-chan struct{}, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(timeout):
		t.Fatalf("%s: no wake-up within %v", what, timeout)
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

func TestNewOptions(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { client.Close() })
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil client) succeeded")
	}
	for _, p := range []string{"a{b", "x}", "{}"} {
		if _, err := New(client, Options{KeyPrefix: p}); err == nil {
			t.Errorf("New with key prefix %q succeeded", p)
		}
	}
	st, err := New(client, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	want := Options{
		KeyPrefix:    "mcpbridge:",
		MaxSessions:  100000,
		MaxPending:   1024,
		ReplayWindow: 64,
		Retention:    time.Hour,
	}
	got := st.opts
	got.Logger = nil
	if got != want {
		t.Errorf("defaults: %+v, want %+v", got, want)
	}
	if st.hashKey("abc") != "mcpbridge:{abc}" || st.mailboxKey("abc") != "mcpbridge:{abc}:m" ||
		st.requestsKey("abc") != "mcpbridge:{abc}:r" || st.expiry != "mcpbridge:expiry" ||
		st.adoptKey("fp") != "mcpbridge:adopt:fp" || st.channel != "mcpbridge:wake" {
		t.Errorf("key layout changed: %s %s %s %s %s %s", st.hashKey("abc"), st.mailboxKey("abc"),
			st.requestsKey("abc"), st.expiry, st.adoptKey("fp"), st.channel)
	}
	st2, err := New(client, Options{ReplayWindow: -3})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if st2.opts.ReplayWindow != 0 {
		t.Errorf("ReplayWindow -3 became %d, want 0", st2.opts.ReplayWindow)
	}
}

func TestMaxSessions(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{MaxSessions: 3})
	for i := range 3 {
		create(t, st, "s"+strconv.Itoa(i))
	}
	if err := st.Create(ctx, session("s3")); !errors.Is(err, sessionstore.ErrTooManySessions) {
		t.Fatalf("fourth Create: %v, want ErrTooManySessions", err)
	}
	// An id that exists is reported as such even when the store is full.
	if err := st.Create(ctx, session("s0")); !errors.Is(err, sessionstore.ErrExists) {
		t.Errorf("Create(existing id) on a full store: %v, want ErrExists", err)
	}
	if ok, err := st.Delete(ctx, "s1"); !ok || err != nil {
		t.Fatalf("Delete: (%v, %v)", ok, err)
	}
	if err := st.Create(ctx, session("s3")); err != nil {
		t.Errorf("Create after a Delete made room: %v", err)
	}
	if err := st.Create(ctx, session("s4")); !errors.Is(err, sessionstore.ErrTooManySessions) {
		t.Errorf("Create on a full store again: %v, want ErrTooManySessions", err)
	}
}

func TestDefaultMaxPending(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{})
	create(t, st, "a")
	appendN(t, st, "a", 1024)
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{}`)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("Append #1025 with the default MaxPending: %v, want ErrMailboxFull", err)
	}
	// The default keeps 64 delivered messages.
	if err := st.Ack(ctx, "a", "", 1000); err != nil {
		t.Fatal(err)
	}
	if got := seqs(t, st, "a", 0); len(got) != 64+24 || got[0] != 1000-64+1 {
		t.Errorf("after Ack(1000) with the default ReplayWindow, Read(0) returned %d entries from %v", len(got), got[:min(1, len(got))])
	}
}

func TestMaxPending(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{MaxPending: 2, ReplayWindow: 10})
	create(t, st, "a")
	appendN(t, st, "a", 2)
	if seq, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{}`)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Fatalf("third Append with MaxPending 2: (%d, %v), want ErrMailboxFull", seq, err)
	}
	// Delivered messages kept for replay do not count.
	if err := st.Ack(ctx, "a", "", 1); err != nil {
		t.Fatal(err)
	}
	if seq, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{}`)}); err != nil || seq != 3 {
		t.Fatalf("Append after Ack(1): (%d, %v), want (3, nil)", seq, err)
	}
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{}`)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("Append beyond MaxPending again: %v, want ErrMailboxFull", err)
	}
	// FinishRequest appends too, and is refused the same way, keeping the
	// request.
	if err := st.TrackRequest(ctx, "a", "k", sessionstore.Request{ID: []byte("1"), Replica: "r"}); err != nil {
		t.Fatal(err)
	}
	if done, err := st.FinishRequest(ctx, "a", "k", sessionstore.Message{Data: []byte(`{}`)}); done || !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("FinishRequest into a full mailbox: (%v, %v), want ErrMailboxFull", done, err)
	}
	if reqs, err := st.ListRequests(ctx, "a"); err != nil || len(reqs) != 1 {
		t.Errorf("requests after a refused FinishRequest: (%v, %v), want the request kept", reqs, err)
	}
	if got := fmt.Sprint(seqs(t, st, "a", 0)); got != "[1 2 3]" {
		t.Errorf("Read(0) = %s, want [1 2 3] (1 kept for replay)", got)
	}
}

func TestReplayWindow(t *testing.T) {
	ctx := context.Background()
	client := newSingleClient(t)
	cases := []struct {
		window int
		ack    uint64
		want   string
	}{
		{-1, 8, "[9 10]"},
		{2, 8, "[7 8 9 10]"},
		{2, 10, "[9 10]"},
		{8, 8, "[1 2 3 4 5 6 7 8 9 10]"},
		{100, 10, "[1 2 3 4 5 6 7 8 9 10]"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("window=%d,ack=%d", c.window, c.ack), func(t *testing.T) {
			st := newStore(t, client, Options{ReplayWindow: c.window})
			create(t, st, "a")
			appendN(t, st, "a", 10)
			if err := st.Ack(ctx, "a", "", c.ack); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(seqs(t, st, "a", 0)); got != c.want {
				t.Errorf("Read(0) = %s, want %s", got, c.want)
			}
			if n, err := client.XLen(ctx, st.mailboxKey("a")).Result(); err != nil || fmt.Sprint(seqRange(10-uint64(n)+1, 10)) != c.want {
				t.Errorf("XLEN = %d (%v): the stream is not trimmed to what Read returns", n, err)
			}
		})
	}

	// Trimming carries on as more is delivered.
	st := newStore(t, client, Options{ReplayWindow: 2})
	create(t, st, "a")
	for round := range 5 {
		appendN(t, st, "a", 3)
		last := uint64(3 * (round + 1))
		if err := st.Ack(ctx, "a", "", last); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(seqs(t, st, "a", 0)), fmt.Sprint(seqRange(last-1, last)); got != want {
			t.Errorf("round %d: Read(0) = %s, want %s", round, got, want)
		}
	}
}

func TestNonPositiveLimits(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{})
	create(t, st, "a")
	appendN(t, st, "a", 3)
	s := session("old")
	s.ExpiresAt = time.Now().Add(-time.Minute)
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{0, -1} {
		if msgs, err := st.Read(ctx, "a", 0, limit); err != nil || len(msgs) != 0 {
			t.Errorf("Read(0, %d) = (%d messages, %v), want none", limit, len(msgs), err)
		}
		if got, err := st.Expired(ctx, time.Now(), limit); err != nil || len(got) != 0 {
			t.Errorf("Expired(limit %d) = (%d sessions, %v), want none", limit, len(got), err)
		}
	}
	if _, err := st.Read(ctx, "missing", 0, 0); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("Read(missing, limit 0): %v, want ErrNotFound", err)
	}
	if msgs, err := st.Read(ctx, "a", ^uint64(0), 10); err != nil || len(msgs) != 0 {
		t.Errorf("Read(after max uint64) = (%v, %v), want none", msgs, err)
	}
}

// TestUnsubscribeForgets: ending the only subscription of a session drops
// the session from the local dispatch table (the contract's Unsubscribe test
// covers the behaviour).
func TestUnsubscribeForgets(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{})
	create(t, st, "a")
	_, cancel, err := st.Subscribe(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	st.mu.Lock()
	n := len(st.subs)
	st.mu.Unlock()
	if n != 0 {
		t.Errorf("%d sessions still have local subscribers after the only one ended", n)
	}
}

// TestKeyTTLs: every key the store writes has a TTL, the session's keys
// ExpiresAt - now + Retention, and the indexes at least as long.
func TestKeyTTLs(t *testing.T) {
	ctx := context.Background()
	client := newSingleClient(t)
	const retention = 30 * time.Minute
	st := newStore(t, client, Options{Retention: retention})
	pttl := func(key string) time.Duration {
		t.Helper()
		d, err := client.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", key, err)
		}
		return d
	}
	near := func(what string, got, want time.Duration) {
		t.Helper()
		if got > want || got < want-10*time.Second {
			t.Errorf("%s: PTTL %v, want about %v", what, got, want)
		}
	}
	atLeast := func(what string, got, want time.Duration) {
		t.Helper()
		if got < want-10*time.Second {
			t.Errorf("%s: PTTL %v, want at least %v", what, got, want)
		}
	}

	s := session("a")
	s.ExpiresAt = time.Now().Add(10 * time.Minute)
	if err := st.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	near("session hash after Create", pttl(st.hashKey("a")), 40*time.Minute)
	atLeast("expiry index after Create", pttl(st.expiry), 40*time.Minute)
	atLeast("adoption index after Create", pttl(st.adoptKey("fp")), 40*time.Minute)

	appendN(t, st, "a", 2)
	near("mailbox after Append", pttl(st.mailboxKey("a")), 40*time.Minute)
	if err := st.TrackRequest(ctx, "a", "k", sessionstore.Request{ID: []byte("1"), Replica: "r"}); err != nil {
		t.Fatal(err)
	}
	near("requests after TrackRequest", pttl(st.requestsKey("a")), 40*time.Minute)

	if _, err := st.Update(ctx, "a", func(s *sessionstore.Session) error {
		s.ExpiresAt = time.Now().Add(2 * time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{st.hashKey("a"), st.mailboxKey("a"), st.requestsKey("a")} {
		near(key+" after Update", pttl(key), 2*time.Hour+retention)
	}
	atLeast("expiry index after Update", pttl(st.expiry), 2*time.Hour+retention)
	atLeast("adoption index after Update", pttl(st.adoptKey("fp")), 2*time.Hour+retention)
	// Shortening ExpiresAt shortens the session's keys; the indexes keep the
	// longest TTL of the sessions they list.
	if _, err := st.Update(ctx, "a", func(s *sessionstore.Session) error {
		s.ExpiresAt = time.Now().Add(time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	near("session hash after a shorter Update", pttl(st.hashKey("a")), time.Minute+retention)
	appendN(t, st, "a", 1)
	near("mailbox after Append", pttl(st.mailboxKey("a")), time.Minute+retention)

	// A session that expired (or never set ExpiresAt) still lives for
	// Retention, so that a janitor finds it.
	old := session("old")
	old.ExpiresAt = time.Time{}
	if err := st.Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	near("session without ExpiresAt", pttl(st.hashKey("old")), retention)
	if err := st.Heartbeat(ctx, "replica-1", time.Minute); err != nil {
		t.Fatal(err)
	}

	// And so every key of the store has one.
	keys, err := client.Keys(ctx, st.prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 7 {
		t.Errorf("only %d keys: %v", len(keys), keys)
	}
	for _, k := range keys {
		if d := pttl(k); d <= 0 {
			t.Errorf("key %s has no TTL (PTTL %v)", k, d)
		}
	}
}

// TestKeySlots: the keys of one session share a Cluster slot, whatever the
// id looks like.
func TestKeySlots(t *testing.T) {
	ctx := context.Background()
	client := newClusterClient(t)
	st := newStore(t, client, Options{})
	slots := map[int64]bool{}
	for i, id := range []string{"plain", "a}b", "x{y", "{z}", "with:colons", "ü-ñ"} {
		var got []int64
		for _, key := range []string{st.hashKey(id), st.mailboxKey(id), st.requestsKey(id)} {
			slot, err := client.ClusterKeySlot(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, slot)
		}
		if got[0] != got[1] || got[0] != got[2] {
			t.Errorf("id %q: keys in slots %v", id, got)
		}
		slots[got[0]] = true
		// Every operation works on it (a CROSSSLOT error would show here).
		if err := st.Create(ctx, session(id)); err != nil {
			t.Fatalf("Create(%q): %v", id, err)
		}
		appendN(t, st, id, 2)
		if err := st.TrackRequest(ctx, id, "k", sessionstore.Request{ID: []byte("1")}); err != nil {
			t.Fatalf("TrackRequest(%q): %v", id, err)
		}
		if done, err := st.FinishRequest(ctx, id, "k", sessionstore.Message{Data: []byte("{}")}); !done || err != nil {
			t.Fatalf("FinishRequest(%q): (%v, %v)", id, done, err)
		}
		if err := st.Ack(ctx, id, "", 2); err != nil {
			t.Fatalf("Ack(%q): %v", id, err)
		}
		if _, err := st.Update(ctx, id, func(s *sessionstore.Session) error { s.Owner = "o" + strconv.Itoa(i); return nil }); err != nil {
			t.Fatalf("Update(%q): %v", id, err)
		}
		if ok, err := st.Delete(ctx, id); !ok || err != nil {
			t.Fatalf("Delete(%q): (%v, %v)", id, ok, err)
		}
	}
	if len(slots) < 2 {
		t.Errorf("all sessions in one slot (%v): the hash tag does not spread them", slots)
	}
}

// TestFixedConnections: 500 subscribed sessions use no more connections than
// one: the pool (one connection, as the calls here are sequential) and the
// one Pub/Sub connection.
func TestFixedConnections(t *testing.T) {
	ctx := context.Background()
	name := "conncount-" + randomPrefix()
	name = strings.TrimSuffix(name, ":")
	client := goredis.NewClient(&goredis.Options{Addr: singleAddr(t), ClientName: name})
	t.Cleanup(func() { client.Close() })
	admin := newSingleClient(t)
	st := newStore(t, client, Options{MaxSessions: 1000})

	count := func() (total, pubsub int) {
		t.Helper()
		list, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(list, "\n") {
			if !strings.Contains(line, " name="+name+" ") {
				continue
			}
			total++
			if strings.Contains(line, " sub=1 ") {
				pubsub++
			}
		}
		return total, pubsub
	}

	const n = 500
	var chans []<-chan struct{}
	for i := range n {
		id := "s" + strconv.Itoa(i)
		create(t, st, id)
		ch, cancel, err := st.Subscribe(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cancel)
		chans = append(chans, ch)
		if i == 0 {
			total, pubsub := count()
			if pubsub != 1 || total > 3 {
				t.Fatalf("one subscribed session: %d connections, %d subscribed; want 1 subscribed and at most 3 in all", total, pubsub)
			}
		}
	}
	total, pubsub := count()
	if pubsub != 1 || total > 3 {
		t.Errorf("%d subscribed sessions: %d connections, %d subscribed; want 1 subscribed and at most 3 in all", n, total, pubsub)
	}
	stats := client.PoolStats()
	if stats.TotalConns > 2 {
		t.Errorf("pool holds %d connections after sequential calls", stats.TotalConns)
	}
	// Every subscription works, over that one connection.
	for _, ch := range chans {
		drain(ch)
	}
	for _, i := range []int{0, 123, 499} {
		appendN(t, st, "s"+strconv.Itoa(i), 1)
		awaitWake(t, chans[i], 5*time.Second, "session "+strconv.Itoa(i))
	}
	if total2, _ := count(); total2 != total {
		t.Errorf("connections went from %d to %d while appending", total, total2)
	}
}

// TestRestart: while Redis is down every method fails promptly with
// ErrUnavailable; when it is back (same port, data kept by its AOF), the
// store works again, subscribers registered before are woken by the
// reconnection, and new wake-ups arrive.
func TestRestart(t *testing.T) {
	requireRedis(t)
	srv := testenv.MustRedis(t, testenv.RedisOptions{Persist: true})
	client := goredis.NewClient(&goredis.Options{
		Addr:         srv.Addr(),
		DialTimeout:  200 * time.Millisecond,
		ReadTimeout:  500 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond,
		PoolTimeout:  500 * time.Millisecond,
		MaxRetries:   1,
		// go-redis dials 5 times by default, 100ms apart.
		DialerRetries: 1,
	})
	t.Cleanup(func() { client.Close() })
	st := newStore(t, client, Options{})
	ctx := context.Background()
	create(t, st, "a")
	create(t, st, "b")
	appendN(t, st, "a", 1)
	before, cancelBefore, err := st.Subscribe(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer cancelBefore()

	if err := srv.Stop(stopGrace); err != nil {
		t.Fatal(err)
	}
	drain(before)

	now := time.Now()
	calls := map[string]func(ctx context.Context) error{
		"Ping":   st.Ping,
		"Create": func(ctx context.Context) error { return st.Create(ctx, session("c")) },
		"Get":    func(ctx context.Context) error { _, err := st.Get(ctx, "a"); return err },
		"Update": func(ctx context.Context) error {
			_, err := st.Update(ctx, "a", func(*sessionstore.Session) error { return nil })
			return err
		},
		"Delete":  func(ctx context.Context) error { _, err := st.Delete(ctx, "b"); return err },
		"Expired": func(ctx context.Context) error { _, err := st.Expired(ctx, now, 10); return err },
		"Adoptable": func(ctx context.Context) error {
			_, err := st.Adoptable(ctx, "fp", "u", "v", now)
			return err
		},
		"Append": func(ctx context.Context) error {
			_, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte("{}")})
			return err
		},
		"Read":      func(ctx context.Context) error { _, err := st.Read(ctx, "a", 0, 10); return err },
		"Ack":       func(ctx context.Context) error { return st.Ack(ctx, "a", "", 1) },
		"Subscribe": func(ctx context.Context) error { _, _, err := st.Subscribe(ctx, "a"); return err },
		"TrackRequest": func(ctx context.Context) error {
			return st.TrackRequest(ctx, "a", "k", sessionstore.Request{ID: []byte("1")})
		},
		"SetRequestEventID": func(ctx context.Context) error { return st.SetRequestEventID(ctx, "a", "k", "e") },
		"FinishRequest": func(ctx context.Context) error {
			_, err := st.FinishRequest(ctx, "a", "k", sessionstore.Message{Data: []byte("{}")})
			return err
		},
		"ClaimRequest": func(ctx context.Context) error { _, err := st.ClaimRequest(ctx, "a", "k"); return err },
		"ListRequests": func(ctx context.Context) error { _, err := st.ListRequests(ctx, "a"); return err },
		"Heartbeat":    func(ctx context.Context) error { return st.Heartbeat(ctx, "r", time.Minute) },
		"ReplicaAlive": func(ctx context.Context) error { _, err := st.ReplicaAlive(ctx, "r"); return err },
	}
	for name, call := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		err := call(ctx)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, sessionstore.ErrUnavailable) {
			t.Errorf("%s with Redis down: %v, want ErrUnavailable", name, err)
		}
		if took > 3*time.Second {
			t.Errorf("%s with Redis down took %v", name, took)
		}
	}

	srv.MustRestart(t)
	awaitWake(t, before, 15*time.Second, "subscriber registered before the restart, after the reconnection")

	// Back to work (the pool's connections died with the server: allow a
	// bounded number of attempts for them to be replaced).
	deadline := time.Now().Add(10 * time.Second)
	for st.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("store still unavailable 10s after the restart")
		}
		time.Sleep(50 * time.Millisecond) // polling a reconnecting pool
	}
	got, err := st.Get(ctx, "a")
	if err != nil {
		t.Fatalf("Get after the restart: %v", err)
	}
	if got.Upstream != "http://upstream.example/mcp" {
		t.Errorf("session after the restart: %+v", got)
	}
	after, cancelAfter, err := st.Subscribe(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer cancelAfter()
	drain(before)
	seq, err := st.Append(ctx, "b", sessionstore.Message{Data: []byte(`{"after":"restart"}`)})
	if err != nil || seq != 1 {
		t.Fatalf("Append after the restart: (%d, %v)", seq, err)
	}
	awaitWake(t, after, 5*time.Second, "Append after the restart")
	seq, err = st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{"after":"restart"}`)})
	if err != nil || seq != 2 {
		t.Fatalf("Append to the session of before the restart: (%d, %v), want seq 2", seq, err)
	}
	awaitWake(t, before, 5*time.Second, "Append after the restart, subscriber of before")
	msgs, err := st.Read(ctx, "a", 0, 10)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("Read after the restart: (%v, %v), want both messages", msgs, err)
	}
	if err := st.Ack(ctx, "a", "", 2); err != nil {
		t.Fatal(err)
	}
}

// TestCloseEndsGoroutines: the store's goroutines end on Close.
func TestCloseEndsGoroutines(t *testing.T) {
	addr := singleAddr(t) // the server is not the store's
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	client := goredis.NewClient(&goredis.Options{Addr: addr})
	defer client.Close()
	st, err := New(client, Options{KeyPrefix: randomPrefix()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	create(t, st, "a")
	ch, cancel, err := st.Subscribe(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	appendN(t, st, "a", 1)
	awaitWake(t, ch, 5*time.Second, "Append")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := st.Subscribe(ctx, "a"); !errors.Is(err, sessionstore.ErrUnavailable) {
		t.Errorf("Subscribe after Close: %v, want ErrUnavailable", err)
	}
	// The client is not the store's: it still works.
	if err := client.Ping(ctx).Err(); err != nil {
		t.Errorf("client after the store's Close: %v", err)
	}
}

// TestIndexesFollowConcurrentUpdates: however concurrent Updates interleave,
// the expiry index ends with the score of the last ExpiresAt stored, so that
// Expired finds the session when it expires, not later.
func TestIndexesFollowConcurrentUpdates(t *testing.T) {
	for _, kind := range []string{"Single", "Cluster"} {
		t.Run(kind, func(t *testing.T) {
			var client goredis.UniversalClient
			if kind == "Single" {
				client = newSingleClient(t)
			} else {
				client = newClusterClient(t)
			}
			ctx := context.Background()
			st := newStore(t, client, Options{})
			create(t, st, "a")
			base := time.Now().Add(time.Hour)
			var wg sync.WaitGroup
			for w := range 10 {
				wg.Go(func() {
					for i := range 10 {
						exp := base.Add(time.Duration(rand.IntN(100000)) * time.Millisecond)
						fp := "fp-" + strconv.Itoa((w+i)%3)
						if _, err := st.Update(ctx, "a", func(s *sessionstore.Session) error {
							s.ExpiresAt, s.Fingerprint = exp, fp
							return nil
						}); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			got, err := st.Get(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			sc, err := client.ZScore(ctx, st.expiry, "a").Result()
			if err != nil || int64(sc) != got.ExpiresAt.UnixMilli() {
				t.Errorf("expiry index score %v (%v), record ExpiresAt %d", int64(sc), err, got.ExpiresAt.UnixMilli())
			}
			sc, err = client.ZScore(ctx, st.adoptKey(got.Fingerprint), "a").Result()
			if err != nil || int64(sc) != got.ExpiresAt.UnixMilli() {
				t.Errorf("adoption index score %v (%v), record ExpiresAt %d", int64(sc), err, got.ExpiresAt.UnixMilli())
			}
			for i := range 3 {
				if fp := "fp-" + strconv.Itoa(i); fp != got.Fingerprint {
					if _, err := client.ZScore(ctx, st.adoptKey(fp), "a").Result(); !errors.Is(err, goredis.Nil) {
						t.Errorf("session still in the adoption index of %s (%v); its fingerprint is %s", fp, err, got.Fingerprint)
					}
				}
			}
		})
	}
}

// TestExpiredRepairsIndex: Expired drops entries of sessions that are gone
// and corrects scores that are out of date.
func TestExpiredRepairsIndex(t *testing.T) {
	ctx := context.Background()
	client := newSingleClient(t)
	st := newStore(t, client, Options{})
	now := time.Now()
	live := session("live")
	live.ExpiresAt = now.Add(time.Hour)
	if err := st.Create(ctx, live); err != nil {
		t.Fatal(err)
	}
	dead := session("dead")
	dead.ExpiresAt = now.Add(-time.Minute)
	if err := st.Create(ctx, dead); err != nil {
		t.Fatal(err)
	}
	// An outdated score, and an entry whose session vanished (its keys
	// expired, say).
	stale := float64(now.Add(-time.Hour).UnixMilli())
	client.ZAdd(ctx, st.expiry, goredis.Z{Score: stale, Member: "live"}, goredis.Z{Score: stale, Member: "ghost"})

	got, err := st.Expired(ctx, now, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "dead" {
		t.Fatalf("Expired returned %d sessions (%v), want only dead", len(got), got)
	}
	if sc, err := client.ZScore(ctx, st.expiry, "live").Result(); err != nil || int64(sc) != live.ExpiresAt.UnixMilli() {
		t.Errorf("score of live after Expired: %v (%v), want %d", int64(sc), err, live.ExpiresAt.UnixMilli())
	}
	if _, err := client.ZScore(ctx, st.expiry, "ghost").Result(); !errors.Is(err, goredis.Nil) {
		t.Errorf("ghost still in the expiry index (%v)", err)
	}
	// The limit counts sessions returned, not entries skipped.
	for i := range 5 {
		client.ZAdd(ctx, st.expiry, goredis.Z{Score: stale - 1, Member: "ghost" + strconv.Itoa(i)})
	}
	if got, err := st.Expired(ctx, now, 1); err != nil || len(got) != 1 || got[0].ID != "dead" {
		t.Errorf("Expired(limit 1) behind 5 stale entries: (%v, %v), want dead", got, err)
	}
	// Deleting removes the entries.
	if _, err := st.Delete(ctx, "dead"); err != nil {
		t.Fatal(err)
	}
	if n, err := client.ZCard(ctx, st.expiry).Result(); err != nil || n != 1 {
		t.Errorf("expiry index holds %d entries (%v), want only live", n, err)
	}
	if n, err := client.ZCard(ctx, st.adoptKey("fp")).Result(); err != nil || n != 1 {
		t.Errorf("adoption index holds %d entries (%v), want only live", n, err)
	}
}

// TestAdoptableSkipsStale: Adoptable ignores (and drops) entries of sessions
// that are gone, and looks beyond a page of live-owned sessions.
func TestAdoptableSkipsStale(t *testing.T) {
	ctx := context.Background()
	client := newSingleClient(t)
	st := newStore(t, client, Options{MaxSessions: 1000})
	now := time.Now().UTC().Truncate(time.Millisecond)
	mk := func(id string, exp time.Duration, owned bool) {
		s := session(id)
		s.ProtocolVersion, s.Initialized, s.ExpiresAt = "v1", true, now.Add(exp)
		if owned {
			s.Owner, s.OwnerLeaseUntil = "o", now.Add(time.Hour)
		}
		if err := st.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Heartbeat(ctx, "o", time.Hour); err != nil {
		t.Fatal(err)
	}
	mk("free", time.Minute, false)
	for i := range 2*adoptPage + 3 {
		mk("owned"+strconv.Itoa(i), time.Hour+time.Duration(i)*time.Second, true)
	}
	mk("gone", 2*time.Hour, false)
	client.Del(ctx, st.hashKey("gone"))
	got, err := st.Adoptable(ctx, "fp", "http://upstream.example/mcp", "v1", now)
	if err != nil || got.ID != "free" {
		t.Fatalf("Adoptable: (%v, %v), want free", got, err)
	}
	if _, err := client.ZScore(ctx, st.adoptKey("fp"), "gone").Result(); !errors.Is(err, goredis.Nil) {
		t.Errorf("entry of a vanished session still in the adoption index (%v)", err)
	}
}

// TestUpdateNotContendedByMailbox: Appends and Acks do not make Update
// retry, so a busy mailbox cannot starve it.
func TestUpdateNotContendedByMailbox(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{MaxPending: 1 << 20})
	create(t, st, "a")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			seq, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte("{}")})
			if err != nil {
				t.Error(err)
				return
			}
			_ = st.Ack(ctx, "a", "", seq)
		}
	})
	calls := 0
	for range 50 {
		if _, err := st.Update(ctx, "a", func(s *sessionstore.Session) error {
			calls++
			s.ExpiresAt = s.ExpiresAt.Add(time.Millisecond)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if calls != 50 {
		t.Errorf("50 Updates ran fn %d times alongside Appends and Acks, want 50", calls)
	}
}

// TestRequestBytes: request ids and fields come back byte for byte.
func TestRequestBytes(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{})
	create(t, st, "a")
	r := sessionstore.Request{
		ID:                []byte(`"<a&b> \u00fc ü"`),
		Replica:           "replica <1> & co",
		UpstreamSessionID: "up&<>",
		LastEventID:       "ev-1",
	}
	if err := st.TrackRequest(ctx, "a", "key:with:colons", r); err != nil {
		t.Fatal(err)
	}
	got, err := st.ListRequests(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	g, ok := got["key:with:colons"]
	if !ok || string(g.ID) != string(r.ID) || g.Replica != r.Replica || g.UpstreamSessionID != r.UpstreamSessionID || g.LastEventID != r.LastEventID {
		t.Errorf("request read back as %+v (id %s), want %+v (id %s)", g, g.ID, r, r.ID)
	}
	// A deleted session takes its requests along.
	if _, err := st.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n, err := st.client.Exists(ctx, st.requestsKey("a")).Result(); err != nil || n != 0 {
		t.Errorf("requests key after Delete: exists=%d (%v)", n, err)
	}
	if _, err := st.ClaimRequest(ctx, "a", "key:with:colons"); !errors.Is(err, sessionstore.ErrNotFound) {
		t.Errorf("ClaimRequest on a deleted session: %v, want ErrNotFound", err)
	}
}

func BenchmarkAppendRead(b *testing.B) {
	storetest.BenchmarkAppendRead(b, newStore(b, newSingleClient(b), Options{ReplayWindow: 64}))
}

func BenchmarkAppendReadParallel(b *testing.B) {
	storetest.BenchmarkAppendReadParallel(b, newStore(b, newSingleClient(b), Options{ReplayWindow: 64}))
}

// TestSwapClient: a configuration reload that changes how to reach Redis
// swaps the store's client in place: subscribers keep being woken (through
// the new client's subscription), operations go through the new client, and
// the old client may be closed.
func TestSwapClient(t *testing.T) {
	ctx := context.Background()
	old := goredis.NewClient(&goredis.Options{Addr: singleAddr(t)})
	st := newStore(t, old, Options{})
	create(t, st, "a")
	wake, cancel, err := st.Subscribe(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	<-st.ready // the first subscription's wake-up is in, or about to be
	select {
	case <-wake:
	case <-time.After(time.Second):
	}

	fresh := newSingleClient(t)
	if got := st.SwapClient(fresh); got != old {
		t.Fatalf("SwapClient returned %v, want the previous client", got)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	// The new subscription's confirmation wakes every subscriber once.
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up once the new client subscribed")
	}
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("Append after the swap: %v", err)
	}
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up for an append after the swap")
	}
	if msgs, err := st.Read(ctx, "a", 0, 10); err != nil || len(msgs) != 1 {
		t.Errorf("Read after the swap: %v, %v", msgs, err)
	}
}

// TestSetLimits: a lowered mailbox bound applies to the next append.
func TestSetLimits(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, newSingleClient(t), Options{MaxPending: 8})
	create(t, st, "a")
	st.SetLimits(sessionstore.Limits{MaxPending: 1})
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`1`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`2`)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("second append with max_pending lowered to 1: %v, want ErrMailboxFull", err)
	}
}

// TestClusterFailover: when the master holding a session's slot dies
// (SIGKILL) and the Cluster promotes its replica, the store serves the
// session again within a few seconds of the promotion, not when go-redis
// would next reload its slot map on its own (a minute).
func TestClusterFailover(t *testing.T) {
	requireRedis(t)
	cl := testenv.MustCluster(t, testenv.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second})
	addrs := cl.Addrs()
	client := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { client.Close() })
	st := newStore(t, client, Options{})
	ctx := context.Background()
	create(t, st, "failover")

	master, err := client.MasterForKey(ctx, st.hashKey("failover"))
	if err != nil {
		t.Fatal(err)
	}
	masterAddr := master.Options().Addr
	victim := cl.Node(masterAddr)
	if victim == nil {
		t.Fatalf("no node at %s", masterAddr)
	}
	// Its replica, in sync with what the master held after the session was
	// made (replication is asynchronous) before the master dies.
	info, err := master.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "master_repl_offset:")
	rest, _, _ = strings.Cut(rest, "\r\n")
	target, _ := strconv.ParseInt(rest, 10, 64)
	var replica *testenv.Redis
	waitFor(t, "the master's replica to be in sync", 20*time.Second, func() bool {
		for _, s := range cl.Nodes() {
			c := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
			info, err := c.Info(ctx, "replication").Result()
			c.Close()
			_, rest, _ := strings.Cut(info, "slave_repl_offset:")
			rest, _, _ = strings.Cut(rest, "\r\n")
			offset, _ := strconv.ParseInt(rest, 10, 64)
			if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+strconv.Itoa(victim.Port())+"\r\n") &&
				strings.Contains(info, "master_link_status:up") && strings.Contains(info, "master_sync_in_progress:0") && offset >= target {
				replica = s
				return true
			}
		}
		return false
	})

	victim.Kill()
	killed := time.Now()
	var promoted time.Time
	waitFor(t, "the replica to be promoted", 30*time.Second, func() bool {
		c := goredis.NewClient(&goredis.Options{Addr: replica.Addr()})
		defer c.Close()
		info, err := c.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "role:master") {
			promoted = time.Now()
			return true
		}
		return false
	})
	waitFor(t, "the session to be served again", 20*time.Second, func() bool {
		opCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := st.Append(opCtx, "failover", sessionstore.Message{Data: []byte(`{"after":"failover"}`)})
		return err == nil
	})
	served := time.Now()
	t.Logf("master killed; its replica promoted after %v; session served %v after that",
		promoted.Sub(killed).Round(10*time.Millisecond), served.Sub(promoted).Round(10*time.Millisecond))
	if lag := served.Sub(promoted); lag > 5*time.Second {
		t.Errorf("the session was served again %v after the promotion, want within a few seconds", lag)
	}
}

// waitFor polls cond every 50 ms until it holds, failing after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition of other processes
	}
}

// TestSentinelFailover: a Sentinel set whose master dies (SIGKILL) promotes
// its replica, and the store, given the sentinels and the master name,
// serves the session again.
func TestSentinelFailover(t *testing.T) {
	requireRedis(t)
	dir := t.TempDir()
	master := testenv.MustRedis(t, testenv.RedisOptions{Dir: dir})
	replica := testenv.MustRedis(t, testenv.RedisOptions{Dir: dir, Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port())}})
	var sentinels []string
	for range 3 {
		s := testenv.MustSentinel(t, testenv.SentinelOptions{Dir: dir, MasterName: "bridge", MasterAddr: master.Addr(),
			Quorum: 2, DownAfter: time.Second, FailoverTimeout: 5 * time.Second})
		sentinels = append(sentinels, s.Addr())
	}
	client := goredis.NewFailoverClient(&goredis.FailoverOptions{MasterName: "bridge", SentinelAddrs: sentinels,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { client.Close() })
	st := newStore(t, client, Options{})
	ctx := context.Background()
	waitFor(t, "the replica to be in sync", 20*time.Second, func() bool {
		c := goredis.NewClient(&goredis.Options{Addr: replica.Addr()})
		defer c.Close()
		info, err := c.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	create(t, st, "sentinel")
	// WAIT: the session reached the replica before its master dies.
	if err := client.Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}

	master.Kill()
	killed := time.Now()
	waitFor(t, "the session to be served by the promoted replica", 30*time.Second, func() bool {
		opCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := st.Append(opCtx, "sentinel", sessionstore.Message{Data: []byte(`{"after":"failover"}`)})
		return err == nil
	})
	t.Logf("master killed; the session was served again %v later", time.Since(killed).Round(10*time.Millisecond))
	c := goredis.NewClient(&goredis.Options{Addr: replica.Addr()})
	defer c.Close()
	if info, err := c.Info(ctx, "replication").Result(); err != nil || !strings.Contains(info, "role:master") {
		t.Errorf("the replica was not promoted (%v): %s", err, info)
	}
}
