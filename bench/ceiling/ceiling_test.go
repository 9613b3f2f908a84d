package ceiling

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestEvent(t *testing.T) {
	for _, size := range []int{0, 10, shortEventBytes - 1, shortEventBytes, 100, 479, 600, 4096} {
		ev := Event([]byte("prefix"), size, 0xabc)
		ev = ev[len("prefix"):]
		if len(ev) != size {
			t.Fatalf("size %d: got %d bytes", size, len(ev))
		}
		if size < shortEventBytes {
			continue
		}
		PutID(ev, 0x1234)
		var m map[string]any
		if err := json.Unmarshal(ev, &m); err != nil {
			t.Fatalf("size %d: not JSON: %v\n%s", size, err, ev)
		}
		want := string(MessageID(nil, 0x1234))
		if m["messageId"] != want {
			t.Fatalf("size %d: messageId %v, want %s", size, m["messageId"], want)
		}
		if size == 600 && m["type"] != "track" {
			t.Fatalf("600-byte event is not a full track event: %s", ev)
		}
	}
	id := MessageID(nil, 1)
	PutMessageID(id, 0xff)
	if string(id) != "msg-00000000000000ff" {
		t.Fatalf("PutMessageID: %s", id)
	}
}

func TestFileCounts(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{EventBytes: 600, BatchEvents: 7, Writers: 4, Events: 1000}
	f, err := OpenFile(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(context.Background(), f, cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, syncs := f.Groups()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	checkCounts(t, r, 1000, 600, (1000+6)/7)
	if groups < 1 || groups > r.Commits || syncs != groups {
		t.Fatalf("groups %d, syncs %d for %d commits", groups, syncs, r.Commits)
	}
	data, err := os.ReadFile(filepath.Join(dir, "ceiling.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 600_000 {
		t.Fatalf("file holds %d bytes, want 600000", len(data))
	}
	// Every event number appears exactly once.
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		ev := data[i*600 : (i+1)*600]
		id := string(ev[IDOffset : IDOffset+16])
		if seen[id] {
			t.Fatalf("event %s written twice", id)
		}
		seen[id] = true
	}
	for i := uint64(0); i < 1000; i++ {
		if id := MessageID(nil, i); !seen[string(id[4:])] {
			t.Fatalf("event %d missing", i)
		}
	}
}

func TestPebbleCounts(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{EventBytes: 600, BatchEvents: 7, Writers: 4, Events: 1000}
	p, err := OpenPebble(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r, err := Run(context.Background(), p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, r, 1000, 600, (1000+6)/7)
	it, err := p.DB().NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var n uint64
	for it.First(); it.Valid(); it.Next() {
		if got := binary.BigEndian.Uint64(it.Key()); got != n {
			t.Fatalf("key %d, want %d", got, n)
		}
		if v := it.Value(); len(v) != 600 || !bytes.Equal(v[IDOffset:IDOffset+16], MessageID(nil, n)[4:]) {
			t.Fatalf("value of key %d: %q", n, v[:40])
		}
		n++
	}
	if n != 1000 {
		t.Fatalf("%d keys, want 1000", n)
	}
}

func checkCounts(t *testing.T, r Result, events, size, commits int64) {
	t.Helper()
	if r.Events != events || r.Bytes != events*size || r.Commits != commits {
		t.Fatalf("events %d bytes %d commits %d, want %d %d %d", r.Events, r.Bytes, r.Commits, events, events*size, commits)
	}
	if got := r.Latency.TotalCount(); got != commits {
		t.Fatalf("histogram holds %d samples, want %d", got, commits)
	}
	if r.EventsPerSec <= 0 || r.MBPerSec <= 0 || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.Max {
		t.Fatalf("bad rates or percentiles: %v", r)
	}
	t.Log(r)
}

func TestRunDuration(t *testing.T) {
	var calls atomic.Int64
	c := CommitFunc(func(context.Context, int, uint64, int) error {
		calls.Add(1)
		time.Sleep(time.Millisecond)
		return nil
	})
	start := time.Now()
	r, err := Run(context.Background(), c, Config{BatchEvents: 10, Writers: 3, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("run took %v", el)
	}
	if r.Commits != calls.Load() || r.Events != 10*r.Commits || r.Commits < 3 {
		t.Fatalf("commits %d, events %d, calls %d", r.Commits, r.Events, calls.Load())
	}
}

func TestRunErrors(t *testing.T) {
	if _, err := Run(context.Background(), CommitFunc(nil), Config{}); err == nil {
		t.Fatal("a run without Duration or Events must be refused")
	}
	boom := errors.New("boom")
	c := CommitFunc(func(_ context.Context, _ int, first uint64, _ int) error {
		if first >= 50 {
			return boom
		}
		return nil
	})
	r, err := Run(context.Background(), c, Config{BatchEvents: 10, Writers: 2, Events: 1_000_000})
	if !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	if r.Events > 50 {
		t.Fatalf("%d events counted past the failure", r.Events)
	}
	// A file ceiling run too small for OpenFile's buffers fails cleanly.
	f, err := OpenFile(t.TempDir(), Config{BatchEvents: 2, Writers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Run(context.Background(), f, Config{BatchEvents: 3, Writers: 1, Events: 3}); err == nil {
		t.Fatal("a batch larger than configured must fail")
	}
}
