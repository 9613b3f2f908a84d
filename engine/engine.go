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
	segMu    sync.RWMutex
	segments []*segment // ordered by id; the last one is active

	// writeMu is held by the committer for each group and by reclaim when it
	// cuts the active segment. It guards the fields below.
	writeMu sync.Mutex
	active  *segment
	file    vfs.File // active segment file; nil after a failure until repaired
	nextID  uint32
	nextSeq uint64
	broken  error // a write failed: the active segment must be sealed first
	buf     []byte
	dedup   *dedup

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

	diskUsage atomic.Int64 // segments + index, refreshed by the reclaimer
	stats     counters

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
// and commits each group with one write and one fsync.
func (e *Engine) commitLoop() {
	defer e.wg.Done()
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

// commitQueued commits one group; it reports false when the queue was empty.
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
	if n == 0 {
		return false
	}
	e.commitGroup(group)
	for _, r := range group {
		r.done <- struct{}{}
	}
	return true
}

func (e *Engine) commitGroup(group []*appendReq) {
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	fail := func(err error) {
		for _, r := range group {
			r.err, r.res = err, AppendResult{}
		}
	}
	if err := e.readyLocked(); err != nil {
		fail(err)
		return
	}
	now := e.opts.Now()
	if err := e.dedup.expire(now); err != nil {
		e.log.Warn("cannot expire dedup generations", "err", err)
	}
	if err := e.dedup.beginGroup(); err != nil {
		e.log.Warn("dedup index write failed; its keys stay in memory and are written again", "err", err)
	}
	e.buf = e.buf[:0]
	seq := e.nextSeq
	for _, req := range group {
		for i := range req.recs {
			r := &req.recs[i]
			dup, err := e.dedup.seen(r, seq, now)
			if err != nil {
				fail(fmt.Errorf("cannot append: %w: %w", ErrUnavailable, err))
				return
			}
			if dup {
				r.Seq = 0
				req.res.Duplicates++
				continue
			}
			r.Seq = seq
			e.buf = appendFrame(e.buf, seq, r)
			req.res.Stored++
			req.res.LastSeq = seq
			seq++
		}
	}
	if len(e.buf) == 0 {
		return
	}
	if err := e.writeLocked(seq-1, now); err != nil {
		fail(err)
		return
	}
	e.stats.groups.Add(1)
	e.stats.groupRecords.Add(seq - e.nextSeq)
	e.nextSeq = seq
	// Order matters: a reader bounded by the segment's size must never find
	// a frame past the high-water mark.
	e.active.lastSeq.Store(seq - 1)
	e.hwm.Store(seq - 1)
	e.active.size.Add(int64(len(e.buf)))
	e.notify()
}

// writeLocked writes e.buf to the active segment, syncs it and commits the
// group's dedup keys (to memory; the index follows behind). On any failure the engine is marked broken: the bytes
// written are never counted and the segment is sealed before them.
func (e *Engine) writeLocked(lastSeq uint64, now time.Time) error {
	if _, err := e.file.Write(e.buf); err != nil {
		return e.breakLocked(fmt.Errorf("cannot write segment %d: %w", e.active.id, err))
	}
	if !e.opts.NoSyncData {
		if err := e.file.SyncData(); err != nil {
			return e.breakLocked(fmt.Errorf("cannot sync segment %d: %w", e.active.id, err))
		}
		e.stats.fsyncs.Add(1)
	}
	// The group's records are durable: from here it commits. A failed
	// background index batch does not fail it (its keys stay in memory and
	// go out again; the checkpoint and Reclaim wait for them).
	if err := e.dedup.endGroup(lastSeq, now); err != nil {
		e.log.Warn("dedup index write failed; its keys stay in memory and are written again", "err", err)
	}
	e.stats.bytesWritten.Add(uint64(len(e.buf)))
	e.diskUsage.Add(int64(len(e.buf)))
	return nil
}

func (e *Engine) breakLocked(err error) error {
	e.broken = err
	e.stats.writeErrors.Add(1)
	e.log.Error("segment write failed; appends fail until the active segment is sealed", "segment", e.active.id, "err", err)
	return fmt.Errorf("cannot append: %w: %w", ErrUnavailable, err)
}

// readyLocked makes sure there is a healthy active segment with room: it
// seals a broken or full one and starts a new one.
func (e *Engine) readyLocked() error {
	if e.broken != nil || e.file == nil || e.active.sealed.Load() {
		if err := e.rotateLocked(); err != nil {
			return e.breakLocked(err)
		}
		if e.broken != nil {
			e.log.Info("storage recovered; appends resume", "segment", e.active.id)
			e.broken = nil
		}
		return nil
	}
	if e.active.size.Load() >= e.opts.SegmentBytesMax || int64(e.active.records()) >= e.opts.SegmentRecordsMax {
		if err := e.rotateLocked(); err != nil {
			// Unhealthy like a failed write: the next append retries.
			return e.breakLocked(err)
		}
	}
	return nil
}

// rotateLocked seals the active segment at its durable size and starts a
// new one. The new file exists (synced) before the manifest names it; the
// manifest batch that seals the old one and adds the new one is synced.
func (e *Engine) rotateLocked() error {
	old := e.active
	if e.file != nil {
		if err := e.file.Close(); err != nil {
			e.log.Warn("cannot close segment", "segment", old.id, "err", err)
		}
		e.file = nil
	}
	id := e.nextID
	f, err := createSegmentFile(e.fs, e.logDir, id, e.nextSeq)
	if err != nil {
		return err
	}
	seg := &segment{id: id, baseSeq: e.nextSeq}
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
		e.nextID++ // never reuse the id of a file that may exist
		return fmt.Errorf("cannot record segment %d in manifest: %w", id, err)
	}
	e.nextID++
	e.file, e.active = f, seg
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
		e.closed.Store(true)
		close(e.closing)
		e.wg.Wait()
		e.writeMu.Lock()
		if serr := e.dedup.sync(e.opts.Now()); serr != nil {
			err = serr
		}
		if e.file != nil {
			if cerr := e.file.Close(); cerr != nil {
				err = fmt.Errorf("cannot close active segment: %w", cerr)
			}
			e.file = nil
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
			if _, err := e.reclaim(false); err != nil {
				e.log.Warn("reclaim failed", "err", err)
			}
		}
	}
}
