package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/webhook"
)

// Router.Run in real time with the real engine and a webhook destination
// against an HTTP test server that fails, throttles and refuses.

var quiet = slog.New(slog.DiscardHandler)

// sink is the HTTP destination: it records each delivered event's
// messageId per user, and answers as script says.
type sink struct {
	mu       sync.Mutex
	script   func(user, msgID string, n int) (status int, header http.Header)
	tries    map[string]int
	received map[string][]string // per user, messageIds delivered (2xx), in order
	srv      *httptest.Server
}

func newSink(t *testing.T) *sink {
	s := &sink{tries: map[string]int{}, received: map[string][]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var ev struct {
		User string `json:"user"`
	}
	json.Unmarshal(body, &ev)
	id := r.Header.Get("X-Sluice-Message-Id")
	s.mu.Lock()
	s.tries[id]++
	status, hdr := 200, http.Header(nil)
	if s.script != nil {
		status, hdr = s.script(ev.User, id, s.tries[id])
	}
	if status/100 == 2 {
		s.received[ev.User] = append(s.received[ev.User], id)
	}
	s.mu.Unlock()
	for k, v := range hdr {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"status":%d}`, status)
}

func (s *sink) delivered() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for u, ids := range s.received {
		out[u] = slices.Clone(ids)
	}
	return out
}

type rig struct {
	t    *testing.T
	eng  *engine.Engine
	cons *engine.Consumer
	sink *sink
	sent map[string][]string // per user, messageIds appended, in order
	n    int
}

func newRig(t *testing.T) *rig {
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1, Logger: quiet,
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	cons, err := eng.Consumer("hook")
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, eng: eng, cons: cons, sink: newSink(t), sent: map[string][]string{}}
}

func (r *rig) router(minAttempts int) *router.Router {
	dest, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		r.t.Fatal(err)
	}
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, ConcurrencyInitial: 8, Logger: quiet,
		Policy: router.Policy{MinAttempts: minAttempts, BackoffInitial: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}},
		r.eng, r.cons, dest)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { rt.Close() })
	return rt
}

func (r *rig) add(user string) string {
	r.n++
	id := fmt.Sprintf("m%d", r.n)
	_, err := r.eng.Append(context.Background(), []engine.Record{{Source: []byte("web"), Type: []byte("track"),
		MessageID: []byte(id), Key: []byte(user), Payload: fmt.Appendf(nil, `{"user":%q,"n":%d}`, user, r.n),
		ReceivedAt: time.Now().UnixNano()}})
	if err != nil {
		r.t.Fatal(err)
	}
	r.sent[user] = append(r.sent[user], id)
	return id
}

// run starts rt and returns its stop, which the test's cleanup also calls:
// a test that fails midway still stops its router before the engine under
// it closes.
func run(t *testing.T, rt *router.Router) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	stop = sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() { stop() })
	return stop
}

// waitFor polls cond until it holds or 20s pass.
func (r *rig) waitFor(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settled: the cursor is at the log's end with no failed or skipped entry.
func (r *rig) settled() bool {
	cur, _ := r.cons.Cursor()
	return cur == r.eng.LastSeq()+1 && r.cons.Count(engine.StateFailed) == 0 && r.cons.Count(engine.StateSkipped) == 0
}

// checkDelivered checks that each user's events arrived in order (first
// arrivals), leaving out those in skip (aborted or replayed).
func (r *rig) checkDelivered(skip map[string]bool) {
	r.t.Helper()
	got := r.sink.delivered()
	for user, ids := range r.sent {
		want := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return skip[id] })
		var first []string
		seen := map[string]bool{}
		for _, id := range got[user] {
			if !seen[id] && !skip[id] {
				seen[id] = true
				first = append(first, id)
			}
		}
		if !slices.Equal(first, want) {
			r.t.Errorf("user %s received %v, want %v", user, first, want)
		}
	}
}

func TestRouterRunDelivers(t *testing.T) {
	r := newRig(t)
	var poison string
	r.sink.script = func(user, id string, n int) (int, http.Header) {
		switch {
		case id == poison:
			return 400, nil
		case user == "u1" && n <= 2:
			return 503, nil // u1's events each fail twice
		case user == "u2" && n == 1:
			return 429, http.Header{"Retry-After": {"0"}}
		}
		return 200, nil
	}
	rt := r.router(3)
	stop := run(t, rt)
	for i := 0; i < 50; i++ {
		r.sink.mu.Lock() // the script reads poison under the sink's lock
		id := r.add(fmt.Sprintf("u%d", i%5))
		if i == 17 {
			poison = id
		}
		r.sink.mu.Unlock()
		if i%10 == 0 {
			time.Sleep(2 * time.Millisecond) // new events while it runs
		}
	}
	r.waitFor("every event settled", r.settled)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st := rt.Status(); st.State != "stopped" || st.Counters.Delivered != 49 || st.Counters.Aborted != 1 {
		t.Errorf("status %+v", st)
	}
	ab, err := r.cons.Aborted(0, 10, nil)
	if err != nil || len(ab) != 1 || ab[0].LastStatus != 400 || !strings.Contains(string(ab[0].Response), "400") {
		t.Fatalf("aborted %+v %v, want the poison with its 400", ab, err)
	}
	r.checkDelivered(map[string]bool{poison: true})

	// Replay the dead letter, now accepted, to a new router that has
	// nothing to do (its next look for due retries is an hour away): Kick
	// sends it at once.
	r.sink.mu.Lock()
	replayed := poison
	poison = ""
	r.sink.mu.Unlock()
	rt = r.router(3)
	stop = run(t, rt)
	// Pause returns once Run's loop has taken it, so the router has made
	// its first step (and looked for due retries: none, the next look an
	// hour away) before the replay; Resume changes nothing of that.
	if err := rt.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := rt.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, err := r.cons.Replay(time.Now().UnixNano(), nil); n != 1 || err != nil {
		t.Fatalf("replay: %d %v", n, err)
	}
	if err := rt.Kick(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the replayed event delivered", func() bool { return r.cons.Count(engine.StateFailed) == 0 && r.cons.Count(engine.StateAborted) == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.checkDelivered(map[string]bool{replayed: true})
	if got := r.sink.delivered()["u2"]; got[len(got)-1] != replayed {
		t.Errorf("u2 received %v, want the replayed %s last", got, replayed)
	}
}

// A router stopped midway (failures pending) and a new one on the same
// consumer: the second resumes from the stored state.
func TestRouterRestart(t *testing.T) {
	r := newRig(t)
	var mu sync.Mutex
	down := true
	r.sink.script = func(user, id string, n int) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		if user == "u0" && down {
			return 500, nil
		}
		return 200, nil
	}
	rt := r.router(1000)
	stop := run(t, rt)
	for i := 0; i < 40; i++ {
		r.add(fmt.Sprintf("u%d", i%4))
	}
	r.waitFor("u0 blocked, the others delivered", func() bool {
		cur, _ := r.cons.Cursor()
		return cur == r.eng.LastSeq()+1 && r.cons.Count(engine.StateSkipped) == 9
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, has, _ := r.cons.Barrier([]byte("u0")); !has {
		t.Fatal("no barrier for the failing user")
	}
	mu.Lock()
	down = false
	mu.Unlock()
	rt2 := r.router(1000)
	stop = run(t, rt2)
	r.add("u0")
	r.waitFor("everything settled", func() bool {
		_, has, _ := r.cons.Barrier([]byte("u0"))
		return r.settled() && !has
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.checkDelivered(nil)
}

// Status may be read at any time, also while the router stops: a published
// snapshot is never edited (go test -race). Stopping is quick, so the test
// stops many routers while a reader spins on each.
func TestRouterStatusWhileStopping(t *testing.T) {
	r := newRig(t)
	for i := range 20 {
		r.add(fmt.Sprintf("u%d", i%3))
	}
	for round := range 30 {
		rt := r.router(3)
		stop := run(t, rt)
		if round == 0 {
			r.waitFor("every event settled", r.settled)
		}
		var stopped atomic.Bool
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			for !stopped.Load() {
				_ = rt.Status().State
			}
		}()
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		stopped.Store(true)
		<-readerDone
		if st := rt.Status(); st.State != "stopped" {
			t.Fatalf("round %d: status %+v", round, st)
		}
	}
}

// A destination without per-user order still drains a key's stored
// barrier (its ordering turned off since, or stragglers that engine.Recover
// requeued behind one): the failed head and the skipped events behind it
// are delivered, in order, and the barrier lifts.
func TestRouterUnorderedDrainsStoredBarrier(t *testing.T) {
	r := newRig(t)
	var recs []engine.Record
	for range 3 {
		r.add("u1")
	}
	rd, err := r.eng.NewReader(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, err = rd.Next(recs, 10)
	rd.Close()
	if err != nil || len(recs) != 3 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
	tx := r.cons.Begin()
	for i, rec := range recs {
		en := engine.Entry{Seq: rec.Seq, Pos: rec.Pos, Key: rec.Key, ReceivedAt: rec.ReceivedAt, State: engine.StateSkipped}
		if i == 0 {
			en.State, en.DueAt = engine.StateFailed, time.Now().UnixNano()
			tx.SetBarrier(rec.Key, rec.Seq)
		}
		tx.Put(en)
	}
	tx.Advance(recs[2].Seq+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	dest, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Name: "hook", Ordering: false, Logger: quiet}, r.eng, r.cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	stop := run(t, rt)
	r.waitFor("the stored entries delivered", func() bool {
		n := 0
		r.cons.Barriers(func([]byte, uint64) error { n++; return nil })
		return r.settled() && n == 0
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.checkDelivered(nil)
}

// A stored entry whose event the destination's filters refuse (stragglers
// engine.Recover requeued for every destination, or filters changed since)
// is settled as filtered, never sent.
func TestRouterStoredEntryFiltered(t *testing.T) {
	r := newRig(t)
	r.add("u1")
	rd, err := r.eng.NewReader(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := rd.Next(nil, 10)
	rd.Close()
	if err != nil || len(recs) != 1 {
		t.Fatalf("read %d records: %v", len(recs), err)
	}
	tx := r.cons.Begin()
	tx.Put(engine.Entry{Seq: recs[0].Seq, Pos: recs[0].Pos, Key: recs[0].Key, ReceivedAt: recs[0].ReceivedAt,
		State: engine.StateFailed, DueAt: time.Now().UnixNano()})
	tx.Advance(recs[0].Seq+1, 0)
	if err := tx.CommitSync(); err != nil {
		t.Fatal(err)
	}
	dest, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, Events: []string{"identify"}, Logger: quiet}, r.eng, r.cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	stop := run(t, rt)
	r.waitFor("the stored entry settled", r.settled)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := r.sink.delivered(); len(got) != 0 {
		t.Fatalf("delivered %v, want nothing (the filters refuse track)", got)
	}
	if st := rt.Status(); st.Counters.Filtered != 1 {
		t.Fatalf("filtered %d, want 1", st.Counters.Filtered)
	}
}

// pausingDest pauses itself (Result.Pause) while refuse is set, and
// otherwise delivers to the sink's webhook.
type pausingDest struct {
	router.Destination
	refuse atomic.Bool
	calls  atomic.Int64
}

func (d *pausingDest) Send(ctx context.Context, evs []router.Event) router.Result {
	if d.refuse.Load() {
		d.calls.Add(1)
		return router.Result{Pause: true, Err: fmt.Errorf("permission denied for schema analytics")}
	}
	return d.Destination.Send(ctx, evs)
}

// A destination that answers Pause stops the router with its reason in
// the status, charges nothing, and delivers everything once resumed.
func TestRouterDestinationPauses(t *testing.T) {
	r := newRig(t)
	hook, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	dest := &pausingDest{Destination: hook}
	dest.refuse.Store(true)
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, ConcurrencyInitial: 8, Logger: quiet,
		Policy: router.Policy{MinAttempts: 1, BackoffInitial: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}},
		r.eng, r.cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	stop := run(t, rt)
	for i := range 20 {
		r.add(fmt.Sprintf("u%d", i%4))
	}
	r.waitFor("the destination paused", func() bool { return rt.Status().State == "paused" })
	st := rt.Status()
	if !strings.Contains(st.Error, "permission denied") {
		t.Errorf("status error %q, want the destination's reason", st.Error)
	}
	// Paused: nothing more is sent. Each Kick returns once Run's loop has
	// taken it, and makes the next step look for work; so after two, the
	// router has stepped while paused, and a request it made would show in
	// the status (counted when dispatched, before it is sent).
	for range 2 {
		if err := rt.Kick(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := rt.Status(); got.Counters.Requests != st.Counters.Requests {
		t.Errorf("%d requests while paused", got.Counters.Requests-st.Counters.Requests)
	}
	if st.Counters.Failed != 0 || st.Counters.Aborted != 0 || r.cons.Count(engine.StateAborted) != 0 {
		t.Errorf("pausing charged events: %+v", st.Counters)
	}
	dest.refuse.Store(false)
	if err := rt.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitFor("every event delivered", r.settled)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := rt.Status(); st.Error != "" || st.Counters.Delivered != 20 {
		t.Errorf("after resume: %+v", st)
	}
	r.checkDelivered(nil)
}

// modeDest answers every request by its mode: 503, a pause, or delivery
// to the sink's webhook.
type modeDest struct {
	router.Destination
	mode atomic.Int32 // modeFail, modePause, modeOK
}

const (
	modeFail int32 = iota
	modePause
	modeOK
)

func (d *modeDest) Send(ctx context.Context, evs []router.Event) router.Result {
	switch d.mode.Load() {
	case modeFail:
		return router.Result{Status: 503}
	case modePause:
		return router.Result{Pause: true, Err: fmt.Errorf("credentials refused")}
	}
	return d.Destination.Send(ctx, evs)
}

// A probe answered with a pause: after Resume the breaker probes again
// and everything is delivered (it once stayed probing with nothing in
// flight, for good).
func TestRouterProbePaused(t *testing.T) {
	r := newRig(t)
	hook, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	dest := &modeDest{Destination: hook}
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, ConcurrencyInitial: 8, Logger: quiet,
		Policy: router.Policy{MinAttempts: 100, FailureMin: 2, BackoffInitial: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond}},
		r.eng, r.cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	stop := run(t, rt)
	for i := range 12 {
		r.add(fmt.Sprintf("u%d", i%4))
	}
	r.waitFor("the breaker open", func() bool { s := rt.Status().State; return s == "backing_off" || s == "probing" })
	dest.mode.Store(modePause)
	r.waitFor("the probe answered with a pause", func() bool { return rt.Status().State == "paused" })
	dest.mode.Store(modeOK)
	if err := rt.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.waitFor("every event delivered after resume", r.settled)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r.checkDelivered(nil)
}

// reportingDest is a destination with figures of its own.
type reportingDest struct{ router.Destination }

func (reportingDest) Report() []router.Figure {
	return []router.Figure{
		{Name: "sluice_test_rows_total", Help: "Rows.", Kind: "counter", Labels: [][2]string{{"table", "s.tracks"}}, Value: 3},
		{Name: "sluice_test_rows_total", Help: "Rows.", Kind: "counter", Labels: [][2]string{{"table", "s.users"}}, Value: 1},
		{Name: "sluice_test_loads_total", Help: "Loads.", Kind: "counter", Value: 2},
	}
}

// A destination's own figures (Reporter) appear in /metrics, labelled with
// the destination, HELP and TYPE once per name, and in Figures.
func TestRouterDestinationFigures(t *testing.T) {
	r := newRig(t)
	hook, err := webhook.New(webhook.Config{URL: r.sink.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Name: "wh", Logger: quiet}, r.eng, r.cons, reportingDest{hook})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	var b strings.Builder
	router.WriteMetrics(&b, []*router.Router{rt})
	for _, want := range []string{
		"# HELP sluice_test_rows_total Rows.\n# TYPE sluice_test_rows_total counter\n" +
			`sluice_test_rows_total{destination="wh",table="s.tracks"} 3` + "\n" +
			`sluice_test_rows_total{destination="wh",table="s.users"} 1` + "\n",
		`sluice_test_loads_total{destination="wh"} 2` + "\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack\n%s\ngot:\n%s", want, b.String())
		}
	}
	if n := strings.Count(b.String(), "# TYPE sluice_test_rows_total"); n != 1 {
		t.Errorf("TYPE of sluice_test_rows_total %d times", n)
	}
	if figs := rt.Figures(); len(figs) != 3 || figs[0].Series != `sluice_test_rows_total{table="s.tracks"}` || figs[2].Series != "sluice_test_loads_total" {
		t.Errorf("figures %+v", figs)
	}
}
