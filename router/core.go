package router

import (
	"fmt"
	"log/slog"
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
	waiting  itemState = iota // not sent: in its key's queue (or core.loose)
	inflight                  // in a request
	// spilling: in a slow request that holds the cursor of a full window;
	// advance stores it (spillEntry) when the cursor reaches it, and its
	// answer settles the entry.
	spilling
	done    // succeeded or filtered: settled, no entry
	failed  // failed in the window: stored as its key's failed head when passed
	aborted // aborted in the window: stored as a dead letter when passed
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
	// spillHead: stored by spillEntry as its key's failed head, due only
	// after its request's timeout.
	spillHead bool
	batch     *batch // the window batch it was sent in
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

	keys  keyQueues // per-key order (ordering on; stored barriers always)
	loose []*item   // dispatchable events (ordering off)
	work  []*batch  // entry batches ready to send

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
		keys: newKeyQueues(), inFlightEntries: make(map[uint64]bool),
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
		c.keys.restoreBarrier(string(key))
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

// wakeMax is the longest nextWake asks the driver to wait with nothing
// scheduled: the machine looks at the clock at least this often.
const wakeMax = time.Second

// rateWakeMin is the shortest wait nextWake asks for while the rate limit
// holds events back: the bucket refills continuously, so a finer wake-up
// would send requests of one or two events.
const rateWakeMin = time.Millisecond

// nextWake is when poll may have new work without new input. While poll
// cannot dispatch anyway (requests at the limit, a probe out, a backoff
// waiting for the requests sent before it), only a result can change that,
// and a result wakes the caller by itself; retries that are due wait for
// the end of a pause or backoff.
func (c *core) nextWake(now time.Time) time.Time {
	wake := now.Add(wakeMax)
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
	if c.rate != nil && (c.keys.anyReady() || len(c.loose) > 0 || len(c.work) > 0) {
		wake = minTime(wake, maxTime(now.Add(rateWakeMin), start))
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
