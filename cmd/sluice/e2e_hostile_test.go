package main

// Hostile clients against the real binary: memory stays bounded while many
// connections declare large bodies and send none, and every refusal (401
// before the body, 413 for a body too large, 503 past the body budget or
// past connections_max) is a JSON answer, with Retry-After for 503.
//
//	go test ./cmd/sluice -run E2EHostile -count=1 -v

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// declaredBodyBytes is the Content-Length the hostile clients declare: the
// default request_bytes_max, so nothing refuses it for its size.
const declaredBodyBytes = 4 << 20

// dialHeaders opens a connection and sends a POST's headers (plus extra
// header lines) declaring a body of n bytes, and none of the body.
func dialHeaders(t *testing.T, addr, path string, n int, extra ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("cannot connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", path, addr, n)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatalf("cannot send headers: %v", err)
	}
	return c
}

func basicHeader(key string) string {
	return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"))
}

// readAnswer reads one response from c and checks that it is a JSON error
// with the status wanted (and Retry-After for 503).
func readAnswer(t *testing.T, c net.Conn, want int) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("want a %d answer, got %v", want, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("cannot read the %d answer's body: %v", resp.StatusCode, err)
	}
	checkJSONError(t, resp, body, want)
	return resp
}

func checkJSONError(t *testing.T, resp *http.Response, body []byte, want int) {
	t.Helper()
	var e struct {
		Success *bool  `json:"success"`
		Error   string `json:"error"`
	}
	if resp.StatusCode != want {
		t.Fatalf("status %d, want %d; body %q", resp.StatusCode, want, body)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
		json.Unmarshal(body, &e) != nil || e.Success == nil || *e.Success || e.Error == "" {
		t.Fatalf("%d answer is not a JSON error: %s %q", want, resp.Header.Get("Content-Type"), body)
	}
	if want == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
			t.Fatalf("503 without a Retry-After in seconds: %q", resp.Header.Get("Retry-After"))
		}
	}
}

// vmRSSBytes reads the resident memory of process pid.
func vmRSSBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("cannot read the server's memory: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// waitAllRead waits until the server listening on port has accepted every
// connection made to it and read everything sent on them: its listening
// socket's accept queue and every established socket's receive queue are
// empty (/proc/net/tcp). It is how the test knows the server has seen
// every request's headers, whatever it does with them.
func waitAllRead(t *testing.T, port int) {
	t.Helper()
	want := fmt.Sprintf(":%04X", port)
	for {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatalf("cannot read /proc/net/tcp: %v", err)
		}
		pending := 0
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx_queue:rx_queue ...; a
			// listening socket (0A) counts its accept queue as rx_queue.
			if len(f) < 5 || !strings.HasSuffix(f[1], want) || (f[3] != "01" && f[3] != "0A") {
				continue
			}
			if !strings.HasSuffix(f[4], ":00000000") {
				pending++
			}
		}
		if pending == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serverPort(t *testing.T, p *sluiceProc) int {
	t.Helper()
	_, ps, _ := net.SplitHostPort(p.addr)
	port, err := strconv.Atoi(ps)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func postEvent(t *testing.T, p *sluiceProc, key string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", p.url+"/v1/track", strings.NewReader(`{"userId":"u1","event":"Still Served"}`))
	req.SetBasicAuth(key, "")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST /v1/track: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestE2EHostileConnectionsMemory opens 1,000 connections that each
// declare a 4 MiB body and send none (a quarter with an unknown write key,
// a quarter with a valid one, half with none) and checks that the server's
// resident memory grows by far less than reserving the declared bodies
// would cost (4 GiB); that the unknown keys are answered 401 without the
// body; and that the server still serves.
func TestE2EHostileConnectionsMemory(t *testing.T) {
	const conns = 1000
	p := startServer(t, t.TempDir())
	pid := p.cmd.Process.Pid
	before := vmRSSBytes(t, pid)
	var unknown []net.Conn
	for i := range conns {
		switch i % 4 {
		case 0:
			unknown = append(unknown, dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes, basicHeader("wk_nobody_knows")))
		case 1:
			dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes, basicHeader(srcWeb.key))
		default:
			dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes)
		}
	}
	waitAllRead(t, serverPort(t, p))
	if code := postEvent(t, p, srcWeb.key); code != http.StatusOK {
		t.Fatalf("a normal request under the hostile load answered %d", code)
	}
	after := vmRSSBytes(t, pid)
	// Reserving every declared body would cost conns * 4 MiB = 4 GiB; a
	// bounded server stays within its budget (256 MiB by default) plus the
	// connections' own buffers. The bound is a memory bound, with a wide
	// margin: an eighth of what unbounded reservation costs.
	grew := after - before
	t.Logf("VmRSS %d MiB before, %d MiB with %d hostile connections (+%d MiB; unbounded: %d MiB)",
		before>>20, after>>20, conns, grew>>20, conns*declaredBodyBytes>>20)
	if limit := int64(conns) * declaredBodyBytes / 8; grew > limit {
		t.Fatalf("resident memory grew by %d MiB for %d connections that sent no body (limit %d MiB)", grew>>20, conns, limit>>20)
	}
	for _, c := range unknown {
		readAnswer(t, c, http.StatusUnauthorized)
	}
}

// TestE2EHostileRefusals checks each refusal of a request that costs
// memory: an unknown key before the body, a 5 MB body, the body budget.
func TestE2EHostileRefusals(t *testing.T) {
	p := startServer(t, t.TempDir())

	t.Run("unknown key answered before the body", func(t *testing.T) {
		c := dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes, basicHeader("wk_nobody_knows"))
		if resp := readAnswer(t, c, http.StatusUnauthorized); !resp.Close {
			t.Fatal("the connection stays open with an unread body on it")
		}
		// The client waiting for 100-continue gets the 401 instead.
		c = dialHeaders(t, p.addr, "/v1/track", declaredBodyBytes, basicHeader("wk_nobody_knows"), "Expect: 100-continue")
		readAnswer(t, c, http.StatusUnauthorized)
	})

	t.Run("5 MB body without Expect gets a JSON 413", func(t *testing.T) {
		body := bytes.Repeat([]byte(" "), 5_000_000)
		copy(body, `{"batch":[]}`)
		req, _ := http.NewRequest("POST", p.url+"/v1/batch", bytes.NewReader(body))
		req.SetBasicAuth(srcWeb.key, "")
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			t.Fatalf("want a 413 answer, got %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkJSONError(t, resp, b, http.StatusRequestEntityTooLarge)
	})

	t.Run("body budget", func(t *testing.T) {
		// The default budget is 64 request_bytes_max: 64 bodies of 4 MiB that
		// have started to arrive hold it all.
		const holders = 64
		prefix := bytes.Repeat([]byte(" "), 16<<10)
		var held []net.Conn
		for range holders {
			c := dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes, basicHeader(srcWeb.key))
			if _, err := c.Write(prefix); err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		waitMetric(t, p, "sluice_ingest_body_bytes_reserved", holders*declaredBodyBytes)
		c := dialHeaders(t, p.addr, "/v1/batch", declaredBodyBytes, basicHeader(srcWeb.key))
		c.Write(prefix)
		readAnswer(t, c, http.StatusServiceUnavailable)
		// A small request is refused too while the budget is spent...
		if code := postEvent(t, p, srcWeb.key); code != http.StatusServiceUnavailable {
			t.Fatalf("small request with the budget spent: %d, want 503", code)
		}
		// ...and served once the holders give up.
		for _, c := range held {
			c.Close()
		}
		waitMetric(t, p, "sluice_ingest_body_bytes_reserved", 0)
		if code := postEvent(t, p, srcWeb.key); code != http.StatusOK {
			t.Fatalf("after the budget was released: %d, want 200", code)
		}
	})
}

// waitMetric waits until an unlabelled series of /metrics has value v.
func waitMetric(t *testing.T, p *sluiceProc, name string, v float64) {
	t.Helper()
	for p.metric(t, name) != v {
		time.Sleep(10 * time.Millisecond)
	}
}

// TestE2EHostileConnectionsMax fills connections_max and checks that one
// more connection is answered with a JSON 503 and Retry-After, and that a
// slot freed is used again.
func TestE2EHostileConnectionsMax(t *testing.T) {
	const max = 8
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	p := startServerWith(t, t.TempDir(), fmt.Sprintf("ingest:\n  connections_max: %d\n", max))
	// The start-up probe's keep-alive connection would hold a slot.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	var open []net.Conn
	for len(open) < max {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: %s\r\n\r\n", p.addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			open = append(open, c) // keep-alive: it holds a slot
			continue
		}
		// A slot was still held by the probe's connection, closing: retry.
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	// One more is answered at once, before it sends anything.
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readAnswer(t, c, http.StatusServiceUnavailable)
	open[0].Close()
	for {
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(p.url + "/health")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}
