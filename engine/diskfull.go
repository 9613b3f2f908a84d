package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A full disk. Appends stop before the data directory's filesystem is
// full, and a full one recovers by itself once delivery lets reclaim free
// space:
//
//   - Floor. While free space is under DiskFreeBytesMin, Append fails with
//     ErrDiskFull (an ErrUnavailable: ingest answers 503 with Retry-After)
//     and Stats().Healthy is false. The disk loop (diskLoop) checks every
//     DiskCheckInterval, and sooner once a quarter of the floor was written
//     to segments: one statfs per check, none per append.
//
//   - Reserve. Dir/reserve holds ReserveBytes for the index. Reclaim must
//     write before it may delete (the synced batch that drops a segment
//     from the manifest, the dedup keys of its records), consumers must
//     commit their cursors before there is anything to reclaim, and Pebble
//     treats a failed WAL write as fatal. So the index's filesystem is
//     wrapped in Pebble's vfs.OnDiskFull: the first index write that finds
//     the disk full deletes the reserve and is retried into its room. The
//     same happens when reclaim's dedup keys, or the repair of the active
//     segment, find the disk full, and at Open when free space is under the
//     floor (Pebble writes when it opens). The reserve is made again once
//     free space is at least ReserveBytes + DiskFreeBytesMin; appends are
//     refused until then, so that they never eat the index's room. Segment
//     writes are not wrapped: the reserve is never spent on payloads.
//
//   - Repair. A failed segment write breaks the engine (engine.go); the
//     disk loop repairs it (seals the active segment at its durable size
//     and starts a new one) without waiting for an append, so Healthy turns
//     true again on an idle engine too. Reclaim deletes sealed segments
//     even when cutting the active one fails, and keeps no reclaimed files
//     for reuse (spare.go) while space is low.
//
//   - Open on a full disk works: the reserve goes first; if no segment can
//     be started, the engine opens broken, serving reads, consumers and
//     reclaim, and the disk loop repairs it once there is room.
//
// Logs: one line when appends stop for lack of space and one when they
// resume, one when the reserve is deleted, one per repair episode
// (breakLocked, rotateLocked) and per episode of failing reclaims or
// failing reserve creation; the rest goes to debug. Nothing here runs per
// append but an atomic load, and an atomic add per group.
//
// Locks: diskWatch.mu is a leaf: it is taken under writeMu (a repair, the
// callback during a Pebble commit), and nothing is locked while it is
// held.

// reserveFileName is the reserve's name in Dir.
const reserveFileName = "reserve"

// diskWatch keeps the free-space floor and the reserve file.
type diskWatch struct {
	fs           vfs.FS // not the index's wrapped FS: the reserve's writes never release it
	dir          string
	path         string
	reserveBytes int64 // 0: no reserve
	floorBytes   int64 // 0: no floor
	interval     time.Duration
	log          *slog.Logger

	low   atomic.Bool  // appends refused with ErrDiskFull
	avail atomic.Int64 // free bytes at the last check; -1 unknown
	wrote atomic.Int64 // segment bytes written since the last check
	wake  chan struct{}
	ticks atomic.Uint64 // checks done (tests wait for them)

	// mu serializes creating and deleting the reserve and guards present
	// and createFailing.
	mu            sync.Mutex
	present       bool // the reserve is on disk, whole
	createFailing bool // logged; quiet until a creation works

	// reclaimFailing is owned by reclaimLoop: a failing reclaim is logged
	// once per episode.
	reclaimFailing bool
}

func newDiskWatch(o *Options) *diskWatch {
	w := &diskWatch{
		fs:           o.FS,
		dir:          o.Dir,
		path:         o.FS.PathJoin(o.Dir, reserveFileName),
		reserveBytes: max(o.ReserveBytes, 0),
		floorBytes:   max(o.DiskFreeBytesMin, 0),
		interval:     o.DiskCheckInterval,
		log:          o.Logger,
		wake:         make(chan struct{}, 1),
	}
	w.avail.Store(-1)
	return w
}

// indexFS wraps fs for the index: a write that finds the disk full deletes
// the reserve and is retried once.
func (w *diskWatch) indexFS(fs vfs.FS) vfs.FS {
	if w.reserveBytes == 0 {
		return fs
	}
	return vfs.OnDiskFull(fs, func() { w.release("an index write found the disk full") })
}

// open runs in Open before the index opens: it finds the reserve, and
// deletes it when free space is under the floor (the index writes as it
// opens, and then must record deliveries and reclaim), else makes it if it
// is missing and there is room. It fails only when the filesystem is too
// small ever to hold the reserve above the floor.
func (w *diskWatch) open(idxDir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	u, err := w.fs.GetDiskUsage(w.dir)
	if err != nil {
		// An FS that cannot tell its free space (an in-memory one) gets
		// neither floor nor reserve: nothing could tell when to make the
		// reserve again.
		w.log.Debug("free space unknown: no reserve file, no free-space floor", "dir", w.dir, "err", err)
		w.reserveBytes, w.floorBytes = 0, 0
	} else if u.TotalBytes < uint64(w.reserveBytes+w.floorBytes) {
		return fmt.Errorf("cannot open %s: its filesystem holds %d bytes, less than ReserveBytes %d + DiskFreeBytesMin %d", w.dir, u.TotalBytes, w.reserveBytes, w.floorBytes)
	}
	st, err := w.fs.Stat(w.path)
	w.present = err == nil && w.reserveBytes > 0 && st.Size() == w.reserveBytes
	if err == nil && !w.present {
		// Another size (the option changed) or cut short by a crash.
		if err := w.fs.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.log.Warn("cannot remove old reserve file", "path", w.path, "err", err)
		}
	}
	avail, known := w.usage()
	if known && avail < w.floorBytes {
		if w.releaseLocked("free space under the floor at open") {
			avail, known = w.usage()
		}
		// Pebble flushes the memtables it replays from its WAL as it
		// opens, and retries a failed flush in a loop without end: fail
		// instead, so that a restart neither hangs nor spins.
		if need := w.indexOpenBytes(idxDir); known && avail < need {
			return fmt.Errorf("cannot open index: %d bytes free in %s, opening it needs about %d; free some space: %w", avail, w.dir, need, ErrDiskFull)
		}
		w.setLow(true, avail)
		return nil
	}
	w.createIfRoomLocked(avail, known)
	w.setLow(w.reserveBytes > 0 && !w.present, avail)
	return nil
}

// indexOpenBytes estimates what Pebble writes as it opens: an sstable of
// the memtables it replays from its WAL files (at most their size), plus
// room for its MANIFEST and OPTIONS files and a new WAL.
func (w *diskWatch) indexOpenBytes(idxDir string) int64 {
	n := int64(64 << 10)
	names, _ := w.fs.List(idxDir)
	for _, name := range names {
		if strings.HasSuffix(name, ".log") {
			if st, err := w.fs.Stat(w.fs.PathJoin(idxDir, name)); err == nil {
				n += st.Size()
			}
		}
	}
	return n
}

// usage returns the free bytes of the data directory's filesystem, if the
// FS can tell.
func (w *diskWatch) usage() (int64, bool) {
	u, err := w.fs.GetDiskUsage(w.dir)
	if err != nil {
		w.avail.Store(-1)
		return -1, false
	}
	avail := int64(min(u.AvailBytes, math.MaxInt64))
	w.avail.Store(avail)
	return avail, true
}

// release deletes the reserve, if it is there, and refuses appends until
// it is back. It reports whether it deleted it (so that a failed write is
// worth retrying).
func (w *diskWatch) release(why string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := w.releaseLocked(why)
	if w.reserveBytes > 0 {
		w.setLow(true, w.avail.Load())
	}
	return ok
}

func (w *diskWatch) releaseLocked(why string) bool {
	if !w.present {
		return false
	}
	w.present = false
	if err := w.fs.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Error("cannot remove reserve file", "path", w.path, "err", err)
		return false
	}
	w.log.Warn("disk full: reserve file deleted to give the index room to record deliveries and reclaim", "path", w.path, "bytes", w.reserveBytes, "why", why)
	return true
}

// createIfRoomLocked makes the reserve if it is missing and free space
// (when known) leaves the floor after it.
func (w *diskWatch) createIfRoomLocked(avail int64, known bool) {
	if w.reserveBytes == 0 || w.present || known && avail < w.reserveBytes+w.floorBytes {
		return
	}
	if err := w.createLocked(); err != nil {
		if !w.createFailing {
			w.createFailing = true
			w.log.Warn("cannot make the reserve file; appends wait for it", "path", w.path, "err", err)
		} else {
			w.log.Debug("cannot make the reserve file", "path", w.path, "err", err)
		}
		return
	}
	w.createFailing = false
	w.log.Info("reserve file made", "path", w.path, "bytes", w.reserveBytes)
}

func (w *diskWatch) createLocked() error {
	f, err := w.fs.Create(w.path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("cannot create reserve file: %w", err)
	}
	err = allocateFile(f, w.reserveBytes)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(w.fs, w.dir)
	}
	if err != nil {
		w.fs.Remove(w.path)
		return fmt.Errorf("cannot write reserve file: %w", err)
	}
	w.present = true
	return nil
}

// writeZeros fills f with n zero bytes from its current offset.
func writeZeros(f vfs.File, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k, err := f.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}

// setLow sets whether appends are refused for lack of space and logs a
// change. It reports whether it changed.
func (w *diskWatch) setLow(low bool, avail int64) bool {
	if w.low.Swap(low) == low {
		return false
	}
	if low {
		w.log.Warn("free disk space low: appends fail until delivery lets reclaim free space or space is added",
			"dir", w.dir, "avail_bytes", avail, "floor_bytes", w.floorBytes, "reserve_bytes", w.reserveBytes)
	} else {
		w.log.Info("free disk space back: appends resume", "dir", w.dir, "avail_bytes", avail)
	}
	return true
}

// noteWritten counts segment bytes and wakes the disk loop once a quarter
// of the floor was written since its last check. Called per group.
func (w *diskWatch) noteWritten(n int64) {
	if w.floorBytes > 0 && w.wrote.Add(n) >= w.floorBytes/4 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// checkDiskFull is Append's check (an atomic load, no system call):
// ErrDiskFull while space is low.
func (e *Engine) checkDiskFull() error {
	if !e.disk.low.Load() {
		return nil
	}
	e.stats.rejectedDiskFull.Add(1)
	return fmt.Errorf("cannot append: %w (%d bytes free, floor %d, reserve %d)", ErrDiskFull, e.disk.avail.Load(), e.disk.floorBytes, e.disk.reserveBytes)
}

// diskLoop checks free space and repairs a broken engine periodically.
func (e *Engine) diskLoop() {
	defer e.wg.Done()
	t := time.NewTicker(e.disk.interval)
	defer t.Stop()
	for {
		select {
		case <-e.closing:
			return
		case <-t.C:
		case <-e.disk.wake:
		}
		e.checkSpace()
		e.repair()
		e.disk.ticks.Add(1)
	}
}

// checkSpace refreshes the free space, makes the reserve again when there
// is room, and refuses or resumes appends.
func (e *Engine) checkSpace() {
	w := e.disk
	w.wrote.Store(0)
	avail, known := w.usage()
	w.mu.Lock()
	had := w.present
	w.createIfRoomLocked(avail, known)
	if known && w.present && !had {
		avail -= w.reserveBytes
	}
	low := w.reserveBytes > 0 && !w.present || known && avail < w.floorBytes
	w.mu.Unlock()
	e.dedup.mergesPaused.Store(low) // a merge may double a generation's bytes
	if w.setLow(low, avail) && low {
		e.dropKeptFiles()
	}
}

// repair seals a broken active segment and starts a new one (as the next
// append would). When the disk is too full even for that, the reserve
// goes: sealing is what lets reclaim delete the segment once consumers
// are past it.
func (e *Engine) repair() {
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	if e.broken == nil || e.closed.Load() {
		return
	}
	err := e.readyLocked()
	if err != nil && isDiskFull(err) && e.disk.release("sealing the failed segment found the disk full") {
		err = e.readyLocked()
	}
	if err != nil {
		e.log.Debug("repair of the active segment failed; retrying", "err", err)
	}
}

// startSegment is Open's start of a fresh active segment. On a full disk
// it deletes the reserve and tries again; if the disk is still too full,
// the engine opens broken: reads, consumers and reclaim work, appends fail
// with ErrUnavailable until the disk loop repairs it.
func (e *Engine) startSegment() error {
	err := e.rotateLocked()
	if err != nil && isDiskFull(err) && e.disk.release("starting a segment at open found the disk full") {
		err = e.rotateLocked()
	}
	if err == nil || !isDiskFull(err) {
		return err
	}
	e.broken = err
	e.stats.writeErrors.Add(1)
	e.disk.setLow(true, e.disk.avail.Load())
	e.log.Error("disk full at open: serving reads and deliveries; appends fail until space returns", "err", err)
	return nil
}

// dropKeptFiles deletes the reclaimed segment files kept for reuse: while
// space is low their room is worth more to the index than to fsync.
func (e *Engine) dropKeptFiles() {
	e.spareMu.Lock()
	kept := e.free
	e.free = nil
	for _, k := range kept {
		e.keptBytes.Add(-k.size)
	}
	e.spareMu.Unlock()
	for _, k := range kept {
		e.removeFile(k.id)
	}
}

// noteReclaim logs the periodic reclaim's outcome once per episode of
// failures, not once per tick. Called by reclaimLoop only.
func (e *Engine) noteReclaim(err error) {
	w := e.disk
	switch {
	case err != nil && !w.reclaimFailing:
		w.reclaimFailing = true
		e.log.Warn("reclaim failed; retrying every interval", "err", err)
	case err != nil:
		e.log.Debug("reclaim failed", "err", err)
	case w.reclaimFailing:
		w.reclaimFailing = false
		e.log.Info("reclaim works again")
	}
}

// isDiskFull reports whether err is the filesystem's "no space left".
func isDiskFull(err error) bool { return errors.Is(err, syscall.ENOSPC) }
