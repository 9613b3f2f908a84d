package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// I/O error tests: the engine runs on errorfs over an in-memory FS, and a
// toggled injector fails chosen operations with ENOSPC. Reopening after a
// test uses the in-memory FS directly.

// faultFS injects ENOSPC into the operations match accepts while on.
type faultFS struct {
	mem    *vfs.MemFS
	fs     *errorfs.FS
	toggle *errorfs.Toggle
	hits   atomic.Int64
}

func newFaultFS(match func(errorfs.Op) bool) *faultFS {
	f := &faultFS{mem: vfs.NewMem()}
	f.toggle = &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !match(op) {
			return nil
		}
		f.hits.Add(1)
		return fmt.Errorf("injected: op %d on %s: %w", op.Kind, op.Path, syscall.ENOSPC)
	})}
	f.fs = errorfs.Wrap(f.mem, f.toggle)
	return f
}

func isSegment(p string) bool {
	return strings.HasPrefix(p, "/data/log/") && strings.HasSuffix(p, ".seg")
}

func opIs(op errorfs.Op, kinds ...errorfs.OpKind) bool {
	for _, k := range kinds {
		if op.Kind == k {
			return true
		}
	}
	return false
}

// expectUnavailable checks that an append fails cleanly with
// ErrUnavailable and leaves the log as it was.
func expectUnavailable(t *testing.T, e *Engine, ids []string, last uint64) {
	t.Helper()
	res, err := e.Append(context.Background(), recsFor(ids))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append during I/O errors: %+v %v, want ErrUnavailable", res, err)
	}
	if res != (AppendResult{}) {
		t.Fatalf("failed append reports %+v", res)
	}
	if e.LastSeq() != last {
		t.Fatalf("LastSeq moved from %d to %d on a failed append", last, e.LastSeq())
	}
	if e.Stats().Healthy {
		t.Fatalf("Stats().Healthy is true while appends fail")
	}
}

func batchIDs(prefix string, from, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, from+i)
	}
	return ids
}

// checkRecovered appends the batch that failed, checks it gets the next
// seqs (no gap, no duplicate, not taken for a duplicate of itself), that the
// log holds exactly the acknowledged records, and that a reopen on the
// underlying FS shows the same and appends on.
func checkRecovered(t *testing.T, f *faultFS, e *Engine, acked, failed []string) {
	t.Helper()
	last := e.LastSeq()
	recs := recsFor(failed)
	res, err := e.Append(context.Background(), recs)
	if err != nil || res.Stored != len(failed) || recs[0].Seq != last+1 || res.LastSeq != last+uint64(len(failed)) {
		t.Fatalf("append after the errors stopped: %+v %v (first seq %d, want %d)", res, err, recs[0].Seq, last+1)
	}
	if !e.Stats().Healthy {
		t.Fatalf("not healthy after a successful append")
	}
	acked = append(acked, failed...)
	expectLog(t, e, 1, acked)
	for _, r := range readAll(t, e, 1) {
		if x, err := e.Read(r.Seq, r.Pos); err != nil || x.Seq != r.Seq {
			t.Fatalf("read %d at %s: %v", r.Seq, r.Pos, err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	e2, logs := openLogged(t, f.mem)
	defer e2.Close()
	expectLog(t, e2, 1, acked)
	if st := e2.Stats(); st.LostRecords != 0 || st.TruncatedBytes != 0 {
		t.Fatalf("reopen: lost %d, truncated %d\n%s", st.LostRecords, st.TruncatedBytes, logs.all())
	}
	acked = append(acked, appendIDs(t, e2, "after", 0, 30, 10)...)
	expectLog(t, e2, 1, acked)
}

// TestErrorFSSegmentWriteENOSPC fails every write to segment files: appends
// fail with ErrUnavailable and store nothing; once the disk has room again
// the next append works and numbering goes on without a gap.
func TestErrorFSSegmentWriteENOSPC(t *testing.T) {
	f := newFaultFS(func(op errorfs.Op) bool {
		return isSegment(op.Path) && opIs(op, errorfs.OpFileWrite, errorfs.OpFileWriteAt)
	})
	e, logs := openLogged(t, f.fs)
	acked := appendIDs(t, e, "a", 0, 120, 12)
	last := e.LastSeq()
	f.toggle.On()
	failed := batchIDs("f", 0, 20)
	res, err := e.Append(context.Background(), recsFor(failed))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append on a full disk: %+v %v", res, err)
	}
	expectUnavailable(t, e, failed, last) // the retry must seal and start a new segment: fails too
	expectUnavailable(t, e, batchIDs("g", 0, 3), last)
	if st := e.Stats(); st.WriteErrors == 0 {
		t.Fatalf("no write errors counted")
	}
	if !strings.Contains(logs.all(), "segment write failed") {
		t.Fatalf("write failure not logged:\n%s", logs.all())
	}
	// Readers see exactly the acknowledged records meanwhile.
	expectLog(t, e, 1, acked)
	f.toggle.Off()
	checkRecovered(t, f, e, acked, failed)
}

// TestErrorFSSegmentSyncFailure fails fsync of segment files: the group's
// bytes are in the file but not acknowledged; the segment is sealed before
// them, so they are never read, and their seqs go to the next records.
func TestErrorFSSegmentSyncFailure(t *testing.T) {
	match := func(op errorfs.Op) bool {
		return isSegment(op.Path) && opIs(op, errorfs.OpFileSync, errorfs.OpFileSyncData)
	}
	t.Run("recover-in-place", func(t *testing.T) {
		f := newFaultFS(match)
		e, _ := openLogged(t, f.fs)
		acked := appendIDs(t, e, "a", 0, 33, 11) // the segment is not full
		f.toggle.On()
		failed := batchIDs("f", 0, 30)
		expectUnavailable(t, e, failed, e.LastSeq())
		expectUnavailable(t, e, failed, e.LastSeq())
		expectLog(t, e, 1, acked)
		f.toggle.Off()
		checkRecovered(t, f, e, acked, failed)
	})
	// A restart before any append repaired the engine: the failed group's
	// frames are complete in the active segment, so recovery may keep them
	// (a record whose append failed may be stored, like one whose
	// acknowledgement was lost). They must then be stored once: a resend is
	// a duplicate and the seqs stay consecutive.
	t.Run("restart-before-recovery", func(t *testing.T) {
		f := newFaultFS(match)
		e, _ := openLogged(t, f.fs)
		acked := appendIDs(t, e, "a", 0, 33, 11) // the segment is not full
		last := e.LastSeq()
		f.toggle.On()
		failed := batchIDs("f", 0, 30)
		expectUnavailable(t, e, failed, last)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e, _ = openLogged(t, f.mem)
		defer e.Close()
		got := readAll(t, e, 1)
		t.Logf("after restart the log holds %d acknowledged and %d failed records", len(acked), len(got)-len(acked))
		if len(got) != len(acked) && len(got) != len(acked)+len(failed) {
			t.Fatalf("after restart the log holds %d records, want %d or %d", len(got), len(acked), len(acked)+len(failed))
		}
		res, err := e.Append(context.Background(), recsFor(failed))
		if err != nil || res.Stored+res.Duplicates != len(failed) {
			t.Fatalf("resend: %+v %v", res, err)
		}
		expectLog(t, e, 1, append(acked, failed...))
		if e.LastSeq() != last+uint64(len(failed)) {
			t.Fatalf("LastSeq %d, want %d", e.LastSeq(), last+uint64(len(failed)))
		}
	})
}

// TestErrorFSRotationFailure fails the creation of the next segment (the
// file itself, its header, or the directory sync) when the active one is
// full: the append fails with ErrUnavailable, the engine reports itself
// unhealthy, and works again once the FS does.
func TestErrorFSRotationFailure(t *testing.T) {
	cases := []struct {
		name  string
		match func(errorfs.Op) bool
	}{
		{"create", func(op errorfs.Op) bool { return isSegment(op.Path) && op.Kind == errorfs.OpCreate }},
		{"header-write", headerWrites()},
		{"dir-sync", func(op errorfs.Op) bool { return op.Path == "/data/log" && op.Kind == errorfs.OpFileSync }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			armed := atomic.Bool{}
			f := newFaultFS(func(op errorfs.Op) bool { return armed.Load() && tc.match(op) })
			f.toggle.On()
			e, _ := openLogged(t, f.fs)
			// The spare file Open asked for is made in the background:
			// wait for it and drop it, so that the next rotation creates
			// its file (and the next spare) while the faults are armed.
			waitSpare(t, e)
			e.dropSpareFiles()
			segs := e.Stats().SegmentsCreated
			armed.Store(true)
			// Fill segments until an append needs a new one.
			var acked []string
			var failed []string
			for i := 0; ; i++ {
				ids := batchIDs("a", i*10, 10)
				res, err := e.Append(context.Background(), recsFor(ids))
				if err != nil {
					if !errors.Is(err, ErrUnavailable) {
						t.Fatalf("append: %v", err)
					}
					failed = ids
					break
				}
				if res.Stored != 10 {
					t.Fatalf("append: %+v", res)
				}
				acked = append(acked, ids...)
				if i > 1000 {
					t.Fatalf("no rotation after %d appends", i)
				}
			}
			if f.hits.Load() == 0 {
				t.Fatalf("nothing injected")
			}
			if e.Stats().SegmentsCreated != segs {
				t.Fatalf("a segment was created")
			}
			expectUnavailable(t, e, failed, e.LastSeq())
			expectLog(t, e, 1, acked)
			armed.Store(false)
			checkRecovered(t, f, e, acked, failed)
		})
	}
}

// waitSpare waits until the engine has a spare segment file ready.
func waitSpare(t *testing.T, e *Engine) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		e.writeMu.Lock()
		ready := e.spare != nil
		e.writeMu.Unlock()
		if ready {
			return
		}
	}
	t.Fatal("no spare segment file after 10s")
}

// headerWrites matches writes to segment files created while it is
// called: the header writes of new segments.
func headerWrites() func(errorfs.Op) bool {
	var mu sync.Mutex
	fresh := make(map[string]bool)
	return func(op errorfs.Op) bool {
		if !isSegment(op.Path) {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		switch op.Kind {
		case errorfs.OpCreate:
			fresh[op.Path] = true
		case errorfs.OpFileWrite:
			return fresh[op.Path]
		}
		return false
	}
}

// TestErrorFSIndexFlushFailure fails the index's sstable writes (memtable
// flushes): Pebble retries them in the background, appends and consumer
// commits go on (the WAL has the data), and nothing is lost once the
// errors stop.
func TestErrorFSIndexFlushFailure(t *testing.T) {
	f := newFaultFS(func(op errorfs.Op) bool {
		return strings.HasPrefix(op.Path, "/data/index/") && strings.HasSuffix(op.Path, ".sst") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite
	})
	e, _ := openLogged(t, f.fs)
	c := consumerOf(t, e, "c")
	acked := appendIDs(t, e, "a", 0, 200, 20)
	f.toggle.On()
	flushed, err := e.db.AsyncFlush()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); f.hits.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no flush write failed")
		}
	}
	acked = append(acked, appendIDs(t, e, "b", 0, 200, 20)...)
	all := expectLog(t, e, 1, acked)
	tx := c.Begin()
	tx.Put(Entry{Seq: all[10].Seq, Pos: all[10].Pos, State: StateFailed, Key: all[10].Key, DueAt: 5})
	tx.Advance(all[300].Seq, all[300].Pos)
	if err := tx.CommitSync(); err != nil {
		t.Fatalf("consumer commit while flushes fail: %v", err)
	}
	select {
	case <-flushed:
		t.Fatalf("the flush succeeded while sstable writes fail")
	default:
	}
	f.toggle.Off()
	if err := e.db.Flush(); err != nil {
		t.Fatalf("flush after the errors stopped: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, _ = openLogged(t, f.mem)
	defer e.Close()
	expectLog(t, e, 1, acked)
	c = consumerOf(t, e, "c")
	if cur, _ := c.Cursor(); cur != all[300].Seq {
		t.Fatalf("cursor %d, want %d", cur, all[300].Seq)
	}
	if en, err := c.Entry(all[10].Seq); err != nil || en.State != StateFailed {
		t.Fatalf("entry: %+v %v", en, err)
	}
	if res, err := e.Append(context.Background(), recsFor(acked[:5])); err != nil || res.Duplicates != 5 {
		t.Fatalf("dedup after flush failures: %+v %v", res, err)
	}
}

// TestErrorFSIndexWALFailure documents what a failed write or sync of the
// index's WAL does. It runs in a child process because the outcome is
// fatal, on a real directory so that the parent can reopen what the child
// left.
//
// Pebble v2.1.7 treats every commit-pipeline error as fatal: DB.Apply calls
// Logger.Fatalf("pebble: fatal commit error: ...") (db.go, after
// commitPipeline.Commit), since the failed batch stays in the pipeline's
// pending queue and later commits would block behind it. The WAL is
// written by a background goroutine, so a failed WAL write is first
// invisible: unsynced commits (the engine's dedup keys, Txn.Commit) return
// nil, their data only in the memtable. The next commit that waits for a
// WAL sync (rotation's manifest batch, Txn.CommitSync, Consumer, Reclaim,
// Replay/Purge), or any commit once the error reaches LogWriter.err, gets
// the error, and Pebble calls Fatalf. WAL rotation errors panic outright
// (DB.rotateWAL) and MANIFEST write errors call Fatalf in logAndApply, also
// on Pebble's own flush goroutines. Fatalf must not return (Pebble would
// go on as if the commit were done), so the engine's pebbleLogger panics
// and the process exits: on whichever goroutine made the commit (here the
// test's, in CommitSync; the committer's on a rotation). The engine cannot
// turn this into ErrUnavailable: Pebble stays unusable until reopened, and
// some of the fatal calls are on goroutines the engine does not own.
//
// What the test holds the engine to: the process dies only of that Pebble
// error, and a restart on the same files recovers every acknowledged
// record, including those acknowledged while the WAL was failing (their
// segment was synced; their dedup keys are replayed from the log).
func TestErrorFSIndexWALFailure(t *testing.T) {
	if dir := os.Getenv("SLUICE_ERRORFS_CHILD_DIR"); dir != "" {
		walFailureChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestErrorFSIndexWALFailure$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "SLUICE_ERRORFS_CHILD_DIR="+dir)
	out, err := cmd.CombinedOutput()
	t.Logf("child (exit %v):\n%s", err, childSummary(string(out)))
	if err == nil {
		t.Fatalf("the child survived a failed index WAL: Pebble no longer treats it as fatal; make this a recovery test")
	}
	if !strings.Contains(string(out), "pebble: fatal commit error") {
		t.Fatalf("child died, but not of Pebble's fatal commit error")
	}
	var acked []string
	for _, line := range strings.Split(string(out), "\n") {
		var prefix string
		var from, n int
		if _, err := fmt.Sscanf(line, "CHILD-ACK %s %d %d", &prefix, &from, &n); err == nil {
			acked = append(acked, batchIDs(prefix, from, n)...)
		}
	}
	if len(acked) <= 100 {
		t.Fatalf("child acknowledged %d records; expected appends to succeed while the WAL fails", len(acked))
	}
	o := testOptions(vfs.Default)
	o.Dir = dir
	e, err := Open(o)
	if err != nil {
		t.Fatalf("reopen after the child died: %v", err)
	}
	defer e.Close()
	expectLog(t, e, 1, acked)
	if res, err := e.Append(context.Background(), recsFor(acked[len(acked)-5:])); err != nil || res.Duplicates != 5 {
		t.Fatalf("dedup of records acknowledged while the WAL failed: %+v %v", res, err)
	}
	appendIDs(t, e, "after", 0, 10, 10)
}

// childSummary keeps the child's progress lines, the panic and the frames
// of the engine's code.
func childSummary(out string) string {
	var keep []string
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if (strings.HasPrefix(l, "CHILD") && !strings.HasPrefix(l, "CHILD-ACK")) || strings.HasPrefix(l, "panic:") ||
			strings.HasPrefix(l, "github.com/sluice-cdi/sluice/engine.") && i+1 < len(lines) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// walFailureChild runs in the child process of TestErrorFSIndexWALFailure.
func walFailureChild(dir string) {
	var on atomic.Bool
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if on.Load() && strings.Contains(op.Path, "/index/") && strings.HasSuffix(op.Path, ".log") &&
			opIs(op, errorfs.OpFileWrite, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpCreate) {
			return fmt.Errorf("injected: op %d on %s: %w", op.Kind, op.Path, syscall.ENOSPC)
		}
		return nil
	}))
	opts := testOptions(fs)
	opts.Dir = dir
	e, err := Open(opts)
	if err != nil {
		fmt.Println("CHILD: open:", err)
		os.Exit(3)
	}
	c, err := e.Consumer("c")
	if err != nil {
		fmt.Println("CHILD: consumer:", err)
		os.Exit(3)
	}
	appendBatch := func(prefix string, from int) error {
		_, err := e.Append(context.Background(), recsFor(batchIDs(prefix, from, 10)))
		if err == nil {
			fmt.Printf("CHILD-ACK %s %d %d\n", prefix, from, 10)
		}
		return err
	}
	for i := range 10 {
		if err := appendBatch("a", i*10); err != nil {
			fmt.Println("CHILD: append:", err)
			os.Exit(3)
		}
	}
	fmt.Println("CHILD: injecting WAL errors")
	on.Store(true)
	for i := range 50 {
		err := appendBatch("b", i*10)
		fmt.Printf("CHILD: append %d during WAL errors: %v\n", i, err)
		tx := c.Begin()
		tx.Advance(e.LastSeq()+1, 0)
		fmt.Printf("CHILD: unsynced consumer commit %d: %v\n", i, tx.Commit())
		tx = c.Begin()
		tx.Advance(e.LastSeq()+1, 0)
		fmt.Printf("CHILD: synced consumer commit %d: %v\n", i, tx.CommitSync())
	}
	fmt.Println("CHILD: survived")
}

// TestErrorFSRandomFaults runs concurrent appenders, each retrying a
// failed batch until it is stored (as a client would), while segment
// writes, syncs, creations and directory syncs fail at random moments.
// Every batch must end up stored exactly once (a retry is never taken for
// a duplicate of its failed attempt), with consecutive seqs, and nothing
// else may be readable, before and after a reopen.
func TestErrorFSRandomFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s, ok := crashEnvUint(t, "SLUICE_CRASH_SEED"); ok {
		seed = s
	}
	t.Logf("seed %d (replay: SLUICE_CRASH_SEED=%d go test ./engine -run 'TestErrorFSRandomFaults' -count=1 -v)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0xfa))
	var mode atomic.Int32
	f := newFaultFS(func(op errorfs.Op) bool {
		switch mode.Load() {
		case 1:
			return isSegment(op.Path) && op.Kind == errorfs.OpFileWrite
		case 2:
			return isSegment(op.Path) && opIs(op, errorfs.OpFileSync, errorfs.OpFileSyncData)
		case 3:
			return isSegment(op.Path) && op.Kind == errorfs.OpCreate
		case 4:
			return op.Path == "/data/log" && op.Kind == errorfs.OpFileSync
		case 5:
			return strings.HasPrefix(op.Path, "/data/log") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite
		}
		return false
	})
	f.toggle.On()
	e, _ := openLogged(t, f.fs)
	var mu sync.Mutex
	stored := make(map[uint64]string)
	var wg sync.WaitGroup
	var done atomic.Int32
	const appenders, batches = 4, 40
	for g := range appenders {
		wg.Add(1)
		grng := rand.New(rand.NewPCG(seed, uint64(g)))
		go func() {
			defer wg.Done()
			defer done.Add(1)
			next := 0
			for range batches {
				ids := batchIDs(fmt.Sprintf("g%d", g), next, 1+grng.IntN(40))
				next += len(ids)
				for attempt := 0; ; attempt++ {
					recs := recsFor(ids)
					res, err := e.Append(context.Background(), recs)
					if err != nil {
						if !errors.Is(err, ErrUnavailable) || attempt > 10000 {
							t.Errorf("append: %v (attempt %d)", err, attempt)
							return
						}
						time.Sleep(50 * time.Microsecond)
						continue
					}
					if res.Stored != len(ids) {
						t.Errorf("retried batch stored as %+v", res)
						return
					}
					mu.Lock()
					for _, r := range recs {
						stored[r.Seq] = string(r.MessageID)
					}
					mu.Unlock()
					break
				}
			}
		}()
	}
	for done.Load() < appenders {
		if rng.IntN(3) == 0 {
			mode.Store(int32(1 + rng.IntN(5)))
		} else {
			mode.Store(0)
		}
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Microsecond)
	}
	mode.Store(0)
	wg.Wait()
	if t.Failed() {
		return
	}
	if f.hits.Load() == 0 {
		t.Fatalf("no fault injected")
	}
	ids := make([]string, len(stored))
	for seq, m := range stored {
		if seq == 0 || seq > uint64(len(ids)) {
			t.Fatalf("seq %d outside 1..%d", seq, len(ids))
		}
		ids[seq-1] = m
	}
	t.Logf("%d records, %d faults injected, %d write errors", len(ids), f.hits.Load(), e.Stats().WriteErrors)
	expectLog(t, e, 1, ids)
	checkRecovered(t, f, e, ids, batchIDs("final", 0, 5))
}

// A dedup index batch that cannot be written fails no append: its keys stay
// in memory (duplicates are still found), the checkpoint waits, and the
// keys go to the index once the disk works again.
func TestErrorFSDedupIndexBatchFailure(t *testing.T) {
	f := newFaultFS(func(op errorfs.Op) bool {
		return strings.HasPrefix(op.Path, "/data/dedup/") && op.Kind.ReadOrWrite() == errorfs.OpIsWrite
	})
	e, logs := openLogged(t, f.fs) // index batches of 100 keys
	f.toggle.On()
	acked := appendIDs(t, e, "a", 0, 400, 20)
	if f.hits.Load() == 0 {
		t.Fatal("no index batch write failed")
	}
	if got := e.dedup.indexed.Load(); got >= e.LastSeq() {
		t.Fatalf("indexed through %d of %d while every batch failed", got, e.LastSeq())
	}
	if res, err := e.Append(context.Background(), recsFor(acked)); err != nil || res.Duplicates != len(acked) {
		t.Fatalf("re-append while index batches fail: %+v %v", res, err)
	}
	if !strings.Contains(logs.all(), "dedup index write failed") {
		t.Errorf("the failed index batch was not logged:\n%s", logs.all())
	}
	f.toggle.Off()
	e.writeMu.Lock()
	e.drainLocked()
	err := e.dedup.sync(time.Now())
	e.writeMu.Unlock()
	if err != nil {
		t.Fatalf("index batch after the disk recovered: %v", err)
	}
	if got := e.dedup.indexed.Load(); got != e.LastSeq() {
		t.Fatalf("indexed through %d of %d after the disk recovered", got, e.LastSeq())
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2, _ := openLogged(t, f.mem)
	defer e2.Close()
	if res, err := e2.Append(context.Background(), recsFor(acked)); err != nil || res.Duplicates != len(acked) {
		t.Fatalf("re-append after reopen: %+v %v", res, err)
	}
}

// TestErrorFSStragglerFileFailure fails the straggler file's writes: reclaim
// still deletes the segment (a full disk must not stop it), says so, and
// the index keeps the straggler.
func TestErrorFSStragglerFileFailure(t *testing.T) {
	f := newFaultFS(func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, stragglerExt) && opIs(op, errorfs.OpFileWrite, errorfs.OpFileSync)
	})
	logs := &logCapture{}
	o := crashOptions(f.fs, logs.logger())
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 600, 30)
	all := expectLog(t, e, 1, ids)
	victim := all[5]
	tx := c.Begin()
	tx.Put(Entry{Seq: victim.Seq, Pos: victim.Pos, State: StateFailed, Key: victim.Key, ReceivedAt: victim.ReceivedAt, DueAt: 1})
	tx.Advance(e.LastSeq()+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	f.toggle.On()
	n, err := e.Reclaim()
	f.toggle.Off()
	if err != nil || n == 0 || f.hits.Load() == 0 {
		t.Fatalf("reclaim: %d segments, %v, %d injected faults", n, err, f.hits.Load())
	}
	if !strings.Contains(logs.all(), "cannot keep a copy of stragglers") {
		t.Fatalf("the failed straggler file was not logged:\n%s", logs.all())
	}
	rec, err := e.Read(victim.Seq, victim.Pos)
	if err != nil || string(rec.MessageID) != string(victim.MessageID) {
		t.Fatalf("read of the straggler from the index: %v %q", err, rec.MessageID)
	}
}
