package main

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy is a TCP proxy on 127.0.0.1 in front of a real service, for the
// conformance suite's outage and stall: it passes bytes both ways, cuts
// every connection and refuses new ones, or stalls (holds every byte and
// every new connection) until it passes again.
type proxy struct {
	t        *testing.T
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	mode  proxyMode
	open  chan struct{} // closed while the mode is pass
	conns map[net.Conn]struct{}
}

type proxyMode int

const (
	proxyPass proxyMode = iota
	proxyCut
	proxyStall
)

// startProxy listens on a free loopback port and forwards to upstream
// until the test ends.
func startProxy(t *testing.T, upstream string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &proxy{t: t, ln: ln, upstream: upstream, open: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.open)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.serve(&wg)
	}()
	t.Cleanup(func() {
		ln.Close()
		p.pass()
		p.closeAll()
		wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve(wg *sync.WaitGroup) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.handle(c)
		}()
	}
}

// handle forwards one client connection, once the mode lets it through.
func (p *proxy) handle(c net.Conn) {
	p.mu.Lock()
	mode, open := p.mode, p.open
	if mode != proxyCut {
		p.conns[c] = struct{}{}
	}
	p.mu.Unlock()
	if mode == proxyCut {
		c.Close()
		return
	}
	<-open // a stalled proxy holds new connections too
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.mode == proxyCut {
		p.mu.Unlock()
		up.Close()
		p.drop(c)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { p.pipe(up, c); done <- struct{}{} }()
	go func() { p.pipe(c, up); done <- struct{}{} }()
	<-done
	p.drop(c)
	p.drop(up)
	<-done
}

// pipe copies src to dst, holding each chunk while the proxy stalls.
func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			open := p.open
			p.mu.Unlock()
			<-open
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

func (p *proxy) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// cut closes every connection and refuses new ones until pass.
func (p *proxy) cut() {
	p.set(proxyCut)
	p.closeAll()
}

// stall holds every byte and new connection until pass.
func (p *proxy) stall() { p.set(proxyStall) }

// pass forwards again.
func (p *proxy) pass() { p.set(proxyPass) }

func (p *proxy) set(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := p.mode
	p.mode = m
	switch {
	case m == proxyPass && was != proxyPass:
		close(p.open)
	case m != proxyPass && was == proxyPass:
		p.open = make(chan struct{})
	}
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
