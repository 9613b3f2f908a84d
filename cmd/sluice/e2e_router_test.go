package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/bench/sink"
	"github.com/sluice-cdi/sluice/engine"
)

// TestE2EDeliveryWithFaults runs the real binary against a real HTTP sink
// that has an outage window, a 429 burst, slow answers and 1% poison
// events, and kills the binary with SIGKILL halfway. Every acknowledged
// event must reach the sink or be a dead letter with a reason (exactly the
// poison ones), and for every user the first arrivals are in order.
//
// In "named" the sink names the poison events of a batch and takes the rest
// (the webhook's partial_failures); in "whole" it refuses such a batch.
func TestE2EDeliveryWithFaults(t *testing.T) {
	for _, named := range []bool{false, true} {
		name := map[bool]string{false: "whole", true: "named"}[named]
		t.Run(name, func(t *testing.T) { deliveryWithFaults(t, named) })
	}
}

func deliveryWithFaults(t *testing.T, named bool) {
	const users, perUser, poisonPercent = 16, 60, 1.0
	sk := sink.New(sink.Config{
		PoisonPercent: poisonPercent,
		NamePoison:    named,
		Faults: []sink.Fault{
			{Kind: sink.Outage, From: 800 * time.Millisecond, To: 2 * time.Second},
			{Kind: sink.Throttle, From: 3 * time.Second, To: 3500 * time.Millisecond, RetryAfter: time.Second},
			{Kind: sink.Slow, From: 4 * time.Second, To: 5 * time.Second, Latency: 20 * time.Millisecond},
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go sk.Serve(ln)
	defer sk.Close()
	dest := fmt.Sprintf(`  - name: hook
    type: webhook
    batch_size: 10
    timeout: 5s
    retry:
      min_attempts: 3
      backoff_initial: 100ms
      backoff_max: 1s
    config:
      url: http://%s/ingest
      partial_failures: %v
`, ln.Addr(), named)
	dataDir := t.TempDir()
	srv := startServerWith(t, dataDir, dest)
	sk.Reset()

	var mu sync.Mutex
	acked := map[string]bool{}
	var cur struct {
		sync.RWMutex
		p *sluiceProc
	}
	cur.p = srv
	client := &http.Client{Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 7))
			for n := 0; n < perUser; n++ {
				mid := fmt.Sprintf("dlv-%d-%d", u, n)
				body := fmt.Sprintf(`{"type":"track","anonymousId":"user-%d","event":"E","messageId":%q,"properties":{"n":%d}}`, u, mid, n)
				for attempt := 0; ; attempt++ { // retry until acknowledged, like an SDK
					cur.RLock()
					p := cur.p
					cur.RUnlock()
					status, _ := post(ctx, client, p.url+"/v1/track", srcWeb, []byte(body))
					if status == 200 {
						mu.Lock()
						acked[mid] = true
						mu.Unlock()
						break
					}
					if ctx.Err() != nil || attempt > 400 {
						t.Errorf("event %s never acknowledged", mid)
						return
					}
					time.Sleep(25 * time.Millisecond)
				}
				time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond) // inside the outage
	srv.kill(t)
	restarted := startServerWith(t, dataDir, dest)
	cur.Lock()
	cur.p = restarted
	cur.Unlock()
	wg.Wait()

	// Wait until every acknowledged event arrived or is a dead letter (the
	// issue's guarantee: delivered, or kept with a reason).
	admin := adminAddr(t, restarted)
	deadline := time.Now().Add(45 * time.Second)
	var missing []string
	for time.Now().Before(deadline) {
		dead := adminDeadLetters(t, admin, "hook")
		missing = missing[:0]
		mu.Lock()
		for mid := range acked {
			if _, ok := dead[mid]; sk.Arrived(mid) == 0 && !ok {
				missing = append(missing, mid)
			}
		}
		mu.Unlock()
		if len(missing) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("%d acknowledged events neither delivered nor dead letters, e.g. %v; sink %+v", len(missing), missing[:min(5, len(missing))], sk.Report())
	}
	time.Sleep(500 * time.Millisecond) // let the last poison aborts be recorded
	restarted.stop(t)

	rep := sk.Report()
	if len(rep.OrderViolations) > 0 {
		t.Fatalf("per-user order broken: %v", rep.OrderViolations[:min(5, len(rep.OrderViolations))])
	}
	aborted := deadLetters(t, dataDir, "hook")
	for mid := range acked {
		if sink.IsPoison(mid, poisonPercent) {
			reason, ok := aborted[mid]
			if !ok {
				t.Errorf("poison event %s is not a dead letter", mid)
			} else if !strings.Contains(reason, "400") {
				t.Errorf("poison event %s aborted with reason %q", mid, reason)
			}
		}
	}
	for mid, reason := range aborted {
		switch {
		case reason == "":
			t.Errorf("dead letter %s has no reason", mid)
		case !sink.IsPoison(mid, poisonPercent):
			t.Errorf("healthy event %s aborted: %s", mid, reason)
		}
	}
	t.Logf("acked %d, sink %+v, dead letters %d", len(acked), rep, len(aborted))
}

// adminDeadLetters lists a destination's dead letters through the admin
// API: messageId -> reason.
func adminDeadLetters(t *testing.T, admin, dest string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/v1/destinations/" + dest + "/dlq?limit=1000")
	if err != nil {
		t.Logf("admin API: %v", err)
		return nil
	}
	defer resp.Body.Close()
	var dls []struct {
		MessageID string `json:"message_id"`
		Reason    string `json:"reason"`
	}
	json.NewDecoder(resp.Body).Decode(&dls)
	out := map[string]string{}
	for _, d := range dls {
		out[d.MessageID] = d.Reason
	}
	return out
}

// deadLetters opens the stopped server's store and returns the aborted
// events of a destination: messageId -> reason.
func deadLetters(t *testing.T, dataDir, dest string) map[string]string {
	t.Helper()
	eng, err := engine.Open(engine.Options{Dir: dataDir, ReclaimInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	c, err := eng.Consumer(dest)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := c.Aborted(0, 1_000_000, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		rec, err := eng.Read(e.Seq, e.Pos)
		if err != nil {
			t.Fatalf("dead letter %d unreadable: %v", e.Seq, err)
		}
		out[string(rec.MessageID)] = e.Reason
	}
	return out
}
