package engine

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestDedupExactWindow resends each key at the edges of the dedup window,
// from every part of a generation: just inside the window it is a
// duplicate, whatever generation boundary lies between (an off-by-one in
// generation expiry cuts the window short by up to a generation); past
// the window and one more generation it is stored again (the window is
// not kept much longer than asked).
func TestDedupExactWindow(t *testing.T) {
	const window, gens = 4 * time.Hour, 4
	gen := window / gens
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC).UnixNano())
	o := testOptions(vfs.NewMem())
	o.DedupWindow, o.DedupGenerations = window, gens
	o.Now = func() time.Time { return time.Unix(0, now.Load()) }
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	appendOne := func(id string) AppendResult {
		t.Helper()
		res, err := e.Append(context.Background(), recsFor([]string{id}))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for k := range 8 { // the first send at 8 points within a generation
		start := (now.Load()/int64(gen) + 1) * int64(gen) // the next generation's start
		first := start + int64(k)*int64(gen)/8
		if k == 7 {
			first = start + int64(gen) - 1 // the generation's last nanosecond
		}
		inside, outside := fmt.Sprintf("inside-%d", k), fmt.Sprintf("outside-%d", k)
		now.Store(first)
		appendOne(inside)
		appendOne(outside)
		now.Store(first + int64(window) - 1)
		if res := appendOne(inside); res.Duplicates != 1 {
			t.Errorf("first sent at +%v into a generation, resent 1ns inside the window: %+v, want a duplicate", time.Duration(first-start), res)
		}
		now.Store(first + int64(window+gen))
		if res := appendOne(outside); res.Stored != 1 {
			t.Errorf("first sent at +%v into a generation, resent a window and a generation later: %+v, want it stored", time.Duration(first-start), res)
		}
	}
}
