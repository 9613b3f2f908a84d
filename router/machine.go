package router

import (
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Machine is the router's state machine for one destination, driven one
// Step at a time by its caller, who owns time and the transport. It is the
// only driver of core: Router.Run steps it in real time (sending on
// goroutines), the simulator in fuzz/ and the scripted tests in
// core_test.go step it in virtual time. Not safe for concurrent use.
type Machine struct {
	c *core
	// Hooks, when set, run inside Step between its phases (tests and the
	// simulator observe the machine there; Router.Run sets none).
	Hooks Hooks
}

// Hooks observe a Step between its phases.
type Hooks struct {
	// Completed runs after each finished request's result is applied,
	// before the next one's.
	Completed func(d *Dispatch)
	// Polled runs with the requests chosen to send in one round of Step,
	// before advance moves the cursor past the window's settled events
	// (and stores the aborted ones).
	Polled func(ds []*Dispatch)
}

// Dispatch is one request the machine wants sent: Events go to the
// destination; the caller sets Result when the request finished and hands
// the Dispatch back to Step.
type Dispatch struct {
	b *batch
	// Events are the batch's events; their slices stay valid until the
	// Dispatch is completed.
	Events []Event
	// Probe is set on the single request sent to test a destination that
	// looked down.
	Probe bool
	// Result is the destination's answer, set by the caller.
	Result Result
}

// refillRounds bounds the rounds of one Step: each round reads, dispatches
// and moves the cursor; another follows only when moving the cursor made
// room in a full window while the log holds more (core.refill), so a
// backlog is read on without waiting for new input.
const refillRounds = 8

// NewMachine builds the state machine for one destination from the
// consumer's stored state (cursor, barriers, entries).
func NewMachine(cfg Config, log Log, cons *engine.Consumer) (*Machine, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	core, err := newCore(c, log, cons)
	if err != nil {
		return nil, err
	}
	return &Machine{c: core}, nil
}

// Step is one turn of the router, its phases always in this order: apply
// the results of the finished requests in done (complete, in the order
// given), then up to refillRounds rounds of: read new events into the
// window (fill), choose the requests to send now (poll), move the cursor
// past settled events and commit what is due (advance, flush). It returns
// the requests to send, and the error that stopped reading the log, or the
// sticky error that stopped dispatch (a failed commit).
func (m *Machine) Step(now time.Time, done []*Dispatch) ([]*Dispatch, error) {
	c := m.c
	for _, d := range done {
		d.b.res = d.Result
		c.complete(d.b, now)
		if m.Hooks.Completed != nil {
			m.Hooks.Completed(d)
		}
	}
	var out []*Dispatch
	for range refillRounds {
		if err := c.fill(now); err != nil {
			return out, err
		}
		polled := dispatches(c.poll(now))
		if m.Hooks.Polled != nil && len(polled) > 0 {
			m.Hooks.Polled(polled)
		}
		out = append(out, polled...)
		c.advance(now)
		if !c.refill {
			break
		}
	}
	return out, c.err
}

// dispatches wraps batches polled to send.
func dispatches(bs []*batch) []*Dispatch {
	if len(bs) == 0 {
		return nil
	}
	out := make([]*Dispatch, len(bs))
	for i, b := range bs {
		d := &Dispatch{b: b, Probe: b.probe, Events: make([]Event, len(b.items))}
		for j, it := range b.items {
			d.Events[j] = it.ev
		}
		out[i] = d
	}
	return out
}

// NextWake is when Step may have work without new input (a finished
// request is new input).
func (m *Machine) NextWake(now time.Time) time.Time { return m.c.nextWake(now) }

// Stop prepares a graceful shutdown once nothing is in flight: settled
// events are recorded so none is sent again.
func (m *Machine) Stop(now time.Time) { m.c.stop(now) }

// Flush commits pending state transitions now.
func (m *Machine) Flush(now time.Time) { m.c.flush(now, true) }

// InFlight is the number of dispatched, not yet completed requests.
func (m *Machine) InFlight() int { return m.c.inFlight }

// WindowEvents is the number of events held in memory ahead of the cursor.
func (m *Machine) WindowEvents() int { return len(m.c.window) - m.c.head }

// Breaker is the destination's health state.
func (m *Machine) Breaker() BreakerState { return m.c.health.state }

// Counters are the machine's running totals.
func (m *Machine) Counters() Counters { return m.c.stats }

// Pause stops dispatching; requests in flight finish.
func (m *Machine) Pause() { m.c.paused = true }

// Resume undoes Pause, and a pause the destination asked for
// (Result.Pause).
func (m *Machine) Resume() { m.c.paused, m.c.pausedBy = false, nil }

// Kick makes the next Step look for due retries (after a replay).
func (m *Machine) Kick() { m.c.refreshDue() }

// Close releases the machine's log reader and its share of the window
// budget.
func (m *Machine) Close() error {
	m.c.releaseBudget()
	return m.c.reader.Close()
}
