package router_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// partialDest answers the first batch holding more than one event with a
// partial success: its first event named as failed (503), the rest taken.
// Later requests all succeed. It counts the sends of each messageId.
type partialDest struct {
	mu       sync.Mutex
	answered bool
	sends    map[string]int
	order    []string // delivered (taken) messageIds, in order
}

func (d *partialDest) Send(_ context.Context, evs []router.Event) router.Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ev := range evs {
		d.sends[string(ev.MessageID)]++
	}
	if !d.answered && len(evs) > 1 {
		d.answered = true
		for _, ev := range evs[1:] {
			d.order = append(d.order, string(ev.MessageID))
		}
		return router.Result{Status: 200, Rejected: []router.Rejection{{Index: 0, Status: 503, Reason: []byte("try again")}}}
	}
	for _, ev := range evs {
		d.order = append(d.order, string(ev.MessageID))
	}
	return router.Result{Status: 200}
}

func (d *partialDest) Close() error { return nil }

// A partial answer that fails an earlier event of a user and takes a later
// one: the failed one is retried alone; the taken ones are never sent again
// (no duplicate the destination did not cause).
func TestRouterPartialAnswerTakesLaterEvents(t *testing.T) {
	r := newRig(t)
	dest := &partialDest{sends: map[string]int{}}
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, BatchSize: 10, ConcurrencyInitial: 1, Logger: quiet,
		Policy: router.Policy{MinAttempts: 5, BackoffInitial: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}},
		r.eng, r.cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	var ids []string
	for range 5 {
		ids = append(ids, r.add("u1"))
	}
	stop := run(t, rt)
	r.waitFor("every event settled", r.settled)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	dest.mu.Lock()
	defer dest.mu.Unlock()
	if !dest.answered {
		t.Fatalf("no batch of more than one event was sent: %v", dest.order)
	}
	for _, id := range ids[1:] {
		if n := dest.sends[id]; n != 1 {
			t.Errorf("%s, taken by the partial answer, was sent %d times", id, n)
		}
	}
	if n := dest.sends[ids[0]]; n != 2 {
		t.Errorf("%s, failed by name, was sent %d times, want 2", ids[0], n)
	}
	if st := rt.Status(); st.Counters.Delivered != 5 || r.cons.Count(engine.StateFailed) != 0 {
		t.Errorf("status %+v", st)
	}
}
