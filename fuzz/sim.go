package fuzz

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/engine/crashfs"
	"github.com/sluice-cdi/sluice/router"
)

// The simulator drives the real engine (on a crashable in-memory file
// system) and one router.Machine per destination from a single goroutine in
// virtual time. Each machine runs Machine.Step, the step Router.Run runs in
// production: responses that arrive wait for the destination's next Step,
// which applies them before it reads and dispatches (see the router
// package doc). Everything random comes from streams seeded by the knobs,
// so a run replays exactly.
//
// A run has two phases. In the safety phase the workload script runs
// (appends, resends, pauses, replays, reclaims, outages, crashes, graceful
// restarts) while every destination injects its faults; every dispatch and
// every delivery is checked as it happens (order, duplicates, filters,
// content, bounds). In the liveness phase faults stop and virtual time
// advances until every destination is idle; then the end state is checked
// (nothing lost, no failed or skipped entries, dead letters only where the
// policy allows, segments reclaimed).

var (
	epoch   = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	discard = slog.New(slog.DiscardHandler)
)

const (
	violationsMax = 20
	// livenessMax bounds the liveness phase in virtual time, iterationsMax
	// the loop iterations of a whole run.
	livenessMax   = 24 * time.Hour
	stallAfter    = 10 * time.Minute
	iterationsMax = 3_000_000
	// wakeMin is Router.Run's floor between two turns of its loop;
	// spinsMax turns in a row woken within spinWake without a request are
	// a busy wait.
	wakeMin  = 100 * time.Microsecond
	spinWake = 10 * time.Millisecond
	spinsMax = 10_000
)

// vclock is the virtual clock (router.Clock and engine.Options.Now). The
// engine's committer goroutine reads it while the simulator waits in
// Append, hence the atomic.
type vclock struct{ ns atomic.Int64 }

func (c *vclock) Now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *vclock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

// simEvent is one stored event as the simulator knows it.
type simEvent struct {
	seq                     uint64
	key, msgID, source, typ string
	payload                 []byte
	receivedAt              int64
}

// Sim is one run. Not safe for concurrent use.
type Sim struct {
	k     Knobs
	rep   *Report
	wrng  *rand.Rand // the workload script
	frng  *rand.Rand // per-request outcomes and latencies
	crng  *rand.Rand // what in-flight requests did at a crash
	clock *vclock
	fs    crashfs.FS
	eng   *engine.Engine
	eopts engine.Options
	dests []*dest

	events    []*simEvent          // by seq-1
	byMsg     map[string]*simEvent // source NUL messageId -> stored event
	keyEvents map[string][]*simEvent
	lastAcked uint64

	poisonRate float64
	poisonSalt uint64
	cured      map[string]bool // messageIds the destination accepts after a "fix"
	dedupMust  time.Duration   // resends younger than this must be duplicates

	crashes, restarts int
	step              int

	// Storage faults (faults.go): the full disk's injector, the records
	// of appends refused since the last one that succeeded (they may
	// still show up after a restart), index-damage faults so far, and the
	// events whose frames got a flipped bit.
	full    *fullDisk
	unacked []engine.Record
	// openedFull: the engine opened while the disk was full, so it
	// refuses appends (ErrDiskFull) until its disk loop checks again,
	// which the simulation does not run (real time).
	openedFull bool
	damages    int
	flipped    map[uint64]bool
	// lost is the engine's lost set at the final checks; wrongLost the
	// seqs reported lost that the simulator did not damage.
	lost, wrongLost map[uint64]bool
	// reclaimedBelow is the engine's first stored seq at the latest
	// index-damage fault: the segments below it were reclaimed, which
	// the damaged index may have forgotten.
	reclaimedBelow uint64
	// entriesLostBelow is reclaimedBelow when Recover last had to build
	// a new index: the straggler copies below it are gone
	// (KnownStragglerLoss).
	entriesLostBelow uint64
	// asideBelow is the highest first seq of a Recover that started past
	// reclaimedBelow: it set aside records nobody had consumed
	// (KnownRecoverAside).
	asideBelow uint64
	faultsOff  bool
	nextFlight uint64
	stopped    bool
	deadline   time.Time // real time; zero: none
}

// overBudget stops a run past its real-time budget.
func (s *Sim) overBudget() bool {
	if !s.deadline.IsZero() && !s.rep.Truncated && time.Now().After(s.deadline) {
		s.rep.Truncated = true
		s.stopped = true
	}
	return s.rep.Truncated
}

// Run executes one simulation and returns its report. It never panics: a
// panic in the engine or router becomes a violation.
func Run(k Knobs) *Report { return RunWithin(k, 0) }

// RunWithin is Run with a budget of real time (0: none). A run over budget
// stops at the next operation or second of virtual time, skips the
// liveness phase and the end-state checks, and says so (Report.Truncated):
// what it found until then stands. The fuzzer needs it, as it kills an
// input that runs for 10s.
func RunWithin(k Knobs, budget time.Duration) (rep *Report) {
	start := time.Now()
	k = k.resolve()
	s := newSim(k)
	if budget > 0 {
		s.deadline = start.Add(budget)
	}
	defer s.close()
	defer func() {
		if r := recover(); r != nil {
			s.violate("panic", nil, "", nil, "%v\n%s", r, debug.Stack())
		}
		s.rep.VirtualTime = s.clock.Now().Sub(epoch)
		s.rep.ENOSPC = int(s.full.hits.Load())
		s.rep.Wall = time.Since(start)
		rep = s.rep
	}()
	s.run()
	return s.rep
}

func seeded(seed, stream uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, stream)) }

func newSim(k Knobs) *Sim {
	s := &Sim{
		k: k, rep: &Report{Knobs: k, Tolerated: map[Known]int{}}, clock: &vclock{},
		wrng: seeded(k.Seed, 1), frng: seeded(k.Seed, 2), crng: seeded(k.Seed, 3),
		byMsg: map[string]*simEvent{}, keyEvents: map[string][]*simEvent{}, cured: map[string]bool{},
		flipped: map[uint64]bool{}, wrongLost: map[uint64]bool{},
	}
	s.full = &fullDisk{clock: s.clock}
	s.clock.set(epoch)
	er := seeded(k.Seed, 4)
	seg := []int64{4096, 16 << 10, 64 << 10}[er.IntN(3)]
	if k.SegmentBytesMax != 0 {
		seg = k.SegmentBytesMax
	}
	window := 24 * time.Hour
	if er.IntN(3) == 0 {
		window = 10 * time.Minute // generations expire within the run
	}
	s.dedupMust = window - window/4 - time.Second
	s.eopts = engine.Options{
		Dir: "/sluice", Now: s.clock.Now, ReclaimInterval: -1, SegmentBytesMax: seg, Logger: simLogger(),
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20, DedupWindow: window,
		// No background index batches: when one finished would decide what
		// a crash keeps (its ingestion syncs the index), and runs must
		// repeat exactly. Reclaim and Close write the keys synchronously.
		DedupIndexBatchKeys: 1 << 30, DedupIndexInterval: 1 << 62,
		// No disk loop either: it ticks in real time. The next append
		// repairs a failed segment write; what only the loop clears (the
		// low-space flag of an engine opened on a full disk) lasts until
		// the next reopen (see appendRefused).
		DiskCheckInterval: 1 << 62,
	}
	if k.Mode&ModePoison != 0 {
		s.poisonRate = 0.005 + er.Float64()*0.06
	}
	s.poisonSalt = er.Uint64()
	return s
}

func (s *Sim) now() time.Time { return s.clock.Now() }

func (s *Sim) run() {
	s.fs = crashfs.New()
	if !s.openEngine(nil) {
		return
	}
	for i := range s.k.Dests {
		d := newDest(s, i)
		s.dests = append(s.dests, d)
		c := d.cfg
		s.tracef("op setup %s: ordering %v, sources %v, events %v, batch %d, concurrency %d, window %d/%dB, flush %v, rate %v, policy %+v, faults %+v",
			d.name, c.Ordering, c.Sources, c.Events, c.BatchSize, c.ConcurrencyMax, c.WindowEvents, c.WindowBytes, c.FlushInterval, c.RateLimit, c.Policy, d.spec)
	}
	s.tracef("op setup engine: segment %d bytes, dedup window %v, poison rate %.3f", s.eopts.SegmentBytesMax, s.eopts.DedupWindow, s.poisonRate)
	for _, d := range s.dests {
		// Consumers before any append: a new consumer starts at the end.
		if !s.startDest(d) {
			return
		}
	}
	script := s.script()
	for i, o := range script {
		s.step = i + 1
		s.runUntil(s.now().Add(o.dt))
		s.exec(o)
		if s.stopped || s.overBudget() {
			return
		}
	}
	s.step = len(script) + 1
	if s.liveness() {
		s.finalChecks()
	}
}

func (s *Sim) close() {
	for _, d := range s.dests {
		if d.m != nil {
			d.m.Close()
			d.m = nil
		}
	}
	if s.eng != nil {
		s.eng.Close()
		s.eng = nil
	}
}

// engineOptions are the engine's options on the current file system,
// behind the full-disk injector in ModeDiskFull.
func (s *Sim) engineOptions() engine.Options {
	o := s.eopts
	o.FS = s.fs
	if s.k.Mode&ModeDiskFull != 0 {
		o.FS = errorfs.Wrap(s.fs, s.full)
	}
	return o
}

// openEngine opens the engine. After index damage (f.index) Open may
// refuse with ErrIndexDamaged: then Recover rebuilds the index from the
// segment files, as `sluice recover` does, and Open runs again. While the
// disk is full Open may fail (it starts a fresh active segment): the
// operator waits for the stretch to end and tries again.
func (s *Sim) openEngine(f *storageFault) bool {
	damaged := f != nil && f.index != indexIntact
	recover, recovered := false, false
	for attempt := 0; attempt < 8; attempt++ {
		o := s.engineOptions()
		if recover {
			// An operator runs `sluice recover` until it succeeds (after a
			// failure too: never `sluice serve` on a half-built index).
			if s.recoverIndex(o) {
				recover, recovered = false, true
			}
			continue
		}
		eng, err := s.openCatching(o, f)
		switch {
		case err == nil:
			s.eng = eng
			s.openedFull = s.full.on(s.now())
			return true
		case errors.Is(err, errOpenPanicked):
			// The process died: what Open synced stays, its lock goes.
			// The panicked Open had dropped the missing segments from the
			// manifest: their losses are not always listed after that
			// (seed 135 with mode=0x87ff), so their stragglers count as
			// gone with the bug.
			s.fs = s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
			s.entriesLostBelow = max(s.entriesLostBelow, s.reclaimedBelow)
			continue
		case errors.Is(err, engine.ErrIndexDamaged) && damaged && !recovered:
			s.tracef("open refused after index damage (%v): recover", err)
			recover = true
			continue
		case s.full.on(s.now()):
			s.waitForRoom(err)
			continue
		}
		s.violate("durability", nil, "", nil, "cannot open the engine: %v", err)
		s.stopped = true
		return false
	}
	s.violate("durability", nil, "", nil, "cannot open the engine after 8 attempts")
	s.stopped = true
	return false
}

// recoverIndex runs engine.Recover with the destinations' names and
// reports whether it succeeded. While the disk is full it fails: the
// operator waits for room.
func (s *Sim) recoverIndex(o engine.Options) bool {
	names := make([]string, len(s.dests))
	for i, d := range s.dests {
		names[i] = d.name
	}
	rep, err := engine.Recover(o, names)
	s.tracef("recover: err %v; index kept %v, %d segments %d-%d, lost %v, set aside %v, consumers %+v, entries kept %d lost %d",
		err, rep.IndexKept, rep.Segments, rep.FirstSeq, rep.LastSeq, rep.Lost, rep.SetAside, rep.Consumers, rep.EntriesKept, rep.EntriesLost)
	if !rep.IndexKept {
		// The old index was set aside (or unreadable): its entries and
		// straggler copies are gone, even if this attempt failed and the
		// next one keeps the new index it started.
		s.entriesLostBelow = max(s.entriesLostBelow, s.reclaimedBelow)
	}
	if file, ok := spareRefused(err); ok && s.tolerate(KnownRecoverSpare) {
		s.tracef("recover refused a recycled spare file (BUG-RECOVER-SPARE, tolerated): the operator moves %s out of the log directory", file)
		merr := s.fs.MkdirAll("/sluice/moved", 0o755)
		if merr == nil {
			merr = s.fs.Rename(s.fs.PathJoin("/sluice/log", file), s.fs.PathJoin("/sluice/moved", file))
		}
		if merr != nil {
			s.violate("harness", nil, "", nil, "cannot move %s aside: %v", file, merr)
		}
		return false
	}
	switch {
	case err == nil:
		s.rep.Recovers++
		if rep.FirstSeq > s.reclaimedBelow && rep.FirstSeq > s.asideBelow {
			s.asideBelow = rep.FirstSeq
			s.tracef("recover set aside records %d-%d that were not reclaimed (BUG-RECOVER-ASIDE)", s.reclaimedBelow, rep.FirstSeq-1)
		}
		return true
	case s.full.on(s.now()):
		s.waitForRoom(err)
		return false
	}
	s.violate("durability", nil, "", nil, "cannot recover the index: %v", err)
	s.stopped = true
	return false
}

// waitForRoom moves the clock to the end of the full disk's stretch (the
// machines are down meanwhile).
func (s *Sim) waitForRoom(err error) {
	end := time.Unix(0, s.full.to.Load())
	s.tracef("failed while the disk is full (%v): wait %v for room", err, end.Sub(s.now()))
	s.clock.set(end)
}

// startDest gets the destination's consumer and builds its machine from
// the consumer's stored state.
func (s *Sim) startDest(d *dest) bool {
	cons, err := s.eng.Consumer(d.name)
	if err != nil {
		s.violate("harness", d, "", nil, "cannot get consumer: %v", err)
		s.stopped = true
		return false
	}
	m, err := router.NewMachine(d.cfg, s.eng, cons)
	if err != nil {
		s.violate("router", d, "", nil, "cannot build machine: %v", err)
		s.stopped = true
		return false
	}
	d.cons, d.m, d.stepErr = cons, m, false
	m.Hooks.Completed = func(disp *router.Dispatch) { s.noteAborts(d, d.answeredFlight(disp)) }
	d.lastAborted = m.Counters().Aborted
	if d.paused {
		m.Pause()
	}
	return true
}

// runUntil moves virtual time to t, stepping the machines whenever one may
// have work and completing requests as their responses arrive.
func (s *Sim) runUntil(t time.Time) {
	for !s.stopped {
		s.stepAll()
		next := s.nextTime()
		if next.After(t) {
			break
		}
		s.clock.set(next)
		s.completeDue()
		s.rep.Iterations++
		if s.rep.Iterations%1024 == 0 && s.overBudget() {
			return
		}
		if s.rep.Iterations > iterationsMax {
			s.violate("liveness", nil, "", nil, "more than %d loop iterations", iterationsMax)
			s.stopped = true
		}
	}
	if t.After(s.now()) {
		s.clock.set(t)
	}
}

// nextTime is the earliest response or machine wake-up.
func (s *Sim) nextTime() time.Time {
	now := s.now()
	next := now.Add(time.Hour)
	for _, d := range s.dests {
		if d.m == nil {
			continue
		}
		next = minTime(next, maxTime(d.m.NextWake(now), now.Add(wakeMin)))
		for _, f := range d.flights {
			next = minTime(next, f.done)
		}
	}
	return next
}

func (s *Sim) stepAll() {
	for _, d := range s.dests {
		if d.m != nil {
			s.stepDest(d)
		}
	}
}

func (s *Sim) stepDest(d *dest) {
	now := s.now()
	done := make([]*router.Dispatch, len(d.answered))
	for i, f := range d.answered {
		done[i] = f.disp
	}
	ds, err := d.m.Step(now, done)
	d.answered = nil
	if err != nil && !d.stepErr {
		d.stepErr = true
		s.violate("router", d, "", nil, "machine stopped: %v", err)
	}
	s.noteAborts(d, nil) // events aborted in Step are final before what it sends
	for _, disp := range ds {
		s.dispatch(d, disp)
	}
	s.checkBounds(d)
	// A machine that keeps asking to be woken almost at once and then
	// sends nothing spins Router.Run's loop (a busy wait).
	if len(ds) > 0 || d.m.NextWake(now).After(now.Add(spinWake)) {
		d.spins = 0
	} else if d.spins++; d.spins == spinsMax {
		s.violate("liveness", d, "", nil, "busy wait: the machine asked %d times in a row to be woken within %v and sent nothing: %s", spinsMax, spinWake, s.describe(d))
		s.stopped = true
	}
}

// completeDue delivers every response due by now, earliest first.
func (s *Sim) completeDue() {
	now := s.now()
	for {
		var fd *dest
		var ff *flight
		for _, d := range s.dests {
			for _, f := range d.flights {
				if !f.done.After(now) && (ff == nil || f.done.Before(ff.done) || f.done.Equal(ff.done) && f.id < ff.id) {
					fd, ff = d, f
				}
			}
		}
		if ff == nil {
			return
		}
		s.complete(fd, ff)
	}
}

var errOpenPanicked = errors.New("engine.Open panicked")

// openCatching is engine.Open; after index damage, while KnownAdoptPanic
// is tolerated, a panic in Open is the process dying (errOpenPanicked).
func (s *Sim) openCatching(o engine.Options, f *storageFault) (eng *engine.Engine, err error) {
	if f == nil || f.index == indexIntact || Tolerated&KnownAdoptPanic == 0 || s.k.Strict&KnownAdoptPanic != 0 {
		return engine.Open(o)
	}
	defer func() {
		if r := recover(); r != nil {
			s.tolerate(KnownAdoptPanic)
			s.tracef("open panicked after index damage (BUG-ADOPT-PANIC, tolerated): %v", r)
			eng, err = nil, fmt.Errorf("%w: %v", errOpenPanicked, r)
		}
	}()
	return engine.Open(o)
}

// crash is a power loss: the file system keeps only what was synced, the
// processes are gone, requests in flight may or may not have arrived.
//
// A storage fault (f, may be nil) damages the clone before the reopen.
func (s *Sim) crash(f *storageFault) {
	clone := s.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	for _, d := range s.dests {
		for _, f := range d.flights {
			for _, seq := range f.seqs {
				d.ambiguous[seq] = true
			}
			if f.deliver {
				if s.crng.IntN(2) == 0 {
					s.tracef("crash: %s request %d arrived %s", d.name, f.id, s.fmtSeqs(f.seqs))
					s.record(d, f)
				}
			}
		}
		d.dropFlights()
		d.m.Close()
		d.m = nil
	}
	s.eng.Close() // on the old file system: the clone does not see it
	s.eng = nil
	s.crashes++
	s.rep.Crashes++
	s.fs = clone
	s.reopen("crash", f)
}

// restart is a graceful shutdown as Router.Run does it (stop dispatching,
// wait for the requests in flight, record their outcome) and a restart,
// with a storage fault (f, may be nil) between the two.
func (s *Sim) restart(f *storageFault) {
	for _, d := range s.dests {
		d.m.Pause()
	}
	deadline := s.now().Add(time.Hour)
	for s.inFlight() > 0 && !s.stopped && s.now().Before(deadline) {
		s.runUntil(s.nextTime())
	}
	if s.inFlight() > 0 && !s.stopped {
		s.violate("liveness", nil, "", nil, "requests still in flight an hour after shutdown began")
	}
	for _, d := range s.dests {
		d.m.Stop(s.now()) // record what the last responses settled, as Router.Run does
		d.dropFlights()
		d.m.Close()
		d.m = nil
	}
	if err := s.eng.Close(); err != nil {
		if s.full.on(s.now()) {
			s.tracef("close failed while the disk is full: %v", err)
		} else {
			s.violate("durability", nil, "", nil, "cannot close the engine: %v", err)
		}
	}
	s.eng = nil
	s.restarts++
	s.rep.Restarts++
	s.reopen("restart", f)
	for _, d := range s.dests {
		d.lastActive = s.now()
	}
}

func (s *Sim) inFlight() int {
	n := 0
	for _, d := range s.dests {
		n += len(d.flights) + len(d.answered)
	}
	return n
}

// reopen applies the storage fault (if any) to s.fs, opens the engine on
// it, checks that every acknowledged event survived, and rebuilds the
// machines from their consumers.
func (s *Sim) reopen(why string, f *storageFault) {
	scan := true
	if f != nil {
		if f.index != indexIntact {
			s.damageIndex(f.index)
			why = "crash with index damage"
			s.tracef("index damage: cursors, dead letters and failed entries may revert: every event delivered so far may be delivered again (as after any crash), dead letters may be aborted again")
		}
		s.applyFlips(f.flips)
		scan = !f.noScan
	}
	if s.k.Trace {
		s.tracef("files before the reopen: %s", s.listFiles())
	}
	if !s.openEngine(f) {
		return
	}
	if s.k.Trace {
		s.tracef("files after the reopen: %s; lost %v", s.listFiles(), s.eng.LostRanges())
	}
	if last := s.eng.LastSeq(); f != nil && f.index != indexIntact && last < s.lastAcked && s.tolerate(KnownSeqReuse) {
		s.rep.Stopped = fmt.Sprintf("BUG-SEQ-REUSE at step %d: after index damage the log ends at %d, the last acknowledged event is %d", s.step, last, s.lastAcked)
		s.tracef("%s (tolerated): the run stops", s.rep.Stopped)
		s.stopped = true
		return
	}
	s.checkDurable(why, scan)
	for _, d := range s.dests {
		if !s.startDest(d) {
			return
		}
		if s.k.Trace {
			s.tracef("reopened %s: %s", d.name, s.describe(d))
		}
		d.resetAfterRestart()
		if err := s.loadAborted(d); err != nil {
			s.violate("harness", d, "", nil, "cannot list aborted entries: %v", err)
		}
	}
}

// liveness stops the faults and runs until every destination is idle. It
// reports whether they all got there. Without faults a destination that
// sends nothing for stallAfter while it has work is stuck.
func (s *Sim) liveness() bool {
	s.faultsOff = true
	s.full.to.Store(0) // the disk has room again
	for _, d := range s.dests {
		d.paused = false
		d.m.Resume()
		d.lastActive = s.now()
	}
	s.tracef("op liveness: faults off, all resumed")
	deadline := s.now().Add(livenessMax)
	for !s.stopped {
		if s.idle() {
			return true
		}
		for _, d := range s.dests {
			if !s.idleDest(d) && s.now().Sub(d.lastActive) >= stallAfter {
				s.violate("liveness", d, "", nil, "no request for %v with work left and no faults: %s", stallAfter, s.describe(d))
				return false
			}
		}
		if !s.now().Before(deadline) {
			s.violate("liveness", nil, "", nil, "not idle after %v without faults", livenessMax)
			return false
		}
		s.runUntil(s.now().Add(time.Second))
	}
	return false
}

// idle reports whether nothing is left to do anywhere.
func (s *Sim) idle() bool {
	for _, d := range s.dests {
		if !s.idleDest(d) {
			return false
		}
	}
	return true
}

// idleDest: nothing in flight or in the window, the cursor at the end, no
// failed or skipped entries and no barrier (a key's last drain may still
// be queued in memory: the machine gets to it at a later Step).
func (s *Sim) idleDest(d *dest) bool {
	d.m.Flush(s.now())
	cur, _ := d.cons.Cursor()
	if len(d.flights) > 0 || len(d.answered) > 0 || d.m.InFlight() > 0 || d.m.WindowEvents() > 0 || !s.cursorAtEnd(cur, false) ||
		d.cons.Count(engine.StateFailed) > 0 || d.cons.Count(engine.StateSkipped) > 0 {
		return false
	}
	barriers := 0
	d.cons.Barriers(func([]byte, uint64) error { barriers++; return nil })
	return barriers == 0
}

// cursorAtEnd reports whether a consumer's cursor is at the end of the
// log: past the last seq, or (KnownLostTail, while tolerated, counted when
// count is set) before nothing but lost seqs.
func (s *Sim) cursorAtEnd(cur uint64, count bool) bool {
	last := s.eng.LastSeq()
	if cur == last+1 {
		return true
	}
	if cur > last || len(s.flipped) == 0 || !s.isTolerated(KnownLostTail) || !s.reportedLost(cur, last) {
		return false
	}
	if count {
		s.tolerate(KnownLostTail)
	}
	return true
}

func (s *Sim) describe(d *dest) string {
	cur, _ := d.cons.Cursor()
	return fmt.Sprintf("cursor %d of %d, in flight %d (sim %d), window %d, failed %d, skipped %d, aborted %d, breaker %v, counters %+v",
		cur, s.eng.LastSeq()+1, d.m.InFlight(), len(d.flights), d.m.WindowEvents(), d.cons.Count(engine.StateFailed),
		d.cons.Count(engine.StateSkipped), d.cons.Count(engine.StateAborted), d.m.Breaker(), d.m.Counters())
}

// droppedByRecover reports whether ev may be gone with a damaged index or
// a Recover's set-aside files while the known bugs that do it are
// tolerated (counting them when count is set): its straggler copy lived
// in a lost index (KnownStragglerLoss), or Recover set its file aside
// (KnownRecoverAside).
func (s *Sim) droppedByRecover(seq uint64, count bool) bool {
	check := s.isTolerated
	if count {
		check = s.tolerate
	}
	return seq < s.entriesLostBelow && check(KnownStragglerLoss) || seq < s.asideBelow && check(KnownRecoverAside)
}

func (s *Sim) isTolerated(k Known) bool { return Tolerated&k != 0 && s.k.Strict&k == 0 }

// tolerate reports whether a known bug is tolerated in this run, and
// counts it.
func (s *Sim) tolerate(k Known) bool {
	if Tolerated&k == 0 || s.k.Strict&k != 0 {
		return false
	}
	s.rep.Tolerated[k]++
	return true
}

func (s *Sim) violate(kind string, d *dest, key string, seqs []uint64, format string, args ...any) {
	v := Violation{Kind: kind, Step: s.step, At: s.now().Sub(epoch), Key: key, Seqs: slices.Clone(seqs), Msg: fmt.Sprintf(format, args...)}
	if d != nil {
		v.Dest = d.name
	}
	if len(s.rep.Violations) < violationsMax {
		s.rep.Violations = append(s.rep.Violations, v)
	} else {
		s.stopped = true
	}
	s.tracef("! %s", v)
}

func (s *Sim) tracef(format string, args ...any) {
	if s.k.Trace {
		s.rep.Trace = append(s.rep.Trace, fmt.Sprintf("%10.6fs ", s.now().Sub(epoch).Seconds())+fmt.Sprintf(format, args...))
	}
}

// fmtSeqs renders events as "[#seq:key ...]" for the trace.
func (s *Sim) fmtSeqs(seqs []uint64) string {
	b := []byte{'['}
	for i, q := range seqs {
		if i > 0 {
			b = append(b, ' ')
		}
		key := "?"
		if ev := s.event(q); ev != nil {
			key = ev.key
		}
		b = fmt.Appendf(b, "#%d:%s", q, key)
	}
	return string(append(b, ']'))
}

func (s *Sim) event(seq uint64) *simEvent {
	if seq == 0 || seq > uint64(len(s.events)) {
		return nil
	}
	return s.events[seq-1]
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
