package engine

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sluice-cdi/sluice/engine/internal/bloom"
)

// dedup remembers (source, messageId) pairs for the dedup window.
//
// A 128-bit hash of (source, messageId) stands for the pair: two different
// pairs collide with odds around n²/2¹²⁹ (10⁻¹⁷ for 10¹¹ events in a
// window). Time is cut into generations of window/N. Each generation has a
// Bloom filter in memory (keyed by the hash's low half), which answers
// "absent" for almost every new event without reading anything, and its
// hashes on disk in dedup runs (dedupruns.go): immutable sorted files,
// each named in the index (0x0e) with its generation. A generation that
// leaves the window is dropped whole: its filter freed, its runs deleted.
//
// Accepted keys collect in memory (fresh) and go to disk in large sorted
// batches, written by a background goroutine while the committer goes on
// (flushing): one new run per generation in the batch, synced, then named
// in the index together with the checkpoint (0x0c), the last seq the
// batch covers, in one synced index batch. After a crash Open replays the
// log past the checkpoint, so the index never misses a stored event and
// never names one that is not stored; Reclaim keeps every segment past the
// checkpoint (indexedThrough, dedup.sync). Lookups that a filter cannot rule out consult
// fresh and flushing, then the generation's runs, newest first.
//
// A second background goroutine merges a generation's newest runs into
// one when together they reach half the next older run's size, so
// that a generation keeps a few runs of geometrically growing size and
// every key is rewritten a handful of times: a streaming merge of
// fixed-width sorted keys, where the keys' compactions in Pebble (versions
// 1 and 2 of the index kept them there) took a third of the engine's CPU
// under sustained load. The merged run replaces its inputs in one synced
// index batch; the inputs' files go once no merge reads them.
//
// Owned by the committer goroutine, and by whoever holds the engine's
// writeMu (Open before the committer starts, Reclaim, Close): not safe for
// concurrent use, except the atomic fields.
type dedup struct {
	db          *pebble.DB
	fs          vfs.FS
	dir         string // the runs' files
	log         *slog.Logger
	enabled     bool
	window      time.Duration
	genDur      time.Duration
	filterBytes int
	gens        []*genIndex // live generations, newest first
	minGen      uint32      // generations below it are dropped
	ckpt        uint64      // last seq whose key is in a run (committed batch)
	indexed     atomic.Uint64
	nextRun     atomic.Uint64 // the next run's id

	// Live runs and their bytes; bytes written into runs (new and merged)
	// and keys flushed, for the write amplification.
	runCount, runBytes      atomic.Int64
	runBytesWritten, keysIn atomic.Uint64

	// fresh holds the keys accepted since the last flush, by hash (the
	// value is the generation); pending lists them in order of acceptance.
	// pending[:committed] belong to groups whose records are stored, up to
	// seq committedSeq; the rest to the group in progress, undone if it fails.
	fresh        *keySet
	pending      []pendingKey
	base         int // keys accepted before pending[0] (gone to the index)
	committed    int
	committedSeq uint64
	lastFlush    time.Time
	lastCommit   time.Time // when keys were last committed
	retryAt      time.Time // after a failed batch, no new one before this

	// The batch being written in the background, if any: its keys (by hash
	// and sorted), the seq it moves the checkpoint to, and where its result
	// arrives.
	flushing     *keySet
	flushKeys    []pendingKey // pending[:committed] when the batch started
	spare        []pendingKey // a free array for pending, when not nil
	flushSeq     uint64
	flushDone    chan flushResult
	inFlight     bool
	flushEvery   int
	flushMaxWait time.Duration

	// The merge in flight, if any, and its inputs; runs out of the lookups
	// (merged or expired) wait in dropped until no merge reads them, then
	// are closed and removed by goroutines in bg.
	merging   bool
	mergeIn   []*run
	mergeDone chan mergeResult
	dropped   []*run
	stop      atomic.Bool // Close: merges stop early
	bg        sync.WaitGroup
	// mergesPaused: free disk space is low (diskfull.go); no merge starts.
	mergesPaused atomic.Bool

	hashBuf []byte

	// damaged lists the generations that lost a run to damage since the
	// last rebuild; onDamage asks for one (deduprebuild.go).
	damaged  map[uint32]bool
	onDamage func()

	lookups, hits, indexGets, flushes, merges uint64
}

// genIndex is one live generation: its Bloom filter and its runs.
type genIndex struct {
	gen  uint32
	f    *bloom.Filter
	runs []*run // newest first
}

type flushResult struct {
	runs []*run
	err  error
}

type mergeResult struct {
	out *run
	err error
}

// Merge policy: a generation's newest runs are merged once together they
// hold at least 1/runMergeRatio of the next older run's keys, or when it
// has more than runMaxPerGen runs.
const (
	runMergeRatio = 2
	runMaxPerGen  = 8
)

func newDedup(db *pebble.DB, o *Options, dir string) *dedup {
	d := &dedup{
		db:      db,
		fs:      o.FS,
		dir:     dir,
		log:     o.Logger,
		enabled: o.DedupWindow > 0,
		window:  o.DedupWindow,

		fresh:        newKeySet(),
		flushing:     newKeySet(),
		flushDone:    make(chan flushResult, 1),
		mergeDone:    make(chan mergeResult, 1),
		flushEvery:   o.DedupIndexBatchKeys,
		flushMaxWait: o.DedupIndexInterval,
	}
	if d.enabled {
		d.genDur = max(o.DedupWindow/time.Duration(o.DedupGenerations), time.Millisecond)
		d.filterBytes = o.DedupFilterBytes / (o.DedupGenerations + 1)
	}
	return d
}

func (d *dedup) genOf(t time.Time) uint32 { return uint32(t.UnixNano() / int64(d.genDur)) }

// pendingKey is an accepted record's dedup key, not yet in a run.
type pendingKey struct {
	gen uint32
	h   hash128
}

// hash128 is a 128-bit hash of (source, messageId).
type hash128 struct{ lo, hi uint64 }

// hash returns the hash of (source, messageID): lo is xxhash64 of the pair,
// hi xxhash64 of lo and the pair again (any two pairs whose lo collide
// still differ in hi's input). The values are part of the index format.
// Both inputs are laid out once in hashBuf: lo's 8 bytes, then the pair.
func (d *dedup) hash(source, messageID []byte) hash128 {
	b := append(d.hashBuf[:0], 0, 0, 0, 0, 0, 0, 0, 0)
	b = append(b, source...)
	b = append(b, 0)
	b = append(b, messageID...)
	d.hashBuf = b
	lo := xxhash.Sum64(b[8:])
	binary.LittleEndian.PutUint64(b, lo)
	return hash128{lo: lo, hi: xxhash.Sum64(b)}
}

// genIndex returns generation gen's index, created when missing.
func (d *dedup) genIndex(gen uint32) *genIndex {
	for _, g := range d.gens {
		if g.gen == gen {
			return g
		}
	}
	g := &genIndex{gen: gen, f: bloom.New(d.filterBytes)}
	d.gens = append(d.gens, g)
	slices.SortFunc(d.gens, func(a, b *genIndex) int { return cmp.Compare(b.gen, a.gen) })
	return g
}

// expire drops generations that left the window.
func (d *dedup) expire(now time.Time) error {
	if !d.enabled {
		return nil
	}
	min := d.genOf(now.Add(-d.window))
	if min <= d.minGen {
		return nil
	}
	var gone []*run
	d.gens = slices.DeleteFunc(d.gens, func(g *genIndex) bool {
		if g.gen < min {
			gone = append(gone, g.runs...)
			return true
		}
		return false
	})
	d.minGen = min
	return d.dropRuns(gone)
}

// dropRuns takes runs out of the index (they are out of the lookups
// already) and schedules their files' removal. The deletion is not synced:
// a run still named after a crash belongs to an expired generation, which
// load drops, or was damaged, and load drops it again when it finds the
// file gone or bad.
func (d *dedup) dropRuns(runs []*run) error {
	if len(runs) == 0 {
		return nil
	}
	b := d.db.NewBatch()
	defer b.Close()
	for _, r := range runs {
		if err := b.Delete(dedupRunKey(r.id), nil); err != nil {
			return fmt.Errorf("cannot drop dedup run %d: %w", r.id, err)
		}
	}
	err := b.Commit(pebble.NoSync)
	if err != nil {
		err = fmt.Errorf("cannot drop dedup runs: %w", err)
	}
	d.retire(runs)
	return err
}

// retire moves runs out of the lookups into dropped, and releases them.
func (d *dedup) retire(runs []*run) {
	for _, r := range runs {
		d.runCount.Add(-1)
		d.runBytes.Add(-r.size)
	}
	d.dropped = append(d.dropped, runs...)
	d.release()
}

// release closes and removes the dropped runs no merge reads. A file
// left behind by a crash is adopted by the next load if it is readable (its
// keys are only ever kept too long) and removed if not (dedupload.go).
func (d *dedup) release() {
	d.dropped = slices.DeleteFunc(d.dropped, func(r *run) bool {
		if d.merging && slices.Contains(d.mergeIn, r) {
			return false
		}
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			r.close()
			d.fs.Remove(r.path)
		}()
		return true
	})
}

// poll collects a finished background index batch or merge, if any.
func (d *dedup) poll() error {
	if d.inFlight {
		select {
		case res := <-d.flushDone:
			if err := d.flushed(res); err != nil {
				return err
			}
		default:
		}
	}
	if d.merging {
		select {
		case res := <-d.mergeDone:
			return d.merged(res)
		default:
		}
	}
	return nil
}

// mark is the position after the keys accepted so far: commitThrough(mark)
// commits them. Positions count every key ever accepted (pending starts at
// base), so a mark taken before a batch leaves stays valid.
func (d *dedup) mark() int { return d.base + len(d.pending) }

// undo forgets the keys accepted since the last commitThrough: their
// records were not stored.
func (d *dedup) undo() { d.undoTo(d.base + d.committed) }

// undoTo forgets the keys accepted after mark (at or past the committed
// ones).
func (d *dedup) undoTo(mark int) {
	i := mark - d.base
	for _, p := range d.pending[i:] {
		d.fresh.Delete(p.h)
	}
	d.pending = d.pending[:i]
}

// seen reports whether r duplicates an event stored before or accepted
// earlier in this group; if not, it records r as accepted.
func (d *dedup) seen(r *Record, now time.Time) (bool, error) {
	if !d.enabled || len(r.MessageID) == 0 {
		return false, nil
	}
	d.lookups++
	h := d.hash(r.Source, r.MessageID)
	maybe := false
	for _, g := range d.gens {
		if g.gen >= d.minGen && g.f.MayContain(h.lo) {
			maybe = true
			break
		}
	}
	if maybe {
		dup, err := d.known(h)
		if err != nil || dup {
			return dup, err
		}
	}
	gen := d.genOf(now)
	d.fresh.Set(h, gen)
	d.add(h, gen)
	return false, nil
}

// known looks h up in the keys not yet in a run, then in the runs of the
// generations whose filters may hold it.
func (d *dedup) known(h hash128) (bool, error) {
	if gen, ok := d.fresh.Get(h); ok && gen >= d.minGen {
		d.hits++
		return true, nil
	}
	if gen, ok := d.flushing.Get(h); ok && gen >= d.minGen {
		d.hits++
		return true, nil
	}
	for _, g := range d.gens {
		if g.gen < d.minGen || !g.f.MayContain(h.lo) {
			continue
		}
		for i := 0; i < len(g.runs); i++ {
			r := g.runs[i]
			d.indexGets++
			found, err := r.contains(h)
			if errors.Is(err, ErrCorrupt) {
				d.dropDamaged(g, r, err)
				i--
				continue
			}
			if err != nil {
				return false, fmt.Errorf("cannot look up dedup key: %w", err)
			}
			if found {
				d.hits++
				return true, nil
			}
		}
	}
	return false, nil
}

// dropDamaged takes a run whose block failed its checksum out of the
// lookups and the index, as load does with a run it cannot read: appends
// go on, and the generation's keys are rebuilt from the retained log
// (until then, duplicates of its events may be stored again).
func (d *dedup) dropDamaged(g *genIndex, r *run, err error) {
	d.log.Error("dedup run damaged: dropped; its keys are rebuilt from the retained log", "err", err)
	d.markDamaged(g.gen)
	g.runs = slices.DeleteFunc(g.runs, func(x *run) bool { return x == r })
	if derr := d.dropRuns([]*run{r}); derr != nil {
		d.log.Warn("cannot drop damaged dedup run from the index", "err", derr)
	}
}

// add puts a record's key in the filter and the pending keys.
func (d *dedup) add(h hash128, gen uint32) {
	d.genIndex(gen).f.Add(h.lo)
	d.pending = append(d.pending, pendingKey{gen: gen, h: h})
}

// commitThrough marks the keys up to mark as belonging to stored records,
// up to seq lastSeq, and starts a background batch when enough keys wait
// (or they waited long enough) and none is being written. Keys past mark
// (a group prepared meanwhile) stay uncommitted. It returns the error of a
// background batch that failed; its keys are kept for the next one.
func (d *dedup) commitThrough(mark int, lastSeq uint64, now time.Time) error {
	if mark-d.base > d.committed {
		d.lastCommit = now
	}
	d.committed = mark - d.base
	d.committedSeq = max(d.committedSeq, lastSeq)
	if d.committed == 0 {
		if !d.inFlight && len(d.pending) == 0 {
			d.indexed.Store(d.committedSeq) // no key waits
		}
		return nil
	}
	if d.lastFlush.IsZero() {
		d.lastFlush = now
	}
	if d.committed < d.flushEvery && now.Sub(d.lastFlush) < d.flushMaxWait || now.Before(d.retryAt) {
		return nil
	}
	if d.inFlight {
		if d.committed < 2*d.flushEvery {
			return nil // the writer is behind: collect more meanwhile
		}
		if err := d.flushed(<-d.flushDone); err != nil {
			return err
		}
	}
	d.startFlush(now)
	return nil
}

// startFlush hands the committed keys to a background index batch. The
// committer only swaps slices and maps here: sorting the keys (tens of
// milliseconds for a full batch) is the batch's work, not the group's.
func (d *dedup) startFlush(now time.Time) {
	d.flushKeys = d.pending[:d.committed]
	d.flushSeq = d.committedSeq
	// The committed keys move to flushing; those of a group prepared since
	// stay fresh (undo may yet forget them).
	d.fresh, d.flushing = d.flushing, d.fresh
	d.fresh.Clear()
	rest := d.pending[d.committed:]
	for _, p := range rest {
		d.fresh.Set(p.h, p.gen)
		d.flushing.Delete(p.h)
	}
	d.pending = append(d.spare[:0], rest...)
	d.spare = nil
	d.base += d.committed
	d.committed = 0
	d.lastFlush = now
	d.inFlight = true
	d.flushes++
	go func(keys []pendingKey, ckpt uint64) {
		lowerThreadPriority()
		sortPending(keys)
		runs, err := d.writeBatch(keys, ckpt)
		d.flushDone <- flushResult{runs, err}
	}(d.flushKeys, d.flushSeq)
}

// sortPending sorts keys by generation, then hash. The comparison decides
// on the first field that differs (two keys almost always differ in gen
// or lo), which makes the sort of a full batch several times faster than
// comparing all three fields every time.
func sortPending(keys []pendingKey) {
	slices.SortFunc(keys, func(a, b pendingKey) int {
		if a.gen != b.gen {
			return cmp.Compare(a.gen, b.gen)
		}
		if a.h.lo != b.h.lo {
			return cmp.Compare(a.h.lo, b.h.lo)
		}
		return cmp.Compare(a.h.hi, b.h.hi)
	})
}

// writeBatch writes sorted keys as one run per generation and names the
// runs in the index with the checkpoint ckpt, in one synced batch.
func (d *dedup) writeBatch(keys []pendingKey, ckpt uint64) ([]*run, error) {
	var runs []*run
	b := d.db.NewBatch()
	defer b.Close()
	err := func() error {
		for i := 0; i < len(keys); {
			gen, j := keys[i].gen, i
			for j < len(keys) && keys[j].gen == gen {
				j++
			}
			r, err := d.writeRun(gen, func(w *runWriter) error {
				for _, p := range keys[i:j] {
					if err := w.add(p.h); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			runs = append(runs, r)
			if err := b.Set(dedupRunKey(r.id), runMeta(r), nil); err != nil {
				return err
			}
			i = j
		}
		if err := syncDir(d.fs, d.dir); err != nil {
			return err
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], ckpt)
		if err := b.Set(keyDedupCkpt, v[:], nil); err != nil {
			return err
		}
		return b.Commit(pebble.Sync)
	}()
	if err != nil {
		for _, r := range runs {
			r.close()
			d.fs.Remove(r.path)
		}
		return nil, fmt.Errorf("cannot write dedup keys to the index: %w", err)
	}
	d.keysIn.Add(uint64(len(keys)))
	return runs, nil
}

// writeRun writes a new run of generation gen, its keys added by fill, and
// opens it.
func (d *dedup) writeRun(gen uint32, fill func(*runWriter) error) (*run, error) {
	id := d.nextRun.Add(1) - 1
	path := d.fs.PathJoin(d.dir, runFileName(id))
	w, err := newRunWriter(d.fs, path, gen)
	if err != nil {
		return nil, err
	}
	if err := fill(w); err != nil {
		w.abort()
		return nil, err
	}
	size, err := w.finish()
	if err != nil {
		return nil, err
	}
	d.runBytesWritten.Add(uint64(size))
	r, err := openRun(d.fs, path, id)
	if err != nil {
		d.fs.Remove(path)
		return nil, err
	}
	return r, nil
}

func runMeta(r *run) []byte {
	v := binary.BigEndian.AppendUint32(make([]byte, 0, 12), r.gen)
	return binary.BigEndian.AppendUint64(v, uint64(r.n))
}

// flushed takes a background batch's result. On success the checkpoint
// moves and the new runs join the lookups; on failure its keys return to
// the waiting ones for the next batch.
func (d *dedup) flushed(res flushResult) error {
	d.inFlight = false
	if res.err == nil {
		d.ckpt = d.flushSeq
		d.indexed.Store(d.ckpt)
		d.flushing.Clear()
		d.spare, d.flushKeys = d.flushKeys[:0], nil
		var expired []*run
		for _, r := range res.runs {
			d.runCount.Add(1)
			d.runBytes.Add(r.size)
			if r.gen < d.minGen {
				expired = append(expired, r)
				continue
			}
			g := d.genIndex(r.gen)
			g.runs = slices.Insert(g.runs, 0, r)
		}
		err := d.dropRuns(expired)
		d.maybeMerge()
		return err
	}
	for h, gen := range d.flushing.All() {
		// A key accepted again meanwhile (its generation expired while
		// it was being written) keeps its newer generation.
		if g, ok := d.fresh.Get(h); !ok || g < gen {
			d.fresh.Set(h, gen)
		}
	}
	d.flushing.Clear()
	d.retryAt = d.lastFlush.Add(d.flushMaxWait) // not at every group: once a wait
	d.committed += len(d.flushKeys)
	d.base -= len(d.flushKeys)
	d.spare = d.pending[:0]
	d.pending = append(d.flushKeys, d.pending...)
	d.flushKeys = nil
	return fmt.Errorf("cannot commit dedup keys: %w", res.err)
}

// pickMerge returns how many of a generation's newest runs (newest first)
// to merge into one: all those up to the oldest run whose newer runs
// together hold 1/runMergeRatio of its keys; 0 for none.
func pickMerge(runs []*run) int {
	k, sum := 0, 0
	for j, r := range runs {
		if j > 0 && sum*runMergeRatio >= r.n {
			k = j + 1
		}
		sum += r.n
	}
	if k < 2 && len(runs) > runMaxPerGen {
		k = len(runs)
	}
	return k
}

// maybeMerge starts a merge in the background if a generation needs one
// and none is running.
func (d *dedup) maybeMerge() {
	if d.merging || d.stop.Load() || d.mergesPaused.Load() {
		return
	}
	for _, g := range d.gens {
		k := pickMerge(g.runs)
		if k < 2 {
			continue
		}
		in := slices.Clone(g.runs[:k])
		d.merging, d.mergeIn = true, in
		d.merges++
		go func(gen uint32) {
			lowerThreadPriority()
			out, err := d.merge(gen, in)
			d.mergeDone <- mergeResult{out, err}
		}(g.gen)
		return
	}
}

// merge writes the union of runs (all of generation gen) as a new run and
// swaps it for them in the index, in one synced batch. A crash before the
// batch leaves the inputs named and the output a stray file; after it,
// the inputs are stray files. Load adopts readable stray files and removes
// unreadable ones either way (dedupload.go).
func (d *dedup) merge(gen uint32, runs []*run) (*run, error) {
	out, err := d.writeRun(gen, func(w *runWriter) error { return mergeRuns(w, runs, &d.stop) })
	if err != nil {
		return nil, err
	}
	b := d.db.NewBatch()
	defer b.Close()
	err = syncDir(d.fs, d.dir)
	if err == nil {
		err = b.Set(dedupRunKey(out.id), runMeta(out), nil)
	}
	for _, r := range runs {
		if err == nil {
			err = b.Delete(dedupRunKey(r.id), nil)
		}
	}
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	if err != nil {
		out.close()
		d.fs.Remove(out.path)
		return nil, err
	}
	return out, nil
}

// merged takes a merge's result: the output replaces its inputs in the
// lookups (or is dropped at once if its generation expired meanwhile).
// A failed merge leaves the inputs in place; the next batch tries again.
func (d *dedup) merged(res mergeResult) error {
	in := d.mergeIn
	d.merging, d.mergeIn = false, nil
	if res.err != nil {
		d.release()
		if errors.Is(res.err, errRunMergeStopped) {
			return nil
		}
		// A damaged input would fail every retry: drop it, as a lookup
		// that finds it does, and merge the rest.
		var dmg *runDamagedError
		if errors.As(res.err, &dmg) {
			for _, g := range d.gens {
				if slices.Contains(g.runs, dmg.r) {
					d.dropDamaged(g, dmg.r, res.err)
					d.maybeMerge()
					return nil
				}
			}
		}
		return fmt.Errorf("cannot merge dedup runs: %w", res.err)
	}
	out := res.out
	d.runCount.Add(1)
	d.runBytes.Add(out.size)
	var g *genIndex
	for _, x := range d.gens {
		if x.gen == out.gen {
			g = x
		}
	}
	if g == nil || out.gen < d.minGen {
		d.release()
		return d.dropRuns([]*run{out}) // the inputs went with their generation
	}
	at := slices.Index(g.runs, in[0])
	g.runs = slices.DeleteFunc(g.runs, func(r *run) bool { return slices.Contains(in, r) })
	g.runs = slices.Insert(g.runs, max(at, 0), out)
	d.retire(in)
	d.maybeMerge()
	return nil
}

// idle reports whether no keys were committed, and no batch started, for
// DedupIndexInterval: appends stopped, so commitThrough will not write the
// waiting keys. While appends come it writes them within that interval.
func (d *dedup) idle(now time.Time) bool {
	return !d.inFlight && now.Sub(d.lastCommit) >= d.flushMaxWait && now.Sub(d.lastFlush) >= d.flushMaxWait
}

// sync writes every committed key to a run and waits: Reclaim calls it
// before deleting a segment past the checkpoint, Close before closing.
func (d *dedup) sync(now time.Time) error {
	if d.inFlight {
		if err := d.flushed(<-d.flushDone); err != nil {
			return err
		}
	}
	d.undo() // sync runs between groups: any uncommitted key is stale
	if d.committed == 0 {
		d.indexed.Store(d.committedSeq) // no key waits
		return nil
	}
	d.startFlush(now)
	return d.flushed(<-d.flushDone)
}

// close stops background work: it waits for the batch in flight, stops
// a merge and waits for it and for file removals, and closes the runs.
// Keys not yet in a run are not written: sync does that.
func (d *dedup) close() error {
	d.stop.Store(true)
	var err error
	if d.inFlight {
		err = d.flushed(<-d.flushDone)
	}
	if d.merging {
		if merr := d.merged(<-d.mergeDone); err == nil {
			err = merr
		}
	}
	d.bg.Wait()
	for _, g := range d.gens {
		for _, r := range g.runs {
			r.close()
		}
	}
	d.gens = nil
	return err
}
