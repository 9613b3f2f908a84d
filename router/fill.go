package router

import (
	"fmt"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// readEventsMax is how many records fill asks the reader for at a time:
// enough to amortise the call, few enough that the record buffer stays
// small (the shared window budget asks for budgetReadEvents).
const readEventsMax = 256

// itemOverheadBytes is what an event costs in the window beyond its bytes
// (the item, its Event and the slices' headers), counted towards
// WindowBytes and the shared budget so that many tiny events are bounded
// too.
const itemOverheadBytes = 200

// fill reads events into the window up to its bounds.
func (c *core) fill(now time.Time) error {
	c.refill = false
	defer c.settleBudget()
	for {
		c.settleBudget()
		if c.windowFull() {
			return nil
		}
		n := min(readEventsMax, c.cfg.WindowEvents-(len(c.window)-c.head))
		if c.cfg.WindowBudget != nil {
			n = min(n, budgetReadEvents)
		}
		recs, err := c.reader.Next(c.recBuf[:0], n)
		c.recBuf = recs[:0]
		if err != nil {
			return fmt.Errorf("cannot read log: %w", err)
		}
		if len(recs) == 0 {
			c.passLost()
			return nil
		}
		for i := range recs {
			c.admitRecord(&recs[i], now)
		}
	}
}

// passLost moves the cursor over seqs the log lost at its end (reported
// by the engine): with nothing held and nothing left to read, the reader
// is past them, and no record would ever carry the cursor there.
func (c *core) passLost() {
	if c.head != len(c.window) {
		return
	}
	if cur, _ := c.cons.Cursor(); c.reader.CaughtUp() && c.reader.Position() > cur {
		c.txn.Advance(c.reader.Position(), 0)
	}
}

// refuses reports whether the destination's filters refuse r.
func (c *core) refuses(r *engine.Record) bool {
	return (c.sources != nil && !c.sources[string(r.Source)]) || (c.events != nil && !c.events[string(r.Type)])
}

func (c *core) admitRecord(r *engine.Record, now time.Time) {
	it := newItem(r)
	c.window = append(c.window, it)
	c.winSize += it.size
	switch {
	case c.refuses(r):
		it.state = done
		c.stats.Filtered++
		return
	}
	if !c.cfg.Ordering {
		c.loose = append(c.loose, it)
		return
	}
	c.keys.admit(it)
}

// newItem copies a record into an item that owns its bytes.
func newItem(r *engine.Record) *item {
	n := len(r.Payload) + len(r.MessageID) + len(r.Key) + len(r.Type) + len(r.Source)
	buf := make([]byte, 0, n)
	cut := func(b []byte) []byte {
		s := len(buf)
		buf = append(buf, b...)
		return buf[s:len(buf):len(buf)]
	}
	it := &item{seq: r.Seq, pos: r.Pos, key: string(r.Key), size: n + itemOverheadBytes}
	it.ev = Event{Seq: r.Seq, ReceivedAt: r.ReceivedAt, Payload: cut(r.Payload), MessageID: cut(r.MessageID),
		Key: cut(r.Key), Type: cut(r.Type), Source: cut(r.Source)}
	it.buf = buf
	return it
}
