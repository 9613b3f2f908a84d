package bench

// Delivery scenarios: the real binary delivering to the fault-injecting
// sink (end to end, latency, poison, outage, hot user, restart).

import (
	"context"
	"fmt"
	"time"

	"github.com/sluice-cdi/sluice/bench/sink"
)

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
