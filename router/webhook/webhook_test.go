package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

type captured struct {
	method, path, ctype, mid, batch, sig, custom string
	body                                         []byte
}

func server(t *testing.T, status int, extra func(http.ResponseWriter)) (*httptest.Server, func() []captured) {
	var mu sync.Mutex
	var got []captured
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, captured{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("X-Sluice-Message-Id"),
			r.Header.Get("X-Sluice-Batch-Size"), r.Header.Get("X-Sluice-Signature"), r.Header.Get("X-Api-Key"), b})
		mu.Unlock()
		if extra != nil {
			extra(w)
		}
		w.WriteHeader(status)
		io.WriteString(w, `{"ok":false,"why":"because"}`)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []captured { mu.Lock(); defer mu.Unlock(); return append([]captured(nil), got...) }
}

func ev(mid, payload string) router.Event {
	return router.Event{MessageID: []byte(mid), Payload: []byte(payload)}
}

func TestSingleEventRequest(t *testing.T) {
	srv, got := server(t, 200, nil)
	w, err := New(Config{URL: srv.URL + "/hook", Headers: map[string]string{"X-Api-Key": "k1"}, Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	res := w.Send(context.Background(), []router.Event{ev("m-1", `{"a":1}`)})
	if res.Err != nil || res.Status != 200 {
		t.Fatalf("result %+v", res)
	}
	c := got()[0]
	if c.method != "POST" || c.path != "/hook" || c.ctype != "application/json" || c.mid != "m-1" || c.custom != "k1" || string(c.body) != `{"a":1}` {
		t.Fatalf("request %+v", c)
	}
	mac := hmac.New(sha256.New, []byte("s3cret"))
	mac.Write(c.body)
	if c.sig != "sha256="+hex.EncodeToString(mac.Sum(nil)) {
		t.Fatalf("signature %q", c.sig)
	}
	if res := w.Send(context.Background(), []router.Event{ev("a", "{}"), ev("b", "{}")}); res.Err == nil {
		t.Fatal("two events accepted by a non-batching webhook")
	}
}

func TestBatchRequest(t *testing.T) {
	srv, got := server(t, 202, nil)
	w, _ := New(Config{URL: srv.URL, Batch: true, Method: "PUT"})
	res := w.Send(context.Background(), []router.Event{ev("a", `{"n":1}`), ev("b", `{"n":2}`)})
	if res.Status != 202 {
		t.Fatalf("result %+v", res)
	}
	c := got()[0]
	var arr []map[string]int
	if err := json.Unmarshal(c.body, &arr); err != nil || len(arr) != 2 || arr[1]["n"] != 2 || c.batch != "2" || c.method != "PUT" || c.mid != "" {
		t.Fatalf("batch request %+v (%v)", c, err)
	}
}

func TestErrorAnswers(t *testing.T) {
	srv, _ := server(t, 429, func(w http.ResponseWriter) { w.Header().Set("Retry-After", "7") })
	w, _ := New(Config{URL: srv.URL})
	res := w.Send(context.Background(), []router.Event{ev("a", "{}")})
	if res.Status != 429 || res.RetryAfter != 7*time.Second || !strings.Contains(string(res.Body), "because") {
		t.Fatalf("429 result %+v", res)
	}
	// Connection refused: an error, not ambiguous.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	w2, _ := New(Config{URL: "http://" + addr})
	if res := w2.Send(context.Background(), []router.Event{ev("a", "{}")}); res.Err == nil || res.Status != 0 {
		t.Fatalf("refused result %+v", res)
	}
	// A timeout after the request was written is ambiguous.
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(300 * time.Millisecond) }))
	defer slow.Close()
	w3, _ := New(Config{URL: slow.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if res := w3.Send(ctx, []router.Event{ev("a", "{}")}); res.Err == nil || !res.Ambiguous {
		t.Fatalf("timeout result %+v", res)
	}
}

func TestConfigAndRetryAfter(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "/relative", "http://"} {
		if _, err := New(Config{URL: u}); err == nil {
			t.Errorf("url %q accepted", u)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := map[string]time.Duration{"3": 3 * time.Second, "-1": 0, "junk": 0, "99999": time.Hour,
		now.Add(90 * time.Second).Format(time.RFC1123): 90 * time.Second}
	for in, want := range cases {
		if got := parseRetryAfter([]byte(in), now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", in, got, want)
		}
	}
}

// With PartialFailures, an answer naming refused events (by index or by
// messageId) comes back as Rejected; without it, or for a server error, the
// status stands for the whole batch; an answer naming an event that cannot
// be told is an error (the batch is retried), never "the rest was taken".
func TestPartialFailures(t *testing.T) {
	body := `{"rejected":[{"index":2,"status":422,"error":"bad"},{"messageId":"m-1"},{"index":2}]}`
	want := []router.Rejection{
		{Index: 2, Status: 422, Reason: []byte(`{"index":2,"status":422,"error":"bad"}`)},
		{Index: 1, Status: 400, Reason: []byte(`{"messageId":"m-1"}`)},
	}
	for _, tc := range []struct {
		name    string
		status  int
		partial bool
		body    string
		want    []router.Rejection
		err     bool
	}{
		{"named-200", 200, true, body, want, false},
		{"named-400", 400, true, body, want, false},
		{"server-error", 500, true, body, nil, false},
		{"option-off", 200, false, body, nil, false},
		{"index-out-of-range", 200, true, `{"rejected":[{"index":0},{"index":9}]}`, nil, true},
		{"unknown-message-id", 400, true, `{"rejected":[{"messageId":"nope"}]}`, nil, true},
		{"bad-entry", 200, true, `{"rejected":[{"index":"1"}]}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			w, err := New(Config{URL: srv.URL, Batch: true, PartialFailures: tc.partial})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			res := w.Send(context.Background(), []router.Event{ev("m-0", `{}`), ev("m-1", `{}`), ev("m-2", `{}`)})
			if tc.err {
				if res.Err == nil || res.Status != 0 || res.Rejected != nil {
					t.Fatalf("result %+v, want an error", res)
				}
				return
			}
			if res.Err != nil || res.Status != tc.status || len(res.Rejected) != len(tc.want) {
				t.Fatalf("result %+v, want status %d and rejected %+v", res, tc.status, tc.want)
			}
			for i, r := range res.Rejected {
				if w := tc.want[i]; r.Index != w.Index || r.Status != w.Status || string(r.Reason) != string(w.Reason) {
					t.Errorf("rejection %d: %+v (reason %s), want %+v (reason %s)", i, r, r.Reason, w, w.Reason)
				}
			}
		})
	}
	// Two events of a batch with one messageId: each name takes the next.
	dup := []router.Event{ev("m-0", `{}`), ev("d", `{}`), ev("d", `{}`)}
	got, err := parseRejected([]byte(`{"rejected":[{"messageId":"d"},{"messageId":"d"}]}`), dup)
	if err != nil || len(got) != 2 || got[0].Index != 1 || got[1].Index != 2 {
		t.Errorf("duplicate messageIds: %+v %v", got, err)
	}
	// A body that is not such an answer names nothing.
	for _, b := range []string{`{"ok":true}`, `not json "rejected"`, `{"rejected":"all"}`} {
		if got, err := parseRejected([]byte(b), []router.Event{ev("m-0", `{}`)}); got != nil || err != nil {
			t.Errorf("body %s: rejected %+v, %v", b, got, err)
		}
	}
}

// An answer is read up to ResponseBytesMax and the rest left unread: a 2xx
// with a huge body has delivered (it used to fail as "body too large", an
// ambiguous error retried for ever), and the connection pool still works.
func TestHugeAnswer(t *testing.T) {
	const huge = 50 << 20
	chunk := []byte(strings.Repeat("x", 64<<10))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/small" {
			io.WriteString(w, `{"ok":true}`)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(huge))
		for sent := 0; sent < huge; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return // the client hung up after the cap
			}
		}
	}))
	defer srv.Close()
	for _, batch := range []bool{false, true} {
		w, err := New(Config{URL: srv.URL, Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			res := w.Send(context.Background(), []router.Event{ev("m-1", `{}`)})
			if res.Err != nil || res.Status != 200 || len(res.Body) == 0 || len(res.Body) > 4096 {
				t.Fatalf("batch=%v: result %+v (body %d bytes), want 200", batch, res.Err, len(res.Body))
			}
		}
		w.cfg.URL = srv.URL + "/small"
		if res := w.Send(context.Background(), []router.Event{ev("m-2", `{}`)}); res.Err != nil || string(res.Body) != `{"ok":true}` {
			t.Fatalf("after huge answers: status %d, err %v, body %q", res.Status, res.Err, res.Body)
		}
		w.Close()
	}
}

// A partial-failures answer is trusted only whole: one of exactly
// ResponseBytesMax is parsed, a longer one fails the request (the batch is
// retried), never taken as "the rest was delivered".
func TestPartialAnswerCap(t *testing.T) {
	answer := func(size int) string {
		a := `{"rejected":[{"index":1,"status":400}],"pad":"`
		return a + strings.Repeat("p", size-len(a)-2) + `"}`
	}
	for _, tc := range []struct {
		size int
		ok   bool
	}{{1 << 10, true}, {ResponseBytesMax, true}, {ResponseBytesMax + 1, false}, {4 << 20, false}} {
		body := answer(tc.size)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, body)
		}))
		w, _ := New(Config{URL: srv.URL, Batch: true, PartialFailures: true})
		res := w.Send(context.Background(), []router.Event{ev("m-0", `{}`), ev("m-1", `{}`)})
		if tc.ok {
			if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 {
				t.Errorf("answer of %d bytes: status %d, err %v, rejected %+v, want event 1 rejected", tc.size, res.Status, res.Err, res.Rejected)
			}
		} else if !errors.Is(res.Err, ErrAnswerTooLarge) || !res.Ambiguous || res.Status != 0 || res.Rejected != nil {
			t.Errorf("answer of %d bytes: status %d, err %v, ambiguous %v, rejected %+v, want ErrAnswerTooLarge", tc.size, res.Status, res.Err, res.Ambiguous, res.Rejected)
		}
		// Without partial failures the status stands, whatever the size.
		w2, _ := New(Config{URL: srv.URL, Batch: true})
		if res := w2.Send(context.Background(), []router.Event{ev("m-0", `{}`)}); res.Err != nil || res.Status != 200 {
			t.Errorf("answer of %d bytes, option off: status %d, err %v", tc.size, res.Status, res.Err)
		}
		w.Close()
		w2.Close()
		srv.Close()
	}
}
