package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestEventSizeAndShape(t *testing.T) {
	ts := []byte("2026-11-26T12:00:00.000Z")
	for _, typ := range []string{TypeTrack, TypePage, TypeIdentify} {
		for _, size := range []int{600, 700, 1000, 4096} {
			for _, user := range []int{0, 7, 12345678} {
				for _, n := range []int64{0, 1, 999999} {
					ev := AppendEvent([]byte("junk"), "r1", size, typ, user, n, ts)[len("junk"):]
					if len(ev) != size {
						t.Fatalf("%s size %d user %d n %d: %d bytes", typ, size, user, n, len(ev))
					}
					var m struct {
						Type, MessageID, AnonymousID, UserID, Timestamp string
						Properties                                      struct{ N *int64 }
					}
					if err := json.Unmarshal(ev, &m); err != nil {
						t.Fatalf("not JSON: %v\n%s", err, ev)
					}
					if m.Type != typ || m.MessageID != MessageID("r1", user, n) || m.AnonymousID != AnonymousID("r1", user) ||
						m.Properties.N == nil || *m.Properties.N != n || m.Timestamp != string(ts) || m.UserID == "" {
						t.Fatalf("wrong members: %+v\n%s", m, ev)
					}
				}
			}
		}
	}
	// Smaller than the content: no padding, still valid.
	ev := AppendEvent(nil, "r1", 10, TypeTrack, 1, 1, ts)
	if !json.Valid(ev) || len(ev) < 300 {
		t.Fatalf("small event: %d bytes, valid %v", len(ev), json.Valid(ev))
	}
}

func TestEventTypeMix(t *testing.T) {
	counts := map[string]int{}
	for u := range 100 {
		for n := range int64(100) {
			typ := EventType([3]int{70, 20, 10}, u, n)
			if typ != EventType([3]int{70, 20, 10}, u, n) {
				t.Fatal("not deterministic")
			}
			counts[typ]++
		}
	}
	for typ, want := range map[string]float64{TypeTrack: 7000, TypePage: 2000, TypeIdentify: 1000} {
		if got := float64(counts[typ]); math.Abs(got-want) > want*0.1 {
			t.Errorf("%s: %v of 10000, want about %v", typ, got, want)
		}
	}
	if EventType([3]int{0, 0, 5}, 1, 1) != TypeIdentify {
		t.Error("identify-only mix")
	}
}

func TestScheduleRouting(t *testing.T) {
	start := time.Unix(1000, 0)
	s := schedule{start: start, interval: 0.002, normal: 4, hotP: 0.1}
	if got := s.intended(500).Sub(start); got != time.Second {
		t.Fatalf("intended(500) = %v, want 1s", got)
	}
	lanes := map[int]int{}
	for k := range int64(10_000) {
		lanes[s.laneOf(k)]++
	}
	if lanes[4] != 1000 {
		t.Fatalf("hot lane got %d of 10000 requests, want 1000", lanes[4])
	}
	for l := range 4 {
		if lanes[l] != 2250 {
			t.Fatalf("lane %d got %d requests, want 2250: %v", l, lanes[l], lanes)
		}
	}
	s.hotP = 0
	for k := range int64(8) {
		if s.laneOf(k) != int(k%4) {
			t.Fatalf("round robin broken at %d", k)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:80", "localhost:8080"} {
		if err := CheckLoopback(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1:80", "example.com:80", "127.0.0.1", "0.0.0.0:80", "[::1]:80", "127.0.0.1:0"} {
		if CheckLoopback(bad) == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// testServer serves h on 127.0.0.1 until the test ends.
func testServer(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// TestLoadOrderAndRetry: every event arrives, each user's n in order with
// no request for a user sent before the previous one was answered, and
// 503s are retried.
func TestLoadOrderAndRetry(t *testing.T) {
	var mu sync.Mutex
	lastN := map[string]int64{}
	got := map[string]bool{}
	var problems []string
	var reqs atomic.Int64
	addr := testServer(t, func(ctx *fasthttp.RequestCtx) {
		if reqs.Add(1)%7 == 0 { // refuse some attempts
			ctx.SetStatusCode(503)
			return
		}
		var body struct {
			Batch []struct {
				MessageID, AnonymousID string
				Properties             struct{ N int64 }
			}
		}
		if err := json.Unmarshal(ctx.PostBody(), &body); err != nil {
			ctx.SetStatusCode(400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range body.Batch {
			if got[e.MessageID] {
				continue // a retry of a request already stored
			}
			got[e.MessageID] = true
			if last, ok := lastN[e.AnonymousID]; ok && e.Properties.N != last+1 || !ok && e.Properties.N != 0 {
				problems = append(problems, fmt.Sprintf("%s: n=%d after %d", e.AnonymousID, e.Properties.N, last))
			}
			lastN[e.AnonymousID] = e.Properties.N
		}
		ctx.SetStatusCode(200)
	})
	res, err := Load(context.Background(), LoadConfig{Target: addr, WriteKey: "k", Batch: 10, Senders: 4, Events: 2000,
		Event: EventConfig{Users: 20, Bytes: 300, HotPercent: 30, HotUsers: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 2000 || res.Abandoned != 0 || res.Statuses[503] == 0 {
		t.Fatalf("events %d, abandoned %d, statuses %v", res.Events, res.Abandoned, res.Statuses)
	}
	if len(problems) > 0 {
		t.Fatalf("order: %v", problems[:min(5, len(problems))])
	}
	var acked int
	res.ForEachAcked(func(_ int, mid string) {
		acked++
		if !got[mid] {
			t.Fatalf("acknowledged %s never arrived", mid)
		}
	})
	if acked != 2000 || len(got) != 2000 {
		t.Fatalf("acked %d, arrived %d", acked, len(got))
	}
	hot := res.Assigned[0] + res.Assigned[1]
	if hot < 500 || hot > 700 { // 30% of the requests
		t.Fatalf("hot users carry %d of 2000 events", hot)
	}
}

// TestOpenLoopNoCoordinatedOmission: one lane, 100 requests/s, the server
// stalls the first request 300ms. A closed-loop view would record one slow
// request; from intended times, the ~30 requests due during the stall are
// all late, by decreasing amounts.
func TestOpenLoopNoCoordinatedOmission(t *testing.T) {
	var first atomic.Bool
	addr := testServer(t, func(ctx *fasthttp.RequestCtx) {
		if first.CompareAndSwap(false, true) {
			time.Sleep(300 * time.Millisecond)
		}
		ctx.SetStatusCode(200)
	})
	res, err := Load(context.Background(), LoadConfig{Target: addr, WriteKey: "k", Batch: 1, Senders: 1, Rate: 100,
		Duration: 600 * time.Millisecond, Event: EventConfig{Users: 1, Bytes: 200}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "open" || res.Requests != 60 || res.NotSent != 0 {
		t.Fatalf("mode %s, requests %d, not sent %d", res.Mode, res.Requests, res.NotSent)
	}
	h := res.Latency
	if max := time.Duration(h.Max()) * time.Microsecond; max < 290*time.Millisecond || max > 600*time.Millisecond {
		t.Fatalf("max latency %v, want about 300ms", max)
	}
	var over100 int64
	for _, b := range h.Distribution() {
		if b.From >= 100_000 {
			over100 += b.Count
		}
	}
	// Requests due at 0..~200ms waited for the stall to end at 300ms.
	if over100 < 15 {
		t.Fatalf("%d requests over 100ms: latency is not measured from the intended time", over100)
	}
	if res.MaxLateness < 250*time.Millisecond {
		t.Fatalf("max lateness %v, want about 300ms", res.MaxLateness)
	}
}

// TestOpenLoopWarmup: a stall in the warm-up is in the series, not in the
// percentiles; the requests are counted all the same.
func TestOpenLoopWarmup(t *testing.T) {
	var first atomic.Bool
	addr := testServer(t, func(ctx *fasthttp.RequestCtx) {
		if first.CompareAndSwap(false, true) {
			time.Sleep(200 * time.Millisecond)
		}
		ctx.SetStatusCode(200)
	})
	res, err := Load(context.Background(), LoadConfig{Target: addr, WriteKey: "k", Batch: 1, Senders: 1, Rate: 100,
		Duration: 1500 * time.Millisecond, Warmup: time.Second, Event: EventConfig{Users: 1, Bytes: 200}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 150 || res.NotSent != 0 {
		t.Fatalf("requests %d, not sent %d", res.Requests, res.NotSent)
	}
	if n := res.Latency.TotalCount(); n < 45 || n > 55 {
		t.Fatalf("%d latencies in the histogram, want the 50 due after the warm-up", n)
	}
	if max := time.Duration(res.Latency.Max()) * time.Microsecond; max > 100*time.Millisecond {
		t.Fatalf("max latency %v: the warm-up stall is in the percentiles", max)
	}
	if len(res.Series) == 0 || res.Series[0].MaxMs < 150 {
		t.Fatalf("series %+v: the warm-up stall is missing from the first second", res.Series)
	}
	if !strings.Contains(res.String(), "first 1s left out") {
		t.Fatalf("summary does not say what was left out: %s", res)
	}
	if _, err := Load(context.Background(), LoadConfig{Target: addr, WriteKey: "k", Duration: time.Second, Warmup: time.Second}); err == nil {
		t.Fatal("a warm-up as long as the run was accepted")
	}
}

func TestLoadBounds(t *testing.T) {
	if _, err := Load(context.Background(), LoadConfig{Target: "127.0.0.1:1", WriteKey: "k"}); err == nil {
		t.Fatal("a run without duration or count was accepted")
	}
	if _, err := Load(context.Background(), LoadConfig{Target: "192.0.2.1:80", WriteKey: "k", Events: 1}); err == nil {
		t.Fatal("a non-loopback target was accepted")
	}
	// Nothing listens: the request is retried, then abandoned; the run
	// still ends.
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := Load(context.Background(), LoadConfig{Target: fmt.Sprintf("127.0.0.1:%d", port), WriteKey: "k", Events: 1,
		RetryFor: 200 * time.Millisecond, Timeout: 100 * time.Millisecond, Event: EventConfig{Users: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Abandoned != 1 || res.Events != 0 || len(res.AbandonedIDs) != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("abandoned %d, events %d, ids %v, took %v", res.Abandoned, res.Events, res.AbandonedIDs, time.Since(start))
	}
}

func TestReplaceBetween(t *testing.T) {
	doc := "# Benchmarks\n\nengine text\n\n" + MarkerBegin + "\nold\ntable\n" + MarkerEnd + "\n\nafter\n"
	got, err := ReplaceBetween(doc, MarkerBegin, MarkerEnd, "new table")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Benchmarks\n\nengine text\n\n" + MarkerBegin + "\nnew table\n" + MarkerEnd + "\n\nafter\n"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	again, _ := ReplaceBetween(got, MarkerBegin, MarkerEnd, "new table\n")
	if again != got {
		t.Fatal("not idempotent")
	}
	appended, err := ReplaceBetween("engine only", MarkerBegin, MarkerEnd, "t\n")
	if err != nil || appended != "engine only\n\n"+MarkerBegin+"\nt\n"+MarkerEnd+"\n" {
		t.Fatalf("append: %q %v", appended, err)
	}
	for _, bad := range []string{MarkerEnd + MarkerBegin, MarkerBegin + " only", MarkerBegin + MarkerEnd + MarkerBegin + MarkerEnd} {
		if _, err := ReplaceBetween(bad, MarkerBegin, MarkerEnd, "x"); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "bench", "out")
	res := &Result{Scenario: "ingest-max", Pass: true, Repeats: 2, Env: Env{Commit: "abc1234", Cores: 2},
		Summary:     map[string]float64{"sluice_batch100_eps": 250_000, "sluice_over_file": 0.4},
		SummaryRuns: map[string][]float64{"sluice_batch100_eps": {240_000, 260_000}},
		Phases: []Phase{
			{Name: "sluice-batch100", Target: "sluice", Repeat: 0, EventsPerSec: 240_000, Latency: Percentiles{P99: 20}, Load: LoadParams{Mode: "closed", Batch: 100, Senders: 64, Users: 1000}},
			{Name: "sluice-batch100", Target: "sluice", Repeat: 1, EventsPerSec: 260_000, Latency: Percentiles{P99: 30}, Load: LoadParams{Mode: "closed", Batch: 100, Senders: 64, Users: 1000}},
		}}
	r := &Runner{opts: Options{OutDir: out}}
	if err := r.write(res); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "BENCHMARKS.md")
	os.WriteFile(md, []byte("# Benchmarks\n\nkeep me\n\n"+MarkerBegin+"\nstale\n"+MarkerEnd+"\n\nand me\n"), 0o644)
	if err := WriteReport(out, md); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(md)
	s := string(b)
	for _, want := range []string{"keep me", "and me", "| sluice-batch100 |", "250,000", "ingest >= 200,000 events/s", "**met**",
		"ingest >= 50% of the same-run fasthttp+file ceiling | 0.40 | **missed**", "median of 2", "bench/out/<scenario>/result.json"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "stale") {
		t.Error("old content kept")
	}
	if _, err := os.Stat(filepath.Join(out, "ingest-max", "ingest-max.svg")); err != nil {
		t.Error(err)
	}
}

func TestPlotSVGAxis(t *testing.T) {
	var b strings.Builder
	plotPercentiles(&b, []series{{x: []float64{0, 1, 2, 3}, y: []float64{1, 2, 3, 40}, color: "#000"}}, 0, 0, 100, 100)
	for _, want := range []string{">0%<", ">90%<", ">99%<", ">99.9%<", ">1ms<", ">100ms<"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("axis lacks %s:\n%s", want, b.String())
		}
	}
}
