package bridge

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Event is one server-sent event.
type Event struct {
	ID    string
	Name  string
	Data  []byte
	Retry time.Duration
	// HasID reports whether the event carried an id field (possibly empty,
	// which resets the last event id).
	HasID bool
}

// ErrEventTooLarge is returned by EventReader when one event exceeds its limit.
var ErrEventTooLarge = errors.New("server-sent event too large")

// EventReader parses a text/event-stream body. Lines may end in LF or CRLF.
type EventReader struct {
	r       *bufio.Reader
	maxSize int
	data    bytes.Buffer
}

// NewEventReader reads events of at most maxSize bytes from r.
func NewEventReader(r io.Reader, maxSize int) *EventReader {
	return &EventReader{r: bufio.NewReaderSize(r, 32<<10), maxSize: maxSize}
}

// Next returns the next event that carries data or an id. Comments and
// events with neither are skipped. At the end of the stream it returns io.EOF;
// an unfinished last event is dropped, as the SSE specification says.
func (er *EventReader) Next() (Event, error) {
	var (
		ev      Event
		hasData bool
		size    int
	)
	er.data.Reset()
	for {
		line, err := er.readLine(er.maxSize - size)
		if err != nil {
			return Event{}, err
		}
		size += len(line)
		if len(line) == 0 {
			if hasData || ev.HasID || ev.Retry > 0 {
				ev.Data = append([]byte(nil), er.data.Bytes()...)
				return ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := bytes.Cut(line, []byte{':'})
		if found && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		switch string(field) {
		case "data":
			if hasData {
				er.data.WriteByte('\n')
			}
			er.data.Write(value)
			hasData = true
		case "event":
			ev.Name = string(value)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				ev.ID, ev.HasID = string(value), true
			}
		case "retry":
			if ms, err := strconv.Atoi(string(value)); err == nil && ms >= 0 {
				ev.Retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

// readLine returns one line without its terminator, failing when the line
// would exceed budget bytes.
func (er *EventReader) readLine(budget int) ([]byte, error) {
	var long []byte
	for {
		chunk, err := er.r.ReadSlice('\n')
		if len(long)+len(chunk) > budget {
			return nil, ErrEventTooLarge
		}
		switch {
		case err == nil:
			if long != nil {
				chunk = append(long, chunk...)
			}
			chunk = chunk[:len(chunk)-1]
			if n := len(chunk); n > 0 && chunk[n-1] == '\r' {
				chunk = chunk[:n-1]
			}
			return chunk, nil
		case errors.Is(err, bufio.ErrBufferFull):
			long = append(long, chunk...)
		case errors.Is(err, io.EOF):
			return nil, io.EOF
		default:
			return nil, fmt.Errorf("reading event stream: %w", err)
		}
	}
}

// appendEvent encodes one event. data must not contain line breaks; the
// bridge only writes compact JSON, which has none.
func appendEvent(dst []byte, id, name string, data []byte) []byte {
	if id != "" {
		dst = append(dst, "id: "...)
		dst = append(dst, id...)
		dst = append(dst, '\n')
	}
	if name != "" {
		dst = append(dst, "event: "...)
		dst = append(dst, name...)
		dst = append(dst, '\n')
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, '\n', '\n')
}

// oneLine returns JSON data with any line breaks removed, so that it fits on
// one data: line. Line breaks can only stand between tokens in valid JSON.
func oneLine(data []byte) []byte {
	if bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		return data
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return data
	}
	return buf.Bytes()
}
