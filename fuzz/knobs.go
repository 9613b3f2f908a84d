package fuzz

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Knobs select one simulation run. A run is a pure function of its knobs:
// the same knobs replay the same run, step for step. Zero fields are drawn
// from the seed; setting one pins it (the reducer and the metamorphic test
// do that).
type Knobs struct {
	// Seed drives everything: workload, destinations, faults, jitter.
	Seed uint64
	// Steps is the number of workload operations. Default 250.
	Steps int
	// Users is the number of ordering keys; Dests the number of
	// destinations (1 to 3).
	Users, Dests int
	// Mode says which faults and operations the run may use. Without
	// ModeExplicit the flags are drawn from the seed (swarm testing).
	Mode Mode
	// BatchSize, WindowEvents and ConcurrencyMax override every
	// destination's router configuration; SegmentBytesMax the engine's.
	BatchSize, WindowEvents, ConcurrencyMax int
	SegmentBytesMax                         int64
	// Canary breaks the simulated delivery on purpose: the checker must
	// notice.
	Canary Canary
	// Strict makes these known bugs violations even while Tolerated
	// lists them.
	Strict Known
	// Trace keeps a line per operation, dispatch and completion in the
	// report (slow; for replaying a failure).
	Trace bool
}

// Mode is a set of fault and operation families a run may use.
type Mode uint16

const (
	// ModeCrash: power losses (crash clones of the file system).
	ModeCrash Mode = 1 << iota
	// ModeAmbiguous: timeouts after which the destination may have the
	// events.
	ModeAmbiguous
	// ModeTransient: per-request 5xx and connection errors outside outages.
	ModeTransient
	// ModeOutage: windows in which a destination answers nothing but
	// 503s and connection errors.
	ModeOutage
	// ModePoison: events the destination always refuses (4xx).
	ModePoison
	// ModeThrottle: 429 with Retry-After.
	ModeThrottle
	// ModeReplay: replays of dead letters, some after "fixing" the
	// destination so that poison events go through.
	ModeReplay
	// ModeExpiry: a short MaxAge, so that events expire.
	ModeExpiry
	// ModeIndexDamage: power losses after which the index has lost its
	// WAL files or its whole folder (faults.go); Open refuses or adopts,
	// Recover rebuilds, cursors and dead letters may revert.
	ModeIndexDamage
	// ModeDiskFull: stretches of virtual time in which writes and/or
	// syncs of segment files fail with ENOSPC; appends fail meanwhile
	// and succeed again once the stretch ends.
	ModeDiskFull
	// ModeBitFlip: a byte flipped in frames of sealed segments between a
	// shutdown (power loss or graceful) and the reopen.
	ModeBitFlip
	// ModeExplicit marks Mode as given rather than drawn.
	ModeExplicit Mode = 1 << 15

	modeAll = ModeCrash | ModeAmbiguous | ModeTransient | ModeOutage | ModePoison | ModeThrottle | ModeReplay | ModeExpiry |
		ModeIndexDamage | ModeDiskFull | ModeBitFlip
)

var modeNames = []string{"crash", "ambiguous", "transient", "outage", "poison", "throttle", "replay", "expiry", "index", "diskfull", "bitflip"}

func (m Mode) String() string {
	var parts []string
	for i, n := range modeNames {
		if m&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "+")
}

// Canary is a deliberately broken destination.
type Canary uint8

const (
	CanaryNone Canary = iota
	// CanarySwap records two events of one key in a batch in swapped
	// order (an ordering bug).
	CanarySwap
	// CanaryLoss answers success for some requests without keeping the
	// events (a lost delivery).
	CanaryLoss
	// CanaryDup records some successful requests twice (a duplicate).
	CanaryDup
)

func (c Canary) String() string {
	return [...]string{"none", "swap", "loss", "dup"}[c]
}

// FuzzKnobs maps a fuzz input to knobs: the knob byte's bits are the first
// eight mode flags and the top three bits of steps the storage faults
// (index damage, disk full, bit flips), so the fuzzer explores fault
// mixes; steps is capped so that one input runs in about a second.
func FuzzKnobs(seed uint64, steps uint16, knob byte) Knobs {
	mode := Mode(knob) | Mode(steps>>13)*ModeIndexDamage
	return Knobs{Seed: seed, Steps: 20 + int(steps%300), Mode: mode | ModeExplicit}
}

// resolve fills the drawn fields. The knob stream is its own, so pinning
// one knob does not change the others.
func (k Knobs) resolve() Knobs {
	r := rand.New(rand.NewPCG(k.Seed, 0x6b6e6f6273))
	users := []int{1, 2, 3, 5, 8, 13, 30, 100}[r.IntN(8)]
	dests := 1 + r.IntN(3)
	var mode Mode
	// The storage faults' probabilities come last, so that the seeds
	// that predate them draw the other modes as they did.
	for i, p := range []float64{0.4, 0.5, 0.5, 0.5, 0.6, 0.4, 0.5, 0.25, 0.3, 0.3, 0.3} {
		if r.Float64() < p {
			mode |= 1 << i
		}
	}
	if k.Steps == 0 {
		k.Steps = 250
	}
	if k.Users == 0 {
		k.Users = users
	}
	if k.Dests == 0 {
		k.Dests = dests
	}
	if k.Mode&ModeExplicit == 0 {
		k.Mode = mode | ModeExplicit
	}
	return k
}

// String renders the knobs as SLUICE_SIM_KNOBS accepts them.
func (k Knobs) String() string {
	s := fmt.Sprintf("seed=%d,steps=%d,users=%d,dests=%d,mode=%#x", k.Seed, k.Steps, k.Users, k.Dests, uint16(k.Mode))
	for _, kv := range []struct {
		name string
		v    int64
	}{{"batch", int64(k.BatchSize)}, {"window", int64(k.WindowEvents)}, {"conc", int64(k.ConcurrencyMax)}, {"seg", k.SegmentBytesMax}, {"canary", int64(k.Canary)}, {"strict", int64(k.Strict)}} {
		if kv.v != 0 {
			s += fmt.Sprintf(",%s=%d", kv.name, kv.v)
		}
	}
	return s
}

// ParseKnobs reads the String form ("seed=1,steps=40,mode=0x801f"); keys
// left out keep the values of base.
func ParseKnobs(s string, base Knobs) (Knobs, error) {
	k := base
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		name, val, ok := strings.Cut(kv, "=")
		if !ok {
			return k, fmt.Errorf("cannot parse knob %q: want name=value", kv)
		}
		n, err := strconv.ParseUint(val, 0, 64)
		if err != nil {
			return k, fmt.Errorf("cannot parse knob %q: %w", kv, err)
		}
		switch name {
		case "seed":
			k.Seed = n
		case "steps":
			k.Steps = int(n)
		case "users":
			k.Users = int(n)
		case "dests":
			k.Dests = int(n)
		case "mode":
			k.Mode = Mode(n) | ModeExplicit
		case "batch":
			k.BatchSize = int(n)
		case "window":
			k.WindowEvents = int(n)
		case "conc":
			k.ConcurrencyMax = int(n)
		case "seg":
			k.SegmentBytesMax = int64(n)
		case "canary":
			k.Canary = Canary(n)
		case "strict":
			k.Strict = Known(n)
		default:
			return k, fmt.Errorf("cannot parse knob %q: unknown name", kv)
		}
	}
	return k, nil
}

// ReplayCommand is the one command that replays a run.
func (k Knobs) ReplayCommand() string {
	return fmt.Sprintf("SLUICE_SIM_SEED=%d SLUICE_SIM_KNOBS='%s' go test ./fuzz -run 'TestSimulationSeeds$' -v", k.Seed, k.String())
}

// Known is a set of known bugs. The simulator finds them; those in
// Tolerated are counted (Report.Tolerated) instead of failing the run, so
// that CI stays green until they are fixed. Remove a bit from Tolerated
// once its fix lands; Knobs.Strict forces them per run (the skipped BUG
// tests do).
type Known uint16

const (
	// KnownRestartForgets (BUG-RESTART-FORGETS): a graceful restart
	// (Router.Run's shutdown) persists state only up to the cursor, which
	// stops at the first unsettled event: deliveries and aborts of events
	// past it are forgotten, so they are delivered again (duplicates
	// without an ambiguous attempt), or delivered after having been
	// aborted, and then out of order.
	KnownRestartForgets Known = 1 << iota
	// KnownOutageAbort (BUG-OUTAGE-ABORT, fixed): retryable failures were
	// charged to the event while the health ring still held the
	// successes from before an outage (or when only one key was sending),
	// so an event that only ever saw outage failures was aborted after
	// MinAttempts.
	KnownOutageAbort
	// KnownAdoptPanic (BUG-ADOPT-PANIC, fixed): engine.Open panics (slice
	// bounds out of range [-1:] in Engine.adopt, engine/recovery.go)
	// when the index lost its WAL files, every segment its older
	// manifest names has since been reclaimed (dropMissing empties the
	// list) and newer segment files lie past the manifest's end. While
	// tolerated, the simulator treats the panic as the process dying
	// (a crash clone of the disk) and opens again: Open then refuses
	// with ErrIndexDamaged and Recover rebuilds the index.
	KnownAdoptPanic
	// KnownRecoverDedup (BUG-RECOVER-DEDUP, fixed): after the index lost its
	// WAL or its folder, the dedup keys of events whose segments were
	// reclaimed are gone (Open and Recover rebuild dedup from the
	// retained log only; the dedup runs the lost index named are not
	// adopted): a resend within the dedup window is stored and
	// delivered again (docs/guarantees.md, guarantee 3).
	KnownRecoverDedup
	// KnownStragglerLoss (BUG-STRAGGLER-LOSS, fixed: straggler files keep
	// a copy outside the index and Recover requeues them; when an index
	// that lost its WAL names a reclaimed segment, Open restores that
	// segment's stragglers from their file and requeues them for the
	// consumers whose cursors are older than the log; the lost set has a
	// copy beside the segments, so that a lost index folder does not
	// take the record of earlier losses with it). As found: the only copy of a
	// pending event whose segment was reclaimed (a straggler: failed,
	// skipped or aborted entry; a paused destination's whole backlog
	// after a graceful stop) lives in the index. When Recover cannot keep
	// the index (folder gone, or an empty index after its WAL was lost),
	// those events are gone and nothing names them: RecoverReport says
	// EntriesLost -1 (an unknown number), LostRanges stays empty.
	KnownStragglerLoss
	// KnownRecoverSpare (BUG-RECOVER-SPARE, fixed): after a power loss a
	// reclaimed segment's file recycled as the next segment's spare
	// (renamed ahead of time, its old header still there) makes Recover
	// fail: "segment file N holds records up to seq S but its header is
	// damaged: move it out of /sluice/log and run recover again". Open
	// removes such a stray by itself; Recover, with no manifest, asks the
	// operator. While tolerated, the simulator does what the message
	// says (moves the file to /sluice/moved) and runs Recover again.
	KnownRecoverSpare
	// KnownReclaimUnlisted (BUG-RECLAIM-UNLISTED, fixed): Reclaim, copying a
	// straggler whose frame is damaged, logs "straggler unreadable; its
	// event is lost" and counts it in Stats.LostRecords but does not add
	// the seq to the lost set (engine/reclaim.go deleteSegment calls no
	// recordLost): LostRanges never lists it, the count is gone after a
	// restart, and the router's later read answers ErrNotFound (dead
	// letter "payload unreadable: ... not found").
	KnownReclaimUnlisted
	// KnownSeqReuse (BUG-SEQ-REUSE, fixed): after index damage the log comes
	// back shorter than what was acknowledged and the next append reuses
	// seqs. Seen two ways: (1) every record reclaimed, the active segment
	// holding only its header (base seq N+1), index folder lost: Recover
	// sets the header-only file aside and numbering restarts at 1; (2) a
	// flipped frame that starts the last group of the last segment (sealed
	// by a graceful close) and the index folder lost: Recover scans that
	// segment as a torn tail and cuts it at the damaged frame, dropping
	// the group's intact later frames without reporting them. The
	// simulator cannot model reused seqs: while tolerated, the run stops
	// there (Report.Stopped) without its end checks.
	KnownSeqReuse
	// KnownRecoverAside (BUG-RECOVER-ASIDE, fixed): Recover sets aside
	// (log/aside) every segment file before a gap in the seqs, taking
	// the gap for the end of consumed, reclaimed segments; a gap that a
	// damaged frame made (a flipped byte in the last frame of a
	// segment) or a reclaimed file in the middle then drops acknowledged
	// records nobody consumed, without reporting them lost: they are
	// never delivered, their dedup keys are gone, and RecoverReport's
	// FirstSeq is past them. While tolerated, events below the first seq
	// of a Recover that started past what had been reclaimed count as
	// final (RecoverReport.SetAside names their files).
	KnownRecoverAside
	// KnownLostTail (BUG-LOST-TAIL, fixed): when the newest records of the log
	// are all lost (damaged frames), a consumer's cursor stays before them
	// for good: readers skip them and nothing later passes them, so the
	// backlog never reaches zero and the segment is never reclaimed until
	// the next append. While tolerated, a cursor followed by nothing but
	// lost seqs counts as at the end.
	KnownLostTail
)

// Tolerated are the known bugs that do not fail a run (yet): none.
var Tolerated Known

func (k Known) String() string {
	var parts []string
	for i, n := range []string{"restart-forgets", "outage-abort", "adopt-panic", "recover-dedup", "straggler-loss", "recover-spare", "reclaim-unlisted", "seq-reuse", "recover-aside", "lost-tail"} {
		if k&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "+")
}
