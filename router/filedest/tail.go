package filedest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"

	"github.com/klauspost/compress/zstd"
)

// A crash in the middle of a Send leaves a torn line or frame at the end
// of the active file, never acknowledged; the next process must not append
// after it. wholeLength finds where the file's whole lines (whole zstd
// frames) end, for open to cut it there.

// wholeLength returns the length of the longest prefix of f's size bytes
// made of whole lines, or of whole zstd frames whose last one decodes.
func wholeLength(f AppendFile, size int64, compressed bool, dec *zstd.Decoder) (int64, error) {
	if compressed {
		return wholeFrames(f, size, dec)
	}
	return wholeLines(f, size)
}

// wholeLines is the length up to the last newline.
func wholeLines(f AppendFile, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

const (
	zstdMagic          = 0xFD2FB528
	zstdSkippableMagic = 0x184D2A50 // the low 4 bits vary
)

// wholeFrames walks the zstd frames by their headers (RFC 8878, 3.1) and
// returns where the last whole one ends, after checking that it decodes: a
// crash can leave only the last frame unsynced.
func wholeFrames(f AppendFile, size int64, dec *zstd.Decoder) (int64, error) {
	var good, last int64 // end of the whole frames; start of the last one
	for good < size {
		end, ok, err := frameEnd(f, good, size)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		last, good = good, end
	}
	if good == 0 {
		return 0, nil
	}
	frame := make([]byte, good-last)
	if _, err := f.ReadAt(frame, last); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	if _, err := dec.DecodeAll(frame, nil); err != nil {
		return last, nil
	}
	return good, nil
}

// frameEnd returns the end of the frame that starts at off, ok false when
// it is not a whole frame within size.
func frameEnd(f AppendFile, off, size int64) (int64, bool, error) {
	var h [18]byte // magic, descriptor, window, dictionary id, content size
	n, err := f.ReadAt(h[:min(int64(len(h)), size-off)], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, false, err
	}
	if n < 8 {
		return 0, false, nil
	}
	magic := binary.LittleEndian.Uint32(h[:])
	if magic&^0xF == zstdSkippableMagic {
		end := off + 8 + int64(binary.LittleEndian.Uint32(h[4:]))
		return end, end <= size, nil
	}
	if magic != zstdMagic {
		return 0, false, nil
	}
	fhd := h[4]
	single := fhd&0x20 != 0
	hlen := int64(5) + []int64{0, 1, 2, 4}[fhd&3] + []int64{0, 2, 4, 8}[fhd>>6]
	if !single {
		hlen++ // window descriptor
	} else if fhd>>6 == 0 {
		hlen++ // a one-byte content size
	}
	checksum := fhd&0x04 != 0
	pos := off + hlen
	for {
		var bh [3]byte
		if pos+3 > size {
			return 0, false, nil
		}
		if _, err := f.ReadAt(bh[:], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, false, err
		}
		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		lastBlock, typ, bsize := v&1 != 0, (v>>1)&3, int64(v>>3)
		switch typ {
		case 1: // RLE: one byte stands for bsize
			bsize = 1
		case 3:
			return 0, false, nil
		}
		pos += 3 + bsize
		if pos > size {
			return 0, false, nil
		}
		if lastBlock {
			break
		}
	}
	if checksum {
		pos += 4
	}
	return pos, pos <= size, nil
}
