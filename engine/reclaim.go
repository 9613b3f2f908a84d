package engine

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Reclaim deletes sealed segments that every consumer has passed. Entries
// that still need an event of such a segment (failed, skipped, aborted:
// stragglers) get a copy of its frame in the index first, so one stuck user
// cannot pin the disk. The manifest change and the copies commit in one
// synced batch before the file is removed. It returns how many segments it
// deleted. Dedup keys of their records still waiting to be indexed are
// written first.
func (e *Engine) Reclaim() (int, error) { return e.reclaim(true) }

// reclaim is Reclaim; the periodic pass (force false) leaves segments whose
// dedup keys the committer is about to index (see indexedThrough).
func (e *Engine) reclaim(force bool) (int, error) {
	e.idxMu.Lock()
	defer e.idxMu.Unlock()
	minCursor := e.hwm.Load() + 1
	consumers := e.Consumers()
	for _, c := range consumers {
		minCursor = min(minCursor, c.cursor.Load())
	}
	if e.reclaimPasses++; force || e.reclaimPasses%stragglerCheckEvery == 0 {
		if err := e.dropSpentStragglerFiles(); err != nil {
			e.log.Warn("cannot remove spent straggler files", "err", err)
		}
	}
	// A failed cut (a full disk) must not keep the sealed segments.
	cutErr := e.cutConsumedActive(minCursor)
	e.segMu.RLock()
	segs := slices.Clone(e.segments)
	e.segMu.RUnlock()
	deleted := 0
	witness := -1                                  // segs[witness] is kept: the newest on-disk record of where seqs stand
	for i, s := range segs[:max(len(segs)-1, 0)] { // never the active one
		if !s.sealed.Load() || s.lastSeq.Load() >= minCursor {
			break
		}
		if witness < 0 {
			witness = e.seqWitness(segs)
		}
		if i == witness {
			continue // see seqWitness; those after it are empty, their headers not on disk
		}
		if ok, err := e.indexedThrough(s.lastSeq.Load(), force); err != nil || !ok {
			e.refreshDiskUsage()
			return deleted, err
		}
		if err := e.deleteSegment(s, consumers); err != nil {
			e.refreshDiskUsage()
			return deleted, err
		}
		deleted++
	}
	if deleted > 0 {
		if err := syncDir(e.fs, e.logDir); err != nil {
			e.log.Warn("cannot sync log directory after reclaim", "err", err)
		}
	}
	e.refreshDiskUsage()
	return deleted, cutErr
}

// indexedThrough reports whether the dedup keys of records up to seq are
// in the index, so that a segment holding them may be deleted: Open
// rebuilds the keys it lost in a crash from the log past the checkpoint,
// and a deleted segment is no longer there to replay. Unless forced, keys
// the committer is about to write (it does every second while appends
// come) are left to it: written here under load, they would make many
// small index tables. The synced manifest batch that deletes the segment
// makes them durable.
func (e *Engine) indexedThrough(seq uint64, force bool) (bool, error) {
	if e.dedup.indexed.Load() >= seq {
		return true, nil
	}
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	now := e.opts.Now()
	e.warnIndex(e.dedup.poll()) // a batch that finished since the last append
	if !force && !e.dedup.idle(now) {
		return false, nil
	}
	e.drainLocked() // its keys are committed, or undone
	err := e.dedup.sync(now)
	if err != nil && isDiskFull(err) && e.disk.release("writing dedup keys before reclaim found the disk full") {
		err = e.dedup.sync(now) // into the reserve's room (diskfull.go)
	}
	if err != nil {
		return false, fmt.Errorf("cannot reclaim: %w", err)
	}
	return e.dedup.indexed.Load() >= seq, nil
}

// seqWitness returns the index in segs (the manifest's segments, oldest
// first, the active one last) of the newest segment whose file shows on
// disk where seqs stand: its header is synced (segment.headerDurable; for
// the active segment, activeHeaderDurable syncs it if need be), or it is
// sealed with records (synced before they were acknowledged). Reclaim
// keeps it: without the index, segment files are the only record of the
// seqs given so far, and a later segment whose header never reached the
// disk (a recycled file, a full disk) shows nothing. Those later ones
// (empty, sealed by rotations on a full disk) may go.
func (e *Engine) seqWitness(segs []*segment) int {
	last := len(segs) - 1
	if last >= 0 && e.activeHeaderDurable(segs[last]) {
		return last
	}
	for i := last - 1; i >= 0; i-- {
		if s := segs[i]; s.headerDurable.Load() || s.sealed.Load() && s.records() > 0 {
			return i
		}
	}
	return 0
}

// activeHeaderDurable reports whether the header of the active segment a
// is synced, syncing it if need be (once: a recycled file's header is
// otherwise synced by its first group).
func (e *Engine) activeHeaderDurable(a *segment) bool {
	if a.headerDurable.Load() {
		return true
	}
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	if e.active != a || e.file == nil {
		return a.headerDurable.Load()
	}
	if err := e.file.Sync(); err != nil {
		e.log.Warn("cannot sync the active segment's header; the segment before it is kept", "segment", a.id, "err", err)
		return false
	}
	a.headerDurable.Store(true)
	return true
}

// cutConsumedActive seals the active segment when every consumer has passed
// all of it and it is big enough to be worth freeing.
func (e *Engine) cutConsumedActive(minCursor uint64) error {
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	a := e.active
	if a == nil || e.file == nil || a.records() == 0 || a.lastSeq.Load() >= minCursor || a.size.Load() < e.opts.ReclaimActiveMinBytes {
		return nil
	}
	if err := e.rotateLocked(); err != nil {
		return fmt.Errorf("cannot cut consumed active segment: %w", err)
	}
	return nil
}

func (e *Engine) deleteSegment(s *segment, consumers []*Consumer) error {
	b := e.db.NewBatch()
	defer b.Close()
	first, last := s.baseSeq, s.lastSeq.Load()
	moved := make(map[uint64]bool)
	frames := make(map[uint64][]byte)
	unreadable := make(map[uint64]bool)
	for _, c := range consumers {
		for _, p := range []byte{prefixEntry, prefixAborted} {
			var ferr error
			err := e.scanEntries(p, c.id, first, func(en Entry) bool {
				if en.Seq > last {
					return false
				}
				if moved[en.Seq] || unreadable[en.Seq] {
					return true
				}
				rec, frame, err := e.readRawFrame(s, en.Pos.Offset())
				if err == nil && (en.Pos.Segment() != s.id || rec.Seq != en.Seq) {
					err = fmt.Errorf("entry Pos %s holds seq %d: %w", en.Pos, rec.Seq, ErrCorrupt)
				}
				if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) {
					// Unreadable for good: keeping the segment for it would
					// pin it, and every later one, forever.
					e.recordLost(en.Seq, en.Seq, fmt.Sprintf("straggler unreadable in segment %d: %v", s.id, err))
					unreadable[en.Seq] = true
					return true
				}
				if err != nil {
					ferr = fmt.Errorf("cannot move straggler %d out of segment %d: %w", en.Seq, s.id, err)
					return false
				}
				b.Set(stragglerKey(en.Seq), frame, nil)
				frames[en.Seq] = frame
				moved[en.Seq] = true
				return true
			})
			if err == nil {
				err = ferr
			}
			if err != nil {
				return err
			}
		}
	}
	e.saveStragglers(s.id, frames)
	b.Delete(segmentKey(s.id), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot drop segment %d from manifest: %w", s.id, err)
	}
	e.segMu.Lock()
	// A new slice, never an edit in place: readers iterate the one they
	// took under segMu after releasing it.
	e.segments = slices.DeleteFunc(slices.Clone(e.segments), func(x *segment) bool { return x == s })
	e.segMu.Unlock()
	e.stats.stragglersMoved.Add(uint64(len(moved)))
	e.stats.segmentsDeleted.Add(1)
	e.retireFile(s)
	return nil
}

// dropStragglerIfUnused deletes the straggler copy of prev's event when its
// segment is gone and no other consumer has an entry for it. Called under
// idxMu with the batch that deletes prev.
func (e *Engine) dropStragglerIfUnused(b *pebble.Batch, cid uint32, prev Entry) error {
	e.segMu.RLock()
	live := findSegment(e.segments, prev.Pos.Segment()) != nil
	e.segMu.RUnlock()
	if live {
		return nil
	}
	for _, c := range e.Consumers() {
		if c.id == cid {
			continue
		}
		if _, ok, err := e.getEntry(c.id, prev.Seq); err != nil || ok {
			return err
		}
	}
	b.Delete(stragglerKey(prev.Seq), nil)
	return nil
}

// refreshDiskUsage recomputes segment plus index bytes for the budget check.
func (e *Engine) refreshDiskUsage() {
	var total int64
	e.segMu.RLock()
	for _, s := range e.segments {
		total += s.size.Load()
	}
	e.segMu.RUnlock()
	e.diskUsage.Store(total + e.keptBytes.Load() + int64(e.db.Metrics().DiskSpaceUsage()) + e.dedup.runBytes.Load())
}
