package engine

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Txn is a set of state transitions of one consumer that commit together,
// in one index batch: a cursor advance with the entries it creates, entry
// updates, and barrier changes. Each transition is checked against the table
// in state.go before anything is written. A Txn is not safe for concurrent
// use; it may not name the same seq twice.
type Txn struct {
	c        *Consumer
	advance  bool
	cursor   uint64
	pos      Pos
	puts     []Entry
	settles  []settleOp
	barriers []barrierOp
	seqs     map[uint64]struct{}
	err      error
}

type settleOp struct {
	seq uint64
	to  State // StateSucceeded or StatePurged
}

type barrierOp struct {
	key  []byte
	head uint64
	set  bool
}

// Begin starts a transaction.
func (c *Consumer) Begin() *Txn { return &Txn{c: c} }

// Advance moves the cursor to seq (it never moves back); pos is the Pos of
// the record at seq when known (0 otherwise). Events passed over without an
// entry in this Txn or an earlier one are settled as succeeded or filtered.
func (t *Txn) Advance(seq uint64, pos Pos) { t.advance, t.cursor, t.pos = true, seq, pos }

// Put stores an entry (failed, skipped or aborted) for an event below the
// new cursor. Key and Response are copied.
func (t *Txn) Put(e Entry) {
	if t.claim(e.Seq) {
		e.Key = append([]byte(nil), e.Key...)
		e.Response = append([]byte(nil), e.Response...)
		t.puts = append(t.puts, e)
	}
}

// Succeed deletes the entry of seq: its event was delivered.
func (t *Txn) Succeed(seq uint64) {
	if t.claim(seq) {
		t.settles = append(t.settles, settleOp{seq, StateSucceeded})
	}
}

// Purge deletes the aborted entry of seq.
func (t *Txn) Purge(seq uint64) {
	if t.claim(seq) {
		t.settles = append(t.settles, settleOp{seq, StatePurged})
	}
}

// SetBarrier records that key is blocked behind the event head.
func (t *Txn) SetBarrier(key []byte, head uint64) {
	t.barriers = append(t.barriers, barrierOp{append([]byte(nil), key...), head, true})
}

// ClearBarrier lifts key's barrier.
func (t *Txn) ClearBarrier(key []byte) {
	t.barriers = append(t.barriers, barrierOp{key: append([]byte(nil), key...)})
}

func (t *Txn) claim(seq uint64) bool {
	if t.seqs == nil {
		t.seqs = make(map[uint64]struct{})
	}
	if _, dup := t.seqs[seq]; dup {
		if t.err == nil {
			t.err = fmt.Errorf("cannot commit: event %d named twice in one transaction", seq)
		}
		return false
	}
	t.seqs[seq] = struct{}{}
	return true
}

// Empty reports whether the transaction would change nothing.
func (t *Txn) Empty() bool {
	return !t.advance && len(t.puts) == 0 && len(t.settles) == 0 && len(t.barriers) == 0
}

// Commit applies the transaction atomically. It writes the index without
// fsync: a crash may lose a recent tail of commits, never part of one, and
// the events involved are then delivered again. Nothing is applied when it
// returns an error.
func (t *Txn) Commit() error { return t.commit(pebble.NoSync) }

// CommitSync is Commit followed by an fsync of the index.
func (t *Txn) CommitSync() error { return t.commit(pebble.Sync) }

func (t *Txn) commit(opts *pebble.WriteOptions) error {
	if t.err != nil {
		return t.err
	}
	if t.Empty() {
		return nil
	}
	e, c := t.c.e, t.c
	e.idxMu.Lock()
	defer e.idxMu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("cannot commit: %w", ErrClosed)
	}
	old := c.cursor.Load()
	cur := old
	if t.advance {
		if t.cursor < old || t.cursor > e.hwm.Load()+1 {
			return fmt.Errorf("cannot move cursor of %q from %d to %d (log end %d): %w", c.name, old, t.cursor, e.hwm.Load()+1, ErrIllegalTransition)
		}
		cur = t.cursor
	}
	b := e.db.NewBatch()
	defer b.Close()
	var delta [StatePurged + 1]int64
	for i := range t.puts {
		if err := t.applyPut(b, &t.puts[i], old, cur, &delta); err != nil {
			return err
		}
	}
	for _, s := range t.settles {
		if err := t.applySettle(b, s, &delta); err != nil {
			return err
		}
	}
	for _, op := range t.barriers {
		if op.set {
			b.Set(barrierKey(c.id, op.key), binary.BigEndian.AppendUint64(nil, op.head), nil)
		} else {
			b.Delete(barrierKey(c.id, op.key), nil)
		}
	}
	if t.advance {
		b.Set(cursorKey(c.id), encodeCursor(cur, t.pos), nil)
	}
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("cannot commit transitions of %q: %w", c.name, err)
	}
	for s, d := range delta {
		c.counts[s].Add(d)
	}
	if t.advance {
		c.cursor.Store(cur)
		c.pos.Store(uint64(t.pos))
	}
	return nil
}

// prior returns the stored entry of seq, or a synthetic one in the implied
// state: waiting at or past the old cursor, succeeded below it.
func (t *Txn) prior(seq, oldCursor uint64) (Entry, error) {
	en, ok, err := t.c.e.getEntry(t.c.id, seq)
	if err != nil || ok {
		return en, err
	}
	if seq >= oldCursor {
		return Entry{Seq: seq, State: StateWaiting}, nil
	}
	return Entry{Seq: seq, State: StateSucceeded}, nil
}

func (t *Txn) applyPut(b *pebble.Batch, en *Entry, oldCursor, newCursor uint64, delta *[StatePurged + 1]int64) error {
	if en.Seq == 0 || en.Seq >= newCursor {
		return fmt.Errorf("cannot store entry %d at or past cursor %d of %q: %w", en.Seq, newCursor, t.c.name, ErrIllegalTransition)
	}
	if !en.State.stored() {
		return fmt.Errorf("cannot store entry %d in state %s: %w", en.Seq, en.State, ErrIllegalTransition)
	}
	if len(en.Key) > keyBytesMax {
		return fmt.Errorf("cannot store entry %d: key of %d bytes: %w", en.Seq, len(en.Key), ErrInvalidRecord)
	}
	prev, err := t.prior(en.Seq, oldCursor)
	if err != nil {
		return err
	}
	if err := checkTransition(en.Seq, prev.State, en.State); err != nil {
		return err
	}
	cid := t.c.id
	t.unindex(b, &prev, delta)
	val := appendEntry(nil, en)
	if en.State == StateAborted {
		b.Set(abortedKey(cid, en.Seq), val, nil)
	} else {
		b.Set(entryKey(cid, en.Seq), val, nil)
		b.Set(keyIndexKey(cid, en.Key, en.Seq), nil, nil)
	}
	if en.State == StateFailed {
		b.Set(dueKey(cid, en.DueAt, en.Seq), nil, nil)
	}
	delta[en.State]++
	return nil
}

// unindex deletes a stored entry's keys (nothing for implied states).
func (t *Txn) unindex(b *pebble.Batch, prev *Entry, delta *[StatePurged + 1]int64) {
	cid := t.c.id
	switch prev.State {
	case StateFailed:
		b.Delete(dueKey(cid, prev.DueAt, prev.Seq), nil)
		fallthrough
	case StateSkipped:
		b.Delete(entryKey(cid, prev.Seq), nil)
		b.Delete(keyIndexKey(cid, prev.Key, prev.Seq), nil)
	case StateAborted:
		b.Delete(abortedKey(cid, prev.Seq), nil)
	default:
		return
	}
	delta[prev.State]--
}

func (t *Txn) applySettle(b *pebble.Batch, s settleOp, delta *[StatePurged + 1]int64) error {
	prev, ok, err := t.c.e.getEntry(t.c.id, s.seq)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("cannot settle event %d of %q: no entry: %w", s.seq, t.c.name, ErrIllegalTransition)
	}
	if err := checkTransition(s.seq, prev.State, s.to); err != nil {
		return err
	}
	t.unindex(b, &prev, delta)
	return t.c.e.dropStragglerIfUnused(b, t.c.id, prev)
}
