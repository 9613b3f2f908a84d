package router

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// complete applies a batch's result.
func (c *core) complete(b *batch, now time.Time) {
	c.inFlight--
	res := b.res
	if res.Pause {
		c.pauseSelf(b, now)
		return
	}
	out := c.pol.classify(res)
	var named []outcome // per item, for a partial answer (see completePartial)
	var own []Result
	if len(res.Rejected) > 0 && (out == outSuccess || out == outAbort) {
		named, own = c.namedOutcomes(b)
	}
	bad := out == outThrottled || out == outRetryable
	for _, o := range named {
		bad = bad || o == outThrottled || o == outRetryable
	}
	c.aimd.observe(b.start, now, c.inFlight+1, bad)
	if named != nil {
		c.completePartial(b, named, own, now)
		return
	}
	c.apply(b, out, now)
}

// pauseSelf applies an answer that pauses the destination (Result.Pause):
// the batch goes back uncharged and nothing more is sent until Resume.
func (c *core) pauseSelf(b *batch, now time.Time) {
	why := b.res.Err
	if why == nil {
		why = fmt.Errorf("the destination asked to pause (status %d)", b.res.Status)
	}
	if !c.paused {
		c.logger.Error("destination paused until an operator resumes it", "destination", c.cfg.Name, "err", why)
	}
	c.paused, c.pausedBy = true, why
	if b.probe {
		c.health.probeUnanswered(now) // Resume probes again
	}
	c.requeue(b, false, now)
}

// namedOutcomes reads a partial answer: per item of the batch, the outcome
// of its own status and that result if the answer names it, outSuccess
// (taken) if not. It returns nil when the answer names none of the batch's
// events (an index out of range names nothing): then its status stands for
// the whole batch.
func (c *core) namedOutcomes(b *batch) ([]outcome, []Result) {
	outs := make([]outcome, len(b.items))
	own := make([]Result, len(b.items))
	any := false
	for _, r := range b.res.Rejected {
		if r.Index < 0 || r.Index >= len(b.items) || own[r.Index].Status != 0 {
			continue
		}
		any = true
		own[r.Index] = Result{Status: r.Status, Body: r.Reason}
		outs[r.Index] = c.pol.classify(own[r.Index])
	}
	if !any {
		return nil, nil
	}
	return outs, own
}

// completePartial applies an answer that took some events of the batch and
// refused others by name (outs, from namedOutcomes): each named event gets
// its own status's outcome, as if it had gone alone, and the rest are
// delivered. The request counts once in the destination's health: as a
// failure when named retryable failures are at least as many as the events
// taken (then, if the destination looks down, they go back uncharged, as in
// an outage), else as an answer. own holds each named event's own result. The named go first, so that a failed one's
// barrier is up before its key is released, and in batch order: once one
// of a key fails or is throttled, its later named events go back behind it
// unchanged. (A destination that takes an event after failing an earlier
// one of the same user has broken that user's order itself; the failed one
// is retried.)
func (c *core) completePartial(b *batch, outs []outcome, own []Result, now time.Time) {
	res := b.res
	taken, failing, throttled := 0, 0, false
	for _, o := range outs {
		switch o {
		case outSuccess:
			taken++
		case outRetryable:
			failing++
		case outThrottled:
			throttled = true
		}
	}
	key := b.items[0].key
	down := false
	if failing > 0 && failing >= taken {
		down = !c.requestFailed(key, b.start, Result{Status: 503, Err: errors.New("most events named as failed")}, now)
	} else {
		c.health.success(key, b.start, taken > 0) // it answered: it is up
	}
	if throttled {
		c.stats.Throttled++
		c.throttledUntil = maxTime(c.throttledUntil, now.Add(max(res.RetryAfter, c.pol.BackoffInitial)))
	}
	var took, back []*item
	stopped := map[string]bool{}
	for i, it := range b.items {
		o := outs[i]
		if o == outSuccess {
			took = append(took, it)
			continue
		}
		c.stats.Rejected++
		if o == outThrottled || o == outRetryable && (down || stopped[it.key]) {
			back = append(back, it)
			stopped[it.key] = c.cfg.Ordering
			continue
		}
		one := &batch{items: []*item{it}, entry: b.entry, start: b.start, res: own[i]}
		if o == outAbort {
			c.refuse(it, one.res, now)
		} else {
			c.fail(it, one.res, now) // the destination is up: a message failure
			stopped[it.key] = c.cfg.Ordering
		}
		c.release(one)
	}
	if len(back) > 0 {
		c.requeue(&batch{items: back, entry: b.entry, start: b.start}, false, now)
	}
	if len(took) > 0 {
		c.stats.Delivered += uint64(len(took))
		c.settle(&batch{items: took, entry: b.entry, start: b.start, res: res}, now)
	}
}

// requestFailed records a request that failed (retryably) in the
// destination's health and reports whether the failure is charged to its
// events; if not, the destination looks down (the breaker is open).
func (c *core) requestFailed(key string, start time.Time, res Result, now time.Time) (charged bool) {
	if c.health.failure(key, start, now, c.cfg.Rand) {
		return true
	}
	c.stats.OutageAttempts++
	if c.health.state == BackingOff && c.health.failures == 1 {
		c.stats.BreakerOpened++
		c.logger.Warn("destination looks down; backing off", "destination", c.cfg.Name, "status", res.Status, "err", res.Err, "until", c.health.until)
	}
	return false
}

// refuse aborts an event the destination refused (a non-retryable answer
// to a request of it alone, or naming it).
func (c *core) refuse(it *item, res Result, now time.Time) {
	it.attempts++ // the refused attempt is the event's own (charged)
	if it.first == 0 {
		it.first = now.UnixNano()
	}
	c.abort(it, res, fmt.Sprintf("rejected with status %d", res.Status), now)
}

// apply applies an outcome to a batch whose request is complete.
func (c *core) apply(b *batch, out outcome, now time.Time) {
	res := b.res
	key := b.items[0].key
	switch out {
	case outSuccess:
		c.health.success(key, b.start, true)
		c.stats.Delivered += uint64(len(b.items))
		c.settle(b, now)
	case outThrottled:
		c.health.success(key, b.start, false) // it answered: it is up
		c.stats.Throttled++
		c.throttledUntil = now.Add(max(res.RetryAfter, c.pol.BackoffInitial))
		c.requeue(b, false, now)
	case outAbort:
		c.health.success(key, b.start, false) // it answered: it is up
		if len(b.items) > 1 {
			c.requeue(b, true, now) // bisect to find the event it refuses
			return
		}
		c.refuse(b.items[0], res, now)
		c.release(b)
	case outRetryable:
		if !c.requestFailed(key, b.start, res, now) {
			c.requeue(b, false, now)
			return
		}
		if len(b.items) > 1 {
			c.requeue(b, true, now)
			return
		}
		c.fail(b.items[0], res, now)
		c.release(b)
	}
}

// settle handles delivered events.
func (c *core) settle(b *batch, now time.Time) {
	stored := false
	for _, it := range b.items {
		if !it.persisted {
			it.state = done
			continue
		}
		delete(c.inFlightEntries, it.seq)
		c.txn.Succeed(it.seq)
		stored = true
	}
	if stored {
		c.flush(now, true)
	}
	c.release(b)
}

// release frees the batch's keys and queues what comes next for them.
func (c *core) release(b *batch) { c.releaseKeys(b, true) }

// releaseKeys frees the batch's keys; drain queues their stored entries.
// Every item counts, not only the key's first: a replayed event may share
// a drained batch with its key's skipped events, and a blocked key's queue
// goes on after a replayed event too (its drain may have stopped at it).
func (c *core) releaseKeys(b *batch, drain bool) {
	// Without ordering a key has state only while a stored barrier drains
	// (newCore): then its queue goes on as an ordered one's does.
	for _, it := range b.items {
		c.keys.release(it, drain)
	}
}

// requeue puts a batch's events back unchanged (not charged): before the
// key's other waiting events, in order. bisect halves their split cap: the
// destination refused the request or failed it while it looks healthy, so
// one of them is likely bad, and sending them in halves finds it in
// log2(n) rounds (far cheaper than one by one when most are good).
func (c *core) requeue(b *batch, bisect bool, now time.Time) {
	half := (len(b.items) + 1) / 2
	if bisect {
		c.groups++
		for _, it := range b.items {
			it.split, it.group = half, c.groups
		}
	}
	var stored, win []*item
	for _, it := range b.items {
		if it.persisted {
			stored = append(stored, it)
		} else {
			win = append(win, it)
		}
	}
	if len(stored) > 0 {
		if bisect {
			// Resend in halves, in order; they stay reserved so no drain
			// or retry scan picks them up twice. They go first: the rest of
			// a batch the rate limit split may be queued after them.
			// An entry batch holds one key's events (nextEntryBatch goes
			// by its first), and a spilled window batch may mix keys: the
			// halves are cut per key.
			var halves []*batch
			for _, key := range keysOf(stored) {
				var run []*item
				for _, it := range stored {
					if it.key == key {
						it.state = waiting
						run = append(run, it)
					}
				}
				for len(run) > 0 {
					n := min(half, len(run))
					halves = append(halves, &batch{items: run[:n:n], entry: true})
					run = run[n:]
				}
			}
			c.work = append(halves, c.work...)
		} else {
			rewrote := false
			for _, it := range stored {
				delete(c.inFlightEntries, it.seq)
				if it.spillHead {
					// Answered (throttled, or the destination is down):
					// due now rather than after the timeout it was stored
					// with; the throttle or the breaker paces it.
					e := c.entryOf(it, engine.StateFailed)
					e.DueAt = now.UnixNano()
					if e.Reason == "" {
						e.Reason = spillReason
					}
					c.txn.Put(e)
					it.spillHead = false
					rewrote = true
				}
				if !it.replayed {
					c.dropKeyWork(it.key)
				}
			}
			if rewrote {
				c.flush(now, true)
				c.refreshDue()
			}
		}
	}
	for i := len(win) - 1; i >= 0; i-- {
		it := win[i]
		it.state = waiting
		if !c.cfg.Ordering {
			c.loose = append([]*item{it}, c.loose...)
			continue
		}
		c.keys.putBack(it)
	}
	c.releaseKeys(b, !bisect)
}

// keysOf returns the distinct keys of items, in order of first appearance.
func keysOf(items []*item) []string {
	var keys []string
	for _, it := range items {
		if !slices.Contains(keys, it.key) {
			keys = append(keys, it.key)
		}
	}
	return keys
}

// dropKeyWork withdraws a key's queued entry batches (the rest of a batch
// being resent one by one) after one of its entries went back to the index
// unsettled: they are later events of the key and must wait for it. They
// stay stored as they are; the key's drain brings them back, in order, once
// its head settles.
func (c *core) dropKeyWork(key string) {
	if !c.cfg.Ordering {
		return
	}
	kept := c.work[:0]
	for _, b := range c.work {
		if b.items[0].key == key && !b.items[0].replayed {
			for _, it := range b.items {
				delete(c.inFlightEntries, it.seq)
			}
			continue
		}
		kept = append(kept, b)
	}
	clear(c.work[len(kept):])
	c.work = kept
}

// fail records a retryable failure of a lone event while the destination
// does not look down: the event is retried later. The failure is charged
// (counts towards MinAttempts) only once the destination is seen delivering
// other events after it (health.confirms), checked when the retry comes
// due (chargeDue) or, failing that, at the next failure: until then it may
// be the first sign of an outage that the breaker cannot tell yet (one key
// sending, or too few failures), and an outage must never abort an event.
func (c *core) fail(it *item, res Result, now time.Time) {
	if it.unconfirmed && c.health.confirms(time.Unix(0, it.last)) {
		it.attempts++
	}
	it.unconfirmed = true
	it.last = now.UnixNano()
	if it.first == 0 {
		it.first = it.last
	}
	it.status, it.response = int32(res.Status), capBody(res.Body)
	if res.Err != nil {
		it.reason = res.Err.Error()
		it.status = -1
	} else {
		it.reason = fmt.Sprintf("status %d", res.Status)
	}
	if int(it.attempts) >= c.pol.MinAttempts {
		c.abort(it, res, fmt.Sprintf("failed %d times: %s", it.attempts, it.reason), now)
		return
	}
	c.stats.Failed++
	due := now.Add(c.pol.retryDelay(int(it.attempts), now.Sub(time.Unix(0, it.first)), c.cfg.Rand)).UnixNano()
	if it.persisted {
		delete(c.inFlightEntries, it.seq)
		e := c.entryOf(it, engine.StateFailed)
		e.DueAt = due
		c.txn.Put(e)
		c.flush(now, true)
		c.refreshDue()
		if !it.replayed {
			c.dropKeyWork(it.key)
		}
		return
	}
	it.state = failed
	it.due = due
	if c.cfg.Ordering {
		c.keys.failedInWindow(it.key)
	}
}

// chargeDue charges a loaded failed entry's last failure if the destination
// has since shown it was the message's fault, and aborts the event instead
// of retrying it once MinAttempts failures are charged.
func (c *core) chargeDue(it *item, now time.Time) (aborted bool) {
	if !it.unconfirmed || !c.health.confirms(time.Unix(0, it.last)) {
		return false
	}
	it.attempts++
	it.unconfirmed = false
	if int(it.attempts) < c.pol.MinAttempts {
		return false
	}
	c.abort(it, Result{}, fmt.Sprintf("failed %d times: %s", it.attempts, it.reason), now)
	c.afterEntryFinal(it, now)
	return true
}

// abort gives up on an event: it goes to the dead letters with its reason.
func (c *core) abort(it *item, res Result, reason string, now time.Time) {
	it.reason = reason
	it.unconfirmed = false
	it.last = now.UnixNano()
	if res.Status != 0 || res.Err != nil {
		it.status, it.response = int32(res.Status), capBody(res.Body)
		if res.Err != nil {
			it.status = -1
		}
	}
	c.stats.Aborted++
	c.logger.Debug("event aborted", "destination", c.cfg.Name, "seq", it.seq, "reason", reason)
	if it.persisted {
		delete(c.inFlightEntries, it.seq)
		c.txn.Put(c.entryOf(it, engine.StateAborted))
		c.flush(now, true)
		return
	}
	it.state = aborted
}
