package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/valyala/fasthttp"
)

// The HTTP ceilings the ingest figures are stated against: what fasthttp
// on this machine does with the same requests and no Sluice in between.
const (
	// CeilingNoop answers 200 after reading the body.
	CeilingNoop = "fasthttp-noop"
	// CeilingFile appends the raw body to one file through a group
	// committer (one write and one fdatasync per group) and answers 200
	// once the body is synced: Sluice's durability promise without parsing,
	// framing, dedup or index.
	CeilingFile = "fasthttp-file"
)

// CeilingServer is a running HTTP ceiling.
type CeilingServer struct {
	Kind string
	srv  *fasthttp.Server
	file *GroupFile
}

// NewCeilingServer returns a ceiling of kind CeilingNoop or CeilingFile
// (writing dir/ceiling.log).
func NewCeilingServer(kind, dir string) (*CeilingServer, error) {
	c := &CeilingServer{Kind: kind}
	var h fasthttp.RequestHandler
	switch kind {
	case CeilingNoop:
		h = func(ctx *fasthttp.RequestCtx) {
			_ = ctx.PostBody()
			ctx.SetStatusCode(fasthttp.StatusOK)
		}
	case CeilingFile:
		f, err := OpenGroupFile(filepath.Join(dir, "ceiling.log"))
		if err != nil {
			return nil, err
		}
		c.file = f
		h = func(ctx *fasthttp.RequestCtx) {
			if err := f.Append(ctx.PostBody()); err != nil {
				ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
				return
			}
			ctx.SetStatusCode(fasthttp.StatusOK)
		}
	default:
		return nil, fmt.Errorf("unknown HTTP ceiling %q (known: %s, %s)", kind, CeilingNoop, CeilingFile)
	}
	c.srv = &fasthttp.Server{Handler: h, Name: "ceiling", MaxRequestBodySize: 64 << 20, Concurrency: 10_000}
	return c, nil
}

// Serve serves on ln until Close.
func (c *CeilingServer) Serve(ln net.Listener) error { return c.srv.Serve(ln) }

// Close stops the server and closes the file.
func (c *CeilingServer) Close() error {
	err := c.srv.Shutdown()
	if c.file != nil {
		err = errors.Join(err, c.file.Close())
	}
	return err
}

// GroupFile appends byte slices to one file with group commit: callers
// queue their data, one goroutine takes everything queued (up to 8 MiB),
// writes it with one write, fdatasyncs once and wakes the callers.
type GroupFile struct {
	f       *os.File
	mu      sync.Mutex
	queue   []*gfReq
	signal  chan struct{}
	closing chan struct{}
	done    chan struct{}
	buf     []byte
	broken  error

	Groups, Bytes atomic.Int64
}

type gfReq struct {
	data []byte
	err  error
	done chan struct{}
}

var gfReqPool = sync.Pool{New: func() any { return &gfReq{done: make(chan struct{}, 1)} }}

// OpenGroupFile creates (truncates) path and starts the committer.
func OpenGroupFile(path string) (*GroupFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	g := &GroupFile{f: f, signal: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g, nil
}

// Append writes data and returns once it is fdatasynced. data must stay
// unchanged until Append returns.
func (g *GroupFile) Append(data []byte) error {
	r := gfReqPool.Get().(*gfReq)
	r.data, r.err = data, nil
	g.mu.Lock()
	g.queue = append(g.queue, r)
	g.mu.Unlock()
	select {
	case g.signal <- struct{}{}:
	default:
	}
	<-r.done
	err := r.err
	r.data = nil
	gfReqPool.Put(r)
	return err
}

func (g *GroupFile) loop() {
	defer close(g.done)
	var group []*gfReq
	for {
		select {
		case <-g.signal:
		case <-g.closing:
			for g.commit(&group) {
			}
			return
		}
		for g.commit(&group) {
		}
	}
}

func (g *GroupFile) commit(group *[]*gfReq) bool {
	const groupBytesMax = 8 << 20
	g.mu.Lock()
	n, size := 0, 0
	for n < len(g.queue) && (n == 0 || size+len(g.queue[n].data) <= groupBytesMax) {
		size += len(g.queue[n].data)
		n++
	}
	*group = append((*group)[:0], g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	g.mu.Unlock()
	if n == 0 {
		return false
	}
	g.buf = g.buf[:0]
	for _, r := range *group {
		g.buf = append(g.buf, r.data...)
	}
	err := g.broken
	if err == nil {
		if _, err = g.f.Write(g.buf); err == nil {
			err = syscall.Fdatasync(int(g.f.Fd()))
		}
		if err != nil {
			g.broken = fmt.Errorf("ceiling file: %w", err)
			err = g.broken
		}
	}
	g.Groups.Add(1)
	g.Bytes.Add(int64(len(g.buf)))
	for _, r := range *group {
		r.err = err
		r.done <- struct{}{}
	}
	return true
}

// Close stops the committer after the queued data and closes the file.
func (g *GroupFile) Close() error {
	close(g.closing)
	<-g.done
	return g.f.Close()
}
