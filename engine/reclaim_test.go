package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine/crashfs"
)

// reclaimRec is rec(user, i) with a payload of about size bytes.
func reclaimRec(user string, i, size int) Record {
	r := rec(user, i)
	pad := max(size-len(r.Payload), 0)
	r.Payload = fmt.Appendf(nil, `{"userId":%q,"i":%d,"pad":"%s"}`, user, i, bytes.Repeat([]byte{'a' + byte(i%26)}, pad))
	return r
}

// reclaimAppend appends n records of about size bytes and returns the last
// seq. Batches stay near 8 KiB: a segment is cut only between groups, so
// large groups would make segments far larger than SegmentBytesMax.
func reclaimAppend(t testing.TB, e *Engine, user string, from, n, size int) uint64 {
	t.Helper()
	batch := max(1, 8<<10/size)
	var last uint64
	for i := 0; i < n; i += batch {
		recs := make([]Record, min(batch, n-i))
		for j := range recs {
			recs[j] = reclaimRec(user, from+i+j, size)
		}
		res, err := e.Append(context.Background(), recs)
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		if res.Stored != len(recs) {
			t.Fatalf("append stored %d of %d", res.Stored, len(recs))
		}
		last = res.LastSeq
	}
	return last
}

// reclaimAdvance moves c's cursor to seq with no entries (all delivered).
func reclaimAdvance(t testing.TB, c *Consumer, seq uint64) {
	t.Helper()
	tx := c.Begin()
	tx.Advance(seq, 0)
	if err := tx.Commit(); err != nil {
		t.Fatalf("advance %q to %d: %v", c.Name(), seq, err)
	}
}

func reclaimConsumer(t testing.TB, e *Engine, name string) *Consumer {
	t.Helper()
	c, err := e.Consumer(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func reclaimOK(t testing.TB, e *Engine) int {
	t.Helper()
	n, err := e.Reclaim()
	if err != nil {
		t.Fatalf("reclaim: %v", err)
	}
	return n
}

// reclaimSeg is one segment's id and seq range.
type reclaimSeg struct {
	id          uint32
	first, last uint64
	sealed      bool
}

func reclaimSegments(e *Engine) []reclaimSeg {
	e.segMu.RLock()
	defer e.segMu.RUnlock()
	out := make([]reclaimSeg, len(e.segments))
	for i, s := range e.segments {
		out[i] = reclaimSeg{s.id, s.baseSeq, s.lastSeq.Load(), s.sealed.Load()}
	}
	return out
}

func reclaimFiles(t testing.TB, fs vfs.FS) int {
	t.Helper()
	names, err := fs.List("/data/log")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range names {
		if _, ok := parseSegmentFileName(name); ok {
			n++
		}
	}
	return n
}

// keptFiles counts the segment files the engine keeps beside the manifest's:
// reclaimed ones waiting for reuse and the spare.
func keptFiles(e *Engine) int {
	e.spareMu.Lock()
	defer e.spareMu.Unlock()
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	n := len(e.free)
	if e.spare != nil {
		n++
	}
	return n
}

func reclaimHasStraggler(t testing.TB, e *Engine, seq uint64) bool {
	t.Helper()
	_, closer, err := e.db.Get(stragglerKey(seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatalf("get straggler %d: %v", seq, err)
	}
	closer.Close()
	return true
}

// (a) A large consumed backlog leaves next to nothing on disk.
func TestReclaimConsumedBacklog(t *testing.T) {
	fs := vfs.NewMem()
	opts := testOptions(fs)
	opts.ReclaimActiveMinBytes = 4096
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a, b := reclaimConsumer(t, e, "a"), reclaimConsumer(t, e, "b")
	const n, size = 20000, 600
	last := reclaimAppend(t, e, "u", 0, n, size)
	if last != n {
		t.Fatalf("last seq %d, want %d", last, n)
	}
	st := e.Stats()
	if st.Segments < 500 || st.SegmentBytes < n*size {
		t.Fatalf("before: %d segments, %d bytes; want a large backlog", st.Segments, st.SegmentBytes)
	}
	if d := reclaimOK(t, e); d != 0 {
		t.Fatalf("reclaim deleted %d segments that no cursor passed", d)
	}
	reclaimAdvance(t, a, last+1)
	if d := reclaimOK(t, e); d != 0 {
		t.Fatalf("reclaim deleted %d segments while consumer b is at the start", d)
	}
	reclaimAdvance(t, b, last+1)
	d := reclaimOK(t, e)
	st = e.Stats()
	t.Logf("deleted %d segments; left %d segments, %d segment bytes, %d index bytes", d, st.Segments, st.SegmentBytes, st.IndexBytes)
	if st.Segments > 2 || st.SegmentBytes > 2*opts.SegmentBytesMax {
		t.Fatalf("after consuming everything: %d segments, %d bytes; want at most 2 segments of %d bytes", st.Segments, st.SegmentBytes, opts.SegmentBytesMax)
	}
	if files, kept := reclaimFiles(t, fs), keptFiles(e); files != st.Segments+kept {
		t.Fatalf("%d segment files on disk, manifest names %d, %d kept for reuse", files, st.Segments, kept)
	}
	if uint64(d) != st.SegmentsDeleted || st.StragglersMoved != 0 {
		t.Fatalf("deleted %d, stats %d; stragglers %d", d, st.SegmentsDeleted, st.StragglersMoved)
	}
	// What is left is the active segment, kept only because it is below
	// ReclaimActiveMinBytes.
	if st.SegmentBytes >= opts.ReclaimActiveMinBytes {
		t.Fatalf("kept %d segment bytes, at least ReclaimActiveMinBytes (%d)", st.SegmentBytes, opts.ReclaimActiveMinBytes)
	}
	if got := readAll(t, e, 1); len(got)*size >= int(opts.ReclaimActiveMinBytes) {
		t.Fatalf("read %d records after reclaiming everything", len(got))
	}
	// The log goes on.
	appendN(t, e, "v", 0, 3)
	got := readAll(t, e, last+1)
	if len(got) != 3 || got[0].Seq != last+1 {
		t.Fatalf("after reclaim: %d records, first %v", len(got), got)
	}
}

// (b) Entries that still need events of a reclaimed segment get straggler
// copies; a copy goes when the last entry for its event is settled.
func TestReclaimStragglers(t *testing.T) {
	fs := vfs.NewMem()
	opts := testOptions(fs)
	opts.ReclaimActiveMinBytes = 1024
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	a, b := reclaimConsumer(t, e, "a"), reclaimConsumer(t, e, "b")
	last := reclaimAppend(t, e, "u", 0, 3000, 200)
	recs := readAll(t, e, 1)
	at := func(seq uint64) Record { return recs[seq-1] }
	const (
		shared  = 5    // failed for a, aborted for b
		failed  = 40   // failed for a only
		aborted = 700  // aborted for a only
		skipped = 1500 // skipped for a only
	)
	entry := func(seq uint64, s State) Entry {
		r := at(seq)
		return Entry{Seq: seq, Pos: r.Pos, State: s, Key: r.Key, DueAt: 100, Attempts: 1, Reason: "http 500", LastStatus: 500}
	}
	tx := a.Begin()
	tx.Put(entry(shared, StateFailed))
	tx.Put(entry(failed, StateFailed))
	tx.Put(entry(aborted, StateAborted))
	tx.Put(entry(skipped, StateSkipped))
	tx.Advance(last+1, 0)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx = b.Begin()
	tx.Put(entry(shared, StateAborted))
	tx.Advance(last+1, 0)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if d := reclaimOK(t, e); d < 10 {
		t.Fatalf("reclaim deleted %d segments", d)
	}
	segs := reclaimSegments(e)
	if len(segs) > 2 {
		t.Fatalf("%d segments left: %+v", len(segs), segs)
	}
	for _, seq := range []uint64{shared, failed, aborted, skipped} {
		if slices.ContainsFunc(segs, func(s reclaimSeg) bool { return s.id == at(seq).Pos.Segment() }) {
			t.Fatalf("segment of event %d not reclaimed", seq)
		}
	}
	if st := e.Stats(); st.StragglersMoved != 4 {
		t.Fatalf("StragglersMoved = %d, want 4 (one per event, shared or not)", st.StragglersMoved)
	}
	readOK := func(seq uint64) {
		t.Helper()
		r, err := e.Read(seq, at(seq).Pos)
		if err != nil {
			t.Fatalf("read straggler %d: %v", seq, err)
		}
		if r.Seq != seq || !bytes.Equal(r.Payload, at(seq).Payload) || !bytes.Equal(r.MessageID, at(seq).MessageID) {
			t.Fatalf("straggler %d: got seq %d payload %.40q", seq, r.Seq, r.Payload)
		}
	}
	gone := func(seq uint64) {
		t.Helper()
		if reclaimHasStraggler(t, e, seq) {
			t.Fatalf("straggler copy of %d kept after its last entry was settled", seq)
		}
		if _, err := e.Read(seq, at(seq).Pos); !errors.Is(err, ErrNotFound) {
			t.Fatalf("read of settled straggler %d: %v, want ErrNotFound", seq, err)
		}
	}
	for _, seq := range []uint64{shared, failed, aborted, skipped} {
		readOK(seq)
	}
	// The copies are durable.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if e, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	a, b = reclaimConsumer(t, e, "a"), reclaimConsumer(t, e, "b")
	for _, seq := range []uint64{shared, failed, aborted, skipped} {
		readOK(seq)
	}
	// a delivers the shared event: b still has its entry, the copy stays.
	tx = a.Begin()
	tx.Succeed(shared)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if !reclaimHasStraggler(t, e, shared) {
		t.Fatalf("straggler %d deleted while consumer b still has an entry for it", shared)
	}
	readOK(shared)
	// Replay keeps it (b's entry lives on as failed), purging the rest of a's
	// entries drops theirs.
	if n, err := b.Replay(200, nil); n != 1 || err != nil {
		t.Fatalf("replay: %d %v", n, err)
	}
	readOK(shared)
	tx = a.Begin()
	tx.Succeed(failed)
	tx.Put(entry(skipped, StateAborted))
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	gone(failed)
	readOK(skipped)
	if n, err := a.Purge(nil); n != 2 || err != nil {
		t.Fatalf("purge: %d %v", n, err)
	}
	gone(aborted)
	gone(skipped)
	readOK(shared)
	tx = b.Begin()
	tx.Succeed(shared)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	gone(shared)
	for _, c := range []*Consumer{a, b} {
		for _, s := range []State{StateFailed, StateSkipped, StateAborted} {
			if n := c.Count(s); n != 0 {
				t.Fatalf("%q has %d %s entries left", c.Name(), n, s)
			}
		}
	}
}

// (c) A segment stays while any cursor is inside it.
func TestReclaimKeepsSegmentUnderCursor(t *testing.T) {
	fs := vfs.NewMem()
	opts := testOptions(fs)
	opts.ReclaimActiveMinBytes = 1024
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	fast, slow := reclaimConsumer(t, e, "fast"), reclaimConsumer(t, e, "slow")
	last := reclaimAppend(t, e, "u", 0, 2000, 300)
	reclaimAdvance(t, fast, last+1)
	segs := reclaimSegments(e)
	if len(segs) < 10 {
		t.Fatalf("only %d segments", len(segs))
	}
	k := segs[len(segs)/2]
	if k.last <= k.first+1 {
		t.Fatalf("segment %+v too small", k)
	}
	for _, step := range []struct {
		cursor uint64
		keep   uint32 // the oldest segment that must remain
	}{
		{k.first + (k.last-k.first)/2, k.id}, // inside
		{k.last, k.id},                       // on its last record
		{k.last + 1, k.id + 1},               // past it
	} {
		reclaimAdvance(t, slow, step.cursor)
		reclaimOK(t, e)
		segs := reclaimSegments(e)
		if segs[0].id != step.keep {
			t.Fatalf("cursor %d: oldest segment %+v, want id %d", step.cursor, segs[0], step.keep)
		}
		if segs[0].first > step.cursor || segs[0].last < step.cursor {
			t.Fatalf("cursor %d not inside the oldest segment %+v", step.cursor, segs[0])
		}
		got := readAll(t, e, step.cursor)
		if uint64(len(got)) != last+1-step.cursor || got[0].Seq != step.cursor {
			t.Fatalf("cursor %d: read %d records from it, want %d", step.cursor, len(got), last+1-step.cursor)
		}
	}
	// The cursor's own position hint still works.
	r, err := e.NewReader(k.last+1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if b, err := r.Next(nil, 1); err != nil || len(b) != 1 || b[0].Seq != k.last+1 {
		t.Fatalf("reader at the cursor: %v %v", b, err)
	}
}

// (d) With no consumers nothing holds the log: sealed segments go.
func TestReclaimWithoutConsumers(t *testing.T) {
	for _, activeMin := range []int64{0, 1024} { // 0: the 1 MiB default
		t.Run(fmt.Sprintf("activeMin=%d", activeMin), func(t *testing.T) {
			fs := vfs.NewMem()
			opts := testOptions(fs)
			opts.ReclaimActiveMinBytes = activeMin
			e, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			last := reclaimAppend(t, e, "u", 0, 1000, 300)
			before := reclaimSegments(e)
			if len(before) < 10 {
				t.Fatalf("only %d segments", len(before))
			}
			active := before[len(before)-1]
			d := reclaimOK(t, e)
			after := reclaimSegments(e)
			if activeMin == 0 {
				// The active segment is below the 1 MiB cut threshold: it
				// stays with its records, every sealed one goes.
				if d != len(before)-1 || len(after) != 1 || after[0] != active {
					t.Fatalf("deleted %d of %d; left %+v, want only the active %+v", d, len(before), after, active)
				}
				if got := readAll(t, e, 1); uint64(len(got)) != active.last-active.first+1 || got[len(got)-1].Seq != last {
					t.Fatalf("read %d records from the active segment", len(got))
				}
			} else {
				// The consumed active segment is cut and goes too.
				if d != len(before) || len(after) != 1 || after[0].first != last+1 || !(after[0].last < after[0].first) {
					t.Fatalf("deleted %d of %d; left %+v", d, len(before), after)
				}
				if got := readAll(t, e, 1); len(got) != 0 {
					t.Fatalf("read %d records", len(got))
				}
			}
			if files, kept := reclaimFiles(t, fs), keptFiles(e); files != len(after)+kept {
				t.Fatalf("%d segment files, want %d and %d kept for reuse", files, len(after), kept)
			}
			// A consumer created now starts at the end and reads what follows.
			c := reclaimConsumer(t, e, "late")
			if cur, _ := c.Cursor(); cur != last+1 {
				t.Fatalf("new consumer at %d, want %d", cur, last+1)
			}
			appendN(t, e, "v", 0, 5)
			if got := readAll(t, e, last+1); len(got) != 5 || got[0].Seq != last+1 {
				t.Fatalf("after reclaim: %d records", len(got))
			}
		})
	}
}

// (e) The active segment is never deleted, and seq numbering goes on after
// everything was reclaimed and the engine reopened (cleanly or after a
// crash).
func TestReclaimActiveAndSeqContinue(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			fs := crashfs.New()
			opts := testOptions(fs)
			opts.ReclaimActiveMinBytes = 1024
			e, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			c := reclaimConsumer(t, e, "a")
			var last uint64
			for round := range 4 {
				last = reclaimAppend(t, e, "u", round*300, 300, 300)
				reclaimAdvance(t, c, last+1)
				for range 2 { // a second reclaim finds nothing more to do
					reclaimOK(t, e)
					segs := reclaimSegments(e)
					if len(segs) != 1 || segs[0].sealed {
						t.Fatalf("round %d: segments %+v, want one active", round, segs)
					}
					if _, err := fs.Stat(fs.PathJoin("/data/log", segmentFileName(segs[0].id))); err != nil {
						t.Fatalf("active segment file: %v", err)
					}
				}
				if e.LastSeq() != last {
					t.Fatalf("LastSeq %d, want %d", e.LastSeq(), last)
				}
			}
			// Reclaim with an empty active segment changes nothing.
			segs := reclaimSegments(e)
			if d := reclaimOK(t, e); d != 0 || !slices.Equal(reclaimSegments(e), segs) {
				t.Fatalf("reclaim of an empty active segment deleted %d: %+v", d, reclaimSegments(e))
			}
			if crash {
				clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
				e.Close()
				fs = clone
				opts.FS = fs
			} else if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if e, err = Open(opts); err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if e.LastSeq() != last {
				t.Fatalf("after reopen LastSeq %d, want %d", e.LastSeq(), last)
			}
			c = reclaimConsumer(t, e, "a")
			if cur, _ := c.Cursor(); cur != last+1 {
				t.Fatalf("after reopen cursor %d, want %d", cur, last+1)
			}
			// Deduplication still knows the reclaimed events.
			res, err := e.Append(context.Background(), []Record{reclaimRec("u", 5, 300), reclaimRec("w", 0, 300)})
			if err != nil {
				t.Fatal(err)
			}
			if res.Stored != 1 || res.Duplicates != 1 || res.LastSeq != last+1 {
				t.Fatalf("after reopen: %+v, want one stored at %d and one duplicate", res, last+1)
			}
			got := readAll(t, e, 1)
			if len(got) != 1 || got[0].Seq != last+1 {
				t.Fatalf("after reopen read %v", got)
			}
			reclaimAdvance(t, c, last+2)
			reclaimOK(t, e)
			if segs := reclaimSegments(e); len(segs) == 0 || segs[len(segs)-1].sealed {
				t.Fatalf("no active segment: %+v", segs)
			}
			appendN(t, e, "x", 0, 2)
			if got := readAll(t, e, last+2); len(got) != 2 || got[0].Seq != last+2 {
				t.Fatalf("after the last reclaim: %v", got)
			}
		})
	}
}
