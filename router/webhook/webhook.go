// Package webhook is the HTTP destination: each delivery is a POST (or the
// configured method) of one event's JSON, or of a JSON array of events when
// the destination batches, over pooled keep-alive connections.
//
// Headers on every request: Content-Type: application/json, the configured
// headers, X-Sluice-Message-Id (single-event requests) or
// X-Sluice-Batch-Size (batches), and, with a secret, X-Sluice-Signature:
// sha256=<hex HMAC-SHA256 of the body>.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a webhook destination.
type Config struct {
	// URL receives the requests. Required; http or https.
	URL string
	// Method is the HTTP method. Default POST.
	Method string
	// Headers are added to every request.
	Headers map[string]string
	// Batch sends a JSON array (even of one event); otherwise each request
	// carries one event object.
	Batch bool
	// Secret, if set, signs each body with HMAC-SHA256.
	Secret string
	// ConnsMax bounds connections to the host. Default 512.
	ConnsMax int
	// Timeout bounds a request when the caller's context has no deadline.
	// Default 30s.
	Timeout time.Duration
	// PartialFailures: the endpoint may answer a batch (2xx or 4xx) with a
	// JSON body naming the events it refused, and so took the others:
	//
	//	{"rejected": [{"index": 3, "status": 400, "error": "..."},
	//	              {"messageId": "m-1", "status": 503}]}
	//
	// Each names an event by its position in the array sent or by its
	// messageId; status is that event's own (default 400: refused for
	// good; 5xx, 408 and 429 retry it). Without it, or when the body names
	// none, the status stands for the whole batch. Such an answer must fit
	// in ResponseBytesMax: a longer one cannot be trusted (see Send).
	PartialFailures bool
}

// ResponseBytesMax is how much of a response body is read: enough for a
// partial answer naming every event of a large batch. The rest is not
// read (the connection is closed instead of drained), and the status
// stands: an endpoint that answers 2xx with a huge body has delivered.
const ResponseBytesMax = 64 << 10

// ErrAnswerTooLarge is a partial-failures answer longer than
// ResponseBytesMax: which events it refuses cannot be read, so the batch
// is retried (and bisected, so smaller batches get shorter answers).
var ErrAnswerTooLarge = errors.New("partial answer longer than the response cap")

// Webhook sends events over HTTP. Safe for concurrent use.
type Webhook struct {
	cfg    Config
	client *fasthttp.Client
	bufs   sync.Pool // of *bufs
}

// bufs are one request's reused buffers.
type bufs struct {
	req, resp []byte
}

// New checks the config and returns the destination.
func New(cfg Config) (*Webhook, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: url %q must be an absolute http(s) URL", cfg.URL)
	}
	if cfg.Method == "" {
		cfg.Method = fasthttp.MethodPost
	}
	if cfg.ConnsMax == 0 {
		cfg.ConnsMax = 512
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &Webhook{cfg: cfg, client: &fasthttp.Client{
		Name:                     "sluice",
		MaxConnsPerHost:          cfg.ConnsMax,
		MaxIdleConnDuration:      90 * time.Second,
		StreamResponseBody:       true, // read up to ResponseBytesMax by Send
		NoDefaultUserAgentHeader: false,
		RetryIfErr:               func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}}, nil
}

// Send delivers events as one request.
func (w *Webhook) Send(ctx context.Context, events []router.Event) router.Result {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(w.cfg.URL)
	req.Header.SetMethod(w.cfg.Method)
	req.Header.SetContentType("application/json")
	for k, v := range w.cfg.Headers {
		req.Header.Set(k, v)
	}
	bp, _ := w.bufs.Get().(*bufs)
	if bp == nil {
		bp = new(bufs)
	}
	defer w.bufs.Put(bp)
	body := bp.req[:0]
	if w.cfg.Batch {
		body = append(body, '[')
		for i, ev := range events {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(body, ev.Payload...)
		}
		body = append(body, ']')
		req.Header.Set("X-Sluice-Batch-Size", strconv.Itoa(len(events)))
	} else {
		if len(events) != 1 {
			return router.Result{Err: fmt.Errorf("webhook: %d events for a non-batching destination", len(events))}
		}
		body = append(body, events[0].Payload...)
		req.Header.SetBytesV("X-Sluice-Message-Id", events[0].MessageID)
	}
	if w.cfg.Secret != "" {
		mac := hmac.New(sha256.New, []byte(w.cfg.Secret))
		mac.Write(body)
		req.Header.Set("X-Sluice-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	}
	req.SetBodyRaw(body)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(w.cfg.Timeout)
	}
	err := w.client.DoDeadline(req, resp, deadline)
	bp.req = body
	var whole bool
	if err == nil {
		if bp.resp, whole, err = readBody(resp, bp.resp[:0]); err != nil {
			// Answered, but cut off: the events may have been taken.
			return router.Result{Err: fmt.Errorf("webhook: %w", err), Ambiguous: true}
		}
	}
	if err != nil {
		// A timeout after the request went out may have been delivered.
		// So was a request whose answer was too large to read.
		ambiguous := errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrConnectionClosed) ||
			errors.Is(err, fasthttp.ErrBodyTooLarge)
		return router.Result{Err: fmt.Errorf("webhook: %w", err), Ambiguous: ambiguous}
	}
	answer := bp.resp
	res := router.Result{Status: resp.StatusCode(), Body: bytes.Clone(capped(answer))}
	if ra := resp.Header.Peek("Retry-After"); len(ra) > 0 {
		res.RetryAfter = parseRetryAfter(ra, time.Now())
	}
	if w.cfg.PartialFailures && w.cfg.Batch && res.Status >= 200 && res.Status < 500 && len(answer) > 0 {
		if !whole {
			// It may name refused events past the cap: retried, as an
			// answer that cannot be told (the destination may have taken
			// some, so it is ambiguous).
			return router.Result{Err: fmt.Errorf("webhook: cannot read the answer to a batch of %d: %w",
				len(events), ErrAnswerTooLarge), Ambiguous: true, Body: res.Body}
		}
		rej, err := parseRejected(answer, events)
		if err != nil {
			// Some event was refused, and which is unknown: nothing of the
			// answer can be trusted, so the batch is retried (and, if it
			// keeps coming, bisected down to the event).
			return router.Result{Err: err, Body: res.Body}
		}
		res.Rejected = rej
	}
	return res
}

// readBody appends the streamed response body to dst, at most
// ResponseBytesMax bytes, and closes the stream: whole reports that it was
// all read. A longer body's rest is left unread and its connection closed.
func readBody(resp *fasthttp.Response, dst []byte) (_ []byte, whole bool, err error) {
	stream := resp.BodyStream()
	if stream == nil { // no body (204, HEAD) or already buffered
		return append(dst, resp.Body()...), true, nil
	}
	for len(dst) <= ResponseBytesMax {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, rerr := stream.Read(dst[len(dst):min(cap(dst), ResponseBytesMax+1)])
		dst = dst[:len(dst)+n]
		if rerr == io.EOF {
			return dst, true, resp.CloseBodyStream()
		}
		if rerr != nil {
			closeStream(resp, stream, rerr)
			return dst, false, fmt.Errorf("cannot read response body: %w", rerr)
		}
	}
	// One byte past the cap tells a longer body from one of exactly the cap.
	closeStream(resp, stream, fasthttp.ErrBodyTooLarge)
	return dst[:ResponseBytesMax], false, nil
}

// closeStream closes a body stream left unread: its connection is not
// reused.
func closeStream(resp *fasthttp.Response, stream io.Reader, why error) {
	if c, ok := stream.(fasthttp.ReadCloserWithError); ok {
		c.CloseWithError(why)
		return
	}
	resp.CloseBodyStream()
}

// parseRejected reads the events a partial answer names (see
// Config.PartialFailures): nil when the body is not such an answer, an
// error when it is one but names an event that cannot be told (a bad
// entry, an index out of range, a messageId not in the batch).
func parseRejected(body []byte, events []router.Event) ([]router.Rejection, error) {
	if !bytes.Contains(body, []byte(`"rejected"`)) {
		return nil, nil
	}
	var ans struct {
		Rejected []json.RawMessage `json:"rejected"`
	}
	if json.Unmarshal(body, &ans) != nil {
		return nil, nil
	}
	var out []router.Rejection
	named := make([]bool, len(events))
	for _, raw := range ans.Rejected {
		var r struct {
			Index     *int   `json:"index"`
			MessageID string `json:"messageId"`
			Status    int    `json:"status"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("webhook: partial answer entry %s: %w", capped(raw), err)
		}
		i := -1
		switch {
		case r.Index != nil:
			i = *r.Index
		case r.MessageID != "":
			// The first event with that id not named yet: two events of a
			// batch may share one (other sources, or past the dedup window).
			for j, ev := range events {
				if !named[j] && string(ev.MessageID) == r.MessageID {
					i = j
					break
				}
			}
		}
		if i < 0 || i >= len(events) {
			return nil, fmt.Errorf("webhook: partial answer names no event of the batch: %s", capped(raw))
		}
		if named[i] {
			continue
		}
		named[i] = true
		if r.Status == 0 {
			r.Status = 400
		}
		out = append(out, router.Rejection{Index: i, Status: r.Status, Reason: bytes.Clone(capped(raw))})
	}
	return out, nil
}

func capped(b []byte) []byte {
	const max = 4096
	if len(b) > max {
		return b[:max]
	}
	return b
}

// parseRetryAfter reads seconds or an HTTP date; capped at one hour.
func parseRetryAfter(v []byte, now time.Time) time.Duration {
	var d time.Duration
	if n, err := strconv.Atoi(string(v)); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := time.Parse(time.RFC1123, string(v)); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), time.Hour)
}

// Close releases idle connections.
func (w *Webhook) Close() error {
	w.client.CloseIdleConnections()
	return nil
}
