package router

import (
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Machine exposes the router's state machine for deterministic simulation
// (fuzz/): the caller owns time and the transport. Router.Run is the same
// machine driven by the system clock and goroutines. Not safe for
// concurrent use.
type Machine struct {
	c *core
}

// Dispatch is one request the machine wants sent: Events go to the
// destination; the outcome comes back through Complete.
type Dispatch struct {
	b *batch
	// Events are the batch's events; their slices stay valid until the
	// Dispatch is completed.
	Events []Event
	// Probe is set on the single request sent to test a destination that
	// looked down.
	Probe bool
}

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

// Step reads new events into the window, returns the requests to send now,
// and moves the cursor past settled events.
func (m *Machine) Step(now time.Time) ([]*Dispatch, error) {
	bs, err := m.c.step(now)
	if err != nil {
		return nil, err
	}
	var out []*Dispatch
	for _, b := range bs {
		d := &Dispatch{b: b, Probe: b.probe, Events: make([]Event, len(b.items))}
		for i, it := range b.items {
			d.Events[i] = it.ev
		}
		out = append(out, d)
	}
	return out, m.c.err
}

// Complete applies a request's outcome and moves the cursor.
func (m *Machine) Complete(d *Dispatch, res Result, now time.Time) {
	d.b.res = res
	m.c.complete(d.b, now)
	m.c.advance(now)
}

// NextWake is when Step may have work without new input.
func (m *Machine) NextWake(now time.Time) time.Time { return m.c.nextWake(now) }

// Stop prepares a graceful shutdown once nothing is in flight (as
// Router.Run does): settled events are recorded so none is sent again.
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

// Pause and Resume stop and restart dispatching.
func (m *Machine) Pause()  { m.c.paused = true }
func (m *Machine) Resume() { m.c.paused = false }

// Kick makes the next Step look for due retries (after a replay).
func (m *Machine) Kick() { m.c.refreshDue() }

// Close releases the machine's log reader and its share of the window
// budget.
func (m *Machine) Close() error {
	m.c.releaseBudget()
	return m.c.reader.Close()
}
