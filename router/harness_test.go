package router

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/engine/crashfs"
)

// The harness of the scripted scenarios for core (core_test.go): the real
// engine on an in-memory FS, a fake clock, a seeded Rand and a scripted
// destination. It drives the machine with Machine.Step, the step Router.Run
// and the simulator run (results applied, fill, poll, advance), observing
// it through Machine.Hooks, and waits for a result or NextWake in between.
// It checks, at every dispatch and at the end, the delivery guarantees:
// per-key order, nothing lost, outage attempts not charged.

var (
	epoch   = time.Unix(1_700_000_000, 0)
	discard = slog.New(slog.DiscardHandler)
)

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

// event is one appended event as the test knows it.
type event struct {
	seq        uint64
	key, msgID string
	source     string
	typ        string
	receivedAt int64
	pass       bool // accepted by the destination's filters
}

// delivery is one event received with success, in arrival order.
type delivery struct {
	seq        uint64
	key, msgID string
	at         time.Time
}

// send is one request the destination received.
type send struct {
	at     time.Time
	seqs   []uint64
	probe  bool
	entry  bool
	res    Result
	doneAt time.Time
}

type flight struct {
	d    *Dispatch
	s    *send
	done time.Time
}

type harness struct {
	t     *testing.T
	fs    crashfs.FS
	eng   *engine.Engine
	cons  *engine.Consumer
	cfg   Config
	m     *Machine
	c     *core // m.c
	clock *fakeClock

	// latency is how long each request takes (latencyFn, when set, picks
	// it per request).
	latency   time.Duration
	latencyFn func() time.Duration
	// respond decides a request's result when it arrives.
	respond func(h *harness, b *batch) Result
	// onSend and onComplete, when set, run after each dispatch and each
	// completion (scenario-specific checks).
	onSend     func(h *harness, b *batch, s *send)
	onComplete func(h *harness, b *batch, s *send)

	events   []*event
	bySeq    map[uint64]*event
	tries    map[uint64]int
	arrivals map[string][]uint64 // per key, first arrivals in order
	done     map[uint64]bool     // delivered with success
	dlv      []delivery
	sends    []*send
	flights  []flight
	// answered are the flights whose results arrived, for the next Step;
	// started is set once the machine made its first Step, sent when the
	// last Step sent something.
	answered      []flight
	started, sent bool
	abortSeen     map[uint64]bool // aborted (final) at some point
	replayed      map[uint64]bool
	unsure        map[uint64]bool // settled before a crash lost the record of it

	steps, idleSpins int
	maxInFlight      int
}

func openEngine(t *testing.T, fs vfs.FS) *engine.Engine {
	t.Helper()
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: fs, ReclaimInterval: -1, Logger: discard,
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	return eng
}

// newHarness opens an engine, creates the consumer (before any append: a
// new consumer starts at the log's end) and a core.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, clock: &fakeClock{now: epoch}, latency: 10 * time.Millisecond,
		bySeq: map[uint64]*event{}, tries: map[uint64]int{}, arrivals: map[string][]uint64{},
		done: map[uint64]bool{}, abortSeen: map[uint64]bool{}, replayed: map[uint64]bool{}, unsure: map[uint64]bool{}}
	if cfg.Name == "" {
		cfg.Name = "dest"
	}
	cfg.Logger, cfg.Clock = discard, h.clock
	cfg.Rand = rand.New(rand.NewPCG(1, 2))
	full, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = full
	h.fs = crashfs.New()
	h.eng = openEngine(t, h.fs)
	t.Cleanup(func() { h.eng.Close() })
	if h.cons, err = h.eng.Consumer(full.Name); err != nil {
		t.Fatal(err)
	}
	if err := h.startMachine(); err != nil {
		t.Fatal(err)
	}
	h.respond = func(*harness, *batch) Result { return Result{Status: 200} }
	return h
}

func (h *harness) now() time.Time { return h.clock.now }

type evOpt func(*engine.Record)

func withSource(s string) evOpt { return func(r *engine.Record) { r.Source = []byte(s) } }

func withType(s string) evOpt { return func(r *engine.Record) { r.Type = []byte(s) } }

func receivedAt(t time.Time) evOpt {
	return func(r *engine.Record) { r.ReceivedAt = t.UnixNano() }
}

// otherTrafficAfter adds an event of a new key each time the request with
// seq completes: the destination keeps delivering other users' events, the
// evidence that seq's failures are its own (a message problem).
func (h *harness) otherTrafficAfter(seq uint64) {
	prev := h.onComplete
	h.onComplete = func(h *harness, b *batch, s *send) {
		if prev != nil {
			prev(h, b, s)
		}
		if hasSeq(b, seq) {
			h.add(fmt.Sprintf("other-%d", len(h.events)))
		}
	}
}

// add appends one event of key and returns its seq.
func (h *harness) add(key string, opts ...evOpt) uint64 {
	h.t.Helper()
	n := len(h.events) + 1
	r := engine.Record{Source: []byte("web"), Type: []byte("track"), MessageID: fmt.Appendf(nil, "msg-%d", n),
		Key: []byte(key), Payload: fmt.Appendf(nil, `{"n":%d,"key":%q}`, n, key), ReceivedAt: h.now().UnixNano()}
	for _, o := range opts {
		o(&r)
	}
	recs := []engine.Record{r}
	if _, err := h.eng.Append(context.Background(), recs); err != nil {
		h.t.Fatal(err)
	}
	ev := &event{seq: recs[0].Seq, key: key, msgID: string(r.MessageID), source: string(r.Source),
		typ: string(r.Type), receivedAt: r.ReceivedAt, pass: true}
	if len(h.cfg.Sources) > 0 && !slices.Contains(h.cfg.Sources, ev.source) ||
		len(h.cfg.Events) > 0 && !slices.Contains(h.cfg.Events, ev.typ) {
		ev.pass = false
	}
	h.events = append(h.events, ev)
	h.bySeq[ev.seq] = ev
	return ev.seq
}

// addN appends n events of key and returns their seqs.
func (h *harness) addN(key string, n int, opts ...evOpt) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = h.add(key, opts...)
	}
	return out
}

// step is one turn of Router.Run's loop: wait for the next result or
// NextWake, then Step with the results that arrived by then.
func (h *harness) step() {
	h.t.Helper()
	if !h.started {
		h.turn()
	}
	h.wait(h.sent)
	h.turn()
}

// turn is one Machine.Step at the current time with the results that
// arrived; the Polled hook sends what it dispatches.
func (h *harness) turn() []*Dispatch {
	h.t.Helper()
	h.steps++
	h.started = true
	done := make([]*Dispatch, len(h.answered))
	for i, f := range h.answered {
		done[i] = f.d
	}
	ds, err := h.m.Step(h.now(), done)
	h.answered = nil
	if err != nil {
		h.t.Fatalf("machine stopped: %v", err)
	}
	h.sent = len(ds) > 0
	return ds
}

// wait moves the clock to the next result or NextWake and takes the
// results due by then, for the next Step.
func (h *harness) wait(sent bool) {
	c, now := h.c, h.now()
	wake := c.nextWake(now)
	if len(h.flights) > 0 && h.flights[0].done.Before(wake) {
		wake = h.flights[0].done
	}
	if !wake.After(now) && (len(h.flights) == 0 || h.flights[0].done.After(now)) {
		wake = now.Add(wakeMin) // Router.Run's floor
		if !sent {
			h.idleSpins++
		}
	}
	h.clock.now = wake
	for len(h.flights) > 0 && !h.flights[0].done.After(h.now()) {
		h.answered = append(h.answered, h.flights[0])
		h.flights = h.flights[1:]
	}
}

// noteAborted records window events the core aborted in memory (they are
// stored when the cursor passes them).
func (h *harness) noteAborted() {
	for _, it := range h.c.window[h.c.head:] {
		if it.state == aborted {
			h.abortSeen[it.seq] = true
		}
	}
}

// final reports whether an event reached a final state: delivered or
// aborted.
func (h *harness) final(seq uint64) bool {
	if h.done[seq] || h.abortSeen[seq] {
		return true
	}
	e, err := h.cons.Entry(seq)
	return err == nil && e.State == engine.StateAborted
}

// dispatch is the destination receiving a request: it checks order,
// records the arrival and scripts the result.
func (h *harness) dispatch(d *Dispatch, now time.Time) {
	h.t.Helper()
	b := d.b
	s := &send{at: now, probe: b.probe, entry: b.entry}
	inBatch := map[uint64]bool{}
	for i, it := range b.items {
		ev := h.bySeq[it.seq]
		if ev == nil {
			h.t.Fatalf("sent unknown event %d", it.seq)
		}
		if !ev.pass {
			h.t.Errorf("sent event %d (source %s, type %s) that the filters refuse", ev.seq, ev.source, ev.typ)
		}
		if string(it.ev.MessageID) != ev.msgID || string(it.ev.Key) != ev.key || it.ev.Seq != ev.seq {
			h.t.Errorf("event %d sent as seq %d key %q messageId %q, want key %q messageId %q",
				ev.seq, it.ev.Seq, it.ev.Key, it.ev.MessageID, ev.key, ev.msgID)
		}
		if h.cfg.Ordering {
			for _, prev := range b.items[:i] {
				if prev.key == it.key && prev.seq >= it.seq {
					h.t.Errorf("batch has event %d of key %q after %d", it.seq, it.key, prev.seq)
				}
			}
			// Guarantee 4: every earlier event of the key is final
			// (replayed events are exempt: they never block their key).
			if !h.replayed[it.seq] {
				for _, e := range h.events {
					if e.seq >= it.seq {
						break
					}
					if e.key == it.key && e.pass && !inBatch[e.seq] && !h.replayed[e.seq] && !h.final(e.seq) {
						h.t.Errorf("at %v: event %d of key %q sent while earlier event %d is not final (tries %d)",
							now.Sub(epoch), it.seq, it.key, e.seq, h.tries[e.seq])
					}
				}
			}
		}
		inBatch[it.seq] = true
		if h.tries[it.seq] == 0 {
			h.arrivals[it.key] = append(h.arrivals[it.key], it.seq)
		}
		h.tries[it.seq]++
		s.seqs = append(s.seqs, it.seq)
	}
	s.res = h.respond(h, b)
	d.Result = s.res
	out := h.c.pol.classify(s.res)
	refused := map[int]bool{} // a partial answer's names (of events in the batch)
	if out == outSuccess || out == outAbort {
		for _, r := range s.res.Rejected {
			if r.Index >= 0 && r.Index < len(b.items) {
				refused[r.Index] = true
			}
		}
	}
	if out == outSuccess || out == outAbort && len(refused) > 0 {
		for i, it := range b.items {
			if refused[i] {
				continue
			}
			h.done[it.seq] = true
			h.dlv = append(h.dlv, delivery{seq: it.seq, key: it.key, msgID: string(it.ev.MessageID), at: now})
		}
	}
	lat := h.latency
	if h.latencyFn != nil {
		lat = h.latencyFn()
	}
	s.doneAt = now.Add(lat)
	h.sends = append(h.sends, s)
	i := len(h.flights)
	for i > 0 && h.flights[i-1].done.After(s.doneAt) {
		i--
	}
	h.flights = slices.Insert(h.flights, i, flight{d: d, s: s, done: s.doneAt})
	h.maxInFlight = max(h.maxInFlight, h.c.inFlight)
	if h.onSend != nil {
		h.onSend(h, b, s)
	}
}

// settled reports whether nothing is left to do: every event passed,
// nothing in flight, no failed or skipped entries.
func (h *harness) settled() bool {
	cur, _ := h.cons.Cursor()
	return len(h.flights) == 0 && len(h.answered) == 0 && h.c.inFlight == 0 && cur == h.eng.LastSeq()+1 &&
		h.cons.Count(engine.StateFailed) == 0 && h.cons.Count(engine.StateSkipped) == 0 &&
		h.c.txn.Empty() && len(h.c.work) == 0 && len(h.c.keys.drains) == 0
}

// runUntil steps until cond holds, failing after maxSteps.
func (h *harness) runUntil(what string, maxSteps int, cond func() bool) {
	h.t.Helper()
	for i := 0; i < maxSteps; i++ {
		if cond() {
			return
		}
		h.step()
		if h.t.Failed() {
			h.t.FailNow()
		}
	}
	h.t.Fatalf("after %d steps (%v of virtual time): not %s; %s", maxSteps, h.now().Sub(epoch), what, h.describe())
}

// runFor steps until the clock passed d from now.
func (h *harness) runFor(d time.Duration) {
	h.t.Helper()
	end := h.now().Add(d)
	h.runUntil("at the end of the period", 1_000_000, func() bool { return !h.now().Before(end) })
}

// settle runs until settled.
func (h *harness) settle() { h.t.Helper(); h.runUntil("settled", 200_000, h.settled) }

func (h *harness) describe() string {
	cur, _ := h.cons.Cursor()
	return fmt.Sprintf("cursor %d of %d, in flight %d, failed %d, skipped %d, aborted %d, work %d, breaker %s, delivered %d",
		cur, h.eng.LastSeq()+1, h.c.inFlight, h.cons.Count(engine.StateFailed), h.cons.Count(engine.StateSkipped),
		h.cons.Count(engine.StateAborted), len(h.c.work), h.c.health.state, len(h.done))
}

// aborted returns the stored aborted entries by seq.
func (h *harness) aborted() map[uint64]engine.Entry {
	h.t.Helper()
	h.c.flush(h.now(), true)
	ents, err := h.cons.Aborted(0, 1<<20, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[uint64]engine.Entry{}
	for _, e := range ents {
		out[e.Seq] = e
	}
	return out
}

// keyEntries returns a key's failed and skipped entries.
func (h *harness) keyEntries(key string) []engine.Entry {
	h.t.Helper()
	h.c.flush(h.now(), true)
	ents, err := h.cons.KeyEntries([]byte(key), 1<<20)
	if err != nil {
		h.t.Fatal(err)
	}
	return ents
}

func entrySeqs(ents []engine.Entry, s engine.State) []uint64 {
	var out []uint64
	for _, e := range ents {
		if e.State == s {
			out = append(out, e.Seq)
		}
	}
	return out
}

// deliveredSeqs returns the key's successful deliveries in arrival order.
func (h *harness) deliveredSeqs(key string) []uint64 {
	var out []uint64
	for _, d := range h.dlv {
		if d.key == key {
			out = append(out, d.seq)
		}
	}
	return out
}

// check verifies the invariants that hold at the end of every scenario:
// first arrivals in seq order per key (ordering on), every event that
// passes the filters delivered or aborted and never both, filtered events
// never sent, and, when healthy, no failed or skipped entries, no barriers
// and no router state left behind.
func (h *harness) check(healthy bool) {
	h.t.Helper()
	ab := h.aborted()
	if h.cfg.Ordering {
		for key, seqs := range h.arrivals {
			if !slices.IsSorted(seqs) {
				h.t.Errorf("key %q: first arrivals out of order: %v", key, seqs)
			}
			// Replayed events go again after later ones by design; so may
			// events aborted before a crash lost the record of it.
			got := slices.DeleteFunc(firstOnly(h.deliveredSeqs(key)), func(s uint64) bool {
				return h.replayed[s] || h.unsure[s] && h.abortSeen[s]
			})
			if !slices.IsSorted(got) {
				h.t.Errorf("key %q: first deliveries out of order: %v", key, got)
			}
		}
	}
	for _, e := range h.events {
		_, isAborted := ab[e.seq]
		switch {
		case !e.pass:
			if h.tries[e.seq] > 0 || isAborted {
				h.t.Errorf("filtered event %d was sent %d times (aborted %v)", e.seq, h.tries[e.seq], isAborted)
			}
		case h.done[e.seq] && isAborted && !h.unsure[e.seq]:
			h.t.Errorf("event %d delivered and aborted", e.seq)
		case !h.done[e.seq] && !isAborted:
			h.t.Errorf("event %d (key %q) lost: neither delivered nor aborted (tries %d)", e.seq, e.key, h.tries[e.seq])
		}
	}
	for _, d := range h.dlv {
		if ev := h.bySeq[d.seq]; d.msgID != ev.msgID {
			h.t.Errorf("event %d delivered with messageId %q, want %q", d.seq, d.msgID, ev.msgID)
		}
	}
	// Router.Run wakes at nextWake (at least 100µs later): waking with
	// nothing to do means a busy loop.
	if h.idleSpins > 10 {
		h.t.Errorf("%d of %d steps woke with nothing to do", h.idleSpins, h.steps)
	}
	if !healthy {
		return
	}
	cur, _ := h.cons.Cursor()
	if want := h.eng.LastSeq() + 1; cur != want {
		h.t.Errorf("cursor %d, want %d", cur, want)
	}
	if n, m := h.cons.Count(engine.StateFailed), h.cons.Count(engine.StateSkipped); n != 0 || m != 0 {
		h.t.Errorf("%d failed and %d skipped entries left", n, m)
	}
	var barriers []string
	h.cons.Barriers(func(key []byte, head uint64) error {
		barriers = append(barriers, fmt.Sprintf("%s@%d", key, head))
		return nil
	})
	if len(barriers) > 0 {
		h.t.Errorf("barriers left: %v", barriers)
	}
	c := h.c
	if c.inFlight != 0 || len(c.work) != 0 || len(c.inFlightEntries) != 0 || len(c.keys.ready) != 0 || len(c.keys.drains) != 0 {
		h.t.Errorf("router state left: in flight %d, work %d, reserved entries %d, ready %d, drains %d",
			c.inFlight, len(c.work), len(c.inFlightEntries), len(c.keys.ready), len(c.keys.drains))
	}
	if len(c.keys.keys) != 0 {
		var ks []string
		for k, s := range c.keys.keys {
			ks = append(ks, fmt.Sprintf("%s%+v", k, *s))
		}
		h.t.Errorf("key states left: %v", ks)
	}
}

// ok is the healthy destination.
func ok(*harness, *batch) Result { return Result{Status: 200} }

func hasSeq(b *batch, seq uint64) bool {
	return slices.ContainsFunc(b.items, func(it *item) bool { return it.seq == seq })
}

// ---- scenarios ----

// restart simulates a crash of the router: the core and its requests in
// flight are gone (their outcome never recorded), and a new core starts
// from the consumer's stored state. drop-core keeps the engine; reopen
// closes and reopens it on the same files; crash-unsynced reopens a copy
// of the files as a power loss would leave them (the index's unsynced
// writes lost).
func (h *harness) restart(mode string) {
	h.t.Helper()
	h.c.reader.Close()
	h.flights, h.answered = nil, nil
	// Stored dead letters were final before the crash.
	ents, err := h.cons.Aborted(0, 1<<20, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range ents {
		h.abortSeen[e.Seq] = true
	}
	// Outcomes not yet committed (the core's pending transitions) or not
	// yet synced (crash-*) are lost: events delivered or aborted may be
	// sent again.
	for s := range h.done {
		h.unsure[s] = true
	}
	for s := range h.abortSeen {
		h.unsure[s] = true
	}
	switch mode {
	case "drop-core":
	case "reopen":
		if err := h.eng.Close(); err != nil {
			h.t.Fatal(err)
		}
		h.eng = openEngine(h.t, h.fs)
	case "crash-unsynced", "crash-after-sync":
		fs := h.fs.CrashClone(vfs.CrashCloneCfg{})
		h.eng.Close()
		h.fs, h.eng = fs, openEngine(h.t, fs)
	default:
		h.t.Fatalf("restart mode %q", mode)
	}
	if h.cons, err = h.eng.Consumer(h.cfg.Name); err != nil {
		h.t.Fatal(err)
	}
	if err := h.startMachine(); err != nil {
		h.t.Fatal(err)
	}
}

// startMachine builds the machine from the consumer's stored state, with
// the harness's hooks.
func (h *harness) startMachine() error {
	c, err := newCore(h.cfg, h.eng, h.cons)
	if err != nil {
		return err
	}
	h.m, h.c = &Machine{c: c}, c
	h.started, h.answered = false, nil
	h.m.Hooks = Hooks{
		Completed: func(d *Dispatch) {
			h.noteAborted()
			if h.onComplete != nil {
				for _, f := range h.answered {
					if f.d == d {
						h.onComplete(h, d.b, f.s)
					}
				}
			}
		},
		Polled: func(ds []*Dispatch) {
			h.noteAborted()
			for _, d := range ds {
				h.dispatch(d, h.now())
			}
		},
	}
	return nil
}

// firstOnly drops repeated seqs, keeping first occurrences.
func firstOnly(seqs []uint64) []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	for _, s := range seqs {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
