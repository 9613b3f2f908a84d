package router

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// Admin is the operations API: destination status, dead letters (list,
// replay, purge) and pause/resume, on its own listener with bearer-token
// auth.
type Admin struct {
	routers    map[string]*Router
	order      []string
	eng        *engine.Engine
	token      string
	log        *slog.Logger
	srv        *http.Server // made by NewAdmin: Serve and Shutdown may run at once
	pausedPath string
	// mu serializes pause and resume, so the file and the routers agree.
	mu struct {
		sync.Mutex
		paused map[string]bool // as in the file at pausedPath
	}
}

// AdminOptions configures the admin API.
type AdminOptions struct {
	// Token is the bearer token every request must carry
	// ("Authorization: Bearer <token>"). Required unless the listener is
	// on a loopback address.
	Token  string
	Logger *slog.Logger
	// PausedPath is the file that keeps the set of paused destinations
	// across restarts (cmd: data_dir/paused.json). Empty: pause and resume
	// last until the process ends.
	PausedPath string
}

// DestinationInfo is one destination in GET /v1/destinations.
type DestinationInfo struct {
	Status
	// Figures are the destination's own (Reporter), if it has any.
	Figures          []Figure `json:"figures,omitempty"`
	BacklogEvents    uint64   `json:"backlog_events"`
	BacklogBytes     int64    `json:"backlog_bytes"`
	OldestPendingSec float64  `json:"oldest_pending_seconds"`
	FailedEntries    int64    `json:"failed_entries"`
	SkippedEntries   int64    `json:"skipped_entries"`
	AbortedEntries   int64    `json:"aborted_entries"`
}

// DeadLetter is one aborted event in GET .../dlq.
type DeadLetter struct {
	Seq          uint64          `json:"seq"`
	MessageID    string          `json:"message_id"`
	Key          string          `json:"key"`
	Reason       string          `json:"reason"`
	LastStatus   int32           `json:"last_status"`
	Response     string          `json:"response,omitempty"`
	Attempts     uint32          `json:"attempts"`
	FirstFailure time.Time       `json:"first_failure,omitzero"`
	LastAttempt  time.Time       `json:"last_attempt,omitzero"`
	ReceivedAt   time.Time       `json:"received_at"`
	Event        json.RawMessage `json:"event,omitempty"`
}

// NewAdmin returns the admin API over the routers. Call it before the
// routers' Run: the destinations o.PausedPath names start paused, before
// they send anything. A damaged file is an error naming it.
func NewAdmin(eng *engine.Engine, routers []*Router, o AdminOptions) (*Admin, error) {
	a := &Admin{routers: make(map[string]*Router), eng: eng, token: o.Token, log: o.Logger, pausedPath: o.PausedPath}
	if a.log == nil {
		a.log = slog.Default()
	}
	for _, r := range routers {
		a.routers[r.Name()] = r
		a.order = append(a.order, r.Name())
	}
	a.mu.paused = map[string]bool{}
	if a.pausedPath != "" {
		names, err := readPaused(a.pausedPath)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			r := a.routers[name]
			if r == nil {
				a.log.Warn("paused destination is no longer configured; ignored", "destination", name, "file", a.pausedPath)
				continue
			}
			// No Run loop yet, so no lock: the goroutine that will run it
			// starts after this.
			r.m.Pause()
			r.publish()
			a.mu.paused[name] = true
			a.log.Info("destination paused, as before the restart", "destination", name, "file", a.pausedPath)
		}
	}
	a.srv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

// Serve serves the API on ln until Shutdown. Without a token it refuses a
// non-loopback address.
func (a *Admin) Serve(ln net.Listener) error {
	if a.token == "" {
		host, _, _ := net.SplitHostPort(ln.Addr().String())
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("admin: refusing to listen on non-loopback %s without admin_token", ln.Addr())
		}
	}
	err := a.srv.Serve(ln)
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}

// Shutdown stops the API; a Serve called before or after returns nil.
func (a *Admin) Shutdown(ctx context.Context) error {
	return a.srv.Shutdown(ctx)
}

// Handler is the API's HTTP handler.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/destinations", a.list)
	mux.HandleFunc("GET /v1/destinations/{name}/dlq", a.dlqList)
	mux.HandleFunc("POST /v1/destinations/{name}/dlq/replay", a.dlqEdit(true))
	mux.HandleFunc("POST /v1/destinations/{name}/dlq/purge", a.dlqEdit(false))
	mux.HandleFunc("POST /v1/destinations/{name}/pause", a.pause(true))
	mux.HandleFunc("POST /v1/destinations/{name}/resume", a.pause(false))
	// Go's profiler, for operators (behind the same token).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.token != "" && !a.authorized(r.Header.Values("Authorization")) {
			// Never log the header: it may hold a token, ours or another's.
			a.log.Debug("admin request refused: missing or wrong bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// authorized accepts exactly one Authorization header of the form
// "Bearer <token>": the scheme in any case, one space, one token equal to
// ours. The comparison takes the same time whatever the token sent (both
// sides are hashed first, so not even its length shows).
func (a *Admin) authorized(values []string) bool {
	if len(values) != 1 {
		return false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || strings.ContainsAny(token, " \t") {
		return false
	}
	got, want := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(a.token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (a *Admin) list(w http.ResponseWriter, r *http.Request) {
	st := a.eng.Stats()
	byName := map[string]engine.ConsumerStats{}
	for _, c := range st.Consumers {
		byName[c.Name] = c
	}
	out := []DestinationInfo{}
	for _, name := range a.order {
		c := byName[name]
		out = append(out, DestinationInfo{Status: a.routers[name].Status(), Figures: a.routers[name].Figures(), BacklogEvents: c.BacklogEvents, BacklogBytes: c.BacklogBytes,
			OldestPendingSec: c.OldestPendingAge.Seconds(), FailedEntries: c.Failed, SkippedEntries: c.Skipped, AbortedEntries: c.Aborted})
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Admin) consumer(w http.ResponseWriter, r *http.Request) (*Router, *engine.Consumer, bool) {
	name := r.PathValue("name")
	rt := a.routers[name]
	if rt == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no destination " + strconv.Quote(name)})
		return nil, nil, false
	}
	return rt, rt.cons, true
}

// matcher builds the filter of ?reason= (substring) and message ids.
func (a *Admin) matcher(reason string, ids []string) func(*engine.Entry) bool {
	if reason == "" && len(ids) == 0 {
		return nil
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	return func(e *engine.Entry) bool {
		if reason != "" && !strings.Contains(e.Reason, reason) {
			return false
		}
		if len(want) > 0 {
			rec, err := a.eng.Read(e.Seq, e.Pos)
			return err == nil && want[string(rec.MessageID)]
		}
		return true
	}
}

func (a *Admin) dlqList(w http.ResponseWriter, r *http.Request) {
	_, cons, ok := a.consumer(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	after, _ := strconv.ParseUint(q.Get("after"), 10, 64)
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 || limit > 1000 {
		limit = 100
	}
	ents, err := cons.Aborted(after, limit, a.matcher(q.Get("reason"), q["message_id"]))
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	out := []DeadLetter{}
	for _, e := range ents {
		dl := DeadLetter{Seq: e.Seq, Key: string(e.Key), Reason: e.Reason, LastStatus: e.LastStatus, Response: string(e.Response),
			Attempts: e.Attempts, ReceivedAt: time.Unix(0, e.ReceivedAt).UTC()}
		if e.FirstFailure != 0 {
			dl.FirstFailure = time.Unix(0, e.FirstFailure).UTC()
		}
		if e.LastAttempt != 0 {
			dl.LastAttempt = time.Unix(0, e.LastAttempt).UTC()
		}
		if rec, err := a.eng.Read(e.Seq, e.Pos); err == nil {
			dl.MessageID, dl.Event = string(rec.MessageID), json.RawMessage(rec.Payload)
		}
		out = append(out, dl)
	}
	writeJSON(w, http.StatusOK, out)
}

// dlqEdit replays or purges dead letters. Body (optional):
// {"reason": "substring", "message_ids": ["..."]}; empty means all.
func (a *Admin) dlqEdit(replay bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rt, cons, ok := a.consumer(w, r)
		if !ok {
			return
		}
		var req struct {
			Reason     string   `json:"reason"`
			MessageIDs []string `json:"message_ids"`
		}
		if body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20)); len(strings.TrimSpace(string(body))) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad JSON body: " + err.Error()})
				return
			}
		}
		match := a.matcher(req.Reason, req.MessageIDs)
		var n int
		var err error
		if replay {
			n, err = cons.Replay(rt.cfg.Clock.Now().UnixNano(), match)
			if err == nil {
				rt.Kick(r.Context())
			}
		} else {
			n, err = cons.Purge(match)
		}
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		a.log.Info("dead letters edited", "destination", rt.Name(), "replay", replay, "count", n)
		writeJSON(w, http.StatusOK, map[string]int{"count": n})
	}
}

func (a *Admin) pause(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rt, _, ok := a.consumer(w, r)
		if !ok {
			return
		}
		if err := a.setPaused(r.Context(), rt, paused); err != nil {
			status := http.StatusServiceUnavailable
			if errors.Is(err, errPausedFile) {
				status = http.StatusInternalServerError
			}
			writeJSON(w, status, map[string]string{"error": err.Error()})
			return
		}
		a.log.Info("destination "+map[bool]string{true: "paused", false: "resumed"}[paused], "destination", rt.Name())
		writeJSON(w, http.StatusOK, map[string]bool{"paused": paused})
	}
}

var errPausedFile = errors.New("cannot record paused destinations")

// setPaused records the change in the paused file, then applies it; if the
// router cannot take it (ctx ended), the file is put back.
func (a *Admin) setPaused(ctx context.Context, rt *Router, paused bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	name, before := rt.Name(), a.mu.paused[rt.Name()]
	if a.pausedPath != "" && before != paused {
		if err := a.writePausedLocked(name, paused); err != nil {
			return err
		}
	}
	apply := rt.Resume
	if paused {
		apply = rt.Pause
	}
	if err := apply(ctx); err != nil {
		if a.pausedPath != "" && before != paused {
			if werr := a.writePausedLocked(name, before); werr != nil {
				a.log.Error("paused file no longer matches the destination until restart", "destination", name, "err", werr)
			}
		}
		return err
	}
	return nil
}

// writePausedLocked writes the paused set with name's change; a.mu held.
func (a *Admin) writePausedLocked(name string, paused bool) error {
	next := map[string]bool{}
	for n := range a.mu.paused {
		next[n] = true
	}
	if paused {
		next[name] = true
	} else {
		delete(next, name)
	}
	if err := writePaused(a.pausedPath, next); err != nil {
		return fmt.Errorf("%w: %w", errPausedFile, err)
	}
	a.mu.paused = next
	return nil
}

// The paused file: {"paused": ["name", ...]}, names sorted. It is replaced
// whole and atomically: temp file, fsync, rename, fsync the directory.
type pausedFile struct {
	Paused []string `json:"paused"`
}

// readPaused returns the names in the paused file; no file means none.
func readPaused(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read paused destinations: %w", err)
	}
	var f pausedFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil || dec.More() || slices.Contains(f.Paused, "") {
		if err == nil {
			err = errors.New(`want {"paused": ["destination", ...]}`)
		}
		return nil, fmt.Errorf("cannot read paused destinations: %s is damaged (fix it, or delete it to resume every destination): %w", path, err)
	}
	return f.Paused, nil
}

func writePaused(path string, paused map[string]bool) error {
	f := pausedFile{Paused: []string{}}
	for name := range paused {
		f.Paused = append(f.Paused, name)
	}
	slices.Sort(f.Paused)
	b, _ := json.Marshal(f)
	tmp := path + ".tmp"
	if err := writeSynced(tmp, append(b, '\n')); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteMetrics renders the routers' figures in Prometheus text format.
func WriteMetrics(w io.Writer, routers []*Router) {
	type metric struct {
		name, help, kind string
		get              func(Status) float64
	}
	metrics := []metric{
		{"sluice_router_delivered_total", "Events delivered.", "counter", func(s Status) float64 { return float64(s.Counters.Delivered) }},
		{"sluice_router_filtered_total", "Events filtered (source or type not accepted).", "counter", func(s Status) float64 { return float64(s.Counters.Filtered) }},
		{"sluice_router_failed_total", "Retryable failures of single events (retried later; charged once the destination delivers others).", "counter", func(s Status) float64 { return float64(s.Counters.Failed) }},
		{"sluice_router_spilled_total", "Events stored while in flight because the read-ahead window filled.", "counter", func(s Status) float64 { return float64(s.Counters.Spilled) }},
		{"sluice_router_rejected_total", "Events a destination refused by name in a batch it otherwise took (partial success).", "counter", func(s Status) float64 { return float64(s.Counters.Rejected) }},
		{"sluice_router_aborted_total", "Events aborted into the dead letters.", "counter", func(s Status) float64 { return float64(s.Counters.Aborted) }},
		{"sluice_router_throttled_total", "Throttled answers (429).", "counter", func(s Status) float64 { return float64(s.Counters.Throttled) }},
		{"sluice_router_requests_total", "Requests sent.", "counter", func(s Status) float64 { return float64(s.Counters.Requests) }},
		{"sluice_router_outage_attempts_total", "Failed attempts not charged (destination down).", "counter", func(s Status) float64 { return float64(s.Counters.OutageAttempts) }},
		{"sluice_router_breaker_opened_total", "Times the breaker opened.", "counter", func(s Status) float64 { return float64(s.Counters.BreakerOpened) }},
		{"sluice_router_concurrency", "Current adaptive concurrency limit.", "gauge", func(s Status) float64 { return float64(s.Concurrency) }},
		{"sluice_router_in_flight", "Requests in flight.", "gauge", func(s Status) float64 { return float64(s.InFlight) }},
		{"sluice_router_window_events", "Events held in memory ahead of the cursor.", "gauge", func(s Status) float64 { return float64(s.Window) }},
		{"sluice_router_healthy", "1 when the destination is healthy (not backing off or paused).", "gauge", func(s Status) float64 {
			if s.State == "healthy" {
				return 1
			}
			return 0
		}},
	}
	for _, m := range metrics {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", m.name, m.help, m.name, m.kind)
		for _, r := range routers {
			fmt.Fprintf(w, "%s{destination=%q} %g\n", m.name, r.Name(), m.get(r.Status()))
		}
	}
	// The destinations' own figures, grouped by name (HELP and TYPE once).
	type named struct {
		dest string
		fig  Figure
	}
	var names []string
	byName := map[string][]named{}
	for _, r := range routers {
		for _, f := range r.Figures() {
			if byName[f.Name] == nil {
				names = append(names, f.Name)
			}
			byName[f.Name] = append(byName[f.Name], named{r.Name(), f})
		}
	}
	for _, name := range names {
		first := byName[name][0].fig
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, first.Help, name, first.Kind)
		for _, n := range byName[name] {
			fmt.Fprintf(w, "%s %g\n", series(name, n.dest, n.fig.Labels), n.fig.Value)
		}
	}
}
