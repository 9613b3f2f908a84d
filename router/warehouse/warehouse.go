// Package warehouse loads events into a SQL warehouse in the schema
// Segment and RudderStack document as their "warehouse schema": per
// source one schema; tables tracks, one per track event name, identifies,
// users, pages, screens, groups, aliases; properties, traits and context
// flattened into snake_case columns; types inferred and widened; values
// that do not fit a column's type kept in rudder_discards.
//
// It is the part every SQL database shares: the mapping (mapping.go,
// names.go, types.go), the plan of a batch (plan.go) and the loader
// (load.go). A Dialect (dialect.go) brings one database:
// router/warehouse/postgres and router/warehouse/mysql.
//
// Each Send is one transaction: every table's rows are inserted where
// their key (id, the messageId) is absent, and users rows merged, so a
// batch loaded twice (a retry after a crash or an ambiguous commit) adds
// no row. The schema is read from the database at first use and again
// after a schema error or a migration, never trusted blindly: the
// warehouse is the source of truth, and an operator may change it.
package warehouse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a warehouse destination.
type Config struct {
	// Dialect is the database. Required.
	Dialect Dialect
	// Schema is the one schema (MySQL: database) every event goes to.
	// Default: each event goes to the schema named after its source, in
	// snake_case.
	Schema string
	// JSONColumns are event paths kept whole as one JSON column, such as
	// "properties.items" or "context.traits.address".
	JSONColumns []string
	// SkipTracks leaves the tracks table out (event tables stay);
	// SkipUsers leaves the users table out.
	SkipTracks, SkipUsers bool
	// BatchMaxEvents caps the events of one transaction: a larger Send is
	// loaded in several, in order. Default 10,000.
	BatchMaxEvents int
	// BatchMaxWait, when positive, lets a Send wait up to this long for
	// concurrent Sends to join its transaction (up to BatchMaxEvents
	// events together): fewer, larger transactions when the router sends
	// many small batches. Default 0: each Send is its own transaction.
	BatchMaxWait time.Duration
	// Logger receives migrations and refusals. Default slog.Default().
	Logger *slog.Logger
}

// attemptsMax bounds the retries inside one Send for conflicts and
// schema changes (refusals found by name do not count).
const attemptsMax = 4

// Warehouse is a Destination loading into a SQL database. Safe for
// concurrent use.
type Warehouse struct {
	cfg     Config
	d       Dialect
	mapping Mapping
	log     *slog.Logger
	stats   *stats

	// ddl serializes migrations in this process (the dialect serializes
	// them across processes), so that concurrent Sends adding one column
	// do not race; loads do not take it.
	ddl sync.Mutex
	// joining is the open coalesced load that Sends may join (coalesce.go).
	joining struct {
		sync.Mutex
		open *pool
	}
	mu struct {
		sync.Mutex
		schemas map[string]Schema // as last read from the database
	}
}

// New returns a warehouse destination over cfg.Dialect.
func New(cfg Config) (*Warehouse, error) {
	if cfg.Dialect == nil {
		return nil, errors.New("warehouse: no dialect")
	}
	if cfg.BatchMaxEvents <= 0 {
		cfg.BatchMaxEvents = 10_000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Warehouse{cfg: cfg, d: cfg.Dialect, log: cfg.Logger, stats: newStats()}
	w.mapping = Mapping{Names: cfg.Dialect.Names(), Schema: cfg.Schema, JSONColumns: cfg.JSONColumns,
		SkipTracks: cfg.SkipTracks, SkipUsers: cfg.SkipUsers, cache: &nameCache{names: map[string]string{}}}
	w.mu.schemas = map[string]Schema{}
	return w, nil
}

// Close closes the dialect's connections.
func (w *Warehouse) Close() error { return w.d.Close() }

// Send loads events: see the package doc. Events the database refuses
// one by one (a constraint, a value too long) or that have no place in
// the schema are named in Result.Rejected (status 400) and the others
// load; a lone refused event is answered 400. With BatchMaxWait, the
// events may share a transaction with other Sends' (coalesce.go).
func (w *Warehouse) Send(ctx context.Context, events []router.Event) router.Result {
	if w.cfg.BatchMaxWait > 0 && len(events) < w.cfg.BatchMaxEvents {
		return w.coalesce(ctx, events)
	}
	refused, fail, ok := w.loadAll(ctx, events)
	if !ok {
		return fail
	}
	return answer(refused, 0, len(events))
}

// loadAll loads events, BatchMaxEvents per transaction, returning the
// refused events by index, or the failure when ok is false.
func (w *Warehouse) loadAll(ctx context.Context, events []router.Event) (refused map[int]string, fail router.Result, ok bool) {
	refused = map[int]string{}
	for lo := 0; lo < len(events); lo += w.cfg.BatchMaxEvents {
		hi := min(lo+w.cfg.BatchMaxEvents, len(events))
		if res, ok := w.sendPart(ctx, events, lo, hi, refused); !ok {
			return nil, res, false
		}
	}
	return refused, router.Result{}, true
}

// answer is the Result of events [lo, lo+n) of a load that refused those
// in refused (indexes in the load).
func answer(refused map[int]string, lo, n int) router.Result {
	if n == 1 {
		if why, ok := refused[lo]; ok {
			return router.Result{Status: 400, Body: []byte(why)}
		}
	}
	res := router.Result{Status: 200}
	for i := range n {
		if why, ok := refused[lo+i]; ok {
			res.Rejected = append(res.Rejected, router.Rejection{Index: i, Status: 400, Reason: []byte(why)})
		}
	}
	return res
}

// sendPart loads events[lo:hi] in one transaction, adding refusals to
// refused. ok is false when it failed as a whole (res says how).
func (w *Warehouse) sendPart(ctx context.Context, events []router.Event, lo, hi int, refused map[int]string) (router.Result, bool) {
	mapped := make([]Mapped, len(events))
	skip := map[int]bool{}
	for i := range events {
		if i < lo || i >= hi {
			skip[i] = true
			continue
		}
		m, err := w.mapping.Map(events[i], i)
		if err != nil {
			refused[i] = err.Error()
			skip[i] = true
			w.stats.refused(1)
			continue
		}
		mapped[i] = m
	}
	var err error
	for attempt, rounds := 0, 0; attempt < attemptsMax && rounds <= hi-lo; rounds++ {
		var bad map[int]string
		bad, err = w.load(ctx, events, mapped, skip)
		if err == nil && len(bad) == 0 {
			return router.Result{}, true
		}
		if len(bad) > 0 {
			for i, why := range bad {
				refused[i], skip[i] = why, true
				w.log.Warn("warehouse refused an event", "message_id", string(events[i].MessageID), "reason", why)
			}
			w.stats.refused(len(bad))
			continue
		}
		var le *loadError
		if !errors.As(err, &le) || ctx.Err() != nil {
			break
		}
		switch le.class {
		case ClassRetry, ClassSchema, ClassOther:
			attempt++
			if le.class != ClassRetry {
				w.forget()
			}
			continue
		}
		break
	}
	if err == nil {
		err = errors.New("warehouse: the batch kept changing; retry")
	}
	return w.failure(err), false
}

// failure is the Result of a load that failed as a whole.
func (w *Warehouse) failure(err error) router.Result {
	w.stats.failed()
	var le *loadError
	if !errors.As(err, &le) {
		return router.Result{Err: err}
	}
	switch le.class {
	case ClassPermission:
		return router.Result{Err: fmt.Errorf("warehouse: permission denied (grant the user the rights to create and alter tables in the schema, then resume): %w", err), Pause: true}
	case ClassRow:
		// refused as a whole yet no single row found: retry
		return router.Result{Err: err, Status: 503}
	}
	return router.Result{Err: err, Ambiguous: le.ambiguous}
}

// loadError is an error of the database, classified.
type loadError struct {
	class     Class
	ambiguous bool // during COMMIT: the transaction may have committed
	op        string
	err       error
}

func (e *loadError) Error() string {
	return fmt.Sprintf("warehouse: cannot %s (%s): %v", e.op, e.class, e.err)
}

func (e *loadError) Unwrap() error { return e.err }

// wrap classifies err from operation op (nil stays nil).
func (w *Warehouse) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var le *loadError
	if errors.As(err, &le) {
		return err
	}
	return &loadError{class: w.d.Classify(err), op: op, err: err}
}

// schemas returns the named schemas as known, reading those not yet read.
func (w *Warehouse) schemas(ctx context.Context, names map[string]bool) (map[string]Schema, error) {
	out := map[string]Schema{}
	for n := range names {
		w.mu.Lock()
		s, ok := w.mu.schemas[n]
		w.mu.Unlock()
		if !ok {
			var err error
			if s, err = w.refresh(ctx, n); err != nil {
				return nil, err
			}
		}
		out[n] = s
	}
	return out, nil
}

// refresh reads schema n from the database.
func (w *Warehouse) refresh(ctx context.Context, n string) (Schema, error) {
	s, err := w.d.ReadSchema(ctx, n)
	if err != nil {
		return nil, w.wrap("read the schema "+n, err)
	}
	w.mu.Lock()
	w.mu.schemas[n] = s
	w.mu.Unlock()
	return s, nil
}

// forget drops every schema read, so the next load reads them again.
func (w *Warehouse) forget() {
	w.mu.Lock()
	w.mu.schemas = map[string]Schema{}
	w.mu.Unlock()
}

// Stats returns the counters since New.
func (w *Warehouse) Stats() Stats { return w.stats.snapshot() }

// now is the load time (uuid_ts), in microseconds as the databases keep it.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
