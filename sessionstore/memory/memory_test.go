package memory_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/memory"
	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestContract(t *testing.T) {
	for _, window := range []int{-1, 3, 0} {
		t.Run("ReplayWindow="+strconv.Itoa(window), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) sessionstore.Store {
				return memory.New(memory.Options{
					MaxSessions:          storetest.MinSessions,
					MaxPending:           storetest.MaxPending,
					ReplayWindow:         window,
					MaxSessionsPerCaller: storetest.MaxSessionsPerCaller,
				})
			})
		})
	}
}

// TestLimits: the contract of sessionstore.Limits (max sessions, the mailbox
// bound, SetLimits).
func TestLimits(t *testing.T) {
	storetest.RunLimits(t, func(t *testing.T, l sessionstore.Limits) storetest.LimitedStore {
		return memory.New(memory.Options{
			MaxSessions:          l.MaxSessions,
			MaxPending:           l.MaxPending,
			MaxSessionsPerCaller: l.MaxSessionsPerCaller,
			ReplayWindow:         10,
		})
	})
}

func session(id string) *sessionstore.Session {
	now := time.Now()
	return &sessionstore.Session{
		ID:          id,
		Upstream:    "http://upstream.example/mcp",
		Fingerprint: "fp",
		CreatedAt:   now,
		ExpiresAt:   now.Add(time.Minute),
	}
}

func create(t testing.TB, st *memory.Store, id string) {
	t.Helper()
	if err := st.Create(context.Background(), session(id)); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
}

func appendN(t testing.TB, st *memory.Store, id string, n int) {
	t.Helper()
	for i := range n {
		if _, err := st.Append(context.Background(), id, sessionstore.Message{Data: []byte(`{"n":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatalf("Append #%d: %v", i+1, err)
		}
	}
}

func seqs(t *testing.T, st *memory.Store, id string, after uint64) []uint64 {
	t.Helper()
	msgs, err := st.Read(context.Background(), id, after, 1000)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	out := []uint64{}
	for _, m := range msgs {
		out = append(out, m.Seq)
	}
	return out
}

func TestDefaults(t *testing.T) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	create(t, st, "a")
	appendN(t, st, "a", 1024)
	if _, err := st.Append(ctx, "a", sessionstore.Message{Data: []byte(`{}`)}); !errors.Is(err, sessionstore.ErrMailboxFull) {
		t.Errorf("Append #1025 with the default MaxPending: %v, want ErrMailboxFull", err)
	}
	// The default keeps the last 64 delivered messages for replay.
	if err := st.Ack(ctx, "a", "", 1000); err != nil {
		t.Fatal(err)
	}
	if got := seqs(t, st, "a", 0); len(got) != 88 || got[0] != 937 {
		t.Errorf("after Ack(1000) with the default ReplayWindow, Read(0) returned %d entries from %v", len(got), got[:min(1, len(got))])
	}
	// A negative ReplayWindow keeps none.
	st = memory.New(memory.Options{ReplayWindow: -5})
	create(t, st, "b")
	appendN(t, st, "b", 4)
	if err := st.Ack(ctx, "b", "", 2); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(seqs(t, st, "b", 0)); got != "[3 4]" {
		t.Errorf("ReplayWindow -5: Read(0) after Ack(2) = %s, want [3 4]", got)
	}
}

func TestReplayWindow(t *testing.T) {
	ctx := context.Background()
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
			st := memory.New(memory.Options{ReplayWindow: c.window})
			create(t, st, "a")
			appendN(t, st, "a", 10)
			if err := st.Ack(ctx, "a", "", c.ack); err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(seqs(t, st, "a", 0)); got != c.want {
				t.Errorf("Read(0) = %s, want %s", got, c.want)
			}
			// Reading after a position inside the window replays from there.
			if c.ack >= 2 {
				firstKept := c.ack + 1 - min(uint64(max(c.window, 0)), c.ack)
				want := fmt.Sprint(seqRange(max(c.ack-1, firstKept), 10))
				if got := fmt.Sprint(seqs(t, st, "a", c.ack-2)); got != want {
					t.Errorf("Read(%d) = %s, want %s", c.ack-2, got, want)
				}
			}
		})
	}

	// Trimming carries on as more is delivered.
	st := memory.New(memory.Options{ReplayWindow: 2})
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

func seqRange(from, to uint64) []uint64 {
	out := []uint64{}
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func BenchmarkAppendRead(b *testing.B) {
	storetest.BenchmarkAppendRead(b, memory.New(memory.Options{ReplayWindow: 64}))
}

func BenchmarkAppendReadParallel(b *testing.B) {
	storetest.BenchmarkAppendReadParallel(b, memory.New(memory.Options{MaxSessions: 1 << 16, ReplayWindow: 64}))
}
