package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-cdi/sluice/bench/sink"
)

var scenarios = []Scenario{
	{"ingest-max", "closed loop at max: 100-event batches and single /v1/track, against the fasthttp no-op and fasthttp+file ceilings (load generator overhead from the no-op)", ingestMax},
	{"ingest-sustained", "closed loop for 60 s (10-12 s elsewhere): dedup on vs off, and the fasthttp+file ceiling: what the dedup index costs once it has data to compact", ingestSustained},
	{"ingest-allocs", "allocations per request of the gateway: go test ./ingest -bench (ParseBatch100, ParseTrack, DurableBatch100)", ingestAllocs},
	{"ingest-latency", "open loop at 25/50/75% of the measured ingest max and at 100k events/s; latency from the intended send time", ingestLatency},
	{"e2e-max", "ingest to a webhook sink, batch_size 1 and 100: events over first request to last delivery", e2eMax},
	{"e2e-latency", "open loop at 50% of the e2e max (batch_size 100); delivery latency at the sink", e2eLatency},
	{"poison-1pct", "1% of events refused 400 by the sink (named in a partial answer; whole batch refused) vs none, same load", poison},
	{"outage", "sink outage window, then time to resume and drain rate vs draining the same backlog after a pause", outage},
	{"hot-user", "open loop, the same rate: events over 10,000 users vs one user carrying 10% of the requests", hotUser},
	{"restart", "a large backlog (sink down), SIGTERM, restart: stop, startup, first delivery, drain", restart},
}

const (
	ingestSenders = 64
	ingestBatch   = 100
	ingestUsers   = 1000
	hookName      = "hook"
)

func ingestLoad(d time.Duration) LoadConfig {
	return LoadConfig{WriteKey: WriteKey, Batch: ingestBatch, Senders: ingestSenders, Duration: d, Event: EventConfig{Users: ingestUsers}}
}

// ingestPhase runs load against a fresh sluice without destinations.
func (sc *scenarioRun) ingestPhase(ctx context.Context, name string, cfg LoadConfig) (*Phase, error) {
	return sc.ingestPhaseWith(ctx, name, cfg, "")
}

// ingestPhaseWith is ingestPhase with extra top-level config YAML.
func (sc *scenarioRun) ingestPhaseWith(ctx context.Context, name string, cfg LoadConfig, extra string) (*Phase, error) {
	s, _, err := sc.startSluice(ctx, name, "", extra)
	if err != nil {
		return nil, err
	}
	cfg.Target = s.Addr
	warm, err := sc.warmup(ctx, cfg)
	if err != nil {
		return nil, err
	}
	before, _ := ReadProcStats(s.Pid())
	stopPerf := sc.maybePerf(name, s.Pid(), cfg.Duration)
	lr, err := Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	prof := stopPerf()
	p := phaseFromLoad(name, "sluice", lr)
	p.Sluice = sluiceStats(s, before, lr.Events)
	p.Profile = prof
	warm.note(&p)
	c := &Check{Acked: lr.Events + warm.events(), Abandoned: lr.Abandoned}
	stored, err := s.Metric("sluice_ingest_events_total", "")
	dups, _ := s.Metric("sluice_ingest_dedup_hits_total", "")
	switch {
	case err != nil:
		c.Problems = append(c.Problems, err.Error())
	case int64(stored+dups) < c.Acked:
		c.Problems = append(c.Problems, fmt.Sprintf("acknowledged %d events but sluice counts %v stored + %v duplicates", c.Acked, stored, dups))
	}
	if lr.Abandoned > 0 {
		c.Problems = append(c.Problems, fmt.Sprintf("%d requests abandoned (statuses %v)", lr.Abandoned, lr.Statuses))
	}
	c.Delivered = int64(stored)
	c.OK = len(c.Problems) == 0
	p.Check = c
	sc.stopSluice(s)
	p.SluiceLog = sluiceLog(s)
	sc.logf("%s: %s", name, lr)
	return sc.addPhase(p), nil
}

// ceilingPhase runs load against an HTTP ceiling server.
func (sc *scenarioRun) ceilingPhase(ctx context.Context, name, kind string, cfg LoadConfig) (*Phase, error) {
	proc, addr, err := sc.startCeiling(ctx, kind)
	if err != nil {
		return nil, err
	}
	cfg.Target = addr
	before, _ := ReadProcStats(proc.Pid())
	lr, err := Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p := phaseFromLoad(name, kind, lr)
	if st, err := ReadProcStats(proc.Pid()); err == nil && lr.Events > 0 {
		p.Extra["server_cpu_us_per_event"] = (st.CPU - before.CPU).Seconds() * 1e6 / float64(lr.Events)
	}
	if lr.Abandoned > 0 {
		sc.fail("%s: %d requests abandoned (statuses %v)", name, lr.Abandoned, lr.Statuses)
	}
	proc.Stop(20 * time.Second)
	sc.logf("%s: %s", name, lr)
	return sc.addPhase(p), nil
}

func (sc *scenarioRun) addPhase(p Phase) *Phase {
	p.Repeat = sc.repeat
	if p.Check != nil && !p.Check.OK {
		sc.fail("%s: %s", p.Name, strings.Join(p.Check.Problems, "; "))
	}
	sc.phases = append(sc.phases, p)
	return &sc.phases[len(sc.phases)-1]
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func ingestMax(ctx context.Context, sc *scenarioRun) error {
	d := sc.dur(10*time.Second, 2*time.Second)
	batch := ingestLoad(d)
	track := ingestLoad(d)
	track.Single = true
	// Interleaved so slow drift of the machine hits all of them alike.
	file, err := sc.ceilingPhase(ctx, "ceiling-file-batch100", CeilingFile, batch)
	if err != nil {
		return err
	}
	sl, err := sc.ingestPhase(ctx, "sluice-batch100", batch)
	if err != nil {
		return err
	}
	noop, err := sc.ceilingPhase(ctx, "ceiling-noop-batch100", CeilingNoop, batch)
	if err != nil {
		return err
	}
	slT, err := sc.ingestPhase(ctx, "sluice-track", track)
	if err != nil {
		return err
	}
	noopT, err := sc.ceilingPhase(ctx, "ceiling-noop-track", CeilingNoop, track)
	if err != nil {
		return err
	}
	sl.ratio("file_ceiling", file.EventsPerSec)
	sl.ratio("noop_ceiling", noop.EventsPerSec)
	slT.ratio("noop_ceiling", noopT.EventsPerSec)
	sc.summary["sluice_batch100_eps"] = sl.EventsPerSec
	sc.summary["sluice_batch100_p99_ms"] = sl.Latency.P99
	sc.summary["file_ceiling_batch100_eps"] = file.EventsPerSec
	sc.summary["noop_ceiling_batch100_eps"] = noop.EventsPerSec
	sc.summary["sluice_over_file"] = ratio(sl.EventsPerSec, file.EventsPerSec)
	sc.summary["sluice_over_noop"] = ratio(sl.EventsPerSec, noop.EventsPerSec)
	sc.summary["sluice_track_eps"] = slT.EventsPerSec
	sc.summary["noop_ceiling_track_eps"] = noopT.EventsPerSec
	sc.summary["sluice_track_over_noop"] = ratio(slT.EventsPerSec, noopT.EventsPerSec)
	sc.summary["loadgen_cpu_us_per_event_batch100"] = noop.LoadGenCPUUs
	sc.summary["loadgen_cpu_us_per_event_track"] = noopT.LoadGenCPUUs
	if sl.Sluice != nil {
		sc.summary["sluice_cpu_us_per_event_batch100"] = sl.Sluice.CPUMicrosPerEvent
		sc.summary["sluice_disk_bytes_per_event"] = sl.Sluice.DiskBytesPerEvent
	}
	if slT.Sluice != nil {
		sc.summary["sluice_cpu_us_per_event_track"] = slT.Sluice.CPUMicrosPerEvent
	}
	return nil
}

// ingestSustained runs the ingest max for a minute: the dedup index's
// compactions grow with the keys it holds, which 10 s phases from a fresh
// data dir hardly show. Dedup off (a negative window) gives its cost.
func ingestSustained(ctx context.Context, sc *scenarioRun) error {
	load := ingestLoad(sc.dur(60*time.Second, 3*time.Second))
	on, err := sc.ingestPhase(ctx, "sluice-dedup-on", load)
	if err != nil {
		return err
	}
	off, err := sc.ingestPhaseWith(ctx, "sluice-dedup-off", load, "engine:\n  dedup_window: -1s\n")
	if err != nil {
		return err
	}
	file, err := sc.ceilingPhase(ctx, "ceiling-file-batch100", CeilingFile, load)
	if err != nil {
		return err
	}
	on.ratio("file_ceiling", file.EventsPerSec)
	off.ratio("file_ceiling", file.EventsPerSec)
	sc.summary["sustained_eps"] = on.EventsPerSec
	sc.summary["sustained_dedup_off_eps"] = off.EventsPerSec
	sc.summary["sustained_file_ceiling_eps"] = file.EventsPerSec
	sc.summary["sustained_over_file"] = ratio(on.EventsPerSec, file.EventsPerSec)
	sc.summary["dedup_cost_pct"] = 100 * (1 - ratio(on.EventsPerSec, off.EventsPerSec))
	if on.Sluice != nil && off.Sluice != nil {
		sc.summary["sustained_cpu_us_per_event"] = on.Sluice.CPUMicrosPerEvent
		sc.summary["sustained_dedup_off_cpu_us_per_event"] = off.Sluice.CPUMicrosPerEvent
	}
	sc.note("60 s phases from a fresh data dir; dedup off is `engine: dedup_window: -1s`")
	return nil
}

func (p *Phase) ratio(name string, v float64) {
	if p.Ratios == nil {
		p.Ratios = map[string]float64{}
	}
	p.Ratios[name] = ratio(p.EventsPerSec, v)
}

// previous returns key from the summary of an earlier result of scenario
// in OutDir, if it measured the same sluice binary with the same quickness
// in the last 6 hours.
func (sc *scenarioRun) previous(scenario, key string) (float64, bool) {
	res, err := ReadResult(filepath.Join(sc.r.opts.OutDir, scenario))
	if err != nil || !res.Pass || res.Quick != sc.r.opts.Quick || res.Env.SluiceBinary != sc.r.env.SluiceBinary ||
		time.Since(res.Started) > 6*time.Hour {
		return 0, false
	}
	v, ok := res.Summary[key]
	return v, ok && v > 0
}

func ingestLatency(ctx context.Context, sc *scenarioRun) error {
	maxEPS, ok := sc.previous("ingest-max", "sluice_batch100_eps")
	if ok {
		sc.note("rates are shares of the sluice-batch100 max of this run's ingest-max result")
	} else {
		p, err := sc.ingestPhase(ctx, "max-probe", ingestLoad(sc.dur(5*time.Second, 1500*time.Millisecond)))
		if err != nil {
			return err
		}
		maxEPS = p.EventsPerSec
		sc.note("rates are shares of a closed-loop max-probe phase (no ingest-max result of this binary)")
	}
	sc.summary["max_eps"] = maxEPS
	sc.note("latency percentiles leave out each run's first %v (new connections; see LoadConfig.Warmup); *_first_second_p99_ms gives that second", latencyWarmup(sc))
	// The shares of this run's max, then half the 200k target: a
	// fixed rate, comparable across machines and binaries.
	for _, pct := range []int{25, 50, 75, 0} {
		cfg := ingestLoad(sc.dur(10*time.Second, 2*time.Second) + latencyWarmup(sc))
		cfg.Warmup = latencyWarmup(sc)
		cfg.Rate = maxEPS * float64(pct) / 100
		cfg.Drain = 10 * time.Second
		name := fmt.Sprintf("open-%dpct", pct)
		if pct == 0 {
			cfg.Rate, name = targetHalfEPS, "open-100k"
		}
		p, err := sc.ingestPhase(ctx, name, cfg)
		if err != nil {
			return err
		}
		if pct == 0 {
			sc.summary["rate100k_p50_ms"] = p.Latency.P50
			sc.summary["rate100k_p99_ms"] = p.Latency.P99
			sc.summary["rate100k_p999_ms"] = p.Latency.P999
			sc.summary["rate100k_achieved_eps"] = p.EventsPerSec
			continue
		}
		if p.NotSent > 0 {
			sc.note("open-%dpct: %d requests could not be sent before the hard stop: the rate was not sustained", pct, p.NotSent)
		}
		sc.summary[fmt.Sprintf("rate%d_eps", pct)] = cfg.Rate
		sc.summary[fmt.Sprintf("rate%d_p50_ms", pct)] = p.Latency.P50
		sc.summary[fmt.Sprintf("rate%d_p99_ms", pct)] = p.Latency.P99
		sc.summary[fmt.Sprintf("rate%d_p999_ms", pct)] = p.Latency.P999
		sc.summary[fmt.Sprintf("rate%d_achieved_eps", pct)] = p.EventsPerSec
		if len(p.Series) > 0 {
			sc.summary[fmt.Sprintf("rate%d_first_second_p99_ms", pct)] = p.Series[0].P99Ms
		}
		if pct == 50 {
			// The disk's own latency at the same offered load.
			c, err := sc.ceilingPhase(ctx, "ceiling-file-open-50pct", CeilingFile, cfg)
			if err != nil {
				return err
			}
			sc.summary["file_ceiling_rate50_p50_ms"] = c.Latency.P50
			sc.summary["file_ceiling_rate50_p99_ms"] = c.Latency.P99
			sc.summary["file_ceiling_rate50_p999_ms"] = c.Latency.P999
			if len(c.Series) > 0 {
				sc.summary["file_ceiling_rate50_first_second_p99_ms"] = c.Series[0].P99Ms
			}
		}
	}
	return nil
}

// targetHalfEPS is half the ingest target of 200,000 events/s: where the
// issue asks for p99 <= 10 ms.
const targetHalfEPS = 100_000

// latencyWarmup is the start of an open-loop latency run left out of its
// percentiles.
func latencyWarmup(sc *scenarioRun) time.Duration { return sc.dur(2*time.Second, 500*time.Millisecond) }

// webhookDest is the YAML of the webhook destination to a sink; partial
// lets the sink name the events of a batch it refuses.
func webhookDest(sinkAddr string, batch int, retry string, partial bool) string {
	if retry == "" {
		retry = "    retry:\n      backoff_max: 10s\n"
	}
	extra := ""
	if partial { // only when asked: older builds refuse the key
		extra = "      partial_failures: true\n"
	}
	return fmt.Sprintf(`  - name: %s
    type: webhook
    batch_size: %d
    timeout: 10s
%s    config:
      url: http://%s/ingest
%s`, hookName, batch, retry, sinkAddr, extra)
}

type e2eOpts struct {
	name      string
	batchSize int // the webhook's batch_size
	load      LoadConfig
	sink      sink.Config
	pause     bool // pause the destination while loading, resume after
	wait      time.Duration
	perf      bool
}

type e2eOut struct {
	phase           *Phase
	lr              *LoadResult
	start, resumed  time.Time // sink clock start; resume (pause only)
	done            time.Time // every accepted event delivered (zero: timeout)
	firstAfter      func(time.Time) time.Time
	accept, poisons int64
}

// e2ePhase runs load into a fresh sluice delivering to a fresh sink and
// waits until every acknowledged event is delivered (or a dead letter, if
// poison).
func (sc *scenarioRun) e2ePhase(ctx context.Context, o e2eOpts) (*e2eOut, error) {
	sk, sinkAddr, stopSink, err := sc.startSink(o.sink, "")
	if err != nil {
		return nil, err
	}
	defer stopSink()
	s, _, err := sc.startSluice(ctx, o.name, webhookDest(sinkAddr, o.batchSize, "", o.sink.NamePoison), "")
	if err != nil {
		return nil, err
	}
	if o.pause {
		if err := s.AdminPost("/v1/destinations/" + hookName + "/pause"); err != nil {
			return nil, err
		}
	}
	cfg := o.load
	cfg.Target = s.Addr
	var warm *warmRun
	if !o.pause && len(o.sink.Faults) == 0 {
		if warm, err = sc.warmup(ctx, cfg); err != nil {
			return nil, err
		}
		acc, _ := expectedAtSink(warm.lr, o.sink.PoisonPercent)
		if _, ok := waitUnique(ctx, sk, int(acc), 30*time.Second); !ok {
			return nil, fmt.Errorf("%s: warm-up events not delivered within 30s", o.name)
		}
		warm.accept = acc
		sk.ResetLatency()
	}
	before, _ := ReadProcStats(s.Pid())
	out := &e2eOut{start: time.Now()}
	harness0 := processCPU()
	sk.Reset()
	w := watch(sk, out.start)
	rs := sampleRouter(s, hookName, out.start)
	defer rs.close()
	perfFor := cfg.Duration
	if perfFor == 0 {
		perfFor = sc.dur(10*time.Second, 2*time.Second)
	}
	stopPerf := func() string { return "" }
	if o.perf {
		stopPerf = sc.maybePerf(o.name, s.Pid(), perfFor)
	}
	lr, err := Load(ctx, cfg)
	if err != nil {
		w.close()
		return nil, err
	}
	prof := stopPerf()
	out.lr = lr
	if o.pause {
		out.resumed = time.Now()
		if err := s.AdminPost("/v1/destinations/" + hookName + "/resume"); err != nil {
			w.close()
			return nil, err
		}
	}
	out.accept, out.poisons = expectedAtSink(lr, o.sink.PoisonPercent)
	done, ok := waitUnique(ctx, sk, int(out.accept+warm.acceptedAtSink()), o.wait)
	if ok && out.poisons > 0 && !waitAborted(ctx, s, out.poisons+warm.poisons(o.sink.PoisonPercent), 30*time.Second) {
		sc.fail("%s: fewer than %d dead letters after 30s", o.name, out.poisons)
	}
	if ok {
		out.done = done
	} else {
		_, _, u := sk.Counts()
		sc.fail("%s: only %d of %d accepted events delivered within %v", o.name, u, out.accept, o.wait)
	}
	pts := w.close()
	harnessCPU := processCPU() - harness0
	out.firstAfter = func(t time.Time) time.Time { return w.firstAtLeast(w.countAt(t) + 1) }
	p := phaseFromLoad(o.name, "sluice", lr)
	if lr.Events > 0 {
		p.Extra["harness_cpu_us_per_event"] = float64(harnessCPU.Microseconds()) / float64(lr.Events) // load generator + sink
	}
	p.Profile = prof
	p.Sluice = sluiceStats(s, before, lr.Events)
	p.Check = checkDelivery(lr, sk, o.sink.PoisonPercent, s, hookName, warm.result())
	warm.note(&p)
	dh := sk.Latency()
	d := PercentilesOf(dh)
	p.Delivery, p.deliveryHist = &d, dh
	p.DeliveredSeries = pts
	p.RouterSeries = rs.close()
	for _, r := range p.RouterSeries {
		p.Extra["max_failed_entries"] = max(p.Extra["max_failed_entries"], r.FailedEntries)
		p.Extra["max_skipped_entries"] = max(p.Extra["max_skipped_entries"], r.SkippedEntries)
		p.Extra["max_concurrency"] = max(p.Extra["max_concurrency"], r.Concurrency)
	}
	if !out.done.IsZero() {
		p.DeliveredPerSec = float64(out.accept) / out.done.Sub(lr.Start).Seconds()
		p.Extra["drain_after_load_s"] = out.done.Sub(lr.End).Seconds()
		if after := out.done.Sub(lr.End).Seconds(); after > 0.05 {
			p.Extra["delivery_eps_after_load"] = float64(int(out.accept+warm.acceptedAtSink())-w.countAt(lr.End)) / after
		}
	}
	rep := sk.Report()
	p.Extra["sink_requests"] = float64(rep.Requests)
	p.Extra["sink_refused"] = float64(rep.Refused)
	p.Extra["sink_poisoned_answers"] = float64(rep.Poisoned)
	sc.stopSluice(s)
	p.SluiceLog = sluiceLog(s)
	sc.logf("%s: %s; delivered %d/%d (with warm-up), e2e %.0f events/s, delivery p50 %.1f p99 %.1f ms", o.name, lr, p.Check.Delivered, out.accept+warm.acceptedAtSink(),
		p.DeliveredPerSec, d.P50, d.P99)
	out.phase = sc.addPhase(p)
	return out, nil
}

func e2eMax(ctx context.Context, sc *scenarioRun) error {
	for _, c := range []struct {
		batch  int
		events int64
	}{{1, sc.count(100_000, 15_000)}, {100, sc.count(1_000_000, 150_000)}} {
		load := ingestLoad(0)
		load.Events = c.events
		load.Duration = sc.dur(120*time.Second, 30*time.Second) // a bound; Events ends it
		o, err := sc.e2ePhase(ctx, e2eOpts{name: fmt.Sprintf("webhook-batch%d", c.batch), batchSize: c.batch, load: load,
			wait: sc.dur(300*time.Second, 60*time.Second), perf: c.batch == 100})
		if err != nil {
			return err
		}
		p := o.phase
		sc.summary[fmt.Sprintf("e2e_batch%d_eps", c.batch)] = p.DeliveredPerSec
		sc.summary[fmt.Sprintf("ingest_during_e2e_batch%d_eps", c.batch)] = p.EventsPerSec
		sc.summary[fmt.Sprintf("delivery_after_load_batch%d_eps", c.batch)] = p.Extra["delivery_eps_after_load"]
		if p.Sluice != nil {
			sc.summary[fmt.Sprintf("sluice_cpu_us_per_event_batch%d", c.batch)] = p.Sluice.CPUMicrosPerEvent
		}
	}
	return nil
}

// e2eRate returns the batch-100 e2e max of an earlier e2e-max result, or
// measures one.
func (sc *scenarioRun) e2eRate(ctx context.Context) (float64, error) {
	if v, ok := sc.previous("e2e-max", "e2e_batch100_eps"); ok {
		sc.note("rate derived from this binary's e2e-max result (e2e_batch100_eps %.0f)", v)
		return v, nil
	}
	load := ingestLoad(sc.dur(60*time.Second, 20*time.Second))
	load.Events = sc.count(300_000, 60_000)
	o, err := sc.e2ePhase(ctx, e2eOpts{name: "e2e-probe", batchSize: 100, load: load, wait: sc.dur(120*time.Second, 40*time.Second)})
	if err != nil {
		return 0, err
	}
	sc.note("rate derived from an e2e-probe phase (no e2e-max result of this binary): %.0f events/s", o.phase.DeliveredPerSec)
	return o.phase.DeliveredPerSec, nil
}

func e2eLatency(ctx context.Context, sc *scenarioRun) error {
	max, err := sc.e2eRate(ctx)
	if err != nil {
		return err
	}
	if max <= 0 {
		return fmt.Errorf("no e2e rate to derive the offered load from")
	}
	load := ingestLoad(sc.dur(15*time.Second, 3*time.Second))
	load.Rate = max / 2
	load.Drain = 10 * time.Second
	o, err := sc.e2ePhase(ctx, e2eOpts{name: "open-50pct", batchSize: 100, load: load, wait: sc.dur(120*time.Second, 30*time.Second)})
	if err != nil {
		return err
	}
	p := o.phase
	sc.summary["e2e_max_eps"] = max
	sc.summary["rate_eps"] = load.Rate
	sc.summary["ingest_p99_ms"] = p.Latency.P99
	if p.Delivery != nil {
		sc.summary["delivery_p50_ms"] = p.Delivery.P50
		sc.summary["delivery_p99_ms"] = p.Delivery.P99
		sc.summary["delivery_p999_ms"] = p.Delivery.P999
		sc.summary["delivery_max_ms"] = p.Delivery.Max
	}
	return nil
}

func poison(ctx context.Context, sc *scenarioRun) error {
	// A million events: 5-7 s a phase at today's rates; with 300,000 (under
	// 2 s) one phase's throughput swung by half between runs.
	n := sc.count(1_000_000, 60_000)
	phases := []struct {
		name string
		sink sink.Config
	}{
		{"healthy", sink.Config{}},
		// The sink names the poison events of a batch and takes the rest
		// (the webhook's partial_failures answer).
		{"poison-1pct-named", sink.Config{PoisonPercent: 1, NamePoison: true}},
		// The sink refuses a batch with a poison event whole: the router
		// finds the event by bisection.
		{"poison-1pct", sink.Config{PoisonPercent: 1}},
	}
	var eps [3]float64
	for i, ph := range phases {
		load := ingestLoad(sc.dur(60*time.Second, 20*time.Second))
		load.Events = n
		o, err := sc.e2ePhase(ctx, e2eOpts{name: ph.name, batchSize: 100, load: load, sink: ph.sink,
			wait: sc.dur(300*time.Second, 60*time.Second)})
		if err != nil {
			return err
		}
		eps[i] = o.phase.DeliveredPerSec
		switch i {
		case 0:
			sc.summary["healthy_delivery_after_load_eps"] = o.phase.Extra["delivery_eps_after_load"]
		case 1:
			sc.summary["poison_events"] = float64(o.poisons)
			sc.summary["named_delivery_after_load_eps"] = o.phase.Extra["delivery_eps_after_load"]
		case 2:
			sc.summary["poison_delivery_after_load_eps"] = o.phase.Extra["delivery_eps_after_load"]
		}
	}
	sc.summary["healthy_eps"] = eps[0]
	sc.summary["named_eps"] = eps[1]
	sc.summary["poison_eps"] = eps[2]
	sc.summary["named_over_healthy"] = ratio(eps[1], eps[0])
	sc.summary["poison_over_healthy"] = ratio(eps[2], eps[0])
	sc.summary["cost_named_pct"] = 100 * (1 - ratio(eps[1], eps[0]))
	sc.summary["cost_pct"] = 100 * (1 - ratio(eps[2], eps[0]))
	return nil
}

func outage(ctx context.Context, sc *scenarioRun) error {
	n := sc.count(1_000_000, 100_000)
	win := sc.r.opts.Outage
	// Reference: the same backlog built while the destination is paused,
	// then drained.
	load := ingestLoad(sc.dur(120*time.Second, 30*time.Second))
	load.Events = n
	ref, err := sc.e2ePhase(ctx, e2eOpts{name: "paused-drain", batchSize: 100, load: load, pause: true, wait: sc.dur(300*time.Second, 60*time.Second)})
	if err != nil {
		return err
	}
	var healthy float64
	if !ref.done.IsZero() {
		healthy = float64(ref.accept) / ref.done.Sub(ref.resumed).Seconds()
		ref.phase.Extra["drain_eps"] = healthy
	}
	o, err := sc.e2ePhase(ctx, e2eOpts{name: "outage-drain", batchSize: 100, load: load,
		sink: sink.Config{Faults: []sink.Fault{{Kind: sink.Outage, From: 0, To: win}}}, wait: win + sc.dur(300*time.Second, 60*time.Second)})
	if err != nil {
		return err
	}
	end := o.start.Add(win)
	if o.lr.End.After(end) {
		sc.note("the load took longer than the outage window: part of the backlog arrived after the outage")
	}
	p := o.phase
	sc.summary["outage_seconds"] = win.Seconds()
	sc.summary["backlog_events"] = float64(o.accept)
	sc.summary["healthy_drain_eps"] = healthy
	if !o.done.IsZero() {
		first := o.firstAfter(end)
		if !first.IsZero() {
			p.Extra["resume_after_outage_s"] = first.Sub(end).Seconds()
			p.Extra["drain_eps"] = float64(o.accept) / o.done.Sub(first).Seconds()
			sc.summary["resume_after_outage_s"] = first.Sub(end).Seconds()
			sc.summary["outage_drain_eps"] = p.Extra["drain_eps"]
			sc.summary["drain_over_healthy"] = ratio(p.Extra["drain_eps"], healthy)
		}
		p.Extra["drain_incl_resume_eps"] = float64(o.accept) / o.done.Sub(end).Seconds()
		sc.summary["outage_drain_incl_resume_eps"] = p.Extra["drain_incl_resume_eps"]
		sc.summary["time_to_drain_after_outage_s"] = o.done.Sub(end).Seconds()
	}
	sc.note("webhook retry config: backoff_initial 1s (default), backoff_max 10s; the probe after an outage comes after a jittered backoff")
	return nil
}

func hotUser(ctx context.Context, sc *scenarioRun) error {
	max, err := sc.e2eRate(ctx)
	if err != nil {
		return err
	}
	rate := max / 2
	for _, hot := range []float64{0, 10} {
		load := ingestLoad(sc.dur(15*time.Second, 3*time.Second))
		load.Rate = rate
		load.Drain = 10 * time.Second
		load.Event.Users = 10_000
		load.Event.HotPercent = hot
		name := "uniform-10000-users"
		if hot > 0 {
			name = "hot-user-10pct"
		}
		o, err := sc.e2ePhase(ctx, e2eOpts{name: name, batchSize: 100, load: load, wait: sc.dur(300*time.Second, 60*time.Second)})
		if err != nil {
			return err
		}
		p := o.phase
		key := "uniform"
		if hot > 0 {
			key = "hot"
		}
		sc.summary[key+"_e2e_eps"] = p.DeliveredPerSec
		sc.summary[key+"_ingest_p99_ms"] = p.Latency.P99
		sc.summary[key+"_drain_after_load_s"] = p.Extra["drain_after_load_s"]
		if p.Delivery != nil {
			sc.summary[key+"_delivery_p50_ms"] = p.Delivery.P50
			sc.summary[key+"_delivery_p99_ms"] = p.Delivery.P99
		}
	}
	sc.summary["rate_eps"] = rate
	sc.summary["hot_over_uniform_e2e"] = ratio(sc.summary["hot_e2e_eps"], sc.summary["uniform_e2e_eps"])
	return nil
}

func restart(ctx context.Context, sc *scenarioRun) error {
	n := sc.count(1_000_000, 100_000)
	// The sink refuses everything until sluice is stopped; a healthy sink
	// then takes its address.
	sk1, addr, stop1, err := sc.startSink(sink.Config{Faults: []sink.Fault{{Kind: sink.Outage, From: 0, To: 24 * time.Hour}}}, "")
	if err != nil {
		return err
	}
	dests := webhookDest(addr, 100, "", false)
	s, dir, err := sc.startSluice(ctx, "restart", dests, "")
	if err != nil {
		return err
	}
	load := ingestLoad(sc.dur(120*time.Second, 30*time.Second))
	load.Events = n
	load.Target = s.Addr
	sk1.Reset()
	lr, err := Load(ctx, load)
	if err != nil {
		return err
	}
	sc.logf("backlog: %s", lr)
	time.Sleep(time.Second) // let background index work settle before measuring the disk
	backlogDisk := DirBytes(s.DataDir)
	stopTook := sc.stopSluice(s)
	stop1()
	sk2, _, stop2, err := sc.startSink(sink.Config{}, addr)
	if err != nil {
		return err
	}
	defer stop2()
	accept, _ := expectedAtSink(lr, 0)
	t0 := time.Now()
	w := watch(sk2, t0)
	s2, err := sc.restartSluice(ctx, s, dir, dests, "")
	if err != nil {
		w.close()
		return err
	}
	before, _ := ReadProcStats(s2.Pid())
	healthy := time.Now()
	done, ok := waitUnique(ctx, sk2, int(accept), sc.dur(300*time.Second, 60*time.Second))
	pts := w.close()
	first := w.firstAtLeast(1)
	p := phaseFromLoad("backlog-then-restart", "sluice", lr)
	p.Sluice = sluiceStats(s2, before, lr.Events)
	if p.Sluice != nil {
		p.Sluice.DiskBytes = DirBytes(s2.DataDir)
	}
	p.Check = checkDelivery(lr, sk2, 0, s2, hookName, nil)
	dh := sk2.Latency()
	d := PercentilesOf(dh)
	p.Delivery, p.deliveryHist = &d, dh
	p.DeliveredSeries = pts
	p.Extra["stop_s"] = stopTook.Seconds()
	p.Extra["startup_s"] = healthy.Sub(t0).Seconds()
	sc.summary["backlog_events"] = float64(accept)
	sc.summary["backlog_disk_bytes_per_event"] = float64(backlogDisk) / float64(max(accept, 1))
	p.Extra["backlog_disk_bytes"] = float64(backlogDisk)
	sc.summary["stop_s"] = stopTook.Seconds()
	sc.summary["startup_s"] = healthy.Sub(t0).Seconds()
	if !first.IsZero() {
		p.Extra["first_delivery_s"] = first.Sub(t0).Seconds()
		sc.summary["first_delivery_s"] = first.Sub(t0).Seconds()
	}
	if ok {
		p.Extra["drained_s"] = done.Sub(t0).Seconds()
		sc.summary["drained_s"] = done.Sub(t0).Seconds()
		if !first.IsZero() {
			p.DeliveredPerSec = float64(accept) / done.Sub(first).Seconds()
			sc.summary["drain_eps"] = p.DeliveredPerSec
		}
	} else {
		sc.fail("restart: backlog not delivered within the wait")
	}
	sc.stopSluice(s2)
	p.SluiceLog = sluiceLog(s) + sluiceLog(s2)
	sc.logf("restart: stop %.2fs, startup %.2fs, first delivery %.2fs, drained %.2fs", p.Extra["stop_s"], p.Extra["startup_s"],
		p.Extra["first_delivery_s"], p.Extra["drained_s"])
	sc.addPhase(p)
	return nil
}

// maybePerf records a perf CPU profile of pid for d when Options.Perf is
// set; the returned function waits for it and returns the top of its
// report.
func (sc *scenarioRun) maybePerf(name string, pid int, d time.Duration) func() string {
	if !sc.r.opts.Perf || d <= 0 {
		return func() string { return "" }
	}
	if _, err := exec.LookPath("perf"); err != nil {
		sc.note("perf not found: no profile")
		return func() string { return "" }
	}
	data := filepath.Join(sc.dir, name+".perf.data")
	// Recording runs until stopped (SIGINT), at most d.
	cmd := exec.Command("perf", "record", "-F", "499", "-g", "-p", fmt.Sprint(pid), "-o", data)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		sc.note("perf record: %v", err)
		return func() string { return "" }
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	interrupt := func() {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
	}
	timer := time.AfterFunc(d, func() { cmd.Process.Signal(os.Interrupt) })
	sc.closers = append(sc.closers, interrupt)
	return func() string {
		timer.Stop()
		interrupt()
		out, err := exec.Command("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
			"-g", "none", "--percent-limit", "0.7").Output()
		os.Remove(data)
		if err != nil {
			return fmt.Sprintf("perf report: %v", err)
		}
		var keep []string
		for _, l := range strings.Split(string(out), "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep[:min(len(keep), 60)], "\n")
	}
}

// ingestAllocs runs the gateway's Go benchmarks and reads allocs/op.
func ingestAllocs(ctx context.Context, sc *scenarioRun) error {
	bt := sc.dur(2*time.Second, 300*time.Millisecond).String()
	cmd := exec.CommandContext(ctx, "go", "test", "./ingest", "-run", "^$", "-bench", "^(BenchmarkParseBatch100|BenchmarkParseTrack|BenchmarkDurableBatch100)$",
		"-benchmem", "-benchtime", bt, "-count", "1")
	cmd.Dir = sc.r.opts.Root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go test ./ingest -bench: %v\n%s", err, out)
	}
	per := map[string]float64{"BenchmarkParseBatch100": 100, "BenchmarkParseTrack": 1, "BenchmarkDurableBatch100": 100}
	key := map[string]string{"BenchmarkParseBatch100": "batch100", "BenchmarkParseTrack": "track", "BenchmarkDurableBatch100": "durable_batch100"}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name, _, _ := strings.Cut(f[0], "-")
		if per[name] == 0 {
			continue
		}
		for i := 1; i+1 < len(f); i++ {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "allocs/op":
				sc.summary["allocs_per_request_"+key[name]] = v
				sc.summary["allocs_per_event_"+key[name]] = v / per[name]
			case "B/op":
				sc.summary["bytes_per_event_"+key[name]] = v / per[name]
			case "ns/op":
				sc.summary["ns_per_event_"+key[name]] = v / per[name]
			case "events/s":
				sc.summary["events_per_sec_"+key[name]] = v
			}
		}
	}
	if _, ok := sc.summary["allocs_per_event_batch100"]; !ok {
		return fmt.Errorf("no allocs/op in the benchmark output:\n%s", out)
	}
	sc.note("one op of ParseBatch100 and DurableBatch100 is a 100-event request, of ParseTrack a single event; per-event figures divide by that")
	return nil
}

// warmRun is a short load before a measured phase: a new process's first
// requests meet cold caches, first segment and index files, heap growth
// and page faults of the dedup filters, which would otherwise land in the
// phase's first second. Its worst latency is kept (warmup_max_ms) so the
// start-up cost is not hidden.
type warmRun struct {
	lr     *LoadResult
	accept int64
}

// warmup runs cfg for 1s (quick: 0.5s) with its own messageIds.
func (sc *scenarioRun) warmup(ctx context.Context, cfg LoadConfig) (*warmRun, error) {
	cfg.Duration = sc.dur(time.Second, 500*time.Millisecond)
	cfg.Events = 0
	cfg.Warmup = 0
	cfg.Event.RunID = ""
	lr, err := Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if lr.Abandoned > 0 {
		return nil, fmt.Errorf("warm-up: %d requests abandoned (statuses %v)", lr.Abandoned, lr.Statuses)
	}
	return &warmRun{lr: lr}, nil
}

func (w *warmRun) events() int64 {
	if w == nil {
		return 0
	}
	return w.lr.Events
}

func (w *warmRun) acceptedAtSink() int64 {
	if w == nil {
		return 0
	}
	return w.accept
}

func (w *warmRun) poisons(pct float64) int64 {
	if w == nil {
		return 0
	}
	_, p := expectedAtSink(w.lr, pct)
	return p
}

func (w *warmRun) result() *LoadResult {
	if w == nil {
		return nil
	}
	return w.lr
}

func (w *warmRun) note(p *Phase) {
	if w == nil {
		return
	}
	p.Extra["warmup_events"] = float64(w.lr.Events)
	p.Extra["warmup_max_ms"] = float64(w.lr.Latency.Max()) / 1000
}

// sluiceLog returns the last warnings and errors of a sluice's output.
func sluiceLog(s *Sluice) string {
	var keep []string
	for _, l := range strings.Split(s.Tail(200), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep[max(0, len(keep)-20):], "\n")
}
