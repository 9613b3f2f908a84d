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
	// ModeExplicit marks Mode as given rather than drawn.
	ModeExplicit Mode = 1 << 15

	modeAll = ModeCrash | ModeAmbiguous | ModeTransient | ModeOutage | ModePoison | ModeThrottle | ModeReplay | ModeExpiry
)

var modeNames = []string{"crash", "ambiguous", "transient", "outage", "poison", "throttle", "replay", "expiry"}

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

// FuzzKnobs maps a fuzz input to knobs: the knob byte's bits are the mode
// flags (so the fuzzer explores fault mixes), steps is capped so that one
// input runs in about a second.
func FuzzKnobs(seed uint64, steps uint16, knob byte) Knobs {
	return Knobs{Seed: seed, Steps: 20 + int(steps%300), Mode: Mode(knob) | ModeExplicit}
}

// resolve fills the drawn fields. The knob stream is its own, so pinning
// one knob does not change the others.
func (k Knobs) resolve() Knobs {
	r := rand.New(rand.NewPCG(k.Seed, 0x6b6e6f6273))
	users := []int{1, 2, 3, 5, 8, 13, 30, 100}[r.IntN(8)]
	dests := 1 + r.IntN(3)
	var mode Mode
	for i, p := range []float64{0.4, 0.5, 0.5, 0.5, 0.6, 0.4, 0.5, 0.25} {
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
type Known uint8

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
)

// Tolerated are the known bugs that do not fail a run (yet): none.
var Tolerated Known

func (k Known) String() string {
	var parts []string
	for i, n := range []string{"restart-forgets", "outage-abort"} {
		if k&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "+")
}
