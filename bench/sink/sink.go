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
	"hash/maphash"
	"net"
	"strconv"
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
	// NamePoison: a batch with poison events is answered 200 naming them
	// ({"rejected":[{"index":i,"status":400,...}]}, the webhook's
	// partial_failures format) and the others count as received; without
	// it the whole batch is refused.
	NamePoison bool
	// Latency is added to every request.
	Latency time.Duration
}

// Sink records arrivals. Safe for concurrent use.
type Sink struct {
	cfg   Config
	start time.Time
	srv   *fasthttp.Server

	mu sync.Mutex
	// seen counts arrivals per messageId, by a 128-bit hash of it: keys
	// without pointers spare the garbage collector a scan of millions of
	// strings, and the sink's CPU is taken from the system under test.
	// Two ids collide with odds around n²/2¹²⁹.
	seen     map[idHash]int32
	seeds    [2]maphash.Seed
	lastN    map[string]int64 // key -> highest n of a first arrival
	order    []string         // order violations, described
	latency  *hdrhistogram.Histogram
	requests atomic.Int64
	refused  atomic.Int64
	poisoned atomic.Int64
	events   atomic.Int64
}

// New returns a sink; its clock starts now.
func New(cfg Config) *Sink {
	s := &Sink{cfg: cfg, start: time.Now(), seen: make(map[idHash]int32), lastN: make(map[string]int64),
		seeds:   [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		latency: hdrhistogram.New(1, int64(time.Hour/time.Microsecond), 3)}
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
	evs, ok := fastEvents(body)
	var err error
	if !ok { // not in the shape Sluice sends: let encoding/json judge it
		evs = nil
		if len(body) > 0 && body[0] == '[' {
			err = json.Unmarshal(body, &evs)
		} else {
			evs = make([]event, 1)
			err = json.Unmarshal(body, &evs[0])
		}
	}
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		fmt.Fprintf(ctx, `{"error":%q}`, err.Error())
		return
	}
	var poison []int
	for i, e := range evs {
		if IsPoison(e.MessageID, s.cfg.PoisonPercent) {
			s.poisoned.Add(1)
			if !s.cfg.NamePoison {
				ctx.SetStatusCode(fasthttp.StatusBadRequest)
				fmt.Fprintf(ctx, `{"error":"poison event %s"}`, e.MessageID)
				return
			}
			poison = append(poison, i)
		}
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	if len(poison) == 0 {
		s.record(evs, now)
		return
	}
	good := make([]event, 0, len(evs)-len(poison))
	ctx.WriteString(`{"rejected":[`)
	next := 0 // into poison
	for i, e := range evs {
		if next == len(poison) || poison[next] != i {
			good = append(good, e)
			continue
		}
		if next > 0 {
			ctx.WriteString(",")
		}
		fmt.Fprintf(ctx, `{"index":%d,"status":400,"error":"poison event %s"}`, i, e.MessageID)
		next++
	}
	ctx.WriteString(`]}`)
	s.record(good, now)
}

func (s *Sink) record(evs []event, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range evs {
		s.events.Add(1)
		id := s.hash(e.MessageID)
		s.seen[id]++
		if s.seen[id] > 1 {
			continue // a duplicate: order is judged on first arrivals
		}
		k := e.key()
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
		r.Duplicates += int(n) - 1
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	r.LatencyP50, r.LatencyP99, r.LatencyMax = us(s.latency.ValueAtQuantile(50)), us(s.latency.ValueAtQuantile(99)), us(s.latency.Max())
	return r
}

// Counts returns the requests and events (duplicates included) received so
// far and the number of distinct events, without the scan Report does:
// cheap enough to poll while a run is going.
func (s *Sink) Counts() (requests, events int64, unique int) {
	s.mu.Lock()
	unique = len(s.seen)
	s.mu.Unlock()
	return s.requests.Load(), s.events.Load(), unique
}

// ResetLatency empties the latency histogram (after a warm-up); arrivals
// and the order record are kept.
func (s *Sink) ResetLatency() {
	s.mu.Lock()
	s.latency.Reset()
	s.mu.Unlock()
}

// Arrived reports how many times a messageId arrived.
func (s *Sink) Arrived(messageID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.seen[s.hash(messageID)])
}

// idHash is a messageId's 128-bit hash.
type idHash [2]uint64

func (s *Sink) hash(messageID string) idHash {
	return idHash{maphash.String(s.seeds[0], messageID), maphash.String(s.seeds[1], messageID)}
}

// Latency returns a copy of the end-to-end latency histogram (µs).
func (s *Sink) Latency() *hdrhistogram.Histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return hdrhistogram.Import(s.latency.Export())
}

// fastEvents extracts the members the sink reads from a body holding one
// event object or an array of them, without reflection: encoding/json
// costs about as much CPU per event as Sluice itself, which on a small
// machine would slow the system under test. It reports false for anything
// it does not handle (escapes in the members it keeps, a non-string userId,
// malformed JSON); the caller then decodes with encoding/json.
func fastEvents(body []byte) ([]event, bool) {
	s := scan{b: body}
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '[' {
		s.i++
		var evs []event
		s.ws()
		if s.peek() == ']' {
			s.i++
			return evs, s.end()
		}
		for {
			var e event
			if !s.event(&e) {
				return nil, false
			}
			evs = append(evs, e)
			s.ws()
			switch s.next() {
			case ',':
				s.ws()
				continue
			case ']':
				return evs, s.end()
			}
			return nil, false
		}
	}
	evs := make([]event, 1)
	if !s.event(&evs[0]) {
		return nil, false
	}
	return evs, s.end()
}

type scan struct {
	b []byte
	i int
}

func (s *scan) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\n' || s.b[s.i] == '\r' || s.b[s.i] == '\t') {
		s.i++
	}
}

func (s *scan) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scan) next() byte {
	c := s.peek()
	s.i++
	return c
}

func (s *scan) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// str reads a string without escapes and returns its contents.
func (s *scan) str() ([]byte, bool) {
	if s.next() != '"' {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// skip skips one value of any kind.
func (s *scan) skip() bool {
	s.ws()
	switch s.peek() {
	case '"':
		s.i++
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '\\':
				s.i += 2
				continue
			case '"':
				s.i++
				return true
			}
			s.i++
		}
		return false
	case '{', '[':
		return s.members(func([]byte) bool { return s.skip() })
	default: // number, true, false, null
		start := s.i
		for s.i < len(s.b) && !delim(s.b[s.i]) {
			s.i++
		}
		return s.i > start
	}
}

func delim(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\n', '\r', '\t':
		return true
	}
	return false
}

// members walks an object (calling fn with each key, positioned at the
// value, which fn must consume) or an array (fn gets a nil key).
func (s *scan) members(fn func(key []byte) bool) bool {
	open := s.next()
	close := byte('}')
	if open == '[' {
		close = ']'
	} else if open != '{' {
		return false
	}
	s.ws()
	if s.peek() == close {
		s.i++
		return true
	}
	for {
		var key []byte
		if open == '{' {
			var ok bool
			if key, ok = s.str(); !ok {
				return false
			}
			s.ws()
			if s.next() != ':' {
				return false
			}
			s.ws()
		}
		if !fn(key) {
			return false
		}
		s.ws()
		switch s.next() {
		case ',':
			s.ws()
		case close:
			return true
		default:
			return false
		}
	}
}

func (s *scan) event(e *event) bool {
	s.ws()
	if s.peek() != '{' {
		return false
	}
	return s.members(func(key []byte) bool {
		var v []byte
		var ok bool
		switch string(key) {
		case "messageId":
			v, ok = s.str()
			e.MessageID = string(v)
		case "anonymousId":
			v, ok = s.str()
			e.AnonymousID = string(v)
		case "userId":
			v, ok = s.str()
			e.UserID = string(v)
		case "receivedAt":
			v, ok = s.str()
			e.ReceivedAt = string(v)
		case "properties":
			if s.peek() != '{' {
				return false // encoding/json decides
			}
			return s.members(func(k []byte) bool {
				if string(k) != "n" {
					return s.skip()
				}
				start := s.i
				if !s.skip() {
					return false
				}
				n, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
				if err != nil {
					return false
				}
				e.Properties.N = &n
				return true
			})
		default:
			return s.skip()
		}
		return ok
	})
}
