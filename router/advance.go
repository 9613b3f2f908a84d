package router

import (
	"fmt"
	"slices"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// advance moves the cursor past the settled head of the window, storing
// entries for the events it passes that are not delivered.
func (c *core) advance(now time.Time) {
	c.spillAt = time.Time{}
	wasFull := c.windowFull()
	moved, spilled := false, false
	var passed uint64 // the last seq passed
	for c.head < len(c.window) {
		it := c.window[c.head]
		pass, spill := c.pass(it, now)
		if !pass {
			break
		}
		spilled = spilled || spill
		c.window[c.head] = nil
		c.head++
		c.winSize -= it.size
		moved, passed = true, it.seq
	}
	if c.head == len(c.window) {
		c.window, c.head = c.window[:0], 0
	} else if c.head > windowCompactHead && c.head*2 > len(c.window) {
		c.window = append(c.window[:0], c.window[c.head:]...)
		c.head = 0
	}
	if moved {
		c.settleBudget()
		if wasFull && !c.reader.CaughtUp() {
			c.refill = true // reading ahead stopped for room; there is some now
		}
		if c.head < len(c.window) {
			c.txn.Advance(c.window[c.head].seq, c.window[c.head].pos)
		} else {
			c.txn.Advance(passed+1, 0)
		}
	}
	// A spilled event's answer settles its entry in a later transaction:
	// the entry must be committed first.
	c.flush(now, spilled)
}

// windowCompactHead is how many passed slots the window's slice may keep
// at its front before advance copies the live events down (when they are
// also at least half of it): the copy is paid rarely, the slack bounded.
const windowCompactHead = 1024

// pass reports whether the cursor may pass it, the window's head, and
// stores its entry if it needs one: failed and aborted events, the
// skipped head of a blocked key, and (spill) the in-flight events of a
// slow request when the window is full.
func (c *core) pass(it *item, now time.Time) (pass, spill bool) {
	switch it.state {
	case done:
		return true, false
	case failed:
		e := c.entryOf(it, engine.StateFailed)
		e.DueAt = it.due
		c.txn.Put(e)
		if c.cfg.Ordering {
			c.txn.SetBarrier(it.ev.Key, it.seq)
			c.keys.failedStored(it.key)
		}
		c.nextDue = time.Time{}
		return true, false
	case aborted:
		c.txn.Put(c.entryOf(it, engine.StateAborted))
		return true, false
	case inflight:
		if !c.windowFull() || it.batch == nil {
			return false, false
		}
		if at := it.batch.start.Add(spillAfter); now.Before(at) {
			c.spillAt = at // a request this young is not slow yet
			return false, false
		}
		// A slow request holds the cursor and the window is full: store
		// its events as failed (retried if the answer never comes) so the
		// cursor, and every other key, can move on.
		for _, x := range it.batch.items {
			x.state = spilling
		}
		c.stats.Spilled += uint64(len(it.batch.items))
		c.spillEntry(it, now)
		return true, true
	case spilling:
		c.spillEntry(it, now)
		return true, true
	case waiting:
		if !c.cfg.Ordering || !c.keys.skipHead(it) {
			return false, false
		}
		c.txn.Put(c.entryOf(it, engine.StateSkipped))
		return true, false
	}
	return false, false
}

// stop prepares a graceful shutdown once nothing is in flight: events still
// waiting in the window before its last settled event are stored (the
// first of each key as failed and due now, uncharged; later ones as
// skipped) so the cursor passes every settled event and nothing delivered
// is sent again after the restart.
func (c *core) stop(now time.Time) {
	last := -1
	for i := c.head; i < len(c.window); i++ {
		if st := c.window[i].state; st != waiting && st != inflight && st != spilling {
			last = i
		}
	}
	for i := c.head; i <= last; i++ {
		it := c.window[i]
		if it.state != waiting {
			continue
		}
		if it.reason == "" {
			it.reason = "waiting at shutdown"
		}
		if !c.cfg.Ordering {
			it.state, it.due = failed, now.UnixNano()
			c.loose = slices.DeleteFunc(c.loose, func(x *item) bool { return x == it })
			continue
		}
		if !c.keys.takeUnblockedHead(it) {
			continue // advance stores it as skipped behind its key's head
		}
		it.state, it.due = failed, now.UnixNano()
		c.keys.failedInWindow(it.key)
	}
	c.advance(now)
	c.flush(now, true)
}

const spillReason = "in flight when the read-ahead window filled"

// spillAfter is how long the head of a full window may be in flight before
// it is spilled: only a slow request is worth the index writes (it and the
// key's later events stored, to be settled from the index), not one that
// is merely the oldest of many in flight.
const spillAfter = time.Second

// spillDueSlack is how long past its request's timeout a spilled head
// becomes due: by then the request has answered or given up, so the retry
// never races its own answer.
const spillDueSlack = time.Second

// spillEntry stores an in-flight window event so the cursor can pass it:
// as the failed head of its key (due after its request's timeout, with a
// barrier), or as skipped when earlier events of the key are already
// stored (a key's queue has one failed head). Its answer then settles the
// entry like a retry's or a released skip's would.
func (c *core) spillEntry(it *item, now time.Time) {
	state := engine.StateFailed
	if c.cfg.Ordering && c.keys.isBlocked(it.key) {
		state = engine.StateSkipped
	}
	e := c.entryOf(it, state)
	if state == engine.StateFailed {
		e.DueAt = now.Add(c.cfg.Timeout + spillDueSlack).UnixNano()
		if e.Reason == "" {
			e.Reason = spillReason
		}
		it.spillHead = true
	}
	c.txn.Put(e)
	it.persisted = true
	c.inFlightEntries[it.seq] = true
	if c.cfg.Ordering && c.keys.block(it.key) {
		c.txn.SetBarrier(it.ev.Key, it.seq)
	}
	c.nextDue = time.Time{}
}

// flush commits pending transitions: at once when force is set, else at
// most every FlushInterval.
func (c *core) flush(now time.Time, force bool) {
	if c.txn.Empty() || (!force && now.Sub(c.lastFlush) < c.cfg.FlushInterval) {
		return
	}
	if err := c.txn.Commit(); err != nil {
		// A commit error is a bug or a dying disk: stop dispatching rather
		// than deliver without recording it.
		c.err = fmt.Errorf("router %s: %w", c.cfg.Name, err)
		c.logger.Error("cannot record delivery state; dispatch stopped", "destination", c.cfg.Name, "err", err)
		return
	}
	c.txn = c.cons.Begin()
	c.lastFlush = now
}

func (c *core) refreshDue() { c.nextDue = time.Time{} }
