package engine

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// SeqRange is an inclusive range of sequence numbers.
type SeqRange struct{ First, Last uint64 }

// Len is the number of seqs in the range.
func (r SeqRange) Len() uint64 { return r.Last - r.First + 1 }

func (r SeqRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// lostSet is the set of acknowledged seqs known lost: frames that failed
// their checks, segment files gone, records a torn active segment no longer
// holds though a later group proved them acknowledged. It lives in the
// index (0x0f first → last) so that a loss is reported once, by whichever
// reader or recovery meets it first, not again by every consumer that
// reads across it nor after every restart; Engine.LostRanges lists it.
type lostSet struct {
	mu     sync.Mutex
	ranges []SeqRange // sorted by First, disjoint, not adjacent
}

// lostRangesMax bounds the set in memory: past it, new losses are still
// logged and counted but no longer remembered (an index that needs this
// many ranges has a failing disk).
const lostRangesMax = 1 << 16

// loadLost reads the lost set from the index.
func (e *Engine) loadLost() error {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLost}, UpperBound: []byte{prefixLost + 1}})
	if err != nil {
		return fmt.Errorf("cannot read lost ranges: %w", err)
	}
	defer it.Close()
	e.lost.mu.Lock()
	defer e.lost.mu.Unlock()
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 9 || len(v) != 8 {
			return fmt.Errorf("lost range key %x: %w", k, ErrCorrupt)
		}
		r := SeqRange{binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(v)}
		if r.Last < r.First {
			return fmt.Errorf("lost range %d-%d: %w", r.First, r.Last, ErrCorrupt)
		}
		e.lost.ranges = addRange(e.lost.ranges, r)
	}
	return it.Error()
}

// recordLost reports seqs first..last lost for the reason why: the part not
// already known is logged at ERROR, counted in Stats.LostRecords and
// written to the index.
func (e *Engine) recordLost(first, last uint64, why string) {
	if last < first || first == 0 {
		return
	}
	e.lost.mu.Lock()
	fresh := subtractRanges(SeqRange{first, last}, e.lost.ranges)
	if len(e.lost.ranges) < lostRangesMax {
		for _, r := range fresh {
			e.lost.ranges = addRange(e.lost.ranges, r)
		}
	}
	e.lost.mu.Unlock()
	if len(fresh) == 0 {
		e.log.Debug("records known lost skipped", "first_seq", first, "last_seq", last)
		return
	}
	for _, r := range fresh {
		e.stats.lostRecords.Add(r.Len())
		e.log.Error("acknowledged records lost", "first_seq", r.First, "last_seq", r.Last, "records", r.Len(), "reason", why)
		v := binary.BigEndian.AppendUint64(nil, r.Last)
		if err := e.db.Set(lostKey(r.First), v, pebble.Sync); err != nil {
			e.log.Error("cannot record lost range in the index", "first_seq", r.First, "last_seq", r.Last, "err", err)
		}
	}
}

// LostRanges returns the seqs known lost, in order (see lostSet).
func (e *Engine) LostRanges() []SeqRange {
	e.lost.mu.Lock()
	defer e.lost.mu.Unlock()
	return slices.Clone(e.lost.ranges)
}

// addRange inserts r into the sorted, disjoint set rs, merging what it
// overlaps or touches.
func addRange(rs []SeqRange, r SeqRange) []SeqRange {
	i := 0
	for i < len(rs) && rs[i].Last+1 < r.First {
		i++
	}
	j := i
	for j < len(rs) && rs[j].First <= r.Last+1 {
		r.First, r.Last = min(r.First, rs[j].First), max(r.Last, rs[j].Last)
		j++
	}
	return slices.Replace(rs, i, j, r)
}

// subtractRanges returns the parts of r not covered by the sorted,
// disjoint set rs.
func subtractRanges(r SeqRange, rs []SeqRange) []SeqRange {
	var out []SeqRange
	next := r.First
	for _, x := range rs {
		if x.Last < next {
			continue
		}
		if x.First > r.Last {
			break
		}
		if x.First > next {
			out = append(out, SeqRange{next, x.First - 1})
		}
		if x.Last >= r.Last {
			return out
		}
		next = x.Last + 1
	}
	return append(out, SeqRange{next, r.Last})
}
