package bridge

// Fuzz targets for the parsers that read what clients and upstreams send:
// the event-stream reader, the JSON-RPC envelope reader and batch splitter,
// the POST body checks, session ids, header tokens, and Last-Event-ID.
//
// Plain go test runs the seeds below and the corpus in testdata/fuzz; to
// fuzz one target:
//
//	go test -run '^$' -fuzz '^FuzzEventReader$' -fuzztime 1m -parallel 2 ./bridge
//
// or every target in turn with ./xcaddy.sh fuzz.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

// ---------------------------------------------------------------------------
// Event stream

// FuzzEventReader holds the event-stream reader to its promises on any
// stream an upstream may send (the bridge reads every upstream response
// and GET stream with it):
//
//   - it never panics, and it comes to an end: every event takes at least
//     two lines, and the only errors are io.EOF and ErrEventTooLarge;
//   - no event it returns holds more than its limit (id, name and data
//     together);
//   - the limit only cuts the stream short: the events read before it trips
//     are the ones a reader without a limit returns first, and a limit as
//     large as the stream never trips;
//   - what the bridge writes reads back: an event written by appendEvent,
//     with an id without CR, LF or NUL and the data as oneLine makes every
//     delivered message, is read back with the same id, name and data
//     (oneLine leaves no line break in valid JSON, and keeps its value);
//     it needs a limit of exactly its bytes without line ends, plus one.
func FuzzEventReader(f *testing.F) {
	seeds := []struct {
		stream string
		limit  uint16
		id     string
		data   string
	}{
		{"event: endpoint\ndata: /messages?sessionId=0123456789abcdef0123456789abcdef\n\n" +
			"id: 0123456789abcdef0123456789abcdef-1\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
			4096, "0123456789abcdef0123456789abcdef-1", `{"jsonrpc":"2.0","id":1,"result":{}}`},
		// CRLF and lone CR line ends, multi-line data, comments, retry.
		{"id: a\r\ndata: x\r\n\r\n", 64, "a", "x"},
		{"data: a\rdata: b\r\r", 64, "", "a\rb"},
		{"data: one\ndata: two\ndata\n\n: keepalive\n\nretry: 3000\n\nretry: -1\n\n", 256, "", "{\n  \"pretty\": true\r\n}"},
		// Field forms: no space, two spaces, no colon, unknown fields, empty id.
		{"data:x\ndata:  y\nid\nfoo: bar\nevent\n\n", 128, " leading space", " leading space"},
		// An id with NUL is ignored; an unfinished last event is dropped.
		{"id: a\x00b\ndata: x\n\ndata: unfinished", 128, "a\x00b", "x"},
		// Injection attempts in what the bridge writes.
		{"data: {}\n\n", 128, "x\r\ndata: injected", "{\"a\":1}\n\ndata: fake\n\n"},
		{"", 0, "", ""},
		{"\n\n\n\n", 0, "", "null"},
		{"data: \xff\xfe\n\n", 16, "\xff", "\"\xff\""},
		// Over the limit: one long line, and many small lines.
		{"data: " + strings.Repeat("x", 100) + "\n\n", 32, "s-1", strings.Repeat("y", 100)},
		{strings.Repeat("data: x\n", 40) + "\n", 100, "", ""},
	}
	for _, s := range seeds {
		f.Add([]byte(s.stream), s.limit, s.id, []byte(s.data))
	}
	f.Fuzz(checkEventStream)
}

// checkEventStream checks the properties FuzzEventReader lists on one
// stream, and one event written and read back.
func checkEventStream(t *testing.T, stream []byte, limit uint16, id string, data []byte) {
	t.Helper()
	maxSize := int(limit)
	limited, limitedErr := readEvents(t, stream, maxSize)
	for i, ev := range limited {
		if n := len(ev.ID) + len(ev.Name) + len(ev.Data); n > maxSize {
			t.Errorf("event %d holds %d bytes, over its limit of %d", i, n, maxSize)
		}
	}
	whole, wholeErr := readEvents(t, stream, len(stream))
	if !errors.Is(wholeErr, io.EOF) {
		t.Errorf("with a limit of the stream's own size (%d): %v, want io.EOF", len(stream), wholeErr)
	}
	if len(limited) > len(whole) {
		t.Fatalf("%d events with a limit of %d, %d without", len(limited), maxSize, len(whole))
	}
	for i := range limited {
		if !sameEvent(limited[i], whole[i]) {
			t.Errorf("event %d with a limit of %d: %+v; without: %+v", i, maxSize, limited[i], whole[i])
		}
	}
	if errors.Is(limitedErr, io.EOF) && len(limited) != len(whole) {
		t.Errorf("reached io.EOF with %d events under a limit of %d, but the stream has %d", len(limited), maxSize, len(whole))
	}

	line := oneLine(data)
	if json.Valid(data) {
		if bytes.ContainsAny(line, "\r\n") {
			t.Fatalf("oneLine(%q) = %q keeps a line break", data, line)
		}
		if !bytes.Equal(compactJSON(t, line), compactJSON(t, data)) {
			t.Errorf("oneLine(%q) = %q is another JSON value", data, line)
		}
	}
	if strings.ContainsAny(id, "\r\n\x00") || bytes.ContainsAny(line, "\r\n") {
		return // appendEvent's caller never writes these
	}
	written := appendEvent(nil, id, "message", line)
	events, err := readEvents(t, written, len(written))
	want := Event{ID: id, HasID: id != "", Name: "message", Data: line}
	if !errors.Is(err, io.EOF) || len(events) != 1 || !sameEvent(events[0], want) {
		t.Errorf("appendEvent(%q, %q) = %q reads back as %+v, %v", id, line, written, events, err)
	}
	// The limit counts an event's lines without their ends, and the
	// line being read with its end: the written event needs exactly
	// its line bytes plus one.
	need := len(written) - bytes.Count(written, []byte{'\n'}) + 1
	if events, err := readEvents(t, written, need); len(events) != 1 || !errors.Is(err, io.EOF) {
		t.Errorf("%q under a limit of %d: %d events, %v; want it read", written, need, len(events), err)
	}
	if events, err := readEvents(t, written, need-1); len(events) != 0 || !errors.Is(err, ErrEventTooLarge) {
		t.Errorf("%q under a limit of %d: %d events, %v; want ErrEventTooLarge", written, need-1, len(events), err)
	}
}

// readEvents reads stream with an EventReader of limit maxSize until it
// fails, and returns the events and the error. It fails the test when the
// reader returns more events than the stream has room for, or an error
// other than io.EOF and ErrEventTooLarge.
func readEvents(t *testing.T, stream []byte, maxSize int) ([]Event, error) {
	t.Helper()
	er := NewEventReader(bytes.NewReader(stream), maxSize)
	room := bytes.Count(stream, []byte{'\n'}) / 2 // an event ends with an empty line after a field line
	var events []Event
	for {
		ev, err := er.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, ErrEventTooLarge) {
				t.Errorf("Next: %v, want io.EOF or ErrEventTooLarge", err)
			}
			return events, err
		}
		events = append(events, ev)
		if len(events) > room {
			t.Fatalf("%d events from a stream of %d line ends: the reader does not end", len(events), 2*room)
		}
	}
}

func sameEvent(a, b Event) bool {
	return a.ID == b.ID && a.HasID == b.HasID && a.Name == b.Name && a.Retry == b.Retry && bytes.Equal(a.Data, b.Data)
}

func compactJSON(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		t.Fatalf("compacting %q: %v", data, err)
	}
	return buf.Bytes()
}

// ---------------------------------------------------------------------------
// JSON-RPC envelopes

// FuzzPeekEnvelope holds the hand-written envelope reader to encoding/json
// on the messages it is given (POST bodies, upstream bodies and events,
// after json.Valid: that is PeekEnvelope's and SplitBatch's documented
// precondition, which every caller meets):
//
//   - on any input it never panics; an accepted message's id is the exact
//     bytes of its id member (a substring of the input), and ReplaceID
//     with that same id gives back the input;
//   - on valid JSON its verdict is the one the JSON-RPC rules give when the
//     members are read with encoding/json (jsonrpc exactly "2.0"; an id that
//     is a string or number, or null in a response; a non-empty string
//     method and no result or error; or exactly one of result and error,
//     with an id), and so are its method, id and error member;
//   - on valid JSON, ReplaceID with another id is valid JSON of the same
//     kind and members carrying the new id, every other byte unchanged;
//   - SplitBatch on a valid array gives its elements, byte for byte as
//     encoding/json finds them, each valid JSON, and each is held to the
//     same rules.
//
// PeekEnvelope alone does not promise that what it accepts is valid JSON
// (it accepts `{"jsonrpc":"2.0","method":"a"}x`); FuzzMessageBody holds
// parseMessages, which checks first, to that.
func FuzzPeekEnvelope(f *testing.F) {
	seeds := []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":"x","result":{"content":[{"type":"text","text":"}{"}]}}`,
		`{"jsonrpc":"2.0","id":12345678901234567890,"error":{"code":-32603,"message":"m"}}`,
		`{"jsonrpc":"2.0","\u0069d":-1e5,"m\u0065thod":"a"}`,
		" {\n\"jsonrpc\" : \"2.0\" , \"id\" : \"\\\"\" , \"result\" : [ ] } ",
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`,
		`{"jsonrpc":"2.0","id":null,"method":"a"}`,
		`{"jsonrpc":"2.0","id":1,"id":"dup","result":{}}`,
		`{"jsonrpc":"1.0","jsonrpc":"2.0","id":1,"result":{}}`,
		`{"jsonrpc":"2\u002e0","id":1,"result":{}}`,
		`{"params":{"id":1,"method":"x"},"jsonrpc":"2.0","method":"y"}`,
		`[{"jsonrpc":"2.0","id":1,"method":"a"}]`,
		`[{"jsonrpc":"2.0","id":1,"method":"a"} , "x", [ ], {"jsonrpc":"2.0","method":"b"}]`,
		`{"a":"\\","b":{"c":["\"]"]}}`,
		`{}`, `[]`, `[ ]`, `"x"`, `0`, `null`,
		// ids and methods of every type.
		`{"jsonrpc":"2.0","id":true,"method":"a"}`,
		`{"jsonrpc":"2.0","id":{"x":1},"result":{}}`,
		`{"jsonrpc":"2.0","id":[1],"result":{}}`,
		`{"jsonrpc":"2.0","id":1,"method":""}`,
		`{"jsonrpc":"2.0","id":1,"method":"\u0000"}`,
		`{"jsonrpc":"2.0","id":1,"method":"\ud800"}`,
		`{"jsonrpc":"2.0","id":1,"method":7}`,
		`{"jsonrpc":"2.0","id":1,"method":"a","result":{}}`,
		`{"jsonrpc":"2.0","id":1,"result":{},"error":{}}`,
		`{"jsonrpc":"2.0","result":{}}`,
		`{"jsonrpc":"2.0","id":1}`,
		"[}", `{"a":1}`,
		// Huge numbers.
		`{"jsonrpc":"2.0","id":1e999999,"method":"a"}`,
		`{"jsonrpc":"2.0","id":-0.0e-0,"method":"a"}`,
		`{"jsonrpc":"2.0","id":` + strings.Repeat("9", 400) + `,"result":{}}`,
		// Deep nesting (TestLargeFuzzInputs takes it to json.Valid's limit).
		`{"jsonrpc":"2.0","id":1,"method":"a","params":` + strings.Repeat(`{"a":[`, 100) + strings.Repeat("]}", 100) + `}`,
		strings.Repeat("[", 100) + strings.Repeat("]", 100),
		`{"jsonrpc":"2.0","id":1,"method":"a","params":` + strings.Repeat("[", 100) + `}`,
		// Invalid UTF-8, in a method, a member name and a string.
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}",
		"{\"jsonrpc\":\"2.0\",\"id\xff\":1,\"method\":\"a\"}",
		"{\"jsonrpc\":\"2.0\",\"id\":\"\xc3\",\"result\":{}}",
		"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"method\":\"a\"}",
		// Not JSON: only the any-input properties hold.
		`{"jsonrpc":"2.0","method":"a"}x`,
		`{"jsonrpc":"2.0","method":"a",,}`,
		`{"jsonrpc":"2.0","id":,"result":{}}`,
		`{"jsonrpc":"2.0","id":1,"method":"a`,
		`{"jsonrpc":"2.0","id":"\`,
		`{:1}`, `{"a"}`, `[}`, `{`, ``,
		"{\"jsonrpc\":\"2.0\",\r\n\"id\":1,\r\n\"method\":\"a\"}\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkEnvelopeInput)
}

// checkEnvelopeInput checks the properties FuzzPeekEnvelope lists on one
// input: as one message and, when it is a valid array, as a batch.
func checkEnvelopeInput(t *testing.T, data []byte) {
	t.Helper()
	checkEnvelope(t, data)
	if !json.Valid(data) || !isArray(data) {
		// Outside its contract SplitBatch must still return (it once
		// looped forever on "[}"), with parts taken from the input.
		for _, part := range SplitBatch(data) {
			if len(part) == 0 || !bytes.Contains(data, part) {
				t.Fatalf("SplitBatch(%q) on invalid input gives the part %q", data, part)
			}
		}
		return
	}
	var elements []json.RawMessage
	if err := json.Unmarshal(data, &elements); err != nil {
		t.Fatalf("encoding/json cannot read the valid array %q: %v", data, err)
	}
	parts := SplitBatch(data)
	if len(parts) != len(elements) {
		t.Fatalf("SplitBatch(%q) gives %d parts, encoding/json %d elements", data, len(parts), len(elements))
	}
	for i, part := range parts {
		if !bytes.Equal(part, elements[i]) || !json.Valid(part) {
			t.Errorf("SplitBatch part %d is %q, encoding/json sees %q", i, part, elements[i])
		}
		checkEnvelope(t, part)
	}
}

// checkEnvelope runs PeekEnvelope and ReplaceID on one message and checks
// the properties FuzzPeekEnvelope lists.
func checkEnvelope(t *testing.T, msg []byte) {
	t.Helper()
	env, err := PeekEnvelope(msg)
	if err != nil {
		if env.Kind != KindInvalid {
			t.Errorf("PeekEnvelope(%q): error %v with Kind %v", msg, err, env.Kind)
		}
	} else {
		if env.Kind == KindInvalid {
			t.Errorf("PeekEnvelope(%q): no error, but KindInvalid", msg)
		}
		if env.ID != nil && !bytes.Equal(env.ID, msg[env.idStart:env.idEnd]) {
			t.Errorf("PeekEnvelope(%q): ID %q is not the bytes at [%d:%d]", msg, env.ID, env.idStart, env.idEnd)
		}
		if out := ReplaceID(msg, env, env.ID); !bytes.Equal(out, msg) {
			t.Errorf("ReplaceID(%q) with its own id %q = %q", msg, env.ID, out)
		}
		_ = env.ErrorMember(msg)
	}
	if !json.Valid(msg) {
		return
	}

	want := referenceEnvelope(msg)
	if (err == nil) != (want.kind != KindInvalid) || env.Kind != want.kind {
		t.Fatalf("PeekEnvelope(%q) = Kind %v, error %v; by encoding/json: Kind %v (%s)", msg, env.Kind, err, want.kind, want.why)
	}
	if err != nil {
		return
	}
	if !bytes.Equal(env.ID, want.id) || (env.ID == nil) != (want.id == nil) {
		t.Errorf("PeekEnvelope(%q): ID %q, encoding/json sees %q", msg, env.ID, want.id)
	}
	// Unescaped names are taken as they are, where encoding/json would put
	// U+FFFD for bytes that are not UTF-8: compare where both read the same.
	if utf8.Valid(want.rawMethod) && env.Method != want.method {
		t.Errorf("PeekEnvelope(%q): Method %q, encoding/json sees %q", msg, env.Method, want.method)
	}
	if em := env.ErrorMember(msg); !bytes.Equal(em, want.errorMember) || (em == nil) != (want.errorMember == nil) {
		t.Errorf("PeekEnvelope(%q): ErrorMember %q, encoding/json sees %q", msg, em, want.errorMember)
	}

	for _, id := range []string{`"bridge-id"`, `12345678901234567890`, `"<a&b>"`, `-1`} {
		out := ReplaceID(msg, env, json.RawMessage(id))
		if env.ID == nil {
			if !bytes.Equal(out, msg) {
				t.Errorf("ReplaceID changed a message without id: %q -> %q", msg, out)
			}
			continue
		}
		if !json.Valid(out) {
			t.Fatalf("ReplaceID(%q, %s) = %q is not valid JSON", msg, id, out)
		}
		if !bytes.HasPrefix(out, msg[:env.idStart]) || !bytes.HasSuffix(out, msg[env.idEnd:]) ||
			len(out) != len(msg)-len(env.ID)+len(id) {
			t.Errorf("ReplaceID(%q, %s) = %q changed bytes outside the id", msg, id, out)
		}
		after, err := PeekEnvelope(out)
		if err != nil || after.Kind != env.Kind || string(after.ID) != id || after.Method != env.Method {
			t.Errorf("after ReplaceID(%q, %s): %+v, %v", msg, id, after, err)
		}
		before, _ := referenceMembers(msg)
		replaced, _ := referenceMembers(out)
		if len(replaced) != len(before) {
			t.Errorf("ReplaceID changed the member count: %q -> %q", msg, out)
		}
	}
}

// referenceVerdict is how the JSON-RPC rules classify a message whose
// members encoding/json read.
type referenceVerdict struct {
	kind        Kind
	why         string // why the message is invalid
	id          json.RawMessage
	rawMethod   json.RawMessage
	method      string
	errorMember json.RawMessage
}

// referenceMembers decodes the top-level members of an object with
// encoding/json (which keeps the last of duplicates; PeekEnvelope refuses
// envelope members sent twice, see referenceDuplicateMember).
func referenceMembers(data []byte) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil || m == nil {
		return nil, false
	}
	return m, true
}

// referenceDuplicateMember reports whether the object msg names one of the
// envelope members (jsonrpc, method, id, result, error, params) twice at
// its top level, read with encoding/json's tokenizer.
func referenceDuplicateMember(msg []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(msg))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		name, _ := tok.(string)
		switch name {
		case "jsonrpc", "method", "id", "result", "error", "params":
			if seen[name] {
				return true
			}
			seen[name] = true
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
	}
	return false
}

// referenceEnvelope classifies a valid JSON message by the JSON-RPC rules
// the bridge applies, reading its members with encoding/json.
func referenceEnvelope(msg []byte) referenceVerdict {
	members, ok := referenceMembers(msg)
	if !ok {
		return referenceVerdict{why: "not an object"}
	}
	if referenceDuplicateMember(msg) {
		return referenceVerdict{why: "an envelope member sent twice"}
	}
	if string(members["jsonrpc"]) != `"2.0"` {
		return referenceVerdict{why: "jsonrpc is not \"2.0\""}
	}
	id, hasID := members["id"]
	rawMethod, hasMethod := members["method"]
	_, hasResult := members["result"]
	errorMember, hasError := members["error"]
	if hasID {
		switch jsonType(id) {
		case "string", "number":
		case "null":
			if hasMethod {
				return referenceVerdict{why: "null id in a request"}
			}
		default:
			return referenceVerdict{why: "id neither string nor number"}
		}
	}
	v := referenceVerdict{id: id, errorMember: errorMember}
	switch {
	case hasMethod:
		if hasResult || hasError {
			return referenceVerdict{why: "method with result or error"}
		}
		if json.Unmarshal(rawMethod, &v.method) != nil || v.method == "" {
			return referenceVerdict{why: "method not a non-empty string"}
		}
		v.rawMethod = rawMethod
		v.kind = KindNotification
		if hasID {
			v.kind = KindRequest
		}
	case hasResult != hasError:
		if !hasID {
			return referenceVerdict{why: "response without id"}
		}
		v.kind = KindResponse
	default:
		return referenceVerdict{why: "neither method nor exactly one of result and error"}
	}
	return v
}

// jsonType names the type of one valid JSON value.
func jsonType(raw json.RawMessage) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "invalid"
	}
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case json.Number:
		return "number"
	default:
		return "structured"
	}
}

// ---------------------------------------------------------------------------
// POST bodies

// FuzzMessageBody holds the POST body checks of serveMessage (readBody
// under http.MaxBytesReader, then parseMessages) to what a client may send,
// with a declared length that may lie:
//
//   - readBody given the declared length as it is: a length within the
//     limit is read exactly, and a body shorter than it is refused; another
//     length (unknown, or over the limit) reads the whole body, refused with
//     *http.MaxBytesError when over the limit;
//   - readBody given the body as net/http hands it over (held to its
//     Content-Length, io.ErrUnexpectedEOF when the connection ends early):
//     a body shorter than its declared length is always refused, and so is
//     a declared length over the limit;
//   - parseMessages, on any body: a body that is not valid JSON or not
//     valid UTF-8 is refused; it accepts exactly the valid bodies that are
//     one message PeekEnvelope accepts, or a non-empty array of such
//     messages; the messages are the body, or the array's elements as
//     encoding/json finds them, each with its PeekEnvelope envelope.
func FuzzMessageBody(f *testing.F) {
	request := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`
	seeds := []struct {
		body     string
		declared int64
		limit    uint16
	}{
		{request, int64(len(request)), 4096},
		{request, -1, 4096},
		{request, 10, 4096},                      // declared shorter: a cut message
		{request, int64(len(request)) + 1, 4096}, // declared longer: refused
		{request, 1 << 62, 4096},                 // over the limit
		{request, math.MinInt64, 4096},           // nonsense
		{request, int64(len(request)), 16},       // the body over the limit
		{request, -1, 16},                        // unknown length, over the limit
		{"[" + request + "," + request + "]", -1, 4096},
		{`[]`, 2, 4096},
		{`[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"1.0","method":"b"}]`, -1, 4096},
		{"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}", -1, 4096},
		{"{\"jsonrpc\":\"2.0\",\"id\":\"\xed\xa0\x80\",\"result\":{}}", -1, 4096},
		{`{"jsonrpc":"2.0","method":"a"}x`, -1, 4096},
		{"", 0, 4096},
		{"", 5, 4096},
		{" \r\n\t", -1, 4096},
		{"null", 4, 0},
		{`{"jsonrpc":"2.0","id":1,"method":"a","params":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, -1, 4096},
	}
	for _, s := range seeds {
		f.Add([]byte(s.body), s.declared, s.limit)
	}
	f.Fuzz(checkBody)
}

// checkBody checks the properties FuzzMessageBody lists on one body with
// its declared length, under one limit.
func checkBody(t *testing.T, body []byte, declared int64, limit uint16) {
	t.Helper()
	maxSize := int64(limit)
	read := func(r io.Reader) ([]byte, error) {
		return readBody(http.MaxBytesReader(nil, io.NopCloser(r), maxSize), declared, maxSize)
	}
	short := declared >= 0 && int64(len(body)) < declared
	within := declared >= 0 && declared <= maxSize
	var tooLarge *http.MaxBytesError

	got, err := read(bytes.NewReader(body))
	switch {
	case within && short:
		if err == nil {
			t.Errorf("a body of %d bytes declared as %d was accepted", len(body), declared)
		}
	case within:
		if err != nil || !bytes.Equal(got, body[:declared]) {
			t.Errorf("a body of %d bytes declared as %d: %q, %v; want its first %d bytes", len(body), declared, got, err, declared)
		}
	case int64(len(body)) > maxSize:
		if !errors.As(err, &tooLarge) {
			t.Errorf("a body of %d bytes over the limit %d, declared as %d: %v, want *http.MaxBytesError", len(body), maxSize, declared, err)
		}
	default:
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("a body of %d bytes declared as %d: %q, %v; want all of it", len(body), declared, got, err)
		}
	}
	if err == nil {
		checkMessages(t, got)
	}

	got, err = read(heldToLength(body, declared))
	switch {
	case short || declared > maxSize:
		if err == nil {
			t.Errorf("a body of %d bytes declared as %d (limit %d), held to its length, was accepted", len(body), declared, maxSize)
		}
	case declared >= 0:
		if err != nil || !bytes.Equal(got, body[:declared]) {
			t.Errorf("a body of %d bytes declared as %d, held to its length: %q, %v", len(body), declared, got, err)
		}
	case int64(len(body)) > maxSize:
		if !errors.As(err, &tooLarge) {
			t.Errorf("a body of %d bytes of unknown length over the limit %d: %v, want *http.MaxBytesError", len(body), maxSize, err)
		}
	default:
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("a body of %d bytes of unknown length: %q, %v; want all of it", len(body), got, err)
		}
	}

	checkMessages(t, body)
}

// heldToLength returns the request body net/http hands a handler when the
// request declares length bytes and the connection carries data: at most
// length bytes, then io.ErrUnexpectedEOF if data ran out first. A negative
// length (chunked) gives all of data.
func heldToLength(data []byte, length int64) io.Reader {
	switch {
	case length < 0:
		return bytes.NewReader(data)
	case int64(len(data)) >= length:
		return io.LimitReader(bytes.NewReader(data), length)
	default:
		return io.MultiReader(bytes.NewReader(data), iotest.ErrReader(io.ErrUnexpectedEOF))
	}
}

// checkMessages runs parseMessages on body and checks the properties
// FuzzMessageBody lists for it.
func checkMessages(t *testing.T, body []byte) {
	t.Helper()
	msgs, envs, problem := parseMessages(body)
	if !json.Valid(body) && problem == "" {
		t.Fatalf("parseMessages accepted %q, which is not valid JSON", body)
	}
	if !utf8.Valid(body) && problem == "" {
		t.Fatalf("parseMessages accepted %q, which is not valid UTF-8", body)
	}
	if !json.Valid(body) || !utf8.Valid(body) {
		return
	}

	want := [][]byte{body}
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); trimmed[0] == '[' {
		var elements []json.RawMessage
		if err := json.Unmarshal(body, &elements); err != nil {
			t.Fatalf("encoding/json cannot read the valid array %q: %v", body, err)
		}
		want = want[:0]
		for _, e := range elements {
			want = append(want, e)
		}
	}
	acceptable := len(want) > 0
	for _, m := range want {
		if _, err := PeekEnvelope(m); err != nil {
			acceptable = false
		}
	}
	if (problem == "") != acceptable {
		t.Fatalf("parseMessages(%q): problem %q, but acceptable is %v", body, problem, acceptable)
	}
	if problem != "" {
		if msgs != nil || envs != nil {
			t.Errorf("parseMessages(%q) refused it (%s) but returned messages", body, problem)
		}
		return
	}
	if len(msgs) != len(want) || len(envs) != len(msgs) {
		t.Fatalf("parseMessages(%q): %d messages and %d envelopes, want %d", body, len(msgs), len(envs), len(want))
	}
	for i, m := range msgs {
		if !bytes.Equal(m, want[i]) {
			t.Errorf("parseMessages(%q): message %d is %q, want %q", body, i, m, want[i])
		}
		env, err := PeekEnvelope(m)
		if err != nil || envs[i].Kind != env.Kind || envs[i].Method != env.Method || !bytes.Equal(envs[i].ID, env.ID) {
			t.Errorf("parseMessages(%q): envelope %d is %+v, PeekEnvelope gives %+v, %v", body, i, envs[i], env, err)
		}
	}
}

// TestLargeFuzzInputs runs the checks of the fuzz targets on inputs too
// large to be their seeds (the fuzzer would spend its time minimizing what
// it derives from them): nesting at json.Valid's depth limit and over it,
// and an event line longer than the reader's buffer.
func TestLargeFuzzInputs(t *testing.T) {
	nested := func(depth int) string { return strings.Repeat("[", depth) + strings.Repeat("]", depth) }
	for _, depth := range []int{9999, 10000, 10001} {
		for _, msg := range []string{
			nested(depth),
			`{"jsonrpc":"2.0","id":1,"method":"a","params":` + nested(depth-1) + `}`,
			`[{"jsonrpc":"2.0","id":1,"method":"a","params":` + nested(depth-2) + `}]`,
		} {
			checkEnvelopeInput(t, []byte(msg))
			checkBody(t, []byte(msg), int64(len(msg)), math.MaxUint16)
			checkBody(t, []byte(msg), -1, 1024)
		}
	}
	long := strings.Repeat("z", 40<<10)
	checkEventStream(t, []byte("data: "+long+"\n\n"), math.MaxUint16, "s-1", []byte(long))
	checkEventStream(t, []byte("data: "+long+"\n\n"), 40<<10, "s-1", []byte(`"`+long+`"`))
}

// ---------------------------------------------------------------------------
// Session ids and header tokens

// mintedSessionID is the form of the session ids the bridge mints
// (randomID: 128 random bits as 32 hex digits), the only ids it recreates
// a session under.
var mintedSessionID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// headerToken is what validHeaderToken lets into a JSON string unescaped:
// at most 32 visible ASCII characters, none of them '"' or '\'.
var headerToken = regexp.MustCompile(`^[!#-\[\]-~]{0,32}$`)

// FuzzSessionID holds the checks on client-chosen strings to their rules,
// each written here independently of the code:
//
//   - validSessionID accepts exactly 32 lowercase hex digits (what randomID
//     mints), whatever the bytes: no uppercase, no length but 32, nothing
//     beyond ASCII. A POST's session comes from its sessionId query, as
//     net/http parses (and percent-decodes) it; whatever that yields, the
//     bridge recreates a session only under an id of that form, and such an
//     id goes out in the endpoint URL and comes back through the query as
//     it is.
//   - validHeaderToken accepts exactly the tokens headerToken describes;
//     minimalInitialize, which places an MCP-Protocol-Version it accepts in
//     a JSON string unescaped, always makes a valid initialize request that
//     carries that version (or the default one when the token is refused).
func FuzzSessionID(f *testing.F) {
	minted := randomID()
	if !validSessionID(minted) || !mintedSessionID.MatchString(minted) {
		f.Fatalf("randomID() = %q is not a valid session id", minted)
	}
	for _, s := range []string{
		"0123456789abcdef0123456789abcdef",
		"0123456789ABCDEF0123456789abcdef",
		"0123456789abcdef0123456789abcde",
		"0123456789abcdef0123456789abcdef0",
		"0123456789abcdef0123456789abcdeg",
		"0123456789abcdef0123456789abcde\n",
		"0123456789abcdef0123456789abcd\xc3\xa9",
		"sessionId=0123456789abcdef0123456789abcdef",
		"sessionId=%30123456789abcdef0123456789abcdef",
		"sessionId=0123456789abcdef0123456789abcdef%0d%0aX-Injected:%20yes",
		"sessionId=0123456789abcdef0123456789abcdef&sessionId=ffffffffffffffffffffffffffffffff",
		"sessionid=0123456789abcdef0123456789abcdef;sessionId=x",
		"sessionId=../../etc/passwd",
		"sessionId=%zz",
		"2025-06-18", "2025-03-26", "2025-06-18\"", "a\\b", "\u00e9t\u00e9", "a b", "\x00", "\x7f",
		strings.Repeat("1", 32), strings.Repeat("1", 33),
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validSessionID(s), mintedSessionID.MatchString(s); got != want {
			t.Errorf("validSessionID(%q) = %v, want %v", s, got, want)
		}

		if u, err := url.ParseRequestURI(DefaultMessagePath + "?" + s); err == nil {
			id := u.Query().Get("sessionId")
			if got, want := validSessionID(id), mintedSessionID.MatchString(id); got != want {
				t.Errorf("validSessionID(%q), from the query %q, = %v, want %v", id, s, got, want)
			}
			if validSessionID(id) {
				if back := sessionIDOfEndpoint(t, id); back != id {
					t.Errorf("session %q comes back through its endpoint URL as %q", id, back)
				}
			}
		}

		if got, want := validHeaderToken(s), headerToken.MatchString(s); got != want {
			t.Errorf("validHeaderToken(%q) = %v, want %v", s, got, want)
		}
		init := minimalInitialize(s)
		env, err := PeekEnvelope(init)
		if !json.Valid(init) || err != nil || env.Kind != KindRequest || env.Method != "initialize" || string(env.ID) != "0" {
			t.Fatalf("minimalInitialize(%q) = %s: %+v, %v", s, init, env, err)
		}
		var decoded struct {
			Params struct {
				ProtocolVersion string
			}
		}
		if err := json.Unmarshal(init, &decoded); err != nil {
			t.Fatal(err)
		}
		want := "2025-03-26"
		if s != "" && headerToken.MatchString(s) {
			want = s
		}
		if decoded.Params.ProtocolVersion != want {
			t.Errorf("minimalInitialize(%q) carries protocol version %q, want %q", s, decoded.Params.ProtocolVersion, want)
		}
	})
}

// sessionIDOfEndpoint returns the sessionId a client posts to when it
// follows the endpoint URL the bridge sends for session id.
func sessionIDOfEndpoint(t *testing.T, id string) string {
	t.Helper()
	b := &Bridge{cfg: Config{
		SSEPath:      DefaultSSEPath,
		MessagePath:  DefaultMessagePath,
		OriginalPath: func(r *http.Request) string { return r.URL.Path },
	}}
	stream := &http.Request{URL: &url.URL{Path: DefaultSSEPath}}
	endpoint, err := url.Parse(b.endpointURL(stream, id))
	if err != nil {
		t.Fatalf("endpoint URL for %q: %v", id, err)
	}
	return endpoint.Query().Get("sessionId")
}

// ---------------------------------------------------------------------------
// Last-Event-ID

// formatEventID writes a legacy event id as the stream does (appendMessage):
// the session id, '-', the message's sequence number in decimal.
func formatEventID(session string, seq uint64) string {
	return session + "-" + strconv.FormatUint(seq, 10)
}

// FuzzEventID holds parseEventID, which reads a client's Last-Event-ID, to
// the format the stream writes event ids in:
//
//   - it never panics;
//   - what it accepts is a session id of the bridge's form, '-', and
//     decimal digits only (no sign, no space, no underscore) that fit in 64
//     bits; written again with formatEventID, it parses back to the same
//     session and sequence number (so an id holding CR, LF or NUL is never
//     accepted);
//   - every id the stream writes for a session parses back to that session
//     and sequence number.
func FuzzEventID(f *testing.F) {
	for _, s := range []struct {
		id  string
		seq uint64
	}{
		{"0123456789abcdef0123456789abcdef-42", 42},
		{"0123456789abcdef0123456789abcdef-18446744073709551615", math.MaxUint64},
		{"0123456789abcdef0123456789abcdef-18446744073709551616", 0},
		{"0123456789abcdef0123456789abcdef-007", 7},
		{"a-b-7", 1},
		{"a--5", 5},
		{"-1", 1},
		{"a-", 0},
		{"-", 0},
		{"a-+1", 1},
		{"a- 1", 1},
		{"a-1 ", 1},
		{"a-1_000", 1000},
		{"a-0x10", 16},
		{"a-\u0661", 1},
		{"\n-1", 1},
		{"0123456789abcdef0123456789abcdef\r\nX-Injected: yes-3", 3},
		{"a\x00-3", 3},
		{"", 0},
	} {
		f.Add(s.id, s.seq)
	}
	f.Fuzz(func(t *testing.T, v string, seq uint64) {
		session, n, ok := parseEventID(v)
		if ok {
			digits := v[len(session)+1:]
			if !validSessionID(session) || !strings.HasPrefix(v, session+"-") || digits == "" || strings.Trim(digits, "0123456789") != "" {
				t.Errorf("parseEventID(%q) = %q, %d: not a session, '-' and digits", v, session, n)
			}
			if s, m, ok := parseEventID(formatEventID(session, n)); !ok || s != session || m != n {
				t.Errorf("parseEventID(%q) = %q, %d; written again as %q it parses as %q, %d, %v",
					v, session, n, formatEventID(session, n), s, m, ok)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Errorf("parseEventID(%q) accepts CR, LF or NUL", v)
			}
		}
		if validSessionID(v) {
			if s, m, ok := parseEventID(formatEventID(v, seq)); !ok || s != v || m != seq {
				t.Errorf("the stream's event id %q parses as %q, %d, %v", formatEventID(v, seq), s, m, ok)
			}
		}
	})
}
