package main

import (
	"fmt"
	"log/slog"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// buildRouters creates each configured destination and its router. cfg is
// complete (loadConfig): every default is filled and every value checked.
func buildRouters(cfg *Config, eng *engine.Engine, log *slog.Logger) ([]*router.Router, error) {
	var out []*router.Router
	budget, err := router.NewWindowBudget(cfg.Router.WindowBudgetBytes, cfg.Router.WindowReserveBytes)
	if err != nil {
		return nil, err
	}
	closeAll := func() {
		for _, r := range out {
			r.Close()
		}
	}
	for i := range cfg.Destinations {
		d := &cfg.Destinations[i]
		dest, err := buildDestination(d, log)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("cannot start destination %q (config line %d): %w", d.Name, d.line, err)
		}
		cons, err := eng.Consumer(d.Name)
		if err != nil {
			dest.Close()
			closeAll()
			return nil, fmt.Errorf("cannot open the log for destination %q: %w", d.Name, err)
		}
		r, err := router.New(router.Config{
			Name:           d.Name,
			Sources:        d.Sources,
			Events:         d.Events,
			Ordering:       *d.Ordering,
			BatchSize:      d.BatchSize,
			ConcurrencyMax: d.Concurrency,
			RateLimit:      d.RateLimit,
			Timeout:        d.Timeout,
			WindowEvents:   d.WindowEvents,
			WindowBytes:    d.WindowBytes,
			WindowBudget:   budget,
			// The router names the destination in each of its lines.
			Logger: log.With("component", "router"),
			Policy: router.Policy{
				MinAttempts:      d.Retry.MinAttempts,
				MaxAge:           d.Retry.MaxAge,
				BackoffInitial:   d.Retry.BackoffInitial,
				BackoffMax:       d.Retry.BackoffMax,
				AbortStatuses:    d.Retry.AbortStatuses,
				RetryStatuses:    d.Retry.RetryStatuses,
				ThrottleStatuses: d.Retry.ThrottleStatuses,
				FailureRatio:     d.Retry.FailureRatio,
				FailureMin:       d.Retry.FailureMin,
			},
		}, eng, cons, dest)
		if err != nil {
			dest.Close()
			closeAll()
			return nil, fmt.Errorf("cannot start destination %q (config line %d): %w", d.Name, d.line, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func buildDestination(d *Destination, log *slog.Logger) (router.Destination, error) {
	if d.typed == nil {
		return nil, fmt.Errorf("BUG: destination %q of type %q was not checked", d.Name, d.Type)
	}
	return d.typed.build(d, log)
}
