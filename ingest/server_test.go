package ingest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/engine"
)

var testNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

type harness struct {
	t   *testing.T
	srv *Server
	eng *engine.Engine
}

func newHarness(t *testing.T, mutate func(*Options)) *harness {
	t.Helper()
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	opts := Options{
		Sources: []Source{{Name: "web", WriteKey: "KEY1"}, {Name: "ios", WriteKey: "KEY2"}},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:     func() time.Time { return testNow },
	}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := New(opts, Deps{Appender: eng, Stats: eng.Stats})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, srv: srv, eng: eng}
}

type resp struct {
	status int
	body   string
	header *fasthttp.ResponseHeader
}

// do runs one request through the handler. headers are "Name: value".
func (h *harness) do(method, uri string, body []byte, headers ...string) resp {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	req.Header.SetContentType("application/json")
	for _, hv := range headers {
		k, v, _ := strings.Cut(hv, ": ")
		req.Header.Set(k, v)
	}
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 5555}, nil)
	h.srv.Handle(&ctx)
	hdr := new(fasthttp.ResponseHeader)
	ctx.Response.Header.CopyTo(hdr)
	return resp{ctx.Response.StatusCode(), string(ctx.Response.Body()), hdr}
}

func basic(key string) string {
	return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(key))
}

// stored returns every stored event decoded, with its record fields.
func (h *harness) stored() []storedEvent {
	h.t.Helper()
	r, err := h.eng.NewReader(1, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	defer r.Close()
	var out []storedEvent
	var recs []engine.Record
	for {
		recs, err = r.Next(recs[:0], 100)
		if err != nil {
			h.t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		for _, rec := range recs {
			var m map[string]any
			if err := json.Unmarshal(rec.Payload, &m); err != nil {
				h.t.Fatalf("stored payload is not JSON: %v: %s", err, rec.Payload)
			}
			out = append(out, storedEvent{m, string(rec.Source), string(rec.Type), string(rec.MessageID), string(rec.Key), string(rec.Payload)})
		}
	}
}

type storedEvent struct {
	m                          map[string]any
	source, typ, mid, key, raw string
}

func wantStatus(t *testing.T, r resp, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if status >= 400 {
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
			t.Fatalf("error body is not JSON with a message: %q", r.body)
		}
	}
}

func TestSingleEventEndpoints(t *testing.T) {
	h := newHarness(t, nil)
	paths := map[string]string{
		"/v1/track": "track", "/v1/t": "track", "/v1/identify": "identify", "/v1/i": "identify",
		"/v1/page": "page", "/v1/p": "page", "/v1/screen": "screen", "/v1/s": "screen",
		"/v1/group": "group", "/v1/g": "group", "/v1/alias": "alias", "/v1/a": "alias",
	}
	n := 0
	for path, typ := range paths {
		r := h.do("POST", path, []byte(`{"userId":"u1","messageId":"m-`+path+`"}`), basic("KEY1:"))
		wantStatus(t, r, 200)
		n++
		got := h.stored()
		if len(got) != n {
			t.Fatalf("%s: %d stored, want %d", path, len(got), n)
		}
		if ev := got[n-1]; ev.typ != typ || ev.m["type"] != typ || ev.source != "web" || ev.m["projectId"] != "web" {
			t.Fatalf("%s: stored %+v", path, ev)
		}
	}
	wantStatus(t, h.do("GET", "/v1/track", nil), 405)
	wantStatus(t, h.do("POST", "/v2/nope", nil), 404)
}

func TestAuthForms(t *testing.T) {
	h := newHarness(t, nil)
	ev := func(extra string) []byte { return []byte(`{"type":"track","userId":"u"` + extra + `}`) }
	wantStatus(t, h.do("POST", "/v1/track", ev(""), basic("KEY1:")), 200)
	wantStatus(t, h.do("POST", "/v1/track", ev(""), basic("KEY2")), 200)
	wantStatus(t, h.do("POST", "/v1/track", ev(`,"writeKey":"KEY1"`)), 200)
	wantStatus(t, h.do("POST", "/v1/track?writeKey=KEY2", ev("")), 200)
	wantStatus(t, h.do("POST", "/v1/batch", []byte(`{"writeKey":"KEY1","batch":[{"type":"track","userId":"u"}]}`)), 200)
	wantStatus(t, h.do("POST", "/v1/track", ev(""), basic("NOPE:")), 401)
	wantStatus(t, h.do("POST", "/v1/track", ev("")), 401)
	wantStatus(t, h.do("POST", "/v1/track", ev(""), "Authorization: Basic !!!"), 401)
	got := h.stored()
	sources := []string{"web", "ios", "web", "ios", "web"}
	if len(got) != len(sources) {
		t.Fatalf("stored %d, want %d", len(got), len(sources))
	}
	for i, s := range sources {
		if got[i].source != s {
			t.Fatalf("event %d source %q, want %q", i, got[i].source, s)
		}
		if _, ok := got[i].m["writeKey"]; ok {
			t.Fatalf("writeKey leaked into stored event: %s", got[i].raw)
		}
	}
}

func TestValidationErrors(t *testing.T) {
	h := newHarness(t, nil)
	cases := []struct {
		name, path, body string
		status           int
		msg              string
	}{
		{"bad json", "/v1/track", `{"userId":`, 400, "invalid JSON"},
		{"not object", "/v1/track", `[1]`, 400, "object"},
		{"unknown type", "/v1/batch", `{"batch":[{"type":"nope","userId":"u"}]}`, 400, "unknown type"},
		{"missing type in batch", "/v1/batch", `{"batch":[{"userId":"u"}]}`, 400, "missing type"},
		{"no ids", "/v1/track", `{"event":"x"}`, 400, "neither userId nor anonymousId"},
		{"empty ids", "/v1/track", `{"userId":"","anonymousId":null}`, 400, "neither userId nor anonymousId"},
		{"long messageId", "/v1/track", `{"userId":"u","messageId":"` + strings.Repeat("m", 257) + `"}`, 400, "messageId"},
		{"bad context", "/v1/track", `{"userId":"u","context":"x"}`, 400, "context"},
		{"no batch", "/v1/batch", `{"events":[]}`, 400, "batch"},
		{"object id", "/v1/track", `{"userId":{"a":1}}`, 400, "string or number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do("POST", c.path, []byte(c.body), basic("KEY1:"))
			wantStatus(t, r, c.status)
			if !strings.Contains(r.body, c.msg) {
				t.Fatalf("body %s does not mention %q", r.body, c.msg)
			}
		})
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("%d events stored from invalid requests", n)
	}
}

func TestBatchAllOrNothing(t *testing.T) {
	h := newHarness(t, nil)
	body := `{"batch":[{"type":"track","userId":"a"},{"type":"track","userId":"b"},{"type":"track"}]}`
	r := h.do("POST", "/v1/batch", []byte(body), basic("KEY1:"))
	wantStatus(t, r, 400)
	if !strings.Contains(r.body, "event 2") {
		t.Fatalf("error does not name the event: %s", r.body)
	}
	if n := len(h.stored()); n != 0 {
		t.Fatalf("%d events of a refused batch stored", n)
	}
}

func TestBatchContextMergeAndIP(t *testing.T) {
	h := newHarness(t, nil)
	body := `{"batch":[
		{"type":"track","userId":"a","context":{"locale":"fr","library":{"name":"mine"}}},
		{"type":"identify","anonymousId":"x","integrations":{"All":false}},
		{"type":"page","userId":"c","context":{"ip":"10.1.1.1"}}
	],"context":{"library":{"name":"analytics-go"},"app":"demo"},"integrations":{"All":true}}`
	wantStatus(t, h.do("POST", "/v1/batch", []byte(body), basic("KEY1:")), 200)
	got := h.stored()
	if len(got) != 3 {
		t.Fatalf("stored %d", len(got))
	}
	ctx0 := got[0].m["context"].(map[string]any)
	if ctx0["locale"] != "fr" || ctx0["app"] != "demo" || ctx0["library"].(map[string]any)["name"] != "mine" || ctx0["ip"] != "203.0.113.7" {
		t.Fatalf("merged context 0: %v", ctx0)
	}
	if got[0].m["integrations"].(map[string]any)["All"] != true {
		t.Fatalf("batch integrations not applied: %s", got[0].raw)
	}
	if got[1].m["integrations"].(map[string]any)["All"] != false {
		t.Fatalf("event integrations overridden: %s", got[1].raw)
	}
	if got[1].key != "x" || got[0].key != "a" {
		t.Fatalf("ordering keys %q %q", got[0].key, got[1].key)
	}
	if ip := got[2].m["context"].(map[string]any)["ip"]; ip != "10.1.1.1" {
		t.Fatalf("client ip overwritten: %v", ip)
	}
	if strings.Count(got[0].raw, `"context"`) != 1 {
		t.Fatalf("duplicate context member: %s", got[0].raw)
	}
}

func TestEnrichmentAndClockSkew(t *testing.T) {
	h := newHarness(t, nil)
	// The client's clock is 1 hour behind: sentAt - timestamp = 2 s.
	body := `{"type":"track","userId":"u","event":"E","timestamp":"2026-11-26T11:00:00.000Z","sentAt":"2026-11-26T11:00:02.000Z","receivedAt":"1999-01-01T00:00:00Z","projectId":"spoof"}`
	wantStatus(t, h.do("POST", "/v1/track", []byte(body), basic("KEY1:")), 200)
	// RudderStack style: originalTimestamp and batch-level sentAt.
	body2 := `{"batch":[{"type":"track","anonymousId":"a","originalTimestamp":"2026-11-26T13:00:00.000+01:00"}],"sentAt":"2026-11-26T12:00:05.000Z"}`
	wantStatus(t, h.do("POST", "/v1/batch", []byte(body2), basic("KEY1:")), 200)
	// No timestamp at all.
	wantStatus(t, h.do("POST", "/v1/track", []byte(`{"userId":"u"}`), basic("KEY1:")), 200)
	got := h.stored()
	e := got[0].m
	if e["timestamp"] != "2026-11-26T11:59:58.000Z" || e["originalTimestamp"] != "2026-11-26T11:00:00.000Z" || e["receivedAt"] != "2026-11-26T12:00:00.000Z" {
		t.Fatalf("clock skew: %s", got[0].raw)
	}
	if e["projectId"] != "web" || strings.Count(got[0].raw, "receivedAt") != 1 || strings.Count(got[0].raw, `"timestamp"`) != 1 {
		t.Fatalf("server fields: %s", got[0].raw)
	}
	if id, _ := e["messageId"].(string); len(id) != 36 || got[0].mid != id {
		t.Fatalf("generated messageId %q / record %q", id, got[0].mid)
	}
	if got[1].m["timestamp"] != "2026-11-26T11:59:55.000Z" {
		t.Fatalf("originalTimestamp skew: %s", got[1].raw)
	}
	if got[2].m["timestamp"] != "2026-11-26T12:00:00.000Z" {
		t.Fatalf("missing timestamp: %s", got[2].raw)
	}
}

func TestDedup(t *testing.T) {
	h := newHarness(t, nil)
	ev := []byte(`{"type":"track","userId":"u","messageId":"dup-1"}`)
	for range 3 {
		wantStatus(t, h.do("POST", "/v1/track", ev, basic("KEY1:")), 200)
	}
	batch := []byte(`{"batch":[{"type":"track","userId":"u","messageId":"dup-2"},{"type":"track","userId":"u","messageId":"dup-2"},{"type":"track","userId":"u","messageId":"dup-1"}]}`)
	wantStatus(t, h.do("POST", "/v1/batch", batch, basic("KEY1:")), 200)
	// The same messageId from another source is another event.
	wantStatus(t, h.do("POST", "/v1/track", ev, basic("KEY2:")), 200)
	if n := len(h.stored()); n != 3 {
		t.Fatalf("stored %d, want 3", n)
	}
	if !strings.Contains(h.do("GET", "/metrics", nil).body, "sluice_ingest_dedup_hits_total 4") {
		t.Fatal("dedup hits not counted")
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestGzipAndLimits(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.RequestBytesMax = 64 << 10; o.EventBytesMax = 1 << 10 })
	ev := []byte(`{"batch":[{"type":"track","userId":"u","properties":{"a":"b"}}]}`)
	wantStatus(t, h.do("POST", "/v1/batch", gz(ev), basic("KEY1:"), "Content-Encoding: gzip"), 200)
	bomb := gz(bytes.Repeat([]byte(" "), 10<<20))
	wantStatus(t, h.do("POST", "/v1/batch", bomb, basic("KEY1:"), "Content-Encoding: gzip"), 413)
	wantStatus(t, h.do("POST", "/v1/batch", []byte("not gzip"), basic("KEY1:"), "Content-Encoding: gzip"), 400)
	wantStatus(t, h.do("POST", "/v1/batch", ev, basic("KEY1:"), "Content-Encoding: br"), 415)
	big := []byte(`{"type":"track","userId":"u","properties":{"x":"` + strings.Repeat("x", 2000) + `"}}`)
	r := h.do("POST", "/v1/track", big, basic("KEY1:"))
	wantStatus(t, r, 413)
	huge := append([]byte(`{"batch":[`), bytes.Repeat([]byte(`{"type":"track","userId":"u"},`), 5000)...)
	wantStatus(t, h.do("POST", "/v1/batch", append(huge, []byte(`{"type":"track","userId":"u"}]}`)...), basic("KEY1:")), 413)
	if n := len(h.stored()); n != 1 {
		t.Fatalf("stored %d, want 1", n)
	}
}

func TestUTF8Repair(t *testing.T) {
	h := newHarness(t, nil)
	body := []byte("{\"type\":\"track\",\"userId\":\"u\",\"event\":\"caf\xe9 \xff\"}")
	wantStatus(t, h.do("POST", "/v1/track", body, basic("KEY1:")), 200)
	got := h.stored()
	if got[0].m["event"] != "caf\uFFFD \uFFFD" {
		t.Fatalf("repaired event %q", got[0].m["event"])
	}
	if !strings.Contains(h.do("GET", "/metrics", nil).body, "sluice_ingest_utf8_repaired_total 1") {
		t.Fatal("repair not counted")
	}
}

func TestCORSAndTextPlain(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("OPTIONS", "/v1/batch", nil, "Origin: https://shop.example", "Access-Control-Request-Headers: content-type,authorization")
	if r.status != 204 || string(r.header.Peek("Access-Control-Allow-Origin")) != "https://shop.example" ||
		!strings.Contains(string(r.header.Peek("Access-Control-Allow-Headers")), "authorization") ||
		!strings.Contains(string(r.header.Peek("Access-Control-Allow-Methods")), "POST") {
		t.Fatalf("preflight: %d %s", r.status, r.header.String())
	}
	r = h.do("POST", "/v1/t", []byte(`{"type":"track","userId":"u","writeKey":"KEY1"}`), "Content-Type: text/plain", "Origin: https://shop.example")
	wantStatus(t, r, 200)
	if string(r.header.Peek("Access-Control-Allow-Origin")) != "https://shop.example" {
		t.Fatal("no CORS header on POST")
	}
}

func TestPixelAndBeacon(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do("GET", "/pixel/v1/track?writeKey=KEY1&userId=u9&event=Opened&properties.campaign=c1&context.locale=de&plan=pro", nil)
	if r.status != 200 || string(r.header.ContentType()) != "image/gif" || !strings.HasPrefix(r.body, "GIF89a") {
		t.Fatalf("pixel answer %d %q", r.status, r.header.ContentType())
	}
	data := base64.StdEncoding.EncodeToString([]byte(`{"userId":"u10","name":"Home","properties":{"path":"/"}}`))
	h.do("GET", "/pixel/v1/page?writeKey=KEY1&data="+data, nil)
	// A bad pixel still answers the GIF.
	if r := h.do("GET", "/pixel/v1/track?writeKey=NOPE&userId=u", nil); r.status != 200 || !strings.HasPrefix(r.body, "GIF89a") {
		t.Fatalf("bad pixel answer %d", r.status)
	}
	wantStatus(t, h.do("POST", "/beacon/v1/batch", []byte(`{"writeKey":"KEY2","batch":[{"type":"track","userId":"b","event":"Left"}]}`), "Content-Type: text/plain"), 200)
	got := h.stored()
	if len(got) != 3 {
		t.Fatalf("stored %d, want 3", len(got))
	}
	p := got[0].m
	props := p["properties"].(map[string]any)
	if p["type"] != "track" || p["event"] != "Opened" || props["campaign"] != "c1" || props["plan"] != "pro" || p["context"].(map[string]any)["locale"] != "de" {
		t.Fatalf("pixel event: %s", got[0].raw)
	}
	if got[1].m["type"] != "page" || got[1].m["name"] != "Home" {
		t.Fatalf("data pixel event: %s", got[1].raw)
	}
	if got[2].source != "ios" {
		t.Fatalf("beacon source %q", got[2].source)
	}
}

type failingAppender struct{ err error }

func (f failingAppender) Append(context.Context, []engine.Record) (engine.AppendResult, error) {
	return engine.AppendResult{}, f.err
}

func TestBackpressureStatuses(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
	}{
		{fmt.Errorf("x: %w", engine.ErrBacklogFull), 429},
		{fmt.Errorf("x: %w", engine.ErrDiskBudget), 503},
		{fmt.Errorf("x: %w", engine.ErrUnavailable), 503},
		{fmt.Errorf("x: %w", engine.ErrDiskFull), 503},
		{errors.New("disk on fire"), 503},
	} {
		srv, err := New(Options{Sources: []Source{{"web", "K"}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, Deps{Appender: failingAppender{c.err}})
		if err != nil {
			t.Fatal(err)
		}
		h := &harness{t: t, srv: srv}
		r := h.do("POST", "/v1/track", []byte(`{"userId":"u"}`), basic("K:"))
		wantStatus(t, r, c.status)
		if string(r.header.Peek("Retry-After")) == "" {
			t.Fatalf("%v: no Retry-After", c.err)
		}
	}
}

func TestInFlightLimit(t *testing.T) {
	block := make(chan struct{})
	entered := make(chan struct{}, 1)
	app := appenderFunc(func(ctx context.Context, recs []engine.Record) (engine.AppendResult, error) {
		entered <- struct{}{}
		<-block
		return engine.AppendResult{Stored: len(recs)}, nil
	})
	srv, _ := New(Options{Sources: []Source{{"web", "K"}}, InFlightMax: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, Deps{Appender: app})
	h := &harness{t: t, srv: srv}
	done := make(chan resp)
	go func() { done <- h.do("POST", "/v1/track", []byte(`{"userId":"u"}`), basic("K:")) }()
	<-entered
	wantStatus(t, h.do("POST", "/v1/track", []byte(`{"userId":"u"}`), basic("K:")), 503)
	close(block)
	wantStatus(t, <-done, 200)
}

type appenderFunc func(context.Context, []engine.Record) (engine.AppendResult, error)

func (f appenderFunc) Append(ctx context.Context, r []engine.Record) (engine.AppendResult, error) {
	return f(ctx, r)
}

func TestHealthVersionMetrics(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.Version = "1.2.3" })
	h.do("POST", "/v1/track", []byte(`{"userId":"u"}`), basic("KEY1:"))
	r := h.do("GET", "/health", nil)
	wantStatus(t, r, 200)
	var hl struct {
		Status string `json:"status"`
		Engine struct {
			Healthy bool   `json:"healthy"`
			LastSeq uint64 `json:"last_seq"`
		} `json:"engine"`
	}
	if err := json.Unmarshal([]byte(r.body), &hl); err != nil || hl.Status != "ok" || !hl.Engine.Healthy || hl.Engine.LastSeq != 1 {
		t.Fatalf("health %s (%v)", r.body, err)
	}
	if r := h.do("GET", "/version", nil); !strings.Contains(r.body, "1.2.3") {
		t.Fatalf("version %s", r.body)
	}
	m := h.do("GET", "/metrics", nil).body
	for _, want := range []string{`sluice_ingest_requests_total{endpoint="track",status="200"} 1`, "sluice_ingest_events_total 1", "sluice_engine_last_seq 1", "sluice_ingest_latency_seconds_count"} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %q:\n%s", want, m)
		}
	}
}

func TestGracefulShutdown(t *testing.T) {
	var mu sync.Mutex
	stored := 0
	app := appenderFunc(func(ctx context.Context, recs []engine.Record) (engine.AppendResult, error) {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		stored += len(recs)
		mu.Unlock()
		return engine.AppendResult{Stored: len(recs)}, nil
	})
	srv, _ := New(Options{Sources: []Source{{"web", "K"}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, Deps{Appender: app})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	url := "http://" + ln.Addr().String() + "/v1/track"
	var wg sync.WaitGroup
	var okMu sync.Mutex
	oks := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI(url)
			req.Header.SetMethod("POST")
			req.Header.Set("Authorization", "Basic SzpL")
			req.SetBodyString(`{"userId":"u"}`)
			if err := fasthttp.Do(req, resp); err == nil && resp.StatusCode() == 200 {
				okMu.Lock()
				oks++
				okMu.Unlock()
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if oks == 0 || stored < oks {
		t.Fatalf("%d requests answered 200 but %d stored", oks, stored)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{},
		{Sources: []Source{{"a", ""}}},
		{Sources: []Source{{"a", "k"}, {"b", "k"}}},
		{Sources: []Source{{"a", "k"}}, EventBytesMax: 10, RequestBytesMax: 5},
	} {
		if _, err := New(o, Deps{Appender: failingAppender{}}); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

func TestPixelRepairsUTF8(t *testing.T) {
	h := newHarness(t, nil)
	h.do("GET", "/pixel/v1/track?writeKey=KEY1&userId=u1&event=caf%E9&properties.x=%FF%FEok", nil)
	data := base64.StdEncoding.EncodeToString([]byte("{\"userId\":\"u2\",\"name\":\"Home \xff\",\"properties\":{\"p\":\"\xc3\"}}"))
	h.do("GET", "/pixel/v1/page?writeKey=KEY1&data="+url.QueryEscape(data), nil)
	got := h.stored()
	if len(got) != 2 {
		t.Fatalf("stored %d, want 2", len(got))
	}
	for _, ev := range got {
		if !utf8.ValidString(ev.raw) {
			t.Fatalf("stored invalid UTF-8: %q", ev.raw)
		}
	}
	if got[0].m["event"] != "caf\uFFFD" || got[0].m["properties"].(map[string]any)["x"] != "\uFFFDok" {
		t.Fatalf("query pixel: %s", got[0].raw)
	}
	if got[1].m["name"] != "Home \uFFFD" {
		t.Fatalf("data pixel: %s", got[1].raw)
	}
	if !strings.Contains(h.do("GET", "/metrics", nil).body, "sluice_ingest_utf8_repaired_total 2") {
		t.Fatal("repairs not counted")
	}
}

func TestForwardedForRepairsUTF8(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.TrustForwardedFor = true })
	wantStatus(t, h.do("POST", "/v1/track", []byte(`{"type":"track","userId":"u"}`), basic("KEY1:"), "X-Forwarded-For: 10.0.0.\xff, 1.2.3.4"), 200)
	ev := h.stored()[0]
	var m struct {
		Context struct {
			IP string `json:"ip"`
		} `json:"context"`
	}
	if !utf8.ValidString(ev.raw) || json.Unmarshal([]byte(ev.raw), &m) != nil || m.Context.IP != "10.0.0.\uFFFD" {
		t.Fatalf("stored %q", ev.raw)
	}
}

// TestOrderingKey: the ordering key is anonymousId when present, else
// userId (docs/guarantees.md, guarantee 4), whatever the order of the fields.
func TestOrderingKey(t *testing.T) {
	h := newHarness(t, nil)
	body := `{"batch":[
		{"type":"track","event":"E","userId":"user-1","anonymousId":"anon-1"},
		{"type":"track","event":"E","anonymousId":"anon-2","userId":"user-2"},
		{"type":"track","event":"E","userId":"user-3"},
		{"type":"track","event":"E","anonymousId":"anon-4"},
		{"type":"track","event":"E","anonymousId":"","userId":"user-5"},
		{"type":"track","event":"E","anonymousId":null,"userId":"user-6"}
	]}`
	wantStatus(t, h.do("POST", "/v1/batch", []byte(body), basic("KEY1:")), 200)
	got := h.stored()
	want := []string{"anon-1", "anon-2", "user-3", "anon-4", "user-5", "user-6"}
	if len(got) != len(want) {
		t.Fatalf("stored %d events, want %d", len(got), len(want))
	}
	for i, ev := range got {
		if ev.key != want[i] {
			t.Errorf("event %d: ordering key %q, want %q: %s", i, ev.key, want[i], ev.raw)
		}
	}
}
