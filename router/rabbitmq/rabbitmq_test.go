package rabbitmq

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// seqOf reads the seq a test event's body carries.
func seqOf(t *testing.T, d amqp.Delivery) int {
	var seq int
	i := bytes.Index(d.Body, []byte(`"seq":`))
	if i < 0 {
		t.Fatalf("body %s has no seq", d.Body)
	}
	fmt.Sscanf(string(d.Body[i+6:]), "%d", &seq)
	return seq
}

// userOf reads the userId of a test event's body.
func userOf(d amqp.Delivery) string {
	i := bytes.Index(d.Body, []byte(`"userId":"`))
	rest := d.Body[i+10:]
	return string(rest[:bytes.IndexByte(rest, '"')])
}

// checkOrder fails unless, for each user, the first arrivals of its
// events are in seq order, and reports duplicates.
func checkOrder(t *testing.T, got []amqp.Delivery) (dups int) {
	t.Helper()
	seen := map[int]bool{}
	last := map[string]int{}
	for _, d := range got {
		s := seqOf(t, d)
		if seen[s] {
			dups++
			continue
		}
		seen[s] = true
		u := userOf(d)
		if s < last[u] {
			t.Errorf("user %s: seq %d arrived after %d", u, s, last[u])
		}
		last[u] = s
	}
	return dups
}

func TestDeliverWithConfirmsInOrder(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	d := newDest(t, Config{Exchange: x, RoutingKey: "{source}.{type}.{event}.{key}", Headers: map[string]string{"tenant": "t1"},
		Channels: 3})
	const users, perUser, batch = 8, 30, 10
	// Each user's events go in batches of 10, one batch at a time per
	// user as the router does, eight users at once over three channels.
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("u%d", u)
			for b := 0; b < perUser; b += batch {
				var evs []router.Event
				for i := b; i < b+batch; i++ {
					evs = append(evs, event(1+u*perUser+i, user, "track", "Order Completed"))
				}
				if res := d.Send(ctxT(t), evs); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
					t.Errorf("user %s batch %d: %+v", user, b, res)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := a.drain(q)
	if len(got) != users*perUser {
		t.Fatalf("%d messages in the queue, want %d", len(got), users*perUser)
	}
	if dups := checkOrder(t, got); dups > 0 {
		t.Errorf("%d duplicates without any failure", dups)
	}
	m := got[0]
	u := userOf(m)
	wantKey := "web.track.Order Completed." + u
	if m.ContentType != "application/json" || m.DeliveryMode != amqp.Persistent || m.MessageId != fmt.Sprintf("m-%d", seqOf(t, m)) ||
		m.Headers["source"] != "web" || m.Headers["type"] != "track" || m.Headers["tenant"] != "t1" || m.RoutingKey != wantKey ||
		m.Exchange != x || m.AppId != "sluice" || m.Timestamp.IsZero() {
		t.Errorf("message properties %+v (routing key %q, want %q)", m, m.RoutingKey, wantKey)
	}
}

func TestUnroutableRefusedAlone(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("direct")
	q := a.queue(x, "web.track")
	d := newDest(t, Config{Exchange: x})
	evs := []router.Event{
		event(1, "u1", "track", "a"),
		event(2, "u1", "identify", ""), // web.identify: no queue bound
		event(3, "u2", "track", "b"),
		event(4, "u1", "track", "c"),
	}
	res := d.Send(ctxT(t), evs)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 {
		t.Fatalf("result %+v, want 200 naming event 1", res)
	}
	r := res.Rejected[0]
	if r.Index != 1 || r.Status != 400 || !strings.HasPrefix(string(r.Reason), "unroutable: NO_ROUTE") ||
		!strings.Contains(string(r.Reason), `"web.identify"`) {
		t.Errorf("rejection %d %d %q", r.Index, r.Status, r.Reason)
	}
	got := a.drain(q)
	var seqs []int
	for _, m := range got {
		seqs = append(seqs, seqOf(t, m))
	}
	if fmt.Sprint(seqs) != "[1 3 4]" {
		t.Errorf("queue holds seqs %v, want [1 3 4]", seqs)
	}
	// Without mandatory the broker drops it, and it counts as delivered.
	d2 := newDest(t, Config{Exchange: x, NotMandatory: true})
	if res := d2.Send(ctxT(t), evs[1:2]); res.Status != 200 || len(res.Rejected) != 0 {
		t.Errorf("not mandatory: %+v", res)
	}
}

func TestMissingExchangePauses(t *testing.T) {
	a := newAdmin(t)
	x := unique(t, "missing")
	d := newDest(t, Config{Exchange: x})
	res := d.Send(ctxT(t), []router.Event{event(1, "u1", "track", "a")})
	if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "does not exist") {
		t.Fatalf("result %+v, want a pause naming the missing exchange", res)
	}
	// The operator creates it and resumes: delivered on the same
	// destination (the closed channel was replaced).
	a.exchange2(x)
	q := a.queue(x, "#")
	if res := d.Send(ctxT(t), []router.Event{event(2, "u1", "track", "a")}); res.Status != 200 || res.Err != nil {
		t.Fatalf("after the exchange exists: %+v", res)
	}
	if n := len(a.drain(q)); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

// exchange2 declares the named topic exchange, deleted at cleanup.
func (a *admin) exchange2(name string) {
	a.t.Helper()
	if err := a.ch.ExchangeDeclare(name, "topic", false, false, false, false, nil); err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { a.deleteExchange(name) })
}

func TestDeclareExchange(t *testing.T) {
	a := newAdmin(t)
	x := unique(t, "declared")
	t.Cleanup(func() { a.deleteExchange(x) })
	d := newDest(t, Config{Exchange: x, Declare: &Declare{Type: "fanout", Durable: false}})
	res := d.Send(ctxT(t), []router.Event{event(1, "u1", "track", "a")})
	// Declared, but no queue is bound yet: refused as unroutable, which
	// shows the exchange was there to take it.
	if res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Status != 400 {
		t.Fatalf("result %+v", res)
	}
	q := a.queue(x)
	// Deleted behind its back: declared again, the batch retried.
	a.deleteExchange(x)
	res = d.Send(ctxT(t), []router.Event{event(2, "u1", "track", "a")})
	if res.Err == nil || res.Pause || !strings.Contains(res.Err.Error(), "declared again") {
		t.Fatalf("after deletion: %+v", res)
	}
	a.queue2(q, x)
	if res := d.Send(ctxT(t), []router.Event{event(3, "u1", "track", "a")}); res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("after redeclaring: %+v", res)
	}
	// An exchange that exists with another type: the declaration is
	// refused for good, the destination pauses.
	d2 := newDest(t, Config{Exchange: x, Declare: &Declare{Type: "direct"}})
	if res := d2.Send(ctxT(t), []router.Event{event(4, "u1", "track", "a")}); !res.Pause || res.Err == nil {
		t.Fatalf("inequivalent declaration: %+v", res)
	}
}

// queue2 binds an existing queue to exchange again.
func (a *admin) queue2(q, exchange string) {
	a.t.Helper()
	if err := a.ch.QueueBind(q, "", exchange, false, nil); err != nil {
		a.t.Fatal(err)
	}
}

func TestCredentialsRefusedPauses(t *testing.T) {
	d := newDest(t, Config{URL: "amqp://guest:wrong@" + brokerAddr + "/", Exchange: "amq.topic"})
	res := d.Send(ctxT(t), []router.Event{event(1, "u1", "track", "a")})
	if !res.Pause || res.Err == nil {
		t.Fatalf("result %+v, want a pause", res)
	}
	if strings.Contains(res.Err.Error(), "wrong") {
		t.Errorf("the password is in the error: %v", res.Err)
	}
}

func TestBrokerDownIsOutage(t *testing.T) {
	p := newProxy(t, brokerAddr)
	p.cutAll()
	d := newDest(t, Config{URL: brokerURL(p.addr()), Exchange: "amq.topic"})
	res := d.Send(ctxT(t), []router.Event{event(1, "u1", "track", "a")})
	if res.Err == nil || res.Status != 0 || res.Pause || len(res.Rejected) > 0 {
		t.Fatalf("result %+v, want an outage", res)
	}
}
