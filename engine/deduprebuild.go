package engine

import "fmt"

// A dedup run found damaged (at Open, by a lookup or by a merge) is
// dropped, and the keys it held are added again from the log: every
// retained record of the damaged generations goes through the dedup index
// once more. Records whose segments were reclaimed are gone; duplicates of
// those events are the only ones that may be stored again. Open does this
// before serving (recoverDedup); a run damaged while running is rebuilt by
// a background goroutine that reads the log outside the engine's locks and
// adds each chunk of keys under writeMu.

// rebuildChunkRecords bounds the records added per hold of writeMu.
const rebuildChunkRecords = 4096

// wantDedupRebuild asks dedupRebuildLoop for a rebuild (called by the
// dedup index, under writeMu).
func (e *Engine) wantDedupRebuild() {
	select {
	case e.rebuildWanted <- struct{}{}:
	default:
	}
}

// dedupRebuildLoop rebuilds damaged generations' keys when asked.
func (e *Engine) dedupRebuildLoop() {
	defer e.wg.Done()
	for {
		select {
		case <-e.closing:
			return
		case <-e.rebuildWanted:
			if err := e.rebuildDedup(); err != nil {
				e.log.Error("cannot rebuild dedup keys from the log; duplicates of the damaged run's events may be stored again", "err", err)
			}
		}
	}
}

// rebuildDedup adds the keys of the retained records of the damaged
// generations to the dedup index again.
func (e *Engine) rebuildDedup() error {
	e.writeMu.Lock()
	gens := e.dedup.takeDamaged()
	through := e.hwm.Load()
	e.writeMu.Unlock()
	if len(gens) == 0 {
		return nil
	}
	e.segMu.RLock()
	first := through + 1
	if len(e.segments) > 0 {
		first = e.segments[0].baseSeq
	}
	e.segMu.RUnlock()
	e.log.Warn("rebuilding the keys of damaged dedup runs from the retained log", "generations", len(gens), "from_seq", first, "through_seq", through)
	r, err := e.NewReader(first, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	var recs []Record
	added := 0
	for {
		select {
		case <-e.closing:
			return nil // Open rebuilds from the log past the checkpoint
		default:
		}
		recs, err = r.Next(recs[:0], rebuildChunkRecords)
		if err != nil {
			return fmt.Errorf("cannot read the log: %w", err)
		}
		done := len(recs) == 0
		e.writeMu.Lock()
		e.drainLocked() // no group's keys past the mark: what is added now is committed at once
		now := e.opts.Now()
		for i := range recs {
			if recs[i].Seq > through {
				done = true
				break
			}
			if e.dedup.replayIn(&recs[i], now, gens) {
				added++
			}
		}
		e.warnIndex(e.dedup.commitThrough(e.dedup.mark(), 0, now))
		e.writeMu.Unlock()
		if done {
			break
		}
	}
	e.stats.dedupRebuilds.Add(1)
	e.log.Info("dedup keys of damaged runs rebuilt", "keys", added)
	return nil
}
