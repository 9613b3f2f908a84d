package mqttdest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// cutter is a TCP proxy in front of the broker that can cut every
// connection (and refuse new ones until restored) or hold every byte.
type cutter struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	cut   bool
	gate  chan struct{} // closed while bytes flow
	conns map[net.Conn]bool
}

func startCutter(t *testing.T, upstream string) *cutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, upstream: upstream, gate: make(chan struct{}), conns: map[net.Conn]bool{}}
	close(c.gate)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { c.handle(conn) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		c.restore()
		c.closeAll()
		wg.Wait()
	})
	return c
}

func (c *cutter) addr() string { return c.ln.Addr().String() }

func (c *cutter) handle(down net.Conn) {
	up, err := net.Dial("tcp", c.upstream)
	c.mu.Lock()
	if err != nil || c.cut {
		c.mu.Unlock()
		down.Close()
		if up != nil {
			up.Close()
		}
		return
	}
	c.conns[down], c.conns[up] = true, true
	c.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { c.pipe(up, down) })
	wg.Go(func() { c.pipe(down, up) })
	wg.Wait()
}

func (c *cutter) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			c.mu.Lock()
			gate := c.gate
			c.mu.Unlock()
			<-gate
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// cutAll closes every connection and refuses new ones until restore.
func (c *cutter) cutAll() {
	c.mu.Lock()
	c.cut = true
	c.mu.Unlock()
	c.closeAll()
}

// hold stops forwarding bytes until restore.
func (c *cutter) hold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.gate:
		c.gate = make(chan struct{})
	default:
	}
}

func (c *cutter) restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = false
	select {
	case <-c.gate:
	default:
		close(c.gate)
	}
}

func (c *cutter) closeAll() {
	c.mu.Lock()
	var all []net.Conn
	for conn := range c.conns {
		all = append(all, conn)
	}
	clear(c.conns)
	c.mu.Unlock()
	for _, conn := range all {
		conn.Close()
	}
}
