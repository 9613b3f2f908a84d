package kafka

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluice-cdi/sluice/router"
)

// BenchmarkSend measures events/s delivered by the destination into kfake
// beside a ceiling measured in the same run: the same records produced by
// kgo with the same options (Config.options) from GOMAXPROCS loops that do
// nothing else (no batches, no waiting for a batch's acks, no copies). One b.N
// iteration is one event for each of the two; they alternate in rounds of
// up to 100,000 events, so drift on the machine hits both alike.
//
// The destination is driven as the router drives it: workers goroutines,
// each sending a batch of its own keys' events and waiting for its Result
// before the next (a key's batches one at a time). The cluster is one
// kfake broker that acknowledges produce requests without storing the
// records (kfake.BlackholeProduce), so the broker's storage is out of both
// measurements; it still checks the idempotent sequence numbers.
//
// Metrics: events/s (destination), ceiling-events/s, ratio (the target is
// >= 0.7), and the destination's Send latency p50-ms and p99-ms at that
// load.
func BenchmarkSend(b *testing.B) {
	for _, bc := range []struct{ workers, batch int }{{64, 100}, {16, 100}, {64, 500}} {
		for _, codec := range []string{"zstd", "lz4"} {
			b.Run(fmt.Sprintf("workers=%d/batch=%d/compression=%s", bc.workers, bc.batch, codec), func(b *testing.B) {
				benchSend(b, bc.workers, bc.batch, codec)
			})
		}
	}
}

func benchSend(b *testing.B, workers, batch int, codec string) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(16, "bench"), kfake.BlackholeProduce())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "bench", Compression: codec}
	d, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	opts, _, err := cfg.options()
	if err != nil {
		b.Fatal(err)
	}
	ceil, err := kgo.NewClient(opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer ceil.Close()

	// Prepared events: per worker one batch of its own keys, 600-byte
	// Segment-like track events.
	prepared := make([][]router.Event, workers)
	for w := range prepared {
		for i := range batch {
			prepared[w] = append(prepared[w], benchEvent(fmt.Sprintf("user-%d-%d", w, i%10), w*batch+i))
		}
	}
	// Warm both clients (metadata, producer IDs, connections).
	if res := d.Send(context.Background(), prepared[0]); res.Status != 200 {
		b.Fatalf("warm-up: %+v", res)
	}
	ceilingRound(b, ceil, prepared, batch)

	var destDur, ceilDur time.Duration
	var lat []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for left := b.N; left > 0; {
		n := min(left, 100_000)
		left -= n
		start := time.Now()
		lat = append(lat, destRound(b, d, prepared, n)...)
		destDur += time.Since(start)
		start = time.Now()
		ceilingRound(b, ceil, prepared, n)
		ceilDur += time.Since(start)
	}
	b.StopTimer()
	evps := float64(b.N) / destDur.Seconds()
	ceps := float64(b.N) / ceilDur.Seconds()
	b.ReportMetric(evps, "events/s")
	b.ReportMetric(ceps, "ceiling-events/s")
	b.ReportMetric(evps/ceps, "ratio")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// destRound delivers n events through the destination (whole batches, the
// last one cut short) and returns each Send's latency.
func destRound(b *testing.B, d *Kafka, prepared [][]router.Event, n int) []time.Duration {
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	for _, evs := range prepared {
		wg.Go(func() {
			var mine []time.Duration
			for {
				end := next.Add(int64(len(evs)))
				start := end - int64(len(evs))
				if start >= int64(n) {
					break
				}
				b := evs[:min(int64(len(evs)), int64(n)-start)]
				t0 := time.Now()
				res := d.Send(context.Background(), b)
				mine = append(mine, time.Since(t0))
				if res.Status != 200 {
					panic(fmt.Sprintf("send: %+v", res))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	return lat
}

// ceilingRound produces n records, the prepared events' in turn, with kgo
// directly from GOMAXPROCS goroutines (one would leave a core to spare)
// and waits for every acknowledgement.
func ceilingRound(b *testing.B, cl *kgo.Client, prepared [][]router.Event, n int) {
	var failed atomic.Int64
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
		}
	}
	procs := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for p := range procs {
		wg.Go(func() {
			for i := p; i < n; i += procs {
				evs := prepared[(i/len(prepared[0]))%len(prepared)]
				ev := &evs[i%len(evs)]
				cl.Produce(context.Background(), &kgo.Record{
					Topic: "bench", Key: ev.Key, Value: ev.Payload, Timestamp: time.Unix(0, ev.ReceivedAt),
					Headers: []kgo.RecordHeader{{Key: "messageId", Value: ev.MessageID}, {Key: "source", Value: ev.Source}, {Key: "type", Value: ev.Type}},
				}, promise)
			}
		})
	}
	wg.Wait()
	if err := cl.Flush(context.Background()); err != nil || failed.Load() > 0 {
		b.Fatalf("ceiling: %d failed, flush: %v", failed.Load(), err)
	}
}

// benchEvent is a 600-byte Segment-like track event.
func benchEvent(key string, n int) router.Event {
	id := fmt.Sprintf("3f1c9a2e-7b4d-4e8a-9c1f-%012d", n)
	body := fmt.Sprintf(`{"type":"track","event":"Order Completed","anonymousId":%q,"messageId":%q,`+
		`"properties":{"orderId":"o-%d","total":129.95,"currency":"EUR","products":[{"sku":"SKU-1","qty":2}]},`+
		`"context":{"library":{"name":"analytics.js","version":"4.1.0"},"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"},`+
		`"timestamp":"2026-01-02T03:04:05.000Z","receivedAt":"2026-01-02T03:04:05.120Z","pad":"`, key, id, n)
	var pad strings.Builder // incompressible-ish, as ids and free text are
	x := uint64(n)*2654435761 + 1
	for pad.Len() < 598-len(body) {
		x = x*6364136223846793005 + 1442695040888963407
		pad.WriteByte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(x>>32)%62])
	}
	body += pad.String() + `"}`
	return router.Event{Seq: uint64(n), MessageID: []byte(id), Key: []byte(key), Type: []byte("track"),
		Source: []byte("web"), ReceivedAt: time.Now().UnixNano(), Payload: []byte(body)}
}

// BenchmarkSendPaced measures the destination's Send latency (from Send to
// its Result: every record acknowledged) at half the rate it sustains: a
// first round of 100,000 events measures the sustained rate; then b.N
// events are sent with each worker pacing its batches so that all together
// offer half of it. Metrics: offered-events/s, p50-ms, p99-ms, max-ms.
func BenchmarkSendPaced(b *testing.B) {
	for _, bc := range []struct{ workers, batch int }{{16, 100}, {64, 100}} {
		b.Run(fmt.Sprintf("workers=%d/batch=%d", bc.workers, bc.batch), func(b *testing.B) {
			benchPaced(b, bc.workers, bc.batch)
		})
	}
}

func benchPaced(b *testing.B, workers, batch int) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(16, "bench"), kfake.BlackholeProduce())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	d, err := New(Config{Brokers: c.ListenAddrs(), Topic: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	prepared := make([][]router.Event, workers)
	for w := range prepared {
		for i := range batch {
			prepared[w] = append(prepared[w], benchEvent(fmt.Sprintf("user-%d-%d", w, i%10), w*batch+i))
		}
	}
	start := time.Now()
	destRound(b, d, prepared, 100_000)
	rate := 100_000 / time.Since(start).Seconds() / 2
	every := time.Duration(float64(time.Second) * float64(batch*workers) / rate) // per worker, between batches

	b.ResetTimer()
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	t0 := time.Now()
	for w, evs := range prepared {
		wg.Go(func() {
			var mine []time.Duration
			due := t0.Add(every * time.Duration(w) / time.Duration(workers)) // spread the workers' phases
			for next.Add(int64(len(evs))) <= int64(b.N)+int64(len(evs))-1 {
				time.Sleep(time.Until(due))
				due = due.Add(every)
				s := time.Now()
				if res := d.Send(context.Background(), evs); res.Status != 200 {
					panic(fmt.Sprintf("send: %+v", res))
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(rate, "offered-events/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}
