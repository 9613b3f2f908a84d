package natsdest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// benchEvents is one round's workload.
const benchEvents = 50_000

// BenchmarkJetStream measures events/s delivered by the destination into a
// file-stored R1 stream on the machine's nats-server, beside a ceiling
// measured in the same round: the same messages (subjects, headers,
// payloads of about 600 bytes) published asynchronously with nats.go, with
// the same bound on pending acks, by code doing nothing else. The
// destination is driven as the router drives it: 64 Sends of 100 events
// at once, no user in two Sends at a time. keys is the users per batch:
// 100 (each event of a batch another user's: one ack round trip per
// batch) or 10 (ten events of each user in a batch: a chain of ten
// acks, as the router's batches are with ~1000 users backlogged).
//
//	go test ./router/natsdest -run '^$' -bench JetStream -benchtime 3x
func BenchmarkJetStream(b *testing.B) {
	for _, keys := range []int{100, 10} {
		b.Run(fmt.Sprintf("keys_per_batch=%d", keys), func(b *testing.B) { benchJetStream(b, keys) })
	}
}

func benchJetStream(b *testing.B, keysPerBatch int) {
	const conc, batch = 64, 100
	_, js := connect(b, sharedURL)
	name := uniqueName(b)
	makeStream(b, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage})
	d := newDest(b, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{source}.{type}.{key_hash:16}"})
	var ceil, dest, ceilCPU, destCPU time.Duration
	events := 0
	b.ReportAllocs()
	for round := 0; b.Loop(); round++ {
		// Each Send's batch: keysPerBatch users of its own (a user is in one
		// worker's batches only), events in each user's order.
		batches := benchBatches(fmt.Sprint(round), conc, batch, keysPerBatch)
		events += conc * len(batches[0]) * batch
		cpu := cpuTime()
		ceil += benchCeiling(b, js, d, batches)
		ceilCPU += cpuTime() - cpu
		purge(b, js, name)
		cpu = cpuTime()
		dest += benchDest(b, d, batches, conc)
		destCPU += cpuTime() - cpu
		purge(b, js, name)
	}
	n := float64(events)
	b.ReportMetric(n/ceil.Seconds(), "ceiling_events/s")
	b.ReportMetric(n/dest.Seconds(), "events/s")
	b.ReportMetric(ceil.Seconds()/dest.Seconds(), "ratio")
	// This process's CPU per event (the server's is not in it): what the
	// destination costs beside the bare client, whatever else the machine
	// runs.
	b.ReportMetric(float64(ceilCPU.Microseconds())/n, "ceiling_cpu_us/event")
	b.ReportMetric(float64(destCPU.Microseconds())/n, "cpu_us/event")
	b.ReportMetric(0, "ns/op")
}

// benchBatches makes benchEvents events as batches, per worker in order.
func benchBatches(round string, conc, batch, keysPerBatch int) [][][]router.Event {
	pad := strings.Repeat("x", 420)
	per := benchEvents / conc / batch
	out := make([][][]router.Event, conc)
	for w := range conc {
		for i := range per {
			var bt []router.Event
			for j := range batch {
				user := fmt.Sprintf("u%d-%d", w, j%keysPerBatch)
				n := i*batch + j
				mid := fmt.Sprintf("%s-%d-%d", round, w, n)
				payload := fmt.Sprintf(`{"type":"track","event":"Product Viewed","userId":%q,"messageId":%q,"n":%d,"properties":{"pad":%q}}`,
					user, mid, n, pad)
				bt = append(bt, router.Event{MessageID: []byte(mid), Key: []byte(user), Type: []byte("track"),
					Source: []byte("web"), Payload: []byte(payload)})
			}
			out[w] = append(out[w], bt)
		}
	}
	return out
}

// benchCeiling publishes the batches' messages with nats.go alone.
func benchCeiling(b *testing.B, js jetstream.JetStream, d *Dest, batches [][][]router.Event) time.Duration {
	b.Helper()
	var msgs []*nats.Msg
	for _, w := range batches {
		for _, bt := range w {
			for i := range bt {
				msgs = append(msgs, &nats.Msg{Subject: string(d.tmpl.Subject(nil, &bt[i])), Data: bt[i].Payload, Header: d.header(&bt[i])})
			}
		}
	}
	nc, err := nats.Connect(sharedURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	pjs, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(d.cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(d.cfg.Timeout))
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		f, err := pjs.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute))
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
	}
	select {
	case <-pjs.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("the ceiling's acks never all came")
	}
	elapsed := time.Since(start)
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatalf("ceiling publish failed: %v", err)
		}
	}
	return elapsed
}

// benchDest sends the batches through the destination, conc at once.
func benchDest(b *testing.B, d *Dest, batches [][][]router.Event, conc int) time.Duration {
	b.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Go(func() {
			for _, bt := range batches[w] {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res := d.Send(ctx, bt)
				cancel()
				if res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
					b.Errorf("send: %+v", res)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func purge(b *testing.B, js jetstream.JetStream, name string) {
	b.Helper()
	s, err := js.Stream(b.Context(), name)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Purge(b.Context()); err != nil {
		b.Fatal(err)
	}
}
