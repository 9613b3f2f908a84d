package filedest

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
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

// Rotated names sort lexically in the order the files were written: within
// one millisecond (counters past 9), across millisecond, second and day
// boundaries, when the clock steps back, and after a restart within the
// same millisecond (no name is reused: a rename over an older file would
// lose it). A clock that steps back across a restart is not covered: the
// new process does not look at the names already there.
func TestRotatedNamesSort(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 31, 23, 59, 59, 997_000_000, time.UTC)
	clock := func() time.Time { return now }
	path := filepath.Join(dir, "e.jsonl")
	n := 0
	send := func(d *File) {
		n++
		if res := d.Send(context.Background(), evs(fmt.Sprintf(`{"n":%d}`, n))); res.Status != 200 {
			t.Fatalf("send %d: %+v", n, res)
		}
	}
	d, err := New(Config{Path: path, MaxBytes: 1, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 { // each Send rotates the one before
		send(d)
		if i >= 15 { // the first 15 in one millisecond
			now = now.Add(700 * time.Microsecond)
		}
	}
	d.Close()
	d, _ = New(Config{Path: path, MaxBytes: 1, Now: clock}) // a restart, same millisecond
	for i := range 6 {
		send(d)
		if i == 2 {
			now = now.Add(-time.Minute) // the clock steps back
		}
	}
	d.Close()
	names, _ := filepath.Glob(filepath.Join(dir, "e-*.jsonl"))
	sort.Strings(names)
	var all []string
	for _, name := range names {
		all = append(all, lines(t, name, false)...)
	}
	all = append(all, lines(t, path, false)...)
	if len(all) != n {
		t.Fatalf("%d lines in %d files, want %d", len(all), len(names)+1, n)
	}
	for i, l := range all {
		if want := fmt.Sprintf(`{"n":%d}`, i+1); l != want {
			t.Fatalf("in name order, line %d is %s, want %s (names %v)", i, l, want, names)
		}
	}
}

// A crash in the middle of a write leaves a torn line or frame (or zeros,
// after a power loss) at the end of the active file; reopening cuts it off
// before appending, so the file stays whole lines and whole frames.
func TestReopenCutsTornTail(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	for _, compressed := range []bool{false, true} {
		for _, tail := range []string{"torn", "zeros", "whole"} {
			t.Run(fmt.Sprintf("compress=%v/%s", compressed, tail), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "e.jsonl")
				d, err := New(Config{Path: path, Compress: compressed, Logger: quiet})
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					if res := d.Send(context.Background(), evs(fmt.Sprintf(`{"n":%d}`, i))); res.Status != 200 {
						t.Fatal(res)
					}
				}
				d.Close()
				// The next Send's bytes as a crash left them.
				next := []byte(`{"n":"never acknowledged","pad":"` + strings.Repeat("x", 300) + "\"}\n")
				if compressed {
					zw, _ := zstd.NewWriter(nil)
					next = zw.EncodeAll(next, nil)
				}
				switch tail {
				case "torn":
					next = next[:len(next)*2/3]
				case "zeros":
					next = make([]byte, len(next))
				}
				f, err := os.OpenFile(d.cfg.Path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write(next)
				f.Close()
				d, err = New(Config{Path: path, Compress: compressed, Logger: quiet})
				if err != nil {
					t.Fatal(err)
				}
				if res := d.Send(context.Background(), evs(`{"n":3}`)); res.Status != 200 {
					t.Fatal(res)
				}
				d.Close()
				got := strings.Join(lines(t, d.cfg.Path, compressed), " ")
				want := `{"n":0} {"n":1} {"n":2} {"n":3}`
				if tail == "whole" {
					want = `{"n":0} {"n":1} {"n":2} ` + strings.TrimSuffix(`{"n":"never acknowledged","pad":"`+strings.Repeat("x", 300)+"\"}\n", "\n") + ` {"n":3}`
				}
				if got != want {
					t.Fatalf("lines %.200s, want %.200s", got, want)
				}
			})
		}
	}
}
