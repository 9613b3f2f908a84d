package rabbitmq

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// seqs are the seqs a queue's messages carry, in arrival order.
func seqs(t *testing.T, got []amqp.Delivery) []int {
	var out []int
	for _, m := range got {
		out = append(out, seqOf(t, m))
	}
	return out
}

// retryNamed sends again, as the router would, the events a result names
// retryable (503), until none is; it returns the events refused for good.
func retryNamed(t *testing.T, d *RabbitMQ, evs []router.Event, res router.Result) map[uint64]router.Rejection {
	t.Helper()
	refused := map[uint64]router.Rejection{}
	for round := 0; ; round++ {
		if res.Err != nil || res.Status != 200 {
			t.Fatalf("round %d: %+v", round, res)
		}
		var again []router.Event
		for _, r := range res.Rejected {
			if r.Status == 503 {
				again = append(again, evs[r.Index])
			} else {
				refused[evs[r.Index].Seq] = r
			}
		}
		if len(again) == 0 {
			return refused
		}
		if round == 3 {
			t.Fatalf("still retrying %d events after 3 rounds", len(again))
		}
		evs = again
		res = d.Send(ctxT(t), evs)
	}
}

func TestOversizedRefusedAlone(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	brokerWide(t)
	// The broker's limit is 128 MiB, too large to send cheaply. It is
	// read when a channel opens, so the test lowers it for the channel its
	// destination opens first, then puts it back.
	const limit = 64 << 10
	old := strings.TrimSpace(rabbitmqctl(t, "-q", "eval", fmt.Sprintf(
		"{ok, V} = application:get_env(rabbit, max_message_size), application:set_env(rabbit, max_message_size, %d), V.", limit)))
	var once sync.Once
	restore := func() {
		once.Do(func() { rabbitmqctl(t, "-q", "eval", "application:set_env(rabbit, max_message_size, "+old+").") })
	}
	t.Cleanup(restore)
	d := newDest(t, Config{Exchange: x, Channels: 1})
	big := event(2, "u2", "track", "big")
	big.Payload = append(big.Payload[:len(big.Payload)-1], fmt.Sprintf(`,"pad":%q}`, bytes.Repeat([]byte("p"), limit))...)
	evs := []router.Event{event(1, "u1", "track", "a"), big, event(3, "u3", "track", "c"), event(4, "u1", "track", "d")}
	res := d.Send(ctxT(t), evs)
	restore()
	refused := retryNamed(t, d, evs, res)
	r, ok := refused[2]
	if len(refused) != 1 || !ok || r.Status != 413 || !strings.Contains(string(r.Reason), "larger than configured max size") {
		t.Fatalf("refused %+v, want event 2 alone with 413 (first answer %+v)", refused, res)
	}
	got := seqs(t, a.drain(q))
	if slices.Contains(got, 2) || !slices.Contains(got, 1) || !slices.Contains(got, 3) || !slices.Contains(got, 4) {
		t.Errorf("queue holds %v, want 1, 3 and 4 (perhaps twice) and never 2", got)
	}
	// The limit is learnt: the next oversized event is refused before it
	// is sent, and the channel (the pool has one) stays open.
	res = d.Send(ctxT(t), []router.Event{event(5, "u1", "track", "e"), big, event(6, "u1", "track", "f")})
	if res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 || res.Rejected[0].Status != 413 ||
		!strings.Contains(string(res.Rejected[0].Reason), fmt.Sprintf("at most %d", limit)) {
		t.Fatalf("second oversized: %+v", res)
	}
	if got := seqs(t, a.drain(q)); fmt.Sprint(got) != "[5 6]" {
		t.Errorf("queue holds %v, want [5 6]", got)
	}
}

func TestTopicAccessRefusedAlone(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("topic")
	q := a.queue(x, "#")
	// guest may publish to this exchange only with keys starting allowed.
	rabbitmqctl(t, "set_topic_permissions", "-p", "/", "guest", x, `^allowed\.`, ".*")
	t.Cleanup(func() { rabbitmqctl(t, "clear_topic_permissions", "-p", "/", "guest", x) })
	d := newDest(t, Config{Exchange: x, RoutingKey: "{event}.{key}"})
	evs := []router.Event{event(1, "u1", "track", "allowed"), event(2, "u2", "track", "denied"), event(3, "u3", "track", "allowed")}
	refused := retryNamed(t, d, evs, d.Send(ctxT(t), evs))
	r, ok := refused[2]
	if len(refused) != 1 || !ok || r.Status != 403 || !strings.Contains(string(r.Reason), "access to topic 'denied.u2'") {
		t.Fatalf("refused %+v, want event 2 alone with 403", refused)
	}
	if got := seqs(t, a.drain(q)); !slices.Contains(got, 1) || !slices.Contains(got, 3) || slices.Contains(got, 2) {
		t.Errorf("queue holds %v, want 1 and 3", got)
	}
}

func TestNackRetriedWithLaterEventsOfItsUser(t *testing.T) {
	a := newAdmin(t)
	x := a.exchange("direct")
	// Queue full holds one message and nacks the next (reject-publish);
	// queue roomy takes anything.
	full := unique(t, "full")
	if _, err := a.ch.QueueDeclare(full, false, false, false, false, amqp.Table{"x-max-length": int32(1),
		"x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.ch.QueueDelete(full, false, false, false) })
	if err := a.ch.QueueBind(full, "full", x, false, nil); err != nil {
		t.Fatal(err)
	}
	roomy := a.queue(x, "roomy")
	d := newDest(t, Config{Exchange: x, RoutingKey: "{event}"})
	evs := []router.Event{
		event(1, "u1", "track", "full"),  // acked: the queue had room
		event(2, "u1", "track", "full"),  // nacked: full
		event(3, "u2", "track", "roomy"), // acked
		event(4, "u1", "track", "roomy"), // acked, but after u1's nacked one
	}
	res := d.Send(ctxT(t), evs)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 2 {
		t.Fatalf("result %+v, want events 2 and 4 named", res)
	}
	r0, r1 := res.Rejected[0], res.Rejected[1]
	if r0.Index != 1 || r0.Status != 503 || string(r0.Reason) != "nacked by the broker" || r1.Index != 3 || r1.Status != 503 {
		t.Errorf("rejections %+v", res.Rejected)
	}
	if got := seqs(t, a.drain(roomy)); fmt.Sprint(got) != "[3 4]" {
		t.Errorf("roomy holds %v", got)
	}
}
