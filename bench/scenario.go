package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/sluice-cdi/sluice/bench/sink"
)

// WriteKey is the write key of the source every scenario configures.
const WriteKey = "wk_bench_3f9c1a"

// Options configures a Runner.
type Options struct {
	// Root is the module root: where `go build` and `git` run.
	Root string
	// SluiceBin is a built sluice binary; empty: build ./cmd/sluice.
	SluiceBin string
	// CeilingCmd runs an HTTP ceiling server: the runner appends
	// KIND --listen ADDR --dir DIR (sluice-bench passes itself and
	// "ceiling").
	CeilingCmd []string
	// OutDir receives <scenario>/ folders. Default Root/bench/out.
	OutDir string
	// Quick shortens every scenario (about a minute for all).
	Quick bool
	// Repeat runs each scenario this many times (default 1); results keep
	// every run and summarise with medians.
	Repeat int
	// Outage is the outage scenario's window. Default 30s (quick: 5s).
	Outage time.Duration
	// Perf records `perf` CPU profiles of the sluice process in the key
	// phases (ingest-max sluice-batch100, e2e-max batch100).
	Perf bool
	// Log receives progress lines. Default os.Stderr.
	Log io.Writer
}

// Runner runs scenarios.
type Runner struct {
	opts Options
	env  Env
	bin  string
	tmp  string
}

// Scenario is a named benchmark.
type Scenario struct {
	Name string
	Desc string
	run  func(context.Context, *scenarioRun) error
}

// Scenarios lists every scenario in the order `run all` runs them.
func Scenarios() []Scenario { return scenarios }

// NewRunner prepares a runner: a temp dir and the sluice binary.
func NewRunner(ctx context.Context, opts Options) (*Runner, error) {
	if opts.Root == "" {
		return nil, errors.New("bench: Options.Root is required")
	}
	if opts.OutDir == "" {
		opts.OutDir = filepath.Join(opts.Root, "bench", "out")
	}
	if opts.Repeat < 1 {
		opts.Repeat = 1
	}
	if opts.Outage == 0 {
		opts.Outage = 30 * time.Second
		if opts.Quick {
			opts.Outage = 5 * time.Second
		}
	}
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	tmp, err := os.MkdirTemp("", "sluice-bench-")
	if err != nil {
		return nil, err
	}
	r := &Runner{opts: opts, env: ReadEnv(opts.Root), tmp: tmp, bin: opts.SluiceBin}
	if r.bin == "" {
		r.bin = filepath.Join(tmp, "sluice")
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", r.bin, "./cmd/sluice")
		cmd.Dir = opts.Root
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("go build ./cmd/sluice: %v\n%s", err, out)
		}
		r.logf("built %s in %v", r.bin, time.Since(start).Round(time.Millisecond))
	}
	b, err := os.ReadFile(r.bin)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	sum := sha256.Sum256(b)
	r.env.SluiceBinary = hex.EncodeToString(sum[:6])
	return r, nil
}

// Close removes the runner's temp dir.
func (r *Runner) Close() error { return os.RemoveAll(r.tmp) }

func (r *Runner) logf(format string, args ...any) {
	fmt.Fprintf(r.opts.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// Run runs the named scenarios ("all" for every one) and writes their
// outputs. It returns the results and an error naming the scenarios that
// failed.
func (r *Runner) Run(ctx context.Context, names []string) ([]*Result, error) {
	var list []Scenario
	for _, n := range names {
		if n == "all" {
			list = append(list, scenarios...)
			continue
		}
		i := slices.IndexFunc(scenarios, func(s Scenario) bool { return s.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (known: %s, all)", n, strings.Join(ScenarioNames(), ", "))
		}
		list = append(list, scenarios[i])
	}
	var results []*Result
	var failed []string
	for _, s := range list {
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
		res := r.runScenario(ctx, s)
		results = append(results, res)
		if err := r.write(res); err != nil {
			return results, err
		}
		if !res.Pass {
			failed = append(failed, s.Name)
			r.logf("FAIL %s: %s", s.Name, strings.Join(res.Failures, "; "))
		} else {
			r.logf("ok   %s (%.0fs)", s.Name, res.WallSeconds)
		}
	}
	if len(failed) > 0 {
		return results, fmt.Errorf("scenarios failed: %s", strings.Join(failed, ", "))
	}
	return results, nil
}

// ScenarioNames lists the scenario names.
func ScenarioNames() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.Name)
	}
	return out
}

func (r *Runner) runScenario(ctx context.Context, s Scenario) *Result {
	env := r.env // the commit the binary was built from, for every scenario
	env.LoadAvg = loadAvg()
	res := &Result{Scenario: s.Name, Env: env, Quick: r.opts.Quick, Repeats: r.opts.Repeat,
		Started: time.Now(), Summary: map[string]float64{}, SummaryRuns: map[string][]float64{}}
	for rep := 0; rep < r.opts.Repeat; rep++ {
		r.logf("scenario %s (run %d of %d)", s.Name, rep+1, r.opts.Repeat)
		sc := &scenarioRun{r: r, name: s.Name, repeat: rep, summary: map[string]float64{}}
		sc.dir = filepath.Join(r.tmp, fmt.Sprintf("%s-%d", s.Name, rep))
		if err := sc.runOnce(ctx, s); err != nil {
			sc.fail("%v", err)
		}
		res.Phases = append(res.Phases, sc.phases...)
		for k, v := range sc.summary {
			res.SummaryRuns[k] = append(res.SummaryRuns[k], v)
		}
		for _, f := range sc.failures {
			res.Failures = append(res.Failures, fmt.Sprintf("run %d: %s", rep+1, f))
		}
		for _, n := range sc.notes {
			if !slices.Contains(res.Notes, n) {
				res.Notes = append(res.Notes, n)
			}
		}
		os.RemoveAll(sc.dir)
		if ctx.Err() != nil {
			res.Failures = append(res.Failures, "interrupted")
			break
		}
	}
	for k, vs := range res.SummaryRuns {
		res.Summary[k] = Median(vs)
	}
	res.Pass = len(res.Failures) == 0
	res.WallSeconds = time.Since(res.Started).Seconds()
	return res
}

// runOnce runs s once; whatever happens (an error, a panic), every child
// process and server it started is stopped before it returns.
func (sc *scenarioRun) runOnce(ctx context.Context, s Scenario) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
		sc.procs.stopAll()
		for i := len(sc.closers) - 1; i >= 0; i-- {
			sc.closers[i]()
		}
	}()
	if err := os.MkdirAll(sc.dir, 0o755); err != nil {
		return err
	}
	return s.run(ctx, sc)
}

// write stores res under OutDir/<scenario>/: result.json, one .hgrm per
// phase (and per delivery histogram) and <scenario>.svg.
func (r *Runner) write(res *Result) error {
	dir := filepath.Join(r.opts.OutDir, res.Scenario)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := range res.Phases {
		p := &res.Phases[i]
		suffix := ""
		if res.Repeats > 1 {
			suffix = fmt.Sprintf("-r%d", p.Repeat+1)
		}
		if p.hist != nil && p.hist.TotalCount() > 0 {
			p.Hgrm = p.Name + suffix + ".hgrm"
			if err := writeHgrm(filepath.Join(dir, p.Hgrm), p.hist); err != nil {
				return err
			}
		}
		if p.deliveryHist != nil && p.deliveryHist.TotalCount() > 0 {
			p.DeliveryHgrm = p.Name + suffix + "-delivery.hgrm"
			if err := writeHgrm(filepath.Join(dir, p.DeliveryHgrm), p.deliveryHist); err != nil {
				return err
			}
		}
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "result.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, res.Scenario+".svg"), []byte(PlotSVG(res)), 0o644)
}

// writeHgrm writes h (microseconds) in HdrHistogram's PercentilesPrint
// format, values in milliseconds.
func writeHgrm(path string, h *hdrhistogram.Histogram) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := h.PercentilesPrint(f, 5, 1000); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// scenarioRun is one run of one scenario.
type scenarioRun struct {
	r        *Runner
	name     string
	repeat   int
	dir      string
	procs    procSet
	closers  []func()
	phases   []Phase
	summary  map[string]float64
	failures []string
	notes    []string
}

func (sc *scenarioRun) logf(format string, args ...any) {
	sc.r.logf("  %s: "+format, append([]any{sc.name}, args...)...)
}

func (sc *scenarioRun) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	sc.failures = append(sc.failures, msg)
	sc.logf("FAILURE: %s", msg)
}

func (sc *scenarioRun) note(format string, args ...any) {
	sc.notes = append(sc.notes, fmt.Sprintf(format, args...))
}

// dur picks the full or the quick duration.
func (sc *scenarioRun) dur(full, quick time.Duration) time.Duration {
	if sc.r.opts.Quick {
		return quick
	}
	return full
}

// count picks the full or the quick count.
func (sc *scenarioRun) count(full, quick int64) int64 {
	if sc.r.opts.Quick {
		return quick
	}
	return full
}

// subdir makes a fresh directory for one phase.
func (sc *scenarioRun) subdir(name string) (string, error) {
	d := filepath.Join(sc.dir, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o755)
}

// startSluice starts sluice in a fresh dir for phase with dests.
func (sc *scenarioRun) startSluice(ctx context.Context, phase, dests, extra string) (*Sluice, string, error) {
	dir, err := sc.subdir(phase)
	if err != nil {
		return nil, "", err
	}
	s, err := StartSluice(ctx, sc.r.bin, dir, WriteKey, dests, extra)
	if err != nil {
		return nil, "", err
	}
	sc.procs.add(s.Proc)
	return s, dir, nil
}

// restartSluice starts sluice again over prev's data dir and addresses.
func (sc *scenarioRun) restartSluice(ctx context.Context, prev *Sluice, dir, dests, extra string) (*Sluice, error) {
	s, err := RestartSluice(ctx, sc.r.bin, prev, dir, WriteKey, dests, extra)
	if err != nil {
		return nil, err
	}
	sc.procs.add(s.Proc)
	return s, nil
}

// stopSluice stops s with SIGTERM and records a failure unless it exits 0.
func (sc *scenarioRun) stopSluice(s *Sluice) time.Duration {
	d, err := s.Stop(60 * time.Second)
	if err != nil {
		sc.fail("%v\n%s", err, s.Tail(20))
	}
	return d
}

// startSink serves a sink on 127.0.0.1 (addr "" picks a free port) until
// the run ends.
func (sc *scenarioRun) startSink(cfg sink.Config, addr string) (*sink.Sink, string, func(), error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 { // re-listening on a port just closed may need a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, "", nil, err
	}
	sk := sink.New(cfg)
	go sk.Serve(ln)
	var once sync.Once
	stop := func() { once.Do(func() { sk.Close() }) }
	sc.closers = append(sc.closers, stop)
	return sk, ln.Addr().String(), stop, nil
}

// startCeiling runs an HTTP ceiling server as a child process.
func (sc *scenarioRun) startCeiling(ctx context.Context, kind string) (*Proc, string, error) {
	if len(sc.r.opts.CeilingCmd) == 0 {
		return nil, "", errors.New("no ceiling command configured")
	}
	dir, err := sc.subdir(kind)
	if err != nil {
		return nil, "", err
	}
	port, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append(slices.Clone(sc.r.opts.CeilingCmd[1:]), kind, "--listen", addr, "--dir", dir, "--max", "1h")
	p, err := StartProc(kind, sc.r.opts.CeilingCmd[0], args, dir, filepath.Join(dir, "ceiling.out"))
	if err != nil {
		return nil, "", err
	}
	sc.procs.add(p)
	if err := WaitHealthy(ctx, p, "http://"+addr+"/", 20*time.Second); err != nil {
		p.Kill()
		return nil, "", fmt.Errorf("%w\n%s", err, p.Tail(20))
	}
	return p, addr, nil
}

// phaseFromLoad fills a phase from a load result.
func phaseFromLoad(name, target string, lr *LoadResult) Phase {
	c := lr.Config
	p := Phase{Name: name, Target: target,
		Load: LoadParams{Mode: lr.Mode, Batch: c.Batch, Single: c.Single, Gzip: c.Gzip, Senders: c.Senders, Rate: c.Rate,
			Users: c.Event.Users, HotPercent: c.Event.HotPercent, EventBytes: c.Event.Bytes},
		Events: lr.Events, Requests: lr.Requests, Seconds: lr.Elapsed.Seconds(), EventsPerSec: lr.EventsPerSec,
		Latency: PercentilesOf(lr.Latency), hist: lr.Latency, Series: lr.Series, NotSent: lr.NotSent,
		Retries: lr.Attempts - lr.Requests - lr.Abandoned, MaxLatenessMs: float64(lr.MaxLateness.Microseconds()) / 1000,
		Extra: map[string]float64{}}
	if s := lr.Elapsed.Seconds(); s > 0 {
		p.MBPerSec = float64(lr.BodyBytes) / 1e6 / s
	}
	if lr.Events > 0 {
		p.LoadGenCPUUs = float64(lr.CPU.Microseconds()) / float64(lr.Events)
	}
	if len(lr.Statuses) > 0 {
		p.Statuses = map[string]int64{}
		for k, v := range lr.Statuses {
			p.Statuses[strconv.Itoa(k)] = v
		}
	}
	return p
}

// sluiceStats returns s's figures since before (CPU), for events events.
func sluiceStats(s *Sluice, before ProcStats, events int64) *SluiceStats {
	st, err := ReadProcStats(s.Pid())
	if err != nil {
		return nil
	}
	out := &SluiceStats{CPUSeconds: (st.CPU - before.CPU).Seconds(), VmHWMBytes: st.VmHWM, DiskBytes: DirBytes(s.DataDir)}
	if v, err := s.Metric("sluice_engine_bytes_written_total", ""); err == nil {
		out.SegmentBytesWritten = int64(v)
	}
	if events > 0 {
		out.CPUMicrosPerEvent = out.CPUSeconds * 1e6 / float64(events)
		out.DiskBytesPerEvent = float64(out.DiskBytes) / float64(events)
		out.SegmentBytesPerEvent = float64(out.SegmentBytesWritten) / float64(events)
	}
	return out
}

// watcher samples a sink's distinct-event count every 10ms.
type watcher struct {
	sk    *sink.Sink
	start time.Time
	mu    sync.Mutex
	pts   []DeliveredPoint
	times []time.Time
	stop  chan struct{}
	done  chan struct{}
}

func watch(sk *sink.Sink, start time.Time) *watcher {
	w := &watcher{sk: sk, start: start, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			_, _, u := sk.Counts()
			now := time.Now()
			w.mu.Lock()
			if n := len(w.pts); n < 2 || w.pts[n-1].Unique != u || w.pts[n-2].Unique != u {
				w.pts = append(w.pts, DeliveredPoint{T: now.Sub(start).Seconds(), Unique: u})
				w.times = append(w.times, now)
			} else { // a flat stretch: move its end
				w.pts[n-1].T, w.times[n-1] = now.Sub(start).Seconds(), now
			}
			w.mu.Unlock()
			select {
			case <-t.C:
			case <-w.stop:
				return
			}
		}
	}()
	return w
}

func (w *watcher) close() []DeliveredPoint {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.pts)
}

// firstAtLeast returns when the count first reached n (zero if never).
func (w *watcher) firstAtLeast(n int) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, p := range w.pts {
		if p.Unique >= n {
			return w.times[i]
		}
	}
	return time.Time{}
}

// countAt returns the count sampled last at or before t.
func (w *watcher) countAt(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := 0
	for i, p := range w.pts {
		if w.times[i].After(t) {
			break
		}
		c = p.Unique
	}
	return c
}

// waitUnique waits until the sink holds n distinct events; it returns the
// time it got there, or false after timeout.
func waitUnique(ctx context.Context, sk *sink.Sink, n int, timeout time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, _, u := sk.Counts(); u >= n {
			return time.Now(), true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Time{}, false
}

// expectedAtSink counts the acknowledged events the sink accepts (not
// poison at poisonPct) and the poison ones.
func expectedAtSink(lr *LoadResult, poisonPct float64) (accept, poison int64) {
	lr.ForEachAcked(func(_ int, mid string) {
		if sink.IsPoison(mid, poisonPct) {
			poison++
		} else {
			accept++
		}
	})
	return accept, poison
}

// checkDelivery verifies, once delivery is over, for lr and the warm-up
// before it (if any): every acknowledged event arrived (or is poison and, with s set, a dead letter of dest with a 400
// reason), no healthy event is a dead letter, and per-user order held.
func checkDelivery(lr *LoadResult, sk *sink.Sink, poisonPct float64, s *Sluice, dest string, warm *LoadResult) *Check {
	c := &Check{Abandoned: lr.Abandoned}
	problem := func(format string, args ...any) {
		if len(c.Problems) < 10 {
			c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
		}
	}
	var missing []string
	poisonIDs := map[string]bool{}
	each := func(fn func(int, string)) {
		if warm != nil {
			warm.ForEachAcked(fn)
		}
		lr.ForEachAcked(fn)
	}
	each(func(_ int, mid string) {
		c.Acked++
		if sink.IsPoison(mid, poisonPct) {
			c.Poison++
			poisonIDs[mid] = true
			if sk.Arrived(mid) > 0 {
				problem("poison event %s was recorded as delivered", mid)
			}
			return
		}
		if sk.Arrived(mid) > 0 {
			c.Delivered++
		} else {
			c.Missing++
			if len(missing) < 5 {
				missing = append(missing, mid)
			}
		}
	})
	if c.Missing > 0 {
		problem("%d acknowledged events never delivered, e.g. %v", c.Missing, missing)
	}
	rep := sk.Report()
	c.Duplicates = rep.Duplicates
	c.OrderViolations = len(rep.OrderViolations)
	if c.OrderViolations > 0 {
		problem("per-user order broken %d times, e.g. %v", c.OrderViolations, rep.OrderViolations[:min(3, len(rep.OrderViolations))])
	}
	if lr.Abandoned > 0 {
		problem("%d requests abandoned after retries (statuses %v)", lr.Abandoned, lr.Statuses)
	}
	if s != nil && dest != "" {
		dls, err := s.DeadLetters(dest)
		if err != nil {
			problem("cannot list dead letters: %v", err)
		}
		c.Aborted = int64(len(dls))
		got := map[string]bool{}
		for _, d := range dls {
			got[d.MessageID] = true
			if !poisonIDs[d.MessageID] {
				problem("healthy event %s is a dead letter: %s", d.MessageID, d.Reason)
			} else if !strings.Contains(d.Reason, "400") {
				problem("poison event %s aborted with reason %q", d.MessageID, d.Reason)
			}
		}
		for mid := range poisonIDs {
			if !got[mid] {
				problem("poison event %s is not a dead letter", mid)
				break
			}
		}
	}
	c.OK = len(c.Problems) == 0
	return c
}

// waitAborted waits until dest's aborted counter reaches n.
func waitAborted(ctx context.Context, s *Sluice, n int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if v, err := s.Metric("sluice_router_aborted_total", ""); err == nil && int64(v) >= n {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// routerSampler samples dest's router figures every 250ms.
type routerSampler struct {
	stop chan struct{}
	done chan struct{}
	pts  []RouterPoint
}

func sampleRouter(s *Sluice, dest string, start time.Time) *routerSampler {
	rs := &routerSampler{stop: make(chan struct{}), done: make(chan struct{})}
	d := fmt.Sprintf(`destination=%q`, dest)
	go func() {
		defer close(rs.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := s.Metrics(); err == nil {
				rs.pts = append(rs.pts, RouterPoint{T: time.Since(start).Seconds(),
					Backlog:        m["sluice_destination_backlog_events{"+d+"}"],
					FailedEntries:  m["sluice_destination_entries{"+d+`,state="failed"}`],
					SkippedEntries: m["sluice_destination_entries{"+d+`,state="skipped"}`],
					Concurrency:    m["sluice_router_concurrency{"+d+"}"],
					InFlight:       m["sluice_router_in_flight{"+d+"}"],
					Window:         m["sluice_router_window_events{"+d+"}"],
					Healthy:        m["sluice_router_healthy{"+d+"}"]})
			}
			select {
			case <-t.C:
			case <-rs.stop:
				return
			}
		}
	}()
	return rs
}

// close stops sampling and returns the samples.
func (rs *routerSampler) close() []RouterPoint {
	select {
	case <-rs.stop:
	default:
		close(rs.stop)
	}
	<-rs.done
	return rs.pts
}
