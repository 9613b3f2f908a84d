package router

import (
	"context"
	"time"
)

// Event is what a destination receives: one stored event. Its byte slices
// are valid only during Send.
type Event struct {
	Seq        uint64
	MessageID  []byte
	Key        []byte
	Type       []byte
	Source     []byte
	ReceivedAt int64 // Unix ns
	Payload    []byte
}

// Result is the outcome of one Send.
type Result struct {
	// Status is the response status (HTTP or HTTP-like); 0 when there was
	// no response (Err says why).
	Status int
	// Err is a transport error: connection refused, reset, timeout.
	Err error
	// Ambiguous is true when the destination may have received the events
	// despite the failure (a timeout after the request was written).
	Ambiguous bool
	// RetryAfter is the destination's requested pause (429/503), if any.
	RetryAfter time.Duration
	// Body is the start of the response body, for dead letters.
	Body []byte
	// Rejected names events of the batch that the destination refused one
	// by one while it took the others (a partial success): Status then
	// stands for the rest. Only a definite answer (success or refusal)
	// can carry it.
	Rejected []Rejection
	// Pause means the destination can take nothing until an operator acts
	// (credentials refused, permission denied on the whole target): the
	// router pauses it, charging nothing, and puts the batch back. Err says
	// why; the status shows it until the destination is resumed.
	Pause bool
}

// Rejection is one event of a batch the destination refused.
type Rejection struct {
	// Index is the event's position in the events given to Send.
	Index int
	// Status is the event's own status: a refusal (4xx) aborts it, a
	// retryable one (5xx, 408, 429) retries it like a failed delivery.
	Status int
	// Reason is the destination's word on it, kept with a dead letter.
	Reason []byte
}

// Destination delivers events somewhere. Send delivers a batch as a whole:
// one result for all of it. It must be safe for concurrent use, honour ctx,
// and never keep the events' bytes after returning.
type Destination interface {
	Send(ctx context.Context, events []Event) Result
	Close() error
}

// Clock is the router's time source; the simulator substitutes a virtual
// one.
type Clock interface {
	Now() time.Time
}

// Rand is the router's randomness (backoff jitter).
type Rand interface {
	// Int64N returns a number in [0, n).
	Int64N(n int64) int64
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Reporter is a Destination with figures of its own (a warehouse's rows
// per table, say), shown in the admin API's destination list and in
// /metrics next to the router's.
type Reporter interface {
	// Report returns the destination's figures now. It must be cheap and
	// safe for concurrent use.
	Report() []Figure
}

// Figure is one figure of a destination: a Prometheus series.
type Figure struct {
	// Name is the metric's name (sluice_<type>_...); Help and Kind
	// ("counter" or "gauge") are the same for every figure of a name.
	Name, Help, Kind string `json:"-"`
	// Labels are the series' labels besides destination, as name, value
	// pairs.
	Labels [][2]string `json:"labels,omitempty"`
	Value  float64     `json:"value"`
	// Series is Name with its labels, for the admin API.
	Series string `json:"series"`
}
