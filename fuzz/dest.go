package fuzz

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

var (
	sources = []string{"web", "ios", "server"}
	types   = []string{"track", "identify", "page", "screen", "group", "alias"}

	errTimeout = errors.New("simulated timeout: no response")
	errConn    = errors.New("simulated connection refused")
)

// dest is one destination: its router machine, the simulated endpoint
// behind it, and what the checker knows about its deliveries.
type dest struct {
	name    string
	cfg     router.Config
	spec    faultSpec
	m       *router.Machine
	cons    *engine.Consumer
	paused  bool
	stepErr bool
	spins   int // turns in a row woken at once with nothing sent
	flights []*flight
	// answered are responses that arrived, in arrival order, for the
	// machine's next Step (it applies them before anything else).
	answered []*flight
	outages  []span
	sources  map[string]bool // nil: all
	types    map[string]bool // nil: all
	okCount  int             // successful requests, for the canaries
	// lastActive is the last dispatch or response, for stall detection;
	// throttledUntil the end of the last 429's Retry-After.
	lastActive, throttledUntil time.Time

	// lastAborted is the machine's Aborted counter after the last look:
	// a rise while Step applies the response to a one-event request means
	// that event is aborted (final), even before its entry reaches the
	// index.
	lastAborted uint64

	delivered    map[uint64]int // times received
	firstCrash   map[uint64]int // crashes before the first delivery
	firstRestart map[uint64]int // graceful restarts before the first delivery
	ambiguous    map[uint64]bool
	knownAborted map[uint64]bool
	replayed     map[uint64]bool
	soloFail     map[uint64]int // retryable failures of one-event requests
	// pendingFail is when an event's latest lone failure was seen, until
	// the destination delivers a request sent after it (then it counts in
	// confirmedFail, the failures the router may charge) or the event
	// fails again.
	pendingFail   map[uint64]time.Time
	confirmedFail map[uint64]int
	solo4xx       map[uint64]int32 // refusals of one-event requests
	keyOut        map[string]int   // requests in flight per key (replays aside)
	keyPtr        map[string]int   // per key: events before it are all delivered or replayed
	firstOrder    map[string][]uint64
}

// faultSpec is how a destination misbehaves, drawn per run.
type faultSpec struct {
	latMin, latSpread time.Duration
	pSlow             float64
	p5xx, pConn       float64
	pTimeout, p429    float64
	retryAfterMax     time.Duration
}

type span struct {
	from, to time.Time
	conn     bool // connection errors rather than 503s
}

// flight is a request in flight: its outcome is decided when it reaches
// the destination, delivered (to the machine and the checker) at done.
type flight struct {
	id      uint64
	disp    *router.Dispatch
	seqs    []uint64
	start   time.Time
	done    time.Time
	res     router.Result
	deliver bool     // the destination keeps the events
	keys    []string // keys counted in dest.keyOut
}

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

func subset(r *rand.Rand, all []string) []string {
	var out []string
	for _, x := range all {
		if r.IntN(2) == 0 {
			out = append(out, x)
		}
	}
	if len(out) == 0 {
		out = append(out, all[r.IntN(len(all))])
	}
	return out
}

// newDest draws a destination's configuration and faults from its own
// stream: everything is drawn whatever the mode, so that pinning a knob or
// dropping a mode changes nothing else.
func newDest(s *Sim, i int) *dest {
	r := seeded(s.k.Seed, 100+uint64(i))
	d := &dest{name: fmt.Sprintf("d%d", i)}
	d.resetTracking()
	cfg := router.Config{Name: d.name, Ordering: r.IntN(4) != 0, Clock: s.clock, Rand: seeded(s.k.Seed, 200+uint64(i)), Logger: discard}
	srcs, evs := subset(r, sources), subset(r, types)
	if r.IntN(3) == 0 {
		cfg.Sources = srcs
	}
	if r.IntN(3) == 0 {
		cfg.Events = evs
	}
	cfg.BatchSize = pick(r, 1, 1, 2, 5, 10, 20)
	cfg.ConcurrencyMax = pick(r, 1, 2, 4, 8, 16)
	cfg.WindowEvents = max(cfg.BatchSize, pick(r, 8, 50, 300, 10_000))
	if r.IntN(4) == 0 {
		cfg.WindowBytes = 8 << 10
	}
	cfg.FlushInterval = pick(r, time.Millisecond, 5*time.Millisecond, 50*time.Millisecond)
	cfg.Timeout = time.Duration(2+r.IntN(8)) * time.Second
	rate := float64(50 + r.IntN(500))
	if r.IntN(5) == 0 {
		cfg.RateLimit = rate
	}
	cfg.Policy = router.Policy{
		MinAttempts: pick(r, 1, 2, 3, 5), MaxAge: 72 * time.Hour,
		BackoffInitial: 10 * time.Millisecond, BackoffMax: pick(r, 200*time.Millisecond, time.Second),
	}
	if r.IntN(3) == 0 {
		cfg.Policy.FailureMin, cfg.Policy.HealthWindow = 3, 10
	}
	maxAge := time.Duration(2+r.IntN(20)) * time.Minute
	if s.k.Mode&ModeExpiry != 0 {
		cfg.Policy.MaxAge = maxAge
	}
	d.spec = drawFaults(r, s.k.Mode)
	if s.k.BatchSize > 0 {
		cfg.BatchSize = s.k.BatchSize
		cfg.WindowEvents = max(cfg.WindowEvents, cfg.BatchSize)
	}
	if s.k.WindowEvents > 0 {
		cfg.WindowEvents = max(s.k.WindowEvents, cfg.BatchSize)
	}
	if s.k.ConcurrencyMax > 0 {
		cfg.ConcurrencyMax = s.k.ConcurrencyMax
	}
	switch s.k.Canary {
	case CanarySwap:
		cfg.Ordering = true // the swap breaks per-key order
	case CanaryLoss:
		cfg.Ordering = false // only the end-state check can see the loss
	}
	d.cfg = cfg
	if len(cfg.Sources) > 0 {
		d.sources = setOf(cfg.Sources)
	}
	if len(cfg.Events) > 0 {
		d.types = setOf(cfg.Events)
	}
	return d
}

func drawFaults(r *rand.Rand, mode Mode) faultSpec {
	f := faultSpec{
		latMin: time.Duration(1+r.IntN(20)) * time.Millisecond, latSpread: time.Duration(r.IntN(50)+1) * time.Millisecond,
		pSlow: r.Float64() * 0.05, p5xx: r.Float64() * 0.1, pConn: r.Float64() * 0.03,
		pTimeout: r.Float64() * 0.05, p429: r.Float64() * 0.05, retryAfterMax: time.Duration(r.IntN(3000)) * time.Millisecond,
	}
	if mode&ModeTransient == 0 {
		f.p5xx, f.pConn = 0, 0
	}
	if mode&ModeAmbiguous == 0 {
		f.pTimeout = 0
	}
	if mode&ModeThrottle == 0 {
		f.p429 = 0
	}
	return f
}

func setOf(xs []string) map[string]bool {
	m := map[string]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func (d *dest) resetTracking() {
	d.delivered, d.firstCrash, d.firstRestart = map[uint64]int{}, map[uint64]int{}, map[uint64]int{}
	d.ambiguous, d.knownAborted, d.replayed = map[uint64]bool{}, map[uint64]bool{}, map[uint64]bool{}
	d.soloFail, d.solo4xx = map[uint64]int{}, map[uint64]int32{}
	d.pendingFail, d.confirmedFail = map[uint64]time.Time{}, map[uint64]int{}
	d.keyOut, d.keyPtr, d.firstOrder = map[string]int{}, map[string]int{}, map[string][]uint64{}
}

// resetAfterRestart forgets what died with the process: requests in flight
// and aborts that were only in the machine's memory (the durable ones are
// reloaded by loadAborted).
func (d *dest) resetAfterRestart() {
	d.dropFlights()
	d.knownAborted = map[uint64]bool{}
	d.throttledUntil = time.Time{} // the pause lived in the machine's memory
}

func (d *dest) dropFlights() {
	d.flights, d.answered = nil, nil
	clear(d.keyOut)
}

// answeredFlight returns the answered flight of disp.
func (d *dest) answeredFlight(disp *router.Dispatch) *flight {
	for _, f := range d.answered {
		if f.disp == disp {
			return f
		}
	}
	return nil
}

// passes reports whether the destination's filters accept the event.
func (d *dest) passes(ev *simEvent) bool {
	return (d.sources == nil || d.sources[ev.source]) && (d.types == nil || d.types[ev.typ])
}

func (d *dest) inOutage(t time.Time) (span, bool) {
	for _, o := range d.outages {
		if !t.Before(o.from) && t.Before(o.to) {
			return o, true
		}
	}
	return span{}, false
}

// dispatch is the destination receiving a request: it checks what the
// router sent, then decides the outcome and when the response arrives.
func (s *Sim) dispatch(d *dest, disp *router.Dispatch) {
	s.rep.Requests++
	d.lastActive = s.now()
	f := &flight{id: s.nextFlight, disp: disp, start: s.now()}
	s.nextFlight++
	if len(disp.Events) == 0 {
		s.violate("router", d, "", nil, "dispatched an empty request")
	}
	for _, ev := range disp.Events {
		f.seqs = append(f.seqs, ev.Seq)
	}
	s.checkDispatch(d, f)
	s.outcome(d, f)
	d.flights = append(d.flights, f)
	s.tracef("send %s req %d %s probe=%v -> status %d err=%v delivers=%v at +%v", d.name, f.id, s.fmtSeqs(f.seqs),
		disp.Probe, f.res.Status, f.res.Err, f.deliver, f.done.Sub(f.start))
}

// outcome draws the response: outages first, then throttling and the
// per-request faults, then poison events (refused whole: the router must
// isolate them), else success. Timeouts are ambiguous: half of them did
// reach the destination.
func (s *Sim) outcome(d *dest, f *flight) {
	sp, now, r := &d.spec, f.start, s.frng
	lat := sp.latMin + time.Duration(r.Int64N(int64(sp.latSpread)))
	slow, u, coin := r.Float64() < sp.pSlow, r.Float64(), r.IntN(2) == 0
	if slow && !s.faultsOff {
		lat = time.Duration(r.Int64N(int64(2 * d.cfg.Timeout)))
	}
	res, deliver := router.Result{Status: 200}, true
	o, down := d.inOutage(now)
	faults := !s.faultsOff
	switch {
	case faults && down:
		res, deliver = router.Result{Status: 503, Body: []byte("outage")}, false
		if o.conn {
			res = router.Result{Err: errConn}
		}
	case faults && u < sp.p429:
		res, deliver = router.Result{Status: 429, RetryAfter: time.Duration(r.Int64N(int64(sp.retryAfterMax) + 1))}, false
	case faults && u < sp.p429+sp.p5xx:
		res, deliver = router.Result{Status: pick(r, 500, 502, 503), Body: []byte("server error")}, false
	case faults && u < sp.p429+sp.p5xx+sp.pConn:
		res, deliver = router.Result{Err: errConn}, false
	case faults && u < sp.p429+sp.p5xx+sp.pConn+sp.pTimeout:
		res, deliver, lat = router.Result{Err: errTimeout, Ambiguous: true}, coin, d.cfg.Timeout
	case s.poisoned(f.seqs):
		res, deliver = router.Result{Status: pick(r, 400, 422), Body: []byte(`{"error":"invalid event"}`)}, false
	}
	if lat >= d.cfg.Timeout {
		// Too slow: the router's Send gives up at Timeout.
		if s.k.Mode&ModeAmbiguous != 0 && faults {
			res, deliver = router.Result{Err: errTimeout, Ambiguous: true}, deliver && coin
			lat = d.cfg.Timeout
		} else {
			lat = d.cfg.Timeout - time.Millisecond
		}
	}
	f.res, f.deliver, f.done = res, deliver, now.Add(lat)
}

// poisoned reports whether the request holds an event the destination
// refuses (decided by messageId, so a retry is refused again).
func (s *Sim) poisoned(seqs []uint64) bool {
	for _, q := range seqs {
		if ev := s.event(q); ev != nil && s.isPoison(ev.msgID) {
			return true
		}
	}
	return false
}

func (s *Sim) isPoison(msgID string) bool {
	if s.poisonRate == 0 || s.cured[msgID] {
		return false
	}
	h := s.poisonSalt
	for i := 0; i < len(msgID); i++ {
		h = (h ^ uint64(msgID[i])) * 0x100000001b3
	}
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 32
	return float64(h%1_000_000) < s.poisonRate*1_000_000
}

// complete is a response arriving: what the destination kept is recorded
// (it got the request before the router hears back), and the response
// waits for the machine's next Step, as a result waits for Router.Run's.
func (s *Sim) complete(d *dest, f *flight) {
	i := slices.Index(d.flights, f)
	d.flights = slices.Delete(d.flights, i, i+1)
	d.lastActive = s.now()
	s.releaseKeys(d, f)
	if f.deliver {
		s.record(d, f)
	}
	if f.res.Ambiguous {
		for _, q := range f.seqs {
			d.ambiguous[q] = true
		}
	}
	if f.res.Status == 429 {
		// The latest answer wins (as in the router): a shorter Retry-After
		// after a longer one shortens the pause.
		d.throttledUntil = s.now().Add(f.res.RetryAfter)
	}
	if f.res.Err == nil && f.res.Status >= 200 && f.res.Status < 300 {
		for q, at := range d.pendingFail {
			if !f.start.Before(at) && !slices.Contains(f.seqs, q) {
				d.confirmedFail[q]++
				delete(d.pendingFail, q)
			}
		}
	}
	if len(f.seqs) == 1 {
		q := f.seqs[0]
		switch st := f.res.Status; {
		case f.res.Err != nil || st >= 500 || st == 408:
			d.soloFail[q]++
			d.pendingFail[q] = s.now()
		case st >= 400 && st < 500 && st != 429:
			d.solo4xx[q] = int32(st)
		}
	}
	s.tracef("done %s req %d %s status %d err=%v", d.name, f.id, s.fmtSeqs(f.seqs), f.res.Status, f.res.Err)
	f.disp.Result = f.res
	d.answered = append(d.answered, f)
}

// noteAborts turns a rise of the machine's Aborted counter into knowledge:
// while Step applies a response (f) only the request's single event can
// have been aborted.
func (s *Sim) noteAborts(d *dest, f *flight) {
	n := d.m.Counters().Aborted
	if n == d.lastAborted {
		return
	}
	if f == nil {
		// Aborted when its retry came due (expired, or its last failure
		// charged): the dead letter is stored by now.
		if err := s.loadAborted(d); err != nil {
			s.violate("harness", d, "", nil, "cannot list aborted entries: %v", err)
		}
	} else {
		if len(f.seqs) == 1 && n == d.lastAborted+1 {
			d.knownAborted[f.seqs[0]] = true
			s.tracef("aborted %s %s", d.name, s.fmtSeqs(f.seqs))
		} else {
			s.violate("router", d, "", f.seqs, "%d events aborted by the response to a request of %d events", n-d.lastAborted, len(f.seqs))
		}
	}
	d.lastAborted = n
}

// record is the destination keeping a request's events, in request order
// (a canary may break that on purpose).
func (s *Sim) record(d *dest, f *flight) {
	seqs := f.seqs
	switch s.k.Canary {
	case CanarySwap:
		seqs = swapSameKey(s, seqs)
	case CanaryLoss:
		if d.okCount++; d.okCount%20 == 0 {
			return
		}
	case CanaryDup:
		if d.okCount++; d.okCount%20 == 0 {
			s.recordSeqs(d, seqs)
		}
	}
	s.recordSeqs(d, seqs)
}

// swapSameKey swaps the first two events of one key (the canary's bug).
func swapSameKey(s *Sim, seqs []uint64) []uint64 {
	out := slices.Clone(seqs)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			a, b := s.event(out[i]), s.event(out[j])
			if a != nil && b != nil && a.key == b.key {
				out[i], out[j] = out[j], out[i]
				return out
			}
		}
	}
	return out
}

func (s *Sim) recordSeqs(d *dest, seqs []uint64) {
	for _, q := range seqs {
		ev := s.event(q)
		if ev == nil {
			continue // reported at dispatch
		}
		s.rep.Deliveries++
		if d.delivered[q] > 0 {
			s.rep.Redeliveries++
			s.checkDup(d, ev)
			d.delivered[q]++
			continue
		}
		if d.cfg.Ordering && !d.replayed[q] {
			if bad := s.unsettledBefore(d, ev, nil); len(bad) > 0 {
				s.violate("order", d, ev.key, append(bad, q), "event %d delivered first while earlier events %v of its key are neither delivered nor aborted", q, bad)
			}
		}
		d.delivered[q] = 1
		d.firstCrash[q] = s.crashes
		d.firstRestart[q] = s.restarts
		d.firstOrder[ev.key] = append(d.firstOrder[ev.key], q)
	}
}

// releaseKeys undoes checkDispatch's per-key count.
func (s *Sim) releaseKeys(d *dest, f *flight) {
	if !d.cfg.Ordering {
		return
	}
	for _, k := range f.keys {
		if d.keyOut[k]--; d.keyOut[k] <= 0 {
			delete(d.keyOut, k)
		}
	}
}

// batchKeys are the distinct keys of a request's events, replays aside.
func (s *Sim) batchKeys(d *dest, seqs []uint64) []string {
	var keys []string
	for _, q := range seqs {
		if ev := s.event(q); ev != nil && !d.replayed[q] && !slices.Contains(keys, ev.key) {
			keys = append(keys, ev.key)
		}
	}
	return keys
}
