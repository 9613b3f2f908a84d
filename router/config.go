package router

import (
	"fmt"
	"log/slog"
	"time"
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
	// cursor and held in memory. Defaults 10,000 and 32 MiB.
	WindowEvents int
	WindowBytes  int
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
	}
	p, err := c.Policy.withDefaults()
	if err != nil {
		return c, fmt.Errorf("router %s: %w", c.Name, err)
	}
	c.Policy = p
	return c, nil
}
