package natsdest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// TestClusterNodeKilled: a three-node JetStream cluster with an R3 stream;
// the stream's leader, the server the destination is connected to, is
// killed (SIGKILL) while batches are in flight. A
// driver that retries as the router does (failed events again, in order,
// each user one batch at a time) gets every event stored exactly once, in
// each user's order; sending everything again after that stores nothing
// (the duplicate window).
func TestClusterNodeKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	srvs := startCluster(t, 3)
	_, js := connect(t, srvs[0].url)
	name := uniqueName(t)
	// The meta leader may know fewer than three peers yet: retry until the
	// R3 stream can be placed.
	for deadline := time.Now().Add(30 * time.Second); ; {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Replicas: 3,
			Duplicates: 10 * time.Minute})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot create the R3 stream: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The destination is given the leader's URL only: killing it drops the
	// connection and the leader at once, and the client must fail over to
	// the servers the cluster announced.
	leader := streamLeader(t, js, name)
	var leaderURL string
	for _, s := range srvs {
		if s.name == leader {
			leaderURL = s.url
		}
	}
	d := newDest(t, Config{URLs: []string{leaderURL}, Stream: name, Subject: name + ".{source}.{key_hash:8}",
		Timeout: 3 * time.Second, ConnectTimeout: time.Second})

	const users, each = 40, 50
	var events []router.Event
	for n := range each {
		for u := range users {
			events = append(events, event("web", fmt.Sprint("user", u), n, "E"))
		}
	}
	var killed atomic.Bool
	dr := &driver{t: t, d: d, batch: 40, conc: 8, onDelivered: func(n int) {
		if n >= len(events)/3 && killed.CompareAndSwap(false, true) {
			for _, s := range srvs {
				if s.name == leader {
					t.Logf("killing %s, the stream leader, after %d events", s.name, n)
					go s.kill()
				}
			}
		}
	}}
	dr.deliver(events)
	if !killed.Load() {
		t.Fatal("the leader was never killed")
	}
	t.Logf("stats after the kill: %+v, %d failed sends", d.Stats(), dr.failedSends.Load())
	var alive *server
	for _, s := range srvs {
		if s.name != leader {
			alive = s
		}
	}
	_, js2 := connect(t, alive.url)
	checkStored(t, readAll(t, js2, name), users, each)

	before := d.Stats().Duplicates
	dr.onDelivered = nil
	dr.deliver(events)
	if got := readAll(t, js2, name); len(got) != len(events) {
		t.Fatalf("after sending everything again the stream holds %d messages, want %d", len(got), len(events))
	}
	if dups := d.Stats().Duplicates - before; dups != uint64(len(events)) {
		t.Fatalf("%d duplicates acked on the resend, want %d", dups, len(events))
	}
}

// streamLeader is the name of the server leading the stream.
func streamLeader(t *testing.T, js jetstream.JetStream, name string) string {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("no leader for the stream: %v %+v", err, info)
	}
	return info.Cluster.Leader
}

// checkStored checks that each of users' each events is stored exactly
// once and in order.
func checkStored(t *testing.T, got []stored, users, each int) {
	t.Helper()
	if len(got) != users*each {
		t.Errorf("stored %d messages, want %d", len(got), users*each)
	}
	next := map[string]int{}
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m.MsgID] {
			t.Fatalf("message %s stored twice", m.MsgID)
		}
		seen[m.MsgID] = true
		if m.N != next[m.Key] {
			t.Fatalf("user %s: event %d stored where %d was due (seq %d)", m.Key, m.N, next[m.Key], m.Seq)
		}
		next[m.Key]++
	}
}

// driver sends events the way the router does, for tests: per user one
// batch in flight, failed events retried in order, a few Sends at once.
type driver struct {
	t           *testing.T
	d           *Dest
	batch, conc int
	onDelivered func(total int)
	failedSends atomic.Int64
}

// deliver sends until every event is acked; a refusal or pause fails the
// test.
func (dr *driver) deliver(events []router.Event) {
	var mu sync.Mutex
	queues := map[string][]router.Event{}
	var order []string
	for _, ev := range events {
		k := string(ev.Key)
		if _, ok := queues[k]; !ok {
			order = append(order, k)
		}
		queues[k] = append(queues[k], ev)
	}
	busy := map[string]bool{}
	delivered := 0
	done := make(chan struct{}, dr.conc)
	inflight := 0
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if inflight >= dr.conc {
			<-done
			inflight--
			continue
		}
		mu.Lock()
		var b []router.Event
		var keys []string
		for _, k := range order {
			if busy[k] || len(queues[k]) == 0 || len(b) >= dr.batch {
				continue
			}
			take := queues[k][:min(len(queues[k]), dr.batch-len(b))]
			b = append(b, take...)
			keys = append(keys, k)
			busy[k] = true
		}
		left := 0
		for _, q := range queues {
			left += len(q)
		}
		mu.Unlock()
		if left == 0 && inflight == 0 {
			return
		}
		if time.Now().After(deadline) {
			dr.t.Fatalf("%d events still not delivered", left)
		}
		if len(b) == 0 {
			<-done
			inflight--
			continue
		}
		inflight++
		go func() {
			res := dr.d.Send(context.Background(), b)
			mu.Lock()
			n := dr.apply(b, res, queues)
			delivered += n
			total := delivered
			for _, k := range keys {
				busy[k] = false
			}
			mu.Unlock()
			if dr.onDelivered != nil {
				dr.onDelivered(total)
			}
			if n < len(b) {
				time.Sleep(50 * time.Millisecond) // a retry backoff
			}
			done <- struct{}{}
		}()
	}
}

// apply removes the batch's acked events from their queues and returns
// how many; it fails the test on a refusal, a pause, or an ack after a
// failure of the same user.
func (dr *driver) apply(b []router.Event, res router.Result, queues map[string][]router.Event) int {
	if res.Pause {
		dr.t.Errorf("paused: %v", res.Err)
		return 0
	}
	if res.Err != nil || res.Status != 200 {
		dr.failedSends.Add(1)
		return 0
	}
	failed := make([]bool, len(b))
	for _, r := range res.Rejected {
		if r.Status != 503 {
			dr.t.Errorf("event %s refused: %d %s", b[r.Index].MessageID, r.Status, r.Reason)
		}
		failed[r.Index] = true
	}
	stopped := map[string]bool{}
	n := 0
	for i, ev := range b {
		k := string(ev.Key)
		if failed[i] {
			stopped[k] = true
			continue
		}
		if stopped[k] {
			dr.t.Errorf("event %s acked after an earlier one of its user failed", ev.MessageID)
			continue
		}
		queues[k] = queues[k][1:]
		n++
	}
	return n
}
