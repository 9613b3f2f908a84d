package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine/crashfs"
)

// testOptions returns small-segment options on an in-memory crashable FS.
func testOptions(fs vfs.FS) Options {
	return Options{
		Dir:                "/data",
		FS:                 fs,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		SegmentBytesMax:    16 << 10,
		ReclaimInterval:    -1,
		DedupFilterBytes:   64 << 10,
		IndexCacheBytes:    1 << 20,
		IndexMemTableBytes: 1 << 20,
	}
}

func openTest(t testing.TB, fs vfs.FS) *Engine {
	t.Helper()
	e, err := Open(testOptions(fs))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return e
}

func rec(user string, i int) Record {
	return Record{
		ReceivedAt: time.Now().UnixNano(),
		Source:     []byte("web"),
		Type:       []byte("track"),
		MessageID:  fmt.Appendf(nil, "m-%s-%d", user, i),
		Key:        []byte(user),
		Payload:    fmt.Appendf(nil, `{"type":"track","userId":%q,"i":%d}`, user, i),
	}
}

func appendN(t testing.TB, e *Engine, user string, from, n int) {
	t.Helper()
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = rec(user, from+i)
	}
	if _, err := e.Append(context.Background(), recs); err != nil {
		t.Fatalf("append: %v", err)
	}
}

func readAll(t testing.TB, e *Engine, from uint64) []Record {
	t.Helper()
	r, err := e.NewReader(from, 0)
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	defer r.Close()
	var out []Record
	var batch []Record
	for {
		batch, err = r.Next(batch[:0], 100)
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		if len(batch) == 0 {
			return out
		}
		for _, x := range batch {
			x.Payload = append([]byte(nil), x.Payload...)
			x.MessageID = append([]byte(nil), x.MessageID...)
			x.Key = append([]byte(nil), x.Key...)
			x.Source, x.Type = nil, nil
			out = append(out, x)
		}
	}
}

func TestAppendReadAcrossSegments(t *testing.T) {
	fs := vfs.NewMem()
	e := openTest(t, fs)
	defer e.Close()
	for i := 0; i < 50; i++ {
		appendN(t, e, "u1", i*20, 20)
	}
	got := readAll(t, e, 1)
	if len(got) != 1000 {
		t.Fatalf("read %d records, want 1000", len(got))
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
		if want := fmt.Sprintf(`{"type":"track","userId":"u1","i":%d}`, i); string(r.Payload) != want {
			t.Fatalf("record %d payload %s, want %s", i, r.Payload, want)
		}
	}
	if st := e.Stats(); st.Segments < 3 {
		t.Fatalf("expected several segments, got %d", st.Segments)
	}
	// Random access by position.
	x, err := e.Read(got[777].Seq, got[777].Pos)
	if err != nil || string(x.Payload) != string(got[777].Payload) {
		t.Fatalf("read by pos: %v %s", err, x.Payload)
	}
	// From the middle, with and without a hint.
	if mid := readAll(t, e, 500); len(mid) != 501 || mid[0].Seq != 500 {
		t.Fatalf("read from 500: %d records, first %d", len(mid), mid[0].Seq)
	}
	r, _ := e.NewReader(600, got[599].Pos)
	b, err := r.Next(nil, 1)
	if err != nil || len(b) != 1 || b[0].Seq != 600 {
		t.Fatalf("hinted reader: %v %v", err, b)
	}
	r.Close()
}

func TestDedup(t *testing.T) {
	fs := vfs.NewMem()
	e := openTest(t, fs)
	recs := []Record{rec("a", 1), rec("a", 2), rec("a", 1)}
	res, err := e.Append(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 2 || res.Duplicates != 1 || recs[2].Seq != 0 {
		t.Fatalf("within batch: %+v seqs %d %d %d", res, recs[0].Seq, recs[1].Seq, recs[2].Seq)
	}
	res, _ = e.Append(context.Background(), []Record{rec("a", 2), rec("a", 3)})
	if res.Stored != 1 || res.Duplicates != 1 {
		t.Fatalf("across batches: %+v", res)
	}
	// Same messageId from another source is not a duplicate.
	other := rec("a", 1)
	other.Source = []byte("ios")
	if res, _ = e.Append(context.Background(), []Record{other}); res.Stored != 1 {
		t.Fatalf("other source: %+v", res)
	}
	e.Close()
	e = openTest(t, fs)
	defer e.Close()
	if res, _ = e.Append(context.Background(), []Record{rec("a", 3), rec("a", 4)}); res.Stored != 1 || res.Duplicates != 1 {
		t.Fatalf("after reopen: %+v", res)
	}
}

// An index of version 1 (dedup keys by source and messageId) or 2 (by
// generation and hash, in Pebble) is migrated on Open: its dedup keys and
// checkpoint go, the version becomes 3, and the dedup runs are rebuilt from
// the log, so events stored before the upgrade are still recognised as
// duplicates. An unknown version is refused.
func TestIndexMigration(t *testing.T) {
	for _, from := range []byte{1, 2} {
		t.Run(fmt.Sprintf("from-version-%d", from), func(t *testing.T) { testIndexMigration(t, from) })
	}
}

func testIndexMigration(t *testing.T, from byte) {
	fs := vfs.NewMem()
	e := openTest(t, fs)
	appendN(t, e, "a", 0, 50)
	// Make it look like the old version: its version, a key of the old
	// shape, and no dedup runs.
	old := append([]byte{prefixDedup, 0, 0, 0, 1, 3}, "webmsg-old"...)
	if from == 2 {
		old = append([]byte{prefixDedup, 0, 0, 1, 7}, bytes.Repeat([]byte{9}, 16)...)
	}
	if err := e.db.DeleteRange([]byte{prefixDedupRun}, []byte{prefixDedupRun + 1}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Set(old, make([]byte, 8), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Set(keyVersion, []byte{0, 0, 0, from}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = openTest(t, fs)
	v, closer, err := e.db.Get(keyVersion)
	if err != nil || binary.BigEndian.Uint32(v) != indexVersion {
		t.Fatalf("version after migration: %x %v", v, err)
	}
	closer.Close()
	if _, closer, err := e.db.Get(old); err == nil {
		closer.Close()
		t.Fatalf("a version %d dedup key survived the migration", from)
	}
	var again []Record
	for i := range 50 {
		again = append(again, rec("a", i))
	}
	res, err := e.Append(context.Background(), again)
	if err != nil || res.Duplicates != 50 || res.Stored != 0 {
		t.Fatalf("events stored before the migration appended again: %+v %v", res, err)
	}
	if err := e.db.Set(keyVersion, []byte{0, 0, 0, 9}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := Open(testOptions(fs)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of index version 9: %v, want ErrCorrupt", err)
	}
}

func TestConsumerTransitions(t *testing.T) {
	fs := vfs.NewMem()
	e := openTest(t, fs)
	defer e.Close()
	c, err := e.Consumer("hook")
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, e, "u", 0, 10)
	recs := readAll(t, e, 1)
	tx := c.Begin()
	tx.Put(Entry{Seq: 2, Pos: recs[1].Pos, State: StateFailed, Key: []byte("u"), DueAt: 100, Attempts: 1})
	tx.Put(Entry{Seq: 3, Pos: recs[2].Pos, State: StateSkipped, Key: []byte("u")})
	tx.SetBarrier([]byte("u"), 2)
	tx.Advance(5, recs[4].Pos)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if due, _ := c.Due(99, 10); len(due) != 0 {
		t.Fatalf("due too early: %v", due)
	}
	due, _ := c.Due(100, 10)
	if len(due) != 1 || due[0].Seq != 2 {
		t.Fatalf("due: %+v", due)
	}
	ke, _ := c.KeyEntries([]byte("u"), 10)
	if len(ke) != 2 || ke[0].Seq != 2 || ke[1].Seq != 3 {
		t.Fatalf("key entries: %+v", ke)
	}
	// Illegal: entry for an event already passed without one.
	tx = c.Begin()
	tx.Put(Entry{Seq: 1, State: StateFailed})
	if err := tx.Commit(); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("want illegal transition, got %v", err)
	}
	// Illegal: entry past the cursor.
	tx = c.Begin()
	tx.Put(Entry{Seq: 7, State: StateFailed})
	if err := tx.Commit(); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("want illegal transition past cursor, got %v", err)
	}
	// Failed -> aborted, skipped -> succeeded, barrier lifted.
	tx = c.Begin()
	tx.Put(Entry{Seq: 2, Pos: recs[1].Pos, State: StateAborted, Key: []byte("u"), Reason: "poison", LastStatus: 400})
	tx.Succeed(3)
	tx.ClearBarrier([]byte("u"))
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if c.Count(StateAborted) != 1 || c.Count(StateFailed) != 0 || c.Count(StateSkipped) != 0 {
		t.Fatalf("counts %d %d %d", c.Count(StateAborted), c.Count(StateFailed), c.Count(StateSkipped))
	}
	ab, _ := c.Aborted(0, 10, nil)
	if len(ab) != 1 || ab[0].Reason != "poison" {
		t.Fatalf("aborted: %+v", ab)
	}
	if n, err := c.Replay(5, nil); n != 1 || err != nil {
		t.Fatalf("replay: %d %v", n, err)
	}
	en, _ := c.Entry(2)
	if en.State != StateFailed || en.Flags&EntryReplayed == 0 || en.DueAt != 5 {
		t.Fatalf("replayed entry: %+v", en)
	}
	// Settling twice is illegal.
	tx = c.Begin()
	tx.Succeed(3)
	if err := tx.Commit(); !errors.Is(err, ErrIllegalTransition) {
		t.Fatalf("want illegal, got %v", err)
	}
}

// Dedup keys reach the index in batches behind the appends: a duplicate is
// found whether its key waits in memory, is being written, or is in the
// index, and the checkpoint follows the batches.
func TestDedupIndexBatches(t *testing.T) {
	o := testOptions(vfs.NewMem())
	o.DedupIndexBatchKeys = 7
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var batches [][]Record
	for i := 0; i < 40; i++ {
		recs := []Record{rec("u", 3*i), rec("u", 3*i+1), rec("u", 3*i+2), rec("u", 3*i)}
		res, err := e.Append(context.Background(), recs)
		if err != nil || res.Stored != 3 || res.Duplicates != 1 {
			t.Fatalf("batch %d: %+v %v", i, res, err)
		}
		batches = append(batches, recs[:3])
		// The batch just stored (in memory) and every earlier one.
		for j := i; j >= 0; j -= 1 + j/3 {
			again := []Record{rec("u", 3*j), rec("u", 3*j+1), rec("u", 3*j+2)}
			if res, err := e.Append(context.Background(), again); err != nil || res.Stored != 0 || res.Duplicates != 3 {
				t.Fatalf("re-append of batch %d after %d: %+v %v", j, i, res, err)
			}
		}
	}
	e.writeMu.Lock()
	err = e.dedup.sync(time.Now())
	flushes, ckpt := e.dedup.flushes, e.dedup.ckpt
	e.writeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if flushes < 5 || ckpt != e.LastSeq() {
		t.Fatalf("%d index batches, checkpoint %d: the keys did not go to the index in batches", flushes, ckpt)
	}
}

// Reclaim deletes a segment only once its records' dedup keys are in the
// index: after a crash, keys still in memory come back from the log past
// the checkpoint, and a deleted segment cannot be replayed.
func TestReclaimKeepsDedupKeys(t *testing.T) {
	fs := crashfs.New()
	o := testOptions(fs)
	o.SegmentBytesMax = 4096
	o.ReclaimActiveMinBytes = 1
	now := time.Now()
	o.Now = func() time.Time { return now }
	e, err := Open(o) // the default batch: no key reaches the index by count
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var ids []Record
	for i := 0; i < 200; i++ {
		ids = append(ids, rec("u", i))
	}
	for i := 0; i < len(ids); i += 10 {
		if _, err := e.Append(context.Background(), slices.Clone(ids[i:i+10])); err != nil {
			t.Fatal(err)
		}
	}
	// The periodic pass leaves keys the committer writes within the
	// second to it: their segments wait.
	if n, err := e.reclaim(false); err != nil || n != 0 {
		t.Fatalf("reclaim deleted %d segments before their keys were indexed: %v", n, err)
	}
	now = now.Add(2 * time.Second) // the engine idles: the pass writes them
	n, err := e.reclaim(false)     // no consumer: every sealed segment may go
	if err != nil || n == 0 {
		t.Fatalf("reclaim deleted %d segments: %v", n, err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	o.FS = crashed
	e2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	res, err := e2.Append(context.Background(), slices.Clone(ids))
	if err != nil || res.Stored != 0 || res.Duplicates != len(ids) {
		t.Fatalf("re-append after reclaim and crash: %+v %v (events of deleted segments forgotten)", res, err)
	}
}

// Concurrent appenders keep the committer's pipeline full (a group prepared
// while the one before it syncs) while small index batches come and go: an
// acknowledged event is a duplicate ever after, a new one never is.
func TestDedupConcurrentAppenders(t *testing.T) {
	fs := vfs.NewMem()
	o := testOptions(fs)
	o.DedupIndexBatchKeys = 5
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	const appenders, batches = 8, 60
	var wg sync.WaitGroup
	errc := make(chan error, appenders)
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("a%d", a)
			for i := range batches {
				recs := []Record{rec(user, 2*i), rec(user, 2*i+1)}
				if res, err := e.Append(context.Background(), recs); err != nil || res.Stored != 2 {
					errc <- fmt.Errorf("%s batch %d: %+v %v", user, i, res, err)
					return
				}
				j := i / 2 // an earlier batch again: duplicates
				if res, err := e.Append(context.Background(), []Record{rec(user, 2*j), rec(user, 2*j+1)}); err != nil || res.Duplicates != 2 {
					errc <- fmt.Errorf("%s re-append of batch %d after %d: %+v %v", user, j, i, res, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	all := func() []Record {
		var recs []Record
		for a := range appenders {
			for i := range 2 * batches {
				recs = append(recs, rec(fmt.Sprintf("a%d", a), i))
			}
		}
		return recs
	}
	if res, err := e.Append(context.Background(), all()); err != nil || res.Duplicates != appenders*2*batches {
		t.Fatalf("re-append of everything: %+v %v", res, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if res, err := e.Append(context.Background(), all()); err != nil || res.Duplicates != appenders*2*batches {
		t.Fatalf("re-append of everything after reopen: %+v %v", res, err)
	}
}

// The periodic reclaim of an engine whose appends stopped while an index
// batch was being written collects that batch, writes what is left, and
// frees the segments.
func TestReclaimAfterAppendsStop(t *testing.T) {
	o := testOptions(vfs.NewMem())
	o.SegmentBytesMax = 4096
	o.ReclaimActiveMinBytes = 1
	o.DedupIndexBatchKeys = 7
	now := time.Now()
	var mu sync.Mutex
	o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for i := 0; i < 300; i += 10 {
		var recs []Record
		for j := i; j < i+10; j++ {
			recs = append(recs, rec("u", j))
		}
		if _, err := e.Append(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(5 * time.Second)
	mu.Unlock()
	time.Sleep(50 * time.Millisecond) // the last batch's table is in
	n, err := e.reclaim(false)
	if err != nil || n == 0 {
		t.Fatalf("periodic reclaim deleted %d segments: %v", n, err)
	}
	if got := e.dedup.indexed.Load(); got != e.LastSeq() {
		t.Fatalf("indexed through %d, log ends at %d", got, e.LastSeq())
	}
}
