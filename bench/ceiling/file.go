package ceiling

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// groupBytesMax bounds one group's write, as the engine's default
// GroupBytesMax does.
const groupBytesMax = 8 << 20

// FileCeiling is the raw file-append ceiling: writers hand their batches
// to one committer goroutine, which takes every queued batch (up to 8 MiB)
// as a group, copies it into one buffer, writes it to the end of one file
// and fdatasyncs once (vfs.Default's SyncData, the call the engine makes),
// then wakes the group's writers. No framing, checksums or index.
type FileCeiling struct {
	f          vfs.File
	eventBytes int
	batches    [][]byte   // per writer: BatchEvents events made by Event
	reqs       []*fileReq // per writer: its one request in flight

	qMu     sync.Mutex
	queue   []*fileReq
	signal  chan struct{}
	closing chan struct{}
	done    chan struct{}
	buf     []byte
	broken  error // owned by the committer

	groups, syncs atomic.Int64
}

type fileReq struct {
	data []byte
	err  error
	done chan struct{}
}

// OpenFile creates dir (if needed) and the file dir/ceiling.log, and starts
// the committer. cfg sizes the writers' buffers; a later Run must use the
// same EventBytes, BatchEvents and Writers (or smaller).
func OpenFile(dir string, cfg Config) (*FileCeiling, error) {
	cfg, err := cfg.withDefaultsNoStop()
	if err != nil {
		return nil, err
	}
	fs := vfs.Default
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create %s: %w", dir, err)
	}
	path := fs.PathJoin(dir, "ceiling.log")
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("cannot create %s: %w", path, err)
	}
	c := &FileCeiling{
		f:          f,
		eventBytes: cfg.EventBytes,
		batches:    makeBatches(cfg),
		reqs:       make([]*fileReq, cfg.Writers),
		signal:     make(chan struct{}, 1),
		closing:    make(chan struct{}),
		done:       make(chan struct{}),
	}
	for i := range c.reqs {
		c.reqs[i] = &fileReq{done: make(chan struct{}, 1)}
	}
	go c.commitLoop()
	return c, nil
}

// makeBatches returns one buffer of BatchEvents events per writer.
func makeBatches(cfg Config) [][]byte {
	b := make([][]byte, cfg.Writers)
	for w := range b {
		buf := make([]byte, 0, cfg.BatchEvents*cfg.EventBytes)
		for i := 0; i < cfg.BatchEvents; i++ {
			buf = Event(buf, cfg.EventBytes, 0)
		}
		b[w] = buf
	}
	return b
}

// Commit writes events first..first+n-1 (their messageIds set) through the
// group committer and returns once they are fdatasynced.
func (c *FileCeiling) Commit(_ context.Context, w int, first uint64, n int) error {
	if w >= len(c.batches) || n*c.eventBytes > len(c.batches[w]) {
		return fmt.Errorf("ceiling: writer %d batch of %d events exceeds what OpenFile was configured for", w, n)
	}
	data := c.batches[w][:n*c.eventBytes]
	for i := 0; i < n; i++ {
		PutID(data[i*c.eventBytes:(i+1)*c.eventBytes], first+uint64(i))
	}
	req := c.reqs[w]
	req.data, req.err = data, nil
	c.qMu.Lock()
	c.queue = append(c.queue, req)
	c.qMu.Unlock()
	select {
	case c.signal <- struct{}{}:
	default:
	}
	<-req.done
	return req.err
}

func (c *FileCeiling) commitLoop() {
	defer close(c.done)
	var group []*fileReq
	for {
		select {
		case <-c.signal:
		case <-c.closing:
			for c.commitQueued(&group) {
			}
			return
		}
		for c.commitQueued(&group) {
		}
	}
}

// commitQueued commits one group; it reports false when the queue was empty.
func (c *FileCeiling) commitQueued(group *[]*fileReq) bool {
	c.qMu.Lock()
	n, size := 0, 0
	for n < len(c.queue) && (n == 0 || size+len(c.queue[n].data) <= groupBytesMax) {
		size += len(c.queue[n].data)
		n++
	}
	*group = append((*group)[:0], c.queue[:n]...)
	c.queue = append(c.queue[:0], c.queue[n:]...)
	c.qMu.Unlock()
	if n == 0 {
		return false
	}
	c.buf = c.buf[:0]
	for _, r := range *group {
		c.buf = append(c.buf, r.data...)
	}
	err := c.broken
	if err == nil {
		if _, err = c.f.Write(c.buf); err == nil {
			err = c.f.SyncData()
			c.syncs.Add(1)
		}
		if err != nil {
			c.broken = fmt.Errorf("ceiling file: %w", err)
			err = c.broken
		}
	}
	c.groups.Add(1)
	for _, r := range *group {
		r.err = err
		r.done <- struct{}{}
	}
	return true
}

// Groups returns the number of groups committed and fdatasyncs done.
func (c *FileCeiling) Groups() (groups, syncs int64) { return c.groups.Load(), c.syncs.Load() }

// Close stops the committer (after the queued batches) and closes the file.
// No Commit may be in flight or follow.
func (c *FileCeiling) Close() error {
	close(c.closing)
	<-c.done
	return c.f.Close()
}
