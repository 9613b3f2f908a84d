package ingest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serve runs the harness's server on a 127.0.0.1 listener.
func (h *harness) serve() string {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	go h.srv.Serve(ln)
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// sendHeaders opens a connection and sends a POST's headers declaring a
// body of n bytes (-1: chunked), plus extra header lines.
func sendHeaders(t *testing.T, addr, path string, n int, extra ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n", path)
	if n >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", n)
	} else {
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	return c
}

// answer reads one response and checks its status; an error answer must
// be JSON with a message, and a 503 must carry Retry-After.
func answer(t *testing.T, br *bufio.Reader, status int) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("want a %d answer: %v", status, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, resp2(resp, body), status)
	if status == 503 {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			t.Fatalf("503 without Retry-After: %q", resp.Header.Get("Retry-After"))
		}
	}
	return resp
}

func resp2(r *http.Response, body []byte) resp { return resp{status: r.StatusCode, body: string(body)} }

// paddedBatch is a valid one-event batch of exactly n bytes.
func paddedBatch(n int) []byte {
	head := `{"batch":[{"type":"track","userId":"u","event":"Padded"}],"pad":"`
	return []byte(head + strings.Repeat("x", n-len(head)-2) + `"}`)
}

// waitReserved waits until the body budget holds n bytes, as /metrics
// shows it.
func (h *harness) waitReserved(n int) {
	h.t.Helper()
	const name = "\nsluice_ingest_body_bytes_reserved "
	for {
		m := h.do("GET", "/metrics", nil).body
		i := strings.Index(m, name)
		if i < 0 {
			h.t.Fatalf("/metrics lacks%s", name)
		}
		v, _, _ := strings.Cut(m[i+len(name):], "\n")
		if v == strconv.Itoa(n) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func TestUnknownHeaderKeyRefusedBeforeBody(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.ReadTimeout = 5 * time.Second })
	addr := h.serve()
	// A large declared body that never comes: 401 at once, and the
	// connection closes (the body would be read as the next request).
	c := sendHeaders(t, addr, "/v1/batch", 4<<20, basic("NOPE:"))
	if r := answer(t, bufio.NewReader(c), 401); !r.Close {
		t.Fatal("connection kept open with an unread body")
	}
	// Behind Expect: 100-continue, the 401 comes instead of the 100.
	c = sendHeaders(t, addr, "/v1/track", 1000, basic("NOPE:"), "Expect: 100-continue")
	answer(t, bufio.NewReader(c), 401)
	// A small body half sent, key in the query: refused without the rest.
	c = sendHeaders(t, addr, "/v1/batch?writeKey=NOPE", 20000)
	c.Write(bytes.Repeat([]byte(" "), 9000))
	answer(t, bufio.NewReader(c), 401)
	h.waitReserved(0)
	if n := len(h.stored()); n != 0 {
		t.Fatalf("stored %d", n)
	}
}

func TestBodyBudget(t *testing.T) {
	const max = 64 << 10
	h := newHarness(t, func(o *Options) { o.RequestBytesMax = max; o.BodyBytesBudget = 2 * max })
	addr := h.serve()
	body := paddedBatch(max)
	var holders []net.Conn
	for range 2 {
		c := sendHeaders(t, addr, "/v1/batch", max, basic("KEY1:"))
		c.Write(body[:10<<10]) // past fasthttp's 8 KiB read-ahead
		holders = append(holders, c)
	}
	h.waitReserved(2 * max)
	c := sendHeaders(t, addr, "/v1/batch", max, basic("KEY1:"))
	c.Write(body[:10<<10])
	answer(t, bufio.NewReader(c), 503)
	for _, c := range holders {
		c.Write(body[10<<10:])
		answer(t, bufio.NewReader(c), 200)
	}
	h.waitReserved(0)
	if n := len(h.stored()); n != 2 {
		t.Fatalf("stored %d, want 2", n)
	}
}

// TestBodyBudgetAccounting drives the budget through the handler: it is
// charged for the body and for what gzip decompresses, and every request
// gives back what it took, whatever its answer.
func TestBodyBudgetAccounting(t *testing.T) {
	const max = 64 << 10
	h := newHarness(t, func(o *Options) { o.RequestBytesMax = max; o.BodyBytesBudget = 2 * max; o.EventBytesMax = 1 << 10 })
	ev := []byte(`{"type":"track","userId":"u"}`)
	for _, c := range []struct {
		body    []byte
		headers []string
		status  int
	}{
		{ev, []string{basic("KEY1:")}, 200},
		{[]byte(`{"type":"track"}`), []string{basic("KEY1:")}, 400},
		{ev, []string{basic("NOPE:")}, 401},
		{gz(ev), []string{basic("KEY1:"), "Content-Encoding: gzip"}, 200},
		{gz(bytes.Repeat([]byte(" "), 2*max)), []string{basic("KEY1:"), "Content-Encoding: gzip"}, 413},
		{paddedBatch(max + 1), []string{basic("KEY1:")}, 413},
	} {
		wantStatus(t, h.do("POST", "/v1/track", c.body, c.headers...), c.status)
		if used := h.srv.budget.used.Load(); used != 0 {
			t.Fatalf("status %d left %d bytes reserved", c.status, used)
		}
	}
	// With most of the budget held elsewhere, a body or its decompressed
	// bytes that do not fit are refused with 503.
	if !h.srv.budget.reserve(2*max - 1000) {
		t.Fatal("cannot reserve")
	}
	wantStatus(t, h.do("POST", "/v1/track", paddedBatch(2000), basic("KEY1:")), 503)
	padded := gz(append(bytes.Repeat([]byte(" "), 3000), ev...))
	wantStatus(t, h.do("POST", "/v1/track", padded, basic("KEY1:"), "Content-Encoding: gzip"), 503)
	h.srv.budget.release(2*max - 1000)
	wantStatus(t, h.do("POST", "/v1/track", padded, basic("KEY1:"), "Content-Encoding: gzip"), 200)
	if used := h.srv.budget.used.Load(); used != 0 {
		t.Fatalf("%d bytes left reserved", used)
	}
}

func TestBodyTooLargeAnswered413(t *testing.T) {
	const max = 64 << 10
	h := newHarness(t, func(o *Options) { o.RequestBytesMax = max })
	addr := h.serve()
	// The whole body is sent, without Expect: the client reads a 413, and
	// the connection serves its next request.
	c := sendHeaders(t, addr, "/v1/batch", 3*max, basic("KEY1:"))
	go c.Write(paddedBatch(3 * max))
	br := bufio.NewReader(c)
	answer(t, br, 413)
	fmt.Fprintf(c, "POST /v1/track HTTP/1.1\r\nHost: test\r\n%s\r\nContent-Length: 29\r\n\r\n{\"type\":\"track\",\"userId\":\"u\"}", basic("KEY1:"))
	answer(t, br, 200)
	// Chunked: too large once the chunks pass the limit.
	c = sendHeaders(t, addr, "/v1/batch", -1, basic("KEY1:"))
	go func(c net.Conn) {
		for range 3 {
			fmt.Fprintf(c, "%x\r\n%s\r\n", max, bytes.Repeat([]byte(" "), max))
		}
		io.WriteString(c, "0\r\n\r\n")
	}(c)
	answer(t, bufio.NewReader(c), 413)
	// A chunked body within the limit is stored.
	c = sendHeaders(t, addr, "/v1/batch", -1, basic("KEY1:"))
	b := paddedBatch(40 << 10)
	fmt.Fprintf(c, "%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", 20<<10, b[:20<<10], len(b)-20<<10, b[20<<10:])
	answer(t, bufio.NewReader(c), 200)
	h.waitReserved(0)
}

func TestConnectionsMaxAnswersJSON(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.ConnectionsMax = 2 })
	addr := h.serve()
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /version HTTP/1.1\r\nHost: test\r\n\r\n")
		answer(t, bufio.NewReader(c), 200) // keep-alive: it holds a slot
		held = append(held, c)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	answer(t, bufio.NewReader(c), 503)
	if !strings.Contains(h.do("GET", "/metrics", nil).body, `sluice_ingest_rejected_events_total{reason="too_many_connections"} 1`) {
		t.Fatal("refused connection not counted")
	}
	held[0].Close()
	for { // the slot frees once the server has seen the close
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /version HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReadTimeoutAnswered408(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.ReadTimeout = 50 * time.Millisecond })
	addr := h.serve()
	c := sendHeaders(t, addr, "/v1/track", 100, basic("KEY1:"))
	c.Write([]byte(`{"type":`))
	answer(t, bufio.NewReader(c), 408)
	h.waitReserved(0)
}

func TestPooledStateDropsOversizedBuffers(t *testing.T) {
	st := &reqState{}
	if !st.poolable() {
		t.Fatal("empty state not poolable")
	}
	st.raw = make([]byte, 0, pooledBytesMax/2)
	if !st.poolable() {
		t.Fatal("state within the limit not poolable")
	}
	st.b.out = make([]byte, 0, pooledBytesMax)
	if st.poolable() {
		t.Fatal("state past the limit poolable")
	}
	st = &reqState{}
	st.b.members = make([]member, pooledBytesMax/8)
	if st.poolable() {
		t.Fatal("state with a huge members slice poolable")
	}
}
