package natsdest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// timed wraps the destination to record, per event it delivers, the time
// from its ReceivedAt (set when it was appended) to the ack.
type timed struct {
	*Dest
	mu   sync.Mutex
	hist *hdrhistogram.Histogram // microseconds
}

func (t *timed) Send(ctx context.Context, events []router.Event) router.Result {
	res := t.Dest.Send(ctx, events)
	if res.Err != nil || res.Pause || res.Status != 200 {
		return res
	}
	now := time.Now().UnixNano()
	refused := map[int]bool{}
	for _, r := range res.Rejected {
		refused[r.Index] = true
	}
	t.mu.Lock()
	for i := range events {
		if !refused[i] {
			t.hist.RecordValue((now - events[i].ReceivedAt) / 1e3)
		}
	}
	t.mu.Unlock()
	return res
}

// BenchmarkRouterJetStreamLatency: the sustained rate of the whole path
// is measured by draining a backlog of 50,000 events; then events are
// appended at half that rate for 10 s (100 per append, 1,000 users) while
// the router delivers them, and the time from append to ack is recorded
// per event: p50 and p99 in milliseconds; beside them, the same rate
// published by nats.go alone (latencyCeiling).
//
//	go test ./router/natsdest -run '^$' -bench RouterJetStreamLatency -benchtime 1x
func BenchmarkRouterJetStreamLatency(b *testing.B) {
	const users, backlog, appendBatch = 1000, 50_000, 100
	_, js := connect(b, sharedURL)
	name := uniqueName(b)
	makeStream(b, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage})
	d := newDest(b, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{source}.{type}.{key_hash:16}"})
	quiet := slog.New(slog.DiscardHandler)
	pad := strings.Repeat("x", 420)
	n := 0
	records := func(k int) []engine.Record {
		recs := make([]engine.Record, k)
		for i := range recs {
			n++
			user, mid := fmt.Sprintf("u%d", n%users), fmt.Sprintf("%s-%d", name, n)
			payload := fmt.Appendf(nil, `{"type":"track","event":"Product Viewed","userId":%q,"messageId":%q,"n":%d,"properties":{"pad":%q}}`,
				user, mid, n, pad)
			recs[i] = engine.Record{Source: []byte("web"), Type: []byte("track"), MessageID: []byte(mid), Key: []byte(user),
				Payload: payload, ReceivedAt: time.Now().UnixNano()}
		}
		return recs
	}
	for b.Loop() {
		eng, err := engine.Open(engine.Options{Dir: b.TempDir(), ReclaimInterval: -1, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		cons, err := eng.Consumer("nats")
		if err != nil {
			b.Fatal(err)
		}
		recs := records(backlog)
		for i := 0; i < len(recs); i += 1000 {
			if _, err := eng.Append(context.Background(), recs[i:i+1000]); err != nil {
				b.Fatal(err)
			}
		}
		td := &timed{Dest: d, hist: hdrhistogram.New(1, 60_000_000, 3)}
		r, err := router.New(router.Config{Name: "nats", Ordering: true, BatchSize: 100, ConcurrencyMax: 64,
			Timeout: 30 * time.Second, Logger: quiet}, eng, cons, td)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- r.Run(ctx) }()
		waitDelivered(b, r, backlog)
		rate := float64(backlog) / time.Since(start).Seconds()

		// Half the sustained rate, for 10 s.
		td.mu.Lock()
		td.hist.Reset()
		td.mu.Unlock()
		every := time.Duration(float64(time.Second) * appendBatch / (rate / 2))
		tick := time.NewTicker(every)
		sent := 0
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
			<-tick.C
			if _, err := eng.Append(context.Background(), records(appendBatch)); err != nil {
				b.Fatal(err)
			}
			sent += appendBatch
		}
		tick.Stop()
		waitDelivered(b, r, backlog+sent)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		eng.Close()
		purge(b, js, name)
		ceilP50, ceilP99 := latencyCeiling(b, d, every, appendBatch, records)
		purge(b, js, name)
		b.ReportMetric(ceilP50, "ceiling_p50_ms")
		b.ReportMetric(ceilP99, "ceiling_p99_ms")
		td.mu.Lock()
		b.ReportMetric(rate, "sustained_events/s")
		b.ReportMetric(float64(sent)/10, "offered_events/s")
		b.ReportMetric(float64(td.hist.ValueAtQuantile(50))/1e3, "p50_ms")
		b.ReportMetric(float64(td.hist.ValueAtQuantile(99))/1e3, "p99_ms")
		b.ReportMetric(float64(td.hist.Max())/1e3, "max_ms")
		td.mu.Unlock()
	}
	b.ReportMetric(0, "ns/op")
}

// latencyCeiling publishes batch messages every interval for 10 s with
// nats.go alone (the destination's subjects and headers) and returns the
// p50 and p99 in milliseconds from publish to ack: what the server and the
// machine give at that rate, with nothing of Sluice in the way.
func latencyCeiling(b *testing.B, d *Dest, every time.Duration, batch int, records func(int) []engine.Record) (p50, p99 float64) {
	b.Helper()
	hist := hdrhistogram.New(1, 60_000_000, 3)
	var mu sync.Mutex
	var sent sync.Map // *nats.Msg -> time.Time
	nc, err := nats.Connect(sharedURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	pjs, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(d.cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(d.cfg.Timeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
			if t, ok := sent.LoadAndDelete(m); ok {
				mu.Lock()
				hist.RecordValue(time.Since(t.(time.Time)).Microseconds())
				mu.Unlock()
			}
		}))
	if err != nil {
		b.Fatal(err)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		<-tick.C
		for _, r := range records(batch) {
			ev := router.Event{MessageID: r.MessageID, Key: r.Key, Type: r.Type, Source: r.Source, Payload: r.Payload}
			m := &nats.Msg{Subject: string(d.tmpl.Subject(nil, &ev)), Data: ev.Payload, Header: d.header(&ev)}
			sent.Store(m, time.Now())
			if _, err := pjs.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
	}
	select {
	case <-pjs.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("the ceiling's acks never all came")
	}
	mu.Lock()
	defer mu.Unlock()
	return float64(hist.ValueAtQuantile(50)) / 1e3, float64(hist.ValueAtQuantile(99)) / 1e3
}

// waitDelivered waits until the router has delivered n events.
func waitDelivered(b *testing.B, r *router.Router, n int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := r.Status()
		if int(st.Counters.Delivered) >= n {
			return
		}
		if st.Counters.Aborted > 0 || time.Now().After(deadline) {
			b.Fatalf("router status %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
