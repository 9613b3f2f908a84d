package ingest

// Admission: what a request or a connection may cost before it is served.
//
// fasthttp would read a whole body into memory before calling the handler,
// sized by the Content-Length the client declares, so a client declaring
// 4 MiB and sending nothing more pinned 4 MiB. The server therefore runs
// with StreamRequestBody: fasthttp reads ahead at most 8 KiB of a body, and
// the handler reads the rest into a pooled buffer only after
//
//  1. a write key in the headers (Basic auth, ?writeKey=) is known (else
//     401, the body unread);
//  2. the declared length fits RequestBytesMax (else 413, after discarding
//     the body, so that the client reads the answer instead of a reset);
//  3. the declared length is reserved from BodyBytesBudget, shared by every
//     connection (else 503 with Retry-After, the body unread).
//
// A request with an unknown Basic write key that declares a body fasthttp
// would not discard after the answer (bodyDiscardBytes), or announces
// Expect: 100-continue, has its body hidden from fasthttp by headerReceived
// before the read-ahead: it is answered 401 at once and its connection
// closed. Connections past ConnectionsMax are answered by connLimiter.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// bodyDiscardBytes is the unread body fasthttp discards after an answer to
// keep the connection (its maxUnreadStreamBodySize); past it, it closes.
const bodyDiscardBytes = 256 << 10

// pooledBytesMax bounds the memory a pooled request state may keep: one
// that grew past it for a large request is left to the collector rather
// than pinned in the pool.
const pooledBytesMax = 1 << 20

// bodyReadChunkBytes is the first buffer size for a body read from the
// stream, and the unit of reservation for bodies of unknown length.
const bodyReadChunkBytes = 16 << 10

// budget is a count of bytes shared by every connection.
type budget struct {
	max  int64
	used atomic.Int64
}

// reserve takes n bytes if they fit.
func (b *budget) reserve(n int64) bool {
	for {
		u := b.used.Load()
		if u+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *budget) release(n int64) {
	if b.used.Add(-n) < 0 {
		panic("BUG: body budget released more than was reserved")
	}
}

// reserve takes n more bytes of the body budget for the request of st.
func (s *Server) reserve(st *reqState, n int) bool {
	if n <= 0 {
		return true
	}
	if !s.budget.reserve(int64(n)) {
		return false
	}
	st.reserved += int64(n)
	return true
}

// releaseAll gives back what the request of st reserved.
func (s *Server) releaseAll(st *reqState) {
	if st.reserved > 0 {
		s.budget.release(st.reserved)
		st.reserved = 0
	}
}

// admitError is an answer given before or while a body is read.
type admitError struct {
	status int
	reason string // metrics reason; "" counts nothing
	msg    string
}

// wireBody returns the request body as sent, reserved from the budget:
// fasthttp's buffer for a request read whole (in-memory requests), or
// st.raw filled from the body stream.
func (s *Server) wireBody(ctx *fasthttp.RequestCtx, st *reqState) ([]byte, *admitError) {
	stream := ctx.RequestBodyStream()
	if stream == nil {
		body := ctx.PostBody()
		if len(body) > s.opts.RequestBytesMax {
			return nil, s.tooLarge()
		}
		if !s.reserve(st, len(body)) {
			return nil, s.overBudget()
		}
		return body, nil
	}
	n := ctx.Request.Header.ContentLength()
	if n > s.opts.RequestBytesMax {
		// Read and drop what the client sends, so it reads the 413 rather
		// than a reset; a body beyond sense is answered at once (fasthttp
		// then closes the connection).
		if n <= 4*s.opts.RequestBytesMax {
			io.CopyN(io.Discard, stream, int64(n))
		}
		return nil, s.tooLarge()
	}
	if n >= 0 && !s.reserve(st, n) {
		return nil, s.overBudget()
	}
	buf, aerr := s.readStream(st, stream, n)
	st.raw = buf
	return buf, aerr
}

// readStream reads a body of declared length n (-1: chunked) into st.raw,
// growing it as bytes arrive, so a client that stalls holds only what it
// sent. A chunked body is reserved as it grows.
func (s *Server) readStream(st *reqState, r io.Reader, n int) ([]byte, *admitError) {
	limit := n
	if n < 0 {
		limit = s.opts.RequestBytesMax + 1 // one more byte tells too large
	}
	buf := st.raw[:0]
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			grow := min(limit-len(buf), max(cap(buf), bodyReadChunkBytes))
			if n < 0 && !s.reserve(st, grow) {
				return buf, s.overBudget()
			}
			buf = append(buf[:cap(buf)], make([]byte, grow)...)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			break
		}
		if err != nil {
			return buf, s.readFailed(err)
		}
	}
	switch {
	case n < 0 && len(buf) > s.opts.RequestBytesMax:
		return buf, s.tooLarge()
	case n >= 0 && len(buf) < n:
		return buf, &admitError{fasthttp.StatusBadRequest, "truncated_body", fmt.Sprintf("body ended after %d of %d bytes", len(buf), n)}
	}
	return buf, nil
}

func (s *Server) tooLarge() *admitError {
	return &admitError{fasthttp.StatusRequestEntityTooLarge, "request_too_large", fmt.Sprintf("body exceeds %d bytes", s.opts.RequestBytesMax)}
}

func (s *Server) overBudget() *admitError {
	return &admitError{fasthttp.StatusServiceUnavailable, "body_budget", "too much request body in flight; retry later"}
}

func (s *Server) readFailed(err error) *admitError {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &admitError{fasthttp.StatusRequestTimeout, "read_timeout", "request body not received in time"}
	}
	return &admitError{fasthttp.StatusBadRequest, "truncated_body", "cannot read request body: " + err.Error()}
}

// headerReceived runs once a request's headers are read, before fasthttp
// reads any of its body. A request whose Basic write key is unknown and
// whose body would otherwise be waited for, read ahead or left on the
// connection (larger than bodyDiscardBytes, chunked, or behind Expect:
// 100-continue) gets its body hidden: the handler answers 401 at once and
// the connection closes, as the unread body would otherwise be parsed as
// the next request. Smaller bodies are left to the handler's check, and
// fasthttp discards them after the 401 so the connection stays usable.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	n := h.ContentLength()
	if n == 0 || n == -2 || (n > 0 && n <= bodyDiscardBytes && len(h.Peek("Expect")) == 0) {
		return fasthttp.RequestConfig{}
	}
	var scratch [128]byte
	key, ok := basicKey(h.Peek("Authorization"), scratch[:0])
	if !ok {
		return fasthttp.RequestConfig{}
	}
	if _, known := s.keys[string(key)]; known {
		return fasthttp.RequestConfig{}
	}
	h.SetContentLength(0)
	h.Del("Expect")
	h.SetConnectionClose()
	return fasthttp.RequestConfig{}
}

// basicKey returns the user name of an HTTP Basic Authorization header
// (the write key, with or without the colon), appended to dst.
func basicKey(auth, dst []byte) ([]byte, bool) {
	if len(auth) <= 6 || !bytes.EqualFold(auth[:6], []byte("basic ")) {
		return dst[:0], false
	}
	enc := bytes.TrimSpace(auth[6:])
	n := base64.StdEncoding.DecodedLen(len(enc))
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	m, err := base64.StdEncoding.Decode(dst, enc)
	if err != nil {
		return dst[:0], false
	}
	dst = dst[:m]
	if i := bytes.IndexByte(dst, ':'); i >= 0 {
		dst = dst[:i]
	}
	return dst, true
}

// poolable reports whether st is small enough to go back to the pool.
func (st *reqState) poolable() bool {
	b := &st.b
	n := cap(st.raw) + cap(st.body) + cap(b.out) + cap(b.fields) +
		cap(b.meta)*int(unsafe.Sizeof(eventMeta{})) + cap(b.recs)*int(unsafe.Sizeof(b.recs[:1][0])) +
		cap(b.events)*int(unsafe.Sizeof(rawEvent{})) + cap(b.members)*int(unsafe.Sizeof(member{})) +
		cap(b.ctxMembers)*int(unsafe.Sizeof(ctxMember{}))
	return n <= pooledBytesMax
}

// putState returns st to the pool unless it grew too large.
func (s *Server) putState(st *reqState) {
	if st.poolable() {
		s.states.Put(st)
	}
}

// connLimiter admits at most max open connections. Past it, a new
// connection is answered 503 with Retry-After and a JSON body, then closed:
// fasthttp's own answer to its Concurrency limit is plain text.
type connLimiter struct {
	net.Listener
	max      int64
	open     *atomic.Int64
	answer   []byte
	rejected func()
}

func newConnLimiter(ln net.Listener, max int, open *atomic.Int64, retryAfter time.Duration, rejected func()) *connLimiter {
	body := `{"success":false,"error":"too many connections; retry later"}`
	answer := "HTTP/1.1 503 Service Unavailable\r\nServer: sluice\r\nConnection: close\r\n" +
		"Content-Type: application/json\r\nRetry-After: " + strconv.Itoa(retryAfterSeconds(retryAfter)) +
		"\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	return &connLimiter{Listener: ln, max: int64(max), open: open, answer: []byte(answer), rejected: rejected}
}

// rejectWriteTimeout bounds the write of the answer to a refused
// connection; the answer fits any socket buffer, so it only guards against
// a broken one.
const rejectWriteTimeout = time.Second

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.rejected()
		c.SetWriteDeadline(time.Now().Add(rejectWriteTimeout))
		c.Write(l.answer)
		c.Close()
	}
}

// limitedConn gives its slot back once, on Close.
type limitedConn struct {
	net.Conn
	l      *connLimiter
	closed sync.Once
}

func (c *limitedConn) Close() error {
	c.closed.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

func retryAfterSeconds(d time.Duration) int { return max(int(d/time.Second), 1) }
