package filedest

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sluice-cdi/sluice/router"
)

func evs(payloads ...string) []router.Event {
	out := make([]router.Event, len(payloads))
	for i, p := range payloads {
		out[i] = router.Event{Payload: []byte(p)}
	}
	return out
}

func lines(t *testing.T, path string, compressed bool) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sc *bufio.Scanner
	if compressed {
		zr, err := zstd.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		sc = bufio.NewScanner(zr)
	} else {
		sc = bufio.NewScanner(f)
	}
	var out []string
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return out
}

func TestAppendAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out", "events.jsonl")
	d, err := New(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if res := d.Send(context.Background(), evs(`{"a":1}`, `{"a":2}`)); res.Status != 200 {
		t.Fatalf("send: %+v", res)
	}
	d.Close()
	d, _ = New(Config{Path: path}) // continues the same file
	d.Send(context.Background(), evs(`{"a":3}`))
	d.Close()
	if got := lines(t, path, false); strings.Join(got, " ") != `{"a":1} {"a":2} {"a":3}` {
		t.Fatalf("lines %v", got)
	}
}

func TestRotationBySizeAndAge(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	d, _ := New(Config{Path: filepath.Join(dir, "e.jsonl"), MaxBytes: 20, MaxAge: time.Hour, Now: clock})
	defer d.Close()
	d.Send(context.Background(), evs(`{"x":"0123456789"}`)) // 19 bytes: no rotation yet
	d.Send(context.Background(), evs(`{"x":"1"}`))          // file has 19 < 20: appended
	d.Send(context.Background(), evs(`{"x":"2"}`))          // 29 >= 20: rotated first
	now = now.Add(2 * time.Hour)
	d.Send(context.Background(), evs(`{"x":"3"}`)) // age: rotated again
	names, _ := filepath.Glob(filepath.Join(dir, "e-*.jsonl"))
	if len(names) != 2 {
		t.Fatalf("rotated files %v", names)
	}
	var all []string
	for _, n := range names {
		all = append(all, lines(t, n, false)...)
	}
	all = append(all, lines(t, filepath.Join(dir, "e.jsonl"), false)...)
	if len(all) != 4 || all[3] != `{"x":"3"}` {
		t.Fatalf("events across files %v", all)
	}
}

func TestZstd(t *testing.T) {
	dir := t.TempDir()
	d, err := New(Config{Path: filepath.Join(dir, "z.jsonl"), Compress: true, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if res := d.Send(context.Background(), evs(`{"i":`+strings.Repeat("1", i%5+1)+`}`)); res.Status != 200 {
			t.Fatal(res)
		}
	}
	// Without Close: every acknowledged line must already decode.
	if got := lines(t, filepath.Join(dir, "z.jsonl.zst"), true); len(got) != 50 {
		t.Fatalf("decoded %d lines before close, want 50", len(got))
	}
	d.Close()
	d, _ = New(Config{Path: filepath.Join(dir, "z.jsonl"), Compress: true})
	d.Send(context.Background(), evs(`{"last":true}`))
	d.Close()
	got := lines(t, filepath.Join(dir, "z.jsonl.zst"), true)
	if len(got) != 51 || got[50] != `{"last":true}` {
		t.Fatalf("after reopen: %d lines, last %q", len(got), got[len(got)-1])
	}
}

func TestBadPath(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("empty path accepted")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := New(Config{Path: filepath.Join(f, "x.jsonl")}); err == nil {
		t.Fatal("path under a file accepted")
	}
}
