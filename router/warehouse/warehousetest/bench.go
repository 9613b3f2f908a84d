package warehousetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/warehouse"
)

// Bench workload: Segment-shaped track events of about 600 bytes, 10 event
// names, 1,000 users, loaded in batches of BenchBatch by BenchSenders
// concurrent Sends (as the router does with a full log).
const (
	BenchBatch   = 1000
	BenchSenders = 8
	benchUsers   = 1000
)

var benchNames = []string{"Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed",
	"Signed Up", "Signed In", "Page Scrolled", "Video Played", "Search Performed"}

// BenchEvents returns n events (seeded: the same every run) with
// messageIds unique to tag.
func BenchEvents(n int, tag string) []router.Event {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	out := make([]router.Event, n)
	for i := range out {
		u := r.IntN(benchUsers)
		ts := base.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano)
		p := fmt.Sprintf(`{"type":"track","event":%q,"messageId":"%s-%08d","userId":"user-%04d","anonymousId":"anon-%04d",`+
			`"timestamp":%q,"sentAt":%q,"originalTimestamp":%q,"receivedAt":%q,`+
			`"context":{"library":{"name":"analytics.js","version":"4.1.0"},"ip":"203.0.113.%d",`+
			`"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",`+
			`"page":{"path":"/p/%d","url":"https://shop.example/p/%d","title":"Product %d"},"locale":"en-US"},`+
			`"properties":{"product_id":"sku-%d","price":%d.99,"quantity":%d,"category":"books","name":"Item %d","currency":"USD","in_stock":%t}}`,
			benchNames[r.IntN(len(benchNames))], tag, i, u, u, ts, ts, ts, ts, u%250, i%500, i%500, i%500, i%900, r.IntN(100), 1+r.IntN(5), i, i%2 == 0)
		if pad := 600 - len(p); pad > 0 {
			p = p[:len(p)-2] + `,"note":"` + strings.Repeat("x", max(pad-10, 0)) + `"}}`
		}
		out[i] = router.Event{Seq: uint64(i + 1), MessageID: fmt.Appendf(nil, "%s-%08d", tag, i), Key: fmt.Appendf(nil, "user-%04d", u),
			Type: []byte("track"), Source: []byte("bench"), ReceivedAt: time.Now().UnixNano(), Payload: []byte(p)}
	}
	return out
}

// Ceiling writes loads the plainest way the database has (COPY, or a
// multi-row INSERT) in one transaction, doing nothing else.
type Ceiling func(ctx context.Context, loads []*warehouse.TableLoad) error

// Bench loads b.N batches through a Warehouse (events/s), then the same
// rows through ceiling into a schema of their own (ceiling_events/s), and
// reports the ratio (of_ceiling).
func Bench(b *testing.B, h Harness, ceiling Ceiling) {
	ctx := context.Background()
	tag := fmt.Sprintf("b%08x", rand.Uint32())
	schema, cschema := "sluice_bench_"+tag, "sluice_bench_c_"+tag
	b.Cleanup(func() { h.Drop(b, schema); h.Drop(b, cschema) })
	w, err := warehouse.New(warehouse.Config{Dialect: h.Open(b, h.Addr), Schema: schema})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	cw, err := warehouse.New(warehouse.Config{Dialect: h.Open(b, h.Addr), Schema: cschema})
	if err != nil {
		b.Fatal(err)
	}
	defer cw.Close()
	// warm: the tables exist in both schemas
	warm := BenchEvents(BenchBatch, tag+"w")
	if res := w.Send(ctx, warm); res.Err != nil || len(res.Rejected) > 0 {
		b.Fatalf("warm: %+v", res)
	}
	batches := make([][]router.Event, b.N)
	events := BenchEvents(b.N*BenchBatch, tag)
	bytes := 0
	for i := range batches {
		batches[i] = events[i*BenchBatch : (i+1)*BenchBatch]
	}
	for _, e := range events {
		bytes += len(e.Payload)
	}
	b.SetBytes(int64(bytes / b.N))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	run(b, b.N, func(i int) error {
		if res := w.Send(ctx, batches[i]); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
			return fmt.Errorf("batch %d: %+v", i, res)
		}
		return nil
	})
	took := time.Since(start)
	b.StopTimer()
	// The ceiling's rows are made after the timed loads, so that they do
	// not weigh on the garbage collector during them.
	plans := make([][]*warehouse.TableLoad, b.N)
	if _, err := cw.Plan(ctx, warm); err != nil {
		b.Fatal(err)
	}
	for i, batch := range batches {
		if plans[i], err = cw.Plan(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	cstart := time.Now()
	run(b, b.N, func(i int) error { return ceiling(ctx, plans[i]) })
	ctook := time.Since(cstart)
	n := float64(b.N * BenchBatch)
	b.ReportMetric(n/took.Seconds(), "events/s")
	b.ReportMetric(n/ctook.Seconds(), "ceiling_events/s")
	b.ReportMetric(ctook.Seconds()/took.Seconds(), "of_ceiling")
}

// run calls f(0..n-1) from BenchSenders goroutines.
func run(b *testing.B, n int, f func(i int) error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for range BenchSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
