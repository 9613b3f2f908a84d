package warehousetest

import (
	"bytes"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy between a dialect and its database, that a test
// cuts: after so many bytes from the client, or right after the client
// sends COMMIT (the commit reaches the database, its answer never comes
// back: an ambiguous commit), or at once.
type Proxy struct {
	ln     net.Listener
	target string
	mu     struct {
		sync.Mutex
		conns    map[net.Conn]bool
		down     bool  // refuse (close) new connections
		cutAfter int64 // >0: cut when this many more client bytes passed
		onCommit bool  // cut after forwarding a COMMIT
		cuts     int
	}
}

// NewProxy listens on 127.0.0.1 and forwards to target.
func NewProxy(t testing.TB, target string) *Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	p.mu.conns = map[net.Conn]bool{}
	go p.accept()
	t.Cleanup(func() { ln.Close(); p.Cut(false) })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection; down also refuses new ones until Restore.
func (p *Proxy) Cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.down = down
	p.cutLocked()
}

func (p *Proxy) cutLocked() {
	for c := range p.mu.conns {
		c.Close()
	}
	p.mu.conns = map[net.Conn]bool{}
	p.mu.cuts++
}

// Restore accepts connections again and disarms the cuts.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.mu.down, p.mu.cutAfter, p.mu.onCommit = false, 0, false
	p.mu.Unlock()
}

// CutAfter cuts every connection (and refuses new ones) once n more bytes
// went from the clients to the database.
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	p.mu.cutAfter = n
	p.mu.Unlock()
}

// CutOnCommit cuts every connection (and refuses new ones) right after a
// client's COMMIT was forwarded, before the answer comes back.
func (p *Proxy) CutOnCommit() {
	p.mu.Lock()
	p.mu.onCommit = true
	p.mu.Unlock()
}

// Cuts is how many times the proxy cut its connections.
func (p *Proxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.cuts
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.mu.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.mu.conns[c], p.mu.conns[s] = true, true
		p.mu.Unlock()
		go p.pipe(s, c, true)
		go p.pipe(c, s, false)
	}
}

// commits are how COMMIT looks on the wire: PostgreSQL's query text ends
// with a NUL, MySQL's COM_QUERY starts with 0x03 (compared lower case).
var commits = [][]byte{[]byte("commit\x00"), []byte("\x03commit")}

// pipe copies src to dst; fromClient watches the cut conditions.
func (p *Proxy) pipe(dst, src net.Conn, fromClient bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if fromClient && p.watch(buf[:n]) {
				return
			}
		}
		if err != nil { // io.EOF or a cut
			return
		}
	}
}

// watch applies the armed cut to n bytes just forwarded; true if it cut.
func (p *Proxy) watch(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	cut := false
	if p.mu.onCommit {
		low := bytes.ToLower(b)
		for _, c := range commits {
			cut = cut || bytes.Contains(low, c)
		}
	}
	if p.mu.cutAfter > 0 {
		p.mu.cutAfter -= int64(len(b))
		cut = cut || p.mu.cutAfter <= 0
	}
	if cut {
		p.mu.down, p.mu.cutAfter, p.mu.onCommit = true, 0, false
		p.cutLocked()
	}
	return cut
}
