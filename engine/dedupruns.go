package engine

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A dedup run is an immutable file of one generation's dedup hashes,
// sorted and unique, in fixed-width entries:
//
//	block*   up to 256 entries of lo u64 | hi u64 (big-endian), 4 KiB
//	footer   per block: its first entry (16 bytes) and its CRC-32C
//	trailer  footer CRC-32C u32 | gen u32 | entries u64 | magic u64
//
// The footer CRC covers the footer and the trailer's gen and entries. A
// lookup finds the one block that can hold a hash from the footer (kept in
// memory: 20 bytes per 256 keys), reads it and checks its CRC. Merging runs
// is a streaming merge of sorted arrays: tens of nanoseconds per key, where
// rewriting the same keys in Pebble's compactions cost over a microsecond.

const (
	runEntryBytes   = 16
	runBlockEntries = 256
	runBlockBytes   = runEntryBytes * runBlockEntries
	runFooterEntry  = runEntryBytes + 4
	runTrailerBytes = 24
	runMagic        = 0x736c6963652d6472 // "slice-dr"
	runFileSuffix   = ".run"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func runFileName(id uint64) string { return fmt.Sprintf("%016x%s", id, runFileSuffix) }

func parseRunFileName(name string) (uint64, bool) {
	var id uint64
	if len(name) != 16+len(runFileSuffix) || name[16:] != runFileSuffix {
		return 0, false
	}
	if _, err := fmt.Sscanf(name[:16], "%016x", &id); err != nil {
		return 0, false
	}
	return id, true
}

func putHash(b []byte, h hash128) {
	binary.BigEndian.PutUint64(b, h.lo)
	binary.BigEndian.PutUint64(b[8:], h.hi)
}

func getHash(b []byte) hash128 {
	return hash128{lo: binary.BigEndian.Uint64(b), hi: binary.BigEndian.Uint64(b[8:])}
}

func (h hash128) less(o hash128) bool { return h.lo < o.lo || h.lo == o.lo && h.hi < o.hi }

// runWriter writes a run: add the hashes in ascending order, then finish.
type runWriter struct {
	fs     vfs.FS
	path   string
	f      vfs.File
	w      *bufio.Writer
	gen    uint32
	n      int
	block  []byte // the block being filled
	footer []byte
	last   hash128
}

func newRunWriter(fs vfs.FS, path string, gen uint32) (*runWriter, error) {
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("cannot create dedup run: %w", err)
	}
	// Write back as it goes (sync_file_range every 512 KiB), as Pebble
	// does for its tables: one fsync of a whole merged run pushes
	// hundreds of megabytes to the disk at once, and the log's fdatasyncs
	// would wait behind them.
	f = vfs.NewSyncingFile(f, vfs.SyncingFileOptions{BytesPerSync: 512 << 10})
	return &runWriter{fs: fs, path: path, f: f, w: bufio.NewWriterSize(f, 256<<10), gen: gen,
		block: make([]byte, 0, runBlockBytes)}, nil
}

// add appends h, which must not sort before the last one added; a repeat
// of it is skipped (the same event replayed twice).
func (w *runWriter) add(h hash128) error {
	if w.n > 0 && !w.last.less(h) {
		if h == w.last {
			return nil
		}
		return fmt.Errorf("dedup run: hash %x added after %x", h, w.last)
	}
	w.last = h
	w.n++
	w.block = w.block[:len(w.block)+runEntryBytes]
	putHash(w.block[len(w.block)-runEntryBytes:], h)
	if len(w.block) == runBlockBytes {
		return w.endBlock()
	}
	return nil
}

func (w *runWriter) endBlock() error {
	w.footer = append(w.footer, w.block[:runEntryBytes]...)
	w.footer = binary.BigEndian.AppendUint32(w.footer, crc32.Checksum(w.block, castagnoli))
	_, err := w.w.Write(w.block)
	w.block = w.block[:0]
	return err
}

// finish writes the footer, syncs and closes the file; it returns the
// run's size in bytes. On error the file is removed.
func (w *runWriter) finish() (int64, error) {
	err := w.finishFile()
	if err != nil {
		w.abort()
		return 0, fmt.Errorf("cannot write dedup run %s: %w", w.path, err)
	}
	return int64(w.n)*runEntryBytes + int64(len(w.footer)) + runTrailerBytes, nil
}

func (w *runWriter) finishFile() error {
	if len(w.block) > 0 {
		if err := w.endBlock(); err != nil {
			return err
		}
	}
	var t [runTrailerBytes]byte
	binary.BigEndian.PutUint32(t[4:], w.gen)
	binary.BigEndian.PutUint64(t[8:], uint64(w.n))
	binary.BigEndian.PutUint64(t[16:], runMagic)
	crc := crc32.Update(crc32.Checksum(w.footer, castagnoli), castagnoli, t[4:16])
	binary.BigEndian.PutUint32(t[:4], crc)
	if _, err := w.w.Write(w.footer); err != nil {
		return err
	}
	if _, err := w.w.Write(t[:]); err != nil {
		return err
	}
	if err := w.w.Flush(); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// abort closes and removes an unfinished run.
func (w *runWriter) abort() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	w.fs.Remove(w.path) // a leftover is a stray file: Open removes it
}

// run is an open dedup run. Lookups (contains) belong to the committer;
// scans may run concurrently with them, each with its own buffer.
type run struct {
	id     uint64
	gen    uint32
	n      int
	size   int64
	path   string
	f      vfs.File
	fences []hash128 // each block's first hash
	crcs   []uint32

	// For contains: the blocks mapped into memory, and which of them had
	// their CRC checked (once per block); without a mapping, a buffer
	// for ReadAt.
	blocks   []byte
	verified []uint64
	buf      []byte
}

// openRun opens a run file and reads its footer.
func openRun(fs vfs.FS, path string, id uint64) (*run, error) {
	f, err := fs.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot open dedup run: %w", err)
	}
	r, err := readRunFooter(f, path, id)
	if err != nil {
		f.Close()
		return nil, err
	}
	if r.blocks, err = mapRunBlocks(f, r.n*runEntryBytes); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot map dedup run %s: %w", path, err)
	}
	if r.blocks == nil {
		r.buf = make([]byte, runBlockBytes)
	}
	r.verified = make([]uint64, (len(r.fences)+63)/64)
	return r, nil
}

func readRunFooter(f vfs.File, path string, id uint64) (*run, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat dedup run %s: %w", path, err)
	}
	size := st.Size()
	var t [runTrailerBytes]byte
	if size < runTrailerBytes {
		return nil, fmt.Errorf("dedup run %s: %d bytes: %w", path, size, ErrCorrupt)
	}
	if _, err := f.ReadAt(t[:], size-runTrailerBytes); err != nil {
		return nil, fmt.Errorf("cannot read dedup run %s: %w", path, err)
	}
	gen, n := binary.BigEndian.Uint32(t[4:]), binary.BigEndian.Uint64(t[8:])
	blocks := (n + runBlockEntries - 1) / runBlockEntries
	if binary.BigEndian.Uint64(t[16:]) != runMagic || n > uint64(size) ||
		uint64(size) != n*runEntryBytes+blocks*runFooterEntry+runTrailerBytes {
		return nil, fmt.Errorf("dedup run %s: bad trailer: %w", path, ErrCorrupt)
	}
	footer := make([]byte, blocks*runFooterEntry)
	if _, err := f.ReadAt(footer, int64(n*runEntryBytes)); err != nil {
		return nil, fmt.Errorf("cannot read dedup run %s: %w", path, err)
	}
	if crc32.Update(crc32.Checksum(footer, castagnoli), castagnoli, t[4:16]) != binary.BigEndian.Uint32(t[:4]) {
		return nil, fmt.Errorf("dedup run %s: footer checksum: %w", path, ErrCorrupt)
	}
	r := &run{id: id, gen: gen, n: int(n), size: size, path: path, f: f,
		fences: make([]hash128, blocks), crcs: make([]uint32, blocks)}
	for i := range r.fences {
		e := footer[i*runFooterEntry:]
		r.fences[i] = getHash(e)
		r.crcs[i] = binary.BigEndian.Uint32(e[runEntryBytes:])
		if i > 0 && !r.fences[i-1].less(r.fences[i]) {
			return nil, fmt.Errorf("dedup run %s: blocks out of order: %w", path, ErrCorrupt)
		}
	}
	return r, nil
}

// blockLen is the length in bytes of block i.
func (r *run) blockLen(i int) int {
	return min(runBlockEntries, r.n-i*runBlockEntries) * runEntryBytes
}

// readBlocks reads blocks [first, first+len(buf)/runBlockBytes), or to the
// end of the run, into buf and checks their CRCs. It returns the bytes read.
func (r *run) readBlocks(first int, buf []byte) ([]byte, error) {
	end := min(first+len(buf)/runBlockBytes, len(r.fences))
	n := 0
	for i := first; i < end; i++ {
		n += r.blockLen(i)
	}
	buf = buf[:n]
	if _, err := r.f.ReadAt(buf, int64(first)*runBlockBytes); err != nil {
		return nil, fmt.Errorf("cannot read dedup run %s: %w", r.path, err)
	}
	for i, off := first, 0; i < end; i++ {
		l := r.blockLen(i)
		if crc32.Checksum(buf[off:off+l], castagnoli) != r.crcs[i] {
			return nil, fmt.Errorf("dedup run %s: block %d checksum: %w", r.path, i, ErrCorrupt)
		}
		off += l
	}
	return buf, nil
}

// contains reports whether h is in the run.
func (r *run) contains(h hash128) (bool, error) {
	// The last block whose first hash is at most h.
	i, found := slices.BinarySearchFunc(r.fences, h, func(f, h hash128) int {
		if f.less(h) {
			return -1
		}
		if f == h {
			return 0
		}
		return 1
	})
	if found {
		return true, nil
	}
	if i == 0 {
		return false, nil
	}
	b, err := r.block(i - 1)
	if err != nil {
		return false, err
	}
	return blockContains(b, h, r.fences[i-1].lo, r.upperLo(i-1)), nil
}

// upperLo bounds the low halves in block i: the next block's first, or
// the largest value for the last block.
func (r *run) upperLo(i int) uint64 {
	if i+1 < len(r.fences) {
		return r.fences[i+1].lo
	}
	return ^uint64(0)
}

// blockContains reports whether block b, whose hashes' low halves lie in
// [first, upper], holds h. The hashes are uniform, so h's place is
// interpolated and the search walks from there: a couple of cache lines
// instead of the eight of a binary search.
func blockContains(b []byte, h hash128, first, upper uint64) bool {
	n := len(b) / runEntryBytes
	p := 0
	if upper > first && h.lo > first {
		p = min(int(float64(h.lo-first)/float64(upper-first)*float64(n)), n-1)
	}
	at := func(i int) hash128 { return getHash(b[i*runEntryBytes:]) }
	if at(p).less(h) {
		for p++; p < n && at(p).less(h); p++ {
		}
		return p < n && at(p) == h
	}
	for ; p > 0 && h.less(at(p)); p-- {
	}
	return at(p) == h
}

// block returns block i for a lookup: from the mapping, its CRC checked
// the first time, else read.
func (r *run) block(i int) ([]byte, error) {
	if r.blocks == nil {
		return r.readBlocks(i, r.buf)
	}
	b := r.blocks[i*runBlockBytes : i*runBlockBytes+r.blockLen(i)]
	if r.verified[i/64]&(1<<(i%64)) == 0 {
		if crc32.Checksum(b, castagnoli) != r.crcs[i] {
			return nil, fmt.Errorf("dedup run %s: block %d checksum: %w", r.path, i, ErrCorrupt)
		}
		r.verified[i/64] |= 1 << (i % 64)
	}
	return b, nil
}

func (r *run) close() error {
	err := unmapRunBlocks(r.blocks)
	r.blocks = nil
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// runScanner reads a run's hashes in order, many blocks per read.
type runScanner struct {
	r    *run
	next int    // next block to read
	buf  []byte // read buffer
	ents []byte // entries not yet returned
	h    hash128
	err  error
}

func newRunScanner(r *run, bufBytes int) *runScanner {
	return &runScanner{r: r, buf: make([]byte, max(bufBytes/runBlockBytes, 1)*runBlockBytes)}
}

// scan moves to the next hash; false at the end or on error (see err).
func (s *runScanner) scan() bool {
	if len(s.ents) == 0 {
		if s.err != nil || s.next >= len(s.r.fences) {
			return false
		}
		b, err := s.r.readBlocks(s.next, s.buf)
		if err != nil {
			s.err = err
			return false
		}
		s.next += len(s.buf) / runBlockBytes
		s.ents = b
	}
	s.h = getHash(s.ents)
	s.ents = s.ents[runEntryBytes:]
	return true
}

// errRunMergeStopped: the engine closed during a merge.
var errRunMergeStopped = errors.New("dedup run merge stopped")

// runDamagedError is a merge's error when an input failed its checksum:
// it names the input, which a retry would fail on again.
type runDamagedError struct {
	r   *run
	err error
}

func (e *runDamagedError) Error() string { return e.err.Error() }
func (e *runDamagedError) Unwrap() error { return e.err }

// scanError returns s's error, naming its run if the run is damaged.
func (s *runScanner) scanError() error {
	if errors.Is(s.err, ErrCorrupt) {
		return &runDamagedError{s.r, s.err}
	}
	return s.err
}

// mergeRuns writes the union of the runs' hashes to w. It stops early
// with errRunMergeStopped once stop is set; an input that fails its
// checksum ends it with a *runDamagedError.
func mergeRuns(w *runWriter, runs []*run, stop *atomic.Bool) error {
	scanners := make([]*runScanner, 0, len(runs))
	for _, r := range runs {
		s := newRunScanner(r, 256<<10)
		if s.scan() {
			scanners = append(scanners, s)
		} else if s.err != nil {
			return s.scanError()
		}
	}
	for n := 0; len(scanners) > 0; n++ {
		if n%(1<<16) == 0 && stop.Load() {
			return errRunMergeStopped
		}
		m := 0
		for i := 1; i < len(scanners); i++ {
			if scanners[i].h.less(scanners[m].h) {
				m = i
			}
		}
		if err := w.add(scanners[m].h); err != nil {
			return err
		}
		if !scanners[m].scan() {
			if scanners[m].err != nil {
				return scanners[m].scanError()
			}
			scanners = slices.Delete(scanners, m, m+1)
		}
	}
	return nil
}

// readAll calls fn with each of the run's hashes in order.
func (r *run) readAll(fn func(hash128)) error {
	s := newRunScanner(r, 256<<10)
	for s.scan() {
		fn(s.h)
	}
	return s.err
}
