package natsdest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// BenchmarkRouterJetStream is the whole delivery path: a log of 100,000
// events of 1,000 users (about 600 bytes each) is appended first, then a
// router (batches of 100, concurrency 64, ordering on) drains it through
// the destination into a file-stored R1 stream. Beside it, in the same
// round, the ceiling: the same messages published asynchronously by
// nats.go alone (benchCeiling).
//
//	go test ./router/natsdest -run '^$' -bench RouterJetStream -benchtime 2x
func BenchmarkRouterJetStream(b *testing.B) {
	const events, users = 100_000, 1000
	_, js := connect(b, sharedURL)
	name := uniqueName(b)
	makeStream(b, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage})
	d := newDest(b, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{source}.{type}.{key_hash:16}"})
	quiet := slog.New(slog.DiscardHandler)
	var ceil, dest, ceilCPU, destCPU time.Duration
	total := 0
	for round := 0; b.Loop(); round++ {
		evs := make([]router.Event, events)
		recs := make([]engine.Record, events)
		pad := strings.Repeat("x", 420)
		for i := range evs {
			user, mid := fmt.Sprintf("u%d", i%users), fmt.Sprintf("r%d-%d", round, i)
			payload := fmt.Appendf(nil, `{"type":"track","event":"Product Viewed","userId":%q,"messageId":%q,"n":%d,"properties":{"pad":%q}}`,
				user, mid, i, pad)
			evs[i] = router.Event{MessageID: []byte(mid), Key: []byte(user), Type: []byte("track"), Source: []byte("web"), Payload: payload}
			recs[i] = engine.Record{Source: evs[i].Source, Type: evs[i].Type, MessageID: evs[i].MessageID, Key: evs[i].Key,
				Payload: payload, ReceivedAt: time.Now().UnixNano()}
		}
		cpu := cpuTime()
		ceil += benchCeiling(b, js, d, [][][]router.Event{{evs}})
		ceilCPU += cpuTime() - cpu
		purge(b, js, name)

		eng, err := engine.Open(engine.Options{Dir: b.TempDir(), ReclaimInterval: -1, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		// The consumer first: a new one starts at the log's end.
		cons, err := eng.Consumer("nats")
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < len(recs); i += 1000 {
			if _, err := eng.Append(context.Background(), recs[i:i+1000]); err != nil {
				b.Fatal(err)
			}
		}
		cpu = cpuTime()
		dest += drainRouter(b, eng, cons, d, events)
		destCPU += cpuTime() - cpu
		eng.Close()
		purge(b, js, name)
		total += events
	}
	n := float64(total)
	b.ReportMetric(n/ceil.Seconds(), "ceiling_events/s")
	b.ReportMetric(n/dest.Seconds(), "events/s")
	b.ReportMetric(ceil.Seconds()/dest.Seconds(), "ratio")
	b.ReportMetric(float64(ceilCPU.Microseconds())/n, "ceiling_cpu_us/event")
	b.ReportMetric(float64(destCPU.Microseconds())/n, "cpu_us/event")
	b.ReportMetric(0, "ns/op")
}

// drainRouter runs a router over the engine's log into d until events are
// delivered, and returns how long that took.
func drainRouter(b *testing.B, eng *engine.Engine, cons *engine.Consumer, d *Dest, events int) time.Duration {
	b.Helper()
	r, err := router.New(router.Config{Name: "nats", Ordering: true, BatchSize: 100, ConcurrencyMax: 64,
		Timeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)}, eng, cons, d)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := r.Status()
		if int(st.Counters.Delivered) >= events {
			break
		}
		if st.Counters.Aborted > 0 || time.Now().After(deadline) {
			b.Fatalf("router status %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return elapsed
}
