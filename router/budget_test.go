package router_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// countDest answers 200 at once and counts the events.
type countDest struct{ n atomic.Int64 }

func (d *countDest) Send(_ context.Context, evs []router.Event) router.Result {
	d.n.Add(int64(len(evs)))
	return router.Result{Status: 200}
}

func (d *countDest) Close() error { return nil }

// 200 routers over one engine with a backlog, paused so that they only read
// ahead: with a shared WindowBudget their windows together stay within the
// budget plus each one's reserve and one read, instead of 200 full windows;
// every router still reads its reserve; and once resumed they all deliver
// everything (the budget never stops a router for good), giving the budget
// back as they go.
func TestWindowBudgetAcrossRouters(t *testing.T) {
	const (
		routers = 200
		backlog = 400
	)
	budget, err := router.NewWindowBudget(1<<20, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1, Logger: quiet,
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	type dest struct {
		rt   *router.Router
		cons *engine.Consumer
		d    *countDest
		stop func() error
	}
	dests := make([]*dest, routers)
	for i := range dests {
		cons, err := eng.Consumer(fmt.Sprintf("d%d", i))
		if err != nil {
			t.Fatal(err)
		}
		dests[i] = &dest{cons: cons, d: &countDest{}}
	}
	recs := make([]engine.Record, backlog)
	for i := range recs {
		recs[i] = engine.Record{Source: []byte("web"), Type: []byte("track"), MessageID: fmt.Appendf(nil, "m%d", i),
			Key: fmt.Appendf(nil, "u%d", i%7), Payload: fmt.Appendf(nil, `{"n":%d,"pad":"%0100d"}`, i, 0),
			ReceivedAt: time.Now().UnixNano()}
	}
	if _, err := eng.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	// An item is its fields plus 200 bytes (core's itemOverheadBytes).
	item := int64(len(recs[backlog-1].Payload)+len("web")+len("track")+len("m399")+len("u6")) + 200
	bound := budget.Bytes() + routers*(budget.ReserveBytes()+32*item)
	ctx := context.Background()
	for _, d := range dests {
		rt, err := router.New(router.Config{Name: d.cons.Name(), Ordering: true, BatchSize: 10, Logger: quiet,
			WindowBudget: budget}, eng, d.cons, d.d)
		if err != nil {
			t.Fatal(err)
		}
		d.rt = rt
		d.stop = run(t, rt)
		if err := rt.Pause(ctx); err != nil { // it may have sent some before
			t.Fatal(err)
		}
	}
	// Each Pause also refreshes the Status.
	held := func() (total int64, least int) {
		least = 1 << 30
		for _, d := range dests {
			if err := d.rt.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			st := d.rt.Status()
			total += int64(st.WindowBytes)
			if cur, _ := d.cons.Cursor(); cur <= eng.LastSeq() { // not all delivered
				least = min(least, st.WindowBytes)
			}
		}
		return total, least
	}
	waitUntil(t, "every router reads its reserve and the budget is used up", func() bool {
		total, least := held()
		if total > bound {
			t.Fatalf("windows hold %d bytes together, over the bound %d (budget %d, used %d)", total, bound, budget.Bytes(), budget.Used())
		}
		return int64(least) >= budget.ReserveBytes() && budget.Used() >= budget.Bytes()
	})
	if total, _ := held(); total > bound || total >= routers*backlog*item/2 {
		t.Fatalf("windows hold %d bytes together, bound %d, unbounded %d", total, bound, routers*backlog*item)
	}
	for _, d := range dests {
		if err := d.rt.Resume(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "every router delivered the backlog", func() bool {
		for _, d := range dests {
			if cur, _ := d.cons.Cursor(); cur != eng.LastSeq()+1 || d.d.n.Load() < backlog {
				return false
			}
		}
		return true
	})
	for _, d := range dests {
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
	}
	if used := budget.Used(); used != 0 {
		t.Fatalf("stopped routers still hold %d bytes of the budget", used)
	}
}

// waitUntil polls cond until it holds or 60s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWindowConfigValidation(t *testing.T) {
	for _, c := range []router.Config{
		{Name: "d", WindowEvents: -1},
		{Name: "d", WindowEvents: 2_000_000},
		{Name: "d", WindowBytes: -1},
		{Name: "d", WindowBytes: 2 << 30},
		{Name: "d", BatchSize: 100, WindowEvents: 50},
	} {
		if _, err := router.NewMachine(c, nil, nil); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	for _, b := range [][2]int64{{0, 0}, {-1, 0}, {1 << 20, -1}} {
		if _, err := router.NewWindowBudget(b[0], b[1]); err == nil {
			t.Errorf("budget %v accepted", b)
		}
	}
	if b, err := router.NewWindowBudget(1<<20, 0); err != nil || b.ReserveBytes() != 256<<10 {
		t.Errorf("default reserve: %v %v", b, err)
	}
}
