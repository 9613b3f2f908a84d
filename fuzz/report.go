package fuzz

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Violation is one broken guarantee.
type Violation struct {
	// Kind names the guarantee: order, loss, dup, abort, bounds,
	// durability, dedup, content, filter, liveness, router, harness, panic.
	Kind string
	// Step is the workload operation during which it was found (0: setup,
	// Steps+1: liveness phase and final checks).
	Step int
	// At is the virtual time since the run started.
	At   time.Duration
	Dest string
	Key  string
	Seqs []uint64
	Msg  string
}

func (v Violation) String() string {
	s := fmt.Sprintf("%s at step %d (t=%v)", v.Kind, v.Step, v.At)
	if v.Dest != "" {
		s += " dest=" + v.Dest
	}
	if v.Key != "" {
		s += fmt.Sprintf(" key=%q", v.Key)
	}
	if len(v.Seqs) > 0 {
		s += fmt.Sprintf(" seqs=%v", v.Seqs)
	}
	return s + ": " + v.Msg
}

// Report is what a run did and found.
type Report struct {
	Knobs      Knobs
	Violations []Violation
	// Totals, for the logs and the metamorphic comparison.
	Appended, Duplicates, Requests, Deliveries, Redeliveries int
	Aborted, Replayed, Crashes, Restarts, Iterations         int
	// Storage faults (faults.go): index-damage faults and the Recover
	// runs they needed, stretches of full disk, records of refused
	// appends and those a restart kept after all (Adopted), frames
	// flipped, and seqs the engine reports lost.
	IndexDamages, Recovers, DiskFull, Refused, Adopted, Flips, Lost int
	// ENOSPC counts the segment writes and syncs the full disk failed.
	ENOSPC int
	// LostReclaimed counts the seqs reported lost that lay in segments
	// reclaimed before an index-damage fault: the older index still
	// named their files (a false alarm the engine cannot avoid).
	LostReclaimed int
	// Tolerated counts the occurrences of known bugs that did not fail
	// the run (see Known).
	Tolerated   map[Known]int
	VirtualTime time.Duration
	// Wall is the real time the run took; Truncated is set when it went
	// over its budget (RunWithin) and stopped early, unchecked at the end.
	Wall      time.Duration
	Truncated bool
	// Stopped says why a run ended early without its end checks because
	// of a tolerated known bug it cannot go on after ("" when it did not).
	Stopped string
	// Outcomes per destination: delivered messageIds (sorted), aborted
	// messageIds (sorted), and for destinations with ordering the first
	// deliveries of each key in arrival order.
	Outcomes []Outcome
	// Trace has a line per operation, dispatch and completion when
	// Knobs.Trace is set.
	Trace []string
}

// Outcome is one destination's end state.
type Outcome struct {
	Dest      string
	Ordering  bool
	Delivered []string
	Aborted   []string
	KeyOrder  map[string][]string
}

// Failed reports whether any guarantee broke.
func (r *Report) Failed() bool { return len(r.Violations) > 0 }

// Summary is one line of totals.
func (r *Report) Summary() string {
	s := fmt.Sprintf("%s: mode %v, %d events (+%d dups), %d requests, %d deliveries (%d again), %d aborted, %d replayed, %d crashes, %d restarts, %v virtual, %d iterations",
		r.Knobs, r.Knobs.Mode&modeAll, r.Appended, r.Duplicates, r.Requests, r.Deliveries, r.Redeliveries, r.Aborted, r.Replayed,
		r.Crashes, r.Restarts, r.VirtualTime.Round(time.Millisecond), r.Iterations)
	if r.IndexDamages+r.DiskFull+r.Flips > 0 {
		s += fmt.Sprintf(", storage faults: %d index damages (%d recovers), %d disk full (%d ENOSPC, %d records refused, %d kept), %d flips, %d lost (%d of them reclaimed)",
			r.IndexDamages, r.Recovers, r.DiskFull, r.ENOSPC, r.Refused, r.Adopted, r.Flips, r.Lost, r.LostReclaimed)
	}
	if r.Truncated {
		s += ", truncated (over budget)"
	}
	if r.Stopped != "" {
		s += ", stopped early: " + r.Stopped
	}
	for _, k := range []Known{KnownRestartForgets, KnownOutageAbort, KnownAdoptPanic, KnownRecoverDedup, KnownStragglerLoss, KnownRecoverSpare, KnownReclaimUnlisted, KnownSeqReuse, KnownRecoverAside, KnownLostTail} {
		if n := r.Tolerated[k]; n > 0 {
			s += fmt.Sprintf(", tolerated %v x%d", k, n)
		}
	}
	return s
}

// Explain is the failure message: the violations, the knobs and the
// command that replays the run.
func (r *Report) Explain() string {
	var b strings.Builder
	fmt.Fprintf(&b, "simulation failed: %s\n", r.Summary())
	for i, v := range r.Violations {
		if i == 10 {
			fmt.Fprintf(&b, "  ... %d more\n", len(r.Violations)-i)
			break
		}
		fmt.Fprintf(&b, "  %s\n", v)
	}
	fmt.Fprintf(&b, "replay: %s\n", r.Knobs.ReplayCommand())
	fmt.Fprintf(&b, "trace:  SLUICE_SIM_TRACE=1 %s\n", r.Knobs.ReplayCommand())
	return b.String()
}

// TraceFor returns the trace lines that mention the first violation's key
// or seqs (at most max lines, the last ones), for a minimal trace.
func (r *Report) TraceFor(max int) []string {
	if len(r.Violations) == 0 {
		return nil
	}
	v := r.Violations[0]
	var needles []string
	if v.Key != "" {
		needles = append(needles, ":"+v.Key+" ", ":"+v.Key+"]")
	}
	for _, s := range v.Seqs {
		needles = append(needles, fmt.Sprintf("#%d:", s))
	}
	var out []string
	for _, l := range r.Trace {
		keep := strings.Contains(l, "s op ") || strings.Contains(l, "s ! ")
		for _, n := range needles {
			if strings.Contains(l, n) {
				keep = true
			}
		}
		if keep {
			out = append(out, l)
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
}

// simLogger is the engine's logger in a run: discarded, or stderr with
// SLUICE_SIM_ENGINE_LOG=1 (to follow a failing seed).
func simLogger() *slog.Logger {
	if os.Getenv("SLUICE_SIM_ENGINE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return discard
}
