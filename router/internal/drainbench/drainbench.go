// Package drainbench is the benchmark shape of the queue destinations'
// benchmarks (router/redisdest, router/mqttdest): a full log drained by a
// real router into the destination, beside a same-run ceiling.
package drainbench

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// The shape: a full log of b.N
// 600-byte track events of 1000 users on the real disk, drained by a real
// router (batch 100, up to 16 batches in flight) into the destination, and
// in the same iteration the ceiling: the same client sending the same
// events, 100 per pipeline, from 16 goroutines, with nothing else to do.
// One op is one event on each side. Reported: sluice-events/s,
// ceiling-events/s and their ratio.

const (
	users = 1000 // the events' ordering keys
	// Batch is the router's batch size, and the ceiling's.
	Batch = 100
	// InFlight is the batches in flight on each side.
	InFlight = 16
)

// Events makes n track events of about 600 bytes.
func Events(n int) []engine.Record {
	recs := make([]engine.Record, n)
	now := time.Now().UnixNano()
	for i := range recs {
		user := fmt.Sprintf("user-%d", i%users)
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
	eng, err := engine.Open(engine.Options{Dir: b.TempDir(), ReclaimInterval: -1, Logger: slog.New(slog.DiscardHandler)})
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
	r, err := router.New(router.Config{Name: "bench", Ordering: true, BatchSize: Batch,
		ConcurrencyMax: InFlight, ConcurrencyInitial: InFlight, Timeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)},
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
// InFlight goroutines, and returns how long that took.
func ceiling(recs []engine.Record, send func(batch []engine.Record) error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range InFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(Batch)) - Batch
				if i >= len(recs) {
					return
				}
				if err := send(recs[i:min(len(recs), i+Batch)]); err != nil {
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

// Rounds: the ceiling and sluice take turns this many times, each
// over b.N events of their own, so that both see the same machine (others
// share its two cores); the totals are compared.
const Rounds = 3

// Compare runs the rounds: ceil sends a round's events with nothing else
// to do; sluice drains a full log of them through a router into dest.
func Compare(b *testing.B, dest router.Destination, ceil func([]engine.Record) error) {
	b.StopTimer()
	var sluiceTotal, ceilTotal time.Duration
	for range Rounds {
		took, err := ceiling(Events(b.N), ceil)
		if err != nil {
			b.Fatal(err)
		}
		ceilTotal += took
		eng, cons := fullLog(b, Events(b.N))
		b.StartTimer()
		sluiceTotal += drain(b, eng, cons, dest, b.N)
		b.StopTimer()
		eng.Close()
	}
	report(b, b.N*Rounds, sluiceTotal, ceilTotal)
}
