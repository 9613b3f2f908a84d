package router

import (
	"time"
)

// BreakerState is a destination's health as the router sees it.
type BreakerState uint8

const (
	// Healthy: dispatching freely.
	Healthy BreakerState = iota
	// BackingOff: the destination looked down; nothing is sent until the
	// backoff ends.
	BackingOff
	// Probing: one event is in flight to test the destination.
	Probing
)

func (s BreakerState) String() string { return [...]string{"healthy", "backing_off", "probing"}[s] }

// health tracks recent attempts and the breaker. It tells a destination
// problem (many unrelated events failing: back off, charge nothing) from a
// message problem (one event failing while others succeed: charge the
// event; see confirms).
type health struct {
	p        *Policy
	ring     []attempt
	next     int
	state    BreakerState
	until    time.Time // end of the current backoff
	failures int       // consecutive breaker openings, for the backoff
	opened   time.Time // when the breaker last opened
}

// attempt is one answered request: ok when the destination answered at
// all (2xx, a refusal, a throttle), delivered when it took the events.
type attempt struct {
	ok, delivered bool
	key           string
	start         time.Time
}

func newHealth(p *Policy) *health {
	return &health{p: p, ring: make([]attempt, 0, p.HealthWindow)}
}

func (h *health) record(a attempt) {
	if len(h.ring) < cap(h.ring) {
		h.ring = append(h.ring, a)
		return
	}
	h.ring[h.next] = a
	h.next = (h.next + 1) % len(h.ring)
}

// looksDown reports whether recent failures say the destination is down.
func (h *health) looksDown() bool {
	fails := 0
	var k1, k2 string
	for _, a := range h.ring {
		if a.ok {
			continue
		}
		fails++
		if k1 == "" || a.key == k1 {
			k1 = a.key
		} else {
			k2 = a.key
		}
	}
	return fails >= h.p.FailureMin && k2 != "" && float64(fails) >= h.p.FailureRatio*float64(len(h.ring))
}

// success records an answered attempt (delivered: 2xx); a probe's answer
// closes the breaker.
func (h *health) success(key string, start time.Time, delivered bool) {
	h.record(attempt{ok: true, delivered: delivered, key: key, start: start})
	if h.state != Healthy {
		h.state, h.failures = Healthy, 0
		h.ring = h.ring[:0]
		h.next = 0
	}
}

// probeUnanswered puts the breaker back to backing off, due now, when the
// probe in flight got no answer about the destination's health (the
// destination paused itself): the next poll sends a new probe.
func (h *health) probeUnanswered(now time.Time) {
	if h.state == Probing {
		h.state, h.until = BackingOff, now
	}
}

// failure records a retryable failure and reports whether it is charged to
// the event (a message problem) or not (the destination is down: the
// breaker is open now).
func (h *health) failure(key string, start, now time.Time, rnd Rand) (charged bool) {
	switch h.state {
	case BackingOff:
		// A request sent before the breaker opened: it says nothing new,
		// and only a failed probe extends the backoff.
		return false
	case Probing:
		h.open(now, rnd)
		return false
	}
	h.record(attempt{key: key, start: start})
	if h.looksDown() {
		h.open(now, rnd)
		return false
	}
	return true
}

// confirms reports whether a lone event's failure at failedAt was a message
// problem: since then the destination delivered most of the requests sent
// after it (at least one), and the breaker has not opened. Until then the
// failure may have been the first sign of an outage (with one key sending,
// or before enough keys failed to open the breaker), and it is not charged.
func (h *health) confirms(failedAt time.Time) bool {
	if !h.opened.Before(failedAt) && !h.opened.IsZero() {
		return false
	}
	delivered, failed := 0, 0
	for _, a := range h.ring {
		if a.start.Before(failedAt) {
			continue // sent before the failure was seen
		}
		switch {
		case a.delivered:
			delivered++
		case !a.ok:
			failed++
		}
	}
	return delivered > 0 && delivered > failed
}

func (h *health) open(now time.Time, rnd Rand) {
	h.opened = now
	h.failures++
	h.state = BackingOff
	h.until = now.Add(h.p.backoff(h.failures, rnd))
}

// aimd is adaptive request concurrency (as Vector's): the limit grows by
// one while requests at the limit are as fast as usual, and shrinks by 10%
// on throttling, errors or requests far slower than usual.
//
// A change is judged only by requests started after it: those in flight
// when the limit was cut say nothing about the new limit. So the limit
// rises at most by one per round trip, and falls at most once per round
// trip: when a destination goes down, the dozens of requests in flight
// that fail together cut it once, not to 1 (which would leave the backlog
// to drain at one request at a time after the outage). The latency
// average learns only from delivered requests: a fast refusal (an outage's
// 503s) is not the destination's usual speed, and would make every healthy
// request after it look slow.
type aimd struct {
	limit, max float64
	ewma       float64   // latency moving average of delivered requests, seconds
	raised     time.Time // when the limit last rose
	cut        time.Time // when the limit last fell
}

// The AIMD's tuning:
const (
	// aimdCut is the factor a bad or slow answer cuts the limit by (at most
	// once per round trip).
	aimdCut = 0.9
	// aimdSlow: a delivered request slower than this many times the
	// average counts as bad (the destination is saturating).
	aimdSlow = 2
	// aimdSteady: the limit rises (by one, once per round trip) only while
	// requests at the limit answer within this many times the average.
	aimdSteady = 1.1
	// aimdEWMAWeight is the weight of each new latency in the average.
	aimdEWMAWeight = 0.1
)

func newAIMD(initial, max int) *aimd {
	return &aimd{limit: float64(initial), max: float64(max)}
}

func (a *aimd) Limit() int { return max(1, int(a.limit)) }

// observe records a request started at start and answered at now, with
// inFlight requests out (itself included) when it was answered; bad when
// it was throttled or failed.
func (a *aimd) observe(start, now time.Time, inFlight int, bad bool) {
	l := now.Sub(start).Seconds()
	slow := !bad && a.ewma > 0 && l > aimdSlow*a.ewma
	if !bad {
		if a.ewma == 0 {
			a.ewma = l
		} else {
			a.ewma = (1-aimdEWMAWeight)*a.ewma + aimdEWMAWeight*l
		}
	}
	switch {
	case bad || slow:
		if !start.Before(a.cut) {
			a.limit = max(1, a.limit*aimdCut)
			a.cut = now
		}
	case inFlight >= a.Limit() && l <= a.ewma*aimdSteady && !start.Before(a.raised) && !start.Before(a.cut):
		if a.limit < a.max {
			a.limit = min(a.max, a.limit+1)
			a.raised = now
		}
	}
}

// bucket is a token bucket for an optional static rate limit.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *bucket) take(now time.Time, n int) bool {
	if b == nil {
		return true
	}
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	} else {
		b.tokens = b.burst
	}
	b.last = now
	if b.tokens < float64(n) && b.tokens < b.burst {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// wait returns how long until n tokens are there (rounded up, so that they
// are there then despite float rounding).
func (b *bucket) wait(n int) time.Duration {
	need := min(float64(n), b.burst) - b.tokens
	if need <= 0 {
		return 0
	}
	return time.Duration(need/b.rate*float64(time.Second)) + time.Microsecond
}
