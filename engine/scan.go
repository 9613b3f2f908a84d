package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// piece is a run of consecutive valid frames in a segment file.
type piece struct {
	first, last uint64 // seqs
	start, end  int64  // offsets: the first frame's, and past the last one
}

// fileScan is what a segment file holds, read frame by frame with
// resynchronisation past damage.
type fileScan struct {
	pieces []piece
	// acked is the highest seq proved acknowledged by a group-start frame
	// in the file (that frame's seq minus one); 0 when none.
	acked uint64
	size  int64
	// damagedSeq is the seq of a whole frame where the scan stopped (its
	// length fits the file, its seq field is the one expected) whose
	// checksum failed: a damaged record rather than a short torn write,
	// though a torn write can look the same. 0 when none.
	damagedSeq uint64
}

// scanPiecesMax bounds the pieces kept per file: a file damaged in more
// places than this is read up to there.
const scanPiecesMax = 1 << 12

// scanFile reads the frames of the segment file at path from the header on,
// expecting firstSeq first (0: unknown) and taking none past lastSeq. Past a bad frame
// it looks for the next valid one with a greater seq (frameScanner.resync);
// bytes that hold none are the end. An older segment's frames (a recycled
// file) have smaller seqs and are never taken.
func scanFile(fs vfs.FS, path string, firstSeq, lastSeq uint64, maxFrame int) (fileScan, error) {
	f, err := fs.Open(path)
	if err != nil {
		return fileScan{}, fmt.Errorf("cannot open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fileScan{}, fmt.Errorf("cannot stat %s: %w", path, err)
	}
	fsc := fileScan{size: st.Size()}
	if fsc.size <= segmentHeaderLen {
		return fsc, nil
	}
	sc := newFrameScanner(f, firstSeq, segmentHeaderLen, fsc.size, maxFrame)
	var cur *piece
	for {
		off := sc.off
		rec, err := sc.next(true)
		if err == nil && rec.Seq > lastSeq {
			return fsc, nil
		}
		if err == nil {
			if cur == nil {
				fsc.pieces = append(fsc.pieces, piece{first: rec.Seq, start: off})
				cur = &fsc.pieces[len(fsc.pieces)-1]
			}
			cur.last, cur.end = rec.Seq, sc.off
			if rec.groupStart && rec.Seq > 0 {
				fsc.acked = max(fsc.acked, rec.Seq-1)
			}
			continue
		}
		if err == io.EOF {
			return fsc, nil
		}
		if !errors.Is(err, ErrCorrupt) {
			return fsc, fmt.Errorf("cannot scan %s: %w", path, err)
		}
		cur = nil
		if len(fsc.pieces) >= scanPiecesMax {
			return fsc, nil
		}
		// Any later frame's seq is at most one per smallest frame on,
		// once a frame has shown where the file's seqs are.
		maxSeq := lastSeq
		if firstSeq > 0 || len(fsc.pieces) > 0 {
			maxSeq = min(lastSeq, sc.seq+uint64(fsc.size-off)/frameLenMin+1)
		}
		expect := sc.seq
		ok, err := sc.resync(sc.seq, maxSeq)
		if err != nil {
			return fsc, fmt.Errorf("cannot scan %s: %w", path, err)
		}
		if !ok {
			if wholeFrameAt(f, off, fsc.size, expect, maxFrame) {
				fsc.damagedSeq = expect
			}
			return fsc, nil
		}
	}
}

// tailCut is the decision recovery takes for the active segment.
type tailCut struct {
	lastSeq uint64 // last record kept (baseSeq-1 when none)
	size    int64  // bytes kept, header included
	nextSeq uint64 // the next seq to give: past lastSeq and past acked
	lost    []SeqRange
}

// cutTail decides what of the active segment's scan to keep, given acked,
// the highest seq known acknowledged (from the scan's group-start frames
// and witnesses in the index). A gap in the frames that ends at or below
// acked lost acknowledged records: they are reported and the frames after
// it kept. The first gap that reaches past acked is a torn write: no
// record from there on was acknowledged (a group-start frame after it
// would have raised acked past it), so the segment ends before it.
// Acknowledged seqs the file no longer holds at all are lost, and never
// given again.
func cutTail(fsc fileScan, baseSeq, acked uint64) tailCut {
	t := tailCut{lastSeq: baseSeq - 1, size: segmentHeaderLen}
	expect := baseSeq
	for _, p := range fsc.pieces {
		if p.first > expect {
			if p.first-1 > acked {
				break
			}
			t.lost = append(t.lost, SeqRange{expect, p.first - 1})
		}
		t.lastSeq, t.size, expect = p.last, p.end, p.last+1
	}
	if acked >= expect {
		t.lost = append(t.lost, SeqRange{expect, acked})
		expect = acked + 1
	}
	t.nextSeq = expect
	return t
}

// wholeFrameAt reports whether f holds at off a frame header for seq whose
// length is plausible and whose body fits before size.
func wholeFrameAt(f vfs.File, off, size int64, seq uint64, maxFrame int) bool {
	var hdr [frameHeaderLen]byte
	if seq == 0 || off+frameHeaderLen > size {
		return false
	}
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return false
	}
	bodyLen := int64(binary.LittleEndian.Uint32(hdr[:]))
	return bodyLen >= frameLenMin-frameHeaderLen && frameHeaderLen+bodyLen <= int64(maxFrame) &&
		off+frameHeaderLen+bodyLen <= size && binary.LittleEndian.Uint64(hdr[8:])&^frameGroupStart == seq
}
