package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Consumer is one reader of the log with durable progress: a destination.
// Its cursor is the first seq not yet settled; every event below the cursor
// either succeeded or was filtered (no entry), or has an entry (failed,
// skipped, aborted). Events at or past the cursor are waiting.
type Consumer struct {
	e      *Engine
	id     uint32
	name   string
	cursor atomic.Uint64
	pos    atomic.Uint64
	counts [StatePurged + 1]atomic.Int64
}

// Name is the consumer's name.
func (c *Consumer) Name() string { return c.name }

// Cursor returns the first unsettled seq and, when known, its Pos (a hint
// for NewReader; 0 when unknown).
func (c *Consumer) Cursor() (uint64, Pos) { return c.cursor.Load(), Pos(c.pos.Load()) }

// Count returns the number of stored entries in state s.
func (c *Consumer) Count(s State) int64 {
	if int(s) >= len(c.counts) {
		return 0
	}
	return c.counts[s].Load()
}

// Consumer returns the consumer with this name, creating it if needed. A new
// consumer starts at the log's end: it sees events appended from now on.
func (e *Engine) Consumer(name string) (*Consumer, error) {
	if name == "" || len(name) > 255 {
		return nil, fmt.Errorf("cannot create consumer %q: name must be 1 to 255 bytes", name)
	}
	e.idxMu.Lock()
	defer e.idxMu.Unlock()
	e.consMu.RLock()
	c := e.consumers[name]
	e.consMu.RUnlock()
	if c != nil {
		return c, nil
	}
	var id uint32 = 1
	if v, closer, err := e.db.Get(keyConsumerID); err == nil {
		id = binary.BigEndian.Uint32(v)
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("cannot create consumer %q: %w", name, err)
	}
	c = &Consumer{e: e, id: id, name: name}
	c.cursor.Store(e.hwm.Load() + 1)
	b := e.db.NewBatch()
	b.Set(keyConsumerID, binary.BigEndian.AppendUint32(nil, id+1), nil)
	b.Set(consumerKey(name), binary.BigEndian.AppendUint32(nil, id), nil)
	b.Set(cursorKey(id), encodeCursor(c.cursor.Load(), 0), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("cannot create consumer %q: %w", name, err)
	}
	e.consMu.Lock()
	e.consumers[name] = c
	e.consMu.Unlock()
	return c, nil
}

// Consumers returns every consumer.
func (e *Engine) Consumers() []*Consumer {
	e.consMu.RLock()
	defer e.consMu.RUnlock()
	out := make([]*Consumer, 0, len(e.consumers))
	for _, c := range e.consumers {
		out = append(out, c)
	}
	return out
}

// DropConsumer deletes a consumer with its cursor and entries, so it no
// longer holds segments.
func (e *Engine) DropConsumer(name string) error {
	e.idxMu.Lock()
	defer e.idxMu.Unlock()
	e.consMu.Lock()
	c := e.consumers[name]
	delete(e.consumers, name)
	e.consMu.Unlock()
	if c == nil {
		return fmt.Errorf("cannot drop consumer %q: %w", name, ErrNotFound)
	}
	b := e.db.NewBatch()
	defer b.Close()
	// Straggler copies that only this consumer's entries needed go too.
	for _, p := range []byte{prefixEntry, prefixAborted} {
		var serr error
		err := e.scanEntries(p, c.id, 0, func(en Entry) bool {
			serr = e.dropStragglerIfUnused(b, c.id, en)
			return serr == nil
		})
		if err = errors.Join(err, serr); err != nil {
			return fmt.Errorf("cannot drop consumer %q: %w", name, err)
		}
	}
	b.Delete(consumerKey(name), nil)
	b.Delete(cursorKey(c.id), nil)
	for _, p := range []byte{prefixEntry, prefixDue, prefixKeyIndex, prefixBarrier, prefixAborted} {
		lo := prefixCID(p, c.id)
		b.DeleteRange(lo, prefixEnd(lo), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot drop consumer %q: %w", name, err)
	}
	return nil
}

func encodeCursor(seq uint64, pos Pos) []byte {
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), seq)
	return binary.BigEndian.AppendUint64(v, uint64(pos))
}

// loadConsumers restores consumers, cursors and entry counts at Open.
func (e *Engine) loadConsumers() error {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConsumer}, UpperBound: []byte{prefixConsumer + 1}})
	if err != nil {
		return fmt.Errorf("cannot read consumers: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Value()) != 4 {
			return fmt.Errorf("consumer %q: %w", it.Key()[1:], ErrCorrupt)
		}
		c := &Consumer{e: e, id: binary.BigEndian.Uint32(it.Value()), name: string(it.Key()[1:])}
		if err := e.loadConsumer(c); err != nil {
			return err
		}
		e.consumers[c.name] = c
	}
	return it.Error()
}

func (e *Engine) loadConsumer(c *Consumer) error {
	v, closer, err := e.db.Get(cursorKey(c.id))
	if err != nil {
		return fmt.Errorf("cannot read cursor of %q: %w", c.name, err)
	}
	if len(v) != 16 {
		closer.Close()
		return fmt.Errorf("cursor of %q: %w", c.name, ErrCorrupt)
	}
	cur, pos := binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
	closer.Close()
	if end := e.hwm.Load() + 1; cur > end {
		e.log.Error("cursor past the log's end; the log lost its tail", "consumer", c.name, "cursor", cur, "end", end)
		cur, pos = end, 0
	}
	// Lost seqs at the cursor have nothing to deliver: past them, or the
	// cursor would wait for records that never come (at the log's end,
	// until the next append).
	for _, r := range e.LostRanges() {
		if r.First <= cur && cur <= r.Last {
			cur, pos = r.Last+1, 0
		}
	}
	c.cursor.Store(cur)
	c.pos.Store(pos)
	for _, p := range []byte{prefixEntry, prefixAborted} {
		if err := e.scanEntries(p, c.id, 0, func(en Entry) bool {
			if en.Seq >= cur {
				e.log.Error("entry at or past cursor", "consumer", c.name, "seq", en.Seq, "cursor", cur)
			}
			c.counts[en.State].Add(1)
			return true
		}); err != nil {
			return fmt.Errorf("cannot load entries of %q: %w", c.name, err)
		}
	}
	return nil
}

// scanEntries calls fn for entries under prefix (entry or aborted) of cid
// with seq >= from, in seq order, until fn returns false.
func (e *Engine) scanEntries(prefix byte, cid uint32, from uint64, fn func(Entry) bool) error {
	lo := prefixCID(prefix, cid)
	hi := prefixEnd(lo)
	lo = binary.BigEndian.AppendUint64(lo, from)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != 13 {
			return fmt.Errorf("entry key %x: %w", k, ErrCorrupt)
		}
		en, err := decodeEntry(binary.BigEndian.Uint64(k[5:]), it.Value())
		if err != nil {
			return err
		}
		if (prefix == prefixAborted) != (en.State == StateAborted) {
			return fmt.Errorf("entry %d in state %s under prefix %#x: %w", en.Seq, en.State, prefix, ErrCorrupt)
		}
		if !fn(en) {
			break
		}
	}
	return it.Error()
}

// Entry returns the stored entry of seq, or ErrNotFound.
func (c *Consumer) Entry(seq uint64) (Entry, error) {
	en, ok, err := c.e.getEntry(c.id, seq)
	if err != nil {
		return Entry{}, err
	}
	if !ok {
		return Entry{}, fmt.Errorf("entry %d of %q: %w", seq, c.name, ErrNotFound)
	}
	return en, nil
}

func (e *Engine) getEntry(cid uint32, seq uint64) (Entry, bool, error) {
	for _, k := range [][]byte{entryKey(cid, seq), abortedKey(cid, seq)} {
		v, closer, err := e.db.Get(k)
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return Entry{}, false, fmt.Errorf("cannot read entry %d: %w", seq, err)
		}
		en, err := decodeEntry(seq, v)
		closer.Close()
		return en, err == nil, err
	}
	return Entry{}, false, nil
}

// Due returns up to limit failed entries whose retry is due at or before
// now (Unix ns), earliest first.
func (c *Consumer) Due(now int64, limit int) ([]Entry, error) {
	lo := prefixCID(prefixDue, c.id)
	hi := binary.BigEndian.AppendUint64(prefixCID(prefixDue, c.id), uint64(now)+1)
	it, err := c.e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("cannot scan due entries of %q: %w", c.name, err)
	}
	defer it.Close()
	var out []Entry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		if len(it.Key()) != 21 {
			return nil, fmt.Errorf("due key %x: %w", it.Key(), ErrCorrupt)
		}
		en, err := c.Entry(binary.BigEndian.Uint64(it.Key()[13:]))
		if err != nil {
			return nil, err
		}
		out = append(out, en)
	}
	return out, it.Error()
}

// NextDue returns the earliest retry time of a failed entry.
func (c *Consumer) NextDue() (int64, bool, error) {
	lo := prefixCID(prefixDue, c.id)
	it, err := c.e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return 0, false, fmt.Errorf("cannot scan due entries of %q: %w", c.name, err)
	}
	defer it.Close()
	if !it.First() {
		return 0, false, it.Error()
	}
	return int64(binary.BigEndian.Uint64(it.Key()[5:])), true, nil
}

// KeyEntries returns up to limit failed and skipped entries of an ordering
// key, in seq order: the key's queue behind its barrier.
func (c *Consumer) KeyEntries(key []byte, limit int) ([]Entry, error) {
	lo := keyIndexPrefix(c.id, key)
	it, err := c.e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return nil, fmt.Errorf("cannot scan key entries of %q: %w", c.name, err)
	}
	defer it.Close()
	var out []Entry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		k := it.Key()
		if len(k) != len(lo)+8 {
			continue // a longer key sharing the prefix cannot happen (length is in it)
		}
		en, err := c.Entry(binary.BigEndian.Uint64(k[len(lo):]))
		if err != nil {
			return nil, err
		}
		out = append(out, en)
	}
	return out, it.Error()
}

// Barrier returns the head seq of key's barrier, if it has one.
func (c *Consumer) Barrier(key []byte) (uint64, bool, error) {
	v, closer, err := c.e.db.Get(barrierKey(c.id, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("cannot read barrier: %w", err)
	}
	defer closer.Close()
	return binary.BigEndian.Uint64(v), true, nil
}

// Barriers calls fn for every barrier (key, head seq), in index order:
// shorter keys first, then bytewise (the key's length precedes it in the
// index key). The key is valid only during the call.
func (c *Consumer) Barriers(fn func(key []byte, head uint64) error) error {
	lo := prefixCID(prefixBarrier, c.id)
	it, err := c.e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return fmt.Errorf("cannot scan barriers of %q: %w", c.name, err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < 7 || len(it.Value()) != 8 {
			return fmt.Errorf("barrier key %x: %w", k, ErrCorrupt)
		}
		if err := fn(k[7:], binary.BigEndian.Uint64(it.Value())); err != nil {
			return err
		}
	}
	return it.Error()
}

// Aborted returns up to limit aborted entries with seq > after, in seq
// order, that match (nil matches all): one page of the dead letters.
func (c *Consumer) Aborted(after uint64, limit int, match func(*Entry) bool) ([]Entry, error) {
	if limit <= 0 {
		return nil, nil
	}
	var out []Entry
	err := c.e.scanEntries(prefixAborted, c.id, after+1, func(en Entry) bool {
		if match == nil || match(&en) {
			out = append(out, en)
		}
		return len(out) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list aborted entries of %q: %w", c.name, err)
	}
	return out, nil
}

// Replay re-queues aborted entries that match (nil: all) as failed and due
// at now, attempts reset, flagged EntryReplayed. It returns how many.
func (c *Consumer) Replay(now int64, match func(*Entry) bool) (int, error) {
	return c.rewriteAborted(match, func(t *Txn, en Entry) {
		en.State, en.Attempts, en.DueAt = StateFailed, 0, now
		en.Flags = en.Flags&^EntryUnconfirmed | EntryReplayed
		t.Put(en)
	})
}

// Purge deletes aborted entries that match (nil: all). It returns how many.
func (c *Consumer) Purge(match func(*Entry) bool) (int, error) {
	return c.rewriteAborted(match, func(t *Txn, en Entry) { t.Purge(en.Seq) })
}

func (c *Consumer) rewriteAborted(match func(*Entry) bool, op func(*Txn, Entry)) (int, error) {
	const pageMax = 1000
	total := uint64(0)
	var after uint64
	for {
		page, err := c.Aborted(after, pageMax, match)
		if err != nil || len(page) == 0 {
			return int(total), err
		}
		t := c.Begin()
		for _, en := range page {
			op(t, en)
		}
		if err := t.commit(pebble.Sync); err != nil {
			return int(total), err
		}
		total += uint64(len(page))
		after = page[len(page)-1].Seq
	}
}
