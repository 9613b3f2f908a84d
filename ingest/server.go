// Package ingest is Sluice's HTTP gateway: the Segment and RudderStack
// tracking APIs on fasthttp. It authenticates write keys, validates and
// enriches events by editing the client's JSON bytes, and answers 200 only
// after the engine has stored every event of the request durably.
//
// A batch is all or nothing: one invalid event refuses the whole request
// with 400 (or 413) naming the event, and nothing of it is stored. The SDKs
// log and drop a batch answered with 400 rather than retrying it forever,
// and a partly stored batch would leave the client unable to tell which of
// its events arrived.
package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	"github.com/valyala/fasthttp"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/ingest/internal/jsonscan"
)

// Appender stores records durably: the one thing ingest needs of the
// engine.
type Appender interface {
	Append(ctx context.Context, recs []engine.Record) (engine.AppendResult, error)
}

// Deps are the gateway's collaborators.
type Deps struct {
	// Appender stores events. Required.
	Appender Appender
	// Stats, if set, feeds /health and /metrics with the engine's figures.
	Stats func() engine.Stats
	// Metrics are extra writers of Prometheus text for /metrics (the router).
	Metrics []func(io.Writer)
}

// Server is the ingest gateway.
type Server struct {
	opts     Options
	deps     Deps
	log      *slog.Logger
	keys     map[string][]byte // write key -> source name
	srv      *fasthttp.Server
	inFlight atomic.Int64
	budget   budget       // body bytes reserved by requests
	conns    atomic.Int64 // open connections (Serve's)
	metrics  *metrics
	states   sync.Pool
	started  time.Time
}

// reqState is per-request scratch, pooled (see putState).
type reqState struct {
	b builder
	// raw holds a body read from fasthttp's body stream; body holds a
	// decompressed or repaired body, or a pixel's event.
	raw  []byte
	body []byte
	// reserved is what the request holds of the body budget.
	reserved int64
	gz       *gzip.Reader
	ri       requestInfo
	bc       batchContext
	key      []byte
	ip       []byte
	// recvJSON backs ri.receivedAtJSON.
	recvJSON []byte
}

// New returns a gateway; call Serve to start it.
func New(opts Options, deps Deps) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if deps.Appender == nil {
		return nil, fmt.Errorf("ingest: an Appender is required")
	}
	s := &Server{opts: o, deps: deps, log: o.Logger, keys: make(map[string][]byte), metrics: newMetrics(), started: time.Now()}
	s.budget.max = o.BodyBytesBudget
	for _, src := range o.Sources {
		s.keys[src.WriteKey] = []byte(src.Name)
	}
	s.states.New = func() any { return &reqState{b: builder{maxEvent: o.EventBytesMax}} }
	s.srv = &fasthttp.Server{
		Handler:        s.Handle,
		ErrorHandler:   s.handleTransportError,
		HeaderReceived: s.headerReceived,
		Name:           "sluice",
		// Serve's connLimiter enforces ConnectionsMax with a JSON answer;
		// fasthttp's limit is a backstop it never reaches (a closed
		// connection's worker is released just after its slot).
		Concurrency: 2 * o.ConnectionsMax,
		// Bodies are read by the handler, after admission (admit.go).
		StreamRequestBody:  true,
		ReadBufferSize:     o.HeaderBytesMax,
		ReadTimeout:        o.ReadTimeout,
		WriteTimeout:       o.WriteTimeout,
		IdleTimeout:        o.IdleTimeout,
		MaxRequestBodySize: o.RequestBytesMax,
		CloseOnShutdown:    true,
		Logger:             fasthttpLogger{o.Logger},
	}
	return s, nil
}

// Serve accepts connections on ln until Shutdown, at most ConnectionsMax
// at once.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(newConnLimiter(ln, s.opts.ConnectionsMax, &s.conns, s.opts.RetryAfter,
		func() { s.metrics.reject("too_many_connections", 1) }))
}

// Shutdown stops accepting connections and waits for requests in flight to
// finish (their appends complete) or for ctx to end.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.ShutdownWithContext(ctx) }

// endpoint describes one route.
type endpoint struct {
	name     string
	pathType []byte // type implied by the path, for single-event routes
	batch    bool
}

var routes = func() map[string]endpoint {
	m := map[string]endpoint{
		"/v1/batch":        {name: "batch", batch: true},
		"/v1/b":            {name: "batch", batch: true},
		"/v1/import":       {name: "import", batch: true},
		"/beacon/v1/batch": {name: "beacon", batch: true},
	}
	for _, t := range eventTypes {
		ep := endpoint{name: string(t), pathType: t}
		m["/v1/"+string(t)] = ep
		m["/v1/"+string(t[:1])] = ep
	}
	return m
}()

// Handle is the fasthttp handler (exported for in-memory tests).
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	name := "other"
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("BUG: ingest handler panicked", "panic", p, "path", string(ctx.Path()))
			s.writeError(ctx, fasthttp.StatusInternalServerError, "internal error")
		}
		s.metrics.request(name, ctx.Response.StatusCode(), time.Since(start))
	}()
	s.cors(ctx)
	path := string(ctx.Path()) // does not escape: converted on the stack for short paths
	if ctx.IsOptions() {
		name = "preflight"
		ctx.SetStatusCode(fasthttp.StatusNoContent)
		return
	}
	if ep, ok := routes[path]; ok {
		name = ep.name
		if !ctx.IsPost() {
			s.writeError(ctx, fasthttp.StatusMethodNotAllowed, "use POST")
			return
		}
		s.ingest(ctx, ep)
		return
	}
	switch path {
	case "/pixel/v1/track":
		name = "pixel"
		s.pixel(ctx, eventTypes[0])
	case "/pixel/v1/page":
		name = "pixel"
		s.pixel(ctx, eventTypes[2])
	case "/health":
		name = "health"
		s.health(ctx)
	case "/version":
		name = "version"
		ctx.SetContentType("application/json")
		fmt.Fprintf(ctx, `{"version":%q}`, s.opts.Version)
	case "/metrics":
		name = "metrics"
		s.writeMetrics(ctx)
	default:
		s.writeError(ctx, fasthttp.StatusNotFound, "no such endpoint")
	}
}

// ingest handles the tracking API's POST endpoints. The body is read
// before the request counts as in flight: its memory is bounded by the body
// budget, and a slow sender must not hold a processing slot.
func (s *Server) ingest(ctx *fasthttp.RequestCtx, ep endpoint) {
	st := s.states.Get().(*reqState)
	defer func() {
		s.releaseAll(st)
		s.putState(st)
	}()
	st.b.reset()
	// A write key in the headers is checked before any body is read.
	st.key = s.headerOrQueryKey(ctx, st.key[:0])
	if _, ok := s.keys[string(st.key)]; !ok && len(st.key) > 0 {
		s.metrics.reject("unauthorized", 1)
		s.writeError(ctx, fasthttp.StatusUnauthorized, "unknown write key")
		return
	}
	body, aerr := s.readBody(ctx, st)
	if aerr != nil {
		s.refuse(ctx, aerr)
		return
	}
	if n := s.inFlight.Add(1); n > int64(s.opts.InFlightMax) {
		s.inFlight.Add(-1)
		s.overloaded(ctx, fasthttp.StatusServiceUnavailable, "too many requests in flight")
		return
	}
	defer s.inFlight.Add(-1)
	s.metrics.bytes.Add(uint64(len(body)))
	if status, msg := s.parse(ctx, st, body, ep); status != 0 {
		s.writeError(ctx, status, msg)
		return
	}
	s.store(ctx, st)
}

// readBody returns the request body, reserved from the body budget,
// decompressed and with invalid UTF-8 repaired, or why not.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, st *reqState) ([]byte, *admitError) {
	enc := ctx.Request.Header.ContentEncoding()
	gzipped := bytes.EqualFold(enc, []byte("gzip"))
	if len(enc) > 0 && !gzipped && !bytes.EqualFold(enc, []byte("identity")) {
		return nil, &admitError{fasthttp.StatusUnsupportedMediaType, "", "unsupported Content-Encoding " + string(enc)}
	}
	body, aerr := s.wireBody(ctx, st)
	if aerr != nil {
		return nil, aerr
	}
	if gzipped {
		var err error
		st.body, err = s.gunzip(st, body)
		switch {
		case errors.Is(err, errTooLarge):
			return nil, &admitError{fasthttp.StatusRequestEntityTooLarge, "request_too_large", fmt.Sprintf("decompressed body exceeds %d bytes", s.opts.RequestBytesMax)}
		case errors.Is(err, errOverBudget):
			return nil, s.overBudget()
		case err != nil:
			return nil, &admitError{fasthttp.StatusBadRequest, "bad_gzip", "invalid gzip body: " + err.Error()}
		}
		body = st.body
	}
	if !utf8.Valid(body) {
		st.body = s.repairUTF8(st.body, body)
		body = st.body
	}
	return body, nil
}

// repairUTF8 returns body with each run of invalid UTF-8 replaced by
// U+FFFD, in dst's storage (body may alias dst).
func (s *Server) repairUTF8(dst, body []byte) []byte {
	s.metrics.utf8Repaired.Add(1)
	return append(dst[:0], bytes.ToValidUTF8(body, []byte("\uFFFD"))...)
}

// refuse answers a request refused before it was parsed.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, e *admitError) {
	if e.reason != "" {
		s.metrics.reject(e.reason, 1)
	}
	if e.status == fasthttp.StatusServiceUnavailable {
		s.overloaded(ctx, e.status, e.msg)
		return
	}
	s.writeError(ctx, e.status, e.msg)
}

var (
	errTooLarge   = errors.New("too large")
	errOverBudget = errors.New("body budget exhausted")
)

func (s *Server) gunzip(st *reqState, in []byte) ([]byte, error) {
	var err error
	if st.gz == nil {
		st.gz, err = gzip.NewReader(bytes.NewReader(in))
	} else {
		err = st.gz.Reset(bytes.NewReader(in))
	}
	if err != nil {
		return st.body[:0], err
	}
	out := st.body[:0]
	limit := s.opts.RequestBytesMax
	covered := 0 // decompressed bytes reserved from the budget
	for {
		if len(out) == cap(out) {
			if len(out) > limit {
				return out, errTooLarge
			}
			out = append(out, 0)[:len(out)]
		}
		n, err := st.gz.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if len(out) > limit {
			return out, errTooLarge
		}
		if len(out) > covered {
			if !s.reserve(st, len(out)-covered) {
				return out, errOverBudget
			}
			covered = len(out)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// parse authenticates the request (st.key holds the write key of its
// headers or query, if any) and builds its events into st.b.
func (s *Server) parse(ctx *fasthttp.RequestCtx, st *reqState, body []byte, ep endpoint) (int, string) {
	start := jsonscan.SkipSpace(body, 0)
	if start >= len(body) || body[start] != '{' {
		if _, _, err := jsonscan.Document(body); err != nil {
			s.metrics.reject("invalid_json", 1)
			return fasthttp.StatusBadRequest, err.Error()
		}
		s.metrics.reject("invalid_json", 1)
		return fasthttp.StatusBadRequest, "body must be a JSON object"
	}
	st.bc = batchContext{ctxMembers: st.bc.ctxMembers[:0]}
	var end int
	var err error
	batch := span{}
	// One pass validates the whole body, finds the request's own fields and
	// collects the events (builder.collectEvent); they are checked and
	// enriched after it, once the batch-level fields are all known.
	if ep.batch {
		end, err = jsonscan.ObjectScan(body, start, func(ks, ke int, esc bool, vs int) (int, error) {
			switch string(body[ks:ke]) {
			case "batch":
				if vs < len(body) && body[vs] == '[' {
					st.b.resetEvents() // the last batch member counts
					ve, err := jsonscan.ArrayScan(body, vs, func(es int) (int, error) { return st.b.collectEvent(body, es, nil) })
					batch = span{vs, ve}
					return ve, err
				}
				ve, err := jsonscan.Value(body, vs)
				batch = span{vs, ve}
				return ve, err
			case "context":
				if vs < len(body) && body[vs] == '{' {
					st.bc.ctxMembers = st.bc.ctxMembers[:0]
					ve, err := st.b.scanContext(body, vs, &st.bc.ctxMembers)
					st.bc.context = body[vs:ve]
					return ve, err
				}
			}
			ve, err := jsonscan.Value(body, vs)
			if err == nil {
				s.requestField(st, body, ks, ke, vs, ve)
			}
			return ve, err
		})
	} else {
		end, err = st.b.collectEvent(body, start, func(ks, ke int, esc bool, vs, ve int) error {
			s.requestField(st, body, ks, ke, vs, ve)
			return nil
		})
	}
	if err == nil && jsonscan.SkipSpace(body, end) != len(body) {
		_, _, err = jsonscan.Document(body) // names the trailing data
	}
	if err != nil {
		s.metrics.reject("invalid_json", 1)
		return fasthttp.StatusBadRequest, err.Error()
	}
	body = body[:end]
	src, ok := s.keys[string(st.key)]
	if !ok {
		s.metrics.reject("unauthorized", 1)
		if len(st.key) == 0 {
			return fasthttp.StatusUnauthorized, "missing write key"
		}
		return fasthttp.StatusUnauthorized, "unknown write key"
	}
	st.ip = s.clientIP(ctx, st.ip)
	now := s.opts.Now()
	st.recvJSON = appendTimestamp(st.recvJSON[:0], now)
	st.ri = requestInfo{source: src, ip: st.ip, receivedAt: now, receivedAtJSON: st.recvJSON, pathType: ep.pathType}
	if !ep.batch {
		return s.addOrReject(st, body, &st.b.events[0], -1, nil)
	}
	if !batch.ok() || body[batch.s] != '[' {
		s.metrics.reject("invalid_batch", 1)
		return fasthttp.StatusBadRequest, `body must carry a "batch" array`
	}
	for i := range st.b.events {
		if status, msg := s.addOrReject(st, body, &st.b.events[i], i, &st.bc); status != 0 {
			return status, msg
		}
	}
	return 0, ""
}

// requestField notes a top-level member that is about the request: the
// write key (the first one counts), and a batch's sentAt and integrations.
func (s *Server) requestField(st *reqState, body []byte, ks, ke, vs, ve int) {
	switch string(body[ks:ke]) {
	case "writeKey":
		if len(st.key) == 0 && body[vs] == '"' {
			st.key = jsonscan.AppendUnquoted(st.key, body[vs:ve])
		}
	case "integrations":
		if body[vs] == '{' {
			st.bc.integrations = body[vs:ve]
		}
	case "sentAt":
		st.bc.sentAt = body[vs:ve]
	}
}

func (s *Server) addOrReject(st *reqState, body []byte, ev *rawEvent, index int, bc *batchContext) (int, string) {
	err := st.b.addEvent(body, ev, index, bc, &st.ri)
	if err == nil {
		return 0, ""
	}
	var ee *eventError
	if errors.As(err, &ee) {
		reason := "invalid_event"
		if ee.status == fasthttp.StatusRequestEntityTooLarge {
			reason = "event_too_large"
		}
		s.metrics.reject(reason, 1)
		return ee.status, ee.Error()
	}
	return fasthttp.StatusBadRequest, err.Error()
}

// store appends the request's events and answers.
func (s *Server) store(ctx *fasthttp.RequestCtx, st *reqState) {
	recs := st.b.records(&st.ri)
	res, err := s.deps.Appender.Append(context.Background(), recs)
	switch {
	case err == nil:
		s.metrics.events.Add(uint64(res.Stored))
		s.metrics.dedupHits.Add(uint64(res.Duplicates))
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"success":true}`)
	case errors.Is(err, engine.ErrBacklogFull):
		s.metrics.reject("backlog_full", len(recs))
		s.overloaded(ctx, fasthttp.StatusTooManyRequests, "backlog limit reached; retry later")
	case errors.Is(err, engine.ErrDiskBudget):
		s.metrics.reject("disk_budget", len(recs))
		s.overloaded(ctx, fasthttp.StatusServiceUnavailable, "disk budget exhausted; retry later")
	case errors.Is(err, engine.ErrDiskFull):
		// No line per request: the engine logs when space runs low and
		// when it is back.
		s.metrics.reject("disk_full", len(recs))
		s.overloaded(ctx, fasthttp.StatusServiceUnavailable, "disk full; retry later")
	case errors.Is(err, engine.ErrInvalidRecord):
		s.metrics.reject("invalid_record", len(recs))
		s.writeError(ctx, fasthttp.StatusRequestEntityTooLarge, err.Error())
	default:
		s.metrics.reject("storage_unavailable", len(recs))
		s.log.Warn("cannot store events", "events", len(recs), "err", err)
		s.overloaded(ctx, fasthttp.StatusServiceUnavailable, "storage unavailable; retry later")
	}
}

// headerOrQueryKey finds the write key in HTTP Basic auth (user name, with
// or without the colon) or in ?writeKey=.
func (s *Server) headerOrQueryKey(ctx *fasthttp.RequestCtx, dst []byte) []byte {
	if key, ok := basicKey(ctx.Request.Header.Peek("Authorization"), dst); ok {
		return key
	}
	if k := ctx.QueryArgs().Peek("writeKey"); len(k) > 0 {
		return append(dst[:0], k...)
	}
	return dst[:0]
}

func (s *Server) clientIP(ctx *fasthttp.RequestCtx, dst []byte) []byte {
	if s.opts.TrustForwardedFor {
		if xff := ctx.Request.Header.Peek("X-Forwarded-For"); len(xff) > 0 {
			if i := bytes.IndexByte(xff, ','); i >= 0 {
				xff = xff[:i]
			}
			if xff = bytes.TrimSpace(xff); !utf8.Valid(xff) {
				return s.repairUTF8(dst, xff)
			}
			return xff
		}
	}
	addr, ok := netip.AddrFromSlice(ctx.RemoteIP())
	if !ok {
		return dst[:0]
	}
	return addr.Unmap().AppendTo(dst[:0])
}

// cors lets browsers call the API from any page, credentials included.
func (s *Server) cors(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	origin := ctx.Request.Header.Peek("Origin")
	if len(origin) == 0 {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.SetBytesV("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Vary", "Origin")
	}
	if ctx.IsOptions() {
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		if req := ctx.Request.Header.Peek("Access-Control-Request-Headers"); len(req) > 0 {
			h.SetBytesV("Access-Control-Allow-Headers", req)
		} else {
			h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization, Content-Encoding, AnonymousId")
		}
		h.Set("Access-Control-Max-Age", "86400")
	}
}

func (s *Server) writeError(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	b := append([]byte(`{"success":false,"error":`), jsonscan.AppendQuoted(nil, []byte(msg))...)
	ctx.SetBody(append(b, '}'))
}

func (s *Server) overloaded(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds(s.opts.RetryAfter)))
	s.writeError(ctx, status, msg)
}

// handleTransportError answers requests fasthttp could not read.
func (s *Server) handleTransportError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		s.metrics.reject("request_too_large", 1)
		s.writeError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", s.opts.RequestBytesMax))
	case errors.As(err, &small):
		s.writeError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "request headers too large")
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.metrics.reject("read_timeout", 1)
		s.writeError(ctx, fasthttp.StatusRequestTimeout, "request not received in time")
	default:
		s.writeError(ctx, fasthttp.StatusBadRequest, "cannot read request: "+err.Error())
	}
	s.metrics.request("transport", ctx.Response.StatusCode(), 0)
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug(fmt.Sprintf(format, args...), "lib", "fasthttp")
}
