package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"
)

// LoadConfig describes one load run.
//
// Users are split over lanes; a lane sends its requests one at a time and
// owns its users, so each user's events go out in order and the next
// request carrying a user is sent only after the previous one was answered
// 200 (the log order of a user's events is their n order). When
// Event.HotPercent > 0, one extra lane owns the hot users and that share of
// the requests is routed to it.
//
// Closed loop (Rate 0): at most Senders requests are outstanding; a new
// request is issued as soon as one is answered. Latency is measured from
// the moment a lane sends a request.
//
// Open loop (Rate > 0): request k is due at start + k*Batch/Rate whatever
// happened before, and its latency is measured from that intended time, so
// a stall is charged to every request that should have been sent during it
// (no coordinated omission). A lane that falls behind sends its due
// requests back to back.
//
// Every run ends: Duration or Events must be set, requests stop being
// issued once either is reached, and queued open-loop requests still unsent
// Drain after Duration are dropped (counted as NotSent).
type LoadConfig struct {
	// Target is host:port; the host must be 127.0.0.1 or localhost.
	Target   string
	WriteKey string
	// Batch is the number of events per /v1/batch request. Default 100.
	Batch int
	// Single sends one event per request to /v1/track, /v1/page or
	// /v1/identify (Batch is then 1).
	Single bool
	// Gzip compresses request bodies (level 1).
	Gzip bool
	// Senders is the number of lanes (and, closed loop, the number of
	// outstanding requests). Default 64; at most the number of users.
	Senders int
	// Rate is the offered load in events/s (open loop); 0 is closed loop.
	Rate     float64
	Duration time.Duration
	// Events bounds the events issued (the last request may be short).
	Events int64
	// Timeout bounds one attempt. Default 30s.
	Timeout time.Duration
	// RetryFor is how long a request is retried before it is abandoned.
	// Default 60s.
	RetryFor time.Duration
	// Drain bounds how long after Duration queued open-loop requests may
	// still be sent. Default 30s.
	Drain time.Duration
	// Warmup leaves the requests due (open loop) or sent (closed loop) in
	// the first Warmup of the run out of the latency histogram: new
	// connections and cold goroutines on both sides cost the first second
	// tens of milliseconds against any server, the fasthttp no-op one too.
	// They are sent, counted and in the per-second series all the same.
	Warmup time.Duration
	Event  EventConfig
}

func (c LoadConfig) withDefaults() (LoadConfig, error) {
	var err error
	if c.Event, err = c.Event.withDefaults(); err != nil {
		return c, err
	}
	if c.Event.RunID == "" {
		var b [4]byte
		rand.Read(b[:])
		c.Event.RunID = hex.EncodeToString(b[:])
	}
	if c.Batch == 0 {
		c.Batch = 100
	}
	if c.Single {
		c.Batch = 1
	}
	if c.Senders == 0 {
		c.Senders = 64
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.RetryFor == 0 {
		c.RetryFor = 60 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 30 * time.Second
	}
	normal := c.Event.Users - c.Event.HotUsers
	if c.Event.HotPercent == 0 {
		normal = c.Event.Users
	}
	c.Senders = min(c.Senders, normal)
	switch {
	case c.Batch < 1 || c.Batch > 100_000:
		return c, fmt.Errorf("batch %d: want 1..100000", c.Batch)
	case c.Senders < 1 || c.Senders > 10_000:
		return c, fmt.Errorf("senders %d: want 1..10000", c.Senders)
	case c.Rate < 0 || math.IsInf(c.Rate, 0) || math.IsNaN(c.Rate):
		return c, fmt.Errorf("rate %g: want >= 0", c.Rate)
	case c.Warmup < 0 || c.Duration > 0 && c.Warmup >= c.Duration:
		return c, fmt.Errorf("warmup %s: want >= 0 and shorter than the duration", c.Warmup)
	case c.Duration < 0 || c.Events < 0:
		return c, fmt.Errorf("duration and events must not be negative")
	case c.Duration == 0 && c.Events == 0:
		return c, fmt.Errorf("set a duration or an event count so the run ends")
	case c.WriteKey == "":
		return c, fmt.Errorf("a write key is required")
	}
	if err := CheckLoopback(c.Target); err != nil {
		return c, err
	}
	return c, nil
}

// CheckLoopback refuses any target but 127.0.0.1 or localhost.
func CheckLoopback(hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("target %q: %v", hostport, err)
	}
	if host != "127.0.0.1" && host != "localhost" {
		return fmt.Errorf("target %q: only 127.0.0.1 is allowed", hostport)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("target %q: bad port", hostport)
	}
	return nil
}

// Second is one second of a run's time series.
type Second struct {
	T        int     `json:"t"`        // seconds since the start
	Events   int64   `json:"events"`   // events acknowledged in this second
	Requests int64   `json:"requests"` // requests acknowledged in this second
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
}

// LoadResult is what a run measured.
type LoadResult struct {
	Config LoadConfig `json:"-"`
	Mode   string     // "closed" or "open"
	Start  time.Time
	// End is the last acknowledgement.
	End     time.Time
	Elapsed time.Duration
	// Requests and Events acknowledged (200); Attempts counts every try.
	Requests, Events, Attempts int64
	// Statuses counts non-200 answers by status (0: transport error).
	Statuses map[int]int64
	// Abandoned requests were retried RetryFor (or refused with a status
	// an SDK does not retry) and given up; NotSent open-loop requests were
	// still queued at the hard stop.
	Abandoned, NotSent int64
	EventsPerSec       float64
	// BodyBytes is the wire bytes of acknowledged request bodies.
	BodyBytes int64
	// Latency in microseconds: per acknowledged request, from its intended
	// time (open loop) or its send (closed loop) to its 200.
	Latency *hdrhistogram.Histogram
	Series  []Second
	// Assigned is, per user, how many event numbers were used: events n
	// in [0, Assigned[u]) were acknowledged except those in AbandonedIDs.
	Assigned     []int64
	AbandonedIDs map[string]bool
	// MaxLateness is the most a request was sent after its intended time
	// (open loop): the generator falling behind, or a lane held up by its
	// own previous request.
	MaxLateness time.Duration
	// CPU is this process's CPU time (user+system) during the run.
	CPU time.Duration
}

// RunID returns the run's messageId prefix.
func (r *LoadResult) RunID() string { return r.Config.Event.RunID }

// ForEachAcked calls fn with every acknowledged event's user and messageId.
func (r *LoadResult) ForEachAcked(fn func(user int, messageID string)) {
	var buf []byte
	for u, n := range r.Assigned {
		for i := int64(0); i < n; i++ {
			buf = AppendMessageID(buf[:0], r.RunID(), u, i)
			if len(r.AbandonedIDs) > 0 && r.AbandonedIDs[string(buf)] {
				continue
			}
			fn(u, string(buf))
		}
	}
}

// String summarises r on one line.
func (r *LoadResult) String() string {
	ms := func(q float64) float64 { return float64(r.Latency.ValueAtQuantile(q)) / 1000 }
	return fmt.Sprintf("%s loop: %d events in %d requests, %v: %.0f events/s; latency ms p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f; retries %d, abandoned %d, not sent %d, statuses %v",
		r.Mode, r.Events, r.Requests, r.Elapsed.Round(time.Millisecond), r.EventsPerSec, ms(50), ms(90), ms(99), ms(99.9),
		float64(r.Latency.Max())/1000, r.Attempts-r.Requests-r.Abandoned, r.Abandoned, r.NotSent, r.Statuses) + r.warmupNote()
}

// warmupNote tells what the first second cost when a warm-up was left out
// of the percentiles.
func (r *LoadResult) warmupNote() string {
	if r.Config.Warmup <= 0 || len(r.Series) == 0 {
		return ""
	}
	return fmt.Sprintf("; first %v left out of the percentiles (first second: p99 %.2f ms, max %.2f ms)",
		r.Config.Warmup, r.Series[0].P99Ms, r.Series[0].MaxMs)
}

// schedule is the request plan shared by closed and open loop: request k
// goes to lane laneOf(k) and, open loop, is due at intended(k).
type schedule struct {
	start    time.Time
	interval float64 // seconds between requests (open loop)
	hotP     float64 // share of requests for the hot lane
	normal   int     // number of normal lanes; the hot lane is number normal
}

// isHot reports whether request k is a hot-lane request: exactly
// floor(k*hotP) of the first k requests are, spread evenly.
func (s schedule) isHot(k int64) bool {
	if s.hotP <= 0 {
		return false
	}
	return math.Floor(float64(k+1)*s.hotP) > math.Floor(float64(k)*s.hotP)
}

// laneOf returns request k's lane: the hot lane, or the normal requests
// round robin over the normal lanes.
func (s schedule) laneOf(k int64) int {
	if s.isHot(k) {
		return s.normal
	}
	j := k
	if s.hotP > 0 {
		j = k - int64(math.Floor(float64(k)*s.hotP)) // normal requests before k
	}
	return int(j % int64(s.normal))
}

// intended returns when request k is due (open loop).
func (s schedule) intended(k int64) time.Time {
	return s.start.Add(time.Duration(float64(k) * s.interval * float64(time.Second)))
}

type item struct {
	k        int64
	n        int // events
	intended time.Time
}

// laneQueue is an unbounded FIFO, so the open-loop dispatcher never waits
// on a lane (waiting would hide the lane's delay from the schedule).
type laneQueue struct {
	mu     sync.Mutex
	items  []item
	head   int
	closed bool
	wake   chan struct{}
}

func newLaneQueue() *laneQueue { return &laneQueue{wake: make(chan struct{}, 1)} }

func (q *laneQueue) push(it item) {
	q.mu.Lock()
	if q.head > 1024 && q.head*2 > len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.signal()
}

func (q *laneQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

func (q *laneQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop returns the next item, or false once the queue is closed and empty
// or ctx ends.
func (q *laneQueue) pop(ctx context.Context) (item, bool) {
	for {
		q.mu.Lock()
		if q.head < len(q.items) {
			it := q.items[q.head]
			q.head++
			q.mu.Unlock()
			return it, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return item{}, false
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			return item{}, false
		}
	}
}

// remaining returns and drops the queued items.
func (q *laneQueue) drop() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := int64(len(q.items) - q.head)
	q.items, q.head = nil, 0
	return n
}

// recorder collects latencies and the per-second series.
type recorder struct {
	mu       sync.Mutex
	start    time.Time
	hist     *hdrhistogram.Histogram
	secs     []*secBucket
	last     time.Time
	late     time.Duration
	statuses map[int]int64
}

type secBucket struct {
	events, requests int64
	hist             *hdrhistogram.Histogram
}

const latencyMaxMicros = int64(time.Hour / time.Microsecond)

func newRecorder(start time.Time) *recorder {
	return &recorder{start: start, hist: hdrhistogram.New(1, latencyMaxMicros, 3), statuses: map[int]int64{}}
}

// record counts an acknowledged request; measured puts its latency in the
// histogram (the series takes every one).
func (r *recorder) record(done time.Time, lat time.Duration, events int, measured bool) {
	us := max(1, min(lat.Microseconds(), latencyMaxMicros))
	sec := int(done.Sub(r.start) / time.Second)
	r.mu.Lock()
	defer r.mu.Unlock()
	if measured {
		r.hist.RecordValue(us)
	}
	if sec >= 0 && sec < 24*3600 {
		for len(r.secs) <= sec {
			r.secs = append(r.secs, nil)
		}
		b := r.secs[sec]
		if b == nil {
			b = &secBucket{hist: hdrhistogram.New(1, latencyMaxMicros, 2)}
			r.secs[sec] = b
		}
		b.events += int64(events)
		b.requests++
		b.hist.RecordValue(us)
	}
	if done.After(r.last) {
		r.last = done
	}
}

func (r *recorder) status(code int) {
	r.mu.Lock()
	r.statuses[code]++
	r.mu.Unlock()
}

func (r *recorder) lateness(d time.Duration) {
	r.mu.Lock()
	r.late = max(r.late, d)
	r.mu.Unlock()
}

func (r *recorder) series() []Second {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Second, len(r.secs))
	for i, b := range r.secs {
		out[i].T = i
		if b == nil {
			continue
		}
		out[i].Events, out[i].Requests = b.events, b.requests
		out[i].P50Ms = float64(b.hist.ValueAtQuantile(50)) / 1000
		out[i].P99Ms = float64(b.hist.ValueAtQuantile(99)) / 1000
		out[i].MaxMs = float64(b.hist.Max()) / 1000
	}
	return out
}

// processCPU returns this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lane is one sequential sender.
type lane struct {
	users    []int
	rng      *mrand.Rand
	req      *fasthttp.Request
	resp     *fasthttp.Response
	body     []byte
	gzBuf    bytes.Buffer
	gz       *gzip.Writer
	ts       []byte
	pending  []pendingEvent
	assigned []int64 // shared, indexed by user; a user belongs to one lane
}

type pendingEvent struct {
	user int
	n    int64
}

// Load runs cfg against its target and returns what it measured. It
// returns an error only for a bad config; failed requests are counted in
// the result.
func Load(ctx context.Context, cfg LoadConfig) (*LoadResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ev := cfg.Event
	hot := ev.HotPercent > 0
	nLanes := cfg.Senders
	if hot {
		nLanes++
	}
	client := &fasthttp.HostClient{
		Addr:                          cfg.Target,
		MaxConns:                      nLanes + 4,
		ReadTimeout:                   cfg.Timeout,
		WriteTimeout:                  cfg.Timeout,
		MaxIdemponentCallAttempts:     1,
		NoDefaultUserAgentHeader:      true,
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: true,
		RetryIfErr:                    func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
	}
	defer client.CloseIdleConnections()
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(cfg.WriteKey+":"))
	assigned := make([]int64, ev.Users)
	lanes := make([]*lane, nLanes)
	for i := range lanes {
		l := &lane{rng: mrand.New(mrand.NewPCG(uint64(i), 0x5eed)), assigned: assigned,
			req: fasthttp.AcquireRequest(), resp: fasthttp.AcquireResponse()}
		l.req.Header.SetMethod(fasthttp.MethodPost)
		l.req.Header.SetContentType("application/json")
		l.req.Header.Set("Authorization", auth)
		if cfg.Gzip {
			l.req.Header.Set("Content-Encoding", "gzip")
			l.gz, _ = gzip.NewWriterLevel(&l.gzBuf, gzip.BestSpeed)
		}
		lanes[i] = l
		defer fasthttp.ReleaseRequest(l.req)
		defer fasthttp.ReleaseResponse(l.resp)
	}
	firstNormal := 0
	if hot {
		firstNormal = ev.HotUsers
		for u := 0; u < ev.HotUsers; u++ {
			lanes[cfg.Senders].users = append(lanes[cfg.Senders].users, u)
		}
	}
	for u := firstNormal; u < ev.Users; u++ {
		l := lanes[(u-firstNormal)%cfg.Senders]
		l.users = append(l.users, u)
	}

	mode := "closed"
	if cfg.Rate > 0 {
		mode = "open"
	}
	start := time.Now()
	sch := schedule{start: start, normal: cfg.Senders, hotP: ev.HotPercent / 100}
	if cfg.Rate > 0 {
		sch.interval = float64(cfg.Batch) / cfg.Rate
	}
	rec := newRecorder(start)
	res := &LoadResult{Config: cfg, Mode: mode, Start: start, Assigned: assigned, AbandonedIDs: map[string]bool{}}
	var (
		requests, events, attempts, abandoned, bodyBytes atomic.Int64
		abMu                                             sync.Mutex
	)
	cpu0 := processCPU()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// hardStop ends sending: queued requests are dropped past it.
	hardStop := time.Time{}
	if cfg.Duration > 0 {
		hardStop = start.Add(cfg.Duration + cfg.Drain)
	}
	tokens := make(chan struct{}, cfg.Senders) // closed loop window
	queues := make([]*laneQueue, nLanes)
	for i := range queues {
		queues[i] = newLaneQueue()
	}
	var notSent atomic.Int64
	// release frees the window slots of n items leaving a queue (closed
	// loop); drop also counts them as not sent.
	release := func(n int64) {
		if mode == "closed" {
			for range n {
				<-tokens
			}
		}
	}
	drop := func(n int64) {
		notSent.Add(n)
		release(n)
	}
	var wg sync.WaitGroup
	for i, l := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := queues[i]
			for {
				it, ok := q.pop(runCtx)
				if !ok {
					drop(q.drop())
					return
				}
				if !hardStop.IsZero() && time.Now().After(hardStop) {
					drop(1 + q.drop())
					continue
				}
				if mode == "open" {
					if d := time.Until(it.intended); d > 0 {
						select {
						case <-time.After(d):
						case <-runCtx.Done():
							drop(1 + q.drop())
							return
						}
					} else {
						rec.lateness(-d)
					}
				}
				sent := time.Now()
				l.build(cfg, it.n)
				ok, tries, _ := l.send(runCtx, client, cfg, rec)
				attempts.Add(int64(tries))
				done := time.Now()
				if ok {
					requests.Add(1)
					events.Add(int64(it.n))
					bodyBytes.Add(int64(len(l.req.Body())))
					from := sent
					if mode == "open" {
						from = it.intended
					}
					rec.record(done, done.Sub(from), it.n, from.Sub(start) >= cfg.Warmup)
				} else {
					abandoned.Add(1)
					abMu.Lock()
					for _, p := range l.pending {
						res.AbandonedIDs[MessageID(ev.RunID, p.user, p.n)] = true
					}
					abMu.Unlock()
				}
				release(1)
			}
		}()
	}

	// The dispatcher issues requests until Duration or Events.
	deadline := time.Time{}
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
	}
	var issued int64
dispatch:
	for k := int64(0); ; k++ {
		n := int64(cfg.Batch)
		if cfg.Events > 0 {
			if issued >= cfg.Events {
				break
			}
			n = min(n, cfg.Events-issued)
		}
		var due time.Time
		if mode == "open" {
			due = sch.intended(k)
			if !deadline.IsZero() && !due.Before(deadline) {
				break
			}
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-runCtx.Done():
					break dispatch
				}
			}
		} else {
			select {
			case tokens <- struct{}{}:
			case <-runCtx.Done():
				break dispatch
			}
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				<-tokens
				break
			}
		}
		issued += n
		queues[sch.laneOf(k)].push(item{k: k, n: int(n), intended: due})
	}
	for _, q := range queues {
		q.close()
	}
	wg.Wait()
	res.CPU = processCPU() - cpu0
	res.Requests, res.Events, res.Attempts = requests.Load(), events.Load(), attempts.Load()
	res.Abandoned, res.NotSent, res.BodyBytes = abandoned.Load(), notSent.Load(), bodyBytes.Load()
	res.Latency = rec.hist
	res.Series = rec.series()
	res.Statuses = rec.statuses
	res.MaxLateness = rec.late
	res.End = rec.last
	if res.End.IsZero() {
		res.End = time.Now()
	}
	res.Elapsed = res.End.Sub(start)
	if s := res.Elapsed.Seconds(); s > 0 {
		res.EventsPerSec = float64(res.Events) / s
	}
	return res, nil
}

// build makes the lane's next request of n events.
func (l *lane) build(cfg LoadConfig, n int) {
	ev := cfg.Event
	l.ts = time.Now().UTC().AppendFormat(l.ts[:0], "2006-01-02T15:04:05.000Z")
	l.pending = l.pending[:0]
	l.body = l.body[:0]
	path := "/v1/batch"
	if !cfg.Single {
		l.body = append(l.body, `{"batch":[`...)
	}
	for i := 0; i < n; i++ {
		u := l.users[l.rng.IntN(len(l.users))]
		num := l.assigned[u]
		l.assigned[u]++
		l.pending = append(l.pending, pendingEvent{u, num})
		typ := EventType(ev.Mix, u, num)
		if cfg.Single {
			path = "/v1/" + typ
		} else if i > 0 {
			l.body = append(l.body, ',')
		}
		l.body = AppendEvent(l.body, ev.RunID, ev.Bytes, typ, u, num, l.ts)
	}
	if !cfg.Single {
		l.body = append(l.body, `],"sentAt":"`...)
		l.body = append(l.body, l.ts...)
		l.body = append(l.body, `"}`...)
	}
	body := l.body
	if cfg.Gzip {
		l.gzBuf.Reset()
		l.gz.Reset(&l.gzBuf)
		l.gz.Write(body)
		l.gz.Close()
		body = l.gzBuf.Bytes()
	}
	l.req.SetRequestURI("http://" + cfg.Target + path)
	l.req.SetBodyRaw(body)
}

// send posts the built request until it is answered 200, retrying like an
// SDK (transport errors, 408, 429, 5xx; honouring Retry-After up to 5s),
// for at most cfg.RetryFor. Statuses an SDK drops (other 4xx) abandon the
// request at once.
func (l *lane) send(ctx context.Context, c *fasthttp.HostClient, cfg LoadConfig, rec *recorder) (ok bool, tries, status int) {
	first := time.Now()
	backoff := 20 * time.Millisecond
	for {
		tries++
		err := c.DoTimeout(l.req, l.resp, cfg.Timeout)
		status = 0
		if err == nil {
			status = l.resp.StatusCode()
			if status == fasthttp.StatusOK {
				return true, tries, status
			}
		}
		rec.status(status)
		if status >= 400 && status < 500 && status != 408 && status != 429 {
			return false, tries, status
		}
		wait := backoff + time.Duration(l.rng.Int64N(int64(backoff)))
		backoff = min(backoff*2, time.Second)
		if err == nil {
			if ra, perr := strconv.Atoi(string(l.resp.Header.Peek("Retry-After"))); perr == nil && ra > 0 {
				wait = min(time.Duration(ra)*time.Second, 5*time.Second)
			}
		}
		if time.Since(first)+wait > cfg.RetryFor {
			return false, tries, status
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false, tries, status
		}
	}
}
