package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

const readChunkBytes = 256 << 10

// frameScanner reads frames of one segment file in order, checking each
// checksum and that sequence numbers are consecutive. Records it returns
// alias its buffer until the next refill.
type frameScanner struct {
	f        vfs.File
	off      int64  // file offset of buf[pos]
	limit    int64  // never read at or past it
	seq      uint64 // expected seq of the next frame
	buf      []byte
	pos, end int
	maxFrame int
}

func newFrameScanner(f vfs.File, seq uint64, off, limit int64, maxFrame int) *frameScanner {
	return &frameScanner{f: f, off: off, limit: limit, seq: seq, maxFrame: maxFrame}
}

// next returns the next frame. It returns io.EOF at the limit, errShortFrame
// when a refill is needed but not allowed (records returned so far would be
// overwritten), and an error wrapping ErrCorrupt for a bad frame.
func (s *frameScanner) next(allowRefill bool) (Record, error) {
	for {
		rec, n, err := decodeFrame(s.buf[s.pos:s.end], s.maxFrame)
		if err == nil {
			if rec.Seq != s.seq {
				return rec, fmt.Errorf("frame at offset %d has seq %d, want %d: %w", s.off, rec.Seq, s.seq, ErrCorrupt)
			}
			rec.Pos = Pos(s.off) // offset only; the Reader adds the segment
			s.pos += n
			s.off += int64(n)
			s.seq++
			return rec, nil
		}
		if !errors.Is(err, errShortFrame) {
			return rec, fmt.Errorf("frame at offset %d: %w", s.off, err)
		}
		buffered := int64(s.end - s.pos)
		if s.off+buffered >= s.limit {
			if buffered == 0 {
				return rec, io.EOF
			}
			return rec, fmt.Errorf("frame at offset %d cut by the end of data at %d: %w", s.off, s.limit, ErrCorrupt)
		}
		if !allowRefill {
			return rec, errShortFrame
		}
		if err := s.refill(); err != nil {
			return rec, err
		}
	}
}

func (s *frameScanner) refill() error {
	want := readChunkBytes
	if s.end-s.pos >= 4 {
		want = max(want, frameHeaderLen+int(binary.LittleEndian.Uint32(s.buf[s.pos:])))
	}
	want = min(want, s.maxFrame)
	if cap(s.buf) < want {
		nb := make([]byte, want)
		s.end = copy(nb, s.buf[s.pos:s.end])
		s.buf = nb
	} else {
		s.end = copy(s.buf[:cap(s.buf)], s.buf[s.pos:s.end])
		s.buf = s.buf[:cap(s.buf)]
	}
	s.pos = 0
	readAt := s.off + int64(s.end)
	n := min(int64(len(s.buf)-s.end), s.limit-readAt)
	got, err := s.f.ReadAt(s.buf[s.end:s.end+int(n)], readAt)
	s.end += got
	if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("segment ends at %d before the expected %d: %w", readAt, s.limit, ErrCorrupt)
		}
		return fmt.Errorf("cannot read segment at %d: %w", readAt, err)
	}
	return nil
}

// resync looks past a bad frame for the next valid one: the first offset
// from s.off on (below the limit) where a whole frame decodes, passes its
// checksum and carries a seq in [minSeq, maxSeq] (the frame at s.off itself
// qualifies when only its seq was unexpected). A frame's length and seq
// are checked before its checksum, so the search costs little per byte;
// JSON payloads cannot hold a forged frame, whose length and seq fields
// start with zero bytes. On success the scanner continues at that frame and
// resync reports true; its buffer is dropped, so records returned before
// are no longer valid. Recovery and reads of damaged sealed segments use
// it: one bad frame loses that frame, not the rest of its segment.
func (s *frameScanner) resync(minSeq, maxSeq uint64) (bool, error) {
	if minSeq > maxSeq {
		return false, nil
	}
	win := make([]byte, readChunkBytes+s.maxFrame)
	start := s.off
	for start+frameLenMin <= s.limit {
		n := int(min(int64(len(win)), s.limit-start))
		got, err := s.f.ReadAt(win[:n], start)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("cannot read segment at %d: %w", start, err)
		}
		buf := win[:got]
		next := start + int64(max(got-frameHeaderLen+1, 1))
		for i := 0; i+frameHeaderLen <= len(buf); i++ {
			bodyLen := int(binary.LittleEndian.Uint32(buf[i:]))
			if bodyLen < frameLenMin-frameHeaderLen || frameHeaderLen+bodyLen > s.maxFrame {
				continue
			}
			seq := binary.LittleEndian.Uint64(buf[i+8:]) &^ frameGroupStart
			if seq < minSeq || seq > maxSeq {
				continue
			}
			end := i + frameHeaderLen + bodyLen
			if end > len(buf) {
				if start+int64(end) > s.limit || i == 0 {
					continue // cut by the end of data
				}
				next = start + int64(i) // read on from here
				break
			}
			if _, _, err := decodeFrame(buf[i:end], s.maxFrame); err == nil {
				s.off, s.pos, s.end, s.seq = start+int64(i), 0, 0, seq
				return true, nil
			}
		}
		if got == 0 {
			break
		}
		start = next
	}
	return false, nil
}

// Reader reads the log in sequence order, never past the durable
// high-water mark. It is not safe for concurrent use.
type Reader struct {
	e    *Engine
	seg  *segment
	f    vfs.File
	sc   *frameScanner
	from uint64 // records below it are skipped
	next uint64 // seq expected next
}

// NewReader returns a reader positioned at the first record with seq >=
// from. hint, if not zero, is the Pos of that record (a cursor's saved
// position); with it the reader starts there instead of scanning its
// segment from the start. A wrong hint costs only time.
func (e *Engine) NewReader(from uint64, hint Pos) (*Reader, error) {
	r := &Reader{e: e, from: max(from, 1), next: max(from, 1)}
	e.segMu.RLock()
	segs := e.segments
	e.segMu.RUnlock()
	if len(segs) == 0 {
		return r, nil
	}
	if hint != 0 {
		if s := findSegment(segs, hint.Segment()); s != nil && s.baseSeq <= from && from <= s.lastSeq.Load() {
			if rec, err := e.readFrame(s, hint.Offset()); err == nil && rec.Seq == from {
				return r, r.open(s, hint.Offset(), from)
			}
		}
	}
	i := sort.Search(len(segs), func(i int) bool { return segs[i].lastSeq.Load() >= from })
	if i == len(segs) {
		i = len(segs) - 1
	}
	s := segs[i]
	if s.baseSeq > from {
		r.next = s.baseSeq // records before the oldest segment are gone
	}
	return r, r.open(s, segmentHeaderLen, s.baseSeq)
}

func findSegment(segs []*segment, id uint32) *segment {
	i := sort.Search(len(segs), func(i int) bool { return segs[i].id >= id })
	if i < len(segs) && segs[i].id == id {
		return segs[i]
	}
	return nil
}

func (r *Reader) open(s *segment, off int64, seq uint64) error {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	f, err := r.e.fs.Open(r.e.fs.PathJoin(r.e.logDir, segmentFileName(s.id)))
	if err != nil {
		return fmt.Errorf("cannot open segment %d: %w", s.id, err)
	}
	var buf []byte
	if r.sc != nil {
		buf = r.sc.buf[:0]
	}
	r.seg, r.f = s, f
	r.sc = newFrameScanner(f, seq, off, s.size.Load(), r.e.opts.RecordBytesMax)
	r.sc.buf = buf
	return nil
}

// Next appends up to max records to dst and returns it. It may return fewer
// than max before the end (the records of one call share one buffer); it
// returns none only at the durable end of the log. The records' byte slices
// are valid until the next call to Next or Close.
func (r *Reader) Next(dst []Record, max int) ([]Record, error) {
	start := len(dst)
	for len(dst)-start < max {
		if r.seg == nil {
			if !r.nextSegment() {
				break
			}
			continue
		}
		sealed := r.seg.sealed.Load()
		r.sc.limit = r.seg.size.Load()
		rec, err := r.sc.next(len(dst) == start)
		switch {
		case err == nil:
		case errors.Is(err, errShortFrame):
			return dst, nil
		case err == io.EOF:
			if !sealed || !r.nextSegment() {
				return dst, nil
			}
			continue
		case errors.Is(err, ErrCorrupt) && sealed:
			r.skipCorrupt(err)
			continue
		default:
			return dst, fmt.Errorf("cannot read segment %d: %w", r.seg.id, err)
		}
		if rec.Seq < r.from {
			continue
		}
		rec.Pos = makePos(r.seg.id, int64(rec.Pos))
		r.next = rec.Seq + 1
		dst = append(dst, rec)
	}
	return dst, nil
}

// Position is the seq the reader's next record will have at the least:
// past every record returned and every seq it found lost.
func (r *Reader) Position() uint64 { return r.next }

// CaughtUp reports whether the reader has read every durable record (Next
// would return none now).
func (r *Reader) CaughtUp() bool { return r.next > r.e.hwm.Load() }

// nextSegment moves to the segment after the current one, if there is one.
func (r *Reader) nextSegment() bool {
	hwm := r.e.hwm.Load() // first: a segment is listed before hwm reaches it
	r.e.segMu.RLock()
	segs := r.e.segments
	r.e.segMu.RUnlock()
	var cur uint32
	if r.seg != nil {
		cur = r.seg.id
	}
	i := sort.Search(len(segs), func(i int) bool { return segs[i].id > cur })
	if i == len(segs) {
		if r.seg != nil && r.seg.sealed.Load() && r.next <= hwm {
			// Durable seqs past the last segment are in no file (lost at
			// the log's end, and known to be): the reader is past them.
			r.reportLost(r.next, hwm, "missing from the end of the log")
			r.next = hwm + 1
		}
		return false
	}
	s := segs[i]
	if s.baseSeq > r.next {
		r.reportLost(r.next, s.baseSeq-1, "gap between segments")
		r.next = s.baseSeq
	}
	if err := r.open(s, segmentHeaderLen, s.baseSeq); err != nil {
		r.e.log.Error("cannot open next segment", "segment", s.id, "err", err)
		return false
	}
	return true
}

// skipCorrupt steps over a frame of a sealed segment that failed its
// checks: reading resumes at the next valid frame of the segment, and the
// seqs between are reported lost; with none, the rest of the segment is.
func (r *Reader) skipCorrupt(cause error) {
	first, last := r.sc.seq, r.seg.lastSeq.Load()
	ok, err := r.sc.resync(first, last)
	if err != nil {
		r.e.log.Error("cannot look past a damaged frame", "segment", r.seg.id, "offset", r.sc.off, "err", err)
	}
	if ok {
		r.reportLost(first, r.sc.seq-1, cause.Error())
		r.next = max(r.next, r.sc.seq)
		return
	}
	r.reportLost(first, last, cause.Error())
	r.next = last + 1
	if !r.nextSegment() {
		r.sc.off, r.sc.pos, r.sc.end = r.sc.limit, 0, 0
	}
}

func (r *Reader) reportLost(first, last uint64, why string) {
	r.e.recordLost(first, last, why)
}

// Close releases the reader's file.
func (r *Reader) Close() error {
	if r.f != nil {
		err := r.f.Close()
		r.f = nil
		return err
	}
	return nil
}

// readFrame reads the frame at off in segment s into a fresh buffer.
func (e *Engine) readFrame(s *segment, off int64) (Record, error) {
	rec, _, err := e.readRawFrame(s, off)
	return rec, err
}

// readRawFrame is readFrame that also returns the frame's bytes, which the
// record aliases.
func (e *Engine) readRawFrame(s *segment, off int64) (Record, []byte, error) {
	if off < segmentHeaderLen || off >= s.size.Load() {
		return Record{}, nil, fmt.Errorf("offset %d outside segment %d: %w", off, s.id, ErrNotFound)
	}
	f, err := e.fs.Open(e.fs.PathJoin(e.logDir, segmentFileName(s.id)))
	if err != nil {
		return Record{}, nil, fmt.Errorf("cannot open segment %d: %w", s.id, err)
	}
	defer f.Close()
	var hdr [frameHeaderLen]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return Record{}, nil, fmt.Errorf("cannot read frame at %d:%d: %w", s.id, off, err)
	}
	n := frameHeaderLen + int(binary.LittleEndian.Uint32(hdr[:]))
	if n > e.opts.RecordBytesMax || off+int64(n) > s.size.Load() {
		return Record{}, nil, fmt.Errorf("frame at %d:%d of %d bytes: %w", s.id, off, n, ErrCorrupt)
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return Record{}, nil, fmt.Errorf("cannot read frame at %d:%d: %w", s.id, off, err)
	}
	rec, _, err := decodeFrame(buf, e.opts.RecordBytesMax)
	if err != nil {
		return Record{}, nil, fmt.Errorf("frame at %d:%d: %w", s.id, off, err)
	}
	rec.Pos = makePos(s.id, off)
	return rec, buf, nil
}

// Read returns the record with sequence number seq, found at pos (from the
// record's entry) or, when its segment is gone, in the straggler store. The
// record's slices are the caller's.
func (e *Engine) Read(seq uint64, pos Pos) (Record, error) {
	e.segMu.RLock()
	s := findSegment(e.segments, pos.Segment())
	e.segMu.RUnlock()
	if s != nil {
		rec, err := e.readFrame(s, pos.Offset())
		if err == nil && rec.Seq != seq {
			err = fmt.Errorf("frame at %s has seq %d, want %d: %w", pos, rec.Seq, seq, ErrCorrupt)
		}
		if err != nil {
			e.segMu.RLock()
			gone := findSegment(e.segments, pos.Segment()) == nil
			e.segMu.RUnlock()
			if gone { // reclaimed meanwhile (its file maybe reused): the straggler store has it
				return e.Read(seq, pos)
			}
			if errors.Is(err, ErrCorrupt) {
				e.recordLost(seq, seq, err.Error())
			}
			return Record{}, err
		}
		return rec, nil
	}
	v, closer, err := e.db.Get(stragglerKey(seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return Record{}, fmt.Errorf("cannot read record %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return Record{}, fmt.Errorf("cannot read record %d: %w", seq, err)
	}
	buf := append([]byte(nil), v...)
	closer.Close()
	rec, _, err := decodeFrame(buf, e.opts.RecordBytesMax)
	if err != nil {
		return Record{}, fmt.Errorf("straggler %d: %w", seq, err)
	}
	if rec.Seq != seq {
		return Record{}, fmt.Errorf("straggler has seq %d, want %d: %w", rec.Seq, seq, ErrCorrupt)
	}
	rec.Pos = pos
	return rec, nil
}
