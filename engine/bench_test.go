package engine

// Benchmarks on the real disk (b.TempDir, the OS filesystem), with 600-byte
// Segment-like JSON events, each with a unique messageId so dedup stores
// them all.
//
// One b.N iteration is one event everywhere below (one lookup in the dedup
// benchmark): ns/op is per event, MB/s counts event payload bytes (600 per
// event; the engine writes ~70 bytes of framing on top), and events/s is
// reported explicitly. A run of b.N events is cut into batches of the
// cell's batch size (the last may be short) that the appenders claim in
// turn, so -benchtime=1x appends a single event and stops.
//
// Append and the two ceilings (bench/ceiling) run the same matrix through
// the same driver, ceiling.Run, so their ratios are comparable within one
// run:
//
//	go test ./engine -run '^$' -bench 'Append|Ceiling' -benchtime 3s -count 3
//
// Commit latency (one sample per Append call, or per ceiling commit) is
// reported as p50-us and p99-us, in microseconds, from an HdrHistogram.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/bench/ceiling"
)

const benchEventBytes = 600

var (
	benchBatches   = []int{1, 100, 1000}
	benchAppenders = []int{1, 16, 64}
)

// benchOptions: defaults (real disk, 64 MiB segments, dedup on), no logging,
// no background reclaim (no consumers exist, so it would only cut segments).
func benchOptions(dir string) Options {
	return Options{
		Dir:             dir,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReclaimInterval: -1,
	}
}

// benchRecords returns n records with 600-byte JSON payloads, ready for
// setBenchIDs.
func benchRecords(n, eventBytes int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		recs[i] = Record{
			Source:    []byte("web"),
			Type:      []byte("track"),
			MessageID: ceiling.MessageID(nil, 0),
			Key:       fmt.Appendf(nil, "anon-%08d", i),
			Payload:   ceiling.Event(nil, eventBytes, 0),
		}
	}
	return recs
}

// setBenchIDs gives recs the event numbers first, first+1, ... (messageId in
// the field and in the JSON) and the current time.
func setBenchIDs(recs []Record, first uint64) {
	now := time.Now().UnixNano()
	for i := range recs {
		id := first + uint64(i)
		ceiling.PutMessageID(recs[i].MessageID, id)
		ceiling.PutID(recs[i].Payload, id)
		recs[i].ReceivedAt = now
		recs[i].Seq, recs[i].Pos = 0, 0
	}
}

// engineCommitter appends through e, one record slice per appender.
func engineCommitter(e *Engine, cfg ceiling.Config) ceiling.Committer {
	recs := make([][]Record, cfg.Writers)
	for w := range recs {
		recs[w] = benchRecords(cfg.BatchEvents, cfg.EventBytes)
	}
	return ceiling.CommitFunc(func(ctx context.Context, w int, first uint64, n int) error {
		batch := recs[w][:n]
		setBenchIDs(batch, first)
		res, err := e.Append(ctx, batch)
		if err != nil {
			return err
		}
		if res.Stored != n {
			return fmt.Errorf("stored %d of %d events (%d duplicates)", res.Stored, n, res.Duplicates)
		}
		return nil
	})
}

// runCommitBench runs b.N events through c and reports the result. open
// runs before the timer starts; it returns the committer and a function
// called after the timer stops that may report more metrics and must close
// what open opened.
func runCommitBench(b *testing.B, cfg ceiling.Config, open func(b *testing.B, cfg ceiling.Config) (ceiling.Committer, func() error)) {
	b.ReportAllocs()
	b.SetBytes(int64(cfg.EventBytes))
	cfg.Events = int64(b.N)
	c, done := open(b, cfg)
	b.ResetTimer()
	r, err := ceiling.Run(context.Background(), c, cfg)
	b.StopTimer()
	if cerr := done(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatal(err)
	}
	if r.Events != int64(b.N) {
		b.Fatalf("committed %d events, want %d", r.Events, b.N)
	}
	b.ReportMetric(r.EventsPerSec, "events/s")
	b.ReportMetric(float64(r.Latency.ValueAtQuantile(50)), "p50-us")
	b.ReportMetric(float64(r.Latency.ValueAtQuantile(99)), "p99-us")
}

// forEachCell runs f for every batch size x appender count.
func forEachCell(b *testing.B, f func(b *testing.B, cfg ceiling.Config)) {
	for _, batch := range benchBatches {
		for _, appenders := range benchAppenders {
			cfg := ceiling.Config{EventBytes: benchEventBytes, BatchEvents: batch, Writers: appenders}
			b.Run(fmt.Sprintf("batch=%d/appenders=%d", batch, appenders), func(b *testing.B) { f(b, cfg) })
		}
	}
}

func openEngineBench(b *testing.B, opts Options) *Engine {
	b.Helper()
	e, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// engineOpener opens an engine with opts (Dir filled in) for runCommitBench
// and reports events per group commit when done.
func engineOpener(opts Options) func(b *testing.B, cfg ceiling.Config) (ceiling.Committer, func() error) {
	return func(b *testing.B, cfg ceiling.Config) (ceiling.Committer, func() error) {
		opts.Dir = b.TempDir()
		e := openEngineBench(b, opts)
		warmUp(b, e)
		return engineCommitter(e, cfg), func() error {
			if st := e.Stats(); st.Groups > 1 { // less the warm-up's
				b.ReportMetric(float64(st.GroupRecords-1)/float64(st.Groups-1), "events/group")
			}
			return e.Close()
		}
	}
}

// warmUp appends one event outside the timer, so that one-time costs (the
// first dedup generation's Bloom filter, 12.8 MiB by default, allocated
// once per generation, i.e. every 6 hours) stay out of the measurement.
func warmUp(b *testing.B, e *Engine) {
	b.Helper()
	recs := benchRecords(1, benchEventBytes)
	setBenchIDs(recs, 1<<62) // far from the benchmark's event numbers
	if _, err := e.Append(context.Background(), recs); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAppend: Engine.Append, durable (one fsync per group commit).
func BenchmarkAppend(b *testing.B) {
	forEachCell(b, func(b *testing.B, cfg ceiling.Config) {
		runCommitBench(b, cfg, engineOpener(benchOptions("")))
	})
}

// BenchmarkAppendNoDedup: BenchmarkAppend's key cells with deduplication
// disabled (DedupWindow -1): the difference to BenchmarkAppend is what the
// dedup check and its index writes cost on the durable path.
func BenchmarkAppendNoDedup(b *testing.B) {
	for _, appenders := range []int{16, 64} {
		cfg := ceiling.Config{EventBytes: benchEventBytes, BatchEvents: 100, Writers: appenders}
		b.Run(fmt.Sprintf("batch=100/appenders=%d", appenders), func(b *testing.B) {
			opts := benchOptions("")
			opts.DedupWindow = -1
			runCommitBench(b, cfg, engineOpener(opts))
		})
	}
}

// BenchmarkCeilingFile: raw group-committed file appends (bench/ceiling).
func BenchmarkCeilingFile(b *testing.B) {
	forEachCell(b, func(b *testing.B, cfg ceiling.Config) {
		runCommitBench(b, cfg, func(b *testing.B, cfg ceiling.Config) (ceiling.Committer, func() error) {
			f, err := ceiling.OpenFile(b.TempDir(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			return f, func() error {
				if groups, _ := f.Groups(); groups > 0 {
					b.ReportMetric(float64(b.N)/float64(groups), "events/group")
				}
				return f.Close()
			}
		})
	})
}

// BenchmarkCeilingPebble: raw Pebble, one synced batch per commit, one key
// per event (bench/ceiling).
func BenchmarkCeilingPebble(b *testing.B) {
	forEachCell(b, func(b *testing.B, cfg ceiling.Config) {
		runCommitBench(b, cfg, func(b *testing.B, cfg ceiling.Config) (ceiling.Committer, func() error) {
			p, err := ceiling.OpenPebble(b.TempDir(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			return p, p.Close
		})
	})
}

// scanFillMax bounds the log BenchmarkScan fills (~140 MB, three segments);
// longer runs read it again from the start.
const scanFillMax = 200_000

// BenchmarkScan: Reader.Next over a pre-filled log, 256 records per call.
// One iteration is one event read. The log was just written, so it is read
// from the page cache: this is the reader's CPU cost, not the disk's.
func BenchmarkScan(b *testing.B) {
	e := openEngineBench(b, benchOptions(b.TempDir()))
	defer e.Close()
	fill := min(b.N, scanFillMax)
	recs := benchRecords(min(fill, 1000), benchEventBytes)
	for done := 0; done < fill; {
		batch := recs[:min(len(recs), fill-done)]
		setBenchIDs(batch, uint64(done))
		if _, err := e.Append(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		done += len(batch)
	}
	b.ReportAllocs()
	b.SetBytes(benchEventBytes)
	b.ResetTimer()
	r, err := e.NewReader(1, 0)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]Record, 0, 256)
	var payload int
	for read := 0; read < b.N; {
		buf, err = r.Next(buf[:0], min(cap(buf), b.N-read))
		if err != nil {
			b.Fatal(err)
		}
		if len(buf) == 0 { // end of the log: start over
			r.Close()
			if r, err = e.NewReader(1, 0); err != nil {
				b.Fatal(err)
			}
			continue
		}
		for i := range buf {
			payload += len(buf[i].Payload)
		}
		read += len(buf)
	}
	b.StopTimer()
	r.Close()
	if payload != b.N*benchEventBytes {
		b.Fatalf("read %d payload bytes, want %d", payload, b.N*benchEventBytes)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDedupLookupAbsent measures what deduplication costs for a new
// (absent) messageId; ns/op is per event.
//
//   - seen/filter=default: the committer's check, dedup.seen, after 10,000 earlier keys:
//     hash, the group's map, the generations' Bloom filters, then recording
//     the key (filter and pending index batch), as for every stored event.
//     Groups of 1,000, as in a busy committer.
//   - seen/filter=saturated: the same with filters far past capacity, so
//     every lookup also misses in the dedup runs (a mapped block each):
//     the slow, exact path when the filters are overfull.
//   - seen/fresh=200k: the same after 200,000 earlier keys still waiting in
//     memory for the next index batch (a busy engine's state just before
//     one): the waiting set and the filter no longer fit in the CPU cache.
//   - append/dedup=on|off: Append of 100-event batches with dedup enabled or
//     disabled (DedupWindow -1), without fsync (NoSyncData) so the CPU cost
//     is not hidden under the disk's; the difference is dedup's share of
//     the write path, index batch commit included.
func BenchmarkDedupLookupAbsent(b *testing.B) {
	b.Run("seen/filter=default", func(b *testing.B) { benchDedupSeen(b, 0, 10_000, false) })
	b.Run("seen/filter=saturated", func(b *testing.B) { benchDedupSeen(b, 1024, 10_000, false) })
	b.Run("seen/fresh=200k", func(b *testing.B) { benchDedupSeen(b, 0, 200_000, true) })
	for _, on := range []bool{true, false} {
		b.Run(fmt.Sprintf("append/dedup=%s", map[bool]string{true: "on", false: "off"}[on]), func(b *testing.B) {
			opts := benchOptions("")
			opts.NoSyncData = true
			if !on {
				opts.DedupWindow = -1
			}
			cfg := ceiling.Config{EventBytes: benchEventBytes, BatchEvents: 100, Writers: 1}
			runCommitBench(b, cfg, engineOpener(opts))
		})
	}
}

func benchDedupSeen(b *testing.B, filterBytes, prior int, keepFresh bool) {
	opts := benchOptions(b.TempDir())
	opts.DedupFilterBytes = filterBytes
	if keepFresh {
		// The prior keys stay in memory, not yet in an index batch, as
		// just before a busy engine's next batch.
		opts.DedupIndexBatchKeys, opts.DedupIndexInterval = 1<<30, time.Hour
	}
	e := openEngineBench(b, opts)
	defer e.Close()
	const group = 1_000
	recs := benchRecords(group, benchEventBytes)
	for i := 0; i < prior; i += group {
		setBenchIDs(recs, uint64(i))
		if _, err := e.Append(context.Background(), recs); err != nil {
			b.Fatal(err)
		}
	}
	// The committer is idle; holding writeMu keeps it off the dedup state.
	e.writeMu.Lock()
	defer e.writeMu.Unlock()
	d := e.dedup
	now := e.opts.Now()
	gets := d.indexGets
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%group == 0 {
			d.undo()
		}
		r := &recs[i%group]
		ceiling.PutMessageID(r.MessageID, uint64(prior+i))
		dup, err := d.seen(r, now)
		if err != nil || dup {
			b.Fatalf("lookup %d: dup %v, err %v", i, dup, err)
		}
	}
	b.StopTimer()
	d.undo() // drop the pending keys: none of these events exist
	if filterBytes > 0 && d.indexGets-gets < uint64(b.N) {
		b.Fatalf("saturated filters sent only %d of %d lookups to the index", d.indexGets-gets, b.N)
	}
}
