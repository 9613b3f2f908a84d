package router

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Router delivers one destination's events.
type Router struct {
	cfg  Config
	m    *Machine
	core *core // m.c, read by publish
	log  Log
	cons *engine.Consumer
	dest Destination
	ctl  chan func(*Machine)
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
	r := &Router{cfg: c, m: &Machine{c: cc}, core: cc, log: log, cons: cons, dest: dest, ctl: make(chan func(*Machine))}
	r.publish()
	return r, nil
}

// Name is the destination's name.
func (r *Router) Name() string { return r.cfg.Name }

// Status returns the latest snapshot (refreshed by the router's loop).
// Figures returns the destination's own figures (Reporter), if it has any.
func (r *Router) Figures() []Figure {
	rep, ok := r.dest.(Reporter)
	if !ok {
		return nil
	}
	figs := rep.Report()
	for i := range figs {
		figs[i].Series = series(figs[i].Name, "", figs[i].Labels)
	}
	return figs
}

// series formats a Prometheus series: name{destination="d",k="v",...}
// (no destination label when d is empty, no braces without labels).
func series(name, dest string, labels [][2]string) string {
	var b strings.Builder
	b.WriteString(name)
	sep := byte('{')
	if dest != "" {
		fmt.Fprintf(&b, "{destination=%q", dest)
		sep = ','
	}
	for _, l := range labels {
		fmt.Fprintf(&b, "%c%s=%q", sep, l[0], l[1])
		sep = ','
	}
	if sep == ',' {
		b.WriteByte('}')
	}
	return b.String()
}

func (r *Router) Status() Status { return *r.status.Load() }

// Pause stops dispatching new requests; in-flight ones finish.
func (r *Router) Pause(ctx context.Context) error {
	return r.do(ctx, (*Machine).Pause)
}

// Resume undoes Pause.
func (r *Router) Resume(ctx context.Context) error {
	return r.do(ctx, (*Machine).Resume)
}

// Kick makes the router look for due retries now (after a replay).
func (r *Router) Kick(ctx context.Context) error { return r.do(ctx, (*Machine).Kick) }

// do runs f on the machine in Run's goroutine.
func (r *Router) do(ctx context.Context, f func(*Machine)) error {
	done := make(chan struct{})
	select {
	case r.ctl <- func(m *Machine) { f(m); r.publish(); close(done) }: // Status shows the change at once
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
//
// Run is a real-time loop over Machine.Step, the step the simulator and the
// scripted tests drive: it only adds the clock (when to step again) and the
// I/O (each request sent on its own goroutine, its result handed to the
// next Step).
func (r *Router) Run(ctx context.Context) error {
	m, c := r.m, r.core
	results := make(chan *Dispatch, r.cfg.ConcurrencyMax)
	sendCtx, cancelSends := context.WithCancel(context.Background())
	defer cancelSends()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastPublish := time.Time{}
	var done []*Dispatch
	for {
		// Take the change channel before reading, so records that land
		// after the read still wake the loop.
		changed := r.log.Changed()
		now := r.cfg.Clock.Now()
		ds, err := m.Step(now, done)
		done = done[:0]
		if err != nil && err != c.err {
			c.logger.Error("router cannot read the log", "destination", r.cfg.Name, "err", err)
		}
		for _, d := range ds {
			r.wg.Add(1)
			go r.send(sendCtx, d, results)
		}
		if now.Sub(lastPublish) >= publishInterval {
			r.publish()
			lastPublish = now
		}
		var room <-chan struct{}
		if c.windowFull() {
			changed = nil         // nothing more can be read until the cursor moves
			room = c.budgetWait() // or another router gives back budget
		}
		timer.Reset(max(m.NextWake(now).Sub(now), wakeMin))
		select {
		case d := <-results:
			done = receiveResults(results, append(done, d))
		case <-changed:
		case <-room:
		case <-timer.C:
		case f := <-r.ctl:
			f(m)
		case <-ctx.Done():
			return r.shutdown(results, cancelSends)
		}
	}
}

// publishInterval is how often Run refreshes Status without being asked.
const publishInterval = 100 * time.Millisecond

// wakeMin is the shortest wait of Run's loop: a machine that asks to be
// woken at once still yields for this long, so a bug there spins slowly
// rather than taking a core.
const wakeMin = 100 * time.Microsecond

// shutdownSlack is how long past the send timeout shutdown waits for the
// requests in flight: a Send that honours its context has returned by then;
// one that does not is abandoned (its events are sent again after the
// restart).
const shutdownSlack = time.Second

// receiveResults appends the results already waiting to done, so one Step
// applies them all.
func receiveResults(results chan *Dispatch, done []*Dispatch) []*Dispatch {
	for {
		select {
		case d := <-results:
			done = append(done, d)
		default:
			return done
		}
	}
}

// shutdown stops dispatching, steps the machine with the results of the
// requests in flight until none is left (or the send timeout passed), and
// records what they settled (Machine.Stop).
func (r *Router) shutdown(results chan *Dispatch, cancelSends context.CancelFunc) error {
	m, c := r.m, r.core
	m.Pause()
	deadline := time.NewTimer(r.cfg.Timeout + shutdownSlack)
	defer deadline.Stop()
	for c.inFlight > 0 {
		select {
		case d := <-results:
			done := receiveResults(results, []*Dispatch{d})
			if _, err := m.Step(r.cfg.Clock.Now(), done); err != nil && err != c.err {
				c.logger.Error("router cannot read the log", "destination", r.cfg.Name, "err", err)
			}
		case <-deadline.C:
			cancelSends()
			c.logger.Warn("requests still in flight at shutdown; they will be sent again", "destination", r.cfg.Name, "in_flight", c.inFlight)
			c.inFlight = 0
		}
	}
	m.Stop(r.cfg.Clock.Now())
	r.wg.Wait()
	if err := m.Close(); err != nil {
		c.logger.Warn("cannot close the log reader", "destination", r.cfg.Name, "err", err)
	}
	r.stopped = true
	r.publish()
	if c.err != nil {
		return c.err
	}
	return nil
}

// send sends one request and hands its result back to Run.
func (r *Router) send(ctx context.Context, d *Dispatch, results chan<- *Dispatch) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	d.Result = r.dest.Send(ctx, d.Events)
	cancel()
	results <- d
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
