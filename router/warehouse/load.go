package warehouse

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// load loads the mapped events not in skip in one transaction. It returns
// the events the database refused by name (nothing committed then: the
// caller loads again without them), or a classified error (*loadError).
func (w *Warehouse) load(ctx context.Context, events []router.Event, mapped []Mapped, skip map[int]bool) (map[int]string, error) {
	tables := group(mapped, skip)
	if len(tables) == 0 {
		return nil, nil
	}
	names := map[string]bool{}
	for _, t := range tables {
		names[t.schema] = true
	}
	known, err := w.schemas(ctx, names)
	if err != nil {
		return nil, err
	}
	if migs := migrations(tables, known); len(migs) > 0 {
		if known, err = w.migrate(ctx, migs, names); err != nil {
			return nil, err
		}
	}
	at := now()
	loads, discards := typed(tables, known, at)
	if discards > 0 {
		// A value that does not fit its column as known: make sure the
		// column is still so (an operator may have changed it).
		changed := false
		for s := range names {
			fresh, err := w.refresh(ctx, s)
			if err != nil {
				return nil, err
			}
			changed = changed || !sameSchema(fresh, known[s])
			known[s] = fresh
		}
		if changed {
			loads, discards = typed(tables, known, at)
		}
	}
	if discards > 0 {
		var migs []Migration
		for _, t := range loads {
			if t.Table == TableDiscards && known[t.Schema][TableDiscards] == nil {
				migs = append(migs, Migration{Schema: t.Schema, Table: TableDiscards, Create: true, Key: discardKey, Add: discardColumns})
			}
		}
		if len(migs) > 0 {
			if known, err = w.migrate(ctx, migs, names); err != nil {
				return nil, err
			}
		}
	}
	n, err := w.commit(ctx, loads)
	if err != nil {
		le, _ := err.(*loadError)
		if le == nil || le.class != ClassRow {
			return nil, err
		}
		// Before blaming rows, make sure the schema is as known: an
		// operator may have changed a column's type.
		for s := range names {
			fresh, rerr := w.refresh(ctx, s)
			if rerr != nil {
				return nil, rerr
			}
			if !sameSchema(fresh, known[s]) {
				return nil, &loadError{class: ClassSchema, op: "load", err: err}
			}
		}
		bad, derr := w.diagnose(ctx, loads)
		if derr != nil {
			return nil, derr
		}
		if len(bad) == 0 {
			return nil, err
		}
		return bad, nil
	}
	done := time.Now()
	w.stats.loaded(loads, n, discards, done)
	for i := range events {
		if !skip[i] {
			w.stats.latency(done.Sub(time.Unix(0, events[i].ReceivedAt)))
		}
	}
	return nil, nil
}

// commit inserts the loads in one transaction and commits it, returning
// the rows written per load.
func (w *Warehouse) commit(ctx context.Context, loads []*TableLoad) ([]int64, error) {
	tx, err := w.d.Begin(ctx)
	if err != nil {
		return nil, w.wrap("begin a transaction", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	n := make([]int64, len(loads))
	for i, t := range loads {
		n[i] = int64(len(t.Rows))
	}
	if all, ok := tx.(InsertAller); ok {
		if err := all.InsertAll(ctx, loads); err != nil {
			return nil, w.wrap("load", err)
		}
	} else {
		for _, t := range loads {
			if err := tx.Insert(ctx, t); err != nil {
				return nil, w.wrap(fmt.Sprintf("load %s.%s", t.Schema, t.Table), err)
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		le := w.wrap("commit", err).(*loadError)
		// The commit may have reached the database before the connection
		// broke: the batch is retried, and adds no duplicate when it did.
		le.ambiguous = le.class == ClassOutage
		return nil, le
	}
	return n, nil
}

// diagnose finds the rows the database refuses, by bisection inside one
// transaction that it rolls back: a half that loads stays (so the other
// half meets the same state), a refused half is halved again. It returns
// the refused rows' events with the database's message.
func (w *Warehouse) diagnose(ctx context.Context, loads []*TableLoad) (map[int]string, error) {
	tx, err := w.d.Begin(ctx)
	if err != nil {
		return nil, w.wrap("begin a transaction", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	bad := map[int]string{}
	for _, t := range loads {
		all := make([]int, len(t.Rows))
		for i := range all {
			all[i] = i
		}
		if err := w.bisect(ctx, tx, t, all, bad); err != nil {
			return nil, err
		}
	}
	return bad, nil
}

// bisect loads t's rows at idx under a savepoint, splitting refused sets.
func (w *Warehouse) bisect(ctx context.Context, tx Tx, t *TableLoad, idx []int, bad map[int]string) error {
	if len(idx) == 0 {
		return nil
	}
	if err := tx.Savepoint(ctx, "sluice_row"); err != nil {
		return w.wrap("set a savepoint", err)
	}
	err := tx.Insert(ctx, t.subset(idx))
	if err == nil {
		return w.wrap("release a savepoint", tx.Release(ctx, "sluice_row"))
	}
	if w.d.Classify(err) != ClassRow {
		return w.wrap(fmt.Sprintf("load %s.%s", t.Schema, t.Table), err)
	}
	if rerr := tx.RollbackTo(ctx, "sluice_row"); rerr != nil {
		return w.wrap("roll back to a savepoint", rerr)
	}
	if len(idx) == 1 {
		why := fmt.Sprintf("%s.%s refused the row: %v", t.Schema, t.Table, err)
		for _, e := range t.Events[idx[0]] {
			bad[e] = why
		}
		return nil
	}
	h := len(idx) / 2
	if err := w.bisect(ctx, tx, t, idx[:h], bad); err != nil {
		return err
	}
	return w.bisect(ctx, tx, t, idx[h:], bad)
}

// migrate applies migs under the process's DDL lock, then reads the
// schemas again. A migration another Send made meanwhile is seen first.
func (w *Warehouse) migrate(ctx context.Context, migs []Migration, names map[string]bool) (map[string]Schema, error) {
	w.ddl.Lock()
	defer w.ddl.Unlock()
	for _, m := range migs {
		cur, err := w.refresh(ctx, m.Schema)
		if err != nil {
			return nil, err
		}
		m = pending(m, cur[m.Table])
		if !m.Create && len(m.Add) == 0 && len(m.Widen) == 0 {
			continue
		}
		if err := w.d.Migrate(ctx, m); err != nil {
			return nil, w.wrap(fmt.Sprintf("migrate %s.%s", m.Schema, m.Table), err)
		}
		w.stats.migrated(m)
		w.log.Info("warehouse schema changed", "schema", m.Schema, "table", m.Table, "created", m.Create,
			"added", len(m.Add), "widened", len(m.Widen))
	}
	out := map[string]Schema{}
	for n := range names {
		s, err := w.refresh(ctx, n)
		if err != nil {
			return nil, err
		}
		out[n] = s
	}
	return out, nil
}

// pending is what is left of m given the table's columns as they are.
func pending(m Migration, cols map[string]Type) Migration {
	if cols == nil {
		return m
	}
	out := Migration{Schema: m.Schema, Table: m.Table, Key: m.Key}
	for _, c := range m.Add {
		if _, ok := cols[c.Name]; !ok {
			out.Add = append(out.Add, c)
		}
	}
	for _, c := range m.Widen {
		if widens(cols[c.Name], c.Type) {
			out.Widen = append(out.Widen, c)
		}
	}
	return out
}

func sameSchema(a, b Schema) bool {
	if len(a) != len(b) {
		return false
	}
	for t, cols := range a {
		if !maps.Equal(cols, b[t]) {
			return false
		}
	}
	return true
}

// Plan returns the table loads that Send would write for events (after
// migrating the schema for them), without writing them: what a benchmark's
// ceiling writes by itself, or a tool shows.
func (w *Warehouse) Plan(ctx context.Context, events []router.Event) ([]*TableLoad, error) {
	mapped := make([]Mapped, len(events))
	skip := map[int]bool{}
	for i, e := range events {
		m, err := w.mapping.Map(e, i)
		if err != nil {
			skip[i] = true
			continue
		}
		mapped[i] = m
	}
	tables := group(mapped, skip)
	names := map[string]bool{}
	for _, t := range tables {
		names[t.schema] = true
	}
	known, err := w.schemas(ctx, names)
	if err != nil {
		return nil, err
	}
	if migs := migrations(tables, known); len(migs) > 0 {
		if known, err = w.migrate(ctx, migs, names); err != nil {
			return nil, err
		}
	}
	loads, _ := typed(tables, known, now())
	return loads, nil
}
