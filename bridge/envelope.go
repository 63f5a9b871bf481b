package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Kind classifies a JSON-RPC message by its envelope.
type Kind int

// Message kinds.
const (
	KindInvalid Kind = iota
	KindRequest
	KindNotification
	KindResponse
)

// String names the kind, as in metrics.
func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	}
	return "invalid"
}

// Envelope is what the bridge needs to know about a JSON-RPC message, read
// without decoding the payload: params and result stay untouched bytes.
type Envelope struct {
	Kind Kind
	// Method is the method name of a request or notification.
	Method string
	// ID is the id member exactly as it appears in the message.
	ID json.RawMessage
	// idStart and idEnd delimit ID in the message, for ReplaceID.
	idStart, idEnd int
	// errStart and errEnd delimit the error member of a response, if any.
	errStart, errEnd int
}

var errNotObject = errors.New("not a JSON object")

// PeekEnvelope reads the top-level members of one JSON-RPC message. The
// message must be valid JSON (check with json.Valid first); PeekEnvelope only
// classifies it.
func PeekEnvelope(msg []byte) (Envelope, error) {
	var env Envelope
	i := skipSpace(msg, 0)
	if i >= len(msg) || msg[i] != '{' {
		return env, errNotObject
	}
	i++
	var (
		version             []byte
		hasMethod, hasID    bool
		hasResult, hasError bool
		methodRaw           []byte
		// seen holds the envelope members met, so that one sent twice is
		// refused: peers that keep the first and peers that keep the last
		// would act on different messages.
		seen = map[string]bool{}
	)
	for {
		i = skipSpace(msg, i)
		if i >= len(msg) {
			return env, errNotObject
		}
		if msg[i] == '}' {
			break
		}
		if msg[i] == ',' {
			i++
			continue
		}
		keyEnd := skipString(msg, i)
		key := msg[i:keyEnd]
		i = skipSpace(msg, keyEnd)
		if i >= len(msg) || msg[i] != ':' {
			return env, errNotObject
		}
		i = skipSpace(msg, i+1)
		valStart := i
		i = skipValue(msg, i)
		val := msg[valStart:i]
		name := string(memberName(key))
		switch name {
		case "jsonrpc", "method", "id", "result", "error", "params":
			if seen[name] {
				return env, errors.New("member " + name + " sent twice")
			}
			seen[name] = true
		}
		switch name {
		case "jsonrpc":
			version = val
		case "method":
			hasMethod, methodRaw = true, val
		case "id":
			hasID = true
			env.ID, env.idStart, env.idEnd = val, valStart, i
		case "result":
			hasResult = true
		case "error":
			hasError = true
			env.errStart, env.errEnd = valStart, i
		}
	}
	if !bytes.Equal(version, []byte(`"2.0"`)) {
		return env, errors.New(`jsonrpc member must be "2.0"`)
	}
	// A response may carry a null id (servers answer unparseable requests
	// so); requests and notifications may not.
	if hasID && !validID(env.ID) && (hasMethod || !bytes.Equal(env.ID, []byte("null"))) {
		return env, errors.New("id must be a string or a number")
	}
	switch {
	case hasMethod:
		if hasResult || hasError {
			return env, errors.New("a message cannot have both method and result or error")
		}
		if len(methodRaw) < 3 || methodRaw[0] != '"' {
			return env, errors.New("method must be a non-empty string")
		}
		if bytes.IndexByte(methodRaw, '\\') < 0 {
			env.Method = string(methodRaw[1 : len(methodRaw)-1])
		} else if err := json.Unmarshal(methodRaw, &env.Method); err != nil || env.Method == "" {
			return env, errors.New("method must be a non-empty string")
		}
		if hasID {
			env.Kind = KindRequest
		} else {
			env.Kind = KindNotification
		}
	case hasResult != hasError:
		if !hasID {
			return env, errors.New("a response needs an id")
		}
		env.Kind = KindResponse
	default:
		return env, errors.New("not a JSON-RPC request, notification or response")
	}
	return env, nil
}

// ErrorMember returns the raw error member of a response, or nil.
func (e Envelope) ErrorMember(msg []byte) json.RawMessage {
	if e.errEnd == 0 {
		return nil
	}
	return msg[e.errStart:e.errEnd]
}

// ReplaceID returns msg with its id member's value replaced by id, leaving
// every other byte as it was. env must come from PeekEnvelope(msg).
func ReplaceID(msg []byte, env Envelope, id json.RawMessage) []byte {
	if env.idEnd == 0 || bytes.Equal(msg[env.idStart:env.idEnd], id) {
		return msg
	}
	out := make([]byte, 0, len(msg)-len(env.ID)+len(id))
	out = append(out, msg[:env.idStart]...)
	out = append(out, id...)
	return append(out, msg[env.idEnd:]...)
}

// validID accepts the id forms MCP allows: strings and numbers, not null.
func validID(id []byte) bool {
	if len(id) == 0 {
		return false
	}
	c := id[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// memberName returns a member name without its quotes, unescaped only when
// it holds escapes (rare), so that the common case allocates nothing.
func memberName(key []byte) []byte {
	if len(key) < 2 {
		return nil
	}
	if bytes.IndexByte(key, '\\') < 0 {
		return key[1 : len(key)-1]
	}
	var s string
	if json.Unmarshal(key, &s) != nil {
		return nil
	}
	return []byte(s)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return i
	}
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the (valid) JSON value at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// SplitBatch returns the elements of a JSON array, each as its own bytes.
// data must be valid JSON starting with '['; on anything else it returns
// what it found before the first byte it cannot read as an element.
func SplitBatch(data []byte) []json.RawMessage {
	var out []json.RawMessage
	i := skipSpace(data, 0) + 1
	for {
		i = skipSpace(data, i)
		if i >= len(data) || data[i] == ']' {
			return out
		}
		if data[i] == ',' {
			i++
			continue
		}
		start := i
		i = skipValue(data, i)
		if i == start {
			return out // not an element: not a valid array
		}
		out = append(out, data[start:i])
	}
}

// isArray reports whether the valid JSON value in data is an array.
func isArray(data []byte) bool {
	i := skipSpace(data, 0)
	return i < len(data) && data[i] == '['
}

// errorMessage builds a JSON-RPC error response carrying id byte for byte.
func errorMessage(id json.RawMessage, code int, message string) []byte {
	e, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{code, message})
	return errorResponse(id, e)
}

// errorResponse wraps an already-encoded error object in a response for id.
func errorResponse(id json.RawMessage, errObj []byte) []byte {
	out := make([]byte, 0, 32+len(id)+len(errObj))
	out = append(out, `{"jsonrpc":"2.0","id":`...)
	out = append(out, id...)
	out = append(out, `,"error":`...)
	out = append(out, errObj...)
	return append(out, '}')
}
