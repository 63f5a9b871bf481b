package storetest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// BenchmarkAppendRead measures one message through a mailbox: Append, Read
// and Ack, as the bridge does per message. st must hold no session whose id
// starts with "bench-".
func BenchmarkAppendRead(b *testing.B, st sessionstore.Store) {
	ctx := context.Background()
	id := newID("bench")
	if err := st.Create(ctx, sampleSession(id)); err != nil {
		b.Fatal(err)
	}
	data := []byte(`{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello, world"}]}}`)
	var after uint64
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := st.Append(ctx, id, sessionstore.Message{Data: data}); err != nil {
			b.Fatal(err)
		}
		msgs, err := st.Read(ctx, id, after, 64)
		if err != nil || len(msgs) != 1 {
			b.Fatalf("Read: (%d, %v)", len(msgs), err)
		}
		after = msgs[0].Seq
		if err := st.Ack(ctx, id, "", after); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendReadParallel is BenchmarkAppendRead with one session per
// goroutine, all at once.
func BenchmarkAppendReadParallel(b *testing.B, st sessionstore.Store) {
	ctx := context.Background()
	data := []byte(`{"jsonrpc":"2.0","id":42,"result":{}}`)
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := newID("bench-" + strconv.FormatInt(next.Add(1), 10))
		if err := st.Create(ctx, sampleSession(id)); err != nil {
			b.Error(err)
			return
		}
		var after uint64
		for pb.Next() {
			if _, err := st.Append(ctx, id, sessionstore.Message{Data: data}); err != nil {
				b.Error(err)
				return
			}
			msgs, err := st.Read(ctx, id, after, 64)
			if err != nil || len(msgs) == 0 {
				b.Errorf("Read: (%d, %v)", len(msgs), err)
				return
			}
			after = msgs[len(msgs)-1].Seq
			_ = st.Ack(ctx, id, "", after)
		}
	})
}
