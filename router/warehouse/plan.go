package warehouse

import (
	"slices"
	"strings"
	"time"
)

// TableLoad is one table's rows for one load transaction.
type TableLoad struct {
	Schema, Table string
	// Columns are the columns written, the key's first; every row has a
	// value (nil for empty) per column, in this order.
	Columns []Column
	// Key is the primary key: rows whose key is present are skipped (or
	// merged, with Upsert).
	Key  []string
	Rows [][]any
	// Events are, per row, the indexes in the batch of the events it
	// holds (more than one for a users row merged from several identifies).
	Events [][]int
	// Upsert: a row whose key is present is merged into it: each column
	// the row has replaces the stored one when the row's received_at is
	// not older than the stored one, and fills it only if empty otherwise
	// (users: latest traits win, whatever the order rows arrive in).
	Upsert bool
}

// subset is t with only the rows at idx.
func (t *TableLoad) subset(idx []int) *TableLoad {
	s := *t
	s.Rows, s.Events = make([][]any, len(idx)), make([][]int, len(idx))
	for i, j := range idx {
		s.Rows[i], s.Events[i] = t.Rows[j], t.Events[j]
	}
	return &s
}

// discardColumns are the discards table's, RudderStack's rudder_discards
// plus the reason.
var discardColumns = []Column{{"table_name", TypeString}, {"row_id", TypeString}, {"column_name", TypeString},
	{"column_value", TypeString}, {"reason", TypeString}, {"received_at", TypeDatetime}, {"uuid_ts", TypeDatetime}}

var discardKey = []string{"table_name", "row_id", "column_name"}

// tableKey is a table's primary key.
func tableKey(table string) []string {
	if table == TableDiscards {
		return discardKey
	}
	return []string{"id"}
}

// batchTable is one table's rows in a batch before typing.
type batchTable struct {
	schema, table string
	rows          []*Row
}

// group gathers the rows of the events not in skip, by schema and table,
// in batch order, one per key (the first); users rows are merged per user
// in log order (later traits win).
func group(mapped []Mapped, skip map[int]bool) []*batchTable {
	var out []*batchTable
	at := map[[2]string]*batchTable{}
	seen := map[[3]string]int{} // schema, table, id -> row index in its table
	for i, m := range mapped {
		if skip[i] {
			continue
		}
		for _, tr := range m.Rows {
			k := [2]string{m.Schema, tr.Table}
			bt := at[k]
			if bt == nil {
				bt = &batchTable{schema: m.Schema, table: tr.Table}
				at[k] = bt
				out = append(out, bt)
			}
			id := [3]string{m.Schema, tr.Table, tr.Row.ID}
			if j, dup := seen[id]; dup {
				if tr.Table == TableUsers {
					bt.rows[j] = mergeUser(bt.rows[j], tr.Row)
				}
				continue
			}
			seen[id] = len(bt.rows)
			bt.rows = append(bt.rows, tr.Row)
		}
	}
	return out
}

// mergeUser merges two users rows of one user: the later by log order
// wins column by column; columns only the earlier has are kept.
func mergeUser(a, b *Row) *Row {
	if b.Seq < a.Seq {
		a, b = b, a
	}
	m := &Row{Event: b.Event, Seq: b.Seq, ID: b.ID, ReceivedAt: b.ReceivedAt, Cells: map[string]Value{}}
	for k, v := range a.Cells {
		m.Cells[k] = v
	}
	for k, v := range b.Cells {
		if _, had := m.Cells[k]; !had || v.V != nil {
			m.Cells[k] = v
		}
	}
	m.Discards = append(slices.Clip(a.Discards), b.Discards...)
	m.merged = append(append([]int{}, a.events()...), b.events()...)
	return m
}

// events are the batch indexes of the events a row holds.
func (r *Row) events() []int {
	if r.merged != nil {
		return r.merged
	}
	return []int{r.Event}
}

// migrations are the DDL the tables need for their rows, given the
// schema as known: absent tables and columns (typed by their first value
// in the batch, int and float together as float) and int columns that a
// float must widen.
func migrations(tables []*batchTable, known map[string]Schema) []Migration {
	var out []Migration
	for _, bt := range tables {
		cols := known[bt.schema][bt.table]
		m := Migration{Schema: bt.schema, Table: bt.table, Create: cols == nil, Key: tableKey(bt.table)}
		added := map[string]int{}
		widened := map[string]bool{}
		for _, r := range bt.rows {
			for name, v := range r.Cells { // per column, rows in order: any column order will do
				if have, ok := cols[name]; ok {
					if widens(have, v.T) && !widened[name] {
						widened[name] = true
						m.Widen = append(m.Widen, Column{name, v.T})
					}
					continue
				}
				if i, ok := added[name]; ok {
					m.Add[i].Type = merge(m.Add[i].Type, v.T)
					continue
				}
				added[name] = len(m.Add)
				m.Add = append(m.Add, Column{name, v.T})
			}
		}
		slices.SortFunc(m.Add, func(a, b Column) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(m.Widen, func(a, b Column) int { return strings.Compare(a.Name, b.Name) })
		if m.Create || len(m.Add) > 0 || len(m.Widen) > 0 {
			if m.Create {
				m.Add = keyFirst(m.Add, m.Key)
			}
			out = append(out, m)
		}
	}
	return out
}

// keyFirst orders columns with the key's first, the rest as they were.
func keyFirst(cols []Column, key []string) []Column {
	out := make([]Column, 0, len(cols))
	for _, k := range key {
		for _, c := range cols {
			if c.Name == k {
				out = append(out, c)
			}
		}
	}
	for _, c := range cols {
		if !slices.Contains(key, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// discardTables is the discards table's rows for the discards of rows.
func discardRows(schema string, ds []Discard, now time.Time, ev int) []*Row {
	var out []*Row
	for _, d := range ds {
		out = append(out, &Row{Event: ev, ID: d.Table + "\x00" + d.RowID + "\x00" + d.Column, Cells: map[string]Value{
			"table_name": {TypeString, d.Table}, "row_id": {TypeString, d.RowID}, "column_name": {TypeString, d.Column},
			"column_value": {TypeString, d.Value}, "reason": {TypeString, d.Reason},
			"received_at": {TypeDatetime, d.ReceivedAt}, "uuid_ts": {TypeDatetime, now},
		}})
	}
	return out
}

// typed converts the tables' rows to the columns' types in the schema as
// known (after the migrations): a value that does not convert leaves its
// cell empty and becomes a discard, in the discards table returned last.
func typed(tables []*batchTable, known map[string]Schema, now time.Time) (loads []*TableLoad, discards int) {
	disc := map[string]*TableLoad{}
	var order []string
	for _, bt := range tables {
		cols := known[bt.schema][bt.table]
		t := &TableLoad{Schema: bt.schema, Table: bt.table, Key: tableKey(bt.table), Upsert: bt.table == TableUsers}
		used := map[string]bool{}
		for _, r := range bt.rows {
			for name := range r.Cells {
				if _, ok := cols[name]; ok {
					used[name] = true
				}
			}
		}
		names := sortedKeys(used)
		var colList []Column
		for _, n := range names {
			colList = append(colList, Column{n, cols[n]})
		}
		t.Columns = keyFirst(colList, t.Key)
		for _, r := range bt.rows {
			ds := append([]Discard(nil), r.Discards...)
			vals := make([]any, len(t.Columns))
			for i, c := range t.Columns {
				v, ok := r.Cells[c.Name]
				if !ok || v.V == nil {
					continue
				}
				if c.Name == "uuid_ts" {
					vals[i] = now
					continue
				}
				cv, ok, why := convert(v, c.Type)
				if !ok {
					ds = append(ds, Discard{Table: bt.table, Column: c.Name, Value: text(v), Reason: why, RowID: r.ID, ReceivedAt: r.ReceivedAt})
					continue
				}
				vals[i] = cv.V
			}
			for name, v := range r.Cells {
				if _, ok := cols[name]; !ok && v.V != nil { // the migration could not add it
					ds = append(ds, Discard{Table: bt.table, Column: name, Value: text(v), Reason: "no such column", RowID: r.ID, ReceivedAt: r.ReceivedAt})
				}
			}
			t.Rows = append(t.Rows, vals)
			t.Events = append(t.Events, r.events())
			if len(ds) > 0 {
				dt := disc[bt.schema]
				if dt == nil {
					dt = &TableLoad{Schema: bt.schema, Table: TableDiscards, Columns: discardColumns, Key: discardKey}
					disc[bt.schema] = dt
					order = append(order, bt.schema)
				}
				for _, d := range discardRows(bt.schema, ds, now, r.Event) {
					row := make([]any, len(discardColumns))
					for i, c := range discardColumns {
						row[i] = d.Cells[c.Name].V
					}
					dt.Rows = append(dt.Rows, row)
					dt.Events = append(dt.Events, r.events())
					discards++
				}
			}
		}
		loads = append(loads, t)
	}
	for _, s := range order {
		loads = append(loads, dedupeDiscards(disc[s]))
	}
	return loads, discards
}

// dedupeDiscards keeps one discard per key (a users row merged from two
// identifies may carry the same one twice).
func dedupeDiscards(t *TableLoad) *TableLoad {
	seen := map[[3]any]bool{}
	var keep []int
	for i, r := range t.Rows {
		k := [3]any{r[0], r[1], r[2]}
		if !seen[k] {
			seen[k] = true
			keep = append(keep, i)
		}
	}
	if len(keep) == len(t.Rows) {
		return t
	}
	return t.subset(keep)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
