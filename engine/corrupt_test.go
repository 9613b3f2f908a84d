package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Corruption tests: files are damaged behind the engine's back between
// Close and Open, on a plain in-memory FS.

func segPath(id uint32) string { return "/data/log/" + segmentFileName(id) }

// openLogged opens the engine on fs with a log capture.
func openLogged(t *testing.T, fs vfs.FS) (*Engine, *logCapture) {
	t.Helper()
	logs := &logCapture{}
	e, err := Open(crashOptions(fs, logs.logger()))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return e, logs
}

// appendIDs appends records named prefix-from .. prefix-(from+n-1) in
// batches and returns their messageIds.
func appendIDs(t *testing.T, e *Engine, prefix string, from, n, batch int) []string {
	t.Helper()
	var ids []string
	for i := from; i < from+n; i += batch {
		var b []string
		for j := i; j < min(i+batch, from+n); j++ {
			b = append(b, fmt.Sprintf("%s-%d", prefix, j))
		}
		res, err := e.Append(context.Background(), recsFor(b))
		if err != nil || res.Stored != len(b) {
			t.Fatalf("append %v: %+v %v", b[0], res, err)
		}
		ids = append(ids, b...)
	}
	return ids
}

// expectLog checks that the log holds exactly ids with consecutive seqs
// from first, every record intact.
func expectLog(t *testing.T, e *Engine, first uint64, ids []string) []Record {
	t.Helper()
	got := readAll(t, e, 1)
	if len(got) != len(ids) {
		t.Fatalf("log holds %d records, want %d", len(got), len(ids))
	}
	for i, r := range got {
		if r.Seq != first+uint64(i) || string(r.MessageID) != ids[i] {
			t.Fatalf("record %d: seq %d %q, want seq %d %q", i, r.Seq, r.MessageID, first+uint64(i), ids[i])
		}
		if err := checkRec(r); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// writeAtEnd appends b to the file at path.
func writeAtEnd(t *testing.T, fs vfs.FS, path string, b []byte) {
	t.Helper()
	f, err := fs.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, st.Size()); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// unseal makes a closed engine's index look as a crash would have left it:
// the segment that was active at Close is unsealed again, with the
// manifest value it had while active (no records known, only the header),
// so the next Open scans it for a torn tail.
func unseal(t *testing.T, fs vfs.FS, id uint32) {
	t.Helper()
	quiet := pebbleLogger{slog.New(slog.DiscardHandler)}
	db, err := pebble.Open("/data/index", &pebble.Options{FS: fs, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	v, closer, err := db.Get(segmentKey(id))
	if err != nil {
		t.Fatalf("manifest of segment %d: %v", id, err)
	}
	s, err := decodeManifest(id, v)
	closer.Close()
	if err != nil {
		t.Fatal(err)
	}
	s.sealed.Store(false)
	s.lastSeq.Store(s.baseSeq - 1)
	s.size.Store(segmentHeaderLen)
	if err := db.Set(segmentKey(id), encodeManifest(s), pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

func fileData(t *testing.T, fs *vfs.MemFS, path string) []byte {
	t.Helper()
	b, err := fs.UnsafeGetFileDataBuffer(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCorruptTornTail damages the end of the active segment after Close,
// as a crash during a write would: recovery cuts it, keeps every
// acknowledged record and goes on with the next seq.
func TestCorruptTornTail(t *testing.T) {
	frame := func(seq uint64) []byte {
		r := recFor("torn")
		return appendFrame(nil, seq, &r)
	}
	tails := []struct {
		name string
		tail func(next uint64, rng *rand.Rand) []byte
	}{
		{"garbage", func(_ uint64, rng *rand.Rand) []byte {
			b := make([]byte, 1+rng.IntN(600))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			return b
		}},
		{"short-garbage", func(uint64, *rand.Rand) []byte { return []byte{0x17, 0, 0} }},
		{"partial-frame", func(next uint64, _ *rand.Rand) []byte { f := frame(next); return f[:len(f)/2] }},
		{"frame-header-only", func(next uint64, _ *rand.Rand) []byte { return frame(next)[:frameHeaderLen] }},
		{"zeros", func(uint64, *rand.Rand) []byte { return make([]byte, 4096) }},
		{"stale-frame", func(next uint64, _ *rand.Rand) []byte { return frame(next + 7) }},
		{"bad-checksum", func(next uint64, _ *rand.Rand) []byte { f := frame(next); f[len(f)-1] ^= 1; return f }},
	}
	for i, tc := range tails {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			fs := vfs.NewMem()
			e, _ := openLogged(t, fs)
			ids := appendIDs(t, e, "a", 0, 300, 7)
			active := e.active.id
			last := e.LastSeq()
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			unseal(t, fs, active)
			tail := tc.tail(last+1, rng)
			writeAtEnd(t, fs, segPath(active), tail)

			e, logs := openLogged(t, fs)
			st := e.Stats()
			if st.TruncatedBytes != uint64(len(tail)) || st.LostRecords != 0 {
				t.Fatalf("truncated %d bytes (want %d), lost %d records\n%s", st.TruncatedBytes, len(tail), st.LostRecords, logs.all())
			}
			if e.LastSeq() != last {
				t.Fatalf("LastSeq %d, want %d", e.LastSeq(), last)
			}
			expectLog(t, e, 1, ids)
			ids = append(ids, appendIDs(t, e, "b", 0, 40, 9)...)
			expectLog(t, e, 1, ids)
			if errs := logs.engineErrors(); len(errs) > 0 {
				t.Fatalf("errors logged for a torn tail:\n%s", strings.Join(errs, "\n"))
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}

			// The cut segment is sealed at its valid length: the tail stays
			// in the file but is never read again.
			e, _ = openLogged(t, fs)
			defer e.Close()
			if st := e.Stats(); st.TruncatedBytes != 0 || st.LostRecords != 0 {
				t.Fatalf("second open: truncated %d, lost %d", st.TruncatedBytes, st.LostRecords)
			}
			ids = append(ids, appendIDs(t, e, "c", 0, 5, 5)...)
			expectLog(t, e, 1, ids)
		})
	}
}

// TestCorruptSealedSegmentBitFlip flips one bit of an acknowledged frame in
// a sealed segment: reading resynchronises at the next frame, so that one
// record is reported lost (once, however many readers meet it) and every
// other record of the segment is delivered; nothing panics.
func TestCorruptSealedSegmentBitFlip(t *testing.T) {
	flips := []struct {
		name string
		at   func(frameLen int) int // byte offset inside the frame
	}{
		{"length", func(int) int { return 2 }},
		{"length-high", func(int) int { return 3 }},
		{"checksum", func(int) int { return 5 }},
		{"seq", func(int) int { return 9 }},
		{"group-bit", func(int) int { return 15 }},
		{"body", func(n int) int { return frameHeaderLen + (n-frameHeaderLen)/2 }},
		{"last-byte", func(n int) int { return n - 1 }},
	}
	for _, tc := range flips {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			e, _ := openLogged(t, fs)
			ids := appendIDs(t, e, "a", 0, 1000, 25)
			all := expectLog(t, e, 1, ids)
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			// A record in the middle of a segment that is neither the first
			// nor the last.
			victim := all[500]
			seg := victim.Pos.Segment()
			if all[0].Pos.Segment() == seg || all[len(all)-1].Pos.Segment() == seg {
				t.Fatalf("victim %d not inside a middle segment", victim.Seq)
			}
			frameLen := int(all[501].Pos.Offset() - victim.Pos.Offset())
			data := fileData(t, fs, segPath(seg))
			data[int(victim.Pos.Offset())+tc.at(frameLen)] ^= 0x10

			e, logs := openLogged(t, fs)
			defer e.Close()
			for range 3 { // three readers: the loss is counted once
				got := readAll(t, e, 1)
				want := slices.Delete(slices.Clone(all), 500, 501)
				if len(got) != len(want) {
					t.Fatalf("read %d records, want %d", len(got), len(want))
				}
				for j, r := range want {
					if got[j].Seq != r.Seq || string(got[j].MessageID) != string(r.MessageID) {
						t.Fatalf("record %d: got seq %d %q, want %d %q", j, got[j].Seq, got[j].MessageID, r.Seq, r.MessageID)
					}
				}
			}
			if st := e.Stats(); st.LostRecords != 1 {
				t.Fatalf("LostRecords %d, want 1", st.LostRecords)
			}
			if lost := e.LostRanges(); len(lost) != 1 || lost[0] != (SeqRange{victim.Seq, victim.Seq}) {
				t.Fatalf("lost ranges %v, want [%d]", lost, victim.Seq)
			}
			if !strings.Contains(logs.all(), "acknowledged records lost") {
				t.Fatalf("loss not logged:\n%s", logs.all())
			}
			if _, err := e.Read(victim.Seq, victim.Pos); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("read of the damaged record: %v, want ErrCorrupt", err)
			}
			for _, r := range []Record{all[499], all[501]} {
				if got, err := e.Read(r.Seq, r.Pos); err != nil || checkRec(got) != nil {
					t.Fatalf("read of intact record %d beside the damage: %v", r.Seq, err)
				}
			}
			// A reader starting on the damaged record, with or without the
			// hint of its position, starts with the next one.
			for _, hint := range []Pos{0, victim.Pos} {
				r, err := e.NewReader(victim.Seq, hint)
				if err != nil {
					t.Fatal(err)
				}
				b, err := r.Next(nil, 1)
				r.Close()
				if err != nil || len(b) != 1 || b[0].Seq != victim.Seq+1 {
					t.Fatalf("reader from %d (hint %v): %v %d records", victim.Seq, hint, err, len(b))
				}
			}
			// Appends go on; after a restart the loss is still known and
			// not reported again.
			appendIDs(t, e, "b", 0, 10, 10)
			if got := readAll(t, e, all[len(all)-1].Seq+1); len(got) != 10 || got[0].Seq != all[len(all)-1].Seq+1 {
				t.Fatalf("after corruption: read %d new records", len(got))
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			e, logs = openLogged(t, fs)
			defer e.Close()
			if got := readAll(t, e, 1); len(got) != len(all)+9 {
				t.Fatalf("after restart: read %d records, want %d", len(got), len(all)+9)
			}
			if st := e.Stats(); st.LostRecords != 0 || len(e.LostRanges()) != 1 {
				t.Fatalf("after restart: LostRecords %d, ranges %v", st.LostRecords, e.LostRanges())
			}
		})
	}
}

// TestCorruptSealedSegmentManyFlips damages several frames of one sealed
// segment, adjacent and apart: exactly those are lost.
func TestCorruptSealedSegmentManyFlips(t *testing.T) {
	fs := vfs.NewMem()
	e, _ := openLogged(t, fs)
	ids := appendIDs(t, e, "a", 0, 1000, 25)
	all := expectLog(t, e, 1, ids)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	victims := []int{400, 401, 402, 450, 480}
	for _, v := range victims {
		data := fileData(t, fs, segPath(all[v].Pos.Segment()))
		data[int(all[v].Pos.Offset())+frameHeaderLen+3] ^= 0xff
	}
	e, _ = openLogged(t, fs)
	defer e.Close()
	got := readAll(t, e, 1)
	if len(got) != len(all)-len(victims) {
		t.Fatalf("read %d records, want %d", len(got), len(all)-len(victims))
	}
	want := []SeqRange{{all[400].Seq, all[402].Seq}, {all[450].Seq, all[450].Seq}, {all[480].Seq, all[480].Seq}}
	if lost := e.LostRanges(); !slices.Equal(lost, want) {
		t.Fatalf("lost %v, want %v", lost, want)
	}
}

// TestCorruptActiveSegmentBitFlip flips a bit in an acknowledged record of
// the segment that was active at a crash. The file alone could be a torn
// tail, but later frames that start a group prove the record was
// acknowledged: only it is reported lost, the records after it are kept,
// and no seq is reused. With dedup on or off: the proof does not come from
// the dedup checkpoint, nor from a consumer's cursor.
func TestCorruptActiveSegmentBitFlip(t *testing.T) {
	for _, dedup := range []bool{true, false} {
		t.Run(fmt.Sprintf("dedup=%v", dedup), func(t *testing.T) {
			fs := vfs.NewMem()
			opts := crashOptions(fs, nil)
			if !dedup {
				opts.DedupWindow = -1
			}
			e, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			ids := appendIDs(t, e, "a", 0, 50, 10)
			all := expectLog(t, e, 1, ids)
			if all[10].Pos.Segment() != e.active.id || all[49].Pos.Segment() != e.active.id {
				t.Fatalf("records 11..50 not in the active segment")
			}
			active := e.active.id
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			unseal(t, fs, active)
			fileData(t, fs, segPath(active))[int(all[10].Pos.Offset())+frameHeaderLen+4] ^= 1

			logs := &logCapture{}
			opts.Logger = logs.logger()
			e, err = Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if st := e.Stats(); st.LostRecords != 1 || st.TruncatedBytes != 0 {
				t.Fatalf("LostRecords %d (want 1), truncated %d\n%s", st.LostRecords, st.TruncatedBytes, logs.all())
			}
			if lost := e.LostRanges(); !slices.Equal(lost, []SeqRange{{11, 11}}) {
				t.Fatalf("lost %v, want [11]", lost)
			}
			if e.LastSeq() != 50 {
				t.Fatalf("LastSeq %d, want 50", e.LastSeq())
			}
			want := slices.Delete(slices.Clone(ids), 10, 11)
			if got := readAll(t, e, 1); len(got) != len(want) || got[10].Seq != 12 {
				t.Fatalf("read %d records, want %d", len(got), len(want))
			}
			res, err := e.Append(context.Background(), recsFor([]string{"new"}))
			if err != nil || res.LastSeq != 51 {
				t.Fatalf("append after loss: %+v %v (a seq reused?)", res, err)
			}
		})
	}
}

// TestCorruptActiveTornAfterAck tears the active segment inside its last
// group (never acknowledged: no group after it) and inside an earlier,
// acknowledged one whose tail is gone entirely, with dedup off: the first
// is cut silently, the second reported lost by seq, its seqs not reused.
func TestCorruptActiveTornAfterAck(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cutAt     int // record index whose frame is cut in half
		lost      []SeqRange
		nextSeq   uint64
		truncated bool
	}{
		{"last-group", 45, nil, 46, true},
		{"first-record-of-last-group", 40, nil, 41, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			opts := crashOptions(fs, nil)
			opts.DedupWindow = -1
			e, err := Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			ids := appendIDs(t, e, "a", 0, 50, 10)
			all := expectLog(t, e, 1, ids)
			active := e.active.id
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			unseal(t, fs, active)
			// Zero the file from the middle of the victim's frame on, as a
			// crash during its group's write leaves it.
			data := fileData(t, fs, segPath(active))
			from := int(all[tc.cutAt].Pos.Offset()) + 20
			clear(data[from:])
			e, err = Open(opts)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			st := e.Stats()
			if st.LostRecords != 0 || (st.TruncatedBytes > 0) != tc.truncated {
				t.Fatalf("lost %d, truncated %d", st.LostRecords, st.TruncatedBytes)
			}
			if e.LastSeq() != tc.nextSeq-1 {
				t.Fatalf("LastSeq %d, want %d", e.LastSeq(), tc.nextSeq-1)
			}
			expectLog(t, e, 1, ids[:tc.nextSeq-1])
		})
	}
}

// TestCorruptSegmentHeader flips a bit in a segment header. A sealed
// segment's header is not needed to read it (the manifest and the
// self-checking frames are), so nothing is lost. The active segment's
// header is checked when Open scans it; its acknowledged records must not
// be dropped for it.
func TestCorruptSegmentHeader(t *testing.T) {
	for _, which := range []string{"sealed", "active"} {
		t.Run(which, func(t *testing.T) {
			fs := vfs.NewMem()
			e, _ := openLogged(t, fs)
			ids := appendIDs(t, e, "a", 0, 600, 20)
			all := expectLog(t, e, 1, ids)
			seg := all[300].Pos.Segment()
			if which == "active" {
				seg = e.active.id
				if e.active.records() == 0 {
					ids = append(ids, appendIDs(t, e, "b", 0, 3, 3)...)
				}
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if which == "active" {
				unseal(t, fs, seg)
			}
			for _, off := range []int{3, 13, 17, 29} { // magic, id, baseSeq, crc
				fileData(t, fs, segPath(seg))[off] ^= 0x04
			}
			e, logs := openLogged(t, fs)
			defer e.Close()
			expectLog(t, e, 1, ids)
			if which == "active" && !strings.Contains(logs.all(), "header invalid") {
				t.Fatalf("damaged header not logged:\n%s", logs.all())
			}
			if st := e.Stats(); st.LostRecords != 0 || st.TruncatedBytes != 0 {
				t.Fatalf("lost %d records, truncated %d bytes\n%s", st.LostRecords, st.TruncatedBytes, logs.all())
			}
			ids = append(ids, appendIDs(t, e, "c", 0, 10, 10)...)
			expectLog(t, e, 1, ids)
		})
	}
}

// TestCorruptMissingSegment deletes a segment file behind the engine's
// back: Open succeeds, reports the records lost, and the rest of the log
// stays readable. When the file was the active segment's, the lost seqs are
// not given to new records.
func TestCorruptMissingSegment(t *testing.T) {
	for _, which := range []string{"first", "middle", "active"} {
		t.Run(which, func(t *testing.T) {
			fs := vfs.NewMem()
			e, _ := openLogged(t, fs)
			ids := appendIDs(t, e, "a", 0, 800, 40)
			if e.active.records() == 0 {
				ids = append(ids, appendIDs(t, e, "b", 0, 5, 5)...)
			}
			all := expectLog(t, e, 1, ids)
			c, err := e.Consumer("c")
			if err != nil {
				t.Fatal(err)
			}
			victim := all[0].Pos.Segment()
			switch which {
			case "middle":
				victim = all[400].Pos.Segment()
			case "active":
				victim = e.active.id
			}
			// An entry naming a record of the victim segment.
			var inVictim Record
			for _, r := range all {
				if r.Pos.Segment() == victim {
					inVictim = r
					break
				}
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			var gone []string
			var kept []Record
			for _, r := range all {
				if r.Pos.Segment() == victim {
					gone = append(gone, string(r.MessageID))
				} else {
					kept = append(kept, r)
				}
			}
			if err := fs.Remove(segPath(victim)); err != nil {
				t.Fatal(err)
			}

			e, logs := openLogged(t, fs)
			defer e.Close()
			if st := e.Stats(); st.LostRecords != uint64(len(gone)) {
				t.Fatalf("LostRecords %d, want %d\n%s", st.LostRecords, len(gone), logs.all())
			}
			if !strings.Contains(logs.all(), "segment file missing") {
				t.Fatalf("missing file not logged:\n%s", logs.all())
			}
			got := readAll(t, e, 1)
			if len(got) != len(kept) {
				t.Fatalf("read %d records, want %d", len(got), len(kept))
			}
			for i, r := range got {
				if r.Seq != kept[i].Seq || string(r.MessageID) != string(kept[i].MessageID) {
					t.Fatalf("record %d: seq %d %q, want %d %q", i, r.Seq, r.MessageID, kept[i].Seq, kept[i].MessageID)
				}
			}
			if _, err := e.Read(inVictim.Seq, inVictim.Pos); !errors.Is(err, ErrNotFound) {
				t.Fatalf("read of a lost record: %v, want ErrNotFound", err)
			}
			// Counted once: by Open, not again by the reader that crossed
			// the hole.
			readAll(t, e, 1)
			if st := e.Stats(); st.LostRecords != uint64(len(gone)) || len(st.Lost) != 1 || st.Lost[0].Len() != uint64(len(gone)) {
				t.Fatalf("after reading across the hole: LostRecords %d, lost %v, want %d once", st.LostRecords, st.Lost, len(gone))
			}
			// The consumer reads across the hole; appends continue after
			// the last seq.
			c = consumerOf(t, e, "c")
			if cur, _ := c.Cursor(); cur != all[len(all)-1].Seq+1 {
				t.Fatalf("cursor %d", cur)
			}
			res, err := e.Append(context.Background(), recsFor([]string{"new"}))
			if err != nil || res.LastSeq != all[len(all)-1].Seq+1 {
				t.Fatalf("append after loss: %+v %v", res, err)
			}
			// The lost events' dedup keys stay: a resend is still a
			// duplicate (its seq is known lost, not unknown).
			if res, err := e.Append(context.Background(), recsFor(gone[:1])); err != nil || res.Duplicates != 1 {
				t.Fatalf("resend of a lost event: %+v %v", res, err)
			}
		})
	}
}

func consumerOf(t *testing.T, e *Engine, name string) *Consumer {
	t.Helper()
	c, err := e.Consumer(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCorruptStraySegmentFiles puts segment files the manifest does not
// name into the log directory. Those holding no record the log still needs
// (a crash while deleting a consumed segment or preparing a recycled file,
// garbage, an empty file) are removed, never read, and their ids never
// reused. One holding records the index does not know makes Open refuse,
// changing nothing.
func TestCorruptStraySegmentFiles(t *testing.T) {
	fs := vfs.NewMem()
	e, _ := openLogged(t, fs)
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 600, 30)
	all := expectLog(t, e, 1, ids)
	consumed := slices.Clone(fileData(t, fs, segPath(all[0].Pos.Segment())))
	// Reclaim the first segments so that a stray can reuse a deleted id.
	tx := c.Begin()
	tx.Advance(all[300].Seq, all[300].Pos)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Reclaim(); err != nil || n == 0 {
		t.Fatalf("reclaim: %d %v", n, err)
	}
	first := e.Stats().FirstSeq
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	live := slices.Clone(fileData(t, fs, segPath(all[len(all)-1].Pos.Segment())))
	strays := map[string][]byte{
		segmentFileName(1):  consumed, // deleted from the manifest, not yet from the disk
		segmentFileName(98): consumed, // a recycled spare with its older bytes
		segmentFileName(99): []byte("not a segment at all"),
		segmentFileName(0):  nil,
	}
	others := map[string][]byte{"README": []byte("keep me"), "0000000005.seg.tmp": []byte("x")}
	for name, b := range strays {
		writeFile(t, fs, "/data/log/"+name, b)
	}
	for name, b := range others {
		writeFile(t, fs, "/data/log/"+name, b)
	}
	// A copy of live records under an id below the manifest's: not a
	// leftover of anything the engine does. Open refuses and removes
	// nothing.
	writeFile(t, fs, "/data/log/"+segmentFileName(2), live)
	logs := &logCapture{}
	if _, err := Open(crashOptions(fs, logs.logger())); !errors.Is(err, ErrIndexDamaged) || !strings.Contains(err.Error(), "sluice recover") {
		t.Fatalf("open with an unknown live segment: %v, want ErrIndexDamaged naming sluice recover", err)
	}
	for name := range strays {
		if _, err := fs.Stat("/data/log/" + name); err != nil && len(strays[name]) > 0 && name != segmentFileName(99) {
			t.Fatalf("refused open removed %s: %v", name, err)
		}
	}
	if err := fs.Remove("/data/log/" + segmentFileName(2)); err != nil {
		t.Fatal(err)
	}

	e, logs = openLogged(t, fs)
	defer e.Close()
	for name := range strays {
		if _, err := fs.Stat("/data/log/" + name); err == nil {
			t.Fatalf("stray %s not removed", name)
		}
	}
	for name := range others {
		if _, err := fs.Stat("/data/log/" + name); err != nil {
			t.Fatalf("%s removed: %v", name, err)
		}
	}
	expectLog(t, e, first, ids[first-1:])
	if st := e.Stats(); st.LostRecords != 0 || st.TruncatedBytes != 0 {
		t.Fatalf("stats after strays: %+v\n%s", st, logs.all())
	}
	if e.active.id <= 99 {
		t.Fatalf("new segment id %d reuses a stray's id", e.active.id)
	}
	ids = append(ids, appendIDs(t, e, "b", 0, 20, 20)...)
	expectLog(t, e, first, ids[first-1:])
}

func writeFile(t *testing.T, fs vfs.FS, path string, b []byte) {
	t.Helper()
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptStragglerReclaim damages the frame of an event that an entry
// still needs, in a segment every cursor has passed: reclaim must not be
// stuck on it forever (that would pin every later segment too).
func TestCorruptStragglerReclaim(t *testing.T) {
	fs := vfs.NewMem()
	e, _ := openLogged(t, fs)
	c := consumerOf(t, e, "c")
	ids := appendIDs(t, e, "a", 0, 1000, 25)
	all := expectLog(t, e, 1, ids)
	victim := all[100]
	tx := c.Begin()
	tx.Put(Entry{Seq: victim.Seq, Pos: victim.Pos, State: StateFailed, Key: victim.Key, DueAt: 1})
	tx.Put(Entry{Seq: all[900].Seq, Pos: all[900].Pos, State: StateAborted, Key: all[900].Key})
	tx.Advance(all[950].Seq, all[950].Pos)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	fileData(t, fs, segPath(victim.Pos.Segment()))[int(victim.Pos.Offset())+frameHeaderLen+3] ^= 1

	e, logs := openLogged(t, fs)
	defer e.Close()
	_, err := e.Reclaim()
	st := e.Stats()
	if err != nil || st.FirstSeq <= all[900].Seq || st.StragglersMoved != 1 {
		t.Fatalf("reclaim: %v; log starts at %d (segments before %d should go), %d stragglers moved\n%s", err, st.FirstSeq, all[950].Seq, st.StragglersMoved, logs.all())
	}
	if st.LostRecords == 0 {
		t.Fatalf("the damaged straggler was not reported lost")
	}
	c = consumerOf(t, e, "c")
	if _, err := e.Read(victim.Seq, victim.Pos); err == nil {
		t.Fatalf("read of the damaged straggler succeeded")
	}
	if r, err := e.Read(all[900].Seq, all[900].Pos); err != nil || checkRec(r) != nil {
		t.Fatalf("read of an intact straggler: %v", err)
	}
	// The entry can still be settled.
	tx = c.Begin()
	tx.Put(Entry{Seq: victim.Seq, Pos: victim.Pos, State: StateAborted, Key: victim.Key, Reason: "lost"})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}
