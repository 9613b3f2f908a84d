// Package filedest is the file destination: events appended as JSON lines
// to a file per destination, rotated by size and age, optionally compressed
// with zstd. A delivery counts only once its lines are fsynced.
//
// The active file is <path> (plus ".zst" when compressed); a rotated file is
// renamed to
//
//	<path minus .jsonl>-<UTC time, 20060102T150405.000Z>-<counter, 6 digits>.jsonl[.zst]
//
// so that rotated names sort lexically in the order they were written (the
// time never goes back within a process, the counter only grows), and the
// active file comes after them all.
//
// Each Send appends one whole write: its lines, or one complete zstd frame
// holding them (concatenated frames are a valid zstd stream), then fsyncs.
// If the write or the fsync fails, the file is cut back to where it ended
// after the last good Send before the error is returned, so the retry never
// lands after a torn line or frame: the file holds whole lines (whole
// frames) only, every acknowledged event, and decodes with any zstd tool.
// When even the cut fails, the file is closed and cut on reopening, before
// anything else is written to it. Opening a file also cuts a torn end left
// by a crash (see tail.go).
package filedest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a file destination.
type Config struct {
	// Path of the active file. Required.
	Path string
	// MaxBytes rotates the file once it holds this many (uncompressed)
	// bytes. Default 64 MiB.
	MaxBytes int64
	// MaxAge rotates a non-empty file this long after it was opened.
	// Default 1h.
	MaxAge time.Duration
	// Compress writes zstd.
	Compress bool
	// Now is the clock (rotation). Default time.Now.
	Now func() time.Time
	// FS is the file system. Default OS{}.
	FS FS
	// Logger receives a warning when a torn end is cut off the active
	// file at opening. Default slog.Default().
	Logger *slog.Logger
}

// File appends events to files. Safe for concurrent use.
type File struct {
	cfg Config
	zw  *zstd.Encoder // EncodeAll only: no stream state between Sends
	dec *zstd.Decoder // checks the last frame at opening
	mu  sync.Mutex
	f   AppendFile
	// good is the active file's length after the last good Send (or at
	// opening): a failed write is cut back to it.
	good int64
	// cut: a failed write could not be cut back; the file is closed and
	// is cut to good when it is opened again.
	cut        bool
	size       int64 // bytes counted towards MaxBytes
	opened     time.Time
	rotated    int       // files rotated by this File (the names' counter)
	lastRotate time.Time // the time in the last rotated name
	line       []byte
	frame      []byte
}

// New creates the directory and opens (or continues) the active file.
func New(cfg Config) (*File, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("file: path is required")
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FS == nil {
		cfg.FS = OS{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Compress && !strings.HasSuffix(cfg.Path, ".zst") {
		cfg.Path += ".zst"
	}
	if err := cfg.FS.MkdirAll(filepath.Dir(cfg.Path)); err != nil {
		return nil, fmt.Errorf("file: cannot create directory: %w", err)
	}
	d := &File{cfg: cfg}
	if cfg.Compress {
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("file: cannot start zstd: %w", err)
		}
		d.zw = zw
		if d.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1)); err != nil {
			return nil, fmt.Errorf("file: cannot start zstd: %w", err)
		}
	}
	if err := d.open(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *File) open() error {
	f, err := d.cfg.FS.OpenAppend(d.cfg.Path)
	if err != nil {
		return fmt.Errorf("file: cannot open %s: %w", d.cfg.Path, err)
	}
	n, err := f.Size()
	if err != nil {
		f.Close()
		return fmt.Errorf("file: cannot stat %s: %w", d.cfg.Path, err)
	}
	if !d.cut && n > 0 {
		whole, err := wholeLength(f, n, d.cfg.Compress, d.dec)
		if err != nil {
			f.Close()
			return fmt.Errorf("file: cannot read the end of %s: %w", d.cfg.Path, err)
		}
		if whole < n {
			d.cfg.Logger.Warn("file destination: cutting a torn end (never acknowledged) off the active file",
				"path", d.cfg.Path, "bytes", n, "whole", whole)
			d.good, d.size, d.cut = whole, n, true
		}
	}
	if d.cut {
		if n > d.good {
			if err := cutBack(f, d.good); err != nil {
				f.Close()
				return fmt.Errorf("file: cannot cut %s back to %d bytes: %w", d.cfg.Path, d.good, err)
			}
			d.size -= n - d.good
		}
		n, d.cut = min(n, d.good), false
	} else {
		d.size = n
	}
	// Appending a new zstd frame to an existing file is valid zstd.
	d.f, d.good, d.opened = f, n, d.cfg.Now()
	return nil
}

// Send appends the events as lines and fsyncs before answering 200.
func (d *File) Send(_ context.Context, events []router.Event) router.Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		if err := d.open(); err != nil {
			return router.Result{Err: err}
		}
	}
	if d.size > 0 && (d.size >= d.cfg.MaxBytes || d.cfg.Now().Sub(d.opened) >= d.cfg.MaxAge) {
		if err := d.rotate(); err != nil {
			return router.Result{Err: err}
		}
	}
	d.line = d.line[:0]
	for _, ev := range events {
		d.line = append(d.line, ev.Payload...)
		d.line = append(d.line, '\n')
	}
	out := d.line
	if d.zw != nil {
		d.frame = d.zw.EncodeAll(d.line, d.frame[:0])
		out = d.frame
	}
	if err := d.write(out); err != nil {
		return router.Result{Err: fmt.Errorf("file: cannot write %s: %w", d.cfg.Path, err)}
	}
	d.good += int64(len(out))
	d.size += int64(len(d.line))
	return router.Result{Status: 200}
}

// write appends b and fsyncs; on failure it cuts the file back to good.
func (d *File) write(b []byte) error {
	n, err := d.f.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err == nil {
		if err = d.f.Sync(); err == nil {
			return nil
		}
	}
	if cerr := cutBack(d.f, d.good); cerr != nil {
		// Nothing more goes into this file until the cut is done.
		d.cut = true
		d.f.Close()
		d.f = nil
		return fmt.Errorf("%w (and cannot cut it back to %d bytes: %v)", err, d.good, cerr)
	}
	return err
}

// cutBack truncates f to size and makes the cut durable.
func cutBack(f AppendFile, size int64) error {
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// rotate closes the active file under a new name and opens a fresh one.
func (d *File) rotate() error {
	if err := d.closeFile(); err != nil {
		return err
	}
	name, err := d.rotatedName()
	if err != nil {
		return err
	}
	if err := d.cfg.FS.Rename(d.cfg.Path, name); err != nil {
		return fmt.Errorf("file: cannot rotate %s: %w", d.cfg.Path, err)
	}
	if err := d.cfg.FS.SyncDir(filepath.Dir(d.cfg.Path)); err != nil {
		return fmt.Errorf("file: cannot sync the directory of %s: %w", d.cfg.Path, err)
	}
	d.size = 0
	return d.open()
}

// rotatedName is a free name for the active file, after (lexically) every
// name this File rotated before.
func (d *File) rotatedName() (string, error) {
	base := strings.TrimSuffix(strings.TrimSuffix(d.cfg.Path, ".zst"), ".jsonl")
	ext := ".jsonl"
	if d.cfg.Compress {
		ext += ".zst"
	}
	now := d.cfg.Now().UTC().Truncate(time.Millisecond)
	if now.Before(d.lastRotate) {
		now = d.lastRotate // the clock went back: names must not
	}
	d.lastRotate = now
	stamp := now.Format("20060102T150405.000Z")
	for range 1000 {
		d.rotated++
		name := fmt.Sprintf("%s-%s-%06d%s", base, stamp, d.rotated, ext)
		taken, err := d.cfg.FS.Exists(name)
		if err != nil {
			return "", fmt.Errorf("file: cannot check %s: %w", name, err)
		}
		if !taken {
			return name, nil
		}
	}
	return "", fmt.Errorf("file: cannot find a free name to rotate %s", d.cfg.Path)
}

func (d *File) closeFile() error {
	if d.f == nil {
		return nil
	}
	err := d.f.Sync()
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	d.f = nil
	if err != nil {
		return fmt.Errorf("file: cannot close %s: %w", d.cfg.Path, err)
	}
	return nil
}

// Close flushes and closes the active file.
func (d *File) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dec != nil {
		d.dec.Close()
	}
	return d.closeFile()
}
