package bridge

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestPeekEnvelopeKinds(t *testing.T) {
	cases := []struct {
		name   string
		msg    string
		kind   Kind
		method string
		id     string // raw bytes, "" for none
	}{
		{"request", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`, KindRequest, "tools/call", `1`},
		{"request without params", `{"jsonrpc":"2.0","id":"a","method":"ping"}`, KindRequest, "ping", `"a"`},
		{"members in any order", `{"params":{},"method":"tools/list","id":7,"jsonrpc":"2.0"}`, KindRequest, "tools/list", `7`},
		{"notification", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, KindNotification, "notifications/initialized", ``},
		{"notification with params", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}`, KindNotification, "notifications/progress", ``},
		{"result", `{"jsonrpc":"2.0","id":3,"result":{}}`, KindResponse, "", `3`},
		{"null result", `{"jsonrpc":"2.0","id":3,"result":null}`, KindResponse, "", `3`},
		{"error", `{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}`, KindResponse, "", `"x"`},

		// id forms, kept byte for byte.
		{"id empty string", `{"jsonrpc":"2.0","id":"","method":"m"}`, KindRequest, "m", `""`},
		{"id zero", `{"jsonrpc":"2.0","id":0,"method":"m"}`, KindRequest, "m", `0`},
		{"id negative", `{"jsonrpc":"2.0","id":-42,"method":"m"}`, KindRequest, "m", `-42`},
		{"id beyond int64", `{"jsonrpc":"2.0","id":12345678901234567890,"method":"m"}`, KindRequest, "m", `12345678901234567890`},
		{"id beyond float64 precision", `{"jsonrpc":"2.0","id":9007199254740993,"result":1}`, KindResponse, "", `9007199254740993`},
		{"id huge", `{"jsonrpc":"2.0","id":-123456789012345678901234567890,"method":"m"}`, KindRequest, "m", `-123456789012345678901234567890`},
		{"id exponent", `{"jsonrpc":"2.0","id":1e3,"method":"m"}`, KindRequest, "m", `1e3`},
		{"id exponent signed", `{"jsonrpc":"2.0","id":-2.5E-3,"result":{}}`, KindResponse, "", `-2.5E-3`},
		{"id fraction", `{"jsonrpc":"2.0","id":1.0,"method":"m"}`, KindRequest, "m", `1.0`},
		{"id escaped string", `{"jsonrpc":"2.0","id":"\u0041\"\\\/","method":"m"}`, KindRequest, "m", `"\u0041\"\\\/"`},
		{"id html", `{"jsonrpc":"2.0","id":"<a&b>","method":"m"}`, KindRequest, "m", `"<a&b>"`},
		{"id unicode", `{"jsonrpc":"2.0","id":"été ✓","method":"m"}`, KindRequest, "m", `"été ✓"`},

		// Escaped member names are the same members.
		{"escaped id key", `{"jsonrpc":"2.0","\u0069d":5,"method":"m"}`, KindRequest, "m", `5`},
		{"escaped method key", `{"jsonrpc":"2.0","m\u0065thod":"x"}`, KindNotification, "x", ``},
		{"escaped jsonrpc key", `{"\u006Asonrpc":"2.0","id":1,"result":true}`, KindResponse, "", `1`},
		{"escaped result key", `{"jsonrpc":"2.0","id":1,"r\u0065sult":true}`, KindResponse, "", `1`},
		{"escaped method value", `{"jsonrpc":"2.0","id":1,"method":"tools\/call"}`, KindRequest, "tools/call", `1`},

		// Nested members named id, method, result or error are not the
		// envelope's.
		{"nested id in notification", `{"jsonrpc":"2.0","method":"n","params":{"id":5,"result":1,"error":{}}}`, KindNotification, "n", ``},
		{"nested method in response", `{"params":{"id":1},"jsonrpc":"2.0","result":{"method":"x","id":2},"id":3}`, KindResponse, "", `3`},
		{"nested in arrays", `{"jsonrpc":"2.0","result":[{"id":1},[{"method":"m"}]],"id":"r"}`, KindResponse, "", `"r"`},
		{"keys inside strings", `{"jsonrpc":"2.0","result":"}\"id\":1,\"method\":\"x\"{","id":"s"}`, KindResponse, "", `"s"`},
		{"brackets inside strings", `{"jsonrpc":"2.0","method":"m","params":{"a":"]}]}","b":["{","["]}}`, KindNotification, "m", ``},
		{"escaped backslash before quote", `{"jsonrpc":"2.0","method":"m","params":{"p":"a\\","id":1}}`, KindNotification, "m", ``},
		{"member named id inside a string key", `{"jsonrpc":"2.0","method":"m","params":{"\"id\"":1}}`, KindNotification, "m", ``},

		// Whitespace everywhere JSON allows it.
		{"whitespace", " \t\r\n{ \n\"jsonrpc\" \t:\r\n \"2.0\" ,\n\t\"id\"\n:\n 42 \r\n, \"method\" : \"m\" ,\"params\" : { \"a\" : [ 1 , 2 ] } \n} \n\t", KindRequest, "m", `42`},
		{"whitespace around string id", "{\"jsonrpc\":\"2.0\",\"id\" : \"x y\" ,\"result\":{}}", KindResponse, "", `"x y"`},
		{"whitespace after number id at end", "{\"jsonrpc\":\"2.0\",\"result\":{},\"id\":17\n}", KindResponse, "", `17`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !json.Valid([]byte(c.msg)) {
				t.Fatalf("test message is not valid JSON: %s", c.msg)
			}
			env, err := PeekEnvelope([]byte(c.msg))
			if err != nil {
				t.Fatalf("PeekEnvelope: %v", err)
			}
			if env.Kind != c.kind {
				t.Errorf("Kind = %v, want %v", env.Kind, c.kind)
			}
			if env.Method != c.method {
				t.Errorf("Method = %q, want %q", env.Method, c.method)
			}
			if string(env.ID) != c.id {
				t.Errorf("ID = %q, want %q", env.ID, c.id)
			}
		})
	}
}

func TestPeekEnvelopeInvalid(t *testing.T) {
	cases := []struct{ name, msg string }{
		{"array", `[{"jsonrpc":"2.0","method":"m"}]`},
		{"string", `"hello"`},
		{"number", `42`},
		{"null", `null`},
		{"empty object", `{}`},
		{"no jsonrpc", `{"id":1,"method":"m"}`},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"m"}`},
		{"jsonrpc number", `{"jsonrpc":2.0,"id":1,"method":"m"}`},
		{"jsonrpc with space", `{"jsonrpc":"2.0 ","id":1,"method":"m"}`},
		{"jsonrpc null", `{"jsonrpc":null,"id":1,"method":"m"}`},
		{"jsonrpc nested only", `{"params":{"jsonrpc":"2.0"},"id":1,"method":"m"}`},
		{"null id request", `{"jsonrpc":"2.0","id":null,"method":"m"}`},
		{"bool id", `{"jsonrpc":"2.0","id":true,"method":"m"}`},
		{"object id", `{"jsonrpc":"2.0","id":{"a":1},"method":"m"}`},
		{"array id", `{"jsonrpc":"2.0","id":[1],"method":"m"}`},
		{"empty method", `{"jsonrpc":"2.0","id":1,"method":""}`},
		{"number method", `{"jsonrpc":"2.0","id":1,"method":5}`},
		{"null method", `{"jsonrpc":"2.0","method":null}`},
		{"method and result", `{"jsonrpc":"2.0","id":1,"method":"m","result":{}}`},
		{"method and error", `{"jsonrpc":"2.0","id":1,"method":"m","error":{"code":1,"message":""}}`},
		{"result and error", `{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":""}}`},
		{"response without id", `{"jsonrpc":"2.0","result":{}}`},
		{"error without id", `{"jsonrpc":"2.0","error":{"code":-32700,"message":"parse"}}`},
		{"neither method nor result", `{"jsonrpc":"2.0","id":1}`},
		{"only nested members", `{"jsonrpc":"2.0","params":{"id":1,"method":"m"}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !json.Valid([]byte(c.msg)) {
				t.Fatalf("test message is not valid JSON: %s", c.msg)
			}
			env, err := PeekEnvelope([]byte(c.msg))
			if err == nil {
				t.Errorf("PeekEnvelope accepted %s as %+v", c.msg, env)
			}
		})
	}
}

// TestPeekEnvelopeTruncated feeds prefixes of a valid message (not valid
// JSON, which PeekEnvelope does not promise to handle well): it must return,
// without panicking, and never call a prefix a complete message with an id
// that runs past the input.
func TestPeekEnvelopeTruncated(t *testing.T) {
	msg := []byte(`{"jsonrpc":"2.0","id":"a\"b","method":"m","params":{"x":[1,{"y":"}"}]}}`)
	for i := range len(msg) {
		env, err := PeekEnvelope(msg[:i])
		if err == nil && env.Kind != KindInvalid {
			t.Errorf("prefix %q accepted as %+v", msg[:i], env)
		}
	}
}

func TestReplaceID(t *testing.T) {
	// Each message is prefix + old id + suffix; ReplaceID must give
	// prefix + new id + suffix, every other byte untouched.
	cases := []struct{ prefix, oldID, suffix string }{
		{`{"jsonrpc":"2.0","id":`, `1`, `,"result":{}}`},
		{`{"jsonrpc":"2.0","result":{"id":99,"content":[{"id":"x"}]},"id":`, `"abc"`, `}`},
		{"{\n  \"jsonrpc\" : \"2.0\",\n  \"id\" :  ", `12345678901234567890`, "  ,\n  \"error\" : {\"code\":-1,\"message\":\"m\"}\n}\n"},
		{`{"\u0069d":`, `-1.5e10`, `,"jsonrpc":"2.0","result":null}`},
		{`{"jsonrpc":"2.0","id":`, `"\u00e9\"\\"`, `,"result":"\"id\":1"}`},
		{`{"jsonrpc":"2.0","method":"sampling/createMessage","id":`, `0`, `,"params":{"messages":[]}}`},
	}
	newIDs := []string{`7`, `"<a&b>"`, `12345678901234567890`, `"a much longer replacement id than the original one"`, `""`, `-0.5E+2`}
	for _, c := range cases {
		msg := []byte(c.prefix + c.oldID + c.suffix)
		orig := bytes.Clone(msg)
		env, err := PeekEnvelope(msg)
		if err != nil {
			t.Fatalf("PeekEnvelope(%s): %v", msg, err)
		}
		if string(env.ID) != c.oldID {
			t.Fatalf("PeekEnvelope(%s).ID = %s, want %s", msg, env.ID, c.oldID)
		}
		for _, id := range newIDs {
			got := ReplaceID(msg, env, json.RawMessage(id))
			if want := c.prefix + id + c.suffix; string(got) != want {
				t.Errorf("ReplaceID(%s, %s):\n got %s\nwant %s", msg, id, got, want)
			}
			if !bytes.Equal(msg, orig) {
				t.Fatalf("ReplaceID changed its input: %s", msg)
			}
			if !json.Valid(got) {
				t.Errorf("ReplaceID(%s, %s) is not valid JSON: %s", msg, id, got)
			}
			env2, err := PeekEnvelope(got)
			if err != nil || string(env2.ID) != id || env2.Kind != env.Kind {
				t.Errorf("PeekEnvelope(ReplaceID(...)) = %+v, %v; want kind %v id %s", env2, err, env.Kind, id)
			}
		}
		// The same id gives the message back unchanged.
		if got := ReplaceID(msg, env, json.RawMessage(c.oldID)); !bytes.Equal(got, msg) {
			t.Errorf("ReplaceID with the same id changed %s to %s", msg, got)
		}
	}

	// A message without an id stays as it is.
	note := []byte(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":1}}`)
	env, err := PeekEnvelope(note)
	if err != nil {
		t.Fatal(err)
	}
	if got := ReplaceID(note, env, json.RawMessage(`5`)); !bytes.Equal(got, note) {
		t.Errorf("ReplaceID on a notification: %s", got)
	}
}

// TestReplaceIDDoesNotAlias: the result must not share its array with the
// input, so that appending to one does not change the other.
func TestReplaceIDDoesNotAlias(t *testing.T) {
	buf := make([]byte, 0, 256)
	buf = append(buf, `{"jsonrpc":"2.0","id":1,"result":{}}`...)
	env, err := PeekEnvelope(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := ReplaceID(buf, env, json.RawMessage(`22`))
	want := string(got)
	_ = append(buf, "garbage"...)
	buf[0] = 'X'
	if string(got) != want {
		t.Errorf("ReplaceID result changed with its input: %s", got)
	}
}

func TestErrorMember(t *testing.T) {
	msg := []byte(`{"jsonrpc":"2.0","id":1,"error": {"code":-32000,"message":"boom","data":{"error":1}} }`)
	env, err := PeekEnvelope(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(env.ErrorMember(msg)); got != `{"code":-32000,"message":"boom","data":{"error":1}}` {
		t.Errorf("ErrorMember = %s", got)
	}
	ok := []byte(`{"jsonrpc":"2.0","id":1,"result":{"error":{"code":1}}}`)
	env, err = PeekEnvelope(ok)
	if err != nil {
		t.Fatal(err)
	}
	if got := env.ErrorMember(ok); got != nil {
		t.Errorf("ErrorMember of a result = %s, want nil", got)
	}
}

func TestSplitBatch(t *testing.T) {
	cases := []struct {
		batch string
		want  []string
	}{
		{`[]`, nil},
		{" [ \n ] ", nil},
		{`[1]`, []string{`1`}},
		{`[{"a":1},{"b":2}]`, []string{`{"a":1}`, `{"b":2}`}},
		{" [\n {\"a\" : [1, {\"b\":\"]\"}]} ,\t2 , \"x,y\" , [1,[2,[3]]] , {\"c\":\"}\\\"\"} , null,true , -1.5e3 \n] ",
			[]string{`{"a" : [1, {"b":"]"}]}`, `2`, `"x,y"`, `[1,[2,[3]]]`, `{"c":"}\""}`, `null`, `true`, `-1.5e3`}},
		{`[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"b"}]`,
			[]string{`{"jsonrpc":"2.0","id":1,"method":"a"}`, `{"jsonrpc":"2.0","method":"b"}`}},
	}
	for _, c := range cases {
		if !json.Valid([]byte(c.batch)) {
			t.Fatalf("test batch is not valid JSON: %s", c.batch)
		}
		got := SplitBatch([]byte(c.batch))
		if len(got) != len(c.want) {
			t.Errorf("SplitBatch(%s) = %d elements %q, want %q", c.batch, len(got), got, c.want)
			continue
		}
		for i := range got {
			if string(got[i]) != c.want[i] {
				t.Errorf("SplitBatch(%s)[%d] = %s, want %s", c.batch, i, got[i], c.want[i])
			}
		}
	}
	if isArray([]byte(` {"a":[]}`)) || !isArray([]byte(" \n[1]")) {
		t.Error("isArray misclassifies")
	}
}

func TestErrorMessage(t *testing.T) {
	ids := []string{`1`, `"<a&b>"`, `12345678901234567890`, `-3`, `"\u00e9"`, `""`, `1e400`, `"a\"b"`}
	messages := []string{"plain", `<script>&"quotes"</script>`, "line\nbreak", "été ✓", ""}
	for _, id := range ids {
		for _, m := range messages {
			out := errorMessage(json.RawMessage(id), codeInternalError, m)
			if !json.Valid(out) {
				t.Fatalf("errorMessage(%s, %q) is not valid JSON: %s", id, m, out)
			}
			if !bytes.Contains(out, []byte(`"id":`+id+`,`)) {
				t.Errorf("errorMessage(%s, ...) does not carry the id verbatim: %s", id, out)
			}
			if bytes.ContainsAny(out, "\n\r") {
				t.Errorf("errorMessage output has a line break, unfit for one data: line: %q", out)
			}
			env, err := PeekEnvelope(out)
			if err != nil || env.Kind != KindResponse || string(env.ID) != id {
				t.Errorf("PeekEnvelope(errorMessage) = %+v, %v", env, err)
			}
			var decoded struct {
				JSONRPC string
				Error   struct {
					Code    int
					Message string
				}
			}
			if err := json.Unmarshal(out, &decoded); err != nil {
				t.Fatalf("decoding %s: %v", out, err)
			}
			if decoded.JSONRPC != "2.0" || decoded.Error.Code != codeInternalError || decoded.Error.Message != m {
				t.Errorf("errorMessage(%s, %q) decodes to %+v", id, m, decoded)
			}
		}
	}

	// errorResponse keeps an upstream error object as it is.
	errObj := `{"code":-32001,"message":"<b>","data":{"supported":["2025-06-18"],"id":null}}`
	out := errorResponse(json.RawMessage(`"<a&b>"`), []byte(errObj))
	if want := `{"jsonrpc":"2.0","id":"<a&b>","error":` + errObj + `}`; string(out) != want {
		t.Errorf("errorResponse:\n got %s\nwant %s", out, want)
	}
	env, err := PeekEnvelope(out)
	if err != nil || string(env.ErrorMember(out)) != errObj {
		t.Errorf("PeekEnvelope(errorResponse) = %+v, %v", env, err)
	}
	// A big integer id survives a decode with UseNumber: nothing in the
	// output went through float64.
	out = errorMessage(json.RawMessage(`12345678901234567890`), -32603, "x")
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	if n, ok := m["id"].(json.Number); !ok || n.String() != "12345678901234567890" {
		t.Errorf("id decoded as %#v", m["id"])
	}
}

// benchmarkToolsCall is a tools/call request of about 1 KiB.
var benchmarkToolsCall = func() []byte {
	text := strings.Repeat("lorem ipsum dolor sit amet ", 33)
	msg := `{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"search","arguments":{"query":"` + text +
		`","filters":{"id":[1,2,3],"method":"nested"},"limit":10},"_meta":{"progressToken":"tok-1"}}}`
	return []byte(msg)
}()

func BenchmarkPeekEnvelope(b *testing.B) {
	msg := benchmarkToolsCall
	if len(msg) < 900 || len(msg) > 1200 {
		b.Fatalf("benchmark message is %d bytes", len(msg))
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		env, err := PeekEnvelope(msg)
		if err != nil || env.Kind != KindRequest {
			b.Fatal(env, err)
		}
	}
}

func BenchmarkReplaceID(b *testing.B) {
	msg := benchmarkToolsCall
	env, err := PeekEnvelope(msg)
	if err != nil {
		b.Fatal(err)
	}
	id := json.RawMessage(`"client-id-0001"`)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if out := ReplaceID(msg, env, id); len(out) == 0 {
			b.Fatal("empty")
		}
	}
}
