package engine

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sluice-cdi/sluice/engine/internal/bloom"
)

// dedup remembers (source, messageId) pairs for the dedup window.
//
// The index keys (0x0b gen hash) are the truth, with a 128-bit hash of
// (source, messageId) standing for the pair: two different pairs collide
// with odds around n²/2¹²⁹ (10⁻¹⁷ for 10¹¹ events in a window), and the keys
// are a third of the size, which is most of the index's flush and
// compaction work. Per-generation Bloom filters in memory (keyed by the
// hash's low half) answer "absent" for almost every new event without
// touching the index. Time is cut into generations of window/N; a generation
// that leaves the window is dropped whole: its filter freed, its keys deleted
// by one range tombstone.
//
// The index is written behind: accepted keys collect in memory (fresh) and
// go to the index in large sorted batches, written by a background
// goroutine while the committer goes on (flushing), each batch moving the
// checkpoint (0x0c) to the last seq it covers. Lookups that a filter cannot
// rule out consult those two sets before the index. One key at a time in
// every group commit, random hashes cost a skiplist search from the top of
// the memtable each (a fifth of the CPU under load); a sorted run of tens
// of thousands lands a few nodes after the previous one. The batches are
// unsynced: the segments holding the records are synced, and after a crash
// Open replays the log past the checkpoint, so the index never misses a
// stored event and never names one that is not stored. Reclaim keeps every
// segment past the checkpoint (syncIndex).
//
// Owned by the committer goroutine, and by whoever holds the engine's
// writeMu (Open before the committer starts, Reclaim): not safe for
// concurrent use, except indexed.
type dedup struct {
	db          *pebble.DB
	fs          vfs.FS
	stageDir    string // where index batches are built before ingestion
	wopts       sstable.WriterOptions
	enabled     bool
	window      time.Duration
	genDur      time.Duration
	filterBytes int
	gens        []genFilter // live generations' filters, newest first
	minGen      uint32      // generations below it are dropped
	ckpt        uint64      // last seq whose key is in the index (committed batch)
	indexed     atomic.Uint64

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
	flushDone    chan error
	inFlight     bool
	flushEvery   int
	flushMaxWait time.Duration

	keyBuf  []byte
	hashBuf []byte

	lookups, hits, indexGets, flushes uint64
}

func newDedup(db *pebble.DB, o *Options, stageDir string, wopts sstable.WriterOptions) *dedup {
	d := &dedup{
		db:       db,
		fs:       o.FS,
		stageDir: stageDir,
		wopts:    wopts,
		enabled:  o.DedupWindow > 0,
		window:   o.DedupWindow,

		fresh:        newKeySet(),
		flushing:     newKeySet(),
		flushDone:    make(chan error, 1),
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

// pendingKey is an accepted record's dedup key, not yet in the batch.
type pendingKey struct {
	gen uint32
	h   hash128
	seq uint64
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

// load restores the checkpoint and rebuilds the live generations' filters
// from the index. Called by Open.
func (d *dedup) load(now time.Time) error {
	if v, closer, err := d.db.Get(keyDedupCkpt); err == nil {
		if len(v) == 8 {
			d.ckpt = binary.BigEndian.Uint64(v)
			d.committedSeq = d.ckpt
			d.indexed.Store(d.ckpt)
		}
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("cannot read dedup checkpoint: %w", err)
	}
	if !d.enabled {
		return nil
	}
	if err := d.expire(now); err != nil {
		return err
	}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: dedupGenPrefix(d.minGen), UpperBound: []byte{prefixDedup + 1}})
	if err != nil {
		return fmt.Errorf("cannot scan dedup index: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != dedupKeyLen {
			return fmt.Errorf("dedup key %x: %w", k, ErrCorrupt)
		}
		d.filter(binary.BigEndian.Uint32(k[1:])).Add(binary.BigEndian.Uint64(k[5:]))
	}
	return it.Error()
}

// genFilter is one generation's Bloom filter.
type genFilter struct {
	gen uint32
	f   *bloom.Filter
}

func (d *dedup) filter(gen uint32) *bloom.Filter {
	for _, g := range d.gens {
		if g.gen == gen {
			return g.f
		}
	}
	f := bloom.New(d.filterBytes)
	d.gens = append(d.gens, genFilter{gen, f})
	slices.SortFunc(d.gens, func(a, b genFilter) int { return cmp.Compare(b.gen, a.gen) })
	return f
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
	if err := d.db.DeleteRange(dedupGenPrefix(0), dedupGenPrefix(min), pebble.NoSync); err != nil {
		return fmt.Errorf("cannot drop dedup generations below %d: %w", min, err)
	}
	d.gens = slices.DeleteFunc(d.gens, func(g genFilter) bool { return g.gen < min })
	d.minGen = min
	return nil
}

// poll collects a finished background index batch, if any.
func (d *dedup) poll() error {
	if !d.inFlight {
		return nil
	}
	select {
	case err := <-d.flushDone:
		return d.flushed(err)
	default:
		return nil
	}
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
// earlier in this group; if not, it records r as accepted with sequence
// number seq.
func (d *dedup) seen(r *Record, seq uint64, now time.Time) (bool, error) {
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
	d.add(h, seq, gen)
	return false, nil
}

// known looks h up in the keys not yet in the index, then in the index.
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
		d.indexGets++
		d.keyBuf = appendDedupKey(d.keyBuf[:0], g.gen, h)
		_, closer, err := d.db.Get(d.keyBuf)
		if err == nil {
			closer.Close()
			d.hits++
			return true, nil
		}
		if !errors.Is(err, pebble.ErrNotFound) {
			return false, fmt.Errorf("cannot look up dedup key: %w", err)
		}
	}
	return false, nil
}

// add puts a record's key in the filter and the pending keys.
func (d *dedup) add(h hash128, seq uint64, gen uint32) {
	d.filter(gen).Add(h.lo)
	d.pending = append(d.pending, pendingKey{gen: gen, h: h, seq: seq})
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
		sortPending(keys)
		d.flushDone <- d.ingest(keys, ckpt)
	}(d.flushKeys, d.flushSeq)
}

// sortPending sorts keys in the order of their index keys: by generation,
// then hash. The comparison decides on the first field that differs (two
// keys almost always differ in gen or lo), which makes the sort of a full
// batch several times faster than comparing all three fields every time.
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

// ingest writes sorted keys and the checkpoint ckpt into a table and
// ingests it into the index: atomic and durable, and far cheaper than
// inserting random keys into the memtable one by one, then flushing them.
func (d *dedup) ingest(keys []pendingKey, ckpt uint64) error {
	path := d.fs.PathJoin(d.stageDir, "dedup.sst")
	f, err := d.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("cannot create dedup table: %w", err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), d.wopts)
	var key, prev []byte
	var v [8]byte
	for _, p := range keys {
		key = appendDedupKey(key[:0], p.gen, p.h)
		if bytes.Equal(key, prev) {
			continue // the same event replayed twice
		}
		binary.BigEndian.PutUint64(v[:], p.seq)
		if err = w.Set(key, v[:]); err != nil {
			break
		}
		prev = append(prev[:0], key...)
	}
	if err == nil {
		binary.BigEndian.PutUint64(v[:], ckpt)
		err = w.Set(keyDedupCkpt, v[:])
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = d.db.Ingest(context.Background(), []string{path})
	}
	if rerr := d.fs.Remove(path); rerr != nil && err == nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("cannot write dedup keys to the index: %w", err)
	}
	return nil
}

// flushed takes a background batch's result. On success the checkpoint
// moves; on failure its keys return to the waiting ones for the next batch.
func (d *dedup) flushed(err error) error {
	d.inFlight = false
	if err == nil {
		d.ckpt = d.flushSeq
		d.indexed.Store(d.ckpt)
		d.flushing.Clear()
		d.spare, d.flushKeys = d.flushKeys[:0], nil
		return nil
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
	return fmt.Errorf("cannot commit dedup keys: %w", err)
}

// wait waits for the background batch in flight, if any, and takes its
// result.
func (d *dedup) wait() error {
	if !d.inFlight {
		return nil
	}
	return d.flushed(<-d.flushDone)
}

// idle reports whether no keys were committed, and no batch started, for
// DedupIndexInterval: appends stopped, so commitThrough will not write the
// waiting keys. While appends come it writes them within that interval.
func (d *dedup) idle(now time.Time) bool {
	return !d.inFlight && now.Sub(d.lastCommit) >= d.flushMaxWait && now.Sub(d.lastFlush) >= d.flushMaxWait
}

// sync writes every committed key to the index and waits: Reclaim calls it
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
	} // sync runs between groups: any uncommitted key is stale
	d.startFlush(now)
	return d.flushed(<-d.flushDone)
}

// replay adds the key of a record found in the log past the checkpoint.
func (d *dedup) replay(r *Record, now time.Time) {
	if !d.enabled || len(r.MessageID) == 0 {
		return
	}
	t := time.Unix(0, r.ReceivedAt)
	if t.Before(now.Add(-d.window)) || t.After(now) {
		t = now
	}
	h, gen := d.hash(r.Source, r.MessageID), d.genOf(t)
	d.fresh.Set(h, gen)
	d.add(h, r.Seq, gen)
}
