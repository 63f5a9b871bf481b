package bridge

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"
)

// An idle legacy stream held by net/http costs about 55 KiB: the
// connection's goroutine with the deep stack of the handler chain, its
// background reader, its buffered reader and writer, and the request with
// the copies the server's middleware made. Thousands of clients sit idle on
// their streams most of the time, so once the headers and the endpoint event
// are out, an HTTP/1.1 stream takes its connection over (hijacks it) and is
// served from two shallow goroutines of its own: the relay, and a watcher
// that notices the client leaving. Its response goes on in chunked transfer
// coding, as net/http began it. HTTP/2 and HTTP/3 streams, HTTP/1.0 clients
// and responses that a middleware transforms (a Content-Encoding) stay on
// net/http.

// streamOut is where a stream's events go.
type streamOut interface {
	// write sends p, failing if it is not taken before the deadline.
	write(p []byte, deadline time.Time) error
	// flush sends what write buffered.
	flush() error
	// close ends the response as far as the stream is concerned.
	close()
}

// responseOut writes through net/http's ResponseWriter.
type responseOut struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (o responseOut) write(p []byte, deadline time.Time) error {
	_ = o.rc.SetWriteDeadline(deadline)
	_, err := o.w.Write(p)
	return err
}

func (o responseOut) flush() error { return o.rc.Flush() }

// close leaves no deadline of the stream's on a connection that may serve
// other requests.
func (o responseOut) close() { _ = o.rc.SetWriteDeadline(time.Time{}) }

// chunkedOut writes the rest of a chunked response to a hijacked
// connection, each write one chunk.
type chunkedOut struct {
	conn net.Conn
}

// endChunkTimeout bounds the write of the last chunk of a detached stream.
const endChunkTimeout = time.Second

var crlf = []byte("\r\n")

func (o chunkedOut) write(p []byte, deadline time.Time) error {
	if len(p) == 0 {
		return nil // an empty chunk would end the body
	}
	_ = o.conn.SetWriteDeadline(deadline)
	size := strconv.AppendUint(make([]byte, 0, 18), uint64(len(p)), 16)
	chunk := net.Buffers{append(size, crlf...), p, crlf}
	_, err := chunk.WriteTo(o.conn)
	return err
}

func (o chunkedOut) flush() error { return nil }

// close ends the body with its last chunk, so that the client sees a
// complete response, and closes the connection.
func (o chunkedOut) close() {
	_ = o.conn.SetWriteDeadline(time.Now().Add(endChunkTimeout))
	_, _ = o.conn.Write([]byte("0\r\n\r\n"))
	_ = o.conn.Close()
}

// detach takes the stream's connection off net/http where it can, and
// returns the context the stream goes on under: it ends when the client
// leaves or the bridge shuts down. After detach, the stream must not touch
// its request or ResponseWriter: the handler has returned.
func (ls *legacyStream) detach() (context.Context, bool) {
	out, ok := ls.out.(responseOut)
	if !ok || ls.r.ProtoMajor != 1 || ls.r.ProtoMinor != 1 || out.w.Header().Get("Content-Encoding") != "" {
		return nil, false
	}
	conn, _, err := out.rc.Hijack()
	if err != nil {
		return nil, false // not a net/http HTTP/1.1 connection after all
	}
	ctx, cancel := context.WithCancel(ls.b.background)
	gone := make(chan struct{})
	go watchClient(conn, gone, cancel)
	ls.out, ls.r, ls.clientGone = chunkedOut{conn: conn}, nil, gone
	return ctx, true
}

// watchClient closes gone and cancels the stream once the client leaves.
// A legacy client sends nothing on its stream's connection after the
// request, so anything it sends ends the stream too, as a read error does;
// the stream closing the connection ends the watch.
func watchClient(conn net.Conn, gone chan<- struct{}, cancel context.CancelFunc) {
	defer cancel()
	defer close(gone)
	var b [1]byte
	_, _ = conn.Read(b[:])
}
