package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Engine is the durable event log: segment files for payloads, a Pebble
// index for everything else. All methods are safe for concurrent use.
type Engine struct {
	opts   Options
	fs     vfs.FS
	log    *slog.Logger
	db     *pebble.DB
	logDir string

	// segMu guards the segments slice (not the segments' atomic fields).
	// The slice is replaced, never edited in place, so a reader may keep
	// using the one it took under segMu after releasing it.
	segMu    sync.RWMutex
	segments []*segment // ordered by id; the last one is active

	// writeMu is held by the committer for each group, and by reclaim (its
	// cut, indexedThrough, activeHeaderDurable), the disk loop's repair,
	// spare preparation, the dedup rebuild, Stats and Close. It guards the
	// fields below. Lock order: docs/architecture.md.
	writeMu sync.Mutex
	active  *segment
	file    vfs.File // active segment file; nil after a failure until repaired
	nextID  uint32
	nextSeq uint64
	broken  error     // a write failed: the active segment must be sealed first
	bufs    [2][]byte // frames of the group being prepared and of the one in flight
	dedup   *dedup
	// inflight is the group the syncer is writing, if any; syncCh hands it
	// over, syncDone brings it back.
	inflight *syncJob
	syncCh   chan *syncJob
	syncDone chan *syncJob
	spare    *spareFile // the next segment's file, made ready (see spare.go)

	// spareMu serializes preparing spares and guards free: reclaimed
	// segment files kept for reuse. Taken before writeMu.
	spareMu     sync.Mutex
	free        []keptFile
	keptBytes   atomic.Int64 // on disk in free and the spare
	spareWanted chan struct{}
	// rebuildWanted wakes dedupRebuildLoop (deduprebuild.go).
	rebuildWanted chan struct{}

	// hwm is the last durable, readable seq. Readers never go past it.
	hwm      atomic.Uint64
	notifyMu sync.Mutex
	notifyCh chan struct{}

	qMu     sync.Mutex
	queue   []*appendReq
	qSignal chan struct{}

	// idxMu serializes consumer transactions with reclaim and admin edits.
	idxMu     sync.Mutex
	consMu    sync.RWMutex
	consumers map[string]*Consumer

	// reclaimPasses counts reclaim passes (under idxMu), to look for
	// spent straggler files now and then.
	reclaimPasses int
	// restored holds, during Open, the stragglers of missing segments
	// that straggler files gave back (dropMissing), by seq.
	restored map[uint64]Record

	// rebuilding: this is Recover's engine, rebuilding the index from the
	// segment files (recovery then has no witness in the index).
	rebuilding bool

	diskUsage atomic.Int64 // segments + index, refreshed by the reclaimer
	stats     counters
	disk      *diskWatch // free-space floor and reserve file (diskfull.go)
	lost      lostSet

	closeOnce sync.Once
	closing   chan struct{}
	wg        sync.WaitGroup
	closed    atomic.Bool
}

type appendReq struct {
	recs  []Record
	bytes int
	res   AppendResult
	err   error
	done  chan struct{}
}

var reqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan struct{}, 1)} }}

// AppendResult tells what Append stored.
type AppendResult struct {
	// Stored records got sequence numbers; Duplicates were already known.
	Stored, Duplicates int
	// LastSeq is the highest sequence number assigned (0 if none).
	LastSeq uint64
}

// Append stores recs durably: it returns nil only once every record that was
// not a duplicate is fsynced. It sets each record's Seq (0 for a duplicate of
// an event already stored or earlier in recs). On error nothing of recs is
// acknowledged; ErrDiskBudget, ErrBacklogFull and ErrUnavailable mean nothing
// was stored and the caller may retry later. Concurrent callers share fsyncs.
func (e *Engine) Append(ctx context.Context, recs []Record) (AppendResult, error) {
	if e.closed.Load() {
		return AppendResult{}, fmt.Errorf("cannot append: %w", ErrClosed)
	}
	if len(recs) == 0 {
		return AppendResult{}, nil
	}
	size := 0
	for i := range recs {
		if err := validateRecord(&recs[i], e.opts.RecordBytesMax); err != nil {
			return AppendResult{}, fmt.Errorf("cannot append record %d: %w", i, err)
		}
		size += frameLen(&recs[i])
	}
	if size > e.opts.GroupBytesMax {
		return AppendResult{}, fmt.Errorf("cannot append %d bytes in one call (max %d): %w", size, e.opts.GroupBytesMax, ErrInvalidRecord)
	}
	if err := e.checkLimits(len(recs), size); err != nil {
		return AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return AppendResult{}, fmt.Errorf("cannot append: %w", err)
	}
	req := reqPool.Get().(*appendReq)
	req.recs, req.bytes, req.res, req.err = recs, size, AppendResult{}, nil
	e.qMu.Lock()
	if e.closed.Load() { // checked again under the lock Close sets it with
		e.qMu.Unlock()
		reqPool.Put(req)
		return AppendResult{}, fmt.Errorf("cannot append: %w", ErrClosed)
	}
	e.queue = append(e.queue, req)
	e.qMu.Unlock()
	select {
	case e.qSignal <- struct{}{}:
	default:
	}
	// Wait even if ctx ends: the committer reads recs until it is done, and
	// a group's commit is bounded by one write and one fsync.
	<-req.done
	res, err := req.res, req.err
	req.recs = nil
	reqPool.Put(req)
	return res, err
}

// checkLimits fails fast when the disk budget or backlog limit is reached.
func (e *Engine) checkLimits(n, size int) error {
	if err := e.checkDiskFull(); err != nil {
		return err
	}
	if b := e.opts.DiskBudgetBytes; b > 0 && e.diskUsage.Load()+int64(size) > b {
		e.stats.rejectedBudget.Add(1)
		return fmt.Errorf("cannot append: %w (using %d of %d bytes)", ErrDiskBudget, e.diskUsage.Load(), b)
	}
	if m := e.opts.BacklogEventsMax; m > 0 {
		if backlog := e.backlogEvents(); backlog+int64(n) > m {
			e.stats.rejectedBacklog.Add(1)
			return fmt.Errorf("cannot append: %w (%d events behind, max %d)", ErrBacklogFull, backlog, m)
		}
	}
	return nil
}

// backlogEvents is the distance from the slowest consumer to the log's end.
func (e *Engine) backlogEvents() int64 {
	next := e.hwm.Load() + 1
	min := next
	e.consMu.RLock()
	for _, c := range e.consumers {
		if cur := c.cursor.Load(); cur < min {
			min = cur
		}
	}
	e.consMu.RUnlock()
	return int64(next - min)
}

// commitLoop is the committer goroutine: it takes queued appends in groups
// and prepares each (dedup, sequence numbers, frames) while the syncer
// writes and fsyncs the group before it: a two-stage pipeline, so that a
// group's CPU work overlaps the previous group's disk wait.
func (e *Engine) commitLoop() {
	defer e.wg.Done()
	defer close(e.syncCh)
	for {
		select {
		case <-e.qSignal:
		case <-e.closing:
			for e.commitQueued() {
			}
			return
		}
		for e.commitQueued() {
		}
	}
}

// syncLoop is the syncer goroutine: it writes and fsyncs the groups the
// committer hands it, one at a time, touching nothing else.
func (e *Engine) syncLoop() {
	defer e.wg.Done()
	for j := range e.syncCh {
		j.err = e.writeSync(j)
		e.syncDone <- j
	}
}

// syncJob is a prepared group on its way to disk.
type syncJob struct {
	group       []*appendReq
	buf         []byte
	file        vfs.File
	seg         *segment
	first, last uint64 // its records' seqs
	mark        int    // the dedup keys up to here are this group's and earlier
	bufIdx      int    // which of Engine.bufs buf is
	now         time.Time
	err         error
}

// commitQueued prepares one group and completes the one before it; it
// reports false when there was nothing to do.
func (e *Engine) commitQueued() bool {
	e.qMu.Lock()
	n, size := 0, 0
	for n < len(e.queue) && (n == 0 || size+e.queue[n].bytes <= e.opts.GroupBytesMax) {
		size += e.queue[n].bytes
		n++
	}
	group := make([]*appendReq, n)
	copy(group, e.queue[:n])
	e.queue = append(e.queue[:0], e.queue[n:]...)
	e.qMu.Unlock()
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	if n == 0 {
		if e.inflight == nil {
			return false
		}
		e.drainLocked()
		return true
	}
	job := e.prepareLocked(group)
	// The group in flight completes first: this one's sequence numbers
	// and duplicates were decided assuming it is stored.
	if !e.drainLocked() && job != nil {
		job.fail(fmt.Errorf("cannot append: %w: %w", ErrUnavailable, e.broken))
		return true
	}
	switch {
	case job == nil: // failed in preparation; answered
	case job.last < job.first: // nothing new: every record a duplicate
		e.warnIndex(e.dedup.commitThrough(job.mark, 0, job.now))
		job.answer()
	default:
		e.inflight = job
		e.syncCh <- job
	}
	return true
}

// prepareLocked assigns the group's records sequence numbers after those
// of the group in flight, decides duplicates and frames the rest into a
// buffer. It returns nil when the group failed (and was answered).
func (e *Engine) prepareLocked(group []*appendReq) *syncJob {
	j := &syncJob{group: group}
	if err := e.readyLocked(); err != nil {
		j.fail(err)
		return nil
	}
	j.now = e.opts.Now()
	if err := e.dedup.expire(j.now); err != nil {
		e.log.Warn("cannot expire dedup generations", "err", err)
	}
	e.warnIndex(e.dedup.poll())
	seq := e.nextSeq
	if e.inflight != nil {
		seq = e.inflight.last + 1
		j.bufIdx = 1 - e.inflight.bufIdx
	}
	buf := &e.bufs[j.bufIdx]
	*buf = (*buf)[:0]
	j.first = seq
	start := e.dedup.mark()
	for _, req := range group {
		for i := range req.recs {
			r := &req.recs[i]
			dup, err := e.dedup.seen(r, j.now)
			if err != nil {
				e.dedup.undoTo(start)
				j.fail(fmt.Errorf("cannot append: %w: %w", ErrUnavailable, err))
				return nil
			}
			if dup {
				r.Seq = 0
				req.res.Duplicates++
				continue
			}
			r.Seq = seq
			stored := seq
			if seq == j.first {
				stored |= frameGroupStart
			}
			*buf = appendFrame(*buf, stored, r)
			req.res.Stored++
			req.res.LastSeq = seq
			seq++
		}
	}
	j.last, j.buf, j.mark = seq-1, *buf, e.dedup.mark()
	j.file, j.seg = e.file, e.active
	return j
}

// drainLocked completes the group in flight, if any: it waits for the
// syncer and publishes the group, or marks the engine broken and fails it
// (undoing its dedup keys, and those of any group prepared after it). It
// reports whether the group, if there was one, was stored.
func (e *Engine) drainLocked() bool {
	if e.inflight == nil {
		return true
	}
	j := <-e.syncDone
	e.inflight = nil
	if j.err != nil {
		j.seg.recyclable.Store(false) // its frames may be in the file
		err := e.breakLocked(j.err)
		e.dedup.undo()
		j.fail(err)
		return false
	}
	e.warnIndex(e.dedup.commitThrough(j.mark, j.last, j.now))
	e.stats.groups.Add(1)
	e.stats.groupRecords.Add(j.last + 1 - j.first)
	e.stats.bytesWritten.Add(uint64(len(j.buf)))
	e.diskUsage.Add(int64(len(j.buf)))
	e.disk.noteWritten(int64(len(j.buf)))
	e.nextSeq = j.last + 1
	// Order matters: a reader bounded by the segment's size must never find
	// a frame past the high-water mark.
	j.seg.lastSeq.Store(j.last)
	j.seg.headerDurable.Store(true) // synced with the group
	e.hwm.Store(j.last)
	j.seg.size.Add(int64(len(j.buf)))
	e.notify()
	j.answer()
	return true
}

// writeSync writes a group to its segment and syncs it (the syncer).
func (e *Engine) writeSync(j *syncJob) error {
	if _, err := j.file.Write(j.buf); err != nil {
		return fmt.Errorf("cannot write segment %d: %w", j.seg.id, err)
	}
	if !e.opts.NoSyncData {
		if err := j.file.SyncData(); err != nil {
			return fmt.Errorf("cannot sync segment %d: %w", j.seg.id, err)
		}
		e.stats.fsyncs.Add(1)
	}
	return nil
}

// warnIndex logs a failed background dedup index batch: its keys stay in
// memory and go out again (the checkpoint and Reclaim wait for them).
func (e *Engine) warnIndex(err error) {
	if err != nil {
		e.log.Warn("dedup index write failed; its keys stay in memory and are written again", "err", err)
	}
}

// fail answers the group's appends with err: nothing of them is stored.
func (j *syncJob) fail(err error) {
	for _, r := range j.group {
		r.err, r.res = err, AppendResult{}
	}
	j.answer()
}

// answer wakes the group's appends.
func (j *syncJob) answer() {
	for _, r := range j.group {
		r.done <- struct{}{}
	}
}

// breakLocked marks the engine broken. It logs once per episode: a repair
// that fails again (each append, each disk check) logs at debug.
func (e *Engine) breakLocked(err error) error {
	var seg uint32
	if e.active != nil { // nil when Open found no segment and could not start one
		seg = e.active.id
	}
	if e.broken == nil {
		e.log.Error("segment write failed; appends fail until the active segment is sealed", "segment", seg, "err", err)
	} else {
		e.log.Debug("active segment still cannot be sealed", "segment", seg, "err", err)
	}
	e.broken = err
	e.stats.writeErrors.Add(1)
	return fmt.Errorf("cannot append: %w: %w", ErrUnavailable, err)
}

// readyLocked makes sure there is a healthy active segment with room: it
// seals a broken or full one and starts a new one.
func (e *Engine) readyLocked() error {
	if e.broken == nil && e.file != nil && !e.active.sealed.Load() {
		size, recs := e.active.size.Load(), int64(e.active.records())
		if j := e.inflight; j != nil {
			size, recs = size+int64(len(j.buf)), recs+int64(j.last+1-j.first)
		}
		if size < e.opts.SegmentBytesMax && recs < e.opts.SegmentRecordsMax {
			return nil
		}
	}
	if err := e.rotateLocked(); err != nil {
		// Unhealthy like a failed write: the next append retries.
		return e.breakLocked(err)
	}
	return nil
}

// rotateLocked seals the active segment at its durable size and starts a
// new one. The new file exists (its directory entry synced) before the
// manifest names it; the manifest batch that seals the old one and adds the
// new one is synced.
func (e *Engine) rotateLocked() error {
	e.drainLocked() // the group in flight goes to the old segment, or fails
	old := e.active
	if e.file != nil {
		if err := e.file.Close(); err != nil {
			e.log.Warn("cannot close segment", "segment", old.id, "err", err)
		}
		e.file = nil
	}
	id, f, err := e.takeSpareLocked()
	created := false
	if f == nil && err == nil {
		id = e.nextID
		f, err = createSegmentFile(e.fs, e.logDir, id, e.nextSeq)
		created = true
	}
	if err != nil {
		return err
	}
	seg := &segment{id: id, baseSeq: e.nextSeq}
	seg.recyclable.Store(true)
	seg.headerDurable.Store(created)
	seg.lastSeq.Store(e.nextSeq - 1)
	seg.size.Store(segmentHeaderLen)
	b := e.db.NewBatch()
	if old != nil {
		old.sealed.Store(true)
		b.Set(segmentKey(old.id), encodeManifest(old), nil)
	}
	b.Set(segmentKey(id), encodeManifest(seg), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		f.Close()
		e.removeFile(id)               // not in the manifest: a stray
		e.nextID = max(e.nextID, id+1) // never reuse the id of a file that may exist
		return fmt.Errorf("cannot record segment %d in manifest: %w", id, err)
	}
	e.nextID = max(e.nextID, id+1)
	e.file, e.active = f, seg
	if e.broken != nil { // the broken segment is sealed at its durable size
		e.log.Info("storage recovered; appends resume", "segment", id)
		e.broken = nil
	}
	e.segMu.Lock()
	e.segments = append(e.segments, seg)
	e.segMu.Unlock()
	e.diskUsage.Add(segmentHeaderLen)
	e.stats.segmentsCreated.Add(1)
	return nil
}

// notify wakes readers waiting for the high-water mark to grow.
func (e *Engine) notify() {
	e.notifyMu.Lock()
	close(e.notifyCh)
	e.notifyCh = make(chan struct{})
	e.notifyMu.Unlock()
}

// LastSeq is the last durable sequence number (0 for an empty log).
func (e *Engine) LastSeq() uint64 { return e.hwm.Load() }

// Changed returns a channel closed when LastSeq next grows.
func (e *Engine) Changed() <-chan struct{} {
	e.notifyMu.Lock()
	defer e.notifyMu.Unlock()
	return e.notifyCh
}

// WaitFor blocks until LastSeq >= seq or ctx ends.
func (e *Engine) WaitFor(ctx context.Context, seq uint64) error {
	for {
		ch := e.Changed()
		if e.hwm.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-e.closing:
			return ErrClosed
		}
	}
}

// Close finishes queued appends, stops background work and closes the
// index. Records acknowledged before Close are durable.
func (e *Engine) Close() error {
	var err error
	e.closeOnce.Do(func() {
		// Under qMu: an Append either queued before (the committer's last
		// round takes it) or sees closed.
		e.qMu.Lock()
		e.closed.Store(true)
		e.qMu.Unlock()
		close(e.closing)
		e.wg.Wait()
		e.dropSpareFiles()
		e.writeMu.Lock()
		if serr := e.dedup.sync(e.opts.Now()); serr != nil {
			err = serr
		}
		if cerr := e.dedup.close(); cerr != nil && err == nil {
			err = cerr
		}
		if e.file != nil {
			if cerr := e.file.Close(); cerr != nil {
				err = fmt.Errorf("cannot close active segment: %w", cerr)
			}
			e.file = nil
		}
		// Seal the active segment at its durable end: the next Open then
		// knows where the log ends without scanning for a torn tail, and
		// damage found in it later is read around like any sealed
		// segment's.
		if a := e.active; a != nil {
			a.sealed.Store(true)
			if serr := e.db.Set(segmentKey(a.id), encodeManifest(a), pebble.NoSync); serr != nil && err == nil {
				err = fmt.Errorf("cannot seal the active segment: %w", serr)
			}
		}
		e.writeMu.Unlock()
		if ferr := e.db.LogData(nil, pebble.Sync); ferr != nil && err == nil {
			err = fmt.Errorf("cannot sync index: %w", ferr)
		}
		if cerr := e.db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("cannot close index: %w", cerr)
		}
	})
	return err
}

// reclaimLoop runs Reclaim and refreshes disk usage periodically.
func (e *Engine) reclaimLoop() {
	defer e.wg.Done()
	if e.opts.ReclaimInterval < 0 {
		return
	}
	t := time.NewTicker(e.opts.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-e.closing:
			return
		case <-t.C:
			_, err := e.reclaim(false)
			e.noteReclaim(err)
		}
	}
}
