package ingest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/engine"
)

// segmentEvent returns a ~600-byte track event like analytics.js sends.
func segmentEvent(i int) string {
	return fmt.Sprintf(`{"type":"track","event":"Product Viewed","userId":"user-%d","anonymousId":"anon-%08d-5c1e-4b7a-9f0e-1d2c3b4a5968","messageId":"msg-%012d-0000-4000-8000-000000000000","timestamp":"2026-11-26T12:00:00.000Z","sentAt":"2026-11-26T12:00:00.500Z","properties":{"product_id":"sku-%d","name":"Monopoly: 3rd Edition","price":19.99,"currency":"USD","category":"Games","url":"https://shop.example/p/%d"},"context":{"library":{"name":"analytics.js","version":"5.2.0"},"page":{"path":"/p","title":"Shop","url":"https://shop.example/p"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0","locale":"en-US"}}`,
		i%1000, i, i, i, i)
}

func batchBody(n, offset int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"batch":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(segmentEvent(offset + i))
	}
	b.WriteString(`],"sentAt":"2026-11-26T12:00:00.500Z"}`)
	return b.Bytes()
}

type discardAppender struct{ n atomic.Int64 }

func (d *discardAppender) Append(_ context.Context, recs []engine.Record) (engine.AppendResult, error) {
	d.n.Add(int64(len(recs)))
	return engine.AppendResult{Stored: len(recs)}, nil
}

func benchServer(b *testing.B, app Appender) *Server {
	srv, err := New(Options{Sources: []Source{{"web", "K"}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, Deps{Appender: app})
	if err != nil {
		b.Fatal(err)
	}
	return srv
}

func runHandler(b *testing.B, srv *Server, path string, body []byte) {
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI(path)
	req.Header.Set("Authorization", "Basic Szo=")
	req.SetBodyRaw(body)
	var ctx fasthttp.RequestCtx
	addr := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}
	for b.Loop() {
		ctx.Init(&req, addr, nil)
		srv.Handle(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}

// BenchmarkParseBatch100 measures the gateway's CPU path without storage:
// auth, validation, enrichment of a 100-event batch. One op = one request.
func BenchmarkParseBatch100(b *testing.B) {
	body := batchBody(100, 0)
	srv := benchServer(b, &discardAppender{})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	start := time.Now()
	runHandler(b, srv, "/v1/batch", body)
	b.ReportMetric(float64(b.N*100)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkParseTrack is one event per request.
func BenchmarkParseTrack(b *testing.B) {
	body := []byte(segmentEvent(1))
	srv := benchServer(b, &discardAppender{})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	runHandler(b, srv, "/v1/track", body)
}

// BenchmarkDurableBatch100 is the whole path with the real engine on disk
// (fsync per group), 32 concurrent requests of 100 events each.
func BenchmarkDurableBatch100(b *testing.B) {
	eng, err := engine.Open(engine.Options{Dir: b.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ReclaimInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	srv := benchServer(b, eng)
	var seq atomic.Int64
	b.SetParallelism(16)
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.SetRequestURI("/v1/batch")
		req.Header.Set("Authorization", "Basic Szo=")
		var ctx fasthttp.RequestCtx
		addr := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}
		for pb.Next() {
			req.SetBodyRaw(batchBody(100, int(seq.Add(1))*100)) // unique messageIds
			ctx.Init(&req, addr, nil)
			srv.Handle(&ctx)
			if ctx.Response.StatusCode() != 200 {
				b.Errorf("status %d", ctx.Response.StatusCode())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*100)/time.Since(start).Seconds(), "events/s")
}
