package engine

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
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
// Keys are written after the group's segment fsync, in an unsynced index
// batch that also moves the checkpoint (0x0c). After a crash, Open replays
// the log past the checkpoint, so the index never misses a stored event and
// never names one that is not stored. Owned by the committer goroutine (and
// Open before it starts): not safe for concurrent use.
type dedup struct {
	db          *pebble.DB
	enabled     bool
	window      time.Duration
	genDur      time.Duration
	filterBytes int
	gens        map[uint32]*bloom.Filter
	minGen      uint32 // generations below it are dropped
	ckpt        uint64 // last seq whose key is in the index

	// Per group: the records accepted so far, by hash, to catch duplicates
	// inside one group before their keys reach the index.
	group     map[uint64]int32
	groupRecs []*Record
	chain     []int32
	batch     *pebble.Batch
	keyBuf    []byte
	pending   []pendingKey // the group's keys, written sorted by endGroup
	digest    *xxhash.Digest

	lookups, hits, indexGets uint64
}

func newDedup(db *pebble.DB, o *Options) *dedup {
	d := &dedup{
		db:      db,
		enabled: o.DedupWindow > 0,
		window:  o.DedupWindow,
		gens:    make(map[uint32]*bloom.Filter),
		group:   make(map[uint64]int32),
		digest:  xxhash.New(),
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
// still differ in hi's input).
func (d *dedup) hash(source, messageID []byte) hash128 {
	d.digest.Reset()
	d.digest.Write(source)
	d.digest.Write([]byte{0})
	d.digest.Write(messageID)
	lo := d.digest.Sum64()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], lo)
	d.digest.Reset()
	d.digest.Write(b[:])
	d.digest.Write(source)
	d.digest.Write([]byte{0})
	d.digest.Write(messageID)
	return hash128{lo: lo, hi: d.digest.Sum64()}
}

// load restores the checkpoint and rebuilds the live generations' filters
// from the index. Called by Open.
func (d *dedup) load(now time.Time) error {
	if v, closer, err := d.db.Get(keyDedupCkpt); err == nil {
		if len(v) == 8 {
			d.ckpt = binary.BigEndian.Uint64(v)
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

func (d *dedup) filter(gen uint32) *bloom.Filter {
	f := d.gens[gen]
	if f == nil {
		f = bloom.New(d.filterBytes)
		d.gens[gen] = f
	}
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
	for g := range d.gens {
		if g < min {
			delete(d.gens, g)
		}
	}
	d.minGen = min
	return nil
}

// beginGroup starts a group of records.
func (d *dedup) beginGroup() {
	clear(d.group)
	d.groupRecs = d.groupRecs[:0]
	d.chain = d.chain[:0]
	if d.batch == nil {
		d.batch = d.db.NewBatch()
	}
	d.batch.Reset()
	d.pending = d.pending[:0]
}

// seen reports whether r duplicates an event stored before or accepted
// earlier in this group; if not, it records r as accepted with sequence
// number seq. r must stay valid until endGroup.
func (d *dedup) seen(r *Record, seq uint64, now time.Time) (bool, error) {
	if !d.enabled || len(r.MessageID) == 0 {
		return false, nil
	}
	d.lookups++
	h := d.hash(r.Source, r.MessageID)
	for i := d.group[h.lo]; i > 0; i = d.chain[i-1] {
		o := d.groupRecs[i-1]
		if bytes.Equal(o.Source, r.Source) && bytes.Equal(o.MessageID, r.MessageID) {
			d.hits++
			return true, nil
		}
	}
	for gen, f := range d.gens {
		if gen < d.minGen || !f.MayContain(h.lo) {
			continue
		}
		d.indexGets++
		d.keyBuf = appendDedupKey(d.keyBuf[:0], gen, h)
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
	d.groupRecs = append(d.groupRecs, r)
	d.chain = append(d.chain, d.group[h.lo])
	d.group[h.lo] = int32(len(d.groupRecs))
	d.add(h, seq, d.genOf(now))
	return false, nil
}

// add puts a record's key in the filter and the pending batch.
func (d *dedup) add(h hash128, seq uint64, gen uint32) {
	d.filter(gen).Add(h.lo)
	d.pending = append(d.pending, pendingKey{gen: gen, h: h, seq: seq})
}

// endGroup commits the accepted keys and the checkpoint lastSeq, unsynced:
// the segment holding the records is already synced, and replay covers a
// lost tail of the index.
func (d *dedup) endGroup(lastSeq uint64) error {
	if lastSeq <= d.ckpt {
		return nil
	}
	// In key order: the memtable's skiplist inserts a sorted run far
	// faster than random keys (each insert starts from the last one's
	// position instead of a search with cache misses from the top).
	slices.SortFunc(d.pending, func(a, b pendingKey) int {
		return cmp.Or(cmp.Compare(a.gen, b.gen), cmp.Compare(a.h.lo, b.h.lo), cmp.Compare(a.h.hi, b.h.hi))
	})
	var v [8]byte
	for _, p := range d.pending {
		d.keyBuf = appendDedupKey(d.keyBuf[:0], p.gen, p.h)
		binary.BigEndian.PutUint64(v[:], p.seq)
		d.batch.Set(d.keyBuf, v[:], nil)
	}
	d.pending = d.pending[:0]
	binary.BigEndian.PutUint64(v[:], lastSeq)
	d.batch.Set(keyDedupCkpt, v[:], nil)
	if err := d.batch.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("cannot commit dedup keys: %w", err)
	}
	d.ckpt = lastSeq
	return nil
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
	d.add(d.hash(r.Source, r.MessageID), r.Seq, d.genOf(t))
}
