// Package ceiling measures what the disk and Pebble can do on their own, so
// the engine's append throughput can be judged against ceilings measured on
// the same machine, in the same run.
//
// Two workloads share one driver (Run):
//
//   - File: N writers hand batches of bytes to one group-committing writer
//     that does one write and one fdatasync per group: the engine's write
//     path without framing, checksums, dedup or index.
//   - Pebble: each writer commits a Pebble batch holding one key per event
//     (ordered 8-byte keys) and the event as its value, with pebble.Sync.
//
// Run is also how the engine's own benchmarks drive Append, so all three are
// measured the same way: Writers goroutines each claim BatchEvents events at
// a time and commit them, until Events events are claimed or Duration has
// passed (whichever comes first; at least one must be set, so every run
// stops by itself). The latency of every commit call is recorded in an
// HdrHistogram. File and Pebble wrap Open, Run and Close for callers such as
// a CLI; benchmarks open outside their timer and call Run.
//
// Throughput counts event bytes (EventBytes per event) in decimal megabytes
// (1e6 bytes), as the testing package does; on-disk overhead (framing, keys,
// WAL records) is not counted.
package ceiling

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Config describes one run.
type Config struct {
	// EventBytes is the size of one event. Default 600.
	EventBytes int
	// BatchEvents is how many events one writer commits per call. Default 100.
	BatchEvents int
	// Writers is the number of concurrent writers. Default 1.
	Writers int
	// Duration stops the run once it has passed (commits in flight finish).
	// Zero: no time limit.
	Duration time.Duration
	// Events stops the run once this many events are claimed; the last
	// batch may be short. Zero: no count limit.
	Events int64
}

const (
	defaultEventBytes  = 600
	defaultBatchEvents = 100
	latencyMaxMicros   = int64(10 * time.Minute / time.Microsecond)
)

// withDefaults fills in defaults and rejects bad values, including a run
// without an end.
func (c Config) withDefaults() (Config, error) {
	c, err := c.withDefaultsNoStop()
	if err == nil && c.Duration == 0 && c.Events == 0 {
		err = fmt.Errorf("ceiling: set Duration or Events so the run ends")
	}
	return c, err
}

// withDefaultsNoStop is withDefaults for Open*, which need only the sizes.
func (c Config) withDefaultsNoStop() (Config, error) {
	if c.EventBytes == 0 {
		c.EventBytes = defaultEventBytes
	}
	if c.BatchEvents == 0 {
		c.BatchEvents = defaultBatchEvents
	}
	if c.Writers == 0 {
		c.Writers = 1
	}
	switch {
	case c.EventBytes < 1:
		return c, fmt.Errorf("ceiling: EventBytes %d must be positive", c.EventBytes)
	case c.BatchEvents < 1:
		return c, fmt.Errorf("ceiling: BatchEvents %d must be positive", c.BatchEvents)
	case c.Writers < 1:
		return c, fmt.Errorf("ceiling: Writers %d must be positive", c.Writers)
	case c.Duration < 0 || c.Events < 0:
		return c, fmt.Errorf("ceiling: Duration and Events must not be negative")
	}
	return c, nil
}

// Result is what one run measured.
type Result struct {
	// Events and Bytes committed (Bytes = Events * EventBytes); Commits is
	// the number of commit calls (batches).
	Events, Bytes, Commits int64
	// Elapsed is the wall time from the first claim to the last commit.
	Elapsed      time.Duration
	EventsPerSec float64
	MBPerSec     float64 // Bytes / 1e6 per second
	// Commit latency percentiles (one sample per commit call).
	P50, P99, P999, Max time.Duration
	// Latency holds every commit latency in microseconds.
	Latency *hdrhistogram.Histogram
}

// String formats r on one line.
func (r Result) String() string {
	return fmt.Sprintf("%d events in %v: %.0f events/s, %.1f MB/s, commit p50 %v p99 %v p99.9 %v max %v",
		r.Events, r.Elapsed.Round(time.Millisecond), r.EventsPerSec, r.MBPerSec, r.P50, r.P99, r.P999, r.Max)
}

// Committer stores events durably. Commit stores the n events numbered
// first, first+1, ... (numbers start at 0 and are unique across writers in
// one run) and returns once they are durable. Calls with the same writer
// (in [0, Config.Writers)) never overlap, so per-writer buffers need no
// locking; calls with different writers run concurrently.
type Committer interface {
	Commit(ctx context.Context, writer int, first uint64, n int) error
}

// CommitFunc adapts a function to Committer.
type CommitFunc func(ctx context.Context, writer int, first uint64, n int) error

// Commit calls f.
func (f CommitFunc) Commit(ctx context.Context, writer int, first uint64, n int) error {
	return f(ctx, writer, first, n)
}

// Run drives c with cfg.Writers concurrent writers until cfg.Events events
// are claimed, cfg.Duration has passed or ctx ends. The first commit error
// stops every writer and is returned with what was measured until then.
func Run(ctx context.Context, c Committer, cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, err
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hist := hdrhistogram.New(1, latencyMaxMicros, 3)
	var (
		histMu   sync.Mutex
		claimed  atomic.Int64
		events   atomic.Int64
		commits  atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	batch := int64(cfg.BatchEvents)
	for w := 0; w < cfg.Writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if cfg.Duration > 0 && !time.Now().Before(deadline) {
					return
				}
				first := claimed.Add(batch) - batch
				n := batch
				if cfg.Events > 0 {
					if first >= cfg.Events {
						return
					}
					n = min(n, cfg.Events-first)
				}
				t0 := time.Now()
				err := c.Commit(ctx, w, uint64(first), int(n))
				lat := time.Since(t0)
				if err != nil {
					errOnce.Do(func() {
						firstErr = fmt.Errorf("writer %d, events %d..%d: %w", w, first, first+n-1, err)
						cancel()
					})
					return
				}
				events.Add(n)
				commits.Add(1)
				histMu.Lock()
				_ = hist.RecordValue(max(1, lat.Microseconds())) // only a latency over 10 min fails
				histMu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := Result{
		Events:  events.Load(),
		Commits: commits.Load(),
		Elapsed: elapsed,
		Latency: hist,
		P50:     micros(hist.ValueAtQuantile(50)),
		P99:     micros(hist.ValueAtQuantile(99)),
		P999:    micros(hist.ValueAtQuantile(99.9)),
		Max:     micros(hist.Max()),
	}
	r.Bytes = r.Events * int64(cfg.EventBytes)
	if s := elapsed.Seconds(); s > 0 {
		r.EventsPerSec = float64(r.Events) / s
		r.MBPerSec = float64(r.Bytes) / 1e6 / s
	}
	if firstErr == nil && parent.Err() != nil {
		firstErr = parent.Err()
	}
	return r, firstErr
}

func micros(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// File runs the raw file-append ceiling in dir: see OpenFile.
func File(ctx context.Context, dir string, cfg Config) (Result, error) {
	f, err := OpenFile(dir, cfg)
	if err != nil {
		return Result{}, err
	}
	r, err := Run(ctx, f, cfg)
	if cerr := f.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return r, err
}

// Pebble runs the raw Pebble ceiling in dir: see OpenPebble.
func Pebble(ctx context.Context, dir string, cfg Config) (Result, error) {
	p, err := OpenPebble(dir, cfg)
	if err != nil {
		return Result{}, err
	}
	r, err := Run(ctx, p, cfg)
	if cerr := p.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return r, err
}
