package ceiling

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// PebbleCeiling is the raw Pebble ceiling: each writer commits one batch per
// call holding one key per event (the event number, 8 bytes big-endian, so
// keys arrive in nearly ascending order) with the event as value, with
// pebble.Sync. Pebble shares WAL fsyncs among concurrent committers. The
// options are the engine's index defaults: 32 MiB cache, 16 MiB memtable.
type PebbleCeiling struct {
	db         *pebble.DB
	eventBytes int
	batches    []*pebble.Batch // per writer, reused
	events     [][]byte        // per writer: one event made by Event
}

// OpenPebble creates a Pebble store in dir. cfg.Writers bounds the writer
// numbers a later Run may use.
func OpenPebble(dir string, cfg Config) (*PebbleCeiling, error) {
	cfg, err := cfg.withDefaultsNoStop()
	if err != nil {
		return nil, err
	}
	cache := pebble.NewCache(32 << 20)
	defer cache.Unref()
	db, err := pebble.Open(dir, &pebble.Options{
		Cache:        cache,
		MemTableSize: 16 << 20,
		Logger:       quietLogger{},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open pebble in %s: %w", dir, err)
	}
	p := &PebbleCeiling{db: db, eventBytes: cfg.EventBytes}
	for w := 0; w < cfg.Writers; w++ {
		p.batches = append(p.batches, db.NewBatch())
		p.events = append(p.events, Event(nil, cfg.EventBytes, 0))
	}
	return p, nil
}

// Commit commits events first..first+n-1 in one synced batch.
func (p *PebbleCeiling) Commit(_ context.Context, w int, first uint64, n int) error {
	if w >= len(p.batches) {
		return fmt.Errorf("ceiling: writer %d exceeds what OpenPebble was configured for", w)
	}
	b, ev := p.batches[w], p.events[w]
	b.Reset()
	var key [8]byte
	for i := 0; i < n; i++ {
		id := first + uint64(i)
		binary.BigEndian.PutUint64(key[:], id)
		PutID(ev, id)
		if err := b.Set(key[:], ev, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebble.Sync)
}

// DB returns the store (for its metrics).
func (p *PebbleCeiling) DB() *pebble.DB { return p.db }

// Close closes the store. No Commit may be in flight or follow.
func (p *PebbleCeiling) Close() error {
	for _, b := range p.batches {
		b.Close()
	}
	return p.db.Close()
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
