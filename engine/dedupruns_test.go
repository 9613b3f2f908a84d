package engine

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// randomHashes returns n distinct hashes in ascending order; some share
// their low half, so that order and lookups depend on both halves.
func randomHashes(rng *rand.Rand, n int) []hash128 {
	set := make(map[hash128]bool, n)
	for len(set) < n {
		h := hash128{lo: rng.Uint64(), hi: rng.Uint64()}
		if rng.IntN(8) == 0 {
			h.lo = uint64(rng.IntN(16))
		}
		set[h] = true
	}
	out := make([]hash128, 0, n)
	for h := range set {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b hash128) int {
		if a.less(b) {
			return -1
		}
		if a == b {
			return 0
		}
		return 1
	})
	return out
}

func writeTestRun(t testing.TB, fs vfs.FS, dir string, id uint64, gen uint32, hs []hash128) *run {
	t.Helper()
	path := fs.PathJoin(dir, runFileName(id))
	w, err := newRunWriter(fs, path, gen)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if err := w.add(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.finish(); err != nil {
		t.Fatal(err)
	}
	r, err := openRun(fs, path, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A run holds exactly the hashes written into it: every one is found, and
// hashes around them (between neighbours, before the first, after the
// last) are not; a scan returns them in order. Sizes cover empty runs,
// one partial block, exact blocks and a partial last block; on the disk
// lookups read a mapping of the file, in memory they read the file.
func TestRunContainsExactlyItsHashes(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testRunContains(t, vfs.NewMem(), "") })
	t.Run("disk", func(t *testing.T) { testRunContains(t, vfs.Default, t.TempDir()) })
}

func testRunContains(t *testing.T, fs vfs.FS, dir string) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i, n := range []int{0, 1, 2, 255, 256, 257, 512, 1000, 5000} {
		hs := randomHashes(rng, n)
		r := writeTestRun(t, fs, dir, uint64(i), 9, hs)
		if (r.blocks != nil) != (dir != "" && n > 0) {
			t.Fatalf("n=%d: mapped %v", n, r.blocks != nil)
		}
		if r.n != n || r.gen != 9 {
			t.Fatalf("n=%d: run has %d hashes of generation %d", n, r.n, r.gen)
		}
		in := make(map[hash128]bool, n)
		for _, h := range hs {
			in[h] = true
			if ok, err := r.contains(h); err != nil || !ok {
				t.Fatalf("n=%d: %x not found (%v)", n, h, err)
			}
		}
		probes := []hash128{{0, 0}, {^uint64(0), ^uint64(0)}}
		for _, h := range hs {
			probes = append(probes, hash128{h.lo, h.hi + 1}, hash128{h.lo, h.hi - 1}, hash128{h.lo + 1, h.hi}, hash128{rng.Uint64(), rng.Uint64()})
		}
		for _, p := range probes {
			if ok, err := r.contains(p); err != nil || ok != in[p] {
				t.Fatalf("n=%d: contains(%x) = %v, %v; want %v", n, p, ok, err, in[p])
			}
		}
		var got []hash128
		if err := r.readAll(func(h hash128) { got = append(got, h) }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, hs) {
			t.Fatalf("n=%d: scan returned %d hashes, not the %d written in order", n, len(got), n)
		}
		r.close()
	}
}

// The writer refuses hashes out of order and skips a repeat of the last.
func TestRunWriterOrder(t *testing.T) {
	fs := vfs.NewMem()
	w, err := newRunWriter(fs, "x.run", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.add(hash128{5, 5}); err != nil {
		t.Fatal(err)
	}
	if err := w.add(hash128{5, 5}); err != nil {
		t.Fatalf("a repeated hash: %v", err)
	}
	if err := w.add(hash128{5, 4}); err == nil {
		t.Fatal("a hash out of order was accepted")
	}
	w.abort()
	if _, err := fs.Stat("x.run"); err == nil {
		t.Fatal("an aborted run left its file")
	}
}

// Damage is detected, not read as keys: a flipped bit in a block fails
// the lookup that reads it with ErrCorrupt, one in the footer or trailer,
// or a truncated file, fails openRun.
func TestRunCorruption(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	hs := randomHashes(rng, 700) // 3 blocks
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
		atOpen bool
	}{
		{"block", func(b []byte) []byte { b[runBlockBytes+100] ^= 1; return b }, false},
		{"footer", func(b []byte) []byte { b[len(hs)*runEntryBytes+3] ^= 1; return b }, true},
		{"trailer", func(b []byte) []byte { b[len(b)-12] ^= 1; return b }, true},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, true},
		{"short", func(b []byte) []byte { return b[:10] }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, dir := vfs.Default, t.TempDir() // lookups read a mapping
			path := fs.PathJoin(dir, runFileName(1))
			writeTestRun(t, fs, dir, 1, 2, hs).close()
			f, err := fs.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := f.Stat()
			b := make([]byte, st.Size())
			if _, err := f.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			f.Close()
			b = tc.damage(b)
			g, err := fs.Create(path, vfs.WriteCategoryUnspecified)
			if err != nil {
				t.Fatal(err)
			}
			g.Write(b)
			g.Close()
			r, err := openRun(fs, path, 1)
			if tc.atOpen {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("openRun of a damaged run: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.close()
			if _, err := r.contains(hs[300]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("lookup in a damaged block: %v, want ErrCorrupt", err)
			}
			if ok, err := r.contains(hs[10]); err != nil || !ok {
				t.Fatalf("lookup in an intact block: %v %v", ok, err)
			}
			if err := r.readAll(func(hash128) {}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("scan over a damaged block: %v, want ErrCorrupt", err)
			}
		})
	}
}

// A merge writes the union of its inputs, each hash once, in order; a set
// stop flag ends it early.
func TestMergeRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	fs := vfs.NewMem()
	all := randomHashes(rng, 3000)
	var inputs []*run
	want := make(map[hash128]bool)
	for i, n := range []int{1, 0, 700, 1500, 2999} {
		var hs []hash128
		for _, h := range all[:n] {
			if rng.IntN(3) == 0 {
				hs = append(hs, h)
				want[h] = true
			}
		}
		inputs = append(inputs, writeTestRun(t, fs, "", uint64(i), 4, hs))
	}
	var stop atomic.Bool
	mergeTestRuns(t, fs, "out.run", 4, inputs)
	out, err := openRun(fs, "out.run", 9)
	if err != nil {
		t.Fatal(err)
	}
	var got []hash128
	if err := out.readAll(func(h hash128) { got = append(got, h) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("merged %d hashes, want %d", len(got), len(want))
	}
	for i, h := range got {
		if !want[h] || i > 0 && !got[i-1].less(h) {
			t.Fatalf("merged hash %d (%x) unexpected or out of order", i, h)
		}
	}

	stop.Store(true)
	w, _ := newRunWriter(fs, "stopped.run", 4)
	if err := mergeRuns(w, inputs, &stop); !errors.Is(err, errRunMergeStopped) {
		t.Fatalf("merge with stop set: %v", err)
	}
	w.abort()
}

// The merge policy keeps a generation's runs few and geometrically
// growing: fed equal batches, a generation never holds more than a
// handful of runs, each key is rewritten a bounded number of times, and
// the newest runs are the ones merged.
func TestPickMergePolicy(t *testing.T) {
	const batch, batches = 1000, 3000
	var runs []*run // newest first
	written, most := 0, 0
	for i := 0; i < batches; i++ {
		runs = slices.Insert(runs, 0, &run{n: batch})
		written += batch
		for {
			k := pickMerge(runs)
			if k == 0 {
				break
			}
			if k < 2 {
				t.Fatalf("pickMerge chose %d run", k)
			}
			sum := 0
			for _, r := range runs[:k] {
				sum += r.n
			}
			written += sum
			runs = slices.Insert(runs[k:], 0, &run{n: sum})
		}
		most = max(most, len(runs))
		for j := 1; j < len(runs); j++ {
			if runs[j].n < runs[j-1].n {
				t.Fatalf("after batch %d: run %d (%d keys) older than a larger one (%d)", i, j, runs[j].n, runs[j-1].n)
			}
		}
	}
	amp := float64(written) / (batch * batches)
	t.Logf("%d batches: at most %d runs, write amplification %.2f", batches, most, amp)
	if most > runMaxPerGen || amp > 12 {
		t.Fatalf("%d batches: up to %d runs, write amplification %.2f", batches, most, amp)
	}
}

// End to end in the engine: with small index batches, keys go to many runs
// that merges fold together; every stored event is still a duplicate, in
// the engine that wrote it and after a reopen, and no file is left that
// no run names.
func TestDedupRunsMergeInEngine(t *testing.T) {
	fs := vfs.NewMem()
	o := testOptions(fs)
	o.DedupIndexBatchKeys = 50
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 200; i++ {
		batch := batchIDs("m", i*25, 25)
		if res, err := e.Append(context.Background(), recsFor(batch)); err != nil || res.Stored != 25 {
			t.Fatalf("append %d: %+v %v", i, res, err)
		}
		ids = append(ids, batch...)
	}
	e.writeMu.Lock()
	err = e.dedup.sync(e.opts.Now())
	for e.dedup.merging && err == nil { // let merges finish
		err = e.dedup.merged(<-e.dedup.mergeDone)
	}
	merges, runs := e.dedup.merges, e.dedup.runCount.Load()
	e.writeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if merges == 0 || runs > runMaxPerGen+1 {
		t.Fatalf("%d merges, %d runs left", merges, runs)
	}
	check := func(e *Engine) {
		t.Helper()
		for i := 0; i < len(ids); i += 100 {
			res, err := e.Append(context.Background(), recsFor(ids[i:i+100]))
			if err != nil || res.Duplicates != 100 {
				t.Fatalf("re-append of %d..%d: %+v %v", i, i+100, res, err)
			}
		}
	}
	check(e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if e, err = Open(o); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := e.Stats().DedupRuns; got != int(runs) {
		t.Errorf("%d runs after reopen, %d before", got, runs)
	}
	names, _ := fs.List("/data/dedup")
	if len(names) != int(runs) {
		t.Errorf("dedup directory holds %v for %d runs", names, runs)
	}
	check(e)
}

// BenchmarkDedupMergeRuns: a background merge of four runs of
// DedupIndexBatchKeys keys each into one, on the real disk (the page cache
// holds the inputs, as it does when they were just written). One op is one
// key written to the output.
func BenchmarkDedupMergeRuns(b *testing.B) {
	fs := vfs.Default
	dir := b.TempDir()
	rng := rand.New(rand.NewPCG(9, 10))
	var inputs []*run
	for i := range 4 {
		r := writeTestRun(b, fs, dir, uint64(i), 1, randomHashes(rng, defaultDedupIndexBatchKeys))
		defer r.close()
		inputs = append(inputs, r)
	}
	b.ResetTimer()
	for done := 0; done < b.N; done += 4 * defaultDedupIndexBatchKeys {
		mergeTestRuns(b, fs, fs.PathJoin(dir, "out.run"), 1, inputs)
	}
}

// mergeTestRuns merges inputs into a run of generation gen at path.
func mergeTestRuns(t testing.TB, fs vfs.FS, path string, gen uint32, inputs []*run) {
	t.Helper()
	var stop atomic.Bool
	w, err := newRunWriter(fs, path, gen)
	if err != nil {
		t.Fatal(err)
	}
	if err := mergeRuns(w, inputs, &stop); err != nil {
		t.Fatal(err)
	}
	if _, err := w.finish(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkDedupRunContains: a lookup that reaches a run (a Bloom filter
// said maybe), in a run of 4M keys on the real disk, page cache warm.
func BenchmarkDedupRunContains(b *testing.B) {
	fs := vfs.Default
	path := fs.PathJoin(b.TempDir(), runFileName(1))
	rng := rand.New(rand.NewPCG(11, 12))
	w, err := newRunWriter(fs, path, 1)
	if err != nil {
		b.Fatal(err)
	}
	var h hash128
	for range 4 << 20 {
		h.lo += 1 + rng.Uint64N(1<<42)
		w.add(h)
	}
	if _, err := w.finish(); err != nil {
		b.Fatal(err)
	}
	r, err := openRun(fs, path, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer r.close()
	b.ResetTimer()
	for range b.N {
		if _, err := r.contains(hash128{lo: rng.Uint64N(h.lo)}); err != nil {
			b.Fatal(err)
		}
	}
}

// A run block damaged on disk while the engine runs fails no append: the
// lookup that finds the bad checksum drops the run (logged as an error),
// and the appends go on; only duplicates of the run's events may be
// stored again.
func TestDedupDamagedRunDropped(t *testing.T) {
	fs := vfs.NewMem()
	logs := &logCapture{}
	o := testOptions(fs)
	o.Logger = logs.logger()
	o.DedupIndexBatchKeys = 1 << 20 // one run, written by sync
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ids := batchIDs("d", 0, 500)
	if _, err := e.Append(context.Background(), recsFor(ids)); err != nil {
		t.Fatal(err)
	}
	e.writeMu.Lock()
	err = e.dedup.sync(e.opts.Now())
	e.writeMu.Unlock()
	if err != nil || e.Stats().DedupRuns != 1 {
		t.Fatalf("sync: %v, %d runs", err, e.Stats().DedupRuns)
	}
	damageOnlyRun(t, fs)
	// Resend one event at a time until a lookup meets the damage; the
	// events not resent yet had their keys only in the dropped run.
	k := 0
	for ; k < len(ids) && e.Stats().DedupRuns == 1; k++ {
		if _, err := e.Append(context.Background(), recsFor(ids[k:k+1])); err != nil {
			t.Fatalf("append after the run was damaged: %v", err)
		}
	}
	if e.Stats().DedupRuns != 0 || k == len(ids) {
		t.Fatalf("the damaged run was not dropped (%d runs after %d resends)", e.Stats().DedupRuns, k)
	}
	if !strings.Contains(logs.all(), "dedup run damaged") {
		t.Fatalf("the damaged run was not logged:\n%s", logs.all())
	}
	// The keys the run held come back from the log: every event not yet
	// resent is a duplicate.
	deadline := time.Now().Add(time.Minute)
	for e.Stats().DedupRebuilds == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if res, err := e.Append(context.Background(), recsFor(ids[k:])); err != nil || res.Duplicates != len(ids)-k {
		t.Fatalf("resend after the rebuild: %+v %v, want %d duplicates", res, err, len(ids)-k)
	}
}

// A dedup run damaged while the engine was stopped is dropped at Open and
// its keys rebuilt from the retained log before Open returns.
func TestDedupDamagedRunRebuiltAtOpen(t *testing.T) {
	fs := vfs.NewMem()
	o := testOptions(fs)
	o.DedupIndexBatchKeys = 1 << 20 // one run, written by Close
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	ids := batchIDs("d", 0, 500)
	if _, err := e.Append(context.Background(), recsFor(ids)); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	damageOnlyRun(t, fs)
	logs := &logCapture{}
	o.Logger = logs.logger()
	e, err = Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if !strings.Contains(logs.all(), "dedup run unreadable") {
		t.Fatalf("the damaged run was not logged:\n%s", logs.all())
	}
	if res, err := e.Append(context.Background(), recsFor(ids)); err != nil || res.Duplicates != len(ids) {
		t.Fatalf("resend after reopening: %+v %v, want %d duplicates", res, err, len(ids))
	}
}

// A merge whose input fails its checksum drops that input (logged as an
// error) instead of failing again at every retry while the generation's
// runs pile up; the other input's events are still duplicates.
func TestDedupMergeDropsDamagedInput(t *testing.T) {
	fs := vfs.NewMem()
	logs := &logCapture{}
	o := testOptions(fs)
	o.Logger = logs.logger()
	o.DedupIndexBatchKeys = 1 << 20 // runs are written by sync only
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	syncRuns := func() {
		t.Helper()
		e.writeMu.Lock()
		defer e.writeMu.Unlock()
		if err := e.dedup.sync(e.opts.Now()); err != nil {
			t.Fatal(err)
		}
		for e.dedup.merging {
			if err := e.dedup.merged(<-e.dedup.mergeDone); err != nil {
				t.Fatalf("merge: %v", err)
			}
		}
	}
	first, second := batchIDs("a", 0, 500), batchIDs("b", 0, 500)
	if _, err := e.Append(context.Background(), recsFor(first)); err != nil {
		t.Fatal(err)
	}
	syncRuns()
	names, _ := fs.List("/data/dedup")
	if len(names) != 1 {
		t.Fatalf("runs after the first batch: %v", names)
	}
	// Damage the second block, which lookups of the second batch's new
	// ids do not read (its Bloom filter rules them out); the merge does.
	f, err := fs.OpenReadWrite("/data/dedup/"+names[0], vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, runBlockBytes+8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := e.Append(context.Background(), recsFor(second)); err != nil {
		t.Fatal(err)
	}
	syncRuns() // the second run, then a merge of the two
	if e.dedup.merges == 0 {
		t.Fatal("no merge was tried")
	}
	if !strings.Contains(logs.all(), "dedup run damaged") {
		t.Fatalf("the damaged input was not logged:\n%s", logs.all())
	}
	if got := e.Stats().DedupRuns; got != 1 {
		t.Fatalf("%d runs left, want the undamaged one", got)
	}
	if res, err := e.Append(context.Background(), recsFor(second)); err != nil || res.Duplicates != len(second) {
		t.Fatalf("re-append of the undamaged run's events: %+v %v", res, err)
	}
}

// damageOnlyRun overwrites four bytes of the first block of the one dedup
// run in /data/dedup.
func damageOnlyRun(t *testing.T, fs vfs.FS) {
	t.Helper()
	names, _ := fs.List("/data/dedup")
	if len(names) != 1 {
		t.Fatalf("dedup files %v, want one run", names)
	}
	f, err := fs.OpenReadWrite("/data/dedup/"+names[0], vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff}, 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
}
