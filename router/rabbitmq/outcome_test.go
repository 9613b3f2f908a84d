package rabbitmq

import (
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// fakeBatch is a batch with the given fates, events of the given users.
func fakeBatch(users string, fates ...fate) *batch {
	b := &batch{}
	for i, f := range fates {
		ev := router.Event{Key: []byte{users[i]}, Payload: make([]byte, 10+i)}
		b.events = append(b.events, ev)
		b.keys = append(b.keys, fmt.Sprintf("k%d", i))
		b.fates = append(b.fates, f)
		b.status = append(b.status, 0)
		b.reasons = append(b.reasons, nil)
		var dc *amqp.DeferredConfirmation
		if f != fateUnsent && f != fateRefused {
			dc = &amqp.DeferredConfirmation{}
		}
		b.dcs = append(b.dcs, dc)
	}
	return b
}

// rejections renders a result's rejections as index:status pairs.
func rejections(res router.Result) string {
	s := ""
	for _, r := range res.Rejected {
		s += fmt.Sprintf("%d:%d ", r.Index, r.Status)
	}
	return s
}

func TestNamedKeepsUserOrder(t *testing.T) {
	for _, c := range []struct {
		name  string
		users string
		fates []fate
		want  string
	}{
		{"all acked", "aab", []fate{fateAcked, fateAcked, fateAcked}, ""},
		{"returned alone", "aab", []fate{fateAcked, fateReturned, fateAcked}, "1:400 "},
		{"nack takes the user's later ones", "abab", []fate{fateNacked, fateAcked, fateAcked, fateAcked}, "0:503 2:503 "},
		{"refused is final", "aa", []fate{fateRefused, fateAcked}, "0:0 "},
		{"unsent", "ab", []fate{fateAcked, fateUnsent}, "1:503 "},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := rejections(fakeBatch(c.users, c.fates...).named(-1, 0, nil)); got != c.want {
				t.Errorf("named %q, want %q", got, c.want)
			}
		})
	}
	// A culprit refused, the unconfirmed others of the batch retried.
	b := fakeBatch("abca", fateAcked, fatePending, fatePending, fatePending)
	if got := rejections(b.named(2, 413, nil)); got != "1:503 2:413 3:503 " {
		t.Errorf("culprit: %q", got)
	}
}

func TestBrokerReasonsName(t *testing.T) {
	b := fakeBatch("abcd", fateAcked, fatePending, fatePending, fatePending)
	b.keys[2] = "denied.x'y"
	// The events' payloads are 10, 11, 12, 13 bytes.
	if i, max := b.tooLarge("PRECONDITION_FAILED - message size 12 is larger than configured max size 11"); i != 2 || max != 11 {
		t.Errorf("too large: %d %d", i, max)
	}
	if i, max := b.tooLarge("PRECONDITION_FAILED - message size 13 is larger than max size 12"); i != 3 || max != 12 {
		t.Errorf("too large, default limit: %d %d", i, max)
	}
	if i, _ := b.tooLarge("PRECONDITION_FAILED - message size 10 is larger than max size 9"); i != -1 {
		t.Errorf("an acked event named: %d", i)
	}
	if i, _ := b.tooLarge("PRECONDITION_FAILED - inequivalent arg 'type'"); i != -1 {
		t.Errorf("another precondition named %d", i)
	}
	if i := b.topicRefused("ACCESS_REFUSED - access to topic 'denied.x'y' in exchange 'e' in vhost '/' refused for user 'g'"); i != 2 {
		t.Errorf("topic: %d", i)
	}
	if i := b.topicRefused("ACCESS_REFUSED - access to exchange 'e' in vhost '/' refused for user 'g'"); i != -1 {
		t.Errorf("exchange refusal named %d", i)
	}
}

func TestLearnSizeMax(t *testing.T) {
	r := &RabbitMQ{}
	for _, c := range []struct{ learn, want int64 }{{0, 0}, {100, 100}, {200, 100}, {50, 50}} {
		r.learnSizeMax(c.learn)
		if got := r.sizeMax.Load(); got != c.want {
			t.Errorf("after %d: %d, want %d", c.learn, got, c.want)
		}
	}
}
