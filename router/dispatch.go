package router

import (
	"fmt"
	"time"
)

// poll returns the batches to send now, marking their events in flight.
func (c *core) poll(now time.Time) []*batch {
	if c.paused || c.err != nil || now.Before(c.throttledUntil) {
		return nil
	}
	var out []*batch
	for c.inFlight < c.aimd.Limit() {
		probe := false
		switch c.health.state {
		case BackingOff:
			if now.Before(c.health.until) || c.inFlight > 0 {
				return out
			}
			probe = true
		case Probing:
			return out
		}
		max := c.cfg.BatchSize
		if probe {
			max = 1
		}
		if c.rate != nil {
			if !c.rate.take(now, 0) {
				return out
			}
			max = min(max, int(c.rate.tokens))
			if max < 1 {
				return out
			}
		}
		b := c.nextBatch(now, max, probe)
		if b == nil {
			return out
		}
		if c.rate != nil {
			c.rate.tokens -= float64(len(b.items))
		}
		if probe {
			b.probe = true
			c.health.state = Probing
		}
		b.start = now
		c.inFlight++
		c.stats.Requests++
		out = append(out, b)
	}
	return out
}

// nextBatch assembles up to max events: stored entries first (retries and
// released skips), then the window. A probe tests the destination, not a
// message, so it takes a window event (never failed) first: a stored
// failure may be a poison event, and probing with it alone would keep the
// breaker open, uncharged, with every key waiting.
func (c *core) nextBatch(now time.Time, max int, probe bool) *batch {
	if probe {
		if b := c.nextWindowBatch(now, max); b != nil {
			return b
		}
		return c.nextEntryBatch(now, max)
	}
	if b := c.nextEntryBatch(now, max); b != nil {
		return b
	}
	return c.nextWindowBatch(now, max)
}

// nextWindowBatch assembles up to max events read from the log.
func (c *core) nextWindowBatch(now time.Time, max int) *batch {
	b := &batch{}
	if !c.cfg.Ordering {
		for len(c.loose) > 0 && len(b.items) < max {
			it := c.loose[0]
			if !fits(it, b.items, &max) {
				break
			}
			c.loose = c.loose[1:]
			if c.expire(it, now) {
				continue
			}
			it.state = inflight
			b.items = append(b.items, it)
		}
		return b.forWindow()
	}
	for len(b.items) < max {
		k, head := c.keys.nextReady()
		if k == nil {
			break
		}
		if m := max; head != nil && !fits(head, b.items, &m) {
			break
		}
		if _, ok := c.keys.takeReady(); !ok {
			continue
		}
		sent := false
		for it := k.head(); it != nil && len(b.items) < max; it = k.head() {
			if !fits(it, b.items, &max) {
				break
			}
			k.take()
			if c.expire(it, now) {
				continue
			}
			it.state = inflight
			sent = true
			b.items = append(b.items, it)
		}
		c.keys.taken(k, sent)
	}
	return b.forWindow()
}

// fits reports whether it may join a request that has events in: an event
// being bisected only with others of its group, up to its split cap (which
// becomes the request's cap max), and any other only with others like it.
func fits(it *item, in []*item, max *int) bool {
	if len(in) > 0 && in[0].group != it.group {
		return false
	}
	if it.split == 0 {
		return true
	}
	if len(in) >= it.split {
		return false
	}
	*max = min(*max, it.split)
	return true
}

// forWindow links a window batch's events to it (nil when empty).
func (b *batch) forWindow() *batch {
	if len(b.items) == 0 {
		return nil
	}
	for _, it := range b.items {
		it.batch = b
	}
	return b
}

// expire aborts a window event older than MaxAge instead of sending it.
func (c *core) expire(it *item, now time.Time) bool {
	if now.Sub(time.Unix(0, it.ev.ReceivedAt)) <= c.pol.MaxAge {
		return false
	}
	it.reason = fmt.Sprintf("expired: older than max_age %v", c.pol.MaxAge)
	it.state = aborted
	c.stats.Expired++
	c.stats.Aborted++
	return true
}

// nextEntryBatch returns stored entries to send: released skips of keys
// whose head settled, and failed entries whose retry is due.
func (c *core) nextEntryBatch(now time.Time, max int) *batch {
	if len(c.work) == 0 {
		c.gatherEntries(now)
	}
	for i, b := range c.work {
		if c.cfg.Ordering && c.keys.isBusy(b.items[0].key) {
			continue
		}
		if len(b.items) > max {
			rest := &batch{items: b.items[max:], entry: true}
			b.items = b.items[:max]
			c.work[i] = rest
		} else {
			c.work = append(c.work[:i], c.work[i+1:]...)
		}
		for _, it := range b.items {
			c.inFlightEntries[it.seq] = true
			it.state = inflight
		}
		if c.cfg.Ordering {
			c.keys.sendEntries(b.items[0].key)
		}
		return b
	}
	return nil
}
