package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitTarget is the conformance suite's RabbitMQ (127.0.0.1:5672,
// guest/guest): a topic exchange of the run's own with one queue bound to
// the keys of the suite's events, *.track.Conformance Checked. The
// poison is an event with another name: its routing key has no binding,
// the broker returns it (mandatory) and it is refused as unroutable.
//
// There is no throttle phase: RabbitMQ's only way to ask publishers for
// less is a node-wide resource alarm (connection.blocked), which would
// throttle every other test using the broker at the time; the
// destination's own tests cover it (router/rabbitmq,
// TestBlockedBrokerThrottles).
type rabbitTarget struct {
	conn *amqp.Connection
	ch   *amqp.Channel

	mu   sync.Mutex
	held []conformEvent // taken from the queue so far, in queue order
}

const rabbitAddr = "127.0.0.1:5672"

func newRabbitTarget(t *testing.T) conformTarget {
	conn, err := amqp.Dial("amqp://guest:guest@" + rabbitAddr + "/")
	if err != nil {
		t.Skipf("RabbitMQ is not reachable at %s: %v", rabbitAddr, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	brokerShared(t)
	return &rabbitTarget{conn: conn, ch: ch}
}

// brokerShared holds the broker lock shared until cleanup: the tests in
// router/rabbitmq that change the whole broker (a memory alarm, the
// message size limit) hold it exclusively, so none runs during this one.
func brokerShared(t *testing.T) {
	path := filepath.Join(os.TempDir(), "sluice-rabbitmq-broker.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		t.Fatalf("cannot lock %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
}

func (r *rabbitTarget) upstream(*testing.T) string { return rabbitAddr }

// names are the run's exchange and queue.
func (r *rabbitTarget) names(id string) (exchange, queue string) {
	return "sluice-conform-" + id, "sluice-conform-" + id
}

func (r *rabbitTarget) config(t *testing.T, id, addr string) string {
	x, q := r.names(id)
	if err := r.ch.ExchangeDeclare(x, "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := r.ch.QueueBind(q, "*.track.Conformance Checked", x, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.ch.QueueDelete(q, false, false, false)
		r.ch.ExchangeDelete(x, false, false)
	})
	return fmt.Sprintf("type: rabbitmq\nconfig:\n  url: amqp://guest:guest@%s/\n  exchange: %s\n  routing_key: '{source}.{type}.{event}'\n", addr, x)
}

// received takes what the queue holds now and returns every event taken
// so far, in queue order (per user, the order the broker took them).
func (r *rabbitTarget) received(t *testing.T, id string) ([]conformEvent, bool) {
	_, q := r.names(id)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		d, ok, err := r.ch.Get(q, true)
		if err != nil {
			t.Fatalf("rabbitmq: cannot read queue %s: %v", q, err)
		}
		if !ok {
			break
		}
		var ev struct {
			MessageID string `json:"messageId"`
			UserID    string `json:"userId"`
		}
		if err := json.Unmarshal(d.Body, &ev); err != nil || ev.MessageID != d.MessageId {
			t.Errorf("rabbitmq: message %q is not the event it carries: %s (%v)", d.MessageId, d.Body, err)
		}
		r.held = append(r.held, conformEvent{ID: ev.MessageID, User: ev.UserID})
	}
	return append([]conformEvent(nil), r.held...), true
}

func (r *rabbitTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{
		edit: func(ev map[string]any) { ev["event"] = "Nobody Listens" },
		says: "unroutable: NO_ROUTE",
	}, ""
}
