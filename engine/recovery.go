package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Recovery of the segment files at Open.
//
// Segment files are the source of truth for payloads: Open never deletes a
// file that holds records the index does not know were consumed. It
// reconciles the manifest with the log directory:
//
//   - a manifest segment whose file is gone: its records are reported lost;
//   - a file the manifest does not name and that holds no frame, or only
//     frames below the oldest segment (a crash while deleting a consumed
//     segment, or a recycled file's older bytes): removed;
//   - files past the manifest's last segment that hold newer records (the
//     index lost its newest writes): adopted, scanned and added to the
//     manifest, with an error logged;
//   - any other file with records (the index is missing or older than the
//     oldest file): Open refuses with ErrIndexDamaged and changes nothing.
//
// The last segment is scanned frame by frame (scanFile) and cut where its
// torn tail starts (cutTail). What tells a torn write from lost
// acknowledged records is the highest seq known acknowledged: a group-start
// frame proves every seq below it was, and the index holds witnesses too
// (ackWitness). Records known acknowledged that the files no longer hold
// are reported lost by seq and their seqs are never given again.

// ackWitness returns the highest seq the index shows was acknowledged: the
// dedup checkpoint, consumer cursors (they pass only durable records) and
// the lost set. 0 when none.
func (e *Engine) ackWitness() (uint64, error) {
	var w uint64
	v, closer, err := e.db.Get(keyDedupCkpt)
	switch {
	case err == nil:
		if len(v) == 8 {
			w = binary.BigEndian.Uint64(v)
		}
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return 0, fmt.Errorf("cannot read dedup checkpoint: %w", err)
	}
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixCursor}, UpperBound: []byte{prefixCursor + 1}})
	if err != nil {
		return 0, fmt.Errorf("cannot read cursors: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if v := it.Value(); len(v) == 16 {
			if cur := binary.BigEndian.Uint64(v); cur > 0 {
				w = max(w, cur-1)
			}
		}
	}
	if err := it.Error(); err != nil {
		return 0, fmt.Errorf("cannot read cursors: %w", err)
	}
	if rs := e.LostRanges(); len(rs) > 0 {
		w = max(w, rs[len(rs)-1].Last)
	}
	return w, nil
}

// unknownFile is a segment file the manifest does not name.
type unknownFile struct {
	id      uint32
	hdr     segmentHeader
	hdrOK   bool
	lastSeq uint64 // highest seq of a valid frame; 0 when none
}

// reconcileFiles brings the manifest and the log directory together (see
// above), scans the last segment and sets e.nextSeq and e.active.
func (e *Engine) reconcileFiles(witness uint64) error {
	names, err := e.fs.List(e.logDir)
	if err != nil {
		return fmt.Errorf("cannot list %s: %w", e.logDir, err)
	}
	onDisk := make(map[uint32]bool)
	var unknown []uint32
	for _, name := range names {
		id, ok := parseSegmentFileName(name)
		if !ok {
			continue
		}
		if slices.ContainsFunc(e.segments, func(s *segment) bool { return s.id == id }) {
			onDisk[id] = true
		} else {
			unknown = append(unknown, id)
		}
	}
	slices.Sort(unknown)
	adopt, remove, err := e.sortUnknown(unknown)
	if err != nil {
		return err // nothing changed
	}
	// Where the manifest's log ends, before segments whose files are gone
	// leave it: adopted files follow on from there.
	expect := uint64(1)
	if n := len(e.segments); n > 0 {
		expect = e.segments[n-1].lastSeq.Load() + 1
	}
	if err := e.dropMissing(onDisk); err != nil {
		return err
	}
	for _, u := range remove {
		// A file's header says its segment started at baseSeq: every seq
		// below was acknowledged (a segment starts past the durable end),
		// even if no file holds it any more.
		if u.hdrOK && u.hdr.baseSeq > 0 {
			witness = max(witness, u.hdr.baseSeq-1)
		}
		witness = max(witness, u.lastSeq)
		name := segmentFileName(u.id)
		e.nextID = max(e.nextID, u.id+1) // never reuse a file's id
		e.log.Info("removing a segment file the index does not name; it holds no record still needed", "file", name, "last_seq", u.lastSeq)
		if err := e.fs.Remove(e.fs.PathJoin(e.logDir, name)); err != nil {
			return fmt.Errorf("cannot remove stray segment %s: %w", name, err)
		}
	}
	if len(adopt) > 0 {
		return e.adopt(adopt, expect, witness, true)
	}
	if n := len(e.segments); n > 0 {
		last := e.segments[n-1]
		e.nextSeq = last.lastSeq.Load() + 1
		e.active = last
		if !last.sealed.Load() {
			next, err := e.scanTail(last, witness, true)
			if err != nil {
				return err
			}
			e.nextSeq = next
			// Sealed at its valid end (Open's rotation records it), so
			// that readers step over damage inside it.
			last.sealed.Store(true)
		}
	} else {
		e.nextSeq = max(e.nextSeq, expect) // every named segment is gone: never reuse their seqs
	}
	if witness >= e.nextSeq {
		// The last segment was sealed (a clean stop) or is gone, yet the
		// index shows later seqs acknowledged.
		e.recordLostBut(e.nextSeq, witness, "missing from the end of the log")
		e.nextSeq = witness + 1
	}
	return nil
}

// dropMissing drops manifest segments whose file is gone, reporting their
// records lost, but for the stragglers their straggler files still hold
// (an index that lost its newest writes may name a segment reclaim has
// since deleted): those are put back in the index, where readers find
// them, and e.restored keeps them for Open to requeue (requeueStragglers)
// for consumers whose cursor is older than the log.
func (e *Engine) dropMissing(onDisk map[uint32]bool) error {
	kept := e.segments[:0]
	var missing []*segment
	for _, s := range e.segments {
		if onDisk[s.id] {
			kept = append(kept, s)
		} else {
			missing = append(missing, s)
		}
	}
	e.segments = kept
	if len(missing) == 0 {
		return nil
	}
	ranges := make([]SeqRange, 0, len(missing))
	for _, s := range missing {
		if s.records() > 0 {
			ranges = append(ranges, SeqRange{s.baseSeq, s.lastSeq.Load()})
		}
	}
	restored, err := e.restoreStragglers(ranges)
	if err != nil {
		return err
	}
	if len(restored) > 0 {
		e.log.Warn("stragglers of missing segments restored from their straggler files", "stragglers", len(restored))
	}
	e.restored = restored
	for _, s := range missing {
		e.log.Error("segment file missing", "segment", s.id, "first_seq", s.baseSeq, "records", s.records())
		if s.records() > 0 {
			e.recordLostBut(s.baseSeq, s.lastSeq.Load(), fmt.Sprintf("segment file %s missing", segmentFileName(s.id)))
		}
		if err := e.db.Delete(segmentKey(s.id), pebble.Sync); err != nil {
			return fmt.Errorf("cannot drop missing segment %d: %w", s.id, err)
		}
	}
	return nil
}

// recordLostBut is recordLost but for the seqs in e.restored (stragglers
// of missing segments that their straggler files gave back).
func (e *Engine) recordLostBut(first, last uint64, why string) {
	var kept []SeqRange
	for seq := range e.restored {
		if seq >= first && seq <= last {
			kept = addRange(kept, SeqRange{seq, seq})
		}
	}
	for _, r := range subtractRanges(SeqRange{first, last}, kept) {
		e.recordLost(r.First, r.Last, why)
	}
}

// sortUnknown sorts the unknown files into those to adopt, in id order,
// and those that hold no record the log still needs, to remove; a file
// that fits neither makes it fail with ErrIndexDamaged.
func (e *Engine) sortUnknown(ids []uint32) (adopt, remove []unknownFile, err error) {
	var firstBase uint64 = math.MaxUint64
	var lastID uint32
	if n := len(e.segments); n > 0 {
		firstBase, lastID = e.segments[0].baseSeq, e.segments[n-1].id
	}
	for _, id := range ids {
		u, err := e.inspect(id)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case u.lastSeq == 0 || u.lastSeq < firstBase && len(e.segments) > 0:
			remove = append(remove, u)
		case len(e.segments) > 0 && id > lastID:
			adopt = append(adopt, u)
		default:
			return nil, nil, fmt.Errorf("segment file %s holds records up to seq %d that the index does not know: %w; nothing was changed: stop sluice and run `sluice recover` to rebuild the index from the segment files", segmentFileName(id), u.lastSeq, ErrIndexDamaged)
		}
	}
	return adopt, remove, nil
}

// inspect reads an unknown file's header and finds the highest seq among
// its valid frames.
func (e *Engine) inspect(id uint32) (unknownFile, error) {
	u := unknownFile{id: id}
	path := e.fs.PathJoin(e.logDir, segmentFileName(id))
	h, err := e.readHeader(path)
	if err != nil {
		return u, err
	}
	u.hdr, u.hdrOK = h, h.id == id
	var from uint64 // unknown: any seq
	if u.hdrOK {
		from = h.baseSeq
	}
	fsc, err := scanFile(e.fs, path, from, math.MaxUint64>>1, e.opts.RecordBytesMax)
	if err != nil {
		return u, err
	}
	if n := len(fsc.pieces); n > 0 {
		u.lastSeq = fsc.pieces[n-1].last
	}
	return u, nil
}

// readHeader reads and decodes a segment file's header; a damaged or short
// one decodes to the zero header.
func (e *Engine) readHeader(path string) (segmentHeader, error) {
	f, err := e.fs.Open(path)
	if err != nil {
		return segmentHeader{}, fmt.Errorf("cannot open %s: %w", path, err)
	}
	defer f.Close()
	hdr := make([]byte, segmentHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
		return segmentHeader{}, fmt.Errorf("cannot read header of %s: %w", path, err)
	}
	h, herr := decodeSegmentHeader(hdr)
	if herr != nil {
		return segmentHeader{}, nil
	}
	return h, nil
}

// adopt adds the files past the manifest's last segment to it: every
// segment but the last is sealed where the next one starts, the last is
// scanned as the active one. One synced batch records them. expect is the
// seq after the manifest's log (where a file without a readable header is
// taken to start); behind says the index lost them (logged as an error)
// rather than being rebuilt.
func (e *Engine) adopt(files []unknownFile, expect, witness uint64, behind bool) error {
	var chain []*segment // the manifest's unsealed last segment, if any, then the files
	if n := len(e.segments); n > 0 && !e.segments[n-1].sealed.Load() {
		chain = append(chain, e.segments[n-1])
	}
	for i, u := range files {
		base := expect
		if u.hdrOK {
			base = u.hdr.baseSeq
		}
		if i == 0 && len(chain) == 0 && base > expect {
			// The manifest's last segment was gone (its records unknown to
			// it) or ended before: the seqs up to the first adopted file
			// are in no file.
			e.recordLost(expect, base-1, "missing between the index's segments and the adopted ones")
		}
		s := &segment{id: u.id, baseSeq: base}
		s.lastSeq.Store(base - 1)
		s.size.Store(segmentHeaderLen)
		chain = append(chain, s)
	}
	b := e.db.NewBatch()
	defer b.Close()
	for i, s := range chain {
		if i+1 < len(chain) {
			end := chain[i+1].baseSeq - 1
			if end+1 < s.baseSeq {
				return fmt.Errorf("segment %s starts at seq %d, before %s ends: %w; stop sluice and run `sluice recover`", segmentFileName(chain[i+1].id), chain[i+1].baseSeq, segmentFileName(s.id), ErrIndexDamaged)
			}
			if err := e.sealAt(s, end); err != nil {
				return err
			}
		} else {
			next, err := e.scanTail(s, witness, false)
			if err != nil {
				return err
			}
			e.nextSeq = next
			s.sealed.Store(true)
		}
		b.Set(segmentKey(s.id), encodeManifest(s), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot record adopted segments in the manifest: %w", err)
	}
	adopted := chain[len(chain)-len(files):]
	if behind {
		e.log.Error("the index was behind the log (its newest writes were lost); segment files adopted into the manifest",
			"first_segment", adopted[0].id, "last_segment", adopted[len(adopted)-1].id,
			"first_seq", adopted[0].baseSeq, "last_seq", e.nextSeq-1)
	}
	for _, s := range adopted {
		e.segments = append(e.segments, s)
		e.nextID = max(e.nextID, s.id+1)
	}
	e.active = e.segments[len(e.segments)-1]
	return nil
}

// sealAt scans a segment that a later one follows: every seq up to end was
// acknowledged (the next segment starts after them), so what the file does
// not hold of them is lost; frames past end are a failed group's and are
// not taken.
func (e *Engine) sealAt(s *segment, end uint64) error {
	fsc, err := scanFile(e.fs, e.fs.PathJoin(e.logDir, segmentFileName(s.id)), s.baseSeq, end, e.opts.RecordBytesMax)
	if err != nil {
		return err
	}
	cut := cutTail(fsc, s.baseSeq, end)
	s.size.Store(cut.size)
	s.lastSeq.Store(cut.lastSeq)
	s.sealed.Store(true)
	for _, r := range cut.lost {
		e.recordLost(r.First, r.Last, fmt.Sprintf("damaged in segment %d", s.id))
	}
	return nil
}

// scanTail scans the last segment, cuts it after its last record known or
// presumed acknowledged and returns the next seq to give. known says the
// manifest named the segment (an adopted one's header was checked
// already).
func (e *Engine) scanTail(s *segment, witness uint64, known bool) (uint64, error) {
	path := e.fs.PathJoin(e.logDir, segmentFileName(s.id))
	h, err := e.readHeader(path)
	if err != nil {
		return 0, err
	}
	older := false // what follows the last frame is older data, not a tail
	switch {
	case h.id == s.id && h.baseSeq == s.baseSeq:
		older = h.flags&headerRecycled != 0
	case h.id != 0 && h.id < s.id:
		// A spare file (spare.go) whose header, written with the first
		// group, was not synced: no record of it was acknowledged (unless
		// a witness says otherwise), and what it holds is older.
		older = true
		e.log.Info("active segment was never synced; it holds no record of its own", "segment", s.id)
	case known:
		// The header is synced before any record of the segment is
		// acknowledged: it was never written (a lost unsynced write) or
		// damaged since. The frames check themselves (checksums, and seqs
		// from the manifest's baseSeq), so they are scanned anyway.
		e.log.Warn("active segment header invalid or never written; scanning its frames anyway", "segment", s.id, "header_id", h.id, "header_base_seq", h.baseSeq)
	}
	fsc, err := scanFile(e.fs, path, s.baseSeq, math.MaxUint64>>1, e.opts.RecordBytesMax)
	if err != nil {
		return 0, err
	}
	acked := max(fsc.acked, witness)
	if e.rebuilding {
		// Without the index's witnesses, a whole frame with a bad checksum
		// at the end is taken for a damaged record (reported lost, its seq
		// not given again) rather than a torn write.
		acked = max(acked, fsc.damagedSeq)
	}
	cut := cutTail(fsc, s.baseSeq, acked)
	if cut.size < fsc.size {
		if older {
			e.log.Debug("active segment ends where its file's older data starts", "segment", s.id, "offset", cut.size)
		} else {
			e.stats.truncatedBytes.Add(uint64(fsc.size - cut.size))
			e.log.Warn("truncating the torn tail of the active segment (never acknowledged)", "segment", s.id, "offset", cut.size, "bytes", fsc.size-cut.size)
		}
	}
	s.size.Store(cut.size)
	s.lastSeq.Store(cut.lastSeq)
	for _, r := range cut.lost {
		e.recordLost(r.First, r.Last, fmt.Sprintf("damaged in the active segment %d", s.id))
	}
	return cut.nextSeq, nil
}
