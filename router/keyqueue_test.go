package router

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// Unit and property tests of keyQueues: the per-key order invariants of its
// doc comment, without an engine.

func kqItem(seq uint64, key string) *item { return &item{seq: seq, key: key} }

func TestKeyQueueSendsInOrderOneRequestAtATime(t *testing.T) {
	q := newKeyQueues()
	a1, a2, b1 := kqItem(1, "A"), kqItem(2, "A"), kqItem(3, "B")
	q.admit(a1)
	q.admit(a2)
	q.admit(b1)
	if len(q.ready) != 2 {
		t.Fatalf("ready %d keys, want A and B", len(q.ready))
	}
	k, head := q.nextReady()
	if k.key != "A" || head != a1 {
		t.Fatalf("next ready %q head %v, want A's first", k.key, head)
	}
	if _, ok := q.takeReady(); !ok {
		t.Fatal("A may not send")
	}
	k.take() // a1 goes; a2 waits for the next request
	q.taken(k, true)
	if !q.isBusy("A") || k.queued {
		t.Fatalf("A busy %v queued %v after sending, want busy and not queued", k.busy, k.queued)
	}
	// A is busy: admitting more of A does not make it ready.
	a3 := kqItem(4, "A")
	q.admit(a3)
	if k.queued {
		t.Fatal("a busy key was queued")
	}
	q.release(a1, true)
	if k.busy || !k.queued || k.head() != a2 {
		t.Fatalf("after release: busy %v queued %v head %v, want ready with a2 next", k.busy, k.queued, k.head())
	}
}

func TestKeyQueueBarrier(t *testing.T) {
	q := newKeyQueues()
	a1, a2, a3 := kqItem(1, "A"), kqItem(2, "A"), kqItem(3, "A")
	for _, it := range []*item{a1, a2, a3} {
		q.admit(it)
	}
	k, _ := q.takeReady()
	k.take()
	q.taken(k, true)
	// a1 fails: the barrier is up; nothing of A is sent or made ready.
	q.failedInWindow("A")
	q.release(a1, true)
	if !k.blocked || k.queued {
		t.Fatalf("after a failure: blocked %v queued %v", k.blocked, k.queued)
	}
	// The cursor passes a1 (stored failed), then a2 and a3 as skipped, in
	// order: a3 not before a2.
	if q.skipHead(a3) {
		t.Fatal("a3 skipped before a2")
	}
	q.failedStored("A")
	if !q.skipHead(a2) || !q.skipHead(a3) {
		t.Fatal("a2 and a3 not skipped behind the failed head")
	}
	// A new event waits behind the barrier.
	a4 := kqItem(4, "A")
	q.admit(a4)
	if k.queued {
		t.Fatal("a blocked key was queued")
	}
	if q.takeUnblockedHead(a4) {
		t.Fatal("took the head of a blocked key")
	}
	// The stored entries settled: the barrier lifts and a4 goes next.
	if !k.mayLift() {
		t.Fatal("barrier may not lift with nothing failed in the window")
	}
	q.lift(k)
	if k.blocked || !k.queued || k.head() != a4 {
		t.Fatalf("after lift: blocked %v queued %v head %v", k.blocked, k.queued, k.head())
	}
}

func TestKeyQueueNoLiftWithFailedWindowEvent(t *testing.T) {
	q := newKeyQueues()
	q.restoreBarrier("A") // a barrier stored before a restart
	k := q.keys["A"]
	if !k.blocked || !k.draining {
		t.Fatalf("restored barrier: blocked %v draining %v", k.blocked, k.draining)
	}
	a1 := kqItem(1, "A")
	q.admit(a1)
	// The stored entries were drained, then a1 was sent and failed
	// (unblocked meanwhile for this test's sake).
	q.takeDrains()
	q.lift(k)
	k2, _ := q.takeReady()
	k2.take()
	q.taken(k2, true)
	q.failedInWindow("A")
	q.release(a1, true)
	if k.mayLift() {
		t.Fatal("barrier may lift while a failed event waits in the window to be stored")
	}
	q.failedStored("A")
	if !k.mayLift() {
		t.Fatal("barrier may not lift after the failed event was stored")
	}
}

func TestKeyQueuePutBackKeepsOrder(t *testing.T) {
	q := newKeyQueues()
	its := []*item{kqItem(1, "A"), kqItem(2, "A"), kqItem(3, "A")}
	for _, it := range its {
		q.admit(it)
	}
	k, _ := q.takeReady()
	k.take()
	k.take()
	q.taken(k, true)
	// The request (1, 2) goes back unanswered, last first.
	q.putBack(its[1])
	q.putBack(its[0])
	q.release(its[0], false)
	q.release(its[1], false)
	if !slices.Equal(k.pending, its) {
		t.Fatalf("pending %v after put back, want 1, 2, 3", seqsOf(k.pending))
	}
}

func TestKeyQueueNotSentIsQueuedAgain(t *testing.T) {
	q := newKeyQueues()
	a1 := kqItem(1, "A")
	q.admit(a1)
	k, _ := q.takeReady()
	q.taken(k, false) // the head did not fit the request
	if !k.queued || len(q.ready) != 1 {
		t.Fatal("a key whose events did not fit was not queued again")
	}
}

func TestKeyQueueForget(t *testing.T) {
	q := newKeyQueues()
	a1 := kqItem(1, "A")
	q.admit(a1)
	k, _ := q.takeReady()
	k.take()
	q.taken(k, true)
	q.release(a1, true)
	if len(q.keys) != 0 {
		t.Fatalf("idle key kept: %+v", q.keys)
	}
}

func seqsOf(its []*item) []uint64 {
	out := make([]uint64, len(its))
	for i, it := range its {
		out[i] = it.seq
	}
	return out
}

// The property test: random operations of the core's shape (admit, send
// from ready, answer, move the cursor, drain stored entries and lift) run
// against keyQueues and a simple model of each event's state; after every
// operation the queues must agree with the model, and what they let out
// must keep per-key order. A run ends with a fault-free phase that must
// deliver everything.

type mState uint8

const (
	mWaiting   mState = iota // in the window, not sent
	mInflight                // in a request
	mFailedWin               // failed, in the window, not yet stored
	mStored                  // stored as failed or skipped
	mDone                    // delivered or aborted
)

type mEvent struct {
	it    *item
	state mState
}

type mRequest struct {
	evs   []*mEvent
	entry bool
}

type kqModel struct {
	t       *testing.T
	rng     *rand.Rand
	q       keyQueues
	events  []*mEvent // by seq-1
	window  []*mEvent // from the cursor
	flight  []*mRequest
	barrier map[string]bool
	faults  bool
	log     []string
}

func (m *kqModel) fatalf(format string, args ...any) {
	m.t.Helper()
	tail := m.log[max(0, len(m.log)-20):]
	m.t.Fatalf("%s\nlast operations:\n%v", fmt.Sprintf(format, args...), tail)
}

func (m *kqModel) ev(it *item) *mEvent { return m.events[it.seq-1] }

// earlierNotDone returns the first earlier event of e's key that is not
// done, if any.
func (m *kqModel) earlierNotDone(e *mEvent) *mEvent {
	for _, x := range m.events[:e.it.seq-1] {
		if x.it.key == e.it.key && x.state != mDone {
			return x
		}
	}
	return nil
}

func (m *kqModel) keyInFlight(key string) bool {
	for _, r := range m.flight {
		for _, e := range r.evs {
			if e.it.key == key {
				return true
			}
		}
	}
	return false
}

func (m *kqModel) admit() {
	key := string(rune('A' + m.rng.IntN(4)))
	e := &mEvent{it: kqItem(uint64(len(m.events)+1), key)}
	m.events = append(m.events, e)
	m.window = append(m.window, e)
	m.q.admit(e.it)
	m.log = append(m.log, fmt.Sprintf("admit %d %s", e.it.seq, key))
}

// send assembles one window request the way nextWindowBatch does, with
// events that randomly do not fit or expire.
func (m *kqModel) send() {
	max := 1 + m.rng.IntN(4)
	r := &mRequest{}
	for len(r.evs) < max {
		k, head := m.q.nextReady()
		if k == nil {
			break
		}
		if head != nil && len(r.evs) > 0 && m.rng.IntN(8) == 0 {
			break // the head does not fit
		}
		if _, ok := m.q.takeReady(); !ok {
			continue
		}
		if m.keyInFlight(k.key) || m.barrier[k.key] {
			m.fatalf("key %s let out while in flight %v or blocked %v", k.key, m.keyInFlight(k.key), m.barrier[k.key])
		}
		sent := false
		for it := k.head(); it != nil && len(r.evs) < max; it = k.head() {
			if len(r.evs) > 0 && m.rng.IntN(8) == 0 {
				break
			}
			k.take()
			e := m.ev(it)
			if e.state != mWaiting {
				m.fatalf("event %d taken in state %d", it.seq, e.state)
			}
			if x := m.earlierNotDone(e); x != nil && !slices.Contains(r.evs, x) {
				m.fatalf("event %d of %s sent while %d is not final (state %d)", it.seq, it.key, x.it.seq, x.state)
			}
			if m.faults && m.rng.IntN(20) == 0 {
				e.state = mDone // expired: aborted without being sent
				continue
			}
			e.state = mInflight
			r.evs = append(r.evs, e)
			sent = true
		}
		m.q.taken(k, sent)
	}
	if len(r.evs) > 0 {
		m.flight = append(m.flight, r)
		m.log = append(m.log, fmt.Sprintf("send %v", m.seqs(r.evs)))
	}
}

func (m *kqModel) seqs(evs []*mEvent) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.it.seq
	}
	return out
}

// answer completes a random request: delivered, or (with faults) failed:
// a lone window event becomes its key's failed head, a larger window
// request goes back to be bisected, stored entries stay stored.
func (m *kqModel) answer() {
	if len(m.flight) == 0 {
		return
	}
	i := m.rng.IntN(len(m.flight))
	r := m.flight[i]
	m.flight = slices.Delete(m.flight, i, i+1)
	ok := !m.faults || m.rng.IntN(3) > 0
	m.log = append(m.log, fmt.Sprintf("answer %v entry=%v ok=%v", m.seqs(r.evs), r.entry, ok))
	switch {
	case ok:
		for _, e := range r.evs {
			e.state = mDone
			m.q.release(e.it, true)
		}
	case r.entry:
		for _, e := range r.evs {
			e.state = mStored
			m.q.release(e.it, true)
		}
	case len(r.evs) == 1:
		e := r.evs[0]
		e.state = mFailedWin
		m.barrier[e.it.key] = true
		m.q.failedInWindow(e.it.key)
		m.q.release(e.it, true)
	default:
		for j := len(r.evs) - 1; j >= 0; j-- {
			r.evs[j].state = mWaiting
			m.q.putBack(r.evs[j].it)
		}
		for _, e := range r.evs {
			m.q.release(e.it, false)
		}
	}
}

// advance moves the cursor past the window's settled head as core.pass
// does.
func (m *kqModel) advance() {
	for len(m.window) > 0 {
		e := m.window[0]
		switch e.state {
		case mDone:
		case mFailedWin:
			m.q.failedStored(e.it.key)
			e.state = mStored
		case mWaiting:
			want := m.barrier[e.it.key] && m.firstWaiting(e.it.key) == e
			got := m.q.skipHead(e.it)
			if got != want {
				m.fatalf("skipHead(%d of %s) = %v, want %v", e.it.seq, e.it.key, got, want)
			}
			if !got {
				return
			}
			e.state = mStored
			m.log = append(m.log, fmt.Sprintf("skip %d", e.it.seq))
		default:
			return
		}
		m.window = m.window[1:]
	}
}

func (m *kqModel) firstWaiting(key string) *mEvent {
	for _, e := range m.window {
		if e.it.key == key && e.state == mWaiting {
			return e
		}
	}
	return nil
}

// drain serves the keys queued to drain as core.drainKey does: a key's
// stored events go out in order, in one request; with none left the
// barrier lifts if it may.
func (m *kqModel) drain() {
	for _, k := range m.q.takeDrains() {
		if k.busy {
			m.q.queueDrain(k)
			continue
		}
		m.sendStored(k.key)
	}
}

// retry sends a random key's stored events, as the retry scan brings back
// a due failed head (never while the key is busy).
func (m *kqModel) retry() {
	key := string(rune('A' + m.rng.IntN(4)))
	if !m.q.isBusy(key) && m.storedOf(key) != nil {
		m.sendStored(key)
	}
}

func (m *kqModel) storedOf(key string) []*mEvent {
	var out []*mEvent
	for _, e := range m.events {
		if e.it.key == key && e.state == mStored {
			out = append(out, e)
		}
	}
	return out
}

func (m *kqModel) sendStored(key string) {
	stored := m.storedOf(key)
	if len(stored) == 0 {
		k := m.q.keys[key]
		if k == nil || !k.mayLift() {
			return
		}
		for _, e := range m.events {
			if e.it.key == key && e.state == mFailedWin {
				m.fatalf("barrier of %s may lift with %d failed in the window", key, e.it.seq)
			}
		}
		m.barrier[key] = false
		m.q.lift(k)
		m.log = append(m.log, "lift "+key)
		return
	}
	if m.keyInFlight(key) {
		m.fatalf("stored events of %s sent while a request of it is in flight", key)
	}
	stored = stored[:min(len(stored), 1+m.rng.IntN(3))]
	for _, e := range stored {
		if x := m.earlierNotDone(e); x != nil && !slices.Contains(stored, x) {
			m.fatalf("stored event %d of %s sent while %d is not final", e.it.seq, key, x.it.seq)
		}
		e.state = mInflight
		e.it.persisted = true
	}
	m.q.sendEntries(key)
	m.flight = append(m.flight, &mRequest{evs: stored, entry: true})
	m.log = append(m.log, fmt.Sprintf("send stored %v", m.seqs(stored)))
}

// check compares the queues with the model (invariants 1, 2, 3, 5, 6).
func (m *kqModel) check() {
	m.t.Helper()
	inReady, inDrains := map[*keyQueue]int{}, map[*keyQueue]int{}
	for _, k := range m.q.ready {
		inReady[k]++
	}
	for _, k := range m.q.drains {
		inDrains[k]++
	}
	for k, n := range inReady {
		if n != 1 || !k.queued || m.q.keys[k.key] != k {
			m.fatalf("key %s in ready %d times, queued %v, known %v", k.key, n, k.queued, m.q.keys[k.key] == k)
		}
	}
	for k, n := range inDrains {
		if n != 1 || !k.draining || m.q.keys[k.key] != k {
			m.fatalf("key %s in drains %d times, draining %v, known %v", k.key, n, k.draining, m.q.keys[k.key] == k)
		}
	}
	for _, key := range []string{"A", "B", "C", "D"} {
		var waiting []*item
		failedWin := 0
		for _, e := range m.window {
			if e.it.key != key {
				continue
			}
			switch e.state {
			case mWaiting:
				waiting = append(waiting, e.it)
			case mFailedWin:
				failedWin++
			}
		}
		busy := m.keyInFlight(key)
		k := m.q.keys[key]
		if k == nil {
			if len(waiting) > 0 || failedWin > 0 || busy || m.barrier[key] {
				m.fatalf("key %s forgotten with %d waiting, %d failed in the window, busy %v, barrier %v", key, len(waiting), failedWin, busy, m.barrier[key])
			}
			continue
		}
		if !slices.Equal(k.pending, waiting) {
			m.fatalf("key %s pending %v, want %v", key, seqsOf(k.pending), seqsOf(waiting))
		}
		if k.busy != busy || k.blocked != m.barrier[key] || k.failedWindow != failedWin {
			m.fatalf("key %s busy %v blocked %v failedWindow %d, want %v %v %d", key, k.busy, k.blocked, k.failedWindow, busy, m.barrier[key], failedWin)
		}
		if (inReady[k] == 1) != k.queued || (inDrains[k] == 1) != k.draining {
			m.fatalf("key %s queued %v draining %v disagree with the lists", key, k.queued, k.draining)
		}
		if !k.busy && !k.blocked && len(k.pending) > 0 && !k.queued {
			m.fatalf("key %s may send %v but is not ready", key, seqsOf(k.pending))
		}
	}
}

func TestKeyQueueProperty(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			m := &kqModel{t: t, rng: rand.New(rand.NewPCG(seed, 15)), q: newKeyQueues(), barrier: map[string]bool{}, faults: true}
			ops := []func(){m.admit, m.send, m.answer, m.advance, m.drain, m.retry}
			for range 400 {
				ops[m.rng.IntN(len(ops))]()
				m.check()
			}
			// Liveness: without faults everything ends delivered, the
			// barriers lifted and the queues empty.
			m.faults = false
			for i := 0; ; i++ {
				if i == 10_000 {
					m.fatalf("not settled after %d rounds", i)
				}
				m.send()
				m.answer()
				m.advance()
				m.drain()
				m.retry()
				m.check()
				if len(m.window) == 0 && len(m.flight) == 0 && len(m.q.keys) == 0 {
					break
				}
			}
			for _, e := range m.events {
				if e.state != mDone {
					t.Errorf("event %d of %s ends in state %d", e.it.seq, e.it.key, e.state)
				}
			}
		})
	}
}
