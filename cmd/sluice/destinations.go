package main

import (
	"fmt"
	"log/slog"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/filedest"
	"github.com/sluice-cdi/sluice/router/webhook"
)

// buildRouters creates each configured destination and its router.
func buildRouters(cfg *Config, eng *engine.Engine, log *slog.Logger) ([]*router.Router, error) {
	var out []*router.Router
	closeAll := func() {
		for _, r := range out {
			r.Close()
		}
	}
	for i := range cfg.Destinations {
		d := &cfg.Destinations[i]
		dest, batch, err := buildDestination(d)
		if err != nil {
			closeAll()
			return nil, err
		}
		cons, err := eng.Consumer(d.Name)
		if err != nil {
			dest.Close()
			closeAll()
			return nil, err
		}
		r, err := router.New(router.Config{
			Name:           d.Name,
			Sources:        d.Sources,
			Events:         d.Events,
			Ordering:       *d.Ordering,
			BatchSize:      batch,
			ConcurrencyMax: d.Concurrency,
			RateLimit:      d.RateLimit,
			Timeout:        d.Timeout,
			Logger:         log.With("component", "router", "destination", d.Name),
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
			return nil, fmt.Errorf("line %d: %w", d.line, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func buildDestination(d *Destination) (router.Destination, int, error) {
	switch d.Type {
	case "webhook":
		var c WebhookConfig
		if err := d.decodeConfig(&c); err != nil {
			return nil, 0, err
		}
		batch := max(d.BatchSize, 1)
		w, err := webhook.New(webhook.Config{URL: c.URL, Method: c.Method, Headers: c.Headers, Secret: c.Secret,
			Batch: d.BatchSize > 1, Timeout: d.Timeout, PartialFailures: c.PartialFailures})
		if err != nil {
			return nil, 0, fmt.Errorf("line %d: destination %q: %w", d.line, d.Name, err)
		}
		return w, batch, nil
	case "file":
		var c FileConfig
		if err := d.decodeConfig(&c); err != nil {
			return nil, 0, err
		}
		batch := d.BatchSize
		if batch == 0 {
			batch = 100
		}
		f, err := filedest.New(filedest.Config{Path: c.Path, MaxBytes: c.MaxBytes, MaxAge: c.MaxAge, Compress: c.Compress})
		if err != nil {
			return nil, 0, fmt.Errorf("line %d: destination %q: %w", d.line, d.Name, err)
		}
		return f, batch, nil
	}
	return nil, 0, fmt.Errorf("line %d: destination %q has unknown type %q", d.line, d.Name, d.Type)
}
