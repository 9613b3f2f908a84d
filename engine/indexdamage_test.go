package engine

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Index damage tests: the Pebble index loses its WAL (deleted, truncated,
// a flipped byte) or its whole folder. Segment files are never deleted for
// it: Open adopts the files past the index's manifest, or refuses with
// ErrIndexDamaged, and Recover rebuilds the index from the segments.

// damageFS is a filesystem with its data directory, in memory or on disk.
type damageFS struct {
	name string
	fs   vfs.FS
	dir  string
}

func damageFSes(t *testing.T) []damageFS {
	return []damageFS{
		{"mem", vfs.NewCrashableMem(), "/data"},
		{"disk", vfs.Default, t.TempDir()},
	}
}

func (d damageFS) options(logs *logCapture) Options {
	o := crashOptions(d.fs, logs.logger())
	o.Dir = d.dir
	return o
}

func (d damageFS) segmentFiles(t *testing.T) []string {
	t.Helper()
	names, err := d.fs.List(d.fs.PathJoin(d.dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, n := range names {
		if _, ok := parseSegmentFileName(n); ok {
			segs = append(segs, n)
		}
	}
	slices.Sort(segs)
	return segs
}

// walFiles returns the index's WAL files, oldest first.
func (d damageFS) walFiles(t *testing.T) []string {
	t.Helper()
	idx := d.fs.PathJoin(d.dir, "index")
	names, err := d.fs.List(idx)
	if err != nil {
		t.Fatal(err)
	}
	var wals []string
	for _, n := range names {
		if strings.HasSuffix(n, ".log") {
			wals = append(wals, d.fs.PathJoin(idx, n))
		}
	}
	slices.Sort(wals)
	return wals
}

// fill writes two sessions of records (the first one's index entries end
// up in a table when the second opens, the second's stay in the WAL) with
// a consumer part way, and returns every messageId in log order.
func (d damageFS) fill(t *testing.T) []string {
	t.Helper()
	var ids []string
	for session, prefix := range []string{"a", "b"} {
		e, err := Open(d.options(&logCapture{}))
		if err != nil {
			t.Fatal(err)
		}
		c := consumerOf(t, e, "c")
		ids = append(ids, appendIDs(t, e, prefix, 0, 400, 20)...)
		if session == 0 {
			tx := c.Begin()
			tx.Advance(100, 0)
			if err := tx.CommitSync(); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// expectAll opens the engine and checks that every record is there, in
// order, with nothing lost.
func (d damageFS) expectAll(t *testing.T, ids []string) *Engine {
	t.Helper()
	logs := &logCapture{}
	e, err := Open(d.options(logs))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	expectLog(t, e, 1, ids)
	if lost := e.LostRanges(); len(lost) > 0 {
		t.Fatalf("lost %v\n%s", lost, logs.all())
	}
	return e
}

func TestIndexDamageFolderGone(t *testing.T) {
	for _, d := range damageFSes(t) {
		t.Run(d.name, func(t *testing.T) {
			ids := d.fill(t)
			segs := d.segmentFiles(t)
			if err := d.fs.RemoveAll(d.fs.PathJoin(d.dir, "index")); err != nil {
				t.Fatal(err)
			}
			_, err := Open(d.options(&logCapture{}))
			if !errors.Is(err, ErrIndexDamaged) || !strings.Contains(err.Error(), "sluice recover") {
				t.Fatalf("open without an index: %v, want ErrIndexDamaged naming sluice recover", err)
			}
			if got := d.segmentFiles(t); !slices.Equal(got, segs) {
				t.Fatalf("segment files %v after the refused open, want %v", got, segs)
			}
			rep, err := Recover(d.options(&logCapture{}), []string{"c", "d"})
			if err != nil {
				t.Fatalf("recover: %v", err)
			}
			if rep.IndexKept || rep.EntriesLost != -1 || rep.FirstSeq != 1 || rep.LastSeq != uint64(len(ids)) || len(rep.SetAside) != 0 {
				t.Fatalf("report %+v", rep)
			}
			// Cursors were lost with the index: both destinations deliver
			// everything retained again.
			want := []RecoveredConsumer{{"c", 1, true}, {"d", 1, true}}
			if !slices.Equal(rep.Consumers, want) {
				t.Fatalf("consumers %+v, want %+v", rep.Consumers, want)
			}
			e := d.expectAll(t, ids)
			if cur, _ := consumerOf(t, e, "c").Cursor(); cur != 1 {
				t.Fatalf("cursor %d after recovery, want 1", cur)
			}
			// Dedup was rebuilt from the log.
			if res, err := e.Append(t.Context(), recsFor(ids[:3])); err != nil || res.Duplicates != 3 {
				t.Fatalf("resend after recovery: %+v %v", res, err)
			}
		})
	}
}

func TestIndexDamageWALDeleted(t *testing.T) {
	for _, d := range damageFSes(t) {
		t.Run(d.name, func(t *testing.T) {
			ids := d.fill(t)
			segs := d.segmentFiles(t)
			for _, w := range d.walFiles(t) {
				if err := d.fs.Remove(w); err != nil {
					t.Fatal(err)
				}
			}
			e, err := Open(d.options(&logCapture{}))
			if err == nil {
				// The older state in the tables names the first session's
				// segments: the second's were adopted.
				e.Close()
			} else if !errors.Is(err, ErrIndexDamaged) {
				t.Fatalf("open: %v", err)
			} else {
				if got := d.segmentFiles(t); !slices.Equal(got, segs) {
					t.Fatalf("segment files %v after the refused open, want %v", got, segs)
				}
				if _, err := Recover(d.options(&logCapture{}), []string{"c"}); err != nil {
					t.Fatalf("recover: %v", err)
				}
			}
			e = d.expectAll(t, ids)
			// The cursor is never ahead of where it was: at-least-once.
			if cur, _ := consumerOf(t, e, "c").Cursor(); cur > 100 {
				t.Fatalf("cursor %d, want at most 100", cur)
			}
		})
	}
}

// TestIndexDamageWALTruncated cuts the second session's WAL short: the
// index comes back older, its manifest missing the newest segments, which
// Open adopts without losing a record.
func TestIndexDamageWALTruncated(t *testing.T) {
	for _, d := range damageFSes(t) {
		t.Run(d.name, func(t *testing.T) {
			ids := d.fill(t)
			wals := d.walFiles(t)
			w := wals[len(wals)-1]
			st, err := d.fs.Stat(w)
			if err != nil {
				t.Fatal(err)
			}
			truncateFile(t, d.fs, w, st.Size()/4)
			logs := &logCapture{}
			e, err := Open(d.options(logs))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			e.Close()
			if !strings.Contains(logs.all(), "index was behind the log") {
				t.Fatalf("adoption not logged:\n%s", logs.all())
			}
			d.expectAll(t, ids)
		})
	}
}

// TestIndexDamageWALFlipped flips bytes in the middle of the second
// session's WAL: Pebble either stops reading there (an older index, whose
// missing segments are adopted) or refuses to open (Recover rebuilds it).
// Either way no record is lost.
func TestIndexDamageWALFlipped(t *testing.T) {
	d := damageFS{"disk", vfs.Default, t.TempDir()}
	ids := d.fill(t)
	wals := d.walFiles(t)
	w := wals[len(wals)-1]
	b, err := os.ReadFile(w)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 3; i < len(b)/3+8; i++ {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(w, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		if _, err := Recover(d.options(&logCapture{}), []string{"c"}); err != nil {
			t.Fatalf("recover after %v: %v", err, err)
		}
	} else {
		e.Close()
	}
	d.expectAll(t, ids)
	if _, err := os.Stat(filepath.Join(d.dir, "index")); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverKeepsReadableIndex runs Recover on an intact index: cursors
// and entries stay, nothing is lost, the old index is saved.
func TestRecoverKeepsReadableIndex(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	ids := d.fill(t)
	rep, err := Recover(d.options(&logCapture{}), []string{"c", "new"})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.IndexKept || rep.SavedIndex == "" || rep.EntriesLost != 0 {
		t.Fatalf("report %+v", rep)
	}
	want := []RecoveredConsumer{{"c", 100, false}, {"new", 1, true}}
	if !slices.Equal(rep.Consumers, want) {
		t.Fatalf("consumers %+v, want %+v", rep.Consumers, want)
	}
	if _, err := d.fs.Stat(d.fs.PathJoin(rep.SavedIndex, "MANIFEST-000001")); err != nil {
		names, _ := d.fs.List(rep.SavedIndex)
		if len(names) == 0 {
			t.Fatalf("saved index %s is empty", rep.SavedIndex)
		}
	}
	d.expectAll(t, ids)
}

func truncateFile(t *testing.T, fs vfs.FS, path string, size int64) {
	t.Helper()
	in, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	_, err = in.ReadAt(b, 0)
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, fs, path, b)
}

// TestIndexDamageManifestFlipped damages Pebble's own manifest: Open
// refuses (naming the recovery), Recover builds a new index, nothing is
// lost.
func TestIndexDamageManifestFlipped(t *testing.T) {
	d := damageFS{"disk", vfs.Default, t.TempDir()}
	ids := d.fill(t)
	ms, err := filepath.Glob(filepath.Join(d.dir, "index", "MANIFEST-*"))
	if err != nil || len(ms) == 0 {
		t.Fatalf("no Pebble manifest: %v", err)
	}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(b); i += 7 {
			b[i] ^= 0xa5
		}
		if err := os.WriteFile(m, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	segs := d.segmentFiles(t)
	_, err = Open(d.options(&logCapture{}))
	if err == nil || !strings.Contains(err.Error(), "sluice recover") {
		t.Fatalf("open with a damaged Pebble manifest: %v, want an error naming sluice recover", err)
	}
	if got := d.segmentFiles(t); !slices.Equal(got, segs) {
		t.Fatalf("segment files %v after the refused open, want %v", got, segs)
	}
	rep, err := Recover(d.options(&logCapture{}), []string{"c"})
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if rep.IndexKept || rep.SavedIndex == "" {
		t.Fatalf("report %+v", rep)
	}
	d.expectAll(t, ids)
}

// TestRecoverNeverReusesSeqs loses the index when every record was
// reclaimed (the log directory holds only the empty active segment):
// Recover keeps that segment, and the next record gets the next seq, not 1.
func TestRecoverNeverReusesSeqs(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c := consumerOf(t, e, "c")
	appendIDs(t, e, "a", 0, 300, 30)
	tx := c.Begin()
	tx.Advance(e.LastSeq()+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	e.opts.ReclaimActiveMinBytes = 1
	if _, err := e.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.fs.RemoveAll("/data/index"); err != nil {
		t.Fatal(err)
	}
	if _, err := Recover(d.options(&logCapture{}), []string{"c"}); err != nil {
		t.Fatalf("recover: %v", err)
	}
	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	res, err := e.Append(t.Context(), recsFor([]string{"next"}))
	if err != nil || res.LastSeq != 301 {
		t.Fatalf("append after recovery: %+v %v, want seq 301", res, err)
	}
}

// TestRecoverDamagedLastFrame flips a byte in the last record of a cleanly
// closed log and loses the index: Recover cannot tell it from a torn write
// by the file alone, so it reports it lost and never gives its seq again;
// the records before it are kept.
func TestRecoverDamagedLastFrame(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	ids := appendIDs(t, e, "a", 0, 50, 10)
	all := expectLog(t, e, 1, ids)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	last := all[len(all)-1]
	fileData(t, d.fs.(*vfs.MemFS), segPath(last.Pos.Segment()))[int(last.Pos.Offset())+frameHeaderLen+2] ^= 0x40
	if err := d.fs.RemoveAll("/data/index"); err != nil {
		t.Fatal(err)
	}
	rep, err := Recover(d.options(&logCapture{}), []string{"c"})
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if !slices.Equal(rep.Lost, []SeqRange{{50, 50}}) || rep.LastSeq != 50 {
		t.Fatalf("report %+v, want seq 50 lost and the log ending at 50", rep)
	}
	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := readAll(t, e, 1); len(got) != 49 {
		t.Fatalf("read %d records, want 49", len(got))
	}
	if res, err := e.Append(t.Context(), recsFor([]string{"next"})); err != nil || res.LastSeq != 51 {
		t.Fatalf("append after recovery: %+v %v, want seq 51", res, err)
	}
	// The cursor of the new consumer is not held before the lost record.
	if st := e.Stats(); st.Consumers[0].BacklogEvents != 51 {
		t.Fatalf("backlog %d, want 51 (49 records, the lost one skipped by the reader, the new one)", st.Consumers[0].BacklogEvents)
	}
}

// TestOpenAdoptsUnnamedDedupRuns loses the index's newest writes (its WAL)
// after the dedup keys went to a run: Open adopts the run file the older
// index does not name, so resends are still duplicates.
func TestOpenAdoptsUnnamedDedupRuns(t *testing.T) {
	d := damageFS{"mem", vfs.NewCrashableMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 100, 10)
	// Every record consumed and reclaimed: their keys are only in the run.
	tx := c.Begin()
	tx.Advance(e.LastSeq()+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	e.opts.ReclaimActiveMinBytes = 1
	if n, err := e.Reclaim(); err != nil || n == 0 {
		t.Fatalf("reclaim: %d %v", n, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if runs, _ := d.fs.List("/data/dedup"); len(runs) == 0 {
		t.Fatal("no dedup run written")
	}
	for _, w := range d.walFiles(t) {
		if err := d.fs.Remove(w); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(d.options(&logCapture{})); !errors.Is(err, ErrIndexDamaged) {
		t.Fatalf("open with an empty index: %v", err)
	}
	if _, err := Recover(d.options(&logCapture{}), []string{"c"}); err != nil {
		t.Fatal(err)
	}
	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Stats().DedupRuns == 0 {
		t.Fatal("the dedup run was not adopted")
	}
	if res, err := e.Append(t.Context(), recsFor(ids)); err != nil || res.Duplicates != len(ids) {
		t.Fatalf("resend: %+v %v, want %d duplicates", res, err, len(ids))
	}
}

// TestRecoverRequeuesStragglers loses the index while an entry still needs
// an event whose segment was reclaimed: the straggler file written at the
// reclaim brings it back, pending again for the destination, and reclaim
// removes the file once no entry needs it.
func TestRecoverRequeuesStragglers(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 600, 30)
	all := expectLog(t, e, 1, ids)
	victim, behind := strandStragglers(t, e, c, all)
	stg, _ := d.fs.List("/data/log/stragglers")
	if len(stg) != 1 {
		t.Fatalf("straggler files %v, want one", stg)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.fs.RemoveAll("/data/index"); err != nil {
		t.Fatal(err)
	}
	rep, err := Recover(d.options(&logCapture{}), []string{"c"})
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if rep.StragglersRequeued != 2 {
		t.Fatalf("report %+v, want two stragglers requeued", rep)
	}
	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c = consumerOf(t, e, "c")
	if c.Count(StateFailed) != 1 || c.Count(StateSkipped) != 1 {
		t.Fatalf("failed %d and skipped %d entries, want one each", c.Count(StateFailed), c.Count(StateSkipped))
	}
	if ents, err := c.KeyEntries(victim.Key, 10); err != nil || len(ents) != 2 || ents[0].Seq != victim.Seq || ents[1].Seq != behind.Seq {
		t.Fatalf("key entries %+v %v, want the head and the one behind it", ents, err)
	}
	if head, ok, err := c.Barrier(victim.Key); err != nil || !ok || head != victim.Seq {
		t.Fatalf("barrier %d %v %v, want %d", head, ok, err, victim.Seq)
	}
	en, err := c.Entry(victim.Seq)
	if err != nil {
		t.Fatalf("entry of the straggler: %v", err)
	}
	rec, err := e.Read(en.Seq, en.Pos)
	if err != nil || string(rec.MessageID) != string(victim.MessageID) {
		t.Fatalf("read of the requeued straggler: %v %q", err, rec.MessageID)
	}
	if cur, _ := c.Cursor(); cur != e.Stats().FirstSeq {
		t.Fatalf("cursor %d, want the first retained seq %d", cur, e.Stats().FirstSeq)
	}
	// Delivered: the entry goes, and with it the need for the file.
	tx := c.Begin()
	tx.Succeed(victim.Seq)
	tx.Succeed(behind.Seq)
	tx.ClearBarrier(victim.Key)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if stg, _ := d.fs.List("/data/log/stragglers"); len(stg) != 0 {
		t.Fatalf("straggler files %v left after their entries settled", stg)
	}
}

// TestOpenRestoresStragglersOfReclaimedSegment: the index comes back older
// than a reclaim (its newest writes lost) and names segments reclaim has
// since deleted. The stragglers those segments held live on in their
// straggler file: Open puts them back and requeues them for the consumer
// (its cursor is older than the log), instead of reporting them lost; the
// rest of those segments' seqs are reported lost, and the file goes once
// the requeued events are delivered.
func TestOpenRestoresStragglersOfReclaimedSegment(t *testing.T) {
	d := damageFS{"disk", vfs.Default, t.TempDir()}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 600, 30)
	all := expectLog(t, e, 1, ids)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(d.dir, "index")
	older := filepath.Join(t.TempDir(), "index")
	if err := os.CopyFS(older, os.DirFS(index)); err != nil {
		t.Fatal(err)
	}

	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c = consumerOf(t, e, "c")
	victim, behind := strandStragglers(t, e, c, all)
	first := e.Stats().FirstSeq
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	// The index loses everything since the copy.
	if err := os.RemoveAll(index); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(older, index); err != nil {
		t.Fatal(err)
	}
	logs := &logCapture{}
	e, err = Open(d.options(logs))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer e.Close()
	c = consumerOf(t, e, "c")
	if c.Count(StateFailed) != 1 || c.Count(StateSkipped) != 1 {
		t.Fatalf("failed %d and skipped %d entries, want the two stragglers requeued (lost %v)\n%s", c.Count(StateFailed), c.Count(StateSkipped), e.LostRanges(), logs.all())
	}
	if head, ok, err := c.Barrier(victim.Key); err != nil || !ok || head != victim.Seq {
		t.Fatalf("barrier %d %v %v, want %d", head, ok, err, victim.Seq)
	}
	for _, want := range []Record{victim, behind} {
		en, err := c.Entry(want.Seq)
		if err != nil {
			t.Fatalf("entry of straggler %d: %v", want.Seq, err)
		}
		if rec, err := e.Read(en.Seq, en.Pos); err != nil || string(rec.MessageID) != string(want.MessageID) {
			t.Fatalf("read of requeued straggler %d: %v %q", want.Seq, err, rec.MessageID)
		}
	}
	if cur, _ := c.Cursor(); cur != first {
		t.Fatalf("cursor %d, want the log's first seq %d", cur, first)
	}
	var lost []SeqRange
	for _, r := range subtractRanges(SeqRange{1, first - 1}, []SeqRange{{victim.Seq, victim.Seq}, {behind.Seq, behind.Seq}}) {
		lost = addRange(lost, r)
	}
	if got := e.LostRanges(); !slices.Equal(got, lost) {
		t.Fatalf("lost %v, want %v: the reclaimed segments but their stragglers", got, lost)
	}

	tx := c.Begin()
	tx.Succeed(victim.Seq)
	tx.Succeed(behind.Seq)
	tx.ClearBarrier(victim.Key)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if stg, _ := os.ReadDir(filepath.Join(d.dir, "log", "stragglers")); len(stg) != 0 {
		t.Fatalf("straggler files %v left after their entries settled", stg)
	}
}

// TestLostSetOutlivesIndex: seqs found lost (a damaged frame), then
// reclaimed, then the index folder lost: the lost set's copy beside the
// segments still names them, so Recover and Open report them.
func TestLostSetOutlivesIndex(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	c := consumerOf(t, e, "c")
	appendIDs(t, e, "a", 0, 600, 30)
	e.recordLost(3, 4, "a damaged frame (test)")
	tx := c.Begin()
	tx.Advance(e.LastSeq()+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Reclaim(); err != nil || n == 0 {
		t.Fatalf("reclaim: %d %v", n, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.fs.RemoveAll("/data/index"); err != nil {
		t.Fatal(err)
	}
	rep, err := Recover(d.options(&logCapture{}), []string{"c"})
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	if !slices.Contains(rep.Lost, SeqRange{3, 4}) {
		t.Fatalf("recover reports lost %v, want 3-4 among them", rep.Lost)
	}
	e, err = Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := e.LostRanges(); !slices.Contains(got, SeqRange{3, 4}) {
		t.Fatalf("lost %v after recovery, want 3-4 among them", got)
	}
	// A damaged copy is reported and the index's set used.
	f, err := d.fs.Create("/data/log/lost", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("3 4\nnot a range\n"))
	f.Close()
	if got, err := e.readLostFile(); err == nil || !strings.Contains(err.Error(), "line 2") || !slices.Equal(got, []SeqRange{{3, 4}}) {
		t.Fatalf("damaged copy read as %v, %v; want 3-4 and an error naming line 2", got, err)
	}
}

// strandStragglers makes all[5] a failed event with its key's barrier and
// a later event of the key skipped behind it, moves the consumer past the
// log, and reclaims: both become stragglers (their segments deleted).
func strandStragglers(t *testing.T, e *Engine, c *Consumer, all []Record) (victim, behind Record) {
	t.Helper()
	victim = all[5]
	for _, r := range all[6:] {
		if string(r.Key) == string(victim.Key) {
			behind = r
			break
		}
	}
	tx := c.Begin()
	tx.Put(Entry{Seq: victim.Seq, Pos: victim.Pos, State: StateFailed, Key: victim.Key, ReceivedAt: victim.ReceivedAt, DueAt: 1})
	tx.Put(Entry{Seq: behind.Seq, Pos: behind.Pos, State: StateSkipped, Key: behind.Key, ReceivedAt: behind.ReceivedAt})
	tx.SetBarrier(victim.Key, victim.Seq)
	tx.Advance(e.LastSeq()+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Reclaim(); err != nil || n == 0 {
		t.Fatalf("reclaim: %d %v", n, err)
	}
	if first := e.Stats().FirstSeq; behind.Seq == 0 || behind.Seq >= first {
		t.Fatalf("no later event of key %q in a reclaimed segment (behind %d, first seq %d)", victim.Key, behind.Seq, first)
	}
	return victim, behind
}

// TestReclaimSweepsOrphanStragglers: a straggler copy below every cursor
// that no entry needs (restored for a consumer that had passed it) is
// deleted by reclaim; one an entry needs stays.
func TestReclaimSweepsOrphanStragglers(t *testing.T) {
	d := damageFS{"mem", vfs.NewMem(), "/data"}
	e, err := Open(d.options(&logCapture{}))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c := consumerOf(t, e, "c")
	all := expectLog(t, e, 1, appendIDs(t, e, "a", 0, 600, 30))
	victim, _ := strandStragglers(t, e, c, all)
	orphan := all[2].Seq
	if err := e.db.Set(stragglerKey(orphan), []byte("a copy no entry needs"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if _, closer, err := e.db.Get(stragglerKey(orphan)); err == nil {
		closer.Close()
		t.Fatalf("the orphan straggler copy %d survived reclaim", orphan)
	}
	if rec, err := e.Read(victim.Seq, victim.Pos); err != nil || string(rec.MessageID) != string(victim.MessageID) {
		t.Fatalf("the needed straggler %d: %v %q", victim.Seq, err, rec.MessageID)
	}
}
