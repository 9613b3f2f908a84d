package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// RecoverReport says what Recover found and did.
type RecoverReport struct {
	// IndexKept: the old index opened and was repaired in place (a copy of
	// it as found is in SavedIndex). Otherwise it was unreadable or gone,
	// moved to SavedIndex if present, and a new one built.
	IndexKept  bool
	SavedIndex string
	// Segments, FirstSeq and LastSeq describe the log as rebuilt.
	Segments          int
	FirstSeq, LastSeq uint64
	// Lost lists seqs known lost (the old index's lost set, if kept, and
	// damage found in the files).
	Lost []SeqRange
	// SetAside lists segment files moved to Dir/log/aside: records older
	// than a gap in the log, consumed and reclaimed (a crash while
	// deleting) or cut off from the rest; they are kept for inspection.
	SetAside []string
	// Consumers lists every consumer with its cursor after recovery.
	Consumers []RecoveredConsumer
	// EntriesKept counts the failed, skipped and aborted entries carried
	// over from a kept index; EntriesLost is -1 when the old index could
	// not be read: its entries' states (dead letter or failed, reasons,
	// attempts) are gone and how many is unknown, but not their events:
	// those still in the log are delivered again from the new cursors,
	// those of reclaimed segments from straggler files
	// (StragglersRequeued).
	EntriesKept, EntriesLost int64
	// StragglersRequeued counts events of reclaimed segments that entries
	// of the lost index still needed, found in straggler files and made
	// pending again for every new consumer.
	StragglersRequeued int
}

// RecoveredConsumer is one consumer after Recover.
type RecoveredConsumer struct {
	Name   string
	Cursor uint64
	// Created: the index did not know it; it starts at the oldest record
	// kept, so everything retained is delivered again (at least once).
	Created bool
}

// Recover rebuilds the index of opts.Dir from the segment files, for when
// Open refuses with ErrIndexDamaged or the index cannot be opened at all.
// The engine must not be running. A readable index is repaired in place:
// its manifest is rebuilt from the files, its cursors and entries kept
// (cursors are never moved forward), its dedup index dropped and rebuilt
// from the log. An unreadable or missing one is set aside and a new index
// built; consumers then start at the oldest retained record. names are the
// consumers (destinations) to make sure of: any the index does not know is
// created at the oldest retained record. Nothing holding records is deleted.
func Recover(opts Options, names []string) (RecoverReport, error) {
	var rep RecoverReport
	o, err := opts.withDefaults()
	if err != nil {
		return rep, err
	}
	fs := o.FS
	idxDir := fs.PathJoin(o.Dir, "index")
	stamp := o.Now().UTC().Format("20060102T150405")
	db, kept, saved, err := openForRecovery(o, idxDir, stamp)
	if err != nil {
		return rep, err
	}
	rep.IndexKept, rep.SavedIndex = kept, saved
	e := &Engine{opts: o, fs: fs, log: o.Logger, db: db, logDir: fs.PathJoin(o.Dir, "log"), nextID: 1, nextSeq: 1, rebuilding: true}
	stragglers, err := e.rebuildIndex(names, &rep)
	if err != nil {
		db.Close()
		return rep, err
	}
	if err := db.Close(); err != nil {
		return rep, fmt.Errorf("cannot close the rebuilt index: %w", err)
	}
	// A normal open finishes the work (dedup rebuilt from the log, a fresh
	// active segment) and checks the result.
	re, err := Open(opts)
	if err != nil {
		return rep, fmt.Errorf("cannot open the rebuilt index: %w", err)
	}
	if len(stragglers) > 0 {
		first := re.Stats().FirstSeq
		for _, c := range rep.Consumers {
			if !c.Created {
				continue
			}
			cons, err := re.Consumer(c.Name)
			if err == nil {
				err = requeueStragglers(cons, stragglers, first, o.Now().UnixNano())
			}
			if err != nil {
				re.Close()
				return rep, err
			}
		}
		rep.StragglersRequeued = len(stragglers)
	}
	st := re.Stats()
	rep.Segments, rep.FirstSeq, rep.LastSeq = st.Segments, st.FirstSeq, st.LastSeq
	rep.Lost = re.LostRanges()
	for _, c := range st.Consumers {
		i := slices.IndexFunc(rep.Consumers, func(rc RecoveredConsumer) bool { return rc.Name == c.Name })
		if i < 0 {
			rep.Consumers = append(rep.Consumers, RecoveredConsumer{Name: c.Name})
			i = len(rep.Consumers) - 1
		}
		rep.Consumers[i].Cursor = c.Cursor
	}
	if err := re.Close(); err != nil {
		return rep, fmt.Errorf("cannot close the recovered engine: %w", err)
	}
	return rep, nil
}

// openForRecovery opens the index to repair, after saving a copy of it, or,
// when it cannot be opened, moves it aside and creates a new one. It
// reports whether the old index was kept and where it was saved.
func openForRecovery(o Options, idxDir, stamp string) (*pebble.DB, bool, string, error) {
	fs := o.FS
	saved := fs.PathJoin(o.Dir, "index.damaged-"+stamp)
	popts := &pebble.Options{FS: fs, Logger: pebbleLogger{o.Logger}}
	_, statErr := fs.Stat(idxDir)
	if statErr == nil {
		if err := copyDir(fs, idxDir, saved); err != nil {
			return nil, false, "", fmt.Errorf("cannot save a copy of the index before repairing it: %w", err)
		}
		db, err := pebble.Open(idxDir, popts)
		if err == nil {
			if verr := checkIndexVersion(db); verr == nil {
				return db, true, saved, nil
			} else {
				o.Logger.Error("index unusable; building a new one", "err", verr)
			}
			db.Close()
		} else {
			o.Logger.Error("index cannot be opened; building a new one", "err", err)
		}
		if err := fs.RemoveAll(idxDir); err != nil {
			return nil, false, "", fmt.Errorf("cannot remove the damaged index (a copy is in %s): %w", saved, err)
		}
	} else {
		saved = ""
	}
	if err := mkdirAllSynced(fs, idxDir); err != nil {
		return nil, false, "", err
	}
	db, err := pebble.Open(idxDir, popts)
	if err != nil {
		return nil, false, "", fmt.Errorf("cannot create a new index: %w", err)
	}
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], indexVersion)
	if err := db.Set(keyVersion, v[:], pebble.Sync); err != nil {
		db.Close()
		return nil, false, "", fmt.Errorf("cannot write index version: %w", err)
	}
	return db, false, saved, nil
}

// checkIndexVersion accepts the versions Open can use or migrate.
func checkIndexVersion(db *pebble.DB) error {
	v, closer, err := db.Get(keyVersion)
	if err != nil {
		return fmt.Errorf("cannot read index version: %w", err)
	}
	defer closer.Close()
	if len(v) != 4 || binary.BigEndian.Uint32(v) < 1 || binary.BigEndian.Uint32(v) > indexVersion {
		return fmt.Errorf("index version %x: %w", v, ErrCorrupt)
	}
	return nil
}

// rebuildIndex replaces the manifest with what the segment files hold,
// drops the dedup checkpoint and run names (Open adopts every readable run
// file and replays the retained log) and makes sure of the consumers.
func (e *Engine) rebuildIndex(names []string, rep *RecoverReport) (map[uint64]Record, error) {
	if err := e.loadLost(); err != nil {
		e.log.Error("lost set in the index unreadable; its copy beside the segments is kept", "err", err)
		e.lost.ranges, _ = e.readLostFile()
	}
	cursors, entries, err := e.oldConsumers()
	if err != nil {
		return nil, err
	}
	rep.EntriesKept = entries
	if !rep.IndexKept {
		rep.EntriesLost = -1
	}
	witness, err := e.ackWitness()
	if err != nil {
		return nil, err
	}
	b := e.db.NewBatch()
	defer b.Close()
	for _, r := range [][2][]byte{
		{[]byte{prefixSegment}, []byte{prefixSegment + 1}},
		{[]byte{prefixDedup}, []byte{prefixDedupCkpt + 1}},
		{[]byte{prefixDedupRun}, []byte{prefixDedupRun + 1}},
	} {
		if err := b.DeleteRange(r[0], r[1], nil); err != nil {
			return nil, fmt.Errorf("cannot clear the old manifest: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("cannot clear the old manifest: %w", err)
	}
	files, floor, err := e.logFiles(rep)
	if err != nil {
		return nil, err
	}
	// Without the index's word, every record a file holds counts as
	// acknowledged: a gap before one is reported lost rather than taken
	// for a torn tail (at least once: a record never acknowledged is
	// delivered too, and the client's resend is a duplicate).
	for _, u := range files {
		witness = max(witness, u.lastSeq)
	}
	if len(files) == 0 && floor > 1 {
		// Records were here and were all reclaimed: the log goes on after
		// them, in a new empty segment.
		f, err := createSegmentFile(e.fs, e.logDir, e.nextFreeID(), floor)
		if err != nil {
			return nil, err
		}
		f.Close()
		if err := syncDir(e.fs, e.logDir); err != nil {
			return nil, err
		}
		u, err := e.inspect(e.nextFreeID() - 1)
		if err != nil {
			return nil, err
		}
		files = append(files, u)
	}
	if len(files) > 0 {
		// Every file but the last is sealed where the next one starts;
		// the last is scanned for a torn tail.
		first := &segment{id: files[0].id, baseSeq: files[0].hdr.baseSeq}
		first.lastSeq.Store(first.baseSeq - 1)
		e.segments = append(e.segments, first)
		if len(files) > 1 {
			if err := e.adopt(files[1:], first.baseSeq, witness, false); err != nil {
				return nil, err
			}
		} else {
			next, err := e.scanTail(first, witness, false)
			if err != nil {
				return nil, err
			}
			e.nextSeq = next
			first.sealed.Store(true)
			if err := e.db.Set(segmentKey(first.id), encodeManifest(first), pebble.Sync); err != nil {
				return nil, fmt.Errorf("cannot record segment %d: %w", first.id, err)
			}
		}
	}
	if e.nextSeq < floor {
		// Records past the log's end were in a file set aside (a recycled
		// file's older records never are): their seqs are not given again.
		e.recordLost(e.nextSeq, floor-1, "in segment files set aside by recovery")
	}
	// A new index lost the old one's stragglers: the straggler files have
	// them; the new consumers start at the oldest, to requeue them.
	var stragglers map[uint64]Record
	if !rep.IndexKept {
		first := e.nextSeq
		if len(e.segments) > 0 {
			first = e.segments[0].baseSeq
		}
		if stragglers, err = e.recoverStragglers(first); err != nil {
			return nil, err
		}
	}
	start := uint64(0)
	for seq := range stragglers {
		if start == 0 || seq < start {
			start = seq
		}
	}
	return stragglers, e.ensureConsumers(names, cursors, start, rep)
}

// nextFreeID is one past the highest segment file id in the log directory
// (set-aside files included).
func (e *Engine) nextFreeID() uint32 {
	id := uint32(1)
	for _, dir := range []string{e.logDir, e.fs.PathJoin(e.logDir, "aside")} {
		names, _ := e.fs.List(dir)
		for _, n := range names {
			if x, ok := parseSegmentFileName(n); ok {
				id = max(id, x+1)
			}
		}
	}
	return id
}

// logFiles lists the segment files to rebuild the log from, in id order,
// each with a valid header, and the lowest seq a new record may take (past
// every record and header found, the files set aside included: a seq is
// never given twice). Set aside, never deleted: files whose header names
// an older segment (a recycled file renamed, holding a reclaimed
// segment's records) and files without a record of their own, but the
// newest of those (a segment started but not yet written), which is kept
// as an empty segment. A gap between two files is not taken for reclaimed
// segments: reclaim deletes from the oldest, so a gap is damage, reported
// lost by the scan.
func (e *Engine) logFiles(rep *RecoverReport) ([]unknownFile, uint64, error) {
	names, err := e.fs.List(e.logDir)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot list %s: %w", e.logDir, err)
	}
	var ids []uint32
	for _, n := range names {
		if id, ok := parseSegmentFileName(n); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var files, empty []unknownFile
	floor := uint64(1)
	for _, id := range ids {
		u, err := e.inspect(id)
		if err != nil {
			return nil, 0, err
		}
		floor = max(floor, u.lastSeq+1)
		if u.hdrOK {
			floor = max(floor, u.hdr.baseSeq)
		}
		switch {
		case u.hdr.id != 0 && u.hdr.id < id, u.lastSeq == 0 && !u.hdrOK:
			if err := e.setAside(id, rep); err != nil {
				return nil, 0, err
			}
		case u.lastSeq == 0:
			empty = append(empty, u)
		case !u.hdrOK:
			return nil, 0, fmt.Errorf("segment file %s holds records up to seq %d but its header is damaged: move it out of %s and run recover again", segmentFileName(id), u.lastSeq, e.logDir)
		default:
			files = append(files, u)
		}
	}
	for i := 1; i < len(files); i++ {
		if files[i].hdr.baseSeq <= files[i-1].hdr.baseSeq {
			return nil, 0, fmt.Errorf("segment files %s and %s overlap (both start at or after seq %d): move the wrong one out of %s and run recover again", segmentFileName(files[i-1].id), segmentFileName(files[i].id), files[i].hdr.baseSeq, e.logDir)
		}
	}
	// The newest empty file is kept if it starts past every record: the
	// log's next seq, as a segment.
	for k, u := range empty {
		last := k == len(empty)-1 && (len(files) == 0 || u.id > files[len(files)-1].id && u.hdr.baseSeq > files[len(files)-1].lastSeq)
		if last {
			files = append(files, u)
			continue
		}
		if err := e.setAside(u.id, rep); err != nil {
			return nil, 0, err
		}
	}
	return files, floor, nil
}

// setAside moves a segment file to Dir/log/aside.
func (e *Engine) setAside(id uint32, rep *RecoverReport) error {
	aside := e.fs.PathJoin(e.logDir, "aside")
	if err := mkdirAllSynced(e.fs, aside); err != nil {
		return err
	}
	name := segmentFileName(id)
	if err := e.fs.Rename(e.fs.PathJoin(e.logDir, name), e.fs.PathJoin(aside, name)); err != nil {
		return fmt.Errorf("cannot set %s aside: %w", name, err)
	}
	if err := syncDir(e.fs, e.logDir); err != nil {
		return err
	}
	rep.SetAside = append(rep.SetAside, name)
	e.log.Warn("segment file set aside", "file", name, "dir", aside)
	return nil
}

// oldConsumers reads the consumers' cursors and counts their entries.
func (e *Engine) oldConsumers() (map[string]uint64, int64, error) {
	cursors := make(map[string]uint64)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixConsumer}, UpperBound: []byte{prefixConsumer + 1}})
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read consumers: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Value()) != 4 {
			continue
		}
		id := binary.BigEndian.Uint32(it.Value())
		v, closer, err := e.db.Get(cursorKey(id))
		if err != nil || len(v) != 16 {
			if err == nil {
				closer.Close()
			}
			e.log.Error("consumer without a readable cursor; it starts at the oldest record", "consumer", string(it.Key()[1:]))
			cursors[string(it.Key()[1:])] = 1
			continue
		}
		cursors[string(it.Key()[1:])] = binary.BigEndian.Uint64(v)
		closer.Close()
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("cannot read consumers: %w", err)
	}
	var entries int64
	for _, p := range []byte{prefixEntry, prefixAborted} {
		eit, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{p}, UpperBound: []byte{p + 1}})
		if err != nil {
			return nil, 0, fmt.Errorf("cannot count entries: %w", err)
		}
		for eit.First(); eit.Valid(); eit.Next() {
			entries++
		}
		err = eit.Error()
		eit.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("cannot count entries: %w", err)
		}
	}
	return cursors, entries, nil
}

// ensureConsumers creates the named consumers the index does not know, at
// the oldest retained record (or start, the oldest straggler to requeue,
// when not 0), and lists every consumer in the report.
func (e *Engine) ensureConsumers(names []string, cursors map[string]uint64, start uint64, rep *RecoverReport) error {
	first := e.nextSeq
	if len(e.segments) > 0 {
		first = e.segments[0].baseSeq
	}
	if start > 0 {
		first = min(first, start) // the oldest straggler, requeued after Open
	}
	id := uint32(1)
	if v, closer, err := e.db.Get(keyConsumerID); err == nil {
		if len(v) == 4 {
			id = binary.BigEndian.Uint32(v)
		}
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("cannot read the next consumer id: %w", err)
	}
	b := e.db.NewBatch()
	defer b.Close()
	for name := range cursors {
		rep.Consumers = append(rep.Consumers, RecoveredConsumer{Name: name})
	}
	for _, name := range names {
		if _, ok := cursors[name]; ok {
			continue
		}
		b.Set(consumerKey(name), binary.BigEndian.AppendUint32(nil, id), nil)
		b.Set(cursorKey(id), encodeCursor(first, 0), nil)
		id++
		cursors[name] = first
		rep.Consumers = append(rep.Consumers, RecoveredConsumer{Name: name, Created: true})
	}
	b.Set(keyConsumerID, binary.BigEndian.AppendUint32(nil, id), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot record consumers: %w", err)
	}
	slices.SortFunc(rep.Consumers, func(a, b RecoveredConsumer) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return nil
}

// copyDir copies the files of dir (not subdirectories) into a new
// directory to, syncing them.
func copyDir(fs vfs.FS, dir, to string) error {
	names, err := fs.List(dir)
	if err != nil {
		return fmt.Errorf("cannot list %s: %w", dir, err)
	}
	if err := mkdirAllSynced(fs, to); err != nil {
		return err
	}
	for _, n := range names {
		src := fs.PathJoin(dir, n)
		if st, err := fs.Stat(src); err != nil || st.IsDir() {
			continue
		}
		if err := vfs.Copy(fs, src, fs.PathJoin(to, n)); err != nil {
			return fmt.Errorf("cannot copy %s: %w", src, err)
		}
	}
	return syncDir(fs, to)
}
