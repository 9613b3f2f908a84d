package router

import (
	"context"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine"
)

// BenchmarkMachineDrain is the router's dispatch path without a network:
// a Machine drains a backlog of 600-byte events, batches of 10, answered
// 200 at once. One op is one event.
func BenchmarkMachineDrain(b *testing.B) {
	for _, budget := range []bool{false, true} {
		b.Run(fmt.Sprintf("budget=%v", budget), func(b *testing.B) { benchDrain(b, budget) })
	}
}

func benchDrain(b *testing.B, budget bool) {
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1, Logger: discard,
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	cons, err := eng.Consumer("bench")
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Name: "bench", Ordering: true, BatchSize: 10, ConcurrencyInitial: 64, Logger: discard, Clock: &fakeClock{now: epoch}}
	if budget {
		if cfg.WindowBudget, err = NewWindowBudget(64<<20, 0); err != nil {
			b.Fatal(err)
		}
	}
	m, err := NewMachine(cfg, eng, cons)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	payload := make([]byte, 600)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	recs := make([]engine.Record, 1000)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for done := 0; done < b.N; {
		b.StopTimer()
		n := min(len(recs), b.N-done)
		for i := range n {
			recs[i] = engine.Record{Source: []byte("web"), Type: []byte("track"), MessageID: fmt.Appendf(nil, "m%d", done+i),
				Key: fmt.Appendf(nil, "u%d", (done+i)%97), Payload: payload, ReceivedAt: epoch.UnixNano()}
		}
		if _, err := eng.Append(context.Background(), recs[:n]); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var answered []*Dispatch
		for left := n; left > 0; {
			ds, err := m.Step(epoch, answered)
			if err != nil {
				b.Fatal(err)
			}
			if len(ds) == 0 {
				b.Fatalf("nothing to send with %d events left", left)
			}
			for _, d := range ds {
				left -= len(d.Events)
				d.Result = Result{Status: 200}
			}
			answered = ds
		}
		if _, err := m.Step(epoch, answered); err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
