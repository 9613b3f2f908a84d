// Command sluice runs the Sluice data plane.
//
//	sluice serve [--config FILE]          run ingest and delivery until SIGTERM/SIGINT
//	sluice status                         destinations: state, backlog, counts
//	sluice dlq list|replay|purge ...      dead letters of a destination
//	sluice pause|resume DESTINATION       stop or restart dispatching
//	sluice version                        print the version
//
// The operations commands talk to the admin API (--admin, --token or
// --config).
//
// With no --config, serve uses examples/quickstart.yaml (looked up next to
// the working directory and the binary).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/ingest"
	"github.com/sluice-cdi/sluice/router"
)

const usageText = "usage: sluice serve [--config FILE] | status | dlq list|replay|purge | pause|resume DESTINATION | recover [--config FILE] | version"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usageText)
		return 2
	}
	switch args[0] {
	case "serve":
		return serveCmd(args[1:], stderr)
	case "status":
		return statusCmd(args[1:], stdout, stderr)
	case "dlq":
		return dlqCmd(args[1:], stdout, stderr)
	case "pause", "resume":
		return pauseCmd(args[0], args[1:], stdout, stderr)
	case "recover":
		return recoverCmd(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice: unknown command %q\n%s\n", args[0], usageText)
		return 2
	}
}

func serveCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (default: examples/quickstart.yaml)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// SIGHUP's default action ends the process: take it over first.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, log, ok := configFor(*configPath, stderr)
	if !ok {
		return 2
	}
	if n := procsFor(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), runtime.NumCPU()); n > 0 {
		runtime.GOMAXPROCS(n)
		log.Debug("GOMAXPROCS raised on a small machine", "gomaxprocs", n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go ignoreHangups(ctx, hup, log)
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("sluice stopped", "err", err)
		return 1
	}
	return 0
}

// ignoreHangups logs each SIGHUP until ctx ends: a reload is what users
// expect of it, and until that lands it must not end the process.
func ignoreHangups(ctx context.Context, hup <-chan os.Signal, log *slog.Logger) {
	for {
		select {
		case <-hup:
			log.Info("SIGHUP received; config reload is not supported yet, ignoring")
		case <-ctx.Done():
			return
		}
	}
}

// procsFor returns the GOMAXPROCS to set, or 0 to keep the runtime's.
// On a machine of 2 or 3 CPUs it doubles it: an index compaction then
// holds one of the Ps for up to a second of CPU, and the goroutines that
// answer requests (parse, commit, sync, reply: several hand-offs each)
// queue behind it in 10 ms Go preemption slices; with more Ps than CPUs
// the kernel interleaves them at its finer grain. Measured at 100k
// events/s open loop on 2 CPUs: ingest p99 9.8-12.9 ms against
// 11.9-16.8 ms, and the same closed-loop maximum. Left alone when
// GOMAXPROCS is set, or when the runtime chose fewer Ps than CPUs (a
// container CPU quota, which more running threads would only exhaust
// sooner).
func procsFor(env string, procs, cpus int) int {
	if env != "" || procs != cpus || cpus < 2 || cpus > 3 {
		return 0
	}
	return 2 * cpus
}

// findQuickstart returns the quick-start config's path: in the working
// directory's examples/, else beside the binary's parent.
// configFor loads the config at path (the quick-start one when empty)
// and makes its logger; on a bad file it says why on stderr.
func configFor(path string, stderr io.Writer) (*Config, *slog.Logger, bool) {
	if path == "" {
		path = findQuickstart()
	}
	cfg, err := loadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "sluice: %v\n", err)
		return nil, nil, false
	}
	return cfg, newLogger(cfg, stderr), true
}

func findQuickstart() string {
	const rel = "examples/quickstart.yaml"
	if _, err := os.Stat(rel); err == nil {
		return rel
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(filepath.Dir(exe)), rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return rel
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// diskFullRetry is how often serve tries again to open an engine whose
// disk is too full to open its index.
const diskFullRetry = 5 * time.Second

// openEngine opens the engine; while the disk is too full to open its
// index (engine.ErrDiskFull), it waits for free space and tries again every
// retry, until ctx ends, rather than exit (a supervisor restarting it in a
// loop would only add load to a full machine).
func openEngine(ctx context.Context, cfg *Config, log *slog.Logger, retry time.Duration) (*engine.Engine, error) {
	for waited := false; ; waited = true {
		eng, err := engine.Open(engineOptions(cfg, log))
		if err == nil || !errors.Is(err, engine.ErrDiskFull) {
			if err == nil && waited {
				log.Info("the disk has room again; engine open")
			}
			return eng, err
		}
		if !waited {
			log.Error("the disk is too full to open the engine; waiting for free space (free some space in data_dir's filesystem)", "err", err, "retry", retry)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(retry):
		}
	}
}

// serve runs until ctx ends, then shuts down in order: stop accepting,
// finish requests in flight, close the engine.
func serve(ctx context.Context, cfg *Config, log *slog.Logger) (err error) {
	eng, err := openEngine(ctx, cfg, log, diskFullRetry)
	if err != nil {
		return fmt.Errorf("cannot open engine: %w", err)
	}
	defer func() {
		if cerr := eng.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("cannot close engine: %w", cerr)
		}
	}()
	routers, err := buildRouters(cfg, eng, log)
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range routers {
			if err := r.Close(); err != nil {
				log.Error("cannot close destination", "err", err)
			}
		}
	}()
	// Before anything is served: a damaged paused file stops the start,
	// and paused destinations are paused before their routers run.
	admin, err := router.NewAdmin(eng, routers, router.AdminOptions{Token: cfg.AdminToken, Logger: log.With("component", "admin"),
		PausedPath: filepath.Join(cfg.DataDir, "paused.json")})
	if err != nil {
		return err
	}
	srv, err := ingest.New(ingestOptions(cfg, log), ingest.Deps{Appender: eng, Stats: eng.Stats,
		Metrics: []func(io.Writer){func(w io.Writer) { router.WriteMetrics(w, routers) }}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", cfg.Listen, err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("cannot listen on %s: %w", cfg.AdminListen, err)
	}
	log.Info("sluice serving", "listen", ln.Addr().String(), "admin", adminLn.Addr().String(), "data_dir", cfg.DataDir,
		"sources", len(cfg.Sources), "destinations", len(cfg.Destinations), "version", version)
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("ingest server: %w", srv.Serve(ln)) }()
	go func() {
		if err := admin.Serve(adminLn); err != nil {
			errc <- fmt.Errorf("admin server: %w", err)
		}
	}()
	routerCtx, stopRouters := context.WithCancel(context.Background())
	defer stopRouters()
	var wg sync.WaitGroup
	for _, r := range routers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Run(routerCtx); err != nil {
				log.Error("router stopped", "destination", r.Name(), "err", err)
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
	}
	// Order: stop accepting and finish ingest requests in flight, then let
	// routers finish or persist their in-flight deliveries, then close the
	// engine (deferred above).
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("ingest shutdown incomplete", "err", err)
	}
	admin.Shutdown(sctx)
	stopRouters()
	wg.Wait()
	return runErr
}

func ingestOptions(cfg *Config, log *slog.Logger) ingest.Options {
	o := ingest.Options{
		EventBytesMax:     cfg.Ingest.EventBytesMax,
		RequestBytesMax:   cfg.Ingest.RequestBytesMax,
		InFlightMax:       cfg.Ingest.InFlightMax,
		ConnectionsMax:    cfg.Ingest.ConnectionsMax,
		ReadTimeout:       cfg.Ingest.ReadTimeout,
		WriteTimeout:      cfg.Ingest.WriteTimeout,
		RetryAfter:        cfg.Ingest.RetryAfter,
		TrustForwardedFor: cfg.Ingest.TrustForwardedFor,
		BodyBytesBudget:   cfg.Ingest.BodyBytesBudget,
		Version:           version,
		Logger:            log.With("component", "ingest"),
	}
	for _, s := range cfg.Sources {
		o.Sources = append(o.Sources, ingest.Source{Name: s.Name, WriteKey: s.WriteKey})
	}
	return o
}
