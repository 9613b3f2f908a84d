package ingest

import (
	"fmt"
	"log/slog"
	"time"
)

// Source is one origin of events, identified by its write key.
type Source struct {
	Name     string
	WriteKey string
}

// Options configures the gateway. Zero values mean the defaults given.
type Options struct {
	// Sources lists the write keys accepted. Required, keys unique.
	Sources []Source
	// EventBytesMax bounds one event as sent. Default 32 KiB.
	EventBytesMax int
	// RequestBytesMax bounds a request body after decompression (and before
	// it, on the wire). Default 4 MiB.
	RequestBytesMax int
	// BodyBytesBudget bounds the request body memory all connections hold
	// at once: a body's declared length is reserved before any of it is
	// read (and the decompressed bytes as they grow), and released when the
	// request is answered. Past it the gateway answers 503 with Retry-After
	// without reading the body. Default 64 * RequestBytesMax (256 MiB with
	// the default RequestBytesMax); at least RequestBytesMax.
	BodyBytesBudget int64
	// InFlightMax bounds requests being processed at once; past it the
	// gateway answers 503 with Retry-After. Default 1024.
	InFlightMax int
	// ConnectionsMax bounds open connections; past it a new connection is
	// answered 503 (JSON, with Retry-After) and closed. Default 10,000.
	ConnectionsMax int
	// HeaderBytesMax bounds the request line plus headers. Default 8 KiB.
	HeaderBytesMax int
	// ReadTimeout, WriteTimeout and IdleTimeout guard against slow clients.
	// Defaults 10s, 10s, 60s.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// RetryAfter is the Retry-After sent with 429 and 503. Default 1s.
	RetryAfter time.Duration
	// TrustForwardedFor takes the client IP from X-Forwarded-For (first
	// address) when set; only behind a proxy you run. Default false.
	TrustForwardedFor bool
	// Version is reported by GET /version.
	Version string
	// Logger receives one line per problem. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock (receivedAt). Default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	setDefault(&o.EventBytesMax, 32<<10)
	setDefault(&o.RequestBytesMax, 4<<20)
	setDefault(&o.BodyBytesBudget, 64*int64(o.RequestBytesMax))
	setDefault(&o.InFlightMax, 1024)
	setDefault(&o.ConnectionsMax, 10_000)
	setDefault(&o.HeaderBytesMax, 8<<10)
	setDefault(&o.ReadTimeout, 10*time.Second)
	setDefault(&o.WriteTimeout, 10*time.Second)
	setDefault(&o.IdleTimeout, 60*time.Second)
	setDefault(&o.RetryAfter, time.Second)
	setDefault(&o.Version, "dev")
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if len(o.Sources) == 0 {
		return o, fmt.Errorf("ingest: at least one source is required")
	}
	seen := make(map[string]string)
	for _, s := range o.Sources {
		switch {
		case s.Name == "" || s.WriteKey == "":
			return o, fmt.Errorf("ingest: source %q needs a name and a write key", s.Name)
		case seen[s.WriteKey] != "":
			return o, fmt.Errorf("ingest: sources %q and %q share a write key", seen[s.WriteKey], s.Name)
		}
		seen[s.WriteKey] = s.Name
	}
	if o.BodyBytesBudget < int64(o.RequestBytesMax) {
		return o, fmt.Errorf("ingest: BodyBytesBudget %d is less than RequestBytesMax %d", o.BodyBytesBudget, o.RequestBytesMax)
	}
	if o.EventBytesMax > o.RequestBytesMax {
		return o, fmt.Errorf("ingest: EventBytesMax %d exceeds RequestBytesMax %d", o.EventBytesMax, o.RequestBytesMax)
	}
	return o, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
