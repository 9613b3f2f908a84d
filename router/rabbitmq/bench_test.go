package rabbitmq

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// The benchmarks publish 600-byte events of 1,000 users, persistent and
// confirmed, to a topic exchange bound to one durable queue, and measure
// them beside a ceiling run in the same benchmark: the same messages
// (same properties, headers and routing keys) published by amqp091-go
// code that does nothing else, over the same number of confirm-mode
// channels, each publishing 100 back to back and then waiting for their
// confirms. One op is one event.
//
//	go test ./router/rabbitmq -run '^$' -bench . -benchtime 20000x -count 5

const (
	benchUsers    = 1000
	benchBatch    = 100
	benchChannels = 16
)

// benchEvents are n events, users round robin, 600-byte payloads.
func benchEvents(n int) []router.Event {
	evs := make([]router.Event, n)
	now := time.Now().UnixNano()
	for i := range evs {
		user := fmt.Sprintf("user-%d", i%benchUsers)
		mid := fmt.Sprintf("bench-%d", i)
		p := fmt.Appendf(nil, `{"type":"track","event":"Product Viewed","userId":%q,"messageId":%q,"properties":{"pad":"`, user, mid)
		for len(p) < 598 {
			p = append(p, 'x')
		}
		evs[i] = router.Event{Seq: uint64(i + 1), MessageID: []byte(mid), Key: []byte(user), Type: []byte("track"),
			Source: []byte("web"), ReceivedAt: now, Payload: append(p, `"}}`...)}
	}
	return evs
}

type benchRig struct {
	b         *testing.B
	a         *admin
	exchange  string
	queue     string
	transient bool
}

func newBenchRig(b *testing.B, transient bool) *benchRig {
	a := newAdmin(b)
	x := a.exchange("topic")
	return &benchRig{b: b, a: a, exchange: x, queue: a.queue(x, "#"), transient: transient}
}

// modes runs bench with persistent and with transient messages: the
// first is bound by the broker's disk, the second shows the client's
// own cost better.
func modes(b *testing.B, bench func(*testing.B, *benchRig)) {
	for _, transient := range []bool{false, true} {
		name := "persistent"
		if transient {
			name = "transient"
		}
		b.Run(name, func(b *testing.B) { bench(b, newBenchRig(b, transient)) })
	}
}

// measure measures the ceiling before and after run (the broker's pace
// drifts on a shared machine) and reports the faster beside run's time.
// Only run is timed (ns/op, allocs).
func (r *benchRig) measure(evs []router.Event, run func() time.Duration) {
	r.b.StopTimer()
	before := r.ceiling(evs)
	r.purge()
	r.b.StartTimer()
	took := run()
	r.b.StopTimer()
	r.purge()
	after := r.ceiling(evs)
	r.purge()
	report(r.b, took, min(before, after))
}

func (r *benchRig) purge() {
	if _, err := r.a.ch.QueuePurge(r.queue, false); err != nil {
		r.b.Fatal(err)
	}
}

// ceiling publishes evs straight with amqp091-go and returns how long it
// took: benchChannels goroutines, each taking the next 100 events.
func (r *benchRig) ceiling(evs []router.Event) time.Duration {
	conn, err := amqp.Dial(brokerURL(brokerAddr))
	if err != nil {
		r.b.Fatal(err)
	}
	defer conn.Close()
	chans := make([]*amqp.Channel, benchChannels)
	for i := range chans {
		if chans[i], err = conn.Channel(); err != nil {
			r.b.Fatal(err)
		}
		if err := chans[i].Confirm(false); err != nil {
			r.b.Fatal(err)
		}
	}
	batches := make(chan []router.Event, len(evs)/benchBatch+1)
	for i := 0; i < len(evs); i += benchBatch {
		batches <- evs[i:min(i+benchBatch, len(evs))]
	}
	close(batches)
	mode := amqp.Persistent
	if r.transient {
		mode = amqp.Transient
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Go(func() {
			dcs := make([]*amqp.DeferredConfirmation, 0, benchBatch)
			for batch := range batches {
				dcs = dcs[:0]
				for i := range batch {
					ev := &batch[i]
					dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), r.exchange, "web.track", true, false,
						amqp.Publishing{ContentType: "application/json", AppId: "sluice", DeliveryMode: mode,
							Headers: amqp.Table{"source": string(ev.Source), "type": string(ev.Type)}, MessageId: string(ev.MessageID),
							Timestamp: time.Unix(0, ev.ReceivedAt), Body: ev.Payload})
					if err != nil {
						r.b.Error(err)
						return
					}
					dcs = append(dcs, dc)
				}
				for _, dc := range dcs {
					if !dc.Wait() {
						r.b.Error("nacked")
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkSend is the destination alone: benchChannels goroutines call
// Send with batches of 100 (one user's batch at a time is the router's
// business; here the batches mix users).
func BenchmarkSend(b *testing.B) { modes(b, benchSend) }

func benchSend(b *testing.B, r *benchRig) {
	evs := benchEvents(b.N)
	d := newDest(b, Config{Exchange: r.exchange, Channels: benchChannels, Transient: r.transient})
	b.ReportAllocs()
	b.SetBytes(600)
	r.measure(evs, func() time.Duration { return sendAll(b, d, evs) })
}

func sendAll(b *testing.B, d *RabbitMQ, evs []router.Event) time.Duration {
	start := time.Now()
	batches := make(chan []router.Event, len(evs)/benchBatch+1)
	for i := 0; i < len(evs); i += benchBatch {
		batches <- evs[i:min(i+benchBatch, len(evs))]
	}
	close(batches)
	var wg sync.WaitGroup
	for range benchChannels {
		wg.Go(func() {
			for batch := range batches {
				if res := d.Send(context.Background(), batch); res.Status != 200 || len(res.Rejected) > 0 {
					b.Errorf("send: %+v", res)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkDrain is the whole delivery path from a full log: b.N events
// appended to an engine (in memory) before the clock starts, then a router
// with the destination (batch 100, concurrency up to 64, per-user order)
// drains it.
func BenchmarkDrain(b *testing.B) { modes(b, benchDrain) }

func benchDrain(b *testing.B, r *benchRig) {
	evs := benchEvents(b.N)
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1, Logger: quiet,
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	cons, err := eng.Consumer("rabbit")
	if err != nil {
		b.Fatal(err)
	}
	recs := make([]engine.Record, 0, 1000)
	for i := 0; i < len(evs); i += cap(recs) {
		recs = recs[:0]
		for _, ev := range evs[i:min(i+cap(recs), len(evs))] {
			recs = append(recs, engine.Record{Source: ev.Source, Type: ev.Type, MessageID: ev.MessageID, Key: ev.Key,
				Payload: ev.Payload, ReceivedAt: ev.ReceivedAt})
		}
		if _, err := eng.Append(context.Background(), recs); err != nil {
			b.Fatal(err)
		}
	}
	d := newDest(b, Config{Exchange: r.exchange, Channels: benchChannels, Transient: r.transient})
	rt, err := router.New(router.Config{Name: "rabbit", Ordering: true, BatchSize: benchBatch, ConcurrencyMax: 64,
		ConcurrencyInitial: 16, Logger: quiet}, eng, cons, d)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(600)
	r.measure(evs, func() time.Duration { return drain(b, rt, eng, cons) })
}

// drain runs the router until its cursor is past the log's end.
func drain(b *testing.B, rt *router.Router, eng *engine.Engine, cons *engine.Consumer) time.Duration {
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	last := eng.LastSeq()
	for {
		if cur, _ := cons.Cursor(); cur == last+1 {
			break
		}
		select {
		case err := <-done:
			b.Fatalf("router stopped: %v", err)
		case <-time.After(time.Millisecond): // the cursor has no change signal
		}
	}
	took := time.Since(start)
	cancel()
	<-done
	rt.Close()
	if st := rt.Status(); st.Counters.Aborted > 0 {
		b.Errorf("aborted %d", st.Counters.Aborted)
	}
	return took
}

func report(b *testing.B, took, ceiling time.Duration) {
	rate := float64(b.N) / took.Seconds()
	ceil := float64(b.N) / ceiling.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(ceil, "ceiling-events/s")
	b.ReportMetric(rate/ceil, "ratio")
}
