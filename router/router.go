// Package router delivers the log's events to destinations: one Router per
// destination reads the log from the destination's cursor, filters,
// partitions by ordering key, sends, and records each event's state in the
// engine (DESIGN.md's three queues).
//
// The algorithm lives in core (core.go), a state machine with no goroutines
// and no clock of its own; Router runs it in real time, and the simulator in
// fuzz/ runs it in virtual time. Per destination:
//
//   - Events of one ordering key are sent one batch at a time, in order. A
//     failed event sets a barrier on its key: later events of the key are
//     stored as skipped, in order, while other keys flow on. When the failed
//     event succeeds or is aborted, the key's skipped events go next, in
//     order, before any newer event of the key.
//   - A failure is charged to the event only while the destination looks
//     healthy (a message problem); after MinAttempts charged failures the
//     event is aborted into the dead letters. When many unrelated events
//     fail, the breaker opens: nothing is sent, nothing is charged, and a
//     single probe after an exponential, jittered backoff decides when to
//     resume.
//   - 429 and Retry-After pause the destination without counting as
//     failures; concurrency adapts (AIMD) and an optional rate limit caps
//     events per second.
//   - Memory is bounded by the window (events read ahead of the cursor),
//     and across routers by a shared WindowBudget.
package router

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Router delivers one destination's events.
type Router struct {
	cfg  Config
	core *core
	log  Log
	cons *engine.Consumer
	dest Destination
	ctl  chan func(*core)
	// status is the latest snapshot: once stored it is never edited (readers
	// copy it without a lock), only replaced.
	status  atomic.Pointer[Status]
	stopped bool // Run has returned; owned by Run's goroutine
	wg      sync.WaitGroup
}

// Status is a snapshot of a router for the admin API and metrics.
type Status struct {
	Destination  string    `json:"destination"`
	State        string    `json:"state"` // healthy, backing_off, probing, throttled, paused, stopped
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	Concurrency  int       `json:"concurrency"`
	InFlight     int       `json:"in_flight"`
	Window       int       `json:"window_events"`
	WindowBytes  int       `json:"window_bytes"`
	Cursor       uint64    `json:"cursor"`
	Counters     Counters  `json:"counters"`
	Error        string    `json:"error,omitempty"`
}

// New returns a router for the destination; Run starts it.
func New(cfg Config, log Log, cons *engine.Consumer, dest Destination) (*Router, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cc, err := newCore(c, log, cons)
	if err != nil {
		return nil, err
	}
	r := &Router{cfg: c, core: cc, log: log, cons: cons, dest: dest, ctl: make(chan func(*core))}
	r.publish()
	return r, nil
}

// Name is the destination's name.
func (r *Router) Name() string { return r.cfg.Name }

// Status returns the latest snapshot (refreshed by the router's loop).
func (r *Router) Status() Status { return *r.status.Load() }

// Pause stops dispatching new requests; in-flight ones finish.
func (r *Router) Pause(ctx context.Context) error {
	return r.do(ctx, func(c *core) { c.paused = true })
}

// Resume undoes Pause.
func (r *Router) Resume(ctx context.Context) error {
	return r.do(ctx, func(c *core) { c.paused, c.pausedBy = false, nil })
}

// Kick makes the router look for due retries now (after a replay).
func (r *Router) Kick(ctx context.Context) error { return r.do(ctx, func(c *core) { c.refreshDue() }) }

func (r *Router) do(ctx context.Context, f func(*core)) error {
	done := make(chan struct{})
	select {
	case r.ctl <- func(c *core) { f(c); r.publish(); close(done) }: // Status shows the change at once
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run delivers until ctx ends, then stops dispatching, waits for requests in
// flight (at most the send timeout), records their outcome and returns.
func (r *Router) Run(ctx context.Context) error {
	c := r.core
	results := make(chan *batch, r.cfg.ConcurrencyMax)
	sendCtx, cancelSends := context.WithCancel(context.Background())
	defer cancelSends()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastPublish := time.Time{}
	for {
		// Take the change channel before reading, so records that land
		// after the read still wake the loop.
		changed := r.log.Changed()
		now := r.cfg.Clock.Now()
		bs, err := c.step(now)
		if err != nil {
			c.logger.Error("router cannot read the log", "destination", r.cfg.Name, "err", err)
		}
		for _, b := range bs {
			r.wg.Add(1)
			go r.send(sendCtx, b, results)
		}
		if now.Sub(lastPublish) >= 100*time.Millisecond {
			r.publish()
			lastPublish = now
		}
		var room <-chan struct{}
		if c.windowFull() {
			changed = nil         // nothing more can be read until the cursor moves
			room = c.budgetWait() // or another router gives back budget
		}
		timer.Reset(max(c.nextWake(now).Sub(now), 100*time.Microsecond))
		select {
		case b := <-results:
			c.complete(b, r.cfg.Clock.Now())
			r.drainResults(results)
		case <-changed:
		case <-room:
		case <-timer.C:
		case f := <-r.ctl:
			f(c)
		case <-ctx.Done():
			return r.shutdown(results, cancelSends)
		}
	}
}

func (r *Router) drainResults(results chan *batch) {
	for {
		select {
		case b := <-results:
			r.core.complete(b, r.cfg.Clock.Now())
		default:
			return
		}
	}
}

func (r *Router) shutdown(results chan *batch, cancelSends context.CancelFunc) error {
	c := r.core
	c.paused = true
	deadline := time.NewTimer(r.cfg.Timeout + time.Second)
	defer deadline.Stop()
	for c.inFlight > 0 {
		select {
		case b := <-results:
			c.complete(b, r.cfg.Clock.Now())
		case <-deadline.C:
			cancelSends()
			c.logger.Warn("requests still in flight at shutdown; they will be sent again", "destination", r.cfg.Name, "in_flight", c.inFlight)
			c.inFlight = 0
		}
	}
	c.stop(r.cfg.Clock.Now())
	r.wg.Wait()
	c.releaseBudget()
	r.stopped = true
	r.publish()
	if c.err != nil {
		return c.err
	}
	return nil
}

func (r *Router) send(ctx context.Context, b *batch, results chan<- *batch) {
	defer r.wg.Done()
	events := make([]Event, len(b.items))
	for i, it := range b.items {
		events[i] = it.ev
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	b.res = r.dest.Send(ctx, events)
	cancel()
	results <- b
}

func (r *Router) publish() {
	c := r.core
	state := c.health.state.String()
	now := r.cfg.Clock.Now()
	switch {
	case r.stopped:
		state = "stopped"
	case c.paused:
		state = "paused"
	case c.health.state == Healthy && now.Before(c.throttledUntil):
		state = "throttled"
	}
	cur, _ := r.cons.Cursor()
	st := &Status{
		Destination: r.cfg.Name, State: state, Concurrency: c.aimd.Limit(), InFlight: c.inFlight,
		Window: len(c.window) - c.head, WindowBytes: c.winSize, Cursor: cur, Counters: c.stats,
	}
	if c.health.state != Healthy {
		st.BackoffUntil = c.health.until
	}
	switch {
	case c.err != nil:
		st.Error = c.err.Error()
	case c.pausedBy != nil:
		st.Error = c.pausedBy.Error()
	}
	r.status.Store(st)
}

// Close closes the destination.
func (r *Router) Close() error {
	if err := r.dest.Close(); err != nil {
		return fmt.Errorf("cannot close destination %s: %w", r.cfg.Name, err)
	}
	return nil
}
