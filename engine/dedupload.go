package engine

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Loading the dedup index at Open, and adding keys back from the log:
// past the checkpoint after a crash, and for a generation whose run was
// found damaged (deduprebuild.go).

// load restores the checkpoint, opens the live generations' runs and
// rebuilds their filters; it drops the runs of expired generations and
// adopts readable run files the index does not name, removing the rest.
// A named run that cannot be read is dropped with an error logged and its
// keys are rebuilt from the retained log. Called by Open.
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
	type meta struct {
		id  uint64
		gen uint32
		n   int
	}
	var metas []meta
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixDedupRun}, UpperBound: []byte{prefixDedupRun + 1}})
	if err != nil {
		return fmt.Errorf("cannot scan dedup runs: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 9 || len(v) != 12 {
			it.Close()
			return fmt.Errorf("dedup run key %x: %w", k, ErrCorrupt)
		}
		metas = append(metas, meta{binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint32(v), int(binary.BigEndian.Uint64(v[4:]))})
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("cannot scan dedup runs: %w", err)
	}
	b := d.db.NewBatch()
	defer b.Close()
	// A readable run the index does not name is adopted, not removed: a
	// flush or merge that crashed before naming it holds keys that are
	// elsewhere too (harmless twice), and an index that lost its newest
	// writes lost the names of runs whose keys are nowhere else once their
	// segments are reclaimed.
	named := make(map[uint64]bool, len(metas))
	for _, m := range metas {
		named[m.id] = true
	}
	files, err := d.fs.List(d.dir)
	if err != nil {
		return fmt.Errorf("cannot list %s: %w", d.dir, err)
	}
	for _, name := range files {
		id, ok := parseRunFileName(name)
		if !ok || named[id] {
			continue
		}
		r, err := openRun(d.fs, d.fs.PathJoin(d.dir, name), id)
		if err != nil {
			continue // a run never finished: removed below
		}
		gen, n, v := r.gen, r.n, runMeta(r)
		r.close()
		if gen < d.minGen {
			continue
		}
		metas = append(metas, meta{id, gen, n})
		b.Set(dedupRunKey(id), v, nil)
		d.log.Info("dedup run the index does not name adopted", "file", name, "keys", n)
	}
	slices.SortFunc(metas, func(a, b meta) int { return cmp.Compare(a.id, b.id) })
	live := make(map[uint64]bool)
	for _, m := range metas { // oldest first
		d.nextRun.Store(max(d.nextRun.Load(), m.id+1))
		if m.gen < d.minGen {
			if err := b.Delete(dedupRunKey(m.id), nil); err != nil {
				return fmt.Errorf("cannot drop dedup run %d: %w", m.id, err)
			}
			continue
		}
		r, err := d.loadRun(m.id, m.gen, m.n)
		if err != nil {
			d.log.Error("dedup run unreadable: dropped; its keys are rebuilt from the retained log", "err", err)
			d.markDamaged(m.gen)
			if err := b.Delete(dedupRunKey(m.id), nil); err != nil {
				return fmt.Errorf("cannot drop dedup run %d: %w", m.id, err)
			}
			continue
		}
		g := d.genIndex(r.gen)
		g.runs = slices.Insert(g.runs, 0, r)
		d.runCount.Add(1)
		d.runBytes.Add(r.size)
		live[r.id] = true
	}
	if !b.Empty() {
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("cannot drop dedup runs: %w", err)
		}
	}
	names, err := d.fs.List(d.dir)
	if err != nil {
		return fmt.Errorf("cannot list %s: %w", d.dir, err)
	}
	for _, name := range names {
		if id, ok := parseRunFileName(name); ok && !live[id] {
			if err := d.fs.Remove(d.fs.PathJoin(d.dir, name)); err != nil {
				return fmt.Errorf("cannot remove stray dedup run %s: %w", name, err)
			}
		}
	}
	return nil
}

// loadRun opens a run named in the index and adds its keys to its
// generation's filter.
func (d *dedup) loadRun(id uint64, gen uint32, n int) (*run, error) {
	r, err := openRun(d.fs, d.fs.PathJoin(d.dir, runFileName(id)), id)
	if err != nil {
		return nil, err
	}
	if r.gen != gen || r.n != n {
		r.close()
		return nil, fmt.Errorf("dedup run %s: generation %d with %d keys, the index says %d with %d: %w", r.path, r.gen, r.n, gen, n, ErrCorrupt)
	}
	f := d.genIndex(gen).f
	if err := r.readAll(func(h hash128) { f.Add(h.lo) }); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// replay adds the key of a record found in the log past the checkpoint.
func (d *dedup) replay(r *Record, now time.Time) { d.replayIn(r, now, nil) }

// replayIn is replay for records of the generations in gens only (all
// when nil); it reports whether it added the key.
func (d *dedup) replayIn(r *Record, now time.Time, gens map[uint32]bool) bool {
	if !d.enabled || len(r.MessageID) == 0 {
		return false
	}
	t := time.Unix(0, r.ReceivedAt)
	if t.Before(now.Add(-d.window)) || t.After(now) {
		t = now
	}
	gen := d.genOf(t)
	if gens != nil && !gens[gen] {
		return false
	}
	h := d.hash(r.Source, r.MessageID)
	d.fresh.Set(h, gen)
	d.add(h, gen)
	return true
}

// markDamaged records that gen lost a run and asks for a rebuild.
func (d *dedup) markDamaged(gen uint32) {
	if d.damaged == nil {
		d.damaged = make(map[uint32]bool)
	}
	d.damaged[gen] = true
	if d.onDamage != nil {
		d.onDamage()
	}
}

// takeDamaged returns the generations to rebuild and forgets them.
func (d *dedup) takeDamaged() map[uint32]bool {
	g := d.damaged
	d.damaged = nil
	return g
}
