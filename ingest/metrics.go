package ingest

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// latencyBoundsMs are the ingest latency histogram's upper bounds.
var latencyBoundsMs = [...]float64{0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000}

// metrics are the gateway's counters, rendered in Prometheus text format.
type metrics struct {
	mu       sync.RWMutex
	requests map[reqKey]*atomic.Uint64

	events, bytes, dedupHits, utf8Repaired atomic.Uint64
	rejected                               sync.Map // reason string -> *atomic.Uint64

	latency    [len(latencyBoundsMs) + 1]atomic.Uint64
	latencySum atomic.Uint64 // microseconds
}

type reqKey struct {
	endpoint string
	status   int
}

func newMetrics() *metrics { return &metrics{requests: make(map[reqKey]*atomic.Uint64)} }

func (m *metrics) request(endpoint string, status int, took time.Duration) {
	k := reqKey{endpoint, status}
	m.mu.RLock()
	c := m.requests[k]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if c = m.requests[k]; c == nil {
			c = new(atomic.Uint64)
			m.requests[k] = c
		}
		m.mu.Unlock()
	}
	c.Add(1)
	ms := float64(took) / float64(time.Millisecond)
	i := sort.SearchFloat64s(latencyBoundsMs[:], ms)
	m.latency[i].Add(1)
	m.latencySum.Add(uint64(took / time.Microsecond))
}

func (m *metrics) reject(reason string, n int) {
	c, _ := m.rejected.LoadOrStore(reason, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(uint64(n))
}

func (m *metrics) write(w io.Writer) {
	fmt.Fprintln(w, "# HELP sluice_ingest_requests_total Ingest HTTP requests by endpoint and status.")
	fmt.Fprintln(w, "# TYPE sluice_ingest_requests_total counter")
	m.mu.RLock()
	keys := make([]reqKey, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].endpoint != keys[j].endpoint {
			return keys[i].endpoint < keys[j].endpoint
		}
		return keys[i].status < keys[j].status
	})
	for _, k := range keys {
		fmt.Fprintf(w, "sluice_ingest_requests_total{endpoint=%q,status=\"%d\"} %d\n", k.endpoint, k.status, m.requests[k].Load())
	}
	m.mu.RUnlock()
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	counter("sluice_ingest_events_total", "Events stored durably.", m.events.Load())
	counter("sluice_ingest_bytes_total", "Request body bytes received (after decompression).", m.bytes.Load())
	counter("sluice_ingest_dedup_hits_total", "Events acknowledged but not stored again (duplicate messageId).", m.dedupHits.Load())
	counter("sluice_ingest_utf8_repaired_total", "Requests whose invalid UTF-8 was replaced with U+FFFD.", m.utf8Repaired.Load())
	fmt.Fprintln(w, "# HELP sluice_ingest_rejected_events_total Events refused, by reason.")
	fmt.Fprintln(w, "# TYPE sluice_ingest_rejected_events_total counter")
	var reasons []string
	m.rejected.Range(func(k, _ any) bool { reasons = append(reasons, k.(string)); return true })
	sort.Strings(reasons)
	for _, r := range reasons {
		c, _ := m.rejected.Load(r)
		fmt.Fprintf(w, "sluice_ingest_rejected_events_total{reason=%q} %d\n", r, c.(*atomic.Uint64).Load())
	}
	fmt.Fprintln(w, "# HELP sluice_ingest_latency_seconds Time from request read to response.")
	fmt.Fprintln(w, "# TYPE sluice_ingest_latency_seconds histogram")
	var cum uint64
	for i, b := range latencyBoundsMs {
		cum += m.latency[i].Load()
		fmt.Fprintf(w, "sluice_ingest_latency_seconds_bucket{le=\"%g\"} %d\n", b/1000, cum)
	}
	cum += m.latency[len(latencyBoundsMs)].Load()
	fmt.Fprintf(w, "sluice_ingest_latency_seconds_bucket{le=\"+Inf\"} %d\n", cum)
	fmt.Fprintf(w, "sluice_ingest_latency_seconds_sum %g\n", float64(m.latencySum.Load())/1e6)
	fmt.Fprintf(w, "sluice_ingest_latency_seconds_count %d\n", cum)
}
