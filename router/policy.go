package router

import (
	"fmt"
	"time"
)

// Policy is a destination's retry and classification rules. Zero fields
// take the defaults documented on each.
type Policy struct {
	// MinAttempts: a message failure (this event failing while the
	// destination delivers others) is retried until this many failures
	// are charged, then aborted. A failure is charged once the destination
	// delivers requests sent after it (health.confirms); outage failures
	// never are. Default 3.
	MinAttempts int
	// MaxAge: an event older than this (since received) is aborted as
	// expired instead of attempted. Default 72h.
	MaxAge time.Duration
	// BackoffInitial and BackoffMax bound the destination's backoff while
	// it is down (exponential with full jitter) and each failed event's
	// retry delay. Defaults 1s and 5m.
	BackoffInitial, BackoffMax time.Duration
	// AbortStatuses are answers that abort an event at once. Default: every
	// 4xx except 408 and 429.
	AbortStatuses []int
	// RetryStatuses are answers treated as retryable even if they would
	// otherwise abort (e.g. 404 from a destination still deploying).
	RetryStatuses []int
	// ThrottleStatuses slow the destination down without counting as
	// failures. Default [429].
	ThrottleStatuses []int
	// FailureRatio and FailureMin: when at least FailureMin of the recent
	// attempts failed, from at least two ordering keys, and they are at
	// least FailureRatio of the recent attempts, the destination is deemed
	// down: the breaker opens and the failures are not charged to the
	// events. Defaults 0.5 and 5.
	FailureRatio float64
	FailureMin   int
	// HealthWindow is how many recent attempts the ratio looks at. Default 20.
	HealthWindow int
}

func (p Policy) withDefaults() (Policy, error) {
	setDefault(&p.MinAttempts, 3)
	setDefault(&p.MaxAge, 72*time.Hour)
	setDefault(&p.BackoffInitial, time.Second)
	setDefault(&p.BackoffMax, 5*time.Minute)
	setDefault(&p.FailureRatio, 0.5)
	setDefault(&p.FailureMin, 5)
	setDefault(&p.HealthWindow, 20)
	if p.ThrottleStatuses == nil {
		p.ThrottleStatuses = []int{429}
	}
	switch {
	case p.MinAttempts < 1:
		return p, fmt.Errorf("retry: min_attempts %d must be at least 1", p.MinAttempts)
	case p.BackoffInitial <= 0 || p.BackoffMax < p.BackoffInitial:
		return p, fmt.Errorf("retry: backoff must satisfy 0 < initial (%v) <= max (%v)", p.BackoffInitial, p.BackoffMax)
	case p.FailureRatio <= 0 || p.FailureRatio > 1:
		return p, fmt.Errorf("retry: failure_ratio %v must be in (0, 1]", p.FailureRatio)
	case p.HealthWindow < p.FailureMin:
		return p, fmt.Errorf("retry: health_window %d must be at least failure_min %d", p.HealthWindow, p.FailureMin)
	}
	return p, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// outcome classifies a Result.
type outcome uint8

const (
	outSuccess   outcome = iota // delivered
	outRetryable                // 5xx, timeouts, connection errors: try again
	outThrottled                // slow down, not a failure
	outAbort                    // the destination refuses this message
)

func (o outcome) String() string {
	return [...]string{"success", "retryable", "throttled", "abort"}[o]
}

func (p *Policy) classify(r Result) outcome {
	if r.Err != nil || r.Status == 0 {
		return outRetryable
	}
	s := r.Status
	if contains(p.ThrottleStatuses, s) {
		return outThrottled
	}
	if contains(p.RetryStatuses, s) {
		return outRetryable
	}
	if s >= 200 && s < 300 {
		return outSuccess
	}
	if p.AbortStatuses != nil {
		if contains(p.AbortStatuses, s) {
			return outAbort
		}
		return outRetryable
	}
	if s >= 400 && s < 500 && s != 408 {
		return outAbort
	}
	return outRetryable
}

func contains(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// backoff returns the delay before attempt n+1 (n >= 1) with full jitter:
// uniform in [0, min(max, initial*2^(n-1))].
func (p *Policy) backoff(n int, rnd Rand) time.Duration { return p.jitter(p.backoffCap(n), rnd) }

// backoffCap is initial*2^(n-1), capped at BackoffMax.
func (p *Policy) backoffCap(n int) time.Duration {
	d := p.BackoffInitial
	for i := 1; i < n && d < p.BackoffMax; i++ {
		d *= 2
	}
	return min(d, p.BackoffMax)
}

// retryDelay is a failed event's wait before its next attempt, with full
// jitter: up to the longer of the backoff for its charged attempts and how
// long it has been failing, capped at BackoffMax. Failures not charged (not
// yet shown to be the message's fault) still space its retries out.
func (p *Policy) retryDelay(charged int, failingFor time.Duration, rnd Rand) time.Duration {
	return p.jitter(max(p.backoffCap(charged), failingFor), rnd)
}

// jitter draws uniformly in [0, min(d, BackoffMax)], plus a millisecond.
func (p *Policy) jitter(d time.Duration, rnd Rand) time.Duration {
	d = min(d, p.BackoffMax)
	return time.Duration(rnd.Int64N(int64(d))) + time.Millisecond
}
