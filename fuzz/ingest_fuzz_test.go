package fuzz

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/ingest"
)

// captureAppender keeps copies of what ingest would store.
type captureAppender struct{ recs []engine.Record }

func (c *captureAppender) Append(_ context.Context, recs []engine.Record) (engine.AppendResult, error) {
	for _, r := range recs {
		c.recs = append(c.recs, engine.Record{
			Source: bytes.Clone(r.Source), Type: bytes.Clone(r.Type), MessageID: bytes.Clone(r.MessageID),
			Key: bytes.Clone(r.Key), Payload: bytes.Clone(r.Payload),
		})
	}
	return engine.AppendResult{Stored: len(recs)}, nil
}

// serverOwned are top-level members the server sets or rewrites.
var serverOwned = map[string]bool{
	"receivedAt": true, "projectId": true, "writeKey": true, "timestamp": true,
	"originalTimestamp": true, "context": true, "messageId": true, "type": true, "integrations": true,
}

var fuzzPaths = []string{"/v1/track", "/v1/batch", "/v1/identify", "/v1/b", "/beacon/v1/batch", "/v1/import"}

// FuzzIngestRequest feeds arbitrary bodies to the gateway. Whatever the
// input, the server must not panic, must answer a status the SDKs handle
// (never 501/505/451), and every event it accepts must be stored as valid
// JSON in valid UTF-8 that keeps every member the client sent.
func FuzzIngestRequest(f *testing.F) {
	seeds := []string{
		`{"type":"track","userId":"u","event":"E","properties":{"a":[1,2,{"b":null}]}}`,
		`{"batch":[{"type":"identify","anonymousId":"a","traits":{"n":"é"}},{"type":"page","userId":5}],"context":{"ip":"1.1.1.1"},"sentAt":"2026-01-01T00:00:00Z"}`,
		`{"userId":"u","timestamp":"2026-01-01T00:00:00.000Z","sentAt":"2026-01-01T00:00:01.000+02:00","context":{"x":1}}`,
		"{\"userId\":\"caf\xe9\",\"event\":\"\\ud83d\"}",
		`{"batch":[]}`, `[]`, `{"userId":"u","userId":"v"}`, `{"a":`,
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint8(i), false)
		f.Add([]byte(s), uint8(i+1), true)
	}
	app := &captureAppender{}
	srv, err := ingest.New(ingest.Options{
		Sources:       []ingest.Source{{Name: "web", WriteKey: "K"}},
		EventBytesMax: 4 << 10, RequestBytesMax: 64 << 10,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:    func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) },
	}, ingest.Deps{Appender: app})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte, pathIdx uint8, gzipped bool) {
		app.recs = app.recs[:0]
		path := fuzzPaths[int(pathIdx)%len(fuzzPaths)]
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.SetRequestURI(path)
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("K:")))
		req.SetBody(body)
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, nil)
		srv.Handle(&ctx)
		status := ctx.Response.StatusCode()
		switch status {
		case 501, 505, 451:
			t.Fatalf("status %d is treated specially by the SDKs", status)
		case 200:
		default:
			if len(app.recs) != 0 {
				t.Fatalf("status %d but %d events stored", status, len(app.recs))
			}
			if !json.Valid(ctx.Response.Body()) {
				t.Fatalf("error body is not JSON: %q", ctx.Response.Body())
			}
			return
		}
		sent := clientEvents(bytes.ToValidUTF8(body, []byte("\uFFFD")), path)
		if len(sent) != len(app.recs) {
			t.Fatalf("client sent %d events, %d stored", len(sent), len(app.recs))
		}
		for i, r := range app.recs {
			if !utf8.Valid(r.Payload) || !json.Valid(r.Payload) {
				t.Fatalf("stored event %d is not valid JSON/UTF-8: %q", i, r.Payload)
			}
			var got map[string]any
			if err := json.Unmarshal(r.Payload, &got); err != nil {
				t.Fatalf("stored event %d: %v", i, err)
			}
			for k, v := range sent[i] {
				if serverOwned[k] {
					continue
				}
				if !reflect.DeepEqual(got[k], v) {
					t.Fatalf("event %d member %q: sent %v, stored %v\nstored: %s", i, k, v, got[k], r.Payload)
				}
			}
			for _, k := range []string{"receivedAt", "messageId", "timestamp", "type"} {
				if _, ok := got[k]; !ok {
					t.Fatalf("stored event %d lacks %q: %s", i, k, r.Payload)
				}
			}
			if got["messageId"] != string(r.MessageID) {
				t.Fatalf("record messageId %q, payload %v", r.MessageID, got["messageId"])
			}
		}
	})
}

// clientEvents decodes the events the client sent, as encoding/json sees
// them.
func clientEvents(body []byte, path string) []map[string]any {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return nil
	}
	switch path {
	case "/v1/batch", "/v1/b", "/beacon/v1/batch", "/v1/import":
		var evs []map[string]any
		json.Unmarshal(top["batch"], &evs)
		return evs
	}
	var ev map[string]any
	json.Unmarshal(body, &ev)
	return []map[string]any{ev}
}

// FuzzPixel feeds arbitrary query parameters (percent-decoded, so any
// bytes) and ?data= payloads to the pixel endpoints: the answer is always
// the GIF, and whatever is stored is valid JSON in valid UTF-8.
func FuzzPixel(f *testing.F) {
	f.Add([]byte("event"), []byte("caf\xe9"), []byte(nil), false)
	f.Add([]byte("properties.x"), []byte("\xff\xfe"), []byte(nil), true)
	f.Add([]byte("name"), []byte("ok"), []byte("{\"userId\":\"u\",\"name\":\"\xc3\"}"), false)
	f.Add([]byte("context.\xff"), []byte("v"), []byte(`{"anonymousId":"a","properties":{"p":1}}`), true)
	app := &captureAppender{}
	srv, err := ingest.New(ingest.Options{
		Sources: []ingest.Source{{Name: "web", WriteKey: "K"}},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, ingest.Deps{Appender: app})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key, value, data []byte, page bool) {
		app.recs = app.recs[:0]
		var req fasthttp.Request
		req.Header.SetMethod("GET")
		path := "/pixel/v1/track"
		if page {
			path = "/pixel/v1/page"
		}
		req.SetRequestURI(path)
		args := req.URI().QueryArgs()
		args.Set("writeKey", "K")
		args.Set("userId", "u")
		args.SetBytesKV(key, value)
		if len(data) > 0 {
			args.Set("data", base64.StdEncoding.EncodeToString(data))
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, nil)
		srv.Handle(&ctx)
		if ctx.Response.StatusCode() != 200 || !bytes.HasPrefix(ctx.Response.Body(), []byte("GIF89a")) {
			t.Fatalf("pixel answered %d %q", ctx.Response.StatusCode(), ctx.Response.Body())
		}
		for _, r := range app.recs {
			if !utf8.Valid(r.Payload) || !json.Valid(r.Payload) {
				t.Fatalf("stored pixel event is not valid JSON/UTF-8: %q", r.Payload)
			}
		}
	})
}
