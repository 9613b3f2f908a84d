package redisdest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// Benchmark shape, shared with router/mqttdest's: a full log of b.N
// 600-byte track events of 1000 users on the real disk, drained by a real
// router (batch 100, up to 16 batches in flight) into the destination, and
// in the same iteration the ceiling: the same client sending the same
// events, 100 per pipeline, from 16 goroutines, with nothing else to do.
// One op is one event on each side. Reported: sluice-events/s,
// ceiling-events/s and their ratio.

const (
	benchUsers   = 1000
	benchBatch   = 100
	benchInFlite = 16
)

var quiet = slog.New(slog.DiscardHandler)

// benchEvents makes n track events of about 600 bytes.
func benchEvents(n int) []engine.Record {
	recs := make([]engine.Record, n)
	now := time.Now().UnixNano()
	for i := range recs {
		user := fmt.Sprintf("user-%d", i%benchUsers)
		mid := fmt.Sprintf("bench-%d-%d", now, i)
		p := fmt.Appendf(nil, `{"type":"track","event":"Order Completed","userId":%q,"messageId":%q,`+
			`"timestamp":"2026-12-05T10:00:00Z","context":{"library":{"name":"analytics.js","version":"4.1.0"},`+
			`"ip":"203.0.113.7","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"},"properties":{"orderId":"o-%d",`+
			`"total":129.99,"currency":"EUR","products":[{"sku":"sku-1","qty":2},{"sku":"sku-2","qty":1}]}}`, user, mid, i)
		for len(p) < 600 {
			p = append(p[:len(p)-1], `,"pad":"................................................"}`...)
		}
		recs[i] = engine.Record{Source: []byte("web"), Type: []byte("track"), MessageID: []byte(mid), Key: []byte(user),
			Payload: p, ReceivedAt: now}
	}
	return recs
}

// fullLog opens an engine in a temporary folder holding recs.
func fullLog(b *testing.B, recs []engine.Record) (*engine.Engine, *engine.Consumer) {
	eng, err := engine.Open(engine.Options{Dir: b.TempDir(), ReclaimInterval: -1, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	cons, err := eng.Consumer("bench") // first: a consumer starts at the log's end
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < len(recs); i += 1000 {
		if _, err := eng.Append(context.Background(), recs[i:min(len(recs), i+1000)]); err != nil {
			b.Fatal(err)
		}
	}
	return eng, cons
}

// counting signals done once want events were taken.
type counting struct {
	router.Destination
	n    atomic.Int64
	want int64
	once sync.Once
	done chan struct{}
}

func (c *counting) Send(ctx context.Context, evs []router.Event) router.Result {
	res := c.Destination.Send(ctx, evs)
	if res.Err == nil && res.Status == 200 && !res.Pause {
		if c.n.Add(int64(len(evs)-len(res.Rejected))) >= c.want {
			c.once.Do(func() { close(c.done) })
		}
	}
	return res
}

func (c *counting) Close() error { return nil } // the benchmark closes the destination

// drain runs a router over the log until every event was delivered and
// returns how long that took.
func drain(b *testing.B, eng *engine.Engine, cons *engine.Consumer, dest router.Destination, n int) time.Duration {
	c := &counting{Destination: dest, want: int64(n), done: make(chan struct{})}
	r, err := router.New(router.Config{Name: "bench", Ordering: true, BatchSize: benchBatch,
		ConcurrencyMax: benchInFlite, ConcurrencyInitial: benchInFlite, Timeout: 30 * time.Second, Logger: quiet},
		eng, cons, c)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	select {
	case <-c.done:
	case err := <-ran:
		b.Fatalf("router stopped: %v", err)
	}
	took := time.Since(start)
	cancel()
	<-ran
	r.Close()
	return took
}

// ceiling sends the events through send, batch by batch, from
// benchInFlite goroutines, and returns how long that took.
func ceiling(recs []engine.Record, send func(batch []engine.Record) error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range benchInFlite {
		wg.Go(func() {
			for {
				i := int(next.Add(benchBatch)) - benchBatch
				if i >= len(recs) {
					return
				}
				if err := send(recs[i:min(len(recs), i+benchBatch)]); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func report(b *testing.B, n int, sluice, ceil time.Duration) {
	s, c := float64(n)/sluice.Seconds(), float64(n)/ceil.Seconds()
	b.ReportMetric(s, "sluice-events/s")
	b.ReportMetric(c, "ceiling-events/s")
	b.ReportMetric(s/c, "ratio")
}

// benchRounds: the ceiling and sluice take turns this many times, each
// over b.N events of their own, so that both see the same machine (others
// share its two cores); the totals are compared.
const benchRounds = 3

// compare runs the rounds: ceil sends a round's events with nothing else
// to do; sluice drains a full log of them through a router into dest.
func compare(b *testing.B, dest router.Destination, ceil func([]engine.Record) error) {
	b.StopTimer()
	var sluiceTotal, ceilTotal time.Duration
	for range benchRounds {
		took, err := ceiling(benchEvents(b.N), ceil)
		if err != nil {
			b.Fatal(err)
		}
		ceilTotal += took
		eng, cons := fullLog(b, benchEvents(b.N))
		b.StartTimer()
		sluiceTotal += drain(b, eng, cons, dest, b.N)
		b.StopTimer()
		eng.Close()
	}
	report(b, b.N*benchRounds, sluiceTotal, ceilTotal)
}

// BenchmarkRedisDrain: XADD into one stream; the ceiling is the same
// go-redis client sending the same XADDs as a plain pipeline (no
// MULTI/EXEC, no script), so the ratio also pays for the transaction and,
// idempotent, for the script.
func BenchmarkRedisDrain(b *testing.B) {
	for _, idem := range []bool{false, true} {
		b.Run(fmt.Sprintf("idempotent=%v", idem), func(b *testing.B) {
			c := admin(b, testAddr())
			p := prefix(b, c)
			d := newDest(b, Config{Addr: testAddr(), Stream: p + "{type}", Idempotent: idem, DedupPrefix: "sluice:seen:" + p,
				Conns: benchInFlite * 2})
			ctx := context.Background()
			compare(b, d, func(batch []engine.Record) error {
				pipe := d.client.Pipeline()
				for _, r := range batch {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: p + "ceiling", Values: []any{"event", r.Payload,
						"message_id", r.MessageID, "type", r.Type, "source", r.Source}})
				}
				_, err := pipe.Exec(ctx)
				return err
			})
			if got := c.XLen(ctx, p+"track").Val(); got != int64(b.N*benchRounds) {
				b.Fatalf("%d entries for %d events", got, b.N*benchRounds)
			}
		})
	}
}
