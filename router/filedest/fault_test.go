package filedest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sluice-cdi/sluice/router"
)

// faultFS is an in-memory FS that fails writes (ENOSPC with nothing or
// part written, short writes), fsyncs, truncations, opens and renames at
// random. Each file keeps what was written and what an fsync made durable:
// a crash would leave the latter.
type faultFS struct {
	mu      sync.Mutex
	rng     *rand.Rand
	failPct int // chance of each operation failing, in percent
	files   map[string]*memFile
	syncs   int
}

type memFile struct {
	data, durable []byte
}

func newFaultFS(seed uint64, failPct int) *faultFS {
	return &faultFS{rng: rand.New(rand.NewPCG(seed, 1)), failPct: failPct, files: map[string]*memFile{}}
}

func (fs *faultFS) fail() bool { return fs.rng.IntN(100) < fs.failPct }

func (fs *faultFS) MkdirAll(string) error { return nil }

func (fs *faultFS) OpenAppend(name string) (AppendFile, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.fail() {
		return nil, syscall.EMFILE
	}
	if fs.files[name] == nil {
		fs.files[name] = &memFile{}
	}
	return &memHandle{fs: fs, f: fs.files[name]}, nil
}

func (fs *faultFS) Exists(name string) (bool, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.files[name] != nil, nil
}

func (fs *faultFS) Rename(from, to string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.fail() {
		return syscall.EIO
	}
	if fs.files[to] != nil {
		return fmt.Errorf("BUG: rename over %s", to)
	}
	fs.files[to] = fs.files[from]
	delete(fs.files, from)
	return nil
}

func (fs *faultFS) SyncDir(string) error { return nil }

type memHandle struct {
	fs     *faultFS
	f      *memFile
	closed bool
}

func (h *memHandle) Write(p []byte) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return 0, errors.New("write to a closed file")
	}
	n, err := len(p), error(nil)
	if h.fs.fail() {
		switch h.fs.rng.IntN(3) {
		case 0: // full disk, nothing written
			n, err = 0, syscall.ENOSPC
		case 1: // full disk midway
			n, err = h.fs.rng.IntN(len(p)), syscall.ENOSPC
		case 2: // a short write without an error
			n = h.fs.rng.IntN(len(p))
		}
	}
	h.f.data = append(h.f.data, p[:n]...)
	return n, err
}

func (h *memHandle) Sync() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return errors.New("sync of a closed file")
	}
	if h.fs.fail() {
		return syscall.EIO // nothing made durable
	}
	h.fs.syncs++
	h.f.durable = slices.Clone(h.f.data)
	return nil
}

func (h *memHandle) Truncate(size int64) error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if h.closed {
		return errors.New("truncate of a closed file")
	}
	if h.fs.fail() {
		return syscall.EIO
	}
	if size < int64(len(h.f.data)) {
		h.f.data = h.f.data[:size]
	}
	return nil
}

func (h *memHandle) ReadAt(p []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if off >= int64(len(h.f.data)) {
		return 0, io.EOF
	}
	n := copy(p, h.f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *memHandle) Size() (int64, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	return int64(len(h.f.data)), nil
}

func (h *memHandle) Close() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	h.closed = true
	return nil
}

// unzstd decodes whole files (concatenated frames).
var unzstd, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))

// decodeAll reads every file (rotated ones in name order, then the active
// one), durable contents or all written, and returns the lines; any line
// that is not JSON or any frame that does not decode is an error.
func (fs *faultFS) decodeAll(active string, compressed, durable bool) ([]string, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var names []string
	for n := range fs.files {
		if n != active {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	names = append(names, active)
	var out []string
	for _, n := range names {
		f := fs.files[n]
		if f == nil {
			continue
		}
		b := f.data
		if durable {
			b = f.durable
		}
		if compressed {
			var err error
			if b, err = unzstd.DecodeAll(b, nil); err != nil {
				return nil, fmt.Errorf("%s does not decode: %w", n, err)
			}
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			return nil, fmt.Errorf("%s ends in a torn line %q", n, b[bytes.LastIndexByte(b, '\n')+1:])
		}
		for line := range strings.Lines(string(b)) {
			line = strings.TrimSuffix(line, "\n")
			if !json.Valid([]byte(line)) {
				return nil, fmt.Errorf("%s holds a broken line %q", n, line)
			}
			out = append(out, line)
		}
	}
	return out, nil
}

// A failed write (ENOSPC, short write, failed fsync), however they come,
// leaves whole lines and whole frames, with every acknowledged event once,
// in order; and an acknowledgement comes only after an fsync. Each seed is
// one random sequence of failures, retried as the router would, with
// rotations in between.
func TestFailedWritesLeaveOutputWhole(t *testing.T) {
	for _, compressed := range []bool{false, true} {
		for seed := range uint64(100) {
			if err := failedWritesRun(seed, compressed); err != nil {
				t.Fatalf("seed %d, compress %v: %v\nreplay: go test ./router/filedest -run TestFailedWritesLeaveOutputWhole", seed, compressed, err)
			}
		}
	}
}

func failedWritesRun(seed uint64, compressed bool) error {
	fs := newFaultFS(seed, 10+int(seed%4)*10)
	rng := rand.New(rand.NewPCG(seed, 2))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var d *File
	var err error
	for try := 0; d == nil; try++ {
		if d, err = New(Config{Path: "/out/e.jsonl", MaxBytes: 400, Compress: compressed, FS: fs, Now: func() time.Time { return now },
			Logger: slog.New(slog.DiscardHandler)}); err != nil && try > 100 {
			return fmt.Errorf("cannot open: %w", err)
		}
	}
	active := d.cfg.Path
	var acked []string
	n := 0
	for range 60 {
		var batch []router.Event
		var ids []string
		for range 1 + rng.IntN(5) {
			n++
			p := fmt.Sprintf(`{"n":%d,"pad":%q}`, n, strings.Repeat("x", rng.IntN(60)))
			batch = append(batch, router.Event{Payload: []byte(p)})
			ids = append(ids, p)
		}
		for try := 0; ; try++ {
			if try > 1000 {
				return errors.New("a batch never went through")
			}
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			res := d.Send(context.Background(), batch)
			if res.Status != 200 {
				if res.Err == nil {
					return fmt.Errorf("result %+v: neither success nor error", res)
				}
				continue
			}
			acked = append(acked, ids...)
			// Acknowledged means durable: a crash now keeps it all.
			fs.mu.Lock()
			f := fs.files[active]
			synced := f != nil && bytes.Equal(f.data, f.durable)
			fs.mu.Unlock()
			if !synced {
				return fmt.Errorf("after %d acknowledged events, the active file is not all durable", len(acked))
			}
			if len(acked)%8 != 0 {
				break
			}
			got, err := fs.decodeAll(active, compressed, true)
			if err != nil {
				return fmt.Errorf("after %d acknowledged events, durable files: %w", len(acked), err)
			}
			if !slices.Equal(got, acked) {
				return fmt.Errorf("after %d acknowledged events, durable files hold %d lines: %v", len(acked), len(got), diff(got, acked))
			}
			break
		}
	}
	fs.mu.Lock()
	fs.failPct = 0
	fs.mu.Unlock()
	if err := d.Close(); err != nil {
		return err
	}
	for _, durable := range []bool{false, true} {
		got, err := fs.decodeAll(active, compressed, durable)
		if err != nil {
			return err
		}
		if !slices.Equal(got, acked) {
			return fmt.Errorf("files hold %d lines, %d acknowledged: %v", len(got), len(acked), diff(got, acked))
		}
	}
	if len(fs.files) < 3 {
		return fmt.Errorf("only %d files: rotation not exercised", len(fs.files))
	}
	return nil
}

func diff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("line %d is %s, want %s", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("%d lines in common", min(len(got), len(want)))
}

// An fsync that fails is never an acknowledgement.
func TestNoSuccessWithoutSync(t *testing.T) {
	fs := newFaultFS(1, 0)
	d, err := New(Config{Path: "/out/e.jsonl", FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	if res := d.Send(context.Background(), evs(`{"a":1}`)); res.Status != 200 || fs.syncs == 0 {
		t.Fatalf("result %+v after %d fsyncs", res, fs.syncs)
	}
	fs.failPct = 100
	for range 5 {
		if res := d.Send(context.Background(), evs(`{"a":2}`)); res.Status == 200 || res.Err == nil {
			t.Fatalf("acknowledged with every fsync failing: %+v", res)
		}
	}
	if got := string(fs.files["/out/e.jsonl"].durable); got != "{\"a\":1}\n" {
		t.Fatalf("durable content %q", got)
	}
}
