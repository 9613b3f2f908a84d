// Package sink is a webhook endpoint for tests and benchmarks: it records
// every event it receives (count, duplicates, per-user order, end-to-end
// latency) and injects faults on a schedule: outage windows (5xx or
// refused connections), poison events (always 400), 429 bursts with
// Retry-After, added latency.
//
// Events are recognised by their JSON members as Sluice stores them:
// "messageId", "anonymousId" (else "userId") for the ordering key,
// "receivedAt" for latency, and an optional integer "properties.n" that the
// load generator numbers per user, for the order check. A request body is one
// event object or a JSON array of them.
package sink

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// FaultKind is what a fault window does.
type FaultKind string

const (
	// Outage answers 503 to every request.
	Outage FaultKind = "outage"
	// Throttle answers 429 with Retry-After.
	Throttle FaultKind = "throttle"
	// Slow adds Latency to every request.
	Slow FaultKind = "slow"
)

// Fault is one window of injected trouble, relative to the sink's start.
type Fault struct {
	Kind       FaultKind
	From, To   time.Duration
	RetryAfter time.Duration // Throttle
	Latency    time.Duration // Slow
}

// Config configures a sink.
type Config struct {
	// Faults are applied while the sink's clock is inside their window.
	Faults []Fault
	// PoisonPercent of events (chosen by messageId hash, so a retry of a
	// poison event is poison again) are answered 400.
	PoisonPercent float64
	// Latency is added to every request.
	Latency time.Duration
}

// Sink records arrivals. Safe for concurrent use.
type Sink struct {
	cfg   Config
	start time.Time
	srv   *fasthttp.Server

	mu       sync.Mutex
	seen     map[string]int   // messageId -> arrivals
	lastN    map[string]int64 // key -> highest n of a first arrival
	order    []string         // order violations, described
	latency  *hdrhistogram.Histogram
	perKey   map[string][]string // key -> messageIds in first-arrival order
	requests atomic.Int64
	refused  atomic.Int64
	poisoned atomic.Int64
	events   atomic.Int64
}

// New returns a sink; its clock starts now.
func New(cfg Config) *Sink {
	s := &Sink{cfg: cfg, start: time.Now(), seen: make(map[string]int), lastN: make(map[string]int64),
		latency: hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3), perKey: make(map[string][]string)}
	s.srv = &fasthttp.Server{Handler: s.handle, Name: "sluice-sink", MaxRequestBodySize: 64 << 20}
	return s
}

// Serve serves on ln until Close.
func (s *Sink) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Close stops the server.
func (s *Sink) Close() error { return s.srv.Shutdown() }

// Reset restarts the fault clock.
func (s *Sink) Reset() { s.mu.Lock(); s.start = time.Now(); s.mu.Unlock() }

func (s *Sink) activeFaults(now time.Time) (status int, retryAfter, latency time.Duration) {
	s.mu.Lock()
	at := now.Sub(s.start)
	s.mu.Unlock()
	latency = s.cfg.Latency
	for _, f := range s.cfg.Faults {
		if at < f.From || at >= f.To {
			continue
		}
		switch f.Kind {
		case Outage:
			status = fasthttp.StatusServiceUnavailable
		case Throttle:
			if status == 0 {
				status, retryAfter = fasthttp.StatusTooManyRequests, f.RetryAfter
			}
		case Slow:
			latency += f.Latency
		}
	}
	return status, retryAfter, latency
}

type event struct {
	MessageID   string `json:"messageId"`
	UserID      any    `json:"userId"`
	AnonymousID string `json:"anonymousId"`
	ReceivedAt  string `json:"receivedAt"`
	Properties  struct {
		N *int64 `json:"n"`
	} `json:"properties"`
}

func (e *event) key() string {
	if e.AnonymousID != "" {
		return e.AnonymousID
	}
	return fmt.Sprint(e.UserID)
}

// IsPoison reports whether the sink refuses this messageId at percent.
func IsPoison(messageID string, percent float64) bool {
	if percent <= 0 {
		return false
	}
	h := fnv.New32a()
	h.Write([]byte(messageID))
	return float64(h.Sum32()%10000) < percent*100
}

func (s *Sink) handle(ctx *fasthttp.RequestCtx) {
	s.requests.Add(1)
	now := time.Now()
	status, retryAfter, latency := s.activeFaults(now)
	if latency > 0 {
		time.Sleep(latency)
	}
	if status != 0 {
		s.refused.Add(1)
		if retryAfter > 0 {
			ctx.Response.Header.Set("Retry-After", fmt.Sprint(int(retryAfter.Seconds()+0.5)))
		}
		ctx.SetStatusCode(status)
		return
	}
	body := bytes.TrimSpace(ctx.PostBody())
	var evs []event
	var err error
	if len(body) > 0 && body[0] == '[' {
		err = json.Unmarshal(body, &evs)
	} else {
		evs = make([]event, 1)
		err = json.Unmarshal(body, &evs[0])
	}
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		fmt.Fprintf(ctx, `{"error":%q}`, err.Error())
		return
	}
	for _, e := range evs {
		if IsPoison(e.MessageID, s.cfg.PoisonPercent) {
			s.poisoned.Add(1)
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
			fmt.Fprintf(ctx, `{"error":"poison event %s"}`, e.MessageID)
			return
		}
	}
	s.record(evs, now)
	ctx.SetStatusCode(fasthttp.StatusOK)
}

func (s *Sink) record(evs []event, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range evs {
		s.events.Add(1)
		s.seen[e.MessageID]++
		if s.seen[e.MessageID] > 1 {
			continue // a duplicate: order is judged on first arrivals
		}
		k := e.key()
		s.perKey[k] = append(s.perKey[k], e.MessageID)
		if e.Properties.N != nil {
			n := *e.Properties.N
			if last, ok := s.lastN[k]; ok && n <= last {
				s.order = append(s.order, fmt.Sprintf("key %s: n=%d (%s) arrived after n=%d", k, n, e.MessageID, last))
			}
			s.lastN[k] = max(n, s.lastN[k])
		}
		if t, err := time.Parse(time.RFC3339Nano, e.ReceivedAt); err == nil {
			s.latency.RecordValue(max(now.Sub(t).Microseconds(), 1))
		}
	}
}

// Report is what the sink saw.
type Report struct {
	Requests, Refused, Poisoned, Events int64
	Unique, Duplicates                  int
	OrderViolations                     []string
	LatencyP50, LatencyP99, LatencyMax  time.Duration
}

// Report summarises arrivals so far.
func (s *Sink) Report() Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Report{Requests: s.requests.Load(), Refused: s.refused.Load(), Poisoned: s.poisoned.Load(), Events: s.events.Load(),
		Unique: len(s.seen), OrderViolations: append([]string(nil), s.order...)}
	for _, n := range s.seen {
		r.Duplicates += n - 1
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	r.LatencyP50, r.LatencyP99, r.LatencyMax = us(s.latency.ValueAtQuantile(50)), us(s.latency.ValueAtQuantile(99)), us(s.latency.Max())
	return r
}

// Arrived reports how many times a messageId arrived.
func (s *Sink) Arrived(messageID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[messageID]
}

// Latency returns a copy of the end-to-end latency histogram (µs).
func (s *Sink) Latency() *hdrhistogram.Histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return hdrhistogram.Import(s.latency.Export())
}
