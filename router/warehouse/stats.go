package warehouse

import (
	"slices"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/sluice-cdi/sluice/router"
)

// Stats are a warehouse destination's counters since it started.
type Stats struct {
	// Tables holds per "schema.table" the rows written (inserted or, for
	// users, merged; a row already present counts too).
	Tables map[string]TableStats `json:"tables"`
	// ColumnsAdded and TablesCreated count migrations; ColumnsWidened
	// the int columns altered to float.
	ColumnsAdded   uint64 `json:"columns_added"`
	ColumnsWidened uint64 `json:"columns_widened"`
	TablesCreated  uint64 `json:"tables_created"`
	// Discards are values put in rudder_discards instead of their column.
	Discards uint64 `json:"discards"`
	// Refused are events the database (or the mapping) refused by name.
	Refused uint64 `json:"refused"`
	// Loads are committed transactions; Failures loads that failed as a
	// whole (outage, permission, conflict).
	Loads    uint64 `json:"loads"`
	Failures uint64 `json:"failures"`
	// LastLoad is when the last transaction committed.
	LastLoad time.Time `json:"last_load,omitzero"`
	// Latency is acknowledged (received at ingest) to committed in the
	// warehouse, per event.
	LatencyP50, LatencyP99, LatencyMax time.Duration
	LatencyCount                       int64
}

// TableStats are one table's counters.
type TableStats struct {
	Rows uint64 `json:"rows"`
}

type stats struct {
	mu  sync.Mutex
	s   Stats
	lat *hdrhistogram.Histogram // microseconds
}

func newStats() *stats {
	return &stats{s: Stats{Tables: map[string]TableStats{}}, lat: hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3)}
}

func (s *stats) loaded(loads []*TableLoad, rows []int64, discards int, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, t := range loads {
		k := t.Schema + "." + t.Table
		ts := s.s.Tables[k]
		ts.Rows += uint64(rows[i])
		s.s.Tables[k] = ts
	}
	s.s.Discards += uint64(discards)
	s.s.Loads++
	s.s.LastLoad = at
}

func (s *stats) latency(d time.Duration) {
	s.mu.Lock()
	_ = s.lat.RecordValue(max(int64(d/time.Microsecond), 1)) // past an hour: clamped by the error
	s.mu.Unlock()
}

func (s *stats) migrated(m Migration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.Create {
		s.s.TablesCreated++
	} else {
		s.s.ColumnsAdded += uint64(len(m.Add))
	}
	s.s.ColumnsWidened += uint64(len(m.Widen))
}

func (s *stats) refused(n int) {
	s.mu.Lock()
	s.s.Refused += uint64(n)
	s.mu.Unlock()
}

func (s *stats) failed() {
	s.mu.Lock()
	s.s.Failures++
	s.mu.Unlock()
}

func (s *stats) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.s
	out.Tables = make(map[string]TableStats, len(s.s.Tables))
	for k, v := range s.s.Tables {
		out.Tables[k] = v
	}
	out.LatencyCount = s.lat.TotalCount()
	out.LatencyP50 = time.Duration(s.lat.ValueAtQuantile(50)) * time.Microsecond
	out.LatencyP99 = time.Duration(s.lat.ValueAtQuantile(99)) * time.Microsecond
	out.LatencyMax = time.Duration(s.lat.Max()) * time.Microsecond
	return out
}

// Report gives the warehouse's figures for the admin API and /metrics
// (router.Reporter): rows per table, migrations, discards, refusals,
// loads, the last load time and the load latency.
func (w *Warehouse) Report() []router.Figure {
	s := w.Stats()
	figs := make([]router.Figure, 0, len(s.Tables)+12)
	tables := make([]string, 0, len(s.Tables))
	for t := range s.Tables {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	for _, t := range tables {
		figs = append(figs, router.Figure{Name: "sluice_warehouse_rows_total", Help: "Rows loaded, per schema.table (users merged count too).",
			Kind: "counter", Labels: [][2]string{{"table", t}}, Value: float64(s.Tables[t].Rows)})
	}
	counter := func(name, help string, v uint64) {
		figs = append(figs, router.Figure{Name: name, Help: help, Kind: "counter", Value: float64(v)})
	}
	counter("sluice_warehouse_tables_created_total", "Tables created.", s.TablesCreated)
	counter("sluice_warehouse_columns_added_total", "Columns added (schema evolution).", s.ColumnsAdded)
	counter("sluice_warehouse_columns_widened_total", "Integer columns widened to float.", s.ColumnsWidened)
	counter("sluice_warehouse_discards_total", "Values put in rudder_discards instead of their column.", s.Discards)
	counter("sluice_warehouse_refused_total", "Events the database refused by name (dead letters).", s.Refused)
	counter("sluice_warehouse_loads_total", "Load transactions committed.", s.Loads)
	counter("sluice_warehouse_load_failures_total", "Load transactions that failed as a whole.", s.Failures)
	var last float64
	if !s.LastLoad.IsZero() {
		last = float64(s.LastLoad.UnixNano()) / 1e9
	}
	figs = append(figs, router.Figure{Name: "sluice_warehouse_last_load_timestamp_seconds", Help: "When the last load committed (Unix time; 0: none yet).",
		Kind: "gauge", Value: last})
	for _, q := range []struct {
		q string
		d time.Duration
	}{{"0.5", s.LatencyP50}, {"0.99", s.LatencyP99}, {"1", s.LatencyMax}} {
		figs = append(figs, router.Figure{Name: "sluice_warehouse_load_latency_seconds", Help: "Acknowledged at ingest to committed in the warehouse, per event.",
			Kind: "gauge", Labels: [][2]string{{"quantile", q.q}}, Value: q.d.Seconds()})
	}
	return figs
}
