package engine

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Full-disk tests (diskfull.go) run on smallDisk: an in-memory filesystem
// of a fixed size that fails writes with ENOSPC past it, as a real one
// does, and says how much is free.

// smallDisk is a MemFS that holds capBytes: a write that would take the
// files' total size past it writes what fits and fails with ENOSPC; a
// remove frees its file's bytes at once. Every file counts, the engine's
// and any other (another process filling the disk).
type smallDisk struct {
	*vfs.MemFS
	mu       sync.Mutex // serializes writes with the free-space check
	capBytes int64
	enospc   atomic.Int64 // ENOSPC errors returned
}

func newSmallDisk(capBytes int64) *smallDisk {
	return &smallDisk{MemFS: vfs.NewMem(), capBytes: capBytes}
}

// usedLocked sums the sizes of every file.
func (d *smallDisk) usedLocked() int64 {
	var walk func(dir string) int64
	walk = func(dir string) int64 {
		names, err := d.MemFS.List(dir)
		if err != nil {
			return 0
		}
		var n int64
		for _, name := range names {
			p := d.PathJoin(dir, name)
			st, err := d.MemFS.Stat(p)
			switch {
			case err != nil:
			case st.IsDir():
				n += walk(p)
			default:
				n += st.Size()
			}
		}
		return n
	}
	return walk("/")
}

func (d *smallDisk) GetDiskUsage(string) (vfs.DiskUsage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	used := d.usedLocked()
	return vfs.DiskUsage{TotalBytes: uint64(d.capBytes), UsedBytes: uint64(used), AvailBytes: uint64(max(d.capBytes-used, 0))}, nil
}

func (d *smallDisk) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := d.MemFS.Create(name, cat)
	if err != nil {
		return nil, err
	}
	return &smallFile{File: f, d: d, name: name}, nil
}

func (d *smallDisk) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := d.MemFS.OpenReadWrite(name, cat, opts...)
	if err != nil {
		return nil, err
	}
	return &smallFile{File: f, d: d, name: name}, nil
}

func (d *smallDisk) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := d.MemFS.ReuseForWrite(oldname, newname, cat)
	if err != nil {
		return nil, err
	}
	return &smallFile{File: f, d: d, name: newname}, nil
}

// fill writes a file of zeros at path until the disk is full.
func (d *smallDisk) fill(t *testing.T, path string) {
	t.Helper()
	if err := d.MkdirAll(d.PathDir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := d.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return
		}
	}
}

// smallFile tracks its offset (MemFS files share one for reads and
// writes) to tell a write over existing bytes from one that grows the
// file.
type smallFile struct {
	vfs.File
	d    *smallDisk
	name string
	pos  int64
}

func (f *smallFile) Read(p []byte) (int, error) {
	n, err := f.File.Read(p)
	f.pos += int64(n)
	return n, err
}

func (f *smallFile) Write(p []byte) (int, error) {
	n, err := f.WriteAt(p, f.pos)
	f.pos += int64(n)
	return n, err
}

// WriteAt writes what fits and fails with ENOSPC for the rest.
func (f *smallFile) WriteAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	st, err := f.File.Stat()
	if err != nil {
		return 0, err
	}
	room := f.d.capBytes - f.d.usedLocked()
	fits := len(p)
	if grow := off + int64(len(p)) - st.Size(); grow > room {
		fits = int(max(st.Size()+room-off, 0))
	}
	n, err := f.File.WriteAt(p[:fits], off)
	if err == nil && fits < len(p) {
		f.d.enospc.Add(1)
		err = &os.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	return n, err
}

func (f *smallFile) Preallocate(off, n int64) error { return nil }

// diskFullOptions: a reserve of 128 KiB, a floor (negative: none), and
// every periodic task every millisecond so that the tests wait for
// conditions, not for time.
func diskFullOptions(d *smallDisk, logs *logCapture, floorBytes int64) Options {
	o := crashOptions(d, logs.logger())
	o.ReserveBytes = 128 << 10
	o.DiskFreeBytesMin = floorBytes
	o.DiskCheckInterval = time.Millisecond
	o.ReclaimInterval = time.Millisecond
	o.ReclaimActiveMinBytes = 1 // cut a consumed active segment of any size
	o.DedupIndexInterval = time.Millisecond
	return o
}

// waitUntil polls cond until it holds, failing after a minute.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// fillLog appends batches until an append fails, which must be with
// ErrUnavailable; it returns the acknowledged messageIds.
func fillLog(t *testing.T, e *Engine, prefix string) []string {
	t.Helper()
	var acked []string
	for i := 0; ; i++ {
		if i > 100000 {
			t.Fatalf("the disk never filled up")
		}
		ids := batchIDs(prefix, i*20, 20)
		res, err := e.Append(context.Background(), recsFor(ids))
		if err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("append on a full disk: %v, want ErrUnavailable", err)
			}
			if res != (AppendResult{}) {
				t.Fatalf("failed append reports %+v", res)
			}
			t.Logf("append %d failed: %v", i, err)
			return acked
		}
		if res.Stored != len(ids) {
			t.Fatalf("append: %+v", res)
		}
		acked = append(acked, ids...)
	}
}

// deliver reads every record from c's cursor, checks that the first are
// want, in order, and moves the cursor past them. It returns how many
// records follow them.
func deliver(t *testing.T, e *Engine, c *Consumer, want []string) int {
	t.Helper()
	cur, _ := c.Cursor()
	got := readAll(t, e, cur)
	if len(got) < len(want) {
		t.Fatalf("consumer reads %d records, want at least %d", len(got), len(want))
	}
	for i, id := range want {
		if r := got[i]; string(r.MessageID) != id {
			t.Fatalf("record %d (seq %d) is %q, want %q", i, r.Seq, r.MessageID, id)
		} else if err := checkRec(r); err != nil {
			t.Fatal(err)
		}
	}
	tx := c.Begin()
	tx.Advance(got[len(want)-1].Seq+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatalf("cursor commit: %v", err)
	}
	return len(got) - len(want)
}

// count returns how many lines were logged.
func (c *logCapture) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// TestDiskFullRecoversByItself fills a small disk through Append until it
// fails, then moves a consumer past everything and appends nothing more:
// the engine must reclaim, turn healthy and take appends again by itself,
// and every acknowledged record must have been delivered. With a floor,
// appends stop before the disk is full; without one ("enospc"), segment
// writes hit ENOSPC and the index needs the reserve to record the cursor
// and reclaim.
func TestDiskFullRecoversByItself(t *testing.T) {
	for _, tc := range []struct {
		name       string
		floorBytes int64
	}{{"floor", 64 << 10}, {"enospc", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSmallDisk(1 << 20)
			logs := &logCapture{}
			e, err := Open(diskFullOptions(d, logs, tc.floorBytes))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer func() { e.Close() }()
			c := consumerOf(t, e, "c")
			acked := fillLog(t, e, "a")
			if len(acked) < 1000 {
				t.Fatalf("only %d records fit", len(acked))
			}
			if tc.floorBytes < 0 && d.enospc.Load() == 0 {
				t.Fatalf("no write found the disk full")
			}
			// The failure shows: unhealthy, or (the disk loop checks every
			// millisecond and may have repaired it already, the reserve
			// giving room) counted.
			if st := e.Stats(); st.Healthy && st.WriteErrors == 0 && st.RejectedDiskFull == 0 {
				t.Fatalf("an append failed for lack of space and the engine shows nothing: %+v", st)
			}
			if n := deliver(t, e, c, acked); n != 0 {
				t.Fatalf("%d records stored beyond the acknowledged ones", n)
			}
			waitUntil(t, "reclaim and healthy without appends", func() bool {
				st := e.Stats()
				return st.Healthy && st.SegmentsDeleted > 0 && st.Segments == 1
			})
			st := e.Stats()
			if st.LostRecords != 0 {
				t.Fatalf("%d records lost", st.LostRecords)
			}
			t.Logf("recovered: %d records acknowledged, %d segments deleted, %d bytes free, %d ENOSPC errors",
				len(acked), st.SegmentsDeleted, st.DiskAvailBytes, d.enospc.Load())
			// Appends work again, numbered on without a gap, and the log
			// from the consumer's cursor holds exactly them.
			last := e.LastSeq()
			more := appendIDs(t, e, "b", 0, 200, 20)
			if e.LastSeq() != last+200 {
				t.Fatalf("LastSeq %d after 200 more, want %d", e.LastSeq(), last+200)
			}
			if n := deliver(t, e, c, more); n != 0 {
				t.Fatalf("%d records stored beyond the acknowledged ones", n)
			}
			if n := logs.count(); n > 12 {
				t.Fatalf("%d warning and error lines: a flood\n%s", n, logs.all())
			}
			if err := e.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			e, err = Open(diskFullOptions(d, logs, tc.floorBytes))
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			if st := e.Stats(); st.LostRecords != 0 || !st.Healthy || e.LastSeq() != last+200 {
				t.Fatalf("reopen: lost %d, healthy %v, LastSeq %d, want %d", st.LostRecords, st.Healthy, e.LastSeq(), last+200)
			}
		})
	}
}

// TestDiskFullOpen restarts an engine on a disk that something else filled
// up: Open succeeds, reads and cursor commits work, appends fail with
// ErrUnavailable (ErrDiskFull) and Healthy is false, without a busy loop
// or a flood of log lines, until space is freed; then it is healthy and
// takes appends by itself.
func TestDiskFullOpen(t *testing.T) {
	d := newSmallDisk(1 << 20)
	logs := &logCapture{}
	e, err := Open(diskFullOptions(d, logs, 64<<10))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	c := consumerOf(t, e, "c")
	acked := appendIDs(t, e, "a", 0, 400, 20)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	d.fill(t, "/other/filler")

	e, err = Open(diskFullOptions(d, logs, 64<<10))
	if err != nil {
		t.Fatalf("open on a full disk: %v\n%s", err, logs.all())
	}
	defer func() { e.Close() }()
	if _, err := d.Stat("/data/" + reserveFileName); err == nil {
		t.Fatalf("the reserve is still there on a full disk")
	}
	expectLog(t, e, 1, acked)
	// Delivery works: its cursor commits go to the index, in the
	// reserve's room.
	c = consumerOf(t, e, "c")
	deliver(t, e, c, acked[:200])
	for range 3 {
		if _, err := e.Append(context.Background(), recsFor(batchIDs("x", 0, 5))); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrDiskFull) {
			t.Fatalf("append on a full disk: %v, want ErrDiskFull (an ErrUnavailable)", err)
		}
	}
	if st := e.Stats(); st.Healthy || !st.DiskLow {
		t.Fatalf("healthy %v, disk low %v on a full disk", st.Healthy, st.DiskLow)
	}
	// Many disk checks later, still a handful of log lines and no
	// failed write per check.
	ticks, enospc, lines := e.disk.ticks.Load(), d.enospc.Load(), logs.count()
	waitUntil(t, "200 disk checks", func() bool { return e.disk.ticks.Load() >= ticks+200 })
	if n := logs.count() - lines; n > 0 {
		t.Fatalf("%d warning and error lines in 200 checks of a full disk: a flood\n%s", n, logs.all())
	}
	if n := d.enospc.Load() - enospc; n > 2 {
		t.Fatalf("%d writes failed with ENOSPC in 200 checks: retrying in a loop", n)
	}
	if n := logs.count(); n > 6 {
		t.Fatalf("%d warning and error lines: a flood\n%s", n, logs.all())
	}
	if err := d.Remove("/other/filler"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "healthy once space is freed", func() bool { return e.Stats().Healthy })
	if _, err := d.Stat("/data/" + reserveFileName); err != nil {
		t.Fatalf("healthy without the reserve: %v", err)
	}
	more := appendIDs(t, e, "b", 0, 100, 20)
	if n := deliver(t, e, c, append(acked[200:], more...)); n != 0 {
		t.Fatalf("%d records stored beyond the acknowledged ones", n)
	}
	t.Logf("log lines:\n%s", logs.all())
}

// TestDiskFullOpenNoRoom restarts on a full disk with no reserve to
// delete: Pebble, which flushes the memtables it replays as it opens and
// retries a failed flush without end, would hang; Open fails at once with
// ErrDiskFull instead, and opens once space is freed.
func TestDiskFullOpenNoRoom(t *testing.T) {
	d := newSmallDisk(1 << 20)
	logs := &logCapture{}
	o := diskFullOptions(d, logs, 64<<10)
	o.ReserveBytes = -1
	e, err := Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	consumerOf(t, e, "c") // keeps the records from reclaim
	acked := appendIDs(t, e, "a", 0, 100, 20)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	d.fill(t, "/other/filler")
	if e, err := Open(o); !errors.Is(err, ErrDiskFull) {
		if err == nil {
			e.Close()
		}
		t.Fatalf("open with no room at all: %v, want ErrDiskFull", err)
	} else {
		t.Logf("open with no room at all: %v", err)
	}
	if err := d.Remove("/other/filler"); err != nil {
		t.Fatal(err)
	}
	e, err = Open(o)
	if err != nil {
		t.Fatalf("open once space is freed: %v", err)
	}
	defer e.Close()
	expectLog(t, e, 1, acked)
	appendIDs(t, e, "b", 0, 100, 20)
}
