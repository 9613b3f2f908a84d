package warehouse

import (
	"bytes"
	"context"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// pool is a coalesced load being assembled: the first Send (the leader)
// opens it and waits BatchMaxWait (or until it holds BatchMaxEvents
// events) while concurrent Sends join; then the leader loads all the
// events in one transaction and hands each Send its share of the answer.
// The router never has two batches of one user in flight, so events of a
// pool never reorder a user's events.
type pool struct {
	events []router.Event
	parts  []*part
	full   chan struct{} // closed when the pool reaches BatchMaxEvents
}

// part is one Send's events in a pool.
type part struct {
	lo, n int
	done  chan router.Result // buffered: the leader never blocks
}

// coalesce loads events with whatever concurrent Sends join them.
func (w *Warehouse) coalesce(ctx context.Context, events []router.Event) router.Result {
	w.joining.Lock()
	if p := w.joining.open; p != nil && len(p.events)+len(events) <= w.cfg.BatchMaxEvents {
		// Join: the events are copied, since this Send may return (its
		// context ended) before the leader loads them.
		me := &part{lo: len(p.events), n: len(events), done: make(chan router.Result, 1)}
		p.events = append(p.events, clone(events)...)
		p.parts = append(p.parts, me)
		if len(p.events) == w.cfg.BatchMaxEvents {
			close(p.full)
			w.joining.open = nil
		}
		w.joining.Unlock()
		select {
		case res := <-me.done:
			return res
		case <-ctx.Done():
			// the leader may still load them: say it may have arrived
			return router.Result{Err: ctx.Err(), Ambiguous: true}
		}
	}
	p := &pool{events: append([]router.Event(nil), events...), full: make(chan struct{})}
	me := &part{lo: 0, n: len(events), done: make(chan router.Result, 1)}
	p.parts = append(p.parts, me)
	w.joining.open = p
	w.joining.Unlock()
	t := time.NewTimer(w.cfg.BatchMaxWait)
	select {
	case <-t.C:
	case <-p.full:
	case <-ctx.Done():
	}
	t.Stop()
	w.joining.Lock()
	if w.joining.open == p {
		w.joining.open = nil
	}
	w.joining.Unlock()
	refused, fail, ok := w.loadAll(ctx, p.events)
	for _, pt := range p.parts {
		if !ok {
			pt.done <- fail
		} else {
			pt.done <- answer(refused, pt.lo, pt.n)
		}
	}
	return <-me.done
}

// clone copies events' bytes.
func clone(events []router.Event) []router.Event {
	out := make([]router.Event, len(events))
	for i, e := range events {
		out[i] = e
		out[i].MessageID = bytes.Clone(e.MessageID)
		out[i].Key = bytes.Clone(e.Key)
		out[i].Type = bytes.Clone(e.Type)
		out[i].Source = bytes.Clone(e.Source)
		out[i].Payload = bytes.Clone(e.Payload)
	}
	return out
}
