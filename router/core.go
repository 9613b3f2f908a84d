package router

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Log is what the router needs of the engine's log.
type Log interface {
	NewReader(from uint64, hint engine.Pos) (*engine.Reader, error)
	Read(seq uint64, pos engine.Pos) (engine.Record, error)
	Changed() <-chan struct{}
}

// itemState is where an event stands in the router's memory.
type itemState uint8

const (
	waiting itemState = iota
	inflight
	done // succeeded or filtered: settled, no entry
	failed
	aborted
)

// item is one event held by the router: read into the window (seq at or
// past the cursor) or loaded from a stored entry (seq below it).
type item struct {
	seq   uint64
	pos   engine.Pos
	key   string
	buf   []byte // owned copy of the record's fields
	ev    Event  // slices into buf
	state itemState
	// split caps the requests the event goes in (0: no cap): halved each
	// time a request with it is refused or fails, so that a bad event in
	// a batch is found by bisection and goes alone in the end. Such an
	// event goes only with others of its group (the refused request's).
	split    int
	group    uint64
	attempts uint32 // failures charged to the event
	// unconfirmed: the last failure is not charged yet (see
	// health.confirms); it is when the event's retry comes due.
	unconfirmed bool
	first       int64 // first failure, Unix ns
	last        int64 // last attempt, Unix ns
	status      int32
	reason      string
	response    []byte
	size        int
	due         int64 // retry time of a failed window event, Unix ns
	replayed    bool
	// persisted: the event has a stored entry (loaded from one, or spilled
	// while in flight); its outcome is recorded as an entry transition.
	persisted bool
	spill     bool // in flight when the window filled: store it as failed
	// spillHead: stored by spillEntry as its key's failed head, due only
	// after its request's timeout.
	spillHead bool
	batch     *batch // the window batch it was sent in
}

// keyState is one ordering key's place in the router.
type keyState struct {
	key          string
	busy         bool    // a batch with its events is in flight
	blocked      bool    // barrier: earlier events of the key are failed or skipped
	pending      []*item // window events waiting, in seq order
	queued       bool    // in core.ready
	draining     bool    // in core.drains
	failedWindow int     // failed events in the window not yet stored
}

// batch is one Send.
type batch struct {
	items []*item
	entry bool // items come from stored entries
	probe bool
	start time.Time
	res   Result
}

// core is the router's state machine for one destination. It has no
// goroutines and no clock of its own; Machine.Step is its only driver (see
// the package doc). Not safe for concurrent use.
type core struct {
	cfg    Config
	pol    *Policy
	log    Log
	cons   *engine.Consumer
	logger *slog.Logger

	sources, events map[string]bool

	reader  *engine.Reader
	recBuf  []engine.Record
	window  []*item
	head    int
	winSize int // bytes of the window's items
	// borrowed is what the window holds of cfg.WindowBudget: its bytes
	// past reserve, the part held without asking.
	borrowed int64
	reserve  int

	keys   map[string]*keyState
	ready  []*keyState // keys with dispatchable events (ordering on)
	loose  []*item     // dispatchable events (ordering off)
	drains []*keyState // keys whose stored entries are next in line
	work   []*batch    // entry batches ready to send

	inFlight        int
	inFlightEntries map[uint64]bool
	groups          uint64 // bisection groups made (item.group)
	nextDue         time.Time
	health          *health
	aimd            *aimd
	rate            *bucket
	throttledUntil  time.Time
	paused          bool
	// pausedBy is why the destination paused itself (Result.Pause), nil
	// when it did not.
	pausedBy error
	// spillAt is when the in-flight head of a full window becomes slow
	// enough to spill (advance), zero when none waits.
	spillAt time.Time
	// refill: advance made room in a full window while the log holds
	// more: Machine.Step reads and dispatches again at once.
	refill bool

	txn       *engine.Txn
	lastFlush time.Time
	err       error // sticky: a failed commit stops dispatch

	stats Counters
}

// Counters are a destination's running totals.
type Counters struct {
	Delivered, Filtered, Failed, Aborted, Expired, Throttled, Retried uint64
	Requests, OutageAttempts, BreakerOpened, Spilled, Rejected        uint64
}

func newCore(cfg Config, log Log, cons *engine.Consumer) (*core, error) {
	c := &core{
		cfg: cfg, pol: &cfg.Policy, log: log, cons: cons, logger: cfg.Logger,
		keys: make(map[string]*keyState), inFlightEntries: make(map[uint64]bool),
		aimd: newAIMD(cfg.ConcurrencyInitial, cfg.ConcurrencyMax),
	}
	c.health = newHealth(c.pol)
	if b := cfg.WindowBudget; b != nil {
		c.reserve = int(min(b.reserve, int64(cfg.WindowBytes)))
	}
	if cfg.RateLimit > 0 {
		c.rate = &bucket{rate: cfg.RateLimit, burst: max(cfg.RateLimit, float64(cfg.BatchSize))}
	}
	if len(cfg.Sources) > 0 {
		c.sources = setOf(cfg.Sources)
	}
	if len(cfg.Events) > 0 {
		c.events = setOf(cfg.Events)
	}
	cur, pos := cons.Cursor()
	r, err := log.NewReader(cur, pos)
	if err != nil {
		return nil, fmt.Errorf("cannot start router %s: %w", cfg.Name, err)
	}
	c.reader = r
	c.txn = cons.Begin()
	// Stored barriers are drained even without ordering: their skipped
	// entries go out only that way (a destination whose ordering was
	// turned off, or stragglers Recover requeued behind a barrier).
	err = cons.Barriers(func(key []byte, _ uint64) error {
		ks := c.keyState(string(key))
		ks.blocked = true
		c.queueDrain(ks)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func setOf(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s] = true
	}
	return m
}

func (c *core) keyState(k string) *keyState {
	ks := c.keys[k]
	if ks == nil {
		ks = &keyState{key: k}
		c.keys[k] = ks
	}
	return ks
}

// forget drops a key's state once nothing refers to it.
func (c *core) forget(ks *keyState) {
	if !ks.busy && !ks.blocked && !ks.queued && !ks.draining && len(ks.pending) == 0 && ks.failedWindow == 0 {
		delete(c.keys, ks.key)
	}
}

// fill reads events into the window up to its bounds.
func (c *core) fill(now time.Time) error {
	c.refill = false
	defer c.settleBudget()
	for {
		c.settleBudget()
		if c.windowFull() {
			return nil
		}
		n := min(256, c.cfg.WindowEvents-(len(c.window)-c.head))
		if c.cfg.WindowBudget != nil {
			n = min(n, budgetReadEvents)
		}
		recs, err := c.reader.Next(c.recBuf[:0], n)
		c.recBuf = recs[:0]
		if err != nil {
			return fmt.Errorf("cannot read log: %w", err)
		}
		if len(recs) == 0 {
			c.passLost()
			return nil
		}
		for i := range recs {
			c.admitRecord(&recs[i], now)
		}
	}
}

// passLost moves the cursor over seqs the log lost at its end (reported
// by the engine): with nothing held and nothing left to read, the reader
// is past them, and no record would ever carry the cursor there.
func (c *core) passLost() {
	if c.head != len(c.window) {
		return
	}
	if cur, _ := c.cons.Cursor(); c.reader.CaughtUp() && c.reader.Position() > cur {
		c.txn.Advance(c.reader.Position(), 0)
	}
}

// refuses reports whether the destination's filters refuse r.
func (c *core) refuses(r *engine.Record) bool {
	return (c.sources != nil && !c.sources[string(r.Source)]) || (c.events != nil && !c.events[string(r.Type)])
}

func (c *core) admitRecord(r *engine.Record, now time.Time) {
	it := newItem(r)
	c.window = append(c.window, it)
	c.winSize += it.size
	switch {
	case c.refuses(r):
		it.state = done
		c.stats.Filtered++
		return
	}
	if !c.cfg.Ordering {
		c.loose = append(c.loose, it)
		return
	}
	ks := c.keyState(it.key)
	ks.pending = append(ks.pending, it)
	c.markReady(ks)
}

// newItem copies a record into an item that owns its bytes.
func newItem(r *engine.Record) *item {
	n := len(r.Payload) + len(r.MessageID) + len(r.Key) + len(r.Type) + len(r.Source)
	buf := make([]byte, 0, n)
	cut := func(b []byte) []byte {
		s := len(buf)
		buf = append(buf, b...)
		return buf[s:len(buf):len(buf)]
	}
	it := &item{seq: r.Seq, pos: r.Pos, key: string(r.Key), size: n + 200}
	it.ev = Event{Seq: r.Seq, ReceivedAt: r.ReceivedAt, Payload: cut(r.Payload), MessageID: cut(r.MessageID),
		Key: cut(r.Key), Type: cut(r.Type), Source: cut(r.Source)}
	it.buf = buf
	return it
}

func (c *core) markReady(ks *keyState) {
	if !ks.queued && !ks.busy && !ks.blocked && len(ks.pending) > 0 {
		ks.queued = true
		c.ready = append(c.ready, ks)
	}
}

func (c *core) queueDrain(ks *keyState) {
	if !ks.draining {
		ks.draining = true
		c.drains = append(c.drains, ks)
	}
}

// poll returns the batches to send now, marking their events in flight.
func (c *core) poll(now time.Time) []*batch {
	if c.paused || c.err != nil || now.Before(c.throttledUntil) {
		return nil
	}
	var out []*batch
	for c.inFlight < c.aimd.Limit() {
		probe := false
		switch c.health.state {
		case BackingOff:
			if now.Before(c.health.until) || c.inFlight > 0 {
				return out
			}
			probe = true
		case Probing:
			return out
		}
		max := c.cfg.BatchSize
		if probe {
			max = 1
		}
		if c.rate != nil {
			if !c.rate.take(now, 0) {
				return out
			}
			max = min(max, int(c.rate.tokens))
			if max < 1 {
				return out
			}
		}
		b := c.nextBatch(now, max, probe)
		if b == nil {
			return out
		}
		if c.rate != nil {
			c.rate.tokens -= float64(len(b.items))
		}
		if probe {
			b.probe = true
			c.health.state = Probing
		}
		b.start = now
		c.inFlight++
		c.stats.Requests++
		out = append(out, b)
	}
	return out
}

// nextBatch assembles up to max events: stored entries first (retries and
// released skips), then the window. A probe tests the destination, not a
// message, so it takes a window event (never failed) first: a stored
// failure may be a poison event, and probing with it alone would keep the
// breaker open, uncharged, with every key waiting.
func (c *core) nextBatch(now time.Time, max int, probe bool) *batch {
	if probe {
		if b := c.nextWindowBatch(now, max); b != nil {
			return b
		}
		return c.nextEntryBatch(now, max)
	}
	if b := c.nextEntryBatch(now, max); b != nil {
		return b
	}
	return c.nextWindowBatch(now, max)
}

// nextWindowBatch assembles up to max events read from the log.
func (c *core) nextWindowBatch(now time.Time, max int) *batch {
	b := &batch{}
	if !c.cfg.Ordering {
		for len(c.loose) > 0 && len(b.items) < max {
			it := c.loose[0]
			if !fits(it, b.items, &max) {
				break
			}
			c.loose = c.loose[1:]
			if c.expire(it, now) {
				continue
			}
			it.state = inflight
			b.items = append(b.items, it)
		}
		return b.forWindow()
	}
	for len(c.ready) > 0 && len(b.items) < max {
		ks := c.ready[0]
		if m := max; len(ks.pending) > 0 && !fits(ks.pending[0], b.items, &m) {
			break
		}
		c.ready = c.ready[1:]
		ks.queued = false
		if ks.busy || ks.blocked {
			continue
		}
		for len(ks.pending) > 0 && len(b.items) < max {
			it := ks.pending[0]
			if !fits(it, b.items, &max) {
				break
			}
			ks.pending = ks.pending[1:]
			if c.expire(it, now) {
				continue
			}
			it.state = inflight
			ks.busy = true
			b.items = append(b.items, it)
		}
		if !ks.busy {
			c.forget(ks)
		}
	}
	return b.forWindow()
}

// fits reports whether it may join a request that has events in: an event
// being bisected only with others of its group, up to its split cap (which
// becomes the request's cap max), and any other only with others like it.
func fits(it *item, in []*item, max *int) bool {
	if len(in) > 0 && in[0].group != it.group {
		return false
	}
	if it.split == 0 {
		return true
	}
	if len(in) >= it.split {
		return false
	}
	*max = min(*max, it.split)
	return true
}

// forWindow links a window batch's events to it (nil when empty).
func (b *batch) forWindow() *batch {
	if len(b.items) == 0 {
		return nil
	}
	for _, it := range b.items {
		it.batch = b
	}
	return b
}

// expire aborts a window event older than MaxAge instead of sending it.
func (c *core) expire(it *item, now time.Time) bool {
	if now.Sub(time.Unix(0, it.ev.ReceivedAt)) <= c.pol.MaxAge {
		return false
	}
	it.reason = fmt.Sprintf("expired: older than max_age %v", c.pol.MaxAge)
	it.state = aborted
	c.stats.Expired++
	c.stats.Aborted++
	return true
}

// complete applies a batch's result.
func (c *core) complete(b *batch, now time.Time) {
	c.inFlight--
	res := b.res
	if res.Pause {
		c.pauseSelf(b, now)
		return
	}
	out := c.pol.classify(res)
	var named []outcome // per item, for a partial answer (see completePartial)
	var own []Result
	if len(res.Rejected) > 0 && (out == outSuccess || out == outAbort) {
		named, own = c.namedOutcomes(b)
	}
	bad := out == outThrottled || out == outRetryable
	for _, o := range named {
		bad = bad || o == outThrottled || o == outRetryable
	}
	c.aimd.observe(b.start, now, c.inFlight+1, bad)
	if named != nil {
		c.completePartial(b, named, own, now)
		return
	}
	c.apply(b, out, now)
}

// pauseSelf applies an answer that pauses the destination (Result.Pause):
// the batch goes back uncharged and nothing more is sent until Resume.
func (c *core) pauseSelf(b *batch, now time.Time) {
	why := b.res.Err
	if why == nil {
		why = fmt.Errorf("the destination asked to pause (status %d)", b.res.Status)
	}
	if !c.paused {
		c.logger.Error("destination paused until an operator resumes it", "destination", c.cfg.Name, "err", why)
	}
	c.paused, c.pausedBy = true, why
	c.requeue(b, false, now)
}

// namedOutcomes reads a partial answer: per item of the batch, the outcome
// of its own status and that result if the answer names it, outSuccess
// (taken) if not. It returns nil when the answer names none of the batch's
// events (an index out of range names nothing): then its status stands for
// the whole batch.
func (c *core) namedOutcomes(b *batch) ([]outcome, []Result) {
	outs := make([]outcome, len(b.items))
	own := make([]Result, len(b.items))
	any := false
	for _, r := range b.res.Rejected {
		if r.Index < 0 || r.Index >= len(b.items) || own[r.Index].Status != 0 {
			continue
		}
		any = true
		own[r.Index] = Result{Status: r.Status, Body: r.Reason}
		outs[r.Index] = c.pol.classify(own[r.Index])
	}
	if !any {
		return nil, nil
	}
	return outs, own
}

// completePartial applies an answer that took some events of the batch and
// refused others by name (outs, from namedOutcomes): each named event gets
// its own status's outcome, as if it had gone alone, and the rest are
// delivered. The request counts once in the destination's health: as a
// failure when named retryable failures are at least as many as the events
// taken (then, if the destination looks down, they go back uncharged, as in
// an outage), else as an answer. own holds each named event's own result. The named go first, so that a failed one's
// barrier is up before its key is released, and in batch order: once one
// of a key fails or is throttled, its later named events go back behind it
// unchanged. (A destination that takes an event after failing an earlier
// one of the same user has broken that user's order itself; the failed one
// is retried.)
func (c *core) completePartial(b *batch, outs []outcome, own []Result, now time.Time) {
	res := b.res
	taken, failing, throttled := 0, 0, false
	for _, o := range outs {
		switch o {
		case outSuccess:
			taken++
		case outRetryable:
			failing++
		case outThrottled:
			throttled = true
		}
	}
	key := b.items[0].key
	down := false
	if failing > 0 && failing >= taken {
		down = !c.requestFailed(key, b.start, Result{Status: 503, Err: errors.New("most events named as failed")}, now)
	} else {
		c.health.success(key, b.start, taken > 0) // it answered: it is up
	}
	if throttled {
		c.stats.Throttled++
		c.throttledUntil = maxTime(c.throttledUntil, now.Add(max(res.RetryAfter, c.pol.BackoffInitial)))
	}
	var took, back []*item
	stopped := map[string]bool{}
	for i, it := range b.items {
		o := outs[i]
		if o == outSuccess {
			took = append(took, it)
			continue
		}
		c.stats.Rejected++
		if o == outThrottled || o == outRetryable && (down || stopped[it.key]) {
			back = append(back, it)
			stopped[it.key] = c.cfg.Ordering
			continue
		}
		one := &batch{items: []*item{it}, entry: b.entry, start: b.start, res: own[i]}
		if o == outAbort {
			c.refuse(it, one.res, now)
		} else {
			c.fail(it, one.res, now) // the destination is up: a message failure
			stopped[it.key] = c.cfg.Ordering
		}
		c.release(one)
	}
	if len(back) > 0 {
		c.requeue(&batch{items: back, entry: b.entry, start: b.start}, false, now)
	}
	if len(took) > 0 {
		c.stats.Delivered += uint64(len(took))
		c.settle(&batch{items: took, entry: b.entry, start: b.start, res: res}, now)
	}
}

// requestFailed records a request that failed (retryably) in the
// destination's health and reports whether the failure is charged to its
// events; if not, the destination looks down (the breaker is open).
func (c *core) requestFailed(key string, start time.Time, res Result, now time.Time) (charged bool) {
	if c.health.failure(key, start, now, c.cfg.Rand) {
		return true
	}
	c.stats.OutageAttempts++
	if c.health.state == BackingOff && c.health.failures == 1 {
		c.stats.BreakerOpened++
		c.logger.Warn("destination looks down; backing off", "destination", c.cfg.Name, "status", res.Status, "err", res.Err, "until", c.health.until)
	}
	return false
}

// refuse aborts an event the destination refused (a non-retryable answer
// to a request of it alone, or naming it).
func (c *core) refuse(it *item, res Result, now time.Time) {
	it.attempts++ // the refused attempt is the event's own (charged)
	if it.first == 0 {
		it.first = now.UnixNano()
	}
	c.abort(it, res, fmt.Sprintf("rejected with status %d", res.Status), now)
}

// apply applies an outcome to a batch whose request is complete.
func (c *core) apply(b *batch, out outcome, now time.Time) {
	res := b.res
	key := b.items[0].key
	switch out {
	case outSuccess:
		c.health.success(key, b.start, true)
		c.stats.Delivered += uint64(len(b.items))
		c.settle(b, now)
	case outThrottled:
		c.health.success(key, b.start, false) // it answered: it is up
		c.stats.Throttled++
		c.throttledUntil = now.Add(max(res.RetryAfter, c.pol.BackoffInitial))
		c.requeue(b, false, now)
	case outAbort:
		c.health.success(key, b.start, false) // it answered: it is up
		if len(b.items) > 1 {
			c.requeue(b, true, now) // bisect to find the event it refuses
			return
		}
		c.refuse(b.items[0], res, now)
		c.release(b)
	case outRetryable:
		if !c.requestFailed(key, b.start, res, now) {
			c.requeue(b, false, now)
			return
		}
		if len(b.items) > 1 {
			c.requeue(b, true, now)
			return
		}
		c.fail(b.items[0], res, now)
		c.release(b)
	}
}

// settle handles delivered events.
func (c *core) settle(b *batch, now time.Time) {
	stored := false
	for _, it := range b.items {
		if !it.persisted {
			it.state = done
			continue
		}
		delete(c.inFlightEntries, it.seq)
		c.txn.Succeed(it.seq)
		stored = true
	}
	if stored {
		c.flush(now, true)
	}
	c.release(b)
}

// release frees the batch's keys and queues what comes next for them.
func (c *core) release(b *batch) { c.releaseKeys(b, true) }

// releaseKeys frees the batch's keys; drain queues their stored entries.
// Every item counts, not only the key's first: a replayed event may share
// a drained batch with its key's skipped events, and a blocked key's queue
// goes on after a replayed event too (its drain may have stopped at it).
func (c *core) releaseKeys(b *batch, drain bool) {
	// Without ordering a key has state only while a stored barrier drains
	// (newCore): then its queue goes on as an ordered one's does.
	for _, it := range b.items {
		ks := c.keys[it.key]
		if ks == nil {
			continue
		}
		if drain && it.persisted && (!it.replayed || ks.blocked) {
			c.queueDrain(ks)
		}
		if ks.busy {
			ks.busy = false
			c.markReady(ks)
		}
		c.forget(ks)
	}
}

// requeue puts a batch's events back unchanged (not charged): before the
// key's other waiting events, in order. bisect halves their split cap: the
// destination refused the request or failed it while it looks healthy, so
// one of them is likely bad, and sending them in halves finds it in
// log2(n) rounds (far cheaper than one by one when most are good).
func (c *core) requeue(b *batch, bisect bool, now time.Time) {
	half := (len(b.items) + 1) / 2
	if bisect {
		c.groups++
		for _, it := range b.items {
			it.split, it.group = half, c.groups
		}
	}
	var stored, win []*item
	for _, it := range b.items {
		if it.persisted {
			stored = append(stored, it)
		} else {
			win = append(win, it)
		}
	}
	if len(stored) > 0 {
		if bisect {
			// Resend in halves, in order; they stay reserved so no drain
			// or retry scan picks them up twice. They go first: the rest of
			// a batch the rate limit split may be queued after them.
			// An entry batch holds one key's events (nextEntryBatch goes
			// by its first), and a spilled window batch may mix keys: the
			// halves are cut per key.
			var halves []*batch
			for _, key := range keysOf(stored) {
				var run []*item
				for _, it := range stored {
					if it.key == key {
						it.state = waiting
						run = append(run, it)
					}
				}
				for len(run) > 0 {
					n := min(half, len(run))
					halves = append(halves, &batch{items: run[:n:n], entry: true})
					run = run[n:]
				}
			}
			c.work = append(halves, c.work...)
		} else {
			rewrote := false
			for _, it := range stored {
				delete(c.inFlightEntries, it.seq)
				if it.spillHead {
					// Answered (throttled, or the destination is down):
					// due now rather than after the timeout it was stored
					// with; the throttle or the breaker paces it.
					e := c.entryOf(it, engine.StateFailed)
					e.DueAt = now.UnixNano()
					if e.Reason == "" {
						e.Reason = spillReason
					}
					c.txn.Put(e)
					it.spillHead = false
					rewrote = true
				}
				if !it.replayed {
					c.dropKeyWork(it.key)
				}
			}
			if rewrote {
				c.flush(now, true)
				c.refreshDue()
			}
		}
	}
	for i := len(win) - 1; i >= 0; i-- {
		it := win[i]
		it.state, it.spill = waiting, false
		if !c.cfg.Ordering {
			c.loose = append([]*item{it}, c.loose...)
			continue
		}
		ks := c.keyState(it.key)
		ks.pending = append([]*item{it}, ks.pending...)
	}
	c.releaseKeys(b, !bisect)
}

// keysOf returns the distinct keys of items, in order of first appearance.
func keysOf(items []*item) []string {
	var keys []string
	for _, it := range items {
		if !slices.Contains(keys, it.key) {
			keys = append(keys, it.key)
		}
	}
	return keys
}

// dropKeyWork withdraws a key's queued entry batches (the rest of a batch
// being resent one by one) after one of its entries went back to the index
// unsettled: they are later events of the key and must wait for it. They
// stay stored as they are; the key's drain brings them back, in order, once
// its head settles.
func (c *core) dropKeyWork(key string) {
	if !c.cfg.Ordering {
		return
	}
	kept := c.work[:0]
	for _, b := range c.work {
		if b.items[0].key == key && !b.items[0].replayed {
			for _, it := range b.items {
				delete(c.inFlightEntries, it.seq)
			}
			continue
		}
		kept = append(kept, b)
	}
	clear(c.work[len(kept):])
	c.work = kept
}

// fail records a retryable failure of a lone event while the destination
// does not look down: the event is retried later. The failure is charged
// (counts towards MinAttempts) only once the destination is seen delivering
// other events after it (health.confirms), checked when the retry comes
// due (chargeDue) or, failing that, at the next failure: until then it may
// be the first sign of an outage that the breaker cannot tell yet (one key
// sending, or too few failures), and an outage must never abort an event.
func (c *core) fail(it *item, res Result, now time.Time) {
	if it.unconfirmed && c.health.confirms(time.Unix(0, it.last)) {
		it.attempts++
	}
	it.unconfirmed = true
	it.last = now.UnixNano()
	if it.first == 0 {
		it.first = it.last
	}
	it.status, it.response = int32(res.Status), capBody(res.Body)
	if res.Err != nil {
		it.reason = res.Err.Error()
		it.status = -1
	} else {
		it.reason = fmt.Sprintf("status %d", res.Status)
	}
	if int(it.attempts) >= c.pol.MinAttempts {
		c.abort(it, res, fmt.Sprintf("failed %d times: %s", it.attempts, it.reason), now)
		return
	}
	c.stats.Failed++
	due := now.Add(c.pol.retryDelay(int(it.attempts), now.Sub(time.Unix(0, it.first)), c.cfg.Rand)).UnixNano()
	if it.persisted {
		delete(c.inFlightEntries, it.seq)
		e := c.entryOf(it, engine.StateFailed)
		e.DueAt = due
		c.txn.Put(e)
		c.flush(now, true)
		c.refreshDue()
		if !it.replayed {
			c.dropKeyWork(it.key)
		}
		return
	}
	it.state = failed
	it.due = due
	if c.cfg.Ordering {
		ks := c.keyState(it.key)
		ks.blocked = true
		ks.failedWindow++
	}
}

// chargeDue charges a loaded failed entry's last failure if the destination
// has since shown it was the message's fault, and aborts the event instead
// of retrying it once MinAttempts failures are charged.
func (c *core) chargeDue(it *item, now time.Time) (aborted bool) {
	if !it.unconfirmed || !c.health.confirms(time.Unix(0, it.last)) {
		return false
	}
	it.attempts++
	it.unconfirmed = false
	if int(it.attempts) < c.pol.MinAttempts {
		return false
	}
	c.abort(it, Result{}, fmt.Sprintf("failed %d times: %s", it.attempts, it.reason), now)
	c.afterEntryFinal(it, now)
	return true
}

// abort gives up on an event: it goes to the dead letters with its reason.
func (c *core) abort(it *item, res Result, reason string, now time.Time) {
	it.reason = reason
	it.unconfirmed = false
	it.last = now.UnixNano()
	if res.Status != 0 || res.Err != nil {
		it.status, it.response = int32(res.Status), capBody(res.Body)
		if res.Err != nil {
			it.status = -1
		}
	}
	c.stats.Aborted++
	c.logger.Debug("event aborted", "destination", c.cfg.Name, "seq", it.seq, "reason", reason)
	if it.persisted {
		delete(c.inFlightEntries, it.seq)
		c.txn.Put(c.entryOf(it, engine.StateAborted))
		c.flush(now, true)
		return
	}
	it.state = aborted
}

func capBody(b []byte) []byte {
	if len(b) > engine.ResponseBytesMax {
		b = b[:engine.ResponseBytesMax]
	}
	return append([]byte(nil), b...)
}

// entryOf builds the stored entry for an item.
func (c *core) entryOf(it *item, s engine.State) engine.Entry {
	e := engine.Entry{
		Seq: it.seq, Pos: it.pos, State: s, Key: it.ev.Key, ReceivedAt: it.ev.ReceivedAt,
		Attempts: it.attempts, FirstFailure: it.first, LastAttempt: it.last,
		LastStatus: it.status, Reason: it.reason, Response: it.response,
	}
	if it.replayed {
		e.Flags |= engine.EntryReplayed
	}
	if it.unconfirmed {
		e.Flags |= engine.EntryUnconfirmed
	}
	return e
}

// advance moves the cursor past the settled head of the window, storing
// entries for the events it passes that are not delivered.
func (c *core) advance(now time.Time) {
	c.spillAt = time.Time{}
	wasFull := c.windowFull()
	moved, spilled := false, false
	var passed uint64 // the last seq passed
	for c.head < len(c.window) {
		it := c.window[c.head]
		switch it.state {
		case done:
		case failed:
			e := c.entryOf(it, engine.StateFailed)
			e.DueAt = it.due
			c.txn.Put(e)
			if c.cfg.Ordering {
				ks := c.keyState(it.key)
				ks.failedWindow--
				c.txn.SetBarrier(it.ev.Key, it.seq)
				c.forget(ks)
			}
			c.nextDue = time.Time{}
		case aborted:
			c.txn.Put(c.entryOf(it, engine.StateAborted))
		case inflight:
			if !it.spill {
				if !c.windowFull() || it.batch == nil {
					goto stop
				}
				if at := it.batch.start.Add(spillAfter); now.Before(at) {
					c.spillAt = at // a request this young is not slow yet
					goto stop
				}
				// A slow request holds the cursor and the window is full:
				// store its events as failed (retried if the answer never
				// comes) so the cursor, and every other key, can move on.
				for _, x := range it.batch.items {
					x.spill = true
				}
				c.stats.Spilled += uint64(len(it.batch.items))
			}
			c.spillEntry(it, now)
			spilled = true
		case waiting:
			if !c.cfg.Ordering {
				goto stop
			}
			ks := c.keyState(it.key)
			if !ks.blocked || len(ks.pending) == 0 || ks.pending[0] != it {
				goto stop
			}
			ks.pending = ks.pending[1:]
			c.txn.Put(c.entryOf(it, engine.StateSkipped))
			c.forget(ks)
		default:
			goto stop
		}
		c.window[c.head] = nil
		c.head++
		c.winSize -= it.size
		moved, passed = true, it.seq
	}
stop:
	if c.head == len(c.window) {
		c.window, c.head = c.window[:0], 0
	} else if c.head > 1024 && c.head*2 > len(c.window) {
		c.window = append(c.window[:0], c.window[c.head:]...)
		c.head = 0
	}
	if moved {
		c.settleBudget()
	}
	if moved && wasFull && !c.reader.CaughtUp() {
		c.refill = true // reading ahead stopped for room; there is some now
	}
	if moved {
		if c.head < len(c.window) {
			c.txn.Advance(c.window[c.head].seq, c.window[c.head].pos)
		} else {
			c.txn.Advance(passed+1, 0)
		}
	}
	// A spilled event's answer settles its entry in a later transaction:
	// the entry must be committed first.
	c.flush(now, spilled)
}

// stop prepares a graceful shutdown once nothing is in flight: events still
// waiting in the window before its last settled event are stored (the
// first of each key as failed and due now, uncharged; later ones as
// skipped) so the cursor passes every settled event and nothing delivered
// is sent again after the restart.
func (c *core) stop(now time.Time) {
	last := -1
	for i := c.head; i < len(c.window); i++ {
		if st := c.window[i].state; st != waiting && st != inflight {
			last = i
		}
	}
	for i := c.head; i <= last; i++ {
		it := c.window[i]
		if it.state != waiting {
			continue
		}
		if it.reason == "" {
			it.reason = "waiting at shutdown"
		}
		if !c.cfg.Ordering {
			it.state, it.due = failed, now.UnixNano()
			c.loose = slices.DeleteFunc(c.loose, func(x *item) bool { return x == it })
			continue
		}
		ks := c.keyState(it.key)
		if ks.blocked || len(ks.pending) == 0 || ks.pending[0] != it {
			continue // advance stores it as skipped behind its key's head
		}
		ks.pending = ks.pending[1:]
		it.state, it.due = failed, now.UnixNano()
		ks.blocked = true
		ks.failedWindow++
	}
	c.advance(now)
	c.flush(now, true)
}

const spillReason = "in flight when the read-ahead window filled"

// spillAfter is how long the head of a full window may be in flight before
// it is spilled: only a slow request is worth the index writes (it and the
// key's later events stored, to be settled from the index), not one that
// is merely the oldest of many in flight.
const spillAfter = time.Second

// spillEntry stores an in-flight window event so the cursor can pass it:
// as the failed head of its key (due after its request's timeout, with a
// barrier), or as skipped when earlier events of the key are already
// stored (a key's queue has one failed head). Its answer then settles the
// entry like a retry's or a released skip's would.
func (c *core) spillEntry(it *item, now time.Time) {
	state := engine.StateFailed
	var ks *keyState
	if c.cfg.Ordering {
		ks = c.keyState(it.key)
		if ks.blocked {
			state = engine.StateSkipped
		}
	}
	e := c.entryOf(it, state)
	if state == engine.StateFailed {
		e.DueAt = now.Add(c.cfg.Timeout + time.Second).UnixNano()
		if e.Reason == "" {
			e.Reason = spillReason
		}
		it.spillHead = true
	}
	c.txn.Put(e)
	it.persisted = true
	c.inFlightEntries[it.seq] = true
	if ks != nil && !ks.blocked {
		ks.blocked = true
		c.txn.SetBarrier(it.ev.Key, it.seq)
	}
	c.nextDue = time.Time{}
}

// flush commits pending transitions: at once when force is set, else at
// most every FlushInterval.
func (c *core) flush(now time.Time, force bool) {
	if c.txn.Empty() || (!force && now.Sub(c.lastFlush) < c.cfg.FlushInterval) {
		return
	}
	if err := c.txn.Commit(); err != nil {
		// A commit error is a bug or a dying disk: stop dispatching rather
		// than deliver without recording it.
		c.err = fmt.Errorf("router %s: %w", c.cfg.Name, err)
		c.logger.Error("cannot record delivery state; dispatch stopped", "destination", c.cfg.Name, "err", err)
		return
	}
	c.txn = c.cons.Begin()
	c.lastFlush = now
}

func (c *core) refreshDue() { c.nextDue = time.Time{} }

// nextEntryBatch returns stored entries to send: released skips of keys
// whose head settled, and failed entries whose retry is due.
func (c *core) nextEntryBatch(now time.Time, max int) *batch {
	if len(c.work) == 0 {
		c.gatherEntries(now)
	}
	for i, b := range c.work {
		ks := c.keys[b.items[0].key]
		if c.cfg.Ordering && ks != nil && ks.busy {
			continue
		}
		if len(b.items) > max {
			rest := &batch{items: b.items[max:], entry: true}
			b.items = b.items[:max]
			c.work[i] = rest
		} else {
			c.work = append(c.work[:i], c.work[i+1:]...)
		}
		for _, it := range b.items {
			c.inFlightEntries[it.seq] = true
			it.state = inflight
		}
		if c.cfg.Ordering {
			c.keyState(b.items[0].key).busy = true
		}
		return b
	}
	return nil
}

// gatherEntries loads entry work from the index.
func (c *core) gatherEntries(now time.Time) {
	c.flush(now, true)
	if c.err != nil {
		return
	}
	drains := c.drains
	c.drains = nil
	for _, ks := range drains {
		ks.draining = false
		if ks.busy {
			c.queueDrain(ks)
			continue
		}
		c.drainKey(ks, now)
	}
	if !c.nextDue.IsZero() && now.Before(c.nextDue) {
		return
	}
	due, err := c.cons.Due(now.UnixNano(), 256)
	if err != nil {
		c.logger.Error("cannot read due retries", "destination", c.cfg.Name, "err", err)
		return
	}
	left := false
	for i := range due {
		e := due[i]
		if c.inFlightEntries[e.Seq] {
			continue
		}
		if ks := c.keys[string(e.Key)]; c.cfg.Ordering && e.Flags&engine.EntryReplayed == 0 && ks != nil && ks.busy {
			left = true
			continue
		}
		if it := c.loadEntry(&e, now); it != nil {
			c.stats.Retried++
			c.work = append(c.work, &batch{items: []*item{it}, entry: true})
			c.inFlightEntries[e.Seq] = true // reserved until sent
		}
	}
	switch next, ok, err := c.cons.NextDue(); {
	case err != nil:
		c.nextDue = now.Add(time.Second)
	case left || len(due) == 256:
		c.nextDue = now.Add(50 * time.Millisecond)
	case ok:
		c.nextDue = time.Unix(0, next)
		if !c.nextDue.After(now) {
			c.nextDue = now.Add(50 * time.Millisecond) // due but in flight
		}
	default:
		c.nextDue = now.Add(time.Hour)
	}
}

// drainKey sends a key's next stored entries after its head settled; with
// none left, it lifts the barrier and lets the key's window events go.
// Replayed events are not part of the key's queue (they never block it;
// the retry scan sends them when due): it reads past them.
func (c *core) drainKey(ks *keyState, now time.Time) {
	var ents []engine.Entry
	for limit := c.cfg.BatchSize; ; limit *= 2 {
		all, err := c.cons.KeyEntries([]byte(ks.key), limit)
		if err != nil {
			c.logger.Error("cannot read key entries", "destination", c.cfg.Name, "err", err)
			c.queueDrain(ks)
			return
		}
		ents = slices.DeleteFunc(all, func(e engine.Entry) bool { return e.Flags&engine.EntryReplayed != 0 })
		if len(ents) >= c.cfg.BatchSize || len(all) < limit {
			break
		}
	}
	ents = ents[:min(len(ents), c.cfg.BatchSize)]
	var items []*item
	for i := range ents {
		e := &ents[i]
		if c.inFlightEntries[e.Seq] {
			return // already on its way
		}
		if e.State == engine.StateFailed && e.DueAt > now.UnixNano() {
			break // the head waits for its retry time
		}
		if it := c.loadEntry(e, now); it != nil {
			items = append(items, it)
		}
	}
	if len(items) > 0 {
		for _, it := range items {
			c.inFlightEntries[it.seq] = true
		}
		c.work = append(c.work, &batch{items: items, entry: true})
		return
	}
	if len(ents) > 0 || ks.failedWindow > 0 {
		return // still blocked by a stored failure (Due brings it back) or one in the window
	}
	c.txn.ClearBarrier([]byte(ks.key))
	c.flush(now, true)
	ks.blocked = false
	c.markReady(ks)
	c.forget(ks)
}

// loadEntry reads a stored entry's event. An event older than MaxAge is
// aborted instead; one whose payload is unreadable is aborted with that
// reason.
func (c *core) loadEntry(e *engine.Entry, now time.Time) *item {
	rec, err := c.log.Read(e.Seq, e.Pos)
	it := &item{seq: e.Seq, pos: e.Pos, key: string(e.Key), attempts: e.Attempts, first: e.FirstFailure,
		last: e.LastAttempt, status: e.LastStatus, reason: e.Reason, response: e.Response,
		replayed: e.Flags&engine.EntryReplayed != 0, unconfirmed: e.Flags&engine.EntryUnconfirmed != 0, persisted: true}
	if err != nil {
		it.ev = Event{Seq: e.Seq, Key: e.Key, ReceivedAt: e.ReceivedAt}
		if errors.Is(err, engine.ErrNotFound) || errors.Is(err, engine.ErrCorrupt) {
			c.abort(it, Result{}, "payload unreadable: "+err.Error(), now)
			c.afterEntryFinal(it, now)
		} else {
			c.logger.Error("cannot read event for retry", "destination", c.cfg.Name, "seq", e.Seq, "err", err)
		}
		return nil
	}
	full := newItem(&rec)
	it.buf, it.ev, it.size = full.buf, full.ev, full.size
	if c.refuses(&rec) {
		// Stored though the filters refuse it (stragglers requeued by
		// engine.Recover for every destination, or filters changed since):
		// settled as filtered, never sent.
		c.stats.Filtered++
		c.txn.Succeed(it.seq)
		c.flush(now, true) // committed before anything lists the entry again
		c.afterEntryFinal(it, now)
		return nil
	}
	if now.Sub(time.Unix(0, it.ev.ReceivedAt)) > c.pol.MaxAge {
		c.stats.Expired++
		c.abort(it, Result{}, fmt.Sprintf("expired: older than max_age %v", c.pol.MaxAge), now)
		c.afterEntryFinal(it, now)
		return nil
	}
	if c.chargeDue(it, now) {
		return nil
	}
	return it
}

// afterEntryFinal continues a key's queue after an entry became final
// without being sent.
func (c *core) afterEntryFinal(it *item, now time.Time) {
	if it.replayed {
		return
	}
	if !c.cfg.Ordering && c.keys[it.key] == nil {
		return // no stored barrier to drain (newCore)
	}
	ks := c.keyState(it.key)
	c.queueDrain(ks)
}

// nextWake is when poll may have new work without new input. While poll
// cannot dispatch anyway (requests at the limit, a probe out, a backoff
// waiting for the requests sent before it), only a result can change that,
// and a result wakes the caller by itself; retries that are due wait for
// the end of a pause or backoff.
func (c *core) nextWake(now time.Time) time.Time {
	wake := now.Add(time.Second)
	if c.throttledUntil.After(now) {
		wake = minTime(wake, c.throttledUntil)
	}
	if !c.txn.Empty() {
		wake = minTime(wake, c.lastFlush.Add(c.cfg.FlushInterval))
	}
	if !c.spillAt.IsZero() {
		wake = minTime(wake, c.spillAt)
	}
	if c.paused || c.err != nil || c.inFlight >= c.aimd.Limit() || c.health.state == Probing ||
		(c.health.state == BackingOff && c.inFlight > 0) {
		return wake
	}
	start := maxTime(now, c.throttledUntil) // when poll may dispatch
	if c.health.state == BackingOff {
		// Once the backoff is over, poll probes with whatever there is;
		// with nothing to probe, only new input or a due retry can help.
		if c.health.until.After(now) {
			wake = minTime(wake, c.health.until)
		}
		start = maxTime(start, c.health.until)
	}
	if c.rate != nil && !c.rate.last.IsZero() {
		// Nothing goes before the rate limit has a token again.
		start = maxTime(start, c.rate.last.Add(c.rate.wait(1)))
	}
	if !c.nextDue.IsZero() && len(c.work) == 0 {
		wake = minTime(wake, maxTime(c.nextDue, start))
	}
	if c.rate != nil && (len(c.ready) > 0 || len(c.loose) > 0 || len(c.work) > 0) {
		wake = minTime(wake, maxTime(now.Add(time.Millisecond), start))
	}
	return wake
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// windowFull reports whether reading ahead has stopped for room: in the
// window, or past the reserve, in the shared budget.
func (c *core) windowFull() bool {
	return len(c.window)-c.head >= c.cfg.WindowEvents || c.winSize >= c.cfg.WindowBytes ||
		(c.cfg.WindowBudget != nil && c.winSize >= c.reserve && !c.cfg.WindowBudget.room())
}

// budgetWait returns a channel closed when the shared budget has room again
// if that is all reading waits for (nil otherwise).
func (c *core) budgetWait() <-chan struct{} {
	if c.cfg.WindowBudget == nil || len(c.window)-c.head >= c.cfg.WindowEvents || c.winSize >= c.cfg.WindowBytes {
		return nil
	}
	return c.cfg.WindowBudget.wait()
}

// settleBudget makes what the window holds of the shared budget match its
// size.
func (c *core) settleBudget() {
	if c.cfg.WindowBudget == nil {
		return
	}
	if want := int64(max(c.winSize-c.reserve, 0)); want != c.borrowed {
		c.cfg.WindowBudget.add(want - c.borrowed)
		c.borrowed = want
	}
}

// releaseBudget gives back what the window holds of the shared budget: the
// router has stopped.
func (c *core) releaseBudget() {
	if c.cfg.WindowBudget != nil && c.borrowed != 0 {
		c.cfg.WindowBudget.add(-c.borrowed)
		c.borrowed = 0
	}
}
