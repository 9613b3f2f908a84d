package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

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
	if _, err := fs.Stat(idxDir); err != nil && hasSegmentFiles(fs, logDir) {
		return nil, fmt.Errorf("the log holds segment files but the index folder %s is missing (%v): %w; nothing was changed: run `sluice recover` to rebuild the index from the segment files", idxDir, err, ErrIndexDamaged)
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
		// Another process holding it is the usual cause besides damage.
		return nil, fmt.Errorf("cannot open index %s: %w (if another sluice is not running on this data_dir, the index is damaged: run `sluice recover` to rebuild it from the segment files)", idxDir, err)
	}
	e := &Engine{
		opts:          o,
		fs:            fs,
		log:           o.Logger,
		db:            db,
		logDir:        logDir,
		notifyCh:      make(chan struct{}),
		qSignal:       make(chan struct{}, 1),
		syncCh:        make(chan *syncJob),
		syncDone:      make(chan *syncJob, 1),
		spareWanted:   make(chan struct{}, 1),
		rebuildWanted: make(chan struct{}, 1),
		consumers:     make(map[string]*Consumer),
		closing:       make(chan struct{}),
		disk:          disk,
		nextID:        1,
		nextSeq:       1,
	}
	e.dedup = newDedup(db, &o, dedupDir)
	e.dedup.onDamage = e.wantDedupRebuild
	if err := e.recover(); err != nil {
		e.dedup.close() // replay may have started a background batch
		db.Close()
		return nil, err
	}
	e.wg.Add(6)
	go e.dedupRebuildLoop()
	go e.commitLoop()
	go e.syncLoop()
	go e.reclaimLoop()
	go e.spareLoop()
	go e.diskLoop()
	return e, nil
}

// hasSegmentFiles reports whether dir holds a segment file.
func hasSegmentFiles(fs vfs.FS, dir string) bool {
	names, err := fs.List(dir)
	if err != nil {
		return false
	}
	for _, n := range names {
		if _, ok := parseSegmentFileName(n); ok {
			return true
		}
	}
	return false
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
	if err := e.loadLost(); err != nil {
		return err
	}
	witness, err := e.ackWitness()
	if err != nil {
		return err
	}
	if err := e.reconcileFiles(witness); err != nil {
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
	if err := e.requeueRestored(); err != nil {
		return err
	}
	e.refreshDiskUsage()
	return nil
}

// requeueRestored makes the stragglers dropMissing restored pending again
// for each consumer whose cursor is older than the log: the index lost its
// newest writes, so it cannot tell which of them the consumer delivered
// since. They are delivered again (at least once), never skipped.
func (e *Engine) requeueRestored() error {
	if len(e.restored) == 0 {
		return nil
	}
	e.segMu.RLock()
	first := e.nextSeq // no segment: opened on a full disk (diskfull.go)
	if len(e.segments) > 0 {
		first = e.segments[0].baseSeq
	}
	e.segMu.RUnlock()
	now := e.opts.Now().UnixNano()
	for _, c := range e.Consumers() {
		if err := requeueStragglers(c, e.restored, first, now); err != nil {
			return err
		}
	}
	e.restored = nil
	return nil
}

// checkVersion writes the index version into a new index and migrates an
// older one.
func (e *Engine) checkVersion() error {
	var version [4]byte
	binary.BigEndian.PutUint32(version[:], indexVersion)
	v, closer, err := e.db.Get(keyVersion)
	if errors.Is(err, pebble.ErrNotFound) {
		if hasSegmentFiles(e.fs, e.logDir) {
			return fmt.Errorf("the log holds segment files but the index is empty (its WAL lost?): %w; run `sluice recover` to rebuild the index from the segment files", ErrIndexDamaged)
		}
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

// recoverDedup loads the dedup index and replays the log past its
// checkpoint.
func (e *Engine) recoverDedup() error {
	now := e.opts.Now()
	if err := e.dedup.load(now); err != nil {
		return err
	}
	ckpt := e.dedup.ckpt
	// Runs that load found damaged: their generations' keys come back from
	// the whole retained log, the rest from past the checkpoint.
	damaged := e.dedup.takeDamaged()
	from := ckpt + 1
	if len(damaged) > 0 {
		from = 1
		e.log.Warn("rebuilding the keys of damaged dedup runs from the retained log", "generations", len(damaged))
	}
	if len(e.segments) > 0 {
		from = max(from, e.segments[0].baseSeq)
	}
	// Every record through hwm has its key in a run or replayed: the keys
	// are indexed through it once those are written, even where the last
	// records carried no key (the checkpoint moves only with keys).
	if from > e.hwm.Load() {
		return e.dedup.commitThrough(e.dedup.mark(), e.hwm.Load(), now)
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
			return e.dedup.commitThrough(e.dedup.mark(), e.hwm.Load(), now)
		}
		for i := range recs {
			if recs[i].Seq > ckpt {
				e.dedup.replay(&recs[i], now)
			} else if len(damaged) > 0 {
				e.dedup.replayIn(&recs[i], now, damaged)
			}
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
	p.l.Debug(fmt.Sprintf(format, args...), "lib", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "lib", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "lib", "pebble")
	panic(fmt.Sprintf(format, args...))
}
