package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// readAll returns every event of stream and the error that ended it.
func readAll(t *testing.T, r io.Reader, maxSize int) ([]Event, error) {
	t.Helper()
	er := NewEventReader(r, maxSize)
	var out []Event
	for range 10000 {
		ev, err := er.Next()
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
	t.Fatal("EventReader never ended")
	return nil, nil
}

func TestEventReader(t *testing.T) {
	type ev struct {
		id    string
		hasID bool
		name  string
		data  string
		retry time.Duration
	}
	cases := []struct {
		name   string
		stream string
		want   []ev
	}{
		{"one event", "data: hello\n\n", []ev{{data: "hello"}}},
		{"two events", "data: a\n\ndata: b\n\n", []ev{{data: "a"}, {data: "b"}}},
		{"CRLF", "event: message\r\ndata: x\r\nid: 7\r\n\r\ndata: y\r\n\r\n",
			[]ev{{name: "message", data: "x", id: "7", hasID: true}, {data: "y"}}},
		{"mixed line endings", "data: a\r\ndata: b\n\r\ndata: c\n\n", []ev{{data: "a\nb"}, {data: "c"}}},
		{"multi-line data", "data: {\ndata:   \"a\": 1\ndata: }\n\n", []ev{{data: "{\n  \"a\": 1\n}"}}},
		{"empty data lines", "data\ndata\n\n", []ev{{data: "\n"}}},
		{"data without space", "data:x\n\n", []ev{{data: "x"}}},
		{"one space stripped", "data:  two spaces\n\n", []ev{{data: " two spaces"}}},
		{"tab kept", "data:\tx\n\n", []ev{{data: "\tx"}}},
		{"colon in value", "data: a: b:c\n\n", []ev{{data: "a: b:c"}}},
		{"comments skipped", ": ok\n\n: ping\n\ndata: x\n: inside an event\ndata: y\n\n:\n\n",
			[]ev{{data: "x\ny"}}},
		{"event name", "event: endpoint\ndata: /messages?sessionId=abc\n\n", []ev{{name: "endpoint", data: "/messages?sessionId=abc"}}},
		{"event name does not carry over", "event: a\ndata: 1\n\ndata: 2\n\n", []ev{{name: "a", data: "1"}, {data: "2"}}},
		{"event field without colon", "event\ndata: x\n\n", []ev{{data: "x"}}},
		{"last event field wins", "event: a\nevent: b\ndata: x\n\n", []ev{{name: "b", data: "x"}}},
		{"id", "id: 42\ndata: x\n\n", []ev{{id: "42", hasID: true, data: "x"}}},
		{"id with spaces", "id: a b \ndata: x\n\n", []ev{{id: "a b ", hasID: true, data: "x"}}},
		{"id with NUL ignored", "id: a\x00b\ndata: x\n\n", []ev{{data: "x"}}},
		{"empty id", "id\ndata: x\n\n", []ev{{id: "", hasID: true, data: "x"}}},
		{"priming event", "id: 0_0\ndata:\n\n", []ev{{id: "0_0", hasID: true, data: ""}}},
		{"priming event with empty data field", "id: p\ndata\n\n", []ev{{id: "p", hasID: true, data: ""}}},
		{"id only", "id: only\n\n", []ev{{id: "only", hasID: true}}},
		{"go-sdk prime", "event: prime\nid: s_0\ndata: \n\n", []ev{{name: "prime", id: "s_0", hasID: true}}},
		{"retry", "retry: 1500\n\n", []ev{{retry: 1500 * time.Millisecond}}},
		{"retry with data", "retry: 10\ndata: x\n\n", []ev{{retry: 10 * time.Millisecond, data: "x"}}},
		{"bad retry ignored", "retry: soon\n\ndata: x\n\n", []ev{{data: "x"}}},
		{"unknown fields ignored", "foo: bar\n\nfoo\ndata: x\n\n", []ev{{data: "x"}}},
		{"blank lines only", "\n\n\r\n\n", nil},
		{"unfinished last event dropped", "data: a\n\ndata: b\n", []ev{{data: "a"}}},
		{"unfinished last line dropped", "data: a\n\ndata: b", []ev{{data: "a"}}},
		{"unfinished id-only event dropped", "id: 5\n", nil},
		{"empty stream", "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Byte by byte too, so that line assembly across reads is tested.
			for _, r := range []io.Reader{strings.NewReader(c.stream), iotest.OneByteReader(strings.NewReader(c.stream))} {
				got, err := readAll(t, r, 1<<20)
				if !errors.Is(err, io.EOF) {
					t.Errorf("stream ended with %v, want io.EOF", err)
				}
				if len(got) != len(c.want) {
					t.Fatalf("got %d events %+v, want %d", len(got), got, len(c.want))
				}
				for i, w := range c.want {
					g := got[i]
					if g.ID != w.id || g.HasID != w.hasID || g.Name != w.name || string(g.Data) != w.data || g.Retry != w.retry {
						t.Errorf("event %d = {ID %q HasID %v Name %q Data %q Retry %v}, want {ID %q HasID %v Name %q Data %q Retry %v}",
							i, g.ID, g.HasID, g.Name, g.Data, g.Retry, w.id, w.hasID, w.name, w.data, w.retry)
					}
				}
			}
		})
	}
}

func TestEventReaderPrimingDataIsEmptyNotNil(t *testing.T) {
	got, _ := readAll(t, strings.NewReader("id: p\ndata:\n\n"), 1024)
	if len(got) != 1 || !got[0].HasID || len(got[0].Data) != 0 {
		t.Fatalf("priming event = %+v", got)
	}
}

// TestEventReaderDataIsCopied: an event's Data stays valid after the next
// call to Next.
func TestEventReaderDataIsCopied(t *testing.T) {
	er := NewEventReader(strings.NewReader("data: first\n\ndata: second-and-longer\n\n"), 1024)
	a, err := er.Next()
	if err != nil {
		t.Fatal(err)
	}
	b, err := er.Next()
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Data) != "first" || string(b.Data) != "second-and-longer" {
		t.Errorf("events %q and %q", a.Data, b.Data)
	}
}

func TestEventReaderTooLarge(t *testing.T) {
	cases := []struct {
		name   string
		stream string
		max    int
	}{
		{"one long line", "data: " + strings.Repeat("x", 200) + "\n\n", 100},
		{"many lines", strings.Repeat("data: "+strings.Repeat("y", 30)+"\n", 10) + "\n", 100},
		{"long line over the read buffer", "data: " + strings.Repeat("z", 100<<10) + "\n\n", 64 << 10},
		{"long comment", ": " + strings.Repeat("c", 300) + "\n\ndata: x\n\n", 100},
		{"long line without end", "data: " + strings.Repeat("q", 300), 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			er := NewEventReader(strings.NewReader(c.stream), c.max)
			_, err := er.Next()
			if !errors.Is(err, ErrEventTooLarge) {
				t.Errorf("Next = %v, want ErrEventTooLarge", err)
			}
		})
	}

	// Events within the limit pass, one after another: the limit is per
	// event, not per stream.
	ev := "data: " + strings.Repeat("a", 50) + "\n\n"
	got, err := readAll(t, strings.NewReader(strings.Repeat(ev, 20)), 100)
	if !errors.Is(err, io.EOF) || len(got) != 20 {
		t.Errorf("20 events of 56 bytes with a limit of 100: %d events, %v", len(got), err)
	}
}

func TestEventReaderLongLines(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var stream bytes.Buffer
	stream.WriteString(": leading comment\r\n")
	stream.WriteString("id: big\r\nevent: message\r\ndata: ")
	stream.Write(big)
	stream.WriteString("\r\n\r\n")
	stream.WriteString("data: ")
	stream.Write(big[:100<<10])
	stream.WriteString("\ndata: ")
	stream.Write(big[:70<<10])
	stream.WriteString("\n\ndata: small\n\n")

	got, err := readAll(t, &stream, 2<<20)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with %v", err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d events, want 3", len(got))
	}
	if got[0].ID != "big" || got[0].Name != "message" || !bytes.Equal(got[0].Data, big) {
		t.Errorf("first event: ID %q Name %q, %d bytes of data (want %d, equal %v)",
			got[0].ID, got[0].Name, len(got[0].Data), len(big), bytes.Equal(got[0].Data, big))
	}
	want := append(append(bytes.Clone(big[:100<<10]), '\n'), big[:70<<10]...)
	if !bytes.Equal(got[1].Data, want) {
		t.Errorf("second event: %d bytes of data, want %d", len(got[1].Data), len(want))
	}
	if string(got[2].Data) != "small" {
		t.Errorf("third event: %q", got[2].Data)
	}
}

// TestEventReaderReadError: an error other than EOF from the body is
// returned, not taken for a clean end.
func TestEventReaderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	r := io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(boom))
	got, err := readAll(t, r, 1024)
	if len(got) != 1 || !errors.Is(err, boom) {
		t.Errorf("got %d events and %v, want 1 event and %v", len(got), err, boom)
	}
}

func TestAppendEvent(t *testing.T) {
	cases := []struct {
		id, name, data string
		want           string
	}{
		{"", "", `{}`, "data: {}\n\n"},
		{"", "endpoint", "/messages?sessionId=abc", "event: endpoint\ndata: /messages?sessionId=abc\n\n"},
		{"s-1", "message", `{"jsonrpc":"2.0","id":1,"result":{}}`, "id: s-1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"},
		{"s-2", "message", "", "id: s-2\nevent: message\ndata: \n\n"},
	}
	for _, c := range cases {
		got := appendEvent(nil, c.id, c.name, []byte(c.data))
		if string(got) != c.want {
			t.Errorf("appendEvent(%q, %q, %q) = %q, want %q", c.id, c.name, c.data, got, c.want)
		}
	}
	// It appends: events accumulate in one buffer.
	buf := appendEvent(nil, "a-1", "message", []byte(`1`))
	buf = appendEvent(buf, "a-2", "message", []byte(`2`))
	events, err := readAll(t, bytes.NewReader(buf), 1024)
	if !errors.Is(err, io.EOF) || len(events) != 2 || string(events[0].Data) != "1" || events[1].ID != "a-2" {
		t.Errorf("two appended events read back as %+v, %v", events, err)
	}
}

func TestOneLine(t *testing.T) {
	compact := []byte(`{"a":1,"b":[1,2]}`)
	if got := oneLine(compact); &got[0] != &compact[0] || string(got) != string(compact) {
		t.Errorf("oneLine copied or changed a message without line breaks: %s", got)
	}
	cases := []struct{ in, want string }{
		{"{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}\n", `{"a":1,"b":[1,2]}`},
		{"{\r\n\"a\":\"x\\ny\"\r\n}", `{"a":"x\ny"}`},
		{"{\"a\":\r1}", `{"a":1}`},
		{"{\n\"html\": \"<a&b>\",\n\"u\": \"\\u003c\"\n}", `{"html":"<a&b>","u":"\u003c"}`},
		{"{\n\"s\": \"  spaces  kept  \"\n}", `{"s":"  spaces  kept  "}`},
	}
	for _, c := range cases {
		got := oneLine([]byte(c.in))
		if string(got) != c.want {
			t.Errorf("oneLine(%q) = %q, want %q", c.in, got, c.want)
		}
		if bytes.ContainsAny(got, "\r\n") {
			t.Errorf("oneLine(%q) still has a line break", c.in)
		}
	}
}

// TestEventRoundTrip: whatever the bridge writes reads back as the same
// message, including pretty-printed upstream JSON.
func TestEventRoundTrip(t *testing.T) {
	msgs := []string{
		`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"line1\nline2"}]}}`,
		"{\n  \"jsonrpc\": \"2.0\",\n  \"id\": \"<a&b>\",\n  \"result\": {\n    \"x\": \"\\r\\n\"\n  }\n}",
		"{\r\n\t\"jsonrpc\": \"2.0\",\r\n\t\"method\": \"notifications/message\",\r\n\t\"params\": {\"data\": \"été\"}\r\n}",
		`{"jsonrpc":"2.0","id":12345678901234567890,"error":{"code":-32603,"message":": not a comment"}}`,
		`{"jsonrpc":"2.0","id":2,"result":{"text":"data: fake\n\nevent: fake"}}`,
	}
	var buf []byte
	for i, m := range msgs {
		buf = appendEvent(buf, "sess-"+string(rune('1'+i)), "message", oneLine([]byte(m)))
	}
	events, err := readAll(t, bytes.NewReader(buf), 1<<20)
	if !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if len(events) != len(msgs) {
		t.Fatalf("%d messages came back as %d events", len(msgs), len(events))
	}
	for i, m := range msgs {
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(m)); err != nil {
			t.Fatal(err)
		}
		ev := events[i]
		if ev.Name != "message" || ev.ID != "sess-"+string(rune('1'+i)) || !ev.HasID {
			t.Errorf("event %d: Name %q ID %q", i, ev.Name, ev.ID)
		}
		if !bytes.Equal(ev.Data, want.Bytes()) {
			t.Errorf("event %d: data %s, want %s", i, ev.Data, want.Bytes())
		}
	}
}

// benchmarkMessage is a typical tools/call result of about 1 KiB.
var benchmarkMessage = []byte(`{"jsonrpc":"2.0","id":12345,"result":{"content":[{"type":"text","text":"` +
	strings.Repeat("lorem ipsum dolor sit amet ", 36) + `"}],"isError":false}}`)

func BenchmarkEventEncode(b *testing.B) {
	var buf []byte
	b.SetBytes(int64(len(benchmarkMessage)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendEvent(buf[:0], "0123456789abcdef0123456789abcdef-42", "message", oneLine(benchmarkMessage))
	}
	_ = buf
}

func BenchmarkEventDecode(b *testing.B) {
	const perStream = 64
	var stream []byte
	for range perStream {
		stream = appendEvent(stream, "0123456789abcdef0123456789abcdef-42", "message", benchmarkMessage)
		stream = append(stream, ": ping\n\n"...)
	}
	r := bytes.NewReader(stream)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream)
		er := NewEventReader(r, 1<<20)
		for range perStream {
			if _, err := er.Next(); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := er.Next(); !errors.Is(err, io.EOF) {
			b.Fatal(err)
		}
	}
}
