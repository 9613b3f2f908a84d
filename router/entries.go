package router

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// The retry scan (gatherEntries) reads due failed entries at most
// dueScanMax at a time, and looks again:
const (
	// dueScanMax bounds one scan: more are read at the next.
	dueScanMax = 256
	// dueBusyWait: when the scan was full, or left entries whose key has a
	// request in flight (or that are themselves in flight), after this.
	dueBusyWait = 50 * time.Millisecond
	// dueErrorWait: after the index failed to say when the next is due.
	dueErrorWait = time.Second
	// dueIdleWait: with nothing stored to retry; a failure or spill
	// stored meanwhile resets nextDue (refreshDue).
	dueIdleWait = time.Hour
)

// gatherEntries loads entry work from the index.
func (c *core) gatherEntries(now time.Time) {
	c.flush(now, true)
	if c.err != nil {
		return
	}
	for _, ks := range c.keys.takeDrains() {
		if ks.busy {
			c.keys.queueDrain(ks) // after its request
			continue
		}
		c.drainKey(ks, now)
	}
	if !c.nextDue.IsZero() && now.Before(c.nextDue) {
		return
	}
	due, err := c.cons.Due(now.UnixNano(), dueScanMax)
	if err != nil {
		c.logger.Error("cannot read due retries", "destination", c.cfg.Name, "err", err)
		return
	}
	left := false
	for i := range due {
		e := due[i]
		if c.inFlightEntries[e.Seq] {
			continue
		}
		if c.cfg.Ordering && e.Flags&engine.EntryReplayed == 0 && c.keys.isBusy(string(e.Key)) {
			left = true
			continue
		}
		if it := c.loadEntry(&e, now); it != nil {
			c.stats.Retried++
			c.work = append(c.work, &batch{items: []*item{it}, entry: true})
			c.inFlightEntries[e.Seq] = true // reserved until sent
		}
	}
	switch next, ok, err := c.cons.NextDue(); {
	case err != nil:
		c.nextDue = now.Add(dueErrorWait)
	case left || len(due) == dueScanMax:
		c.nextDue = now.Add(dueBusyWait)
	case ok:
		c.nextDue = time.Unix(0, next)
		if !c.nextDue.After(now) {
			c.nextDue = now.Add(dueBusyWait) // due but in flight
		}
	default:
		c.nextDue = now.Add(dueIdleWait)
	}
}

// drainKey sends a key's next stored entries after its head settled; with
// none left, it lifts the barrier and lets the key's window events go.
// Replayed events are not part of the key's queue (they never block it;
// the retry scan sends them when due): it reads past them.
func (c *core) drainKey(ks *keyQueue, now time.Time) {
	var ents []engine.Entry
	for limit := c.cfg.BatchSize; ; limit *= 2 {
		all, err := c.cons.KeyEntries([]byte(ks.key), limit)
		if err != nil {
			c.logger.Error("cannot read key entries", "destination", c.cfg.Name, "err", err)
			c.keys.queueDrain(ks)
			return
		}
		ents = slices.DeleteFunc(all, func(e engine.Entry) bool { return e.Flags&engine.EntryReplayed != 0 })
		if len(ents) >= c.cfg.BatchSize || len(all) < limit {
			break
		}
	}
	ents = ents[:min(len(ents), c.cfg.BatchSize)]
	var items []*item
	for i := range ents {
		e := &ents[i]
		if c.inFlightEntries[e.Seq] {
			return // already on its way
		}
		if e.State == engine.StateFailed && e.DueAt > now.UnixNano() {
			break // the head waits for its retry time
		}
		if it := c.loadEntry(e, now); it != nil {
			items = append(items, it)
		}
	}
	if len(items) > 0 {
		for _, it := range items {
			c.inFlightEntries[it.seq] = true
		}
		c.work = append(c.work, &batch{items: items, entry: true})
		return
	}
	if len(ents) > 0 || !ks.mayLift() {
		return // still blocked by a stored failure (Due brings it back) or one in the window
	}
	c.txn.ClearBarrier([]byte(ks.key))
	c.flush(now, true)
	c.keys.lift(ks)
}

// loadEntry reads a stored entry's event. An event older than MaxAge is
// aborted instead; one whose payload is unreadable is aborted with that
// reason.
func (c *core) loadEntry(e *engine.Entry, now time.Time) *item {
	rec, err := c.log.Read(e.Seq, e.Pos)
	it := &item{seq: e.Seq, pos: e.Pos, key: string(e.Key), attempts: e.Attempts, first: e.FirstFailure,
		last: e.LastAttempt, status: e.LastStatus, reason: e.Reason, response: e.Response,
		replayed: e.Flags&engine.EntryReplayed != 0, unconfirmed: e.Flags&engine.EntryUnconfirmed != 0, persisted: true}
	if err != nil {
		it.ev = Event{Seq: e.Seq, Key: e.Key, ReceivedAt: e.ReceivedAt}
		if errors.Is(err, engine.ErrNotFound) || errors.Is(err, engine.ErrCorrupt) {
			c.abort(it, Result{}, "payload unreadable: "+err.Error(), now)
			c.afterEntryFinal(it, now)
		} else {
			c.logger.Error("cannot read event for retry", "destination", c.cfg.Name, "seq", e.Seq, "err", err)
		}
		return nil
	}
	full := newItem(&rec)
	it.buf, it.ev, it.size = full.buf, full.ev, full.size
	if c.refuses(&rec) {
		// Stored though the filters refuse it (stragglers requeued by
		// engine.Recover for every destination, or filters changed since):
		// settled as filtered, never sent.
		c.stats.Filtered++
		c.txn.Succeed(it.seq)
		c.flush(now, true) // committed before anything lists the entry again
		c.afterEntryFinal(it, now)
		return nil
	}
	if now.Sub(time.Unix(0, it.ev.ReceivedAt)) > c.pol.MaxAge {
		c.stats.Expired++
		c.abort(it, Result{}, fmt.Sprintf("expired: older than max_age %v", c.pol.MaxAge), now)
		c.afterEntryFinal(it, now)
		return nil
	}
	if c.chargeDue(it, now) {
		return nil
	}
	return it
}

// afterEntryFinal continues a key's queue after an entry became final
// without being sent.
func (c *core) afterEntryFinal(it *item, now time.Time) {
	if it.replayed {
		return
	}
	if !c.cfg.Ordering && !c.keys.has(it.key) {
		return // no stored barrier to drain (newCore)
	}
	c.keys.drain(it.key)
}
