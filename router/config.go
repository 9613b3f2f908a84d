package router

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

const (
	windowEventsMax = 1_000_000
	windowBytesMax  = 1 << 30
)

// Config is one destination's router configuration. Zero fields take the
// defaults documented on each.
type Config struct {
	// Name is the destination's name, also its engine consumer. Required.
	Name string
	// Sources are the sources whose events it receives; empty means all.
	Sources []string
	// Events are the event types it accepts; empty means all. Others are
	// filtered: settled without an attempt.
	Events []string
	// Ordering keeps per-user order (anonymousId, else userId): a failed
	// event holds back the later events of its user. Default true is the
	// caller's to set (a bool's zero value is false); cmd sets it.
	Ordering bool
	// BatchSize is the most events per Send. Default 1.
	BatchSize int
	// ConcurrencyMax bounds requests in flight (AIMD moves below it).
	// Default 64.
	ConcurrencyMax int
	// ConcurrencyInitial is where AIMD starts. Default 4.
	ConcurrencyInitial int
	// RateLimit caps events per second; 0 means none.
	RateLimit float64
	// Timeout bounds one Send. Default 30s.
	Timeout time.Duration
	// WindowEvents and WindowBytes bound the events read ahead of the
	// cursor and held in memory (an event counts its fields plus 200
	// bytes). Defaults 10,000 and 32 MiB; WindowEvents must be in
	// [BatchSize, 1,000,000], WindowBytes in [1, 1 GiB].
	WindowEvents int
	WindowBytes  int
	// WindowBudget, shared by many routers, bounds their windows together
	// (see WindowBudget). Default nil: each window is bounded alone.
	WindowBudget *WindowBudget
	// FlushInterval is how often cursor progress is committed to the
	// index (unsynced). Default 5ms.
	FlushInterval time.Duration
	// Policy holds the retry and classification rules.
	Policy Policy
	// Logger receives one line per problem. Default slog.Default().
	Logger *slog.Logger
	// Clock and Rand default to the system's; the simulator sets them.
	Clock Clock
	Rand  Rand
}

func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		return c, fmt.Errorf("router: a destination name is required")
	}
	setDefault(&c.BatchSize, 1)
	setDefault(&c.ConcurrencyMax, 64)
	setDefault(&c.ConcurrencyInitial, 4)
	setDefault(&c.Timeout, 30*time.Second)
	setDefault(&c.WindowEvents, 10_000)
	setDefault(&c.WindowBytes, 32<<20)
	setDefault(&c.FlushInterval, 5*time.Millisecond)
	c.ConcurrencyInitial = min(c.ConcurrencyInitial, c.ConcurrencyMax)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = systemClock{}
	}
	if c.Rand == nil {
		c.Rand = newSystemRand()
	}
	switch {
	case c.BatchSize < 1 || c.BatchSize > 10_000:
		return c, fmt.Errorf("router %s: batch_size %d out of range [1, 10000]", c.Name, c.BatchSize)
	case c.ConcurrencyMax < 1:
		return c, fmt.Errorf("router %s: concurrency must be at least 1", c.Name)
	case c.RateLimit < 0:
		return c, fmt.Errorf("router %s: rate_limit must not be negative", c.Name)
	case c.WindowEvents < c.BatchSize:
		return c, fmt.Errorf("router %s: window of %d events is smaller than batch_size %d", c.Name, c.WindowEvents, c.BatchSize)
	case c.WindowEvents > windowEventsMax:
		return c, fmt.Errorf("router %s: window of %d events is over the maximum %d", c.Name, c.WindowEvents, windowEventsMax)
	case c.WindowBytes < 1 || c.WindowBytes > windowBytesMax:
		return c, fmt.Errorf("router %s: window of %d bytes out of range [1, %d]", c.Name, c.WindowBytes, windowBytesMax)
	}
	p, err := c.Policy.withDefaults()
	if err != nil {
		return c, fmt.Errorf("router %s: %w", c.Name, err)
	}
	c.Policy = p
	return c, nil
}

// WindowBudget bounds the read-ahead windows of many routers together, so
// that a process with hundreds of destinations, each behind, does not hold
// hundreds of full windows. The caller makes one and sets it in every
// router's Config. Safe for concurrent use.
//
// Each router may hold up to ReserveBytes (or its WindowBytes, if smaller)
// without asking, so every destination keeps moving while others hold the
// budget (a destination that is down keeps its window until it is back).
// Past its reserve a router reads only while the budget has room, and then
// at most budgetReadEvents events at a time: n routers hold at most
// Bytes + n × (ReserveBytes + budgetReadEvents events) in their windows.
type WindowBudget struct {
	bytes, reserve int64
	used           atomic.Int64 // bytes held past the routers' reserves
	waiting        atomic.Bool  // a router waits for room (freed is open)
	mu             sync.Mutex
	freed          chan struct{} // closed when room is made; guarded by mu
	closed         chan struct{} // always closed: wait's answer when there is room
}

// budgetReadEvents is the most events a router reads at once while it has
// a budget (the overshoot past a full budget).
const budgetReadEvents = 32

// reserveBytesDefault is a router's own share of window bytes when
// NewWindowBudget is given none: a few hundred events, so a router always
// reads a batch or two ahead whatever the others hold.
const reserveBytesDefault = 256 << 10

// NewWindowBudget returns a budget of bytes shared by routers, each of
// which may also hold reserveBytes of its own (0: reserveBytesDefault,
// 256 KiB).
func NewWindowBudget(bytes, reserveBytes int64) (*WindowBudget, error) {
	if reserveBytes == 0 {
		reserveBytes = reserveBytesDefault
	}
	if bytes < 1 || reserveBytes < 1 {
		return nil, fmt.Errorf("cannot make a window budget of %d bytes with %d reserved per router: both must be positive", bytes, reserveBytes)
	}
	b := &WindowBudget{bytes: bytes, reserve: reserveBytes, closed: make(chan struct{})}
	close(b.closed)
	return b, nil
}

// Bytes is the budget's size.
func (b *WindowBudget) Bytes() int64 { return b.bytes }

// ReserveBytes is what each router may hold without asking.
func (b *WindowBudget) ReserveBytes() int64 { return b.reserve }

// Used is how much of the budget routers hold now (past their reserves).
func (b *WindowBudget) Used() int64 { return b.used.Load() }

func (b *WindowBudget) room() bool { return b.used.Load() < b.bytes }

// add takes n bytes (gives them back when negative), waking the routers
// that wait when it makes room.
func (b *WindowBudget) add(n int64) {
	if b.used.Add(n) < b.bytes && n < 0 && b.waiting.Load() {
		b.mu.Lock()
		if b.freed != nil {
			close(b.freed)
			b.freed = nil
		}
		b.waiting.Store(false)
		b.mu.Unlock()
	}
}

// wait returns a channel closed once there is room (at once when there is
// some now).
func (b *WindowBudget) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Set waiting before looking: add looks at it after changing used, so
	// one of the two sees the other.
	b.waiting.Store(true)
	if b.room() {
		return b.closed
	}
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	return b.freed
}
