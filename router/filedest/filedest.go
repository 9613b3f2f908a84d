// Package filedest is the file destination: events appended as JSON lines
// to a file per destination, rotated by size and age, optionally compressed
// with zstd. A delivery counts only once its lines are fsynced.
//
// The active file is <path> (plus ".zst" when compressed); a rotated file is
// renamed to <path minus .jsonl>-<UTC time>-<n>.jsonl[.zst]. Each Send
// writes one complete zstd frame (concatenated frames are a valid zstd
// stream), so a crash leaves a file that decodes, with every acknowledged
// event, by any zstd tool.
package filedest

import (
	"context"
	"fmt"
	"os"
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
}

// File appends events to files. Safe for concurrent use.
type File struct {
	cfg     Config
	mu      sync.Mutex
	f       *os.File
	zw      *zstd.Encoder
	size    int64
	opened  time.Time
	rotated int
	line    []byte
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
	if cfg.Compress && !strings.HasSuffix(cfg.Path, ".zst") {
		cfg.Path += ".zst"
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
		return nil, fmt.Errorf("file: cannot create directory: %w", err)
	}
	d := &File{cfg: cfg}
	if err := d.open(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *File) open() error {
	f, err := os.OpenFile(d.cfg.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("file: cannot open %s: %w", d.cfg.Path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("file: cannot stat %s: %w", d.cfg.Path, err)
	}
	d.f, d.size, d.opened = f, st.Size(), d.cfg.Now()
	if d.cfg.Compress {
		// Appending a new zstd frame to an existing file is valid zstd.
		d.zw, err = zstd.NewWriter(f, zstd.WithEncoderConcurrency(1))
		if err != nil {
			f.Close()
			return fmt.Errorf("file: cannot start zstd: %w", err)
		}
	}
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
	if err := d.write(d.line); err != nil {
		// The file may hold a partial line now; start a fresh one so the
		// retry does not append to it.
		d.closeFile()
		return router.Result{Err: fmt.Errorf("file: %w", err)}
	}
	d.size += int64(len(d.line))
	return router.Result{Status: 200}
}

func (d *File) write(b []byte) error {
	if d.zw != nil {
		d.zw.Reset(d.f)
		if _, err := d.zw.Write(b); err != nil {
			return err
		}
		if err := d.zw.Close(); err != nil { // ends the frame
			return err
		}
	} else if _, err := d.f.Write(b); err != nil {
		return err
	}
	return d.f.Sync()
}

// rotate closes the active file under a new name and opens a fresh one.
func (d *File) rotate() error {
	if err := d.closeFile(); err != nil {
		return err
	}
	d.rotated++
	ext := ".jsonl"
	base := strings.TrimSuffix(d.cfg.Path, ".zst")
	if d.cfg.Compress {
		ext += ".zst"
	}
	base = strings.TrimSuffix(base, ".jsonl")
	name := fmt.Sprintf("%s-%s-%d%s", base, d.cfg.Now().UTC().Format("20060102T150405"), d.rotated, ext)
	if err := os.Rename(d.cfg.Path, name); err != nil {
		return fmt.Errorf("file: cannot rotate %s: %w", d.cfg.Path, err)
	}
	if dir, err := os.Open(filepath.Dir(d.cfg.Path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return d.open()
}

func (d *File) closeFile() error {
	if d.f == nil {
		return nil
	}
	d.zw = nil // every frame was closed by the Send that wrote it
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
	return d.closeFile()
}
