package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
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
// reads across it nor after every restart; Engine.LostRanges lists it. A
// copy lives beside the segments in log/lost (one "first last" line per
// range, rewritten whole), so that the set outlives a lost index: Open and
// Recover read both.
type lostSet struct {
	mu     sync.Mutex
	ranges []SeqRange // sorted by First, disjoint, not adjacent
	// fileMu serializes rewrites of the log/lost file.
	fileMu sync.Mutex
}

// lostFileName is the lost set's copy in the log directory.
const lostFileName = "lost"

// lostRangesMax bounds the set in memory: past it, new losses are still
// logged and counted but no longer remembered (an index that needs this
// many ranges has a failing disk).
const lostRangesMax = 1 << 16

// loadLost reads the lost set from the index and from its copy in the log
// directory, and writes into the index the ranges only the copy held (an
// index that was lost or rebuilt). An unreadable index still gets the
// copy's ranges, with the error returned.
func (e *Engine) loadLost() error {
	idxErr := e.loadLostIndex()
	inIndex := e.LostRanges()
	fromFile, err := e.readLostFile()
	if err != nil {
		e.log.Error("lost set copy unreadable; the index's is used", "file", e.fs.PathJoin(e.logDir, lostFileName), "err", err)
	}
	e.lost.mu.Lock()
	for _, r := range fromFile {
		e.lost.ranges = addRange(e.lost.ranges, r)
	}
	all := slices.Clone(e.lost.ranges)
	e.lost.mu.Unlock()
	for _, r := range all {
		for _, part := range subtractRanges(r, inIndex) {
			if err := e.db.Set(lostKey(part.First), binary.BigEndian.AppendUint64(nil, part.Last), pebble.Sync); err != nil {
				return errors.Join(idxErr, fmt.Errorf("cannot record lost range in the index: %w", err))
			}
		}
	}
	if len(fromFile) < len(all) || !slices.Equal(fromFile, all) {
		e.saveLostFile()
	}
	return idxErr
}

// loadLostIndex reads the lost set from the index.
func (e *Engine) loadLostIndex() error {
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
	e.saveLostFile()
}

// readLostFile reads the lost set's copy in the log directory; none is an
// empty set.
func (e *Engine) readLostFile() ([]SeqRange, error) {
	f, err := e.fs.Open(e.fs.PathJoin(e.logDir, lostFileName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	var out []SeqRange
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		var r SeqRange
		if n, err := fmt.Sscanf(line, "%d %d", &r.First, &r.Last); n != 2 || err != nil || r.First == 0 || r.Last < r.First {
			return out, fmt.Errorf("line %d: %q is not a range of seqs", i+1, line)
		}
		out = addRange(out, r)
	}
	return out, nil
}

// saveLostFile rewrites the lost set's copy in the log directory (a
// temporary file synced, renamed over it, the directory synced). A failure
// is logged: the index still holds the set.
func (e *Engine) saveLostFile() {
	e.lost.fileMu.Lock()
	defer e.lost.fileMu.Unlock()
	var b strings.Builder
	for _, r := range e.LostRanges() {
		fmt.Fprintf(&b, "%d %d\n", r.First, r.Last)
	}
	path := e.fs.PathJoin(e.logDir, lostFileName)
	tmp := path + ".tmp"
	err := func() error {
		f, err := e.fs.Create(tmp, vfs.WriteCategoryUnspecified)
		if err != nil {
			return err
		}
		_, err = io.WriteString(f, b.String())
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = e.fs.Rename(tmp, path)
		}
		if err == nil {
			err = syncDir(e.fs, e.logDir)
		}
		return err
	}()
	if err != nil {
		e.log.Error("cannot keep a copy of the lost set beside the segments; the index still holds it", "file", path, "err", err)
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
