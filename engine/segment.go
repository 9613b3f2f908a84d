package engine

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Segment file layout, frozen (format version 2 is written; version 1 has
// the same layout without the group-start flag, record.go):
//
//	+-----------------------------------------------------------+
//	| header: magic "SLUICESG" | version u32 | id u32 |          |
//	|         baseSeq u64 | flags u32 | crc u32 (32 bytes)       |
//	+-----------------------------------------------------------+
//	| frame seq=baseSeq | frame baseSeq+1 | ... (see record.go)  |
//	+-----------------------------------------------------------+
//
// A segment holds consecutive sequence numbers. Frames are appended in
// groups, each group written and then fsynced before any of it is
// acknowledged. The manifest in the index (key 0x02 id) records, for sealed
// segments, the last sequence number and the byte size: bytes past that size
// (a failed write) are ignored. The one unsealed segment is the active one;
// recovery scans it and truncates its tail at the first bad frame. Flags
// (0 in files of older versions, which called the field reserved):
// headerRecycled marks a file reused from a reclaimed segment (spare.go),
// where an older segment's bytes may follow the last frame written.
const (
	segmentHeaderLen = 32
	segmentMagic     = "SLUICESG"

	headerRecycled uint32 = 1
)

// segment is the in-memory view of one segment file.
type segment struct {
	id      uint32
	baseSeq uint64
	// lastSeq is the last durable record's seq (baseSeq-1 when empty), size
	// the durable byte count with header. Both grow only while the segment
	// is active and are published after the data is synced.
	lastSeq atomic.Uint64
	size    atomic.Int64
	sealed  atomic.Bool
	// recyclable: this process created the segment and no group failed in
	// it, so every frame past its durable size is an older segment's
	// (lower seqs). A failed group's frames may stay in the file with seqs
	// that later records get again; segments loaded at Open are not known
	// to be clean. Their files are removed, never reused (spare.go).
	recyclable atomic.Bool
	// headerDurable: the file's header is synced (a created file, or a
	// recycled one after its first group's fdatasync). Until the active
	// segment's is, reclaim keeps the newest sealed segment: without the
	// index, segment headers are the only record of where seqs stand.
	headerDurable atomic.Bool
}

func (s *segment) records() uint64 { return s.lastSeq.Load() + 1 - s.baseSeq }

func segmentFileName(id uint32) string { return fmt.Sprintf("%010d.seg", id) }

func parseSegmentFileName(name string) (uint32, bool) {
	var id uint32
	if len(name) != 14 || name[10:] != ".seg" {
		return 0, false
	}
	for _, c := range name[:10] {
		if c < '0' || c > '9' {
			return 0, false
		}
		id = id*10 + uint32(c-'0')
	}
	return id, true
}

func encodeSegmentHeader(id uint32, baseSeq uint64, flags uint32) []byte {
	h := make([]byte, segmentHeaderLen)
	copy(h, segmentMagic)
	binary.LittleEndian.PutUint32(h[8:], segmentVersion)
	binary.LittleEndian.PutUint32(h[12:], id)
	binary.LittleEndian.PutUint64(h[16:], baseSeq)
	binary.LittleEndian.PutUint32(h[24:], flags)
	binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], crcTable))
	return h
}

// segmentHeader is a decoded segment file header.
type segmentHeader struct {
	id      uint32
	baseSeq uint64
	flags   uint32
}

func decodeSegmentHeader(h []byte) (segmentHeader, error) {
	if len(h) < segmentHeaderLen || string(h[:8]) != segmentMagic {
		return segmentHeader{}, fmt.Errorf("segment header magic: %w", ErrCorrupt)
	}
	if crc32.Checksum(h[:28], crcTable) != binary.LittleEndian.Uint32(h[28:]) {
		return segmentHeader{}, fmt.Errorf("segment header checksum: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != segmentVersion && v != 1 {
		return segmentHeader{}, fmt.Errorf("segment format version %d, want %d: %w", v, segmentVersion, ErrCorrupt)
	}
	return segmentHeader{
		id:      binary.LittleEndian.Uint32(h[12:]),
		baseSeq: binary.LittleEndian.Uint64(h[16:]),
		flags:   binary.LittleEndian.Uint32(h[24:]),
	}, nil
}

// Manifest value layout: baseSeq u64 | lastSeq u64 | size u64 | sealed u8.
func encodeManifest(s *segment) []byte {
	v := make([]byte, 0, 25)
	v = binary.BigEndian.AppendUint64(v, s.baseSeq)
	v = binary.BigEndian.AppendUint64(v, s.lastSeq.Load())
	v = binary.BigEndian.AppendUint64(v, uint64(s.size.Load()))
	if s.sealed.Load() {
		return append(v, 1)
	}
	return append(v, 0)
}

func decodeManifest(id uint32, v []byte) (*segment, error) {
	if len(v) != 25 {
		return nil, fmt.Errorf("manifest of segment %d: %w", id, ErrCorrupt)
	}
	s := &segment{id: id, baseSeq: binary.BigEndian.Uint64(v)}
	s.lastSeq.Store(binary.BigEndian.Uint64(v[8:]))
	s.size.Store(int64(binary.BigEndian.Uint64(v[16:])))
	s.sealed.Store(v[24] == 1)
	return s, nil
}

// createSegmentFile creates the file with its header, syncs it and its
// directory, so the file exists after a crash before anything refers to it.
func createSegmentFile(fs vfs.FS, dir string, id uint32, baseSeq uint64) (vfs.File, error) {
	path := fs.PathJoin(dir, segmentFileName(id))
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("cannot create segment %s: %w", path, err)
	}
	if _, err := f.Write(encodeSegmentHeader(id, baseSeq, 0)); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot write segment header %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot sync segment %s: %w", path, err)
	}
	if err := syncDir(fs, dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("cannot open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot sync directory %s: %w", dir, err)
	}
	return nil
}
