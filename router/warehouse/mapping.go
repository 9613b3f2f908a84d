package warehouse

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// Mapping turns events into rows of the warehouse schema (Segment's and
// RudderStack's): per event type its table (tracks and one table per
// event name, identifies and users, pages, screens, groups, aliases), the
// standard columns, context flattened as context_*, properties or traits
// flattened as columns. It is pure: no database, no clock.
type Mapping struct {
	Names Names
	// Schema, when set, is the one schema every event goes to; otherwise
	// each event goes to the schema named after its source (snake_case).
	Schema string
	// JSONColumns are paths in the event ("properties.items",
	// "context.traits.address") kept whole as one JSON column.
	JSONColumns []string
	// SkipTracks leaves track events out of the tracks table (they still
	// go to their event's table); SkipUsers leaves the users table out.
	SkipTracks, SkipUsers bool

	cache *nameCache // nil: no cache (New sets one)
}

// nameCache remembers the column names of key paths: events of one
// source repeat the same keys. Bounded: past namesCachedMax it stops
// adding (the names are still right, only computed each time).
type nameCache struct {
	mu    sync.RWMutex
	names map[string]string
}

const namesCachedMax = 100_000

func (c *nameCache) get(raw string, f func() string) string {
	c.mu.RLock()
	n, ok := c.names[raw]
	c.mu.RUnlock()
	if ok {
		return n
	}
	n = f()
	c.mu.Lock()
	if len(c.names) < namesCachedMax {
		c.names[raw] = n
	}
	c.mu.Unlock()
	return n
}

// Row is one event's row in one table.
type Row struct {
	Event      int    // the event's index in the batch
	Seq        uint64 // the event's log position: later wins in users
	ID         string // the primary key: messageId, or userId in users
	ReceivedAt time.Time
	Cells      map[string]Value
	// Discards are the event's values that cannot go in a column (name
	// collisions that cannot be resolved).
	Discards []Discard
	merged   []int // the events of a users row merged from several
}

// TableRow is a row and the table it goes to.
type TableRow struct {
	Table string
	Row   *Row
}

// Mapped is one event's rows.
type Mapped struct {
	Schema string
	Rows   []TableRow
}

// Discard is a value that could not be loaded into its column: its row
// loads with the column empty and the value goes to the discards table.
type Discard struct {
	Table, Column, Value, Reason, RowID string
	ReceivedAt                          time.Time
}

// ErrUnmappable is an event that has no row in the warehouse schema (not
// JSON, no type, no messageId): it is refused.
var ErrUnmappable = errors.New("event cannot be mapped to the warehouse schema")

// The standard columns: every table but users has them.
var standardColumns = []string{"id", "anonymous_id", "user_id", "received_at", "sent_at", "timestamp",
	"original_timestamp", "uuid_ts"}

// Map returns the rows of event e, the idx-th of its batch.
func (m *Mapping) Map(e router.Event, idx int) (Mapped, error) {
	p, err := decodeObject(e.Payload)
	if err != nil {
		return Mapped{}, fmt.Errorf("%w: not a JSON object: %v", ErrUnmappable, err)
	}
	typ, _ := p["type"].(string)
	if typ == "" {
		typ = string(e.Type)
	}
	id := str(p["messageId"])
	if id == "" {
		id = string(e.MessageID)
	}
	if id == "" {
		return Mapped{}, fmt.Errorf("%w: no messageId", ErrUnmappable)
	}
	schema := m.Schema
	if schema == "" {
		schema = m.Names.Sanitize(SnakeCase(string(e.Source)))
	}
	recv := time.Unix(0, e.ReceivedAt).UTC()
	if t, ok := parseTime(str(p["receivedAt"])); ok {
		recv = t
	}
	out := Mapped{Schema: schema}
	var base *rowBuilder // the standard columns and context, built once
	add := func(table string, extra func(b *rowBuilder)) {
		if base == nil {
			base = m.newRow(p, idx, e.Seq, id, recv)
		}
		b := base.clone()
		if extra != nil {
			extra(b)
		}
		out.Rows = append(out.Rows, TableRow{table, b.finish(table)})
	}
	obj := func(key string) map[string]any { o, _ := p[key].(map[string]any); return o }
	switch strings.ToLower(typ) {
	case "track":
		name := str(p["event"])
		table := m.Names.Table(name)
		hasTable := SnakeCase(name) != ""
		if !hasTable && m.SkipTracks {
			return Mapped{}, fmt.Errorf("%w: a track with no event name and skip_tracks_table", ErrUnmappable)
		}
		base = m.newRow(p, idx, e.Seq, id, recv)
		base.fixed("event", Value{TypeString, table})
		base.fixed("event_text", Value{TypeString, name})
		var ev *rowBuilder
		if hasTable {
			ev = base.clone()
			ev.object(obj("properties"), []string{"properties"}, nil)
		}
		if !m.SkipTracks { // tracks: the standard columns only
			out.Rows = append(out.Rows, TableRow{TableTracks, base.finish(TableTracks)})
		}
		if hasTable {
			out.Rows = append(out.Rows, TableRow{table, ev.finish(table)})
		}
	case "identify":
		traits := userTraits(p)
		add(TableIdentifies, func(b *rowBuilder) { b.object(traits, []string{"traits"}, nil) })
		if uid := str(p["userId"]); uid != "" && !m.SkipUsers {
			b := m.builder(idx, e.Seq, uid, recv)
			b.fixed("id", Value{TypeString, uid})
			b.fixed("received_at", Value{TypeDatetime, recv})
			b.fixed("uuid_ts", Value{TypeDatetime, time.Time{}})
			b.object(traits, []string{"traits"}, nil)
			out.Rows = append(out.Rows, TableRow{TableUsers, b.finish(TableUsers)})
		}
	case "page", "screen":
		table := TablePages
		if strings.ToLower(typ) == "screen" {
			table = TableScreens
		}
		add(table, func(b *rowBuilder) {
			b.fixedOpt("name", p["name"])
			b.fixedOpt("category", p["category"])
			b.object(obj("properties"), []string{"properties"}, nil)
		})
	case "group":
		add(TableGroups, func(b *rowBuilder) {
			b.fixedOpt("group_id", p["groupId"])
			b.object(obj("traits"), []string{"traits"}, nil)
		})
	case "alias":
		add(TableAliases, func(b *rowBuilder) { b.fixedOpt("previous_id", p["previousId"]) })
	default:
		return Mapped{}, fmt.Errorf("%w: unknown type %q", ErrUnmappable, typ)
	}
	return out, nil
}

// userTraits are an identify's traits: context.traits, overlaid by traits.
func userTraits(p map[string]any) map[string]any {
	t := map[string]any{}
	if c, ok := p["context"].(map[string]any); ok {
		if ct, ok := c["traits"].(map[string]any); ok {
			for k, v := range ct {
				t[k] = v
			}
		}
	}
	if tr, ok := p["traits"].(map[string]any); ok {
		for k, v := range tr {
			t[k] = v
		}
	}
	return t
}

// newRow starts a row with the standard columns and context_*.
func (m *Mapping) newRow(p map[string]any, idx int, seq uint64, id string, recv time.Time) *rowBuilder {
	b := m.builder(idx, seq, id, recv)
	b.fixed("id", Value{TypeString, id})
	b.fixedOpt("anonymous_id", p["anonymousId"])
	b.fixedOpt("user_id", p["userId"])
	b.fixed("received_at", Value{TypeDatetime, recv})
	b.fixedTime("sent_at", p["sentAt"])
	b.fixedTime("timestamp", p["timestamp"])
	b.fixedTime("original_timestamp", p["originalTimestamp"])
	b.fixed("uuid_ts", Value{TypeDatetime, time.Time{}}) // set at load
	if c, ok := p["context"].(map[string]any); ok {
		b.object(c, []string{"context"}, []string{"context"})
		b.settle(true) // context_* are standard columns: they win
	}
	return b
}

func (m *Mapping) builder(idx int, seq uint64, id string, recv time.Time) *rowBuilder {
	return &rowBuilder{m: m, fixedN: map[string]bool{},
		row: &Row{Event: idx, Seq: seq, ID: id, ReceivedAt: recv, Cells: map[string]Value{}}}
}

// clone is a copy of b to go on with: the same cells so far, none of
// its leaves.
func (b *rowBuilder) clone() *rowBuilder {
	r := *b.row
	r.Cells = make(map[string]Value, len(b.row.Cells)+16)
	for k, v := range b.row.Cells {
		r.Cells[k] = v
	}
	r.Discards = append([]Discard(nil), b.row.Discards...)
	b.sharedFixed = true
	return &rowBuilder{m: b.m, row: &r, fixedN: b.fixedN, sharedFixed: true}
}

// rowBuilder collects a row's cells, then resolves name collisions.
type rowBuilder struct {
	m      *Mapping
	row    *Row
	fixedN map[string]bool
	// sharedFixed: fixedN is shared with a clone (copy before writing)
	sharedFixed bool
	leaves      []leaf
}

// leaf is one flattened value before its name is settled.
type leaf struct {
	raw  string // the key path joined with "_": a name it may keep as is
	name string
	v    Value
}

// fixed sets a standard column: it keeps its name whatever else claims it.
func (b *rowBuilder) fixed(col string, v Value) {
	b.ownFixed()
	b.fixedN[col] = true
	b.row.Cells[col] = v
}

// fixedOpt sets a standard text column if the event has it.
func (b *rowBuilder) fixedOpt(col string, v any) {
	if s := str(v); s != "" {
		b.fixed(col, Value{TypeString, s})
	} else {
		b.fixed(col, Value{TypeString, nil}) // the column exists, empty
	}
}

// fixedTime sets a standard datetime column if the event has a valid one.
func (b *rowBuilder) fixedTime(col string, v any) {
	if t, ok := parseTime(str(v)); ok {
		b.fixed(col, Value{TypeDatetime, t})
		return
	}
	b.fixed(col, Value{TypeDatetime, nil}) // the column exists, empty
	if s := str(v); s != "" {
		b.row.Discards = append(b.row.Discards, Discard{Column: col, Value: s, Reason: "not an RFC 3339 timestamp"})
	}
}

// object flattens o: path is the event's key path (for json_columns), and
// prefix the keys that start its columns' names.
func (b *rowBuilder) object(o map[string]any, path, prefix []string) {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	slices.Sort(keys) // a fixed order, so collisions resolve the same way
	for _, k := range keys {
		v := o[k]
		np := append(prefix[:len(prefix):len(prefix)], k)
		var p []string // the event path, needed for json_columns and below
		if len(b.m.JSONColumns) > 0 {
			p = append(path[:len(path):len(path)], k)
			if slices.Contains(b.m.JSONColumns, strings.Join(p, ".")) {
				if v == nil {
					continue
				}
				j, err := json.Marshal(v)
				if err != nil {
					continue
				}
				raw := strings.Join(np, "_")
				b.leaves = append(b.leaves, leaf{raw: raw, name: b.m.column(raw), v: Value{TypeJSON, string(j)}})
				continue
			}
		}
		if sub, ok := v.(map[string]any); ok {
			if p == nil {
				p = append(path[:len(path):len(path)], k)
			}
			b.object(sub, p, np)
			continue
		}
		val, ok := infer(v)
		if !ok {
			continue
		}
		raw := strings.Join(np, "_")
		b.leaves = append(b.leaves, leaf{raw: raw, name: b.m.column(raw), v: val})
	}
}

// column is the column name of a flattened key path joined with "_"
// (the same as Names.Column of its parts), remembered.
func (m *Mapping) column(raw string) string {
	if m.cache == nil {
		return m.Names.Sanitize(SnakeCase(raw))
	}
	return m.cache.get(raw, func() string { return m.Names.Sanitize(SnakeCase(raw)) })
}

// finish settles the names: a standard column keeps its name; among
// leaves that want the same name, the one whose key is that name keeps it
// (else the first by key), and each other gets the name with a suffix
// hashed from its key (Names.Suffixed), the same in every row.
func (b *rowBuilder) finish(table string) *Row {
	b.settle(false)
	for i := range b.row.Discards {
		d := &b.row.Discards[i]
		d.Table, d.RowID, d.ReceivedAt = table, b.row.ID, b.row.ReceivedAt
	}
	return b.row
}

// settle names the leaves collected so far (see finish), as standard
// columns if std.
func (b *rowBuilder) settle(std bool) {
	if std {
		b.ownFixed()
	}
	var later []int
	for i, l := range b.leaves {
		if b.fixedN[l.name] {
			later = append(later, i)
			continue
		}
		if _, taken := b.row.Cells[l.name]; taken {
			// another leaf of this round has it (rare): find which
			j := slices.IndexFunc(b.leaves[:i], func(o leaf) bool { return o.name == l.name })
			if j >= 0 && l.raw == l.name && b.leaves[j].raw != l.name {
				b.row.Cells[l.name] = l.v
				later = append(later, j)
			} else {
				later = append(later, i)
			}
			continue
		}
		b.row.Cells[l.name] = l.v
		if std {
			b.fixedN[l.name] = true
		}
	}
	for _, i := range later {
		l := b.leaves[i]
		n := b.m.Names.Suffixed(l.name, l.raw)
		if _, taken := b.row.Cells[n]; taken || b.fixedN[n] {
			b.row.Discards = append(b.row.Discards, Discard{Column: l.name, Value: text(l.v), Reason: "column name collision"})
			continue
		}
		b.row.Cells[n] = l.v
		if std {
			b.fixedN[n] = true
		}
	}
	b.leaves = b.leaves[:0]
}

// ownFixed makes b's set of standard names its own before it changes (a
// clone shares its original's until then).
func (b *rowBuilder) ownFixed() {
	if !b.sharedFixed {
		return
	}
	f := make(map[string]bool, len(b.fixedN)+4)
	for k, v := range b.fixedN {
		f[k] = v
	}
	b.fixedN, b.sharedFixed = f, false
}

// str is a JSON scalar as text ("" for null, objects and arrays).
func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return string(x)
	case bool:
		if x {
			return "true"
		}
		return "false"
	}
	return ""
}
