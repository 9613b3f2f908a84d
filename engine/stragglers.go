package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Stragglers outside the index. A straggler (an event an entry still
// needs, copied out of a segment being deleted) lives in the index next to
// its entry; if the index is lost, so would be the only copy of the event.
// So deleteSegment also writes the frames it moves to
// log/stragglers/<segment id>.stg, synced before the manifest batch that
// deletes the segment: the frames as they were, in seq order (not
// consecutive). Reclaim removes such a file once the index holds none of
// its seqs as a straggler any more. Recover, building a new index, brings
// them back as failed entries (with their keys' barriers) of every
// destination: delivered again, in order before the key's later events.

const (
	stragglerDir = "stragglers"
	stragglerExt = ".stg"
	// stragglerCheckEvery: reclaim looks for straggler files to remove on
	// one pass in this many.
	stragglerCheckEvery = 64
)

func stragglerFileName(segID uint32) string { return fmt.Sprintf("%010d%s", segID, stragglerExt) }

// saveStragglers writes the frames moved out of segment segID to their
// file and syncs it. A failure is logged and the deletion goes on: the
// index still holds the copies (a full disk must not stop reclaim).
func (e *Engine) saveStragglers(segID uint32, frames map[uint64][]byte) {
	if len(frames) == 0 {
		return
	}
	dir := e.fs.PathJoin(e.logDir, stragglerDir)
	err := mkdirAllSynced(e.fs, dir)
	if err == nil {
		err = writeFrames(e.fs, e.fs.PathJoin(dir, stragglerFileName(segID)), frames)
	}
	if err == nil {
		err = syncDir(e.fs, dir)
	}
	if err != nil {
		e.log.Warn("cannot keep a copy of stragglers outside the index; the index still holds them", "segment", segID, "stragglers", len(frames), "err", err)
	}
}

func writeFrames(fs vfs.FS, path string, frames map[uint64][]byte) error {
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("cannot create %s: %w", path, err)
	}
	defer f.Close()
	for _, seq := range slices.Sorted(maps.Keys(frames)) {
		if _, err := f.Write(frames[seq]); err != nil {
			return fmt.Errorf("cannot write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cannot sync %s: %w", path, err)
	}
	return nil
}

// readStragglerFiles decodes every straggler file, calling fn for each
// frame. A damaged frame ends its file (logged; the rest of the file is
// not trusted).
func (e *Engine) readStragglerFiles(fn func(name string, rec Record, frame []byte)) error {
	dir := e.fs.PathJoin(e.logDir, stragglerDir)
	names, err := e.fs.List(dir)
	if err != nil {
		return nil // none
	}
	for _, name := range names {
		if len(name) != 10+len(stragglerExt) || name[10:] != stragglerExt {
			continue
		}
		f, err := e.fs.Open(e.fs.PathJoin(dir, name))
		if err != nil {
			return fmt.Errorf("cannot open %s: %w", name, err)
		}
		data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
		f.Close()
		if err != nil {
			return fmt.Errorf("cannot read %s: %w", name, err)
		}
		for len(data) > 0 {
			rec, n, err := decodeFrame(data, e.opts.RecordBytesMax)
			if err != nil {
				e.log.Warn("straggler file damaged; the rest of it is skipped", "file", name, "err", err)
				break
			}
			fn(name, rec, data[:n])
			data = data[n:]
		}
	}
	return nil
}

// dropSpentStragglerFiles removes the straggler files none of whose seqs
// the index still holds as a straggler.
func (e *Engine) dropSpentStragglerFiles() error {
	if err := e.sweepStragglers(); err != nil {
		return err
	}
	dir := e.fs.PathJoin(e.logDir, stragglerDir)
	names, err := e.fs.List(dir)
	if err != nil || len(names) == 0 {
		return nil // none
	}
	used := make(map[string]bool)
	err = e.readStragglerFiles(func(name string, rec Record, _ []byte) {
		if used[name] {
			return
		}
		if _, closer, err := e.db.Get(stragglerKey(rec.Seq)); err == nil {
			closer.Close()
			used[name] = true
		} else if !errors.Is(err, pebble.ErrNotFound) {
			used[name] = true // unsure: keep it
		}
	})
	if err != nil {
		return err
	}
	removed := false
	for _, name := range names {
		if used[name] || len(name) != 10+len(stragglerExt) || name[10:] != stragglerExt {
			continue
		}
		if err := e.fs.Remove(e.fs.PathJoin(dir, name)); err != nil {
			return fmt.Errorf("cannot remove straggler file %s: %w", name, err)
		}
		removed = true
	}
	if removed {
		return syncDir(e.fs, dir)
	}
	return nil
}

// restoreStragglers puts back in the index the straggler files' events
// whose seqs fall in ranges (sorted, disjoint) and returns them by seq.
func (e *Engine) restoreStragglers(ranges []SeqRange) (map[uint64]Record, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	frames := make(map[uint64][]byte)
	err := e.readStragglerFiles(func(_ string, rec Record, frame []byte) {
		i, found := slices.BinarySearchFunc(ranges, rec.Seq, func(r SeqRange, seq uint64) int {
			switch {
			case r.Last < seq:
				return -1
			case r.First > seq:
				return 1
			}
			return 0
		})
		if found && i < len(ranges) {
			frames[rec.Seq] = slices.Clone(frame)
		}
	})
	if err != nil || len(frames) == 0 {
		return nil, err
	}
	b := e.db.NewBatch()
	defer b.Close()
	for seq, frame := range frames {
		b.Set(stragglerKey(seq), frame, nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("cannot restore stragglers: %w", err)
	}
	recs := make(map[uint64]Record, len(frames))
	for seq, frame := range frames {
		recs[seq], _, _ = decodeFrame(frame, e.opts.RecordBytesMax) // decoded once already
	}
	return recs, nil
}

// sweepStragglers deletes the straggler copies no consumer can need any
// more: below every cursor, with no entry of any consumer (restored by
// restoreStragglers for consumers that had passed them). Called under
// idxMu (entries are written under it).
func (e *Engine) sweepStragglers() error {
	consumers := e.Consumers()
	if len(consumers) == 0 {
		return nil
	}
	below := uint64(math.MaxUint64)
	for _, c := range consumers {
		below = min(below, c.cursor.Load())
	}
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixStraggler}, UpperBound: stragglerKey(below)})
	if err != nil {
		return fmt.Errorf("cannot read stragglers: %w", err)
	}
	b := e.db.NewBatch()
	defer b.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != 9 {
			continue
		}
		seq := binary.BigEndian.Uint64(it.Key()[1:])
		needed := false
		for _, c := range consumers {
			if _, ok, err := e.getEntry(c.id, seq); err != nil || ok {
				needed = true // unsure counts as needed
				break
			}
		}
		if !needed {
			b.Delete(stragglerKey(seq), nil)
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("cannot read stragglers: %w", err)
	}
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot drop unused stragglers: %w", err)
	}
	return nil
}

// recoverStragglers, for Recover building a new index: the straggler
// files' events older than the log's first seq are put back in the index
// (the copies the old index held), and it returns them by seq.
func (e *Engine) recoverStragglers(first uint64) (map[uint64]Record, error) {
	recs := make(map[uint64]Record)
	b := e.db.NewBatch()
	defer b.Close()
	err := e.readStragglerFiles(func(_ string, rec Record, frame []byte) {
		if rec.Seq >= first {
			return // still in a segment
		}
		frame = slices.Clone(frame)
		r, _, _ := decodeFrame(frame, e.opts.RecordBytesMax)
		recs[rec.Seq] = r
		b.Set(stragglerKey(rec.Seq), frame, nil)
	})
	if err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("cannot restore stragglers: %w", err)
	}
	return recs, nil
}

// requeueStragglers makes recovered stragglers pending again for a
// consumer whose cursor is below first, the log's first seq (Recover set
// it at the oldest of them, or the index lost its newest writes and its
// cursor is older than the log): those at or past its cursor become the
// first of each key failed and due now with the key's barrier (or skipped
// behind the key's barrier, if it has one), the later ones skipped behind
// it; the cursor moves on to first.
func requeueStragglers(c *Consumer, recs map[uint64]Record, first uint64, now int64) error {
	cur, _ := c.Cursor()
	if cur >= first {
		return nil
	}
	tx := c.Begin()
	heads := make(map[string]bool)
	for _, seq := range slices.Sorted(maps.Keys(recs)) {
		if seq < cur {
			continue // passed before: its entry, if it has one, is kept
		}
		r := recs[seq]
		key := string(r.Key)
		if !heads[key] {
			_, blocked, err := c.Barrier(r.Key)
			if err != nil {
				return fmt.Errorf("cannot requeue stragglers of %q: %w", c.name, err)
			}
			heads[key] = blocked
		}
		en := Entry{Seq: seq, Key: r.Key, ReceivedAt: r.ReceivedAt, Reason: "recovered from a straggler file after the index was lost"}
		if heads[key] {
			en.State = StateSkipped
		} else {
			en.State, en.DueAt = StateFailed, now
			heads[key] = true
			tx.SetBarrier(r.Key, seq)
		}
		tx.Put(en)
	}
	tx.Advance(first, 0)
	if err := tx.CommitSync(); err != nil {
		return fmt.Errorf("cannot requeue stragglers of %q: %w", c.name, err)
	}
	return nil
}
