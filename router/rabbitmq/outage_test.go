package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// delivery runs one goroutine per user, each sending its own events in
// batches of 10, one batch at a time, and retrying a failed batch (as the
// router does) until it is taken, until stopped. Every failed answer must
// be an outage: an error with no status, nothing refused, no pause, so
// the router would charge nothing to the events.
type delivery struct {
	t        *testing.T
	d        *RabbitMQ
	stop     atomic.Bool
	sent     atomic.Int64 // batches taken
	failures atomic.Int64 // Sends failed
	progress chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
	batches  []atomic.Int64 // per user, batches taken
}

func deliver(t *testing.T, d *RabbitMQ, users int) *delivery {
	dl := &delivery{t: t, d: d, progress: make(chan struct{}, 1), done: make(chan struct{}),
		batches: make([]atomic.Int64, users)}
	for u := range users {
		dl.wg.Add(1)
		go dl.user(u)
	}
	go func() { dl.wg.Wait(); close(dl.done) }()
	return dl
}

// seq numbers user u's i-th event.
func seqFor(u, i int) int { return 1 + u*1_000_000 + i }

func (dl *delivery) user(u int) {
	defer dl.wg.Done()
	user := fmt.Sprintf("u%d", u)
	for b := 0; !dl.stop.Load(); b++ {
		var evs []router.Event
		for i := b * 10; i < b*10+10; i++ {
			evs = append(evs, event(seqFor(u, i), user, "track", "x"))
		}
		for attempt := 0; ; attempt++ {
			if attempt == 100000 {
				dl.t.Errorf("user %s: batch %d never taken", user, b)
				return
			}
			res := dl.d.Send(ctxT(dl.t), evs)
			if res.Err == nil && res.Status == 200 && len(res.Rejected) == 0 {
				dl.sent.Add(1)
				dl.batches[u].Add(1)
				dl.signal()
				break
			}
			if errors.Is(res.Err, ErrClosed) { // the test failed and closed it
				return
			}
			if res.Err == nil || res.Status != 0 || len(res.Rejected) > 0 || res.Pause {
				dl.t.Errorf("user %s: a failure that is not an outage: %+v", user, res)
				dl.stop.Store(true)
				return
			}
			dl.failures.Add(1)
			dl.signal()
		}
	}
}

func (dl *delivery) signal() {
	select {
	case dl.progress <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds (checked at each batch taken or failed)
// or the senders are done.
func (dl *delivery) waitFor(cond func() bool) {
	for !cond() {
		select {
		case <-dl.progress:
		case <-dl.done:
			return
		}
	}
}

// finish stops the senders and checks that every event of every batch
// taken arrived, each user's first arrivals in order.
func (dl *delivery) finish(got []amqp.Delivery) {
	dl.t.Helper()
	dl.stop.Store(true)
	<-dl.done
	checkOrder(dl.t, got)
	seen := map[int]bool{}
	for _, m := range got {
		seen[seqOf(dl.t, m)] = true
	}
	events := 0
	for u := range dl.batches {
		for i := range int(dl.batches[u].Load()) * 10 {
			events++
			if !seen[seqFor(u, i)] {
				dl.t.Errorf("event %d of user u%d lost", i, u)
			}
		}
	}
	dl.t.Logf("%d failed sends; %d messages for %d events (%d duplicates)", dl.failures.Load(), len(got), events,
		len(got)-events)
}

func TestConnectionCutDuringDelivery(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	p := newProxy(t, brokerAddr)
	d := newDest(t, Config{URL: brokerURL(p.addr()), Exchange: x, Channels: 4})
	dl := deliver(t, d, 8)
	dl.waitFor(func() bool { return dl.sent.Load() >= 10 })
	p.cutAll()
	dl.waitFor(func() bool { return dl.failures.Load() >= 20 })
	p.restore()
	sent := dl.sent.Load()
	dl.waitFor(func() bool { return dl.sent.Load() >= sent+20 })
	dl.stop.Store(true)
	<-dl.done
	if dl.failures.Load() == 0 {
		t.Fatal("the cut failed no Send: nothing was tested")
	}
	dl.finish(a.drain(q))
}

func TestConnectionClosedByBroker(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	name := unique(t, "conn")
	d := newDest(t, Config{Exchange: x, Name: name, Channels: 2})
	dl := deliver(t, d, 2)
	dl.waitFor(func() bool { return dl.sent.Load() >= 5 })
	// CONNECTION_FORCED from the broker, as an operator's close does.
	var pid string
	for _, line := range strings.Split(rabbitmqctl(t, "-q", "list_connections", "pid", "client_properties", "--no-table-headers"), "\n") {
		if strings.Contains(line, `{"connection_name","`+name+`"}`) {
			pid = strings.Fields(line)[0]
		}
	}
	if pid == "" {
		t.Fatalf("connection %s not listed", name)
	}
	rabbitmqctl(t, "close_connection", pid, "closed by the test")
	// The Sends in flight then fail as outages (checked by the senders);
	// one that starts after the close dials again first.
	sent := dl.sent.Load()
	dl.waitFor(func() bool { return dl.sent.Load() >= sent+20 })
	dl.stop.Store(true)
	<-dl.done
	if !d.redialled() {
		t.Fatal("the destination still uses the connection the broker closed")
	}
	dl.finish(a.drain(q))
}

func TestBlockedBrokerThrottles(t *testing.T) {
	brokerWide(t)
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	d := newDest(t, Config{Exchange: x, BlockedRetryAfter: 7 * time.Second})
	if res := d.Send(ctxT(t), []router.Event{event(1, "u1", "track", "a")}); res.Status != 200 {
		t.Fatalf("before the alarm: %+v", res)
	}
	// A memory alarm: the broker blocks every publishing connection.
	old := strings.TrimSpace(rabbitmqctl(t, "-q", "eval", "{ok, V} = application:get_env(rabbit, vm_memory_high_watermark), "+
		"vm_memory_monitor:set_vm_memory_high_watermark(0.0000001), rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []}), V."))
	var once sync.Once
	clear := func() {
		once.Do(func() {
			rabbitmqctl(t, "-q", "eval", "vm_memory_monitor:set_vm_memory_high_watermark("+old+"), "+
				"rabbit_alarm:clear_alarm({resource_limit, memory, node()}).")
		})
	}
	t.Cleanup(clear)
	var res router.Result
	for seq := 2; ; seq++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res = d.Send(ctx, []router.Event{event(seq, "u1", "track", "a")})
		expired := ctx.Err() != nil
		cancel()
		t.Logf("blocked, send %d: status %d err %v ambiguous %v", seq, res.Status, res.Err, res.Ambiguous)
		if res.Status == 429 {
			// The blocking ended the wait for confirms, not the timeout.
			if expired {
				t.Errorf("the Send waited for its timeout")
			}
			break
		}
		if res.Status != 200 && res.Err == nil || len(res.Rejected) > 0 || res.Pause || seq == 20 {
			t.Fatalf("while blocked: %+v", res)
		}
	}
	if res.RetryAfter != 7*time.Second || !strings.Contains(string(res.Body), "blocks publishing") {
		t.Errorf("blocked answer %+v", res)
	}
	clear()
	// Unblocked, the destination delivers again (on the same connection,
	// or a new one if the stalled write timed out).
	for seq := 100; ; seq++ {
		res := d.Send(ctxT(t), []router.Event{event(seq, "u1", "track", "a")})
		t.Logf("unblocked, send %d: status %d err %v", seq, res.Status, res.Err)
		if res.Status == 200 && len(res.Rejected) == 0 {
			break
		}
		if res.Status != 429 && res.Err == nil || seq == 150 {
			t.Fatalf("after the alarm: %+v", res)
		}
	}
	if n := a.count(q); n < 2 {
		t.Errorf("%d messages", n)
	}
}

// redialled reports whether the destination's connection is another than
// the first it made.
func (r *RabbitMQ) redialled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.link != nil && r.mu.link.serial > 1
}
