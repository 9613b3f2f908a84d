package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Open opens or creates the engine in opts.Dir and recovers it: a torn tail
// of the active segment is cut at the first bad frame, files the manifest
// does not name are removed, the dedup index is brought up to the log's end,
// and cursors and exception counts are loaded from the index.
func Open(opts Options) (*Engine, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fs := o.FS
	logDir, idxDir := fs.PathJoin(o.Dir, "log"), fs.PathJoin(o.Dir, "index")
	dedupDir := fs.PathJoin(o.Dir, "dedup")
	// Index versions 1 and 2 built dedup tables here before ingesting them.
	if err := fs.RemoveAll(fs.PathJoin(o.Dir, "index-stage")); err != nil {
		return nil, fmt.Errorf("cannot remove the old index-stage directory: %w", err)
	}
	for _, d := range []string{o.Dir, logDir, idxDir, dedupDir} {
		if err := mkdirAllSynced(fs, d); err != nil {
			return nil, err
		}
	}
	disk := newDiskWatch(&o) // the reserve goes first on a full disk: Pebble writes as it opens
	if err := disk.open(idxDir); err != nil {
		return nil, err
	}
	cache := pebble.NewCache(o.IndexCacheBytes)
	defer cache.Unref()
	popts := &pebble.Options{
		FS:           disk.indexFS(fs),
		Cache:        cache,
		MemTableSize: o.IndexMemTableBytes,
		Logger:       pebbleLogger{o.Logger},
	}
	db, err := pebble.Open(idxDir, popts)
	if err != nil {
		return nil, fmt.Errorf("cannot open index %s: %w", idxDir, err)
	}
	e := &Engine{
		opts:        o,
		fs:          fs,
		log:         o.Logger,
		db:          db,
		logDir:      logDir,
		notifyCh:    make(chan struct{}),
		qSignal:     make(chan struct{}, 1),
		syncCh:      make(chan *syncJob),
		syncDone:    make(chan *syncJob, 1),
		spareWanted: make(chan struct{}, 1),
		consumers:   make(map[string]*Consumer),
		closing:     make(chan struct{}),
		disk:        disk,
		nextID:      1,
		nextSeq:     1,
	}
	e.dedup = newDedup(db, &o, dedupDir)
	if err := e.recover(); err != nil {
		e.dedup.close() // replay may have started a background batch
		db.Close()
		return nil, err
	}
	e.wg.Add(5)
	go e.commitLoop()
	go e.syncLoop()
	go e.reclaimLoop()
	go e.spareLoop()
	go e.diskLoop()
	return e, nil
}

// mkdirAllSynced creates dir and its missing parents, syncing each parent
// after creating a directory in it: without that the new directory entries
// (and so every file below them) may be gone after a crash.
func mkdirAllSynced(fs vfs.FS, dir string) error {
	if _, err := fs.Stat(dir); err == nil {
		return nil
	}
	parent := fs.PathDir(dir)
	if parent != dir && parent != "" {
		if err := mkdirAllSynced(fs, parent); err != nil {
			return err
		}
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", dir, err)
	}
	if parent == dir || parent == "" {
		return nil
	}
	return syncDir(fs, parent)
}

func (e *Engine) recover() error {
	if err := e.checkVersion(); err != nil {
		return err
	}
	if err := e.loadManifest(); err != nil {
		return err
	}
	if err := e.removeStrayFiles(); err != nil {
		return err
	}
	if n := len(e.segments); n > 0 {
		last := e.segments[n-1]
		if !last.sealed.Load() {
			if err := e.scanTail(last); err != nil {
				return err
			}
		}
		e.nextSeq = last.lastSeq.Load() + 1
		e.active = last
	}
	if err := e.checkLogEnd(); err != nil {
		return err
	}
	e.hwm.Store(e.nextSeq - 1)
	if err := e.recoverDedup(); err != nil {
		return err
	}
	// Always start a fresh active segment: the recovered one is sealed at
	// its valid length, so nothing is ever written after a torn tail. (On
	// a full disk the engine opens broken instead: diskfull.go.)
	if err := e.startSegment(); err != nil {
		return fmt.Errorf("cannot start a segment: %w", err)
	}
	if err := e.loadConsumers(); err != nil {
		return err
	}
	e.refreshDiskUsage()
	return nil
}

// checkLogEnd compares the recovered end of the log with the dedup
// checkpoint, which each group commits after its fsync: seqs up to it were
// acknowledged. A log ending before it lost acknowledged records (damage in
// the active segment, a deleted file), not a torn tail: they are reported,
// and their seqs are never given to new records.
func (e *Engine) checkLogEnd() error {
	v, closer, err := e.db.Get(keyDedupCkpt)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot read dedup checkpoint: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return nil
	}
	if ckpt := binary.BigEndian.Uint64(v); ckpt >= e.nextSeq {
		e.stats.lostRecords.Add(ckpt - e.nextSeq + 1)
		e.log.Error("log ends before acknowledged records; they are lost", "first_seq", e.nextSeq, "last_seq", ckpt)
		e.nextSeq = ckpt + 1
	}
	return nil
}

// checkVersion writes the index version into a new index and migrates an
// older one.
func (e *Engine) checkVersion() error {
	var version [4]byte
	binary.BigEndian.PutUint32(version[:], indexVersion)
	v, closer, err := e.db.Get(keyVersion)
	if errors.Is(err, pebble.ErrNotFound) {
		if err := e.db.Set(keyVersion, version[:], pebble.Sync); err != nil {
			return fmt.Errorf("cannot write index version: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot read index version: %w", err)
	}
	ok := len(v) == 4
	var got uint32
	if ok {
		got = binary.BigEndian.Uint32(v)
	}
	raw := fmt.Sprintf("%x", v)
	closer.Close()
	switch {
	case ok && got == indexVersion:
		return nil
	case ok && (got == 1 || got == 2):
		// Versions 1 and 2 kept the dedup keys in Pebble (keyed by source
		// and messageId, then by generation and hash). Drop them and the
		// checkpoint in one synced batch: recovery then rebuilds the index
		// from every retained segment (recoverDedup replays the log past
		// the checkpoint), as dedup runs.
		b := e.db.NewBatch()
		defer b.Close()
		if err := b.DeleteRange([]byte{prefixDedup}, []byte{prefixDedup + 1}, nil); err != nil {
			return fmt.Errorf("cannot migrate index: %w", err)
		}
		if err := b.Delete(keyDedupCkpt, nil); err != nil {
			return fmt.Errorf("cannot migrate index: %w", err)
		}
		if err := b.Set(keyVersion, version[:], nil); err != nil {
			return fmt.Errorf("cannot migrate index: %w", err)
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("cannot migrate index: %w", err)
		}
		e.log.Info("index migrated; the dedup index is rebuilt from the log", "from_version", got, "to_version", indexVersion)
		return nil
	}
	return fmt.Errorf("index version %s, want %d: %w", raw, indexVersion, ErrCorrupt)
}

func (e *Engine) loadManifest() error {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixSegment}, UpperBound: []byte{prefixSegment + 1}})
	if err != nil {
		return fmt.Errorf("cannot read manifest: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != 5 {
			return fmt.Errorf("manifest key %x: %w", it.Key(), ErrCorrupt)
		}
		id := binary.BigEndian.Uint32(it.Key()[1:])
		s, err := decodeManifest(id, it.Value())
		if err != nil {
			return err
		}
		if n := len(e.segments); n > 0 && !e.segments[n-1].sealed.Load() {
			return fmt.Errorf("segment %d follows unsealed segment %d: %w", id, e.segments[n-1].id, ErrCorrupt)
		}
		e.segments = append(e.segments, s)
		e.nextID = id + 1
	}
	return it.Error()
}

// removeStrayFiles deletes segment files the manifest does not name (a
// crash during creation or deletion) and drops manifest entries whose file
// is gone, reporting the records lost with them.
func (e *Engine) removeStrayFiles() error {
	names, err := e.fs.List(e.logDir)
	if err != nil {
		return fmt.Errorf("cannot list %s: %w", e.logDir, err)
	}
	onDisk := make(map[uint32]bool)
	for _, name := range names {
		id, ok := parseSegmentFileName(name)
		if !ok {
			continue
		}
		if !slices.ContainsFunc(e.segments, func(s *segment) bool { return s.id == id }) {
			if err := e.fs.Remove(e.fs.PathJoin(e.logDir, name)); err != nil {
				return fmt.Errorf("cannot remove stray segment %s: %w", name, err)
			}
			e.nextID = max(e.nextID, id+1)
			continue
		}
		onDisk[id] = true
	}
	kept := e.segments[:0]
	for _, s := range e.segments {
		if onDisk[s.id] {
			kept = append(kept, s)
			continue
		}
		lost := s.records()
		e.stats.lostRecords.Add(lost)
		e.log.Error("segment file missing; its records are lost", "segment", s.id, "first_seq", s.baseSeq, "records", lost)
		if err := e.db.Delete(segmentKey(s.id), pebble.Sync); err != nil {
			return fmt.Errorf("cannot drop missing segment %d: %w", s.id, err)
		}
	}
	e.segments = kept
	return nil
}

// scanTail validates the active segment frame by frame and sets its size and
// last seq to the valid prefix.
func (e *Engine) scanTail(s *segment) error {
	f, err := e.fs.Open(e.fs.PathJoin(e.logDir, segmentFileName(s.id)))
	if err != nil {
		return fmt.Errorf("cannot open segment %d: %w", s.id, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cannot stat segment %d: %w", s.id, err)
	}
	s.size.Store(segmentHeaderLen)
	s.lastSeq.Store(s.baseSeq - 1)
	hdr := make([]byte, segmentHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cannot read segment %d header: %w", s.id, err)
	}
	h, herr := decodeSegmentHeader(hdr)
	switch {
	case herr == nil && h.id == s.id && h.baseSeq == s.baseSeq:
	case st.Size() < segmentHeaderLen || herr == nil && h.id < s.id:
		// A spare file (spare.go) whose header, written with the first
		// group, was not synced: no record of it was acknowledged, and
		// what it holds is an older segment's, or unacknowledged.
		e.log.Info("active segment was never synced; it is empty", "segment", s.id)
		return nil
	case !slices.ContainsFunc(hdr, func(b byte) bool { return b != 0 }):
		// Zeros: the header's write never reached the disk, and a crash
		// kept the file's length from later unsynced writes (the crash
		// tests' MemFS does this). Nothing synced after it is lost, but
		// the frames are scanned all the same.
		e.log.Warn("active segment header never written; scanning its frames anyway", "segment", s.id)
	default:
		// The header is synced before any of the segment's records are
		// acknowledged: it was damaged since. Its frames may still hold
		// acknowledged records, and they check themselves (checksum, and
		// seqs from the manifest's baseSeq), so scan them anyway.
		e.log.Error("active segment header invalid; scanning its frames anyway", "segment", s.id, "header_id", h.id, "header_base_seq", h.baseSeq, "err", herr)
	}
	// In a recycled file, an older segment's bytes follow what this one
	// wrote.
	recycled := herr == nil && h.flags&headerRecycled != 0
	sc := newFrameScanner(f, s.baseSeq, segmentHeaderLen, st.Size(), e.opts.RecordBytesMax)
	for {
		rec, err := sc.next(true)
		if err == io.EOF {
			break
		}
		if err != nil && recycled {
			if rec.Seq > 0 && rec.Seq < s.baseSeq {
				// A whole frame of the file's previous segment: the end
				// of what this one wrote.
				e.log.Debug("active segment ends where its recycled file's older frames start", "segment", s.id, "offset", sc.off)
			} else {
				// Usually the middle of an older frame; an unacknowledged
				// torn write looks the same (and damage too: the dedup
				// checkpoint's check in checkLogEnd still reports records
				// lost before it). Not counted in TruncatedBytes: the
				// older bytes are not a tail.
				e.log.Info("active segment recovered; the rest of its recycled file is older data or an unacknowledged write", "segment", s.id, "offset", sc.off, "err", err)
			}
			break
		}
		if err != nil {
			cut := st.Size() - sc.off
			e.stats.truncatedBytes.Add(uint64(cut))
			e.log.Warn("truncating torn tail of active segment", "segment", s.id, "offset", sc.off, "bytes", cut, "err", err)
			break
		}
	}
	s.size.Store(sc.off)
	s.lastSeq.Store(sc.seq - 1)
	return nil
}

// recoverDedup loads the dedup index and replays the log past its
// checkpoint.
func (e *Engine) recoverDedup() error {
	now := e.opts.Now()
	if err := e.dedup.load(now); err != nil {
		return err
	}
	from := e.dedup.ckpt + 1
	if len(e.segments) > 0 {
		from = max(from, e.segments[0].baseSeq)
	}
	if from > e.hwm.Load() {
		return nil
	}
	r, err := e.NewReader(from, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	var recs []Record
	for {
		if err := e.dedup.poll(); err != nil {
			return err
		}
		recs, err = r.Next(recs[:0], 4096)
		if err != nil {
			return fmt.Errorf("cannot replay log for dedup: %w", err)
		}
		if len(recs) == 0 {
			return nil
		}
		for i := range recs {
			e.dedup.replay(&recs[i], now)
		}
		if err := e.dedup.commitThrough(e.dedup.mark(), recs[len(recs)-1].Seq, now); err != nil {
			return err
		}
	}
}

// pebbleLogger sends Pebble's messages to slog: info as debug, so a healthy
// engine is quiet.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}
