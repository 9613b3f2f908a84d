package router

// Scripted scenarios for core, one test a scenario, on the harness of
// harness_test.go.

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// A failing user does not block others: its later events are stored as
// skipped behind its barrier and go, in order, before its newer events once
// its head succeeds.
func TestCoreFailingKeyDoesNotBlockOthers(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, Policy: Policy{MinAttempts: 100}})
	a1 := h.add("A")
	var others []uint64
	var aLater []uint64
	for i := 0; i < 5; i++ {
		others = append(others, h.add("B"), h.add("C"))
		if i < 3 {
			aLater = append(aLater, h.add("A"))
		}
	}
	aFails := true
	h.respond = func(h *harness, b *batch) Result {
		if aFails && hasSeq(b, a1) {
			return Result{Status: 500, Body: []byte("oops")}
		}
		return ok(h, b)
	}
	h.runUntil("B and C delivered, A's later events skipped", 10_000, func() bool {
		cur, _ := h.cons.Cursor()
		return cur == h.eng.LastSeq()+1 && h.cons.Count(engine.StateSkipped) == 3
	})
	for _, s := range others {
		if !h.done[s] {
			t.Errorf("event %d of %q not delivered while A fails", s, h.bySeq[s].key)
		}
	}
	ents := h.keyEntries("A")
	if got := entrySeqs(ents, engine.StateFailed); !slices.Equal(got, []uint64{a1}) {
		t.Errorf("A's failed entries %v, want [%d]", got, a1)
	}
	if got := entrySeqs(ents, engine.StateSkipped); !slices.Equal(got, aLater) {
		t.Errorf("A's skipped entries %v, want %v", got, aLater)
	}
	if head, okb, _ := h.cons.Barrier([]byte("A")); !okb || head != a1 {
		t.Errorf("A's barrier %d %v, want head %d", head, okb, a1)
	}
	for _, s := range aLater {
		if h.tries[s] != 0 {
			t.Errorf("skipped event %d was sent", s)
		}
	}
	if ents[0].Flags&engine.EntryUnconfirmed == 0 || ents[0].LastStatus != 500 || ents[0].FirstFailure == 0 || ents[0].DueAt == 0 {
		t.Errorf("failed entry %+v lacks its failure (pending its charge), status, first failure or due time", ents[0])
	}

	// More of A arrive (skipped too, behind the barrier), and more of B.
	aLater = append(aLater, h.add("A"), h.add("A"))
	b6 := h.add("B")
	h.runUntil("B6 delivered and A's new events skipped", 10_000, func() bool {
		return h.done[b6] && h.cons.Count(engine.StateSkipped) == 5
	})
	if h.done[a1] {
		t.Fatal("A1 delivered while failing")
	}
	if c := h.cons.Count(engine.StateFailed); c != 1 {
		t.Errorf("%d failed entries, want 1", c)
	}
	// A recovers; an even newer A event waits in the window.
	aFails = false
	aNewest := h.add("A")
	h.settle()
	want := append(append([]uint64{a1}, aLater...), aNewest)
	if got := h.deliveredSeqs("A"); !slices.Equal(got, want) {
		t.Errorf("A delivered %v, want %v", got, want)
	}
	if h.tries[a1] < 2 {
		t.Errorf("A1 tried %d times", h.tries[a1])
	}
	h.check(true)
}

// Many skipped events of one key are released in order, one by one or in
// batches.
func TestCoreSkippedReleasedInOrder(t *testing.T) {
	for _, bs := range []int{1, 10} {
		t.Run(fmt.Sprintf("batch%d", bs), func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, BatchSize: bs})
			a1 := h.add("A")
			var want []uint64
			want = append(want, a1)
			for i := 0; i < 40; i++ {
				want = append(want, h.add("A"))
				if i%4 == 0 {
					h.add(fmt.Sprintf("K%d", i))
				}
			}
			alone := 0 // sends of A1 alone
			h.respond = func(h *harness, b *batch) Result {
				if len(b.items) == 1 && hasSeq(b, a1) {
					alone++
				}
				// A1 fails in any batch (bisection isolates it), and
				// alone twice.
				if hasSeq(b, a1) && (len(b.items) > 1 || alone <= 2) {
					return Result{Status: 503}
				}
				return ok(h, b)
			}
			h.runUntil("A's later events skipped", 10_000, func() bool { return h.cons.Count(engine.StateSkipped) == 40 })
			if got := entrySeqs(h.keyEntries("A"), engine.StateSkipped); !slices.Equal(got, want[1:]) {
				t.Fatalf("skipped %v, want %v", got, want[1:])
			}
			h.settle()
			if got := h.deliveredSeqs("A"); !slices.Equal(got, want) {
				t.Errorf("A delivered %v, want %v", got, want)
			}
			// Released skips go in batches of up to batch_size.
			drains := 0
			for _, s := range h.sends {
				if s.entry && len(s.seqs) > bs {
					t.Errorf("entry batch of %d events", len(s.seqs))
				}
				if s.entry && h.bySeq[s.seqs[0]].key == "A" && s.seqs[0] != a1 {
					drains++
				}
			}
			if wantDrains := (40 + bs - 1) / bs; drains != wantDrains {
				t.Errorf("%d requests for A's skipped events, want %d", drains, wantDrains)
			}
			if alone != 3 {
				t.Errorf("A1 tried alone %d times, want 3", alone)
			}
			h.check(true)
		})
	}
}

// slowFirstTry scripts the destination for the spill tests: the first
// request with head (if slow) takes 5 s and gets first; every other request
// takes fast and succeeds. The returned time is set when a request with
// head completes first.
func slowFirstTry(h *harness, head uint64, slow bool, first Result, fast time.Duration) *time.Time {
	nextSlow := false
	h.respond = func(h *harness, b *batch) Result {
		nextSlow = slow && hasSeq(b, head) && h.tries[head] == 1
		if nextSlow {
			return first
		}
		return ok(h, b)
	}
	h.latencyFn = func() time.Duration {
		if nextSlow {
			return 5 * time.Second
		}
		return fast
	}
	done := new(time.Time)
	h.onComplete = func(h *harness, b *batch, s *send) {
		if hasSeq(b, head) && done.IsZero() {
			*done = h.now()
		}
	}
	return done
}

// A full read-ahead window whose oldest request is slow spills it: after
// spillAfter its events are stored (failed head, skipped behind it) so the
// cursor and the other keys move on, and its answer settles them. A window
// that is merely full of young requests spills nothing.
func TestCoreSpillSlowHead(t *testing.T) {
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprint("slow=", slow), func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, BatchSize: 2, WindowEvents: 20, ConcurrencyInitial: 32, ConcurrencyMax: 32})
			head := h.add("A")
			h.add("A")
			for i := 0; i < 200; i++ {
				h.add(fmt.Sprintf("K%d", i%40))
			}
			headDone := slowFirstTry(h, head, slow, Result{Status: 200}, 50*time.Millisecond)
			h.settle()
			switch spilled := h.c.stats.Spilled; {
			case !slow && spilled != 0:
				t.Errorf("%d events spilled with only young requests in flight", spilled)
			case slow && spilled == 0:
				t.Errorf("nothing spilled behind a 5s request")
			}
			if slow {
				// The other users went on while the head was out, past
				// the window's 20 events.
				before := 0
				for _, d := range h.dlv {
					if d.key != "A" && d.at.Before(*headDone) {
						before++
					}
				}
				if before != 200 {
					t.Errorf("%d of 200 other events delivered while the slow head was out", before)
				}
			}
			h.check(true)
		})
	}
}

// A spilled head is stored due after its request's timeout, in case no
// answer comes; once the answer is a throttle (or an outage failure) it is
// due at once, paced by the throttle, not by the 30 s timeout.
func TestCoreSpilledHeadAnsweredIsDueAtOnce(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, BatchSize: 2, WindowEvents: 20, ConcurrencyInitial: 32, ConcurrencyMax: 32})
	head := h.add("A")
	for i := 0; i < 100; i++ {
		h.add(fmt.Sprintf("K%d", i%40))
	}
	answered := slowFirstTry(h, head, true, Result{Status: 429, RetryAfter: time.Second}, 10*time.Millisecond)
	h.settle()
	if h.c.stats.Spilled == 0 {
		t.Fatal("the slow head was not spilled")
	}
	i := slices.IndexFunc(h.dlv, func(d delivery) bool { return d.seq == head })
	if i < 0 {
		t.Fatal("head not delivered")
	}
	if wait := h.dlv[i].at.Sub(*answered); wait > 3*time.Second {
		t.Errorf("spilled head delivered %v after its throttled answer (Retry-After 1s): it waited for its timeout", wait)
	}
	h.check(true)
}

// A poison event is aborted so the pipe keeps moving: at once when the
// destination refuses it (400), after MinAttempts charged attempts spaced
// by the backoff when it keeps failing (500) while others succeed.
func TestCorePoison(t *testing.T) {
	t.Run("rejected", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true})
		var poison uint64
		for i := 0; i < 10; i++ {
			s := h.add("A")
			h.add("B")
			if i == 3 {
				poison = s
			}
		}
		h.respond = func(h *harness, b *batch) Result {
			if hasSeq(b, poison) {
				return Result{Status: 400, Body: []byte(`{"error":"bad event"}`)}
			}
			return ok(h, b)
		}
		h.settle()
		ab := h.aborted()
		e, found := ab[poison]
		if !found || len(ab) != 1 {
			t.Fatalf("aborted %v, want only %d", ab, poison)
		}
		if h.tries[poison] != 1 {
			t.Errorf("poison tried %d times, want 1", h.tries[poison])
		}
		if e.LastStatus != 400 || !strings.Contains(e.Reason, "400") || string(e.Response) != `{"error":"bad event"}` {
			t.Errorf("aborted entry: status %d, reason %q, response %q", e.LastStatus, e.Reason, e.Response)
		}
		if e.Attempts != 1 || e.LastAttempt == 0 || e.FirstFailure == 0 {
			t.Errorf("aborted entry: %d attempts, last %d, first failure %d; want the one attempt recorded", e.Attempts, e.LastAttempt, e.FirstFailure)
		}
		if h.c.stats.Aborted != 1 || h.c.stats.Failed != 0 {
			t.Errorf("stats %+v", h.c.stats)
		}
		h.check(true)
	})
	t.Run("failing", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true, ConcurrencyInitial: 2})
		poison := h.add("A")
		aLater := h.addN("A", 3)
		for i := 0; i < 20; i++ {
			h.add(fmt.Sprintf("K%d", i))
		}
		var completedAt []time.Time
		var dueAt []int64
		h.respond = func(h *harness, b *batch) Result {
			if hasSeq(b, poison) {
				if h.tries[poison] > 1 {
					// The stored entry has the previous failure pending:
					// it was charged in memory when the retry came due,
					// after other users' events were delivered.
					e, err := h.cons.Entry(poison)
					if err != nil || e.State != engine.StateFailed {
						t.Fatalf("retry of %d without a failed entry: %+v %v", poison, e, err)
					}
					dueAt = append(dueAt, e.DueAt)
					if int(e.Attempts) != h.tries[poison]-2 || e.Flags&engine.EntryUnconfirmed == 0 {
						t.Errorf("entry has %d attempts (flags %b) before try %d", e.Attempts, e.Flags, h.tries[poison])
					}
				}
				return Result{Status: 500}
			}
			return ok(h, b)
		}
		h.onComplete = func(h *harness, b *batch, s *send) {
			if hasSeq(b, poison) {
				completedAt = append(completedAt, h.now())
			}
		}
		h.otherTrafficAfter(poison)
		// The pipe keeps moving: every other key is delivered before the
		// poison's first retry.
		h.runUntil("the poison retried", 10_000, func() bool { return h.tries[poison] == 2 })
		for _, e := range h.events {
			if e.key != "A" && !strings.HasPrefix(e.key, "other-") && !h.done[e.seq] {
				t.Errorf("event %d of %q not delivered while the poison waits for its retry", e.seq, e.key)
			}
		}
		h.settle()
		if h.tries[poison] != 3 {
			t.Errorf("poison tried %d times, want MinAttempts 3", h.tries[poison])
		}
		e, found := h.aborted()[poison]
		if !found {
			t.Fatal("poison not aborted")
		}
		if e.Attempts != 3 || e.LastStatus != 500 || !strings.Contains(e.Reason, "failed 3 times") || e.FirstFailure == 0 || e.LastAttempt < e.FirstFailure {
			t.Errorf("aborted entry %+v", e)
		}
		// Retries are spaced by the backoff: due at completion plus a delay
		// within the exponential cap, and sent once due.
		if len(dueAt) != 2 || len(completedAt) != 3 {
			t.Fatalf("due %v, completions %v", dueAt, completedAt)
		}
		for i, due := range dueAt {
			delay := time.Unix(0, due).Sub(completedAt[i])
			limit := h.cfg.Policy.BackoffInitial<<i + time.Millisecond
			if delay < time.Millisecond || delay > limit {
				t.Errorf("retry %d: delay %v outside [1ms, %v]", i+1, delay, limit)
			}
			sent := h.sends[slices.IndexFunc(h.sends, func(s *send) bool { return s.seqs[0] == poison && s.at.After(completedAt[i]) })].at
			if lag := sent.Sub(time.Unix(0, due)); lag < 0 || lag > 100*time.Millisecond {
				t.Errorf("retry %d sent %v after its due time", i+1, lag)
			}
		}
		if got := h.deliveredSeqs("A"); !slices.Equal(got, aLater) {
			t.Errorf("A delivered %v, want %v", got, aLater)
		}
		if h.c.health.state != Healthy || h.c.stats.OutageAttempts != 0 {
			t.Errorf("breaker %s, outage attempts %d: a lone failing event must not look like an outage", h.c.health.state, h.c.stats.OutageAttempts)
		}
		h.check(true)
	})
}

// With one user sending, an outage cannot open the breaker (that needs
// failures from several keys) and looks like a failing event: its failures
// are not charged, since nothing shows the destination works for others,
// so the event is never aborted however long the outage (even with
// MinAttempts 1), its retries spread out as the outage goes on, and it is
// delivered, in order with the rest, once the destination is back
// (BUG-OUTAGE-ABORT). The same event failing while other users' events are
// delivered is a message problem and is aborted after MinAttempts.
func TestCoreOutageOneKey(t *testing.T) {
	for _, minAttempts := range []int{1, 3} {
		t.Run(fmt.Sprint("min_attempts=", minAttempts), func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, Policy: Policy{MinAttempts: minAttempts}})
			seqs := h.addN("A", 5)
			outageEnd := epoch.Add(10 * time.Minute)
			h.respond = func(h *harness, b *batch) Result {
				if h.now().Before(outageEnd) {
					return Result{Status: 503, Body: []byte("down")}
				}
				return ok(h, b)
			}
			h.settle()
			if ab := h.aborted(); len(ab) != 0 {
				t.Fatalf("aborted %v: an outage seen by one key was charged to its event", ab)
			}
			if got := h.deliveredSeqs("A"); !slices.Equal(got, seqs) {
				t.Errorf("delivered %v, want %v", got, seqs)
			}
			// The retries back off as the outage lasts: far fewer than one
			// per BackoffInitial over ten minutes.
			if n := h.tries[seqs[0]]; n < 3 || n > 60 {
				t.Errorf("head tried %d times in a 10-minute outage", n)
			}
			h.check(true)
		})
	}
	t.Run("lone failure then other traffic", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true})
		poison := h.add("A")
		h.respond = func(h *harness, b *batch) Result {
			if hasSeq(b, poison) {
				return Result{Status: 500}
			}
			return ok(h, b)
		}
		h.runFor(time.Minute)
		if _, found := h.aborted()[poison]; found || h.tries[poison] < 3 {
			t.Fatalf("with no other traffic: tried %d times, aborted %v; want retried, not aborted", h.tries[poison], found)
		}
		h.otherTrafficAfter(poison)
		h.settle()
		e, found := h.aborted()[poison]
		if !found || e.Attempts != 3 || !strings.Contains(e.Reason, "failed 3 times") {
			t.Fatalf("once others are delivered: aborted %v, entry %+v", found, e)
		}
		h.check(true)
	})
}

// In an outage every request fails: the breaker opens, nothing is charged,
// a single probe goes after each growing backoff, and after recovery every
// event is delivered in order.
func TestCoreOutage(t *testing.T) {
	for _, kind := range []string{"500", "err", "wide"} {
		t.Run(kind, func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, ConcurrencyInitial: 4})
			keys := []string{"A", "B", "C", "D", "E", "F"}
			if kind == "wide" {
				// Many requests in flight when the breaker opens: their
				// failures arrive after it opened.
				h = newHarness(t, Config{Ordering: true, ConcurrencyInitial: 24})
				keys = nil
				for i := 0; i < 30; i++ {
					keys = append(keys, fmt.Sprintf("K%02d", i))
				}
			}
			for i := 0; i < 10; i++ {
				for _, k := range keys {
					h.add(k)
				}
			}
			outageEnd := epoch.Add(40 * time.Second)
			down := func(now time.Time) bool { return now.After(epoch.Add(15*time.Millisecond)) && now.Before(outageEnd) }
			h.respond = func(h *harness, b *batch) Result {
				if !down(h.now()) {
					return ok(h, b)
				}
				if kind == "err" {
					return Result{Err: errors.New("connection refused")}
				}
				return Result{Status: 503}
			}
			var probes []time.Time
			var probeFailures int
			nonProbe := 0
			h.onSend = func(h *harness, b *batch, s *send) {
				if b.probe {
					probes = append(probes, s.at)
					if h.c.inFlight != 1 || len(b.items) != 1 {
						t.Errorf("probe with %d in flight and %d events", h.c.inFlight, len(b.items))
					}
				}
			}
			lastFailures := 0
			var limitBefore, ewmaBefore float64 // AIMD's state before the outage
			h.onComplete = func(h *harness, b *batch, s *send) {
				hs := h.c.health
				if !down(s.at) && h.now().Before(outageEnd) {
					limitBefore, ewmaBefore = h.c.aimd.limit, h.c.aimd.ewma
				}
				// Only the first failure of an outage (the breaker opening)
				// and failed probes move the backoff on; the failures of
				// requests sent before the breaker opened say nothing new.
				if !b.probe && lastFailures > 0 && hs.failures > lastFailures {
					t.Errorf("request sent at %v, before the breaker opened, escalated the backoff to %d failures",
						s.at.Sub(epoch), hs.failures)
				}
				lastFailures = hs.failures
				if b.probe && hs.state == BackingOff {
					probeFailures++
					// The backoff grows with each failed probe, within the
					// exponential cap.
					if want := probeFailures + 1; hs.failures != want {
						t.Errorf("after %d failed probes the breaker counts %d failures, want %d", probeFailures, hs.failures, want)
					}
					limit := min(h.cfg.Policy.BackoffInitial<<(hs.failures-1), h.cfg.Policy.BackoffMax) + time.Millisecond
					if d := hs.until.Sub(h.now()); d <= 0 || d > limit {
						t.Errorf("backoff %v outside (0, %v]", d, limit)
					}
				}
			}
			h.runUntil("breaker open", 10_000, func() bool { return h.c.health.state == BackingOff })
			opened := h.now()
			chargedAtOpen := h.c.stats.Failed
			h.runUntil("outage over", 1_000_000, func() bool {
				if h.c.health.state != Healthy {
					// During the backoff at most one request (the probe) is
					// out; nothing else is sent.
					for _, s := range h.sends[len(h.sends)-min(len(h.sends), 8):] {
						if s.at.After(opened) && !s.probe && down(s.at) {
							nonProbe++
						}
					}
				}
				return h.now().After(outageEnd) && h.c.health.state == Healthy
			})
			if nonProbe > 0 {
				t.Errorf("%d requests other than probes sent while the breaker was open", nonProbe)
			}
			// The requests that failed together cut the concurrency limit
			// once, each failed probe once more (plus those sent after the
			// first cut, before the breaker opened): the backlog does not
			// drain one request at a time after the outage. The failures,
			// however fast, did not teach AIMD a latency.
			if want := limitBefore * math.Pow(0.9, float64(probeFailures+3)); h.c.aimd.limit < want {
				t.Errorf("concurrency limit %.2f after the outage (%.2f before, %d failed probes), want at least %.2f",
					h.c.aimd.limit, limitBefore, probeFailures, want)
			}
			if got := h.c.aimd.ewma; got < ewmaBefore*0.5 {
				t.Errorf("latency average %v after the outage, %v before: failures fed it", got, ewmaBefore)
			}
			if len(probes) < 4 {
				t.Errorf("%d probes in a 40s outage", len(probes))
			}
			if h.c.stats.BreakerOpened == 0 || h.c.stats.OutageAttempts == 0 {
				t.Errorf("breaker opened %d times, %d outage attempts", h.c.stats.BreakerOpened, h.c.stats.OutageAttempts)
			}
			// Outage attempts are not charged: nothing is charged once the
			// breaker is open, and the failures charged before it opened
			// (while the destination still looked healthy) abort nothing.
			if h.c.stats.Failed != chargedAtOpen {
				t.Errorf("%d failures charged while the breaker was open", h.c.stats.Failed-chargedAtOpen)
			}
			if n := h.cons.Count(engine.StateAborted); n != 0 {
				t.Errorf("%d events aborted by an outage", n)
			}
			for _, k := range keys {
				for _, e := range h.keyEntries(k) {
					if e.Attempts >= uint32(h.cfg.Policy.MinAttempts) {
						t.Errorf("entry %d charged %d attempts during the outage", e.Seq, e.Attempts)
					}
				}
			}
			t.Logf("%d failures charged before the breaker opened", chargedAtOpen)
			h.settle()
			for _, k := range keys {
				var want []uint64
				for _, e := range h.events {
					if e.key == k {
						want = append(want, e.seq)
					}
				}
				if got := h.deliveredSeqs(k); !slices.Equal(got, want) {
					t.Errorf("key %s delivered %v, want %v", k, got, want)
				}
			}
			var at []string
			for _, p := range probes {
				at = append(at, p.Sub(epoch).Round(time.Millisecond).String())
			}
			t.Logf("probes at %v", at)
			h.check(true)
		})
	}
}

// 429 pauses the destination without counting as a failure; AIMD lowers
// concurrency on 429 and 5xx and raises it when requests at the limit are
// as fast as usual.
func TestCoreThrottle(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, ConcurrencyInitial: 4, ConcurrencyMax: 8})
	for i := 0; i < 3; i++ {
		for k := 0; k < 60; k++ {
			h.add(fmt.Sprintf("K%02d", k))
		}
	}
	var mode string // next request's answer: "429", "429-short", "500"
	var special []*send
	h.respond = func(h *harness, b *batch) Result {
		switch m := mode; m {
		case "429":
			mode = ""
			return Result{Status: 429, RetryAfter: 2 * time.Second}
		case "429-short":
			mode = ""
			return Result{Status: 429, RetryAfter: 10 * time.Millisecond}
		case "500":
			mode = ""
			return Result{Status: 500}
		}
		return ok(h, b)
	}
	var limits []int
	h.onSend = func(h *harness, b *batch, s *send) {
		if s.res.Status != 200 {
			special = append(special, s)
		}
	}
	// cut is the limit just before and just after each answer other than
	// 200 was applied.
	cut := map[*send][2]float64{}
	last := h.c.aimd.limit
	h.onComplete = func(h *harness, b *batch, s *send) {
		limits = append(limits, h.c.aimd.Limit())
		if s.res.Status != 200 {
			cut[s] = [2]float64{last, h.c.aimd.limit}
		}
		last = h.c.aimd.limit
	}

	// Requests at the limit with steady latency raise it to the maximum.
	h.runUntil("concurrency at its maximum", 1000, func() bool { return h.maxInFlight == 8 })
	if !slices.IsSorted(limits) {
		t.Errorf("limit went down without a reason: %v", limits)
	}
	if h.maxInFlight != 8 {
		t.Errorf("at most %d requests in flight, want 8", h.maxInFlight)
	}

	// 429 with Retry-After: the limit drops by 10%, nothing is sent until
	// the pause ends, nothing is charged.
	mode = "429"
	h.runUntil("the 429 answered", 1000, func() bool { return len(special) == 1 && !h.now().Before(special[0].doneAt) })
	throttled := special[0]
	if got, want := cut[throttled][1], max(1, cut[throttled][0]*0.9); got > want {
		t.Errorf("limit %v after a 429, want at most %v", got, want)
	}
	pauseEnd := throttled.doneAt.Add(2 * time.Second)
	if !h.c.throttledUntil.Equal(pauseEnd) {
		t.Errorf("throttled until %v, want %v", h.c.throttledUntil.Sub(epoch), pauseEnd.Sub(epoch))
	}
	h.runUntil("pause over", 100_000, func() bool { return !h.sends[len(h.sends)-1].at.Before(pauseEnd) })
	for _, s := range h.sends {
		if s.at.After(throttled.doneAt) && s.at.Before(pauseEnd) {
			t.Errorf("request at %v during the pause until %v", s.at.Sub(epoch), pauseEnd.Sub(epoch))
		}
	}
	if h.c.stats.Throttled != 1 || h.c.stats.Failed != 0 || h.c.health.state != Healthy {
		t.Errorf("after a 429: %+v, breaker %s", h.c.stats, h.c.health.state)
	}
	for _, a := range h.c.health.ring {
		if !a.ok {
			t.Errorf("a 429 was recorded as a failure")
		}
	}

	// A Retry-After shorter than the initial backoff pauses for the
	// initial backoff.
	for k := 0; k < 60; k++ {
		h.add(fmt.Sprintf("K%02d", k))
	}
	mode = "429-short"
	h.runUntil("the second 429 answered", 1000, func() bool { return len(special) == 2 && !h.now().Before(special[1].doneAt) })
	if want := special[1].doneAt.Add(h.cfg.Policy.BackoffInitial); !h.c.throttledUntil.Equal(want) {
		t.Errorf("throttled until %v, want %v", h.c.throttledUntil.Sub(epoch), want.Sub(epoch))
	}

	// A 5xx lowers the limit too (and is charged: the destination is
	// otherwise healthy).
	for k := 0; k < 60; k++ {
		h.add(fmt.Sprintf("K%02d", k))
	}
	h.runUntil("pause over", 100_000, func() bool { return !h.sends[len(h.sends)-1].at.Before(h.c.throttledUntil) })
	mode = "500"
	h.runUntil("the 500 answered", 1000, func() bool { return len(special) == 3 && !h.now().Before(special[2].doneAt) })
	if got, want := cut[special[2]][1], max(1, cut[special[2]][0]*0.9); got > want {
		t.Errorf("limit %v after a 500, want at most %v", got, want)
	}
	if h.c.stats.Failed != 1 {
		t.Errorf("%d failures charged, want the 500's", h.c.stats.Failed)
	}
	h.settle()
	if h.cons.Count(engine.StateAborted) != 0 {
		t.Errorf("throttling aborted events")
	}
	for _, seq := range throttled.seqs {
		if h.tries[seq] != 2 || !h.done[seq] {
			t.Errorf("throttled event %d sent %d times (delivered %v), want once more after the pause", seq, h.tries[seq], h.done[seq])
		}
	}
	h.check(true)
}

// Events of other sources or types are not sent; the cursor passes them
// without entries, even behind a barrier.
func TestCoreFilters(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, Sources: []string{"web"}, Events: []string{"track", "identify"}})
	a1 := h.add("A")
	var filtered []uint64
	for i := 0; i < 4; i++ {
		filtered = append(filtered, h.add("A", withSource("ios")), h.add("B", withType("page")))
		h.add("A", withType("identify"))
		h.add("B")
	}
	fails := true
	h.respond = func(h *harness, b *batch) Result {
		if fails && hasSeq(b, a1) {
			return Result{Status: 500}
		}
		return ok(h, b)
	}
	h.runUntil("the cursor at the end", 1000, func() bool { cur, _ := h.cons.Cursor(); return cur == h.eng.LastSeq()+1 })
	// Behind A's barrier only A's accepted events are skipped.
	for _, e := range h.keyEntries("A") {
		if !h.bySeq[e.Seq].pass {
			t.Errorf("filtered event %d stored as %s", e.Seq, e.State)
		}
	}
	if got := len(entrySeqs(h.keyEntries("A"), engine.StateSkipped)); got != 4 {
		t.Errorf("%d skipped entries for A, want 4", got)
	}
	fails = false
	h.settle()
	if h.c.stats.Filtered != uint64(len(filtered)) {
		t.Errorf("%d filtered, want %d", h.c.stats.Filtered, len(filtered))
	}
	for _, s := range filtered {
		if _, err := h.cons.Entry(s); !errors.Is(err, engine.ErrNotFound) {
			t.Errorf("filtered event %d has an entry (%v)", s, err)
		}
	}
	st := h.eng.Stats()
	if len(st.Consumers) != 1 || st.Consumers[0].BacklogEvents != 0 || st.Consumers[0].Cursor != st.LastSeq+1 {
		t.Errorf("consumer stats %+v", st.Consumers)
	}
	h.check(true)
}

// With ordering off a failed event holds nothing back: the later events of
// its key go on, and it is retried on its own.
func TestCoreOrderingOff(t *testing.T) {
	h := newHarness(t, Config{Ordering: false, BatchSize: 2})
	a1 := h.add("A")
	later := h.addN("A", 6)
	h.addN("B", 3)
	h.respond = func(h *harness, b *batch) Result {
		if hasSeq(b, a1) && h.tries[a1] <= 2 {
			return Result{Status: 500}
		}
		return ok(h, b)
	}
	h.runUntil("A's later events delivered", 1000, func() bool {
		return !slices.ContainsFunc(later, func(s uint64) bool { return !h.done[s] })
	})
	if h.done[a1] {
		t.Fatal("A1 delivered already")
	}
	if h.cons.Count(engine.StateSkipped) != 0 {
		t.Error("skipped entries with ordering off")
	}
	if _, has, _ := h.cons.Barrier([]byte("A")); has {
		t.Error("barrier with ordering off")
	}
	h.settle()
	if h.tries[a1] != 3 {
		t.Errorf("A1 tried %d times, want 3", h.tries[a1])
	}
	if got := h.deliveredSeqs("A"); got[len(got)-1] != a1 {
		t.Errorf("A delivered %v: A1 should come last", got)
	}
	h.check(true)
}

// Replay re-queues a dead letter: it is delivered again with its
// messageId, and neither it nor a new failure of it blocks its key.
func TestCoreReplay(t *testing.T) {
	h := newHarness(t, Config{Ordering: true})
	a1 := h.add("A")
	a2 := h.add("A")
	h.add("B")
	refuse, fail := true, false
	h.respond = func(h *harness, b *batch) Result {
		switch {
		case hasSeq(b, a1) && refuse:
			return Result{Status: 422, Body: []byte("invalid")}
		case hasSeq(b, a1) && fail:
			return Result{Status: 500}
		}
		return ok(h, b)
	}
	h.settle()
	if _, found := h.aborted()[a1]; !found || !h.done[a2] {
		t.Fatalf("A1 aborted %v, A2 delivered %v", found, h.done[a2])
	}

	// Replay it; it fails once more, and A's new events do not wait.
	refuse, fail = false, true
	if n, err := h.cons.Replay(h.now().UnixNano(), nil); n != 1 || err != nil {
		t.Fatalf("replay: %d %v", n, err)
	}
	h.replayed[a1] = true
	h.c.refreshDue() // Router.Kick
	h.runUntil("the replayed event sent", 1000, func() bool { return h.tries[a1] == 2 })
	a3 := h.add("A")
	h.runUntil("the replayed event's failure stored", 1000, func() bool {
		e, err := h.cons.Entry(a1)
		return err == nil && e.State == engine.StateFailed && e.LastAttempt > 0 && e.Flags&engine.EntryUnconfirmed != 0
	})
	e, _ := h.cons.Entry(a1)
	if e.Flags&engine.EntryReplayed == 0 {
		t.Errorf("replayed entry lost its flag: %+v", e)
	}
	h.runUntil("A3 delivered", 1000, func() bool { return h.done[a3] })
	if h.done[a1] {
		t.Fatal("A1 delivered before its retry")
	}
	if _, has, _ := h.cons.Barrier([]byte("A")); has {
		t.Error("a replayed event set a barrier")
	}
	fail = false
	h.settle()
	if !h.done[a1] {
		t.Fatal("replayed event not delivered")
	}
	if d := h.dlv[len(h.dlv)-1]; d.seq != a1 || d.msgID != h.bySeq[a1].msgID {
		t.Errorf("last delivery %+v, want A1 with messageId %s", d, h.bySeq[a1].msgID)
	}
	if h.cons.Count(engine.StateAborted) != 0 {
		t.Errorf("dead letters left after the replay")
	}
	h.check(true)
}

// A destination that names the events it refuses in a batch it otherwise
// takes (a partial success): the named ones are handled as if sent alone
// (refused: aborted at once; failing: retried behind their key's barrier),
// the others are delivered by that one request. Nothing is sent again to
// find the bad event.
func TestCorePartialRejection(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, BatchSize: 5, ConcurrencyInitial: 1})
	var seqs []uint64
	for i := 0; i < 4; i++ {
		for _, k := range []string{"A", "B", "C", "D", "E"} {
			seqs = append(seqs, h.add(k))
		}
	}
	poison, flaky := seqs[6], seqs[12] // B in the second batch, C in the third
	h.respond = func(h *harness, b *batch) Result {
		var rej []Rejection
		for i, it := range b.items {
			switch {
			case it.seq == poison:
				rej = append(rej, Rejection{Index: i, Status: 422, Reason: []byte(`{"error":"bad"}`)})
			case it.key == "C" && it.seq >= flaky && h.tries[flaky] == 1:
				// It keeps each user's order: C's later events in the
				// batch are refused with the failing one.
				rej = append(rej, Rejection{Index: i, Status: 503})
			}
		}
		return Result{Status: 200, Rejected: rej}
	}
	h.settle()
	ab := h.aborted()
	if len(ab) != 1 || ab[poison].Reason != "rejected with status 422" || string(ab[poison].Response) != `{"error":"bad"}` {
		t.Fatalf("aborted %+v, want only %d, refused with its reason", ab, poison)
	}
	for _, seq := range seqs {
		want := 1
		if seq >= flaky && h.bySeq[seq].key == "C" {
			want = 2
		}
		if h.tries[seq] != want {
			t.Errorf("event %d sent %d times, want %d", seq, h.tries[seq], want)
		}
		if seq != poison && !h.done[seq] {
			t.Errorf("event %d not delivered", seq)
		}
	}
	if got := h.c.stats.Rejected; got != 3 {
		t.Errorf("rejected counter %d, want 3", got)
	}
	h.check(true) // C's later events waited for the retried one
}

// Partial answers and the destination's health: named retryable failures
// that outnumber the events taken count as the request failing, so an
// outage answered "200, but these 503" opens the breaker and charges
// nothing; an answer whose names fit no event of the batch is a whole-batch
// answer (a refusal is bisected, not taken as delivered).
func TestCorePartialHealth(t *testing.T) {
	t.Run("outage-by-name", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true, BatchSize: 5})
		for i := 0; i < 200; i++ {
			h.add(fmt.Sprintf("k%d", i%40))
		}
		end := h.now().Add(10 * time.Minute)
		h.respond = func(h *harness, b *batch) Result {
			if !h.now().Before(end) {
				return ok(h, b)
			}
			var rej []Rejection
			for i, it := range b.items {
				if (it.seq*7+uint64(h.tries[it.seq]))%4 != 0 {
					rej = append(rej, Rejection{Index: i, Status: 503})
				}
			}
			return Result{Status: 200, Rejected: rej}
		}
		h.settle()
		if ab := h.aborted(); len(ab) != 0 {
			t.Fatalf("%d events aborted by a destination answering 503 by name for 10 minutes", len(ab))
		}
		if h.c.stats.BreakerOpened == 0 {
			t.Errorf("the breaker never opened")
		}
		h.check(true)
	})
	t.Run("names-out-of-range", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true, BatchSize: 5, ConcurrencyInitial: 1})
		var seqs []uint64
		for _, k := range []string{"A", "B", "C", "D", "E"} {
			seqs = append(seqs, h.add(k))
		}
		poison := seqs[2]
		h.respond = func(h *harness, b *batch) Result {
			if hasSeq(b, poison) {
				return Result{Status: 400, Rejected: []Rejection{{Index: 99, Status: 400}}}
			}
			return ok(h, b)
		}
		h.settle()
		if ab := h.aborted(); len(ab) != 1 || ab[poison].Seq != poison {
			t.Fatalf("aborted %v, want only %d", ab, poison)
		}
		if h.done[poison] {
			t.Errorf("the refused event counted as delivered")
		}
		h.check(true)
	})
}

// A batch the destination refuses is bisected: its events go again in
// halves, a refused half is halved again, and only the event refused alone
// is aborted, both for window batches and for batches of released skipped
// events. A retryable failure or a 429 of one event inside a released batch
// holds the key's later events back.
func TestCoreBatchIsolation(t *testing.T) {
	t.Run("window", func(t *testing.T) {
		h := newHarness(t, Config{Ordering: true, BatchSize: 5, ConcurrencyInitial: 1})
		var seqs []uint64
		for i := 0; i < 4; i++ {
			for _, k := range []string{"A", "B", "C", "D", "E"} {
				seqs = append(seqs, h.add(k))
			}
		}
		poison := seqs[7] // in the second batch
		h.respond = func(h *harness, b *batch) Result {
			if hasSeq(b, poison) {
				return Result{Status: 400}
			}
			return ok(h, b)
		}
		h.runUntil("the poison aborted", 1000, func() bool { return h.final(poison) })
		for _, k := range []string{"A", "B", "C", "D", "E"} {
			h.addN(k, 2)
		}
		h.settle()
		if ab := h.aborted(); len(ab) != 1 || ab[poison].Seq != poison {
			t.Fatalf("aborted %v, want only %d", ab, poison)
		}
		// The refused batch had several events; they went again in
		// halves (5 -> 3 -> 2 -> 1: the poison refused alone once, after
		// at most three more refusals), the others were delivered, each
		// sent at most four times; batching then resumed.
		i := slices.IndexFunc(h.sends, func(s *send) bool { return slices.Contains(s.seqs, poison) })
		refused := h.sends[i]
		if len(refused.seqs) != 5 || refused.res.Status != 400 {
			t.Fatalf("first request with the poison: %+v", refused)
		}
		var withPoison []int // sizes of the requests with the poison
		last := i
		for j, s := range h.sends {
			if slices.Contains(s.seqs, poison) {
				withPoison = append(withPoison, len(s.seqs))
				last = j
			}
		}
		if !slices.Equal(withPoison, []int{5, 3, 2, 1}) && !slices.Equal(withPoison, []int{5, 3, 1}) && !slices.Equal(withPoison, []int{5, 2, 1}) {
			t.Errorf("requests with the poison had %v events, want halving down to 1", withPoison)
		}
		for _, seq := range refused.seqs {
			if seq != poison && (h.tries[seq] < 2 || h.tries[seq] > 4 || !h.done[seq]) {
				t.Errorf("event %d of the refused batch sent %d times, delivered %v", seq, h.tries[seq], h.done[seq])
			}
		}
		if !slices.ContainsFunc(h.sends[last+1:], func(s *send) bool { return len(s.seqs) > 1 }) {
			t.Errorf("batching did not resume after the isolation")
		}
		h.check(true)
	})
	for _, mode := range []string{"400", "500", "429"} {
		t.Run("released-"+mode, func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, BatchSize: 5})
			a1 := h.add("A")
			aLater := h.addN("A", 8)
			h.addN("B", 3)
			bad := aLater[3] // in the first released batch, aLater[0:5]
			stalled := aLater[1]
			solo := map[uint64]int{} // sends of an event alone
			stalls := 0
			h.respond = func(h *harness, b *batch) Result {
				if len(b.items) == 1 {
					solo[b.items[0].seq]++
				}
				switch {
				case hasSeq(b, a1) && (len(b.items) > 1 || solo[a1] <= 1):
					return Result{Status: 500} // in its window batches, then alone
				case hasSeq(b, bad) && (mode == "400" || len(b.items) > 1):
					return Result{Status: 400}
				case mode == "500" && hasSeq(b, bad) && solo[bad] <= 2:
					return Result{Status: 500} // fails twice alone, then goes
				case mode == "429" && b.entry && hasSeq(b, stalled) && stalls == 0:
					stalls++
					return Result{Status: 429, RetryAfter: 3 * time.Second}
				}
				return ok(h, b)
			}
			h.runUntil("A's later events skipped", 1000, func() bool { return h.cons.Count(engine.StateSkipped) == 8 })
			h.settle()
			want := append([]uint64{a1}, aLater...)
			if mode == "400" {
				want = slices.DeleteFunc(want, func(s uint64) bool { return s == bad })
				if ab := h.aborted(); len(ab) != 1 || ab[bad].LastStatus != 400 {
					t.Errorf("aborted %v, want only %d", ab, bad)
				}
			}
			if got := h.deliveredSeqs("A"); !slices.Equal(got, want) {
				t.Errorf("A delivered %v, want %v", got, want)
			}
			h.check(true)
		})
	}
}

// Max age: an event older than MaxAge is aborted as expired without being
// sent, whether it waits in the window or behind a barrier.
func TestCoreMaxAge(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, Policy: Policy{MaxAge: time.Minute, MinAttempts: 1000, BackoffMax: 10 * time.Second}})
	old := h.add("A", receivedAt(epoch.Add(-2*time.Minute)))
	a2 := h.add("A")
	h.settle()
	e, found := h.aborted()[old]
	if !found || !strings.Contains(e.Reason, "expired") || e.Attempts != 0 || h.tries[old] != 0 {
		t.Errorf("old event: entry %+v (found %v), tries %d; want aborted as expired, never sent", e, found, h.tries[old])
	}
	if !h.done[a2] {
		t.Error("the event after an expired one was not delivered")
	}

	// B's head fails for longer than MaxAge: it and the events skipped
	// behind it expire while they wait; a new B event then goes.
	b1 := h.add("B")
	bLater := h.addN("B", 3)
	h.respond = func(h *harness, b *batch) Result {
		if hasSeq(b, b1) {
			return Result{Status: 500}
		}
		return ok(h, b)
	}
	h.runUntil("B's events skipped", 1000, func() bool { return h.cons.Count(engine.StateSkipped) == 3 })
	h.runFor(90 * time.Second)
	bNew := h.add("B")
	h.settle()
	ab := h.aborted()
	for _, s := range append([]uint64{b1}, bLater...) {
		e, found := ab[s]
		if !found || !strings.Contains(e.Reason, "expired") {
			t.Errorf("event %d: entry %+v (found %v), want aborted as expired", s, e, found)
		}
		if s != b1 && (h.tries[s] != 0 || e.Attempts != 0) {
			t.Errorf("expired skipped event %d sent %d times, %d attempts", s, h.tries[s], e.Attempts)
		}
	}
	if !h.done[bNew] {
		t.Error("B's new event not delivered after its old ones expired")
	}
	if h.c.stats.Expired != 5 {
		t.Errorf("%d expired, want 5", h.c.stats.Expired)
	}
	h.check(true)
}

// After a crash the router resumes from the index: failed and skipped
// entries and barriers are restored, the barriers' keys drained, and
// everything is delivered in order (events in flight at the crash again).
func TestCoreCrashRecovery(t *testing.T) {
	for _, mode := range []string{"drop-core", "reopen", "crash-after-sync", "crash-unsynced"} {
		t.Run(mode, func(t *testing.T) {
			h := newHarness(t, Config{Ordering: true, BatchSize: 3, ConcurrencyInitial: 2, Policy: Policy{MinAttempts: 10}})
			keys := []string{"A", "B", "C", "D", "E"}
			bySeq := map[string][]uint64{}
			for i := 0; i < 8; i++ {
				for _, k := range keys {
					bySeq[k] = append(bySeq[k], h.add(k))
				}
			}
			a1, b3, c2 := bySeq["A"][0], bySeq["B"][2], bySeq["C"][1]
			aDown := true
			h.respond = func(h *harness, b *batch) Result {
				switch {
				case hasSeq(b, a1) && aDown:
					return Result{Status: 500}
				case hasSeq(b, b3) && (len(b.items) > 1 || h.tries[b3] <= 3):
					return Result{Status: 503}
				case hasSeq(b, c2):
					return Result{Status: 400}
				}
				return ok(h, b)
			}
			h.runUntil("A and B failing, their later events skipped", 10_000, func() bool {
				return h.cons.Count(engine.StateFailed) == 2 && h.cons.Count(engine.StateSkipped) == 12
			})
			if mode == "crash-after-sync" {
				// The router commits without fsync; a synced index write
				// (creating a consumer syncs) makes its state so far
				// durable, so the crash loses only what follows.
				h.c.flush(h.now(), true)
				if _, err := h.eng.Consumer("sync-point"); err != nil {
					t.Fatal(err)
				}
			}
			// Crash with requests in flight: the destination got them, the
			// router never learns the outcome.
			late := []uint64{h.add("D"), h.add("E"), h.add("E")}
			bySeq["D"] = append(bySeq["D"], late[0])
			bySeq["E"] = append(bySeq["E"], late[1:]...)
			h.turn()
			inFlight := len(h.flights)
			if inFlight == 0 {
				t.Fatal("nothing in flight at the crash")
			}
			failed, skipped := h.cons.Count(engine.StateFailed), h.cons.Count(engine.StateSkipped)
			if mode == "drop-core" || mode == "reopen" {
				// A barrier with nothing behind it is lifted at startup.
				txn := h.cons.Begin()
				txn.SetBarrier([]byte("Z"), 1)
				if err := txn.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			h.restart(mode)
			if mode != "crash-unsynced" {
				if f, s := h.cons.Count(engine.StateFailed), h.cons.Count(engine.StateSkipped); f != failed || s != skipped {
					t.Errorf("after restart %d failed and %d skipped entries, want %d and %d", f, s, failed, skipped)
				}
			}
			nb := 0
			h.cons.Barriers(func(key []byte, head uint64) error {
				nb++
				ks := h.c.keys.keys[string(key)]
				if ks == nil || !ks.blocked || !ks.draining {
					t.Errorf("barrier of %q (head %d) not restored as a blocked, draining key: %+v", key, head, ks)
				}
				return nil
			})
			if want := map[string]int{"drop-core": 3, "reopen": 3, "crash-after-sync": 2}[mode]; mode != "crash-unsynced" && nb != want {
				t.Errorf("%d barriers after restart, want %d", nb, want)
			}
			t.Logf("restart with %d failed, %d skipped, %d requests in flight, %d barriers", failed, skipped, inFlight, nb)
			h.runFor(5 * time.Second)
			aDown = false
			h.settle()
			ab := h.aborted()
			if len(ab) != 1 || ab[c2].LastStatus != 400 {
				t.Errorf("aborted %v, want only %d", ab, c2)
			}
			for _, k := range keys {
				want := slices.DeleteFunc(slices.Clone(bySeq[k]), func(s uint64) bool { return s == c2 })
				if got := firstOnly(h.deliveredSeqs(k)); !slices.Equal(got, want) {
					t.Errorf("key %s: first deliveries %v, want %v", k, got, want)
				}
			}
			h.check(true)
		})
	}
}

// A lone failing event must not hold the whole destination once the
// breaker is open: with little traffic, old failures of another key stay
// in the health window and the poison's own failures open the breaker;
// the probes must then not all be the poison, or no other user's event is
// ever sent again (until the poison's max age, 72h).
func TestCorePoisonDoesNotHoldOpenBreaker(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, Policy: Policy{MinAttempts: 10}})
	a1 := h.add("A")
	b1 := h.add("B")
	h.respond = func(h *harness, b *batch) Result {
		switch {
		case hasSeq(b, a1):
			return Result{Status: 500} // poison
		case hasSeq(b, b1) && h.tries[b1] <= 2:
			return Result{Status: 500} // a passing problem
		}
		return ok(h, b)
	}
	h.otherTrafficAfter(a1)
	h.runUntil("breaker open", 10_000, func() bool { return h.c.health.state != Healthy })
	opened := h.now()
	later := []uint64{h.add("B"), h.add("C"), h.add("D")}
	h.runUntil("other users' events delivered", 100_000, func() bool {
		return !slices.ContainsFunc(later, func(s uint64) bool { return !h.done[s] })
	})
	if d := h.now().Sub(opened); d > 10*time.Second {
		t.Errorf("other users waited %v behind the poison", d)
	}
	h.settle()
	if e, found := h.aborted()[a1]; !found || e.Attempts != 10 {
		t.Errorf("poison entry %+v (aborted %v), want aborted after 10 charged attempts", e, found)
	}
	h.check(true)
}

// Random scenarios: a destination with poison events (refused or always
// failing), flaky events, outages, throttling, uneven latency, and router
// restarts, under random settings. The dispatch checks (order, messageIds,
// filters) hold throughout; once the faults stop, everything settles,
// delivered or aborted.
func TestCoreRandomized(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 8
	}
	if n, err := strconv.Atoi(os.Getenv("SLUICE_ROUTER_SEEDS")); err == nil {
		seeds = n // a longer hunt
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomScenario(t, seed) })
	}
}

func randomScenario(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	pick := func(xs ...int) int { return xs[rng.IntN(len(xs))] }
	cfg := Config{
		Ordering:           rng.IntN(5) > 0,
		BatchSize:          pick(1, 1, 3, 10),
		ConcurrencyInitial: pick(1, 4, 16),
		ConcurrencyMax:     pick(8, 32),
		WindowEvents:       pick(10, 50, 10_000),
		Policy: Policy{MinAttempts: pick(2, 3, 5), BackoffMax: 10 * time.Second, MaxAge: 30 * time.Minute,
			HealthWindow: pick(10, 20), FailureMin: pick(3, 5)},
	}
	if rng.IntN(3) == 0 {
		cfg.Sources = []string{"web"}
	}
	if rng.IntN(4) == 0 {
		cfg.RateLimit = float64(pick(5, 50, 500))
	}
	h := newHarness(t, cfg)
	h.latencyFn = func() time.Duration { return time.Duration(pick(0, 1, 5, 20, 200)) * time.Millisecond }
	nkeys := pick(1, 3, 8, 20)
	class := map[uint64]string{}
	addEvents := func(n int) {
		for range n {
			var opts []evOpt
			if rng.IntN(10) == 0 {
				opts = append(opts, withSource("ios"))
			}
			seq := h.add(fmt.Sprintf("k%d", rng.IntN(nkeys)), opts...)
			switch r := rng.IntN(100); {
			case r < 3:
				class[seq] = "refused"
			case r < 5:
				class[seq] = "failing"
			case r < 12:
				class[seq] = "flaky"
			}
		}
	}
	faults := true
	names := rng.IntN(3) == 0 // the destination names the events it refuses
	var downUntil, throttleUntil time.Time
	h.respond = func(h *harness, b *batch) Result {
		now := h.now()
		if faults {
			if now.Before(downUntil) {
				if rng.IntN(2) == 0 {
					return Result{Err: errors.New("connection reset"), Ambiguous: rng.IntN(2) == 0}
				}
				return Result{Status: 502}
			}
			switch r := rng.IntN(1000); {
			case r < 3:
				downUntil = now.Add(time.Duration(1+rng.IntN(20)) * time.Second)
				return Result{Status: 503}
			case r < 15 && now.After(throttleUntil):
				throttleUntil = now.Add(time.Second)
				return Result{Status: 429, RetryAfter: time.Duration(rng.IntN(3000)) * time.Millisecond}
			}
		}
		if names {
			if res, ok := nameRejected(h, b, class, faults); ok {
				return res
			}
		}
		for _, it := range b.items {
			switch class[it.seq] {
			case "refused":
				return Result{Status: 400, Body: []byte("no")}
			case "failing":
				return Result{Status: 500}
			case "flaky":
				if h.tries[it.seq] <= 1 && faults {
					return Result{Status: 500}
				}
			}
		}
		return ok(h, b)
	}
	addEvents(100)
	for phase := 0; phase < 6; phase++ {
		h.runFor(time.Duration(rng.IntN(5000)) * time.Millisecond)
		addEvents(rng.IntN(60))
		if rng.IntN(3) == 0 {
			h.restart([]string{"drop-core", "reopen", "crash-unsynced"}[rng.IntN(3)])
		}
		if rng.IntN(4) == 0 { // replay the dead letters
			ents, err := h.cons.Aborted(0, 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				h.replayed[e.Seq] = true
			}
			if _, err := h.cons.Replay(h.now().UnixNano(), nil); err != nil {
				t.Fatal(err)
			}
			h.c.refreshDue()
		}
	}
	faults = false
	h.runUntil("settled", 500_000, h.settled)
	ab := h.aborted()
	for seq, e := range ab {
		// Only the refused events are refused (the others of their batches
		// are isolated and go through). Other events may be aborted for
		// failures charged before an outage was recognized (never, with
		// a single key failing), or expire behind a long failure.
		if c := class[seq]; c != "refused" && strings.HasPrefix(e.Reason, "rejected") {
			t.Errorf("event %d (%q) aborted: %s", seq, c, e.Reason)
		}
	}
	h.check(true)
	t.Logf("names %v, ordering %v, rate %v, batch %d, concurrency %d/%d, window %d, min attempts %d, health %d/%d, %d keys: "+
		"%d events, %d requests, %d delivered, %d aborted, %d steps, %v",
		names, cfg.Ordering, cfg.RateLimit, cfg.BatchSize, cfg.ConcurrencyInitial, cfg.ConcurrencyMax, cfg.WindowEvents, cfg.Policy.MinAttempts,
		cfg.Policy.FailureMin, cfg.Policy.HealthWindow, nkeys, len(h.events), len(h.sends), len(h.done), len(ab), h.steps, h.now().Sub(epoch).Round(time.Second))
}

// nameRejected answers a batch the way a destination that reports per event
// would: it takes the good events and names the refused (400) and failing
// (500) ones, the batch status 200 or 400. It keeps each user's order: a
// failing event followed in the batch by a later one of its key gets those
// named too (503), or the whole batch failed. ok is false when nothing is
// named.
func nameRejected(h *harness, b *batch, class map[uint64]string, faults bool) (Result, bool) {
	var rej []Rejection
	stopped := map[string]bool{}
	for i, it := range b.items {
		status := 0
		if stopped[it.key] {
			status = 503
		}
		switch class[it.seq] {
		case "refused":
			status = 400
		case "failing":
			status = 500
		case "flaky":
			if h.tries[it.seq] <= 1 && faults {
				status = 500
			}
		}
		if status == 0 {
			continue
		}
		if status >= 500 && slices.ContainsFunc(b.items[i+1:], func(o *item) bool { return o.key == it.key }) {
			if it.seq%2 == 0 {
				return Result{Status: 500}, true
			}
			stopped[it.key] = true
		}
		rej = append(rej, Rejection{Index: i, Status: status, Reason: []byte("named")})
	}
	if len(rej) == 0 {
		return Result{}, false
	}
	status := 200
	if len(rej)%2 == 0 {
		status = 400
	}
	return Result{Status: status, Rejected: rej}, true
}

// A dead letter replayed while its key is blocked: the replayed event is
// stored as failed next to the key's skipped events, but it is not part of
// the key's queue. Accepted or failing again, it must neither stop the
// key's skipped events from being released nor hold them back, and its own
// retries keep their backoff.
func TestCoreReplayIntoBlockedKey(t *testing.T) {
	for _, mode := range []string{"accepted", "failing"} {
		for _, bs := range []int{1, 5} {
			t.Run(fmt.Sprintf("%s-batch%d", mode, bs), func(t *testing.T) {
				h := newHarness(t, Config{Ordering: true, BatchSize: bs, Policy: Policy{MinAttempts: 4}})
				var a1, a3 uint64
				replayedAt := time.Time{}
				h.respond = func(h *harness, b *batch) Result {
					switch {
					case hasSeq(b, a1) && h.tries[a1] == 1:
						return Result{Status: 400}
					case hasSeq(b, a1) && mode == "failing" && h.tries[a1] <= 4:
						return Result{Status: 500} // 3 more failures, then accepted
					case hasSeq(b, a3) && !b.entry:
						return Result{Status: 500} // until retried from its entry
					}
					return ok(h, b)
				}
				a1 = h.add("A")
				h.runUntil("A1 refused", 100, func() bool { return h.final(a1) })
				a3 = h.add("A")
				aLater := h.addN("A", 2)
				// A3's retry succeeds; before the key's queue is read again,
				// an operator replays A1.
				h.onComplete = func(h *harness, b *batch, s *send) {
					if b.entry && hasSeq(b, a3) && s.res.Status == 200 {
						if n, err := h.cons.Replay(h.now().UnixNano(), nil); n != 1 || err != nil {
							t.Fatalf("replay: %d %v", n, err)
						}
						h.replayed[a1] = true
						replayedAt = h.now()
						h.c.refreshDue()
					}
				}
				h.runUntil("A's later events skipped", 1000, func() bool { return h.cons.Count(engine.StateSkipped) == 2 })
				aNew := h.add("A")
				h.settle()
				want := append(append([]uint64{a3}, aLater...), aNew)
				got := h.deliveredSeqs("A")
				if !slices.Equal(slices.DeleteFunc(slices.Clone(got), func(s uint64) bool { return s == a1 }), want) {
					t.Errorf("A delivered %v, want %v (and the replayed %d)", got, want, a1)
				}
				if !h.done[a1] {
					t.Error("replayed event not delivered")
				}
				if mode == "failing" {
					// Its failures hold nothing back, and it is retried
					// with a backoff, not at once.
					if got[len(got)-1] != a1 {
						t.Errorf("A delivered %v: the failing replayed event should come last", got)
					}
					var at []time.Time
					for _, s := range h.sends {
						if slices.Contains(s.seqs, a1) && s.at.After(replayedAt) {
							at = append(at, s.at)
						}
					}
					for i := 1; i < len(at); i++ {
						if gap := at[i].Sub(at[i-1]); gap < 10*time.Millisecond+time.Millisecond {
							t.Errorf("replayed event retried %v after its previous try", gap)
						}
					}
				}
				h.check(true)
			})
		}
	}
}

// The rate limit caps events per second; a released batch it splits keeps
// its order even when its first part fails and is resent one by one.
func TestCoreRateLimit(t *testing.T) {
	h := newHarness(t, Config{Ordering: true, BatchSize: 10, RateLimit: 5, Policy: Policy{MinAttempts: 10}})
	a := h.addN("A", 11)
	h.respond = func(h *harness, b *batch) Result {
		switch {
		case hasSeq(b, a[0]) && !b.entry:
			return Result{Status: 500} // in its window batch and alone
		case hasSeq(b, a[2]) && b.entry && len(b.items) > 1:
			return Result{Status: 500} // the first part of a split release
		}
		return ok(h, b)
	}
	h.settle()
	if got := h.deliveredSeqs("A"); !slices.Equal(got, a) {
		t.Errorf("A delivered %v, want %v", got, a)
	}
	split := false
	for _, s := range h.sends {
		if s.entry && len(s.seqs) > 1 && len(s.seqs) < 10 && slices.Contains(s.seqs, a[2]) {
			split = true
		}
	}
	if !split {
		t.Error("the rate limit did not split the released batch; the scenario needs it")
	}
	// Events per second stay within the burst (10) plus the rate (5).
	for i, s := range h.sends {
		n := 0
		for _, o := range h.sends[i:] {
			if o.at.Sub(s.at) < time.Second {
				n += len(o.seqs)
			}
		}
		if n > 15 {
			t.Errorf("%d events sent in the second after %v", n, s.at.Sub(epoch))
		}
	}
	h.check(true)
}
