package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/sluice-cdi/sluice/engine"
)

// engineOptions are the engine's options from the config.
func engineOptions(cfg *Config, log *slog.Logger) engine.Options {
	return engine.Options{
		Dir:              cfg.DataDir,
		Logger:           log.With("component", "engine"),
		SegmentBytesMax:  cfg.Engine.SegmentBytesMax,
		DiskBudgetBytes:  cfg.Engine.DiskBudgetBytes,
		BacklogEventsMax: cfg.Engine.BacklogEventsMax,
		DedupWindow:      cfg.Engine.DedupWindow,
		DedupFilterBytes: cfg.Engine.DedupFilterBytes,
		ReclaimInterval:  cfg.Engine.ReclaimInterval,

		ReserveBytes:      cfg.Engine.ReserveBytes,
		DiskFreeBytesMin:  cfg.Engine.DiskFreeBytesMin,
		DiskCheckInterval: cfg.Engine.DiskCheckInterval,
	}
}

// recoverCmd rebuilds the index of the config's data_dir from its segment
// files (engine.Recover). The server must be stopped: the index's lock
// refuses a second opener.
func recoverCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("recover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (default: examples/quickstart.yaml)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, log, ok := configFor(*configPath, stderr)
	if !ok {
		return 2
	}
	names := make([]string, 0, len(cfg.Destinations))
	for _, d := range cfg.Destinations {
		names = append(names, d.Name)
	}
	rep, err := engine.Recover(engineOptions(cfg, log), names)
	if err != nil {
		fmt.Fprintf(stderr, "sluice: cannot recover %s: %v\n", cfg.DataDir, err)
		return 1
	}
	writeRecoverReport(stdout, cfg.DataDir, rep)
	return 0
}

func writeRecoverReport(w io.Writer, dir string, rep engine.RecoverReport) {
	if rep.IndexKept {
		fmt.Fprintf(w, "index of %s repaired in place; its state before is saved in %s\n", dir, rep.SavedIndex)
	} else {
		fmt.Fprintf(w, "index of %s rebuilt from the segment files", dir)
		if rep.SavedIndex != "" {
			fmt.Fprintf(w, "; the unreadable one is saved in %s", rep.SavedIndex)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "log: %d segments, seqs %d to %d\n", rep.Segments, rep.FirstSeq, rep.LastSeq)
	if len(rep.Lost) > 0 {
		var n uint64
		for _, r := range rep.Lost {
			n += r.Len()
		}
		fmt.Fprintf(w, "lost: %d records, seqs %v\n", n, rep.Lost)
	} else {
		fmt.Fprintln(w, "lost: none")
	}
	for _, f := range rep.SetAside {
		fmt.Fprintf(w, "set aside (not deleted): log/aside/%s\n", f)
	}
	for _, c := range rep.Consumers {
		how := "kept"
		if c.Created {
			how = "new: redelivers everything retained"
		}
		fmt.Fprintf(w, "destination %s: cursor %d (%s)\n", c.Name, c.Cursor, how)
	}
	switch {
	case rep.EntriesLost < 0:
		fmt.Fprintf(w, "dead letters and failed events of the old index: their states and reasons are gone with it; the events are delivered again (those still in the log from the cursors above, %d of reclaimed segments from straggler files)\n", rep.StragglersRequeued)
	default:
		fmt.Fprintf(w, "dead letters and failed events kept: %d\n", rep.EntriesKept)
	}
	fmt.Fprintln(w, "dedup index: rebuilt from the retained log")
}
