// Command sluice-bench is Sluice's load generator and benchmark harness.
//
//	sluice-bench load --target 127.0.0.1:8080 [--rate N] ...   send Segment-shaped events (closed or open loop)
//	sluice-bench sink --listen 127.0.0.1:9000 [--poison-pct 1] ...   a fault-injecting webhook sink
//	sluice-bench ceiling file|pebble [...]                      raw disk ceilings (bench/ceiling)
//	sluice-bench ceiling fasthttp-noop|fasthttp-file --listen ADDR   HTTP ceiling servers
//	sluice-bench run [--quick] [--repeat N] [scenario...|all]   start sluice, run scenarios, write bench/out/
//	sluice-bench report                                         write the scenario tables into BENCHMARKS.md
//	sluice-bench list                                           the scenarios
//
// Only 127.0.0.1 is ever a target.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-cdi/sluice/bench"
	"github.com/sluice-cdi/sluice/bench/ceiling"
	"github.com/sluice-cdi/sluice/bench/sink"
)

const usage = `usage: sluice-bench load|sink|ceiling|run|report|list [flags]
  load     send events to a sluice (or any ingest) on 127.0.0.1
  sink     serve the fault-injecting webhook sink
  ceiling  file|pebble: raw disk ceilings; fasthttp-noop|fasthttp-file: HTTP ceiling servers
  run      run scenarios against a real sluice serve (default: all)
  report   write bench/out results into BENCHMARKS.md
  list     list the scenarios`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "load":
		err = loadCmd(ctx, args[1:], stdout, stderr)
	case "sink":
		err = sinkCmd(ctx, args[1:], stdout, stderr)
	case "ceiling":
		err = ceilingCmd(ctx, args[1:], stdout, stderr)
	case "run":
		err = runCmd(ctx, args[1:], stdout, stderr)
	case "report":
		err = reportCmd(args[1:], stdout, stderr)
	case "list":
		for _, s := range bench.Scenarios() {
			fmt.Fprintf(stdout, "%-16s %s\n", s.Name, s.Desc)
		}
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
	default:
		fmt.Fprintf(stderr, "sluice-bench: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice-bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func loadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c bench.LoadConfig
	fs.StringVar(&c.Target, "target", "127.0.0.1:8080", "ingest address (127.0.0.1 only)")
	fs.StringVar(&c.WriteKey, "write-key", "WRITE_KEY_1", "source write key")
	fs.IntVar(&c.Batch, "batch", 100, "events per /v1/batch request")
	fs.BoolVar(&c.Single, "single", false, "one event per request to /v1/track|page|identify")
	fs.BoolVar(&c.Gzip, "gzip", false, "gzip request bodies")
	fs.IntVar(&c.Senders, "senders", 64, "concurrent senders (lanes)")
	fs.Float64Var(&c.Rate, "rate", 0, "open loop at this many events/s (0: closed loop at max)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to issue requests")
	fs.DurationVar(&c.Warmup, "warmup", 0, "leave the requests of the run's first WARMUP out of the latency percentiles")
	fs.Int64Var(&c.Events, "events", 0, "stop after this many events (0: no count limit)")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "per attempt")
	fs.IntVar(&c.Event.Users, "users", 1000, "distinct users")
	fs.IntVar(&c.Event.HotUsers, "hot-users", 1, "hot users (with --hot-percent)")
	fs.Float64Var(&c.Event.HotPercent, "hot-percent", 0, "share of requests carrying only the hot users")
	fs.IntVar(&c.Event.Bytes, "event-bytes", 600, "bytes per event (padded)")
	fs.StringVar(&c.Event.RunID, "run-id", "", "messageId prefix (default random)")
	hgrm := fs.String("hgrm", "", "write the latency percentiles (HdrHistogram format, ms) here")
	jsonOut := fs.String("json", "", "write a JSON summary here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.Event.HotPercent == 0 {
		c.Event.HotUsers = 0
	}
	res, err := bench.Load(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res)
	if *hgrm != "" {
		f, err := os.Create(*hgrm)
		if err != nil {
			return err
		}
		res.Latency.PercentilesPrint(f, 5, 1000)
		if err := f.Close(); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		sum := map[string]any{"mode": res.Mode, "events": res.Events, "requests": res.Requests, "seconds": res.Elapsed.Seconds(),
			"events_per_sec": res.EventsPerSec, "latency": bench.PercentilesOf(res.Latency), "abandoned": res.Abandoned,
			"not_sent": res.NotSent, "statuses": res.Statuses, "series": res.Series, "run_id": res.RunID(),
			"loadgen_cpu_us_per_event": float64(res.CPU.Microseconds()) / float64(max(res.Events, 1))}
		b, _ := json.MarshalIndent(sum, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if res.Abandoned > 0 {
		return fmt.Errorf("%d requests abandoned", res.Abandoned)
	}
	return nil
}

// windows parses FROM-TO[,FROM-TO...] (durations since the sink's start).
func windows(s string) ([][2]time.Duration, error) {
	var out [][2]time.Duration
	for _, w := range strings.Split(s, ",") {
		if w = strings.TrimSpace(w); w == "" {
			continue
		}
		a, b, ok := strings.Cut(w, "-")
		if !ok {
			return nil, fmt.Errorf("window %q: want FROM-TO, e.g. 10s-40s", w)
		}
		from, err := time.ParseDuration(a)
		if err != nil {
			return nil, err
		}
		to, err := time.ParseDuration(b)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]time.Duration{from, to})
	}
	return out, nil
}

func sinkCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "address (127.0.0.1 only)")
	poison := fs.Float64("poison-pct", 0, "percent of events answered 400 (by messageId hash)")
	latency := fs.Duration("latency", 0, "added to every request")
	outages := fs.String("outage", "", "windows answering 503, FROM-TO[,...] since start (e.g. 10s-40s)")
	throttles := fs.String("throttle", "", "windows answering 429, FROM-TO[,...]")
	retryAfter := fs.Duration("retry-after", time.Second, "Retry-After of throttled answers")
	slows := fs.String("slow", "", "windows adding --slow-latency, FROM-TO[,...]")
	slowLatency := fs.Duration("slow-latency", 50*time.Millisecond, "latency added in --slow windows")
	every := fs.Duration("report-every", 5*time.Second, "print a report this often")
	maxRun := fs.Duration("max", time.Hour, "stop after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := bench.CheckLoopback(*listen); err != nil {
		return err
	}
	cfg := sink.Config{PoisonPercent: *poison, Latency: *latency}
	for _, spec := range []struct {
		s    string
		kind sink.FaultKind
	}{{*outages, sink.Outage}, {*throttles, sink.Throttle}, {*slows, sink.Slow}} {
		ws, err := windows(spec.s)
		if err != nil {
			return err
		}
		for _, w := range ws {
			cfg.Faults = append(cfg.Faults, sink.Fault{Kind: spec.kind, From: w[0], To: w[1], RetryAfter: *retryAfter, Latency: *slowLatency})
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	sk := sink.New(cfg)
	go sk.Serve(ln)
	defer sk.Close()
	fmt.Fprintf(stdout, "sink listening on http://%s/ (faults %d, poison %g%%)\n", ln.Addr(), len(cfg.Faults), *poison)
	t := time.NewTicker(*every)
	defer t.Stop()
	end := time.After(*maxRun)
	for {
		select {
		case <-t.C:
			fmt.Fprintf(stdout, "%+v\n", sk.Report())
		case <-ctx.Done():
			fmt.Fprintf(stdout, "final: %+v\n", sk.Report())
			return nil
		case <-end:
			fmt.Fprintf(stdout, "final: %+v\n", sk.Report())
			return nil
		}
	}
}

func ceilingCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("want file, pebble, %s or %s", bench.CeilingNoop, bench.CeilingFile)
	}
	kind := args[0]
	fs := flag.NewFlagSet("ceiling "+kind, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for the ceiling's files (default: a temp dir, removed after)")
	switch kind {
	case bench.CeilingNoop, bench.CeilingFile:
		listen := fs.String("listen", "127.0.0.1:8090", "address (127.0.0.1 only)")
		maxRun := fs.Duration("max", time.Hour, "stop after this long")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if err := bench.CheckLoopback(*listen); err != nil {
			return err
		}
		d, cleanup, err := workDir(*dir)
		if err != nil {
			return err
		}
		defer cleanup()
		srv, err := bench.NewCeilingServer(kind, d)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		fmt.Fprintf(stdout, "%s listening on http://%s/\n", kind, ln.Addr())
		select {
		case <-ctx.Done():
		case <-time.After(*maxRun):
		case err := <-errc:
			return err
		}
		return srv.Close()
	case "file", "pebble":
		var c ceiling.Config
		fs.IntVar(&c.EventBytes, "event-bytes", 600, "bytes per event")
		fs.IntVar(&c.BatchEvents, "batch", 100, "events per commit")
		fs.IntVar(&c.Writers, "writers", 64, "concurrent writers")
		fs.DurationVar(&c.Duration, "duration", 10*time.Second, "run time")
		fs.Int64Var(&c.Events, "events", 0, "stop after this many events")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		d, cleanup, err := workDir(*dir)
		if err != nil {
			return err
		}
		defer cleanup()
		var r ceiling.Result
		if kind == "file" {
			r, err = ceiling.File(ctx, d, c)
		} else {
			r, err = ceiling.Pebble(ctx, d, c)
		}
		fmt.Fprintf(stdout, "%s ceiling, %d writers x %d events: %s\n", kind, c.Writers, c.BatchEvents, r)
		return err
	}
	return fmt.Errorf("unknown ceiling %q: want file, pebble, %s or %s", kind, bench.CeilingNoop, bench.CeilingFile)
}

func workDir(dir string) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, os.MkdirAll(dir, 0o755)
	}
	d, err := os.MkdirTemp("", "sluice-ceiling-")
	return d, func() { os.RemoveAll(d) }, err
}

// moduleRoot walks up from the working directory to this module's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 32 {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/sluice-cdi/sluice\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("run inside the sluice module (no go.mod of github.com/sluice-cdi/sluice above the working directory)")
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.Options
	fs.StringVar(&o.SluiceBin, "sluice", "", "sluice binary (default: go build ./cmd/sluice into a temp dir)")
	fs.StringVar(&o.OutDir, "out", "", "output directory (default bench/out)")
	fs.BoolVar(&o.Quick, "quick", false, "short runs: every scenario in about a minute in all")
	fs.IntVar(&o.Repeat, "repeat", 1, "run each scenario this many times; results report medians")
	fs.DurationVar(&o.Outage, "outage", 0, "outage window of the outage scenario (default 30s, quick 5s)")
	fs.BoolVar(&o.Perf, "perf", false, "record perf CPU profiles of sluice in the key phases")
	report := fs.Bool("report", false, "afterwards, write the tables into BENCHMARKS.md")
	if err := fs.Parse(args); err != nil {
		return err
	}
	names := fs.Args()
	if len(names) == 0 {
		names = []string{"all"}
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	o.Root = root
	o.Log = stderr
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.CeilingCmd = []string{self, "ceiling"}
	if o.SluiceBin != "" {
		if o.SluiceBin, err = filepath.Abs(o.SluiceBin); err != nil {
			return err
		}
	}
	r, err := bench.NewRunner(ctx, o)
	if err != nil {
		return err
	}
	defer r.Close()
	results, runErr := r.Run(ctx, names)
	for _, res := range results {
		status := "PASS"
		if !res.Pass {
			status = "FAIL"
		}
		fmt.Fprintf(stdout, "%s %-16s %v\n", status, res.Scenario, summaryLine(res))
	}
	if *report {
		out := o.OutDir
		if out == "" {
			out = filepath.Join(root, "bench", "out")
		}
		if err := bench.WriteReport(out, filepath.Join(root, "BENCHMARKS.md")); err != nil {
			return errors.Join(runErr, err)
		}
	}
	return runErr
}

func summaryLine(res *bench.Result) string {
	b, _ := json.Marshal(res.Summary)
	return string(b)
}

func reportCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "results directory (default bench/out)")
	md := fs.String("md", "", "markdown file (default BENCHMARKS.md)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(root, "bench", "out")
	}
	if *md == "" {
		*md = filepath.Join(root, "BENCHMARKS.md")
	}
	if err := bench.WriteReport(*out, *md); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote the scenario tables into %s\n", *md)
	return nil
}
