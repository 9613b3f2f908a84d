package natsdest

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// holdProxy forwards loopback TCP to the shared server; while held, what
// the server sends back is kept (not forwarded) until release.
type holdProxy struct {
	ln      net.Listener
	held    atomic.Bool
	release chan struct{}
	mu      sync.Mutex
	conns   []net.Conn
}

func startHoldProxy(t *testing.T, upstream string) *holdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{ln: ln, release: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go io.Copy(u, c)
			go p.back(c, u)
		}
	}()
	return p
}

// back copies server to client, waiting while held.
func (p *holdProxy) back(c, u net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		if p.held.Load() {
			<-p.release
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			c.Close()
			return
		}
	}
}

func (p *holdProxy) hold() { p.held.Store(true) }

func (p *holdProxy) unhold() {
	p.held.Store(false)
	close(p.release)
}

// TestStallIsAmbiguousOutage: acks that do not come before the deadline
// make a failed, ambiguous result (the events may be stored); sent again
// after the stall, they are stored once (the duplicate window).
func TestStallIsAmbiguousOutage(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
	prx := startHoldProxy(t, "127.0.0.1:4222")
	d := newDest(t, Config{URLs: []string{"nats://" + prx.ln.Addr().String()}, Stream: name, Subject: name + ".{type}"})
	events := []router.Event{event("web", "alice", 0, "a"), event("web", "alice", 1, "a"), event("web", "bob", 0, "a")}
	prx.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	res := d.Send(ctx, events)
	cancel()
	if res.Err == nil || !res.Ambiguous || res.Status != 0 || res.Pause {
		t.Fatalf("stalled send: %+v", res)
	}
	prx.unhold()
	if res := send(d, events); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("send after the stall: %+v", res)
	}
	got := readAll(t, js, name)
	if len(got) != len(events) {
		t.Fatalf("stored %d messages, want %d", len(got), len(events))
	}
	checkStoredOrder(t, got)
}

// checkStoredOrder checks that no message is stored twice and each user's
// are in order.
func checkStoredOrder(t *testing.T, got []stored) {
	t.Helper()
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m.MsgID] {
			t.Fatalf("%s stored twice", m.MsgID)
		}
		seen[m.MsgID] = true
		if n, ok := last[m.Key]; ok && m.N <= n {
			t.Fatalf("user %s: %d stored after %d", m.Key, m.N, n)
		}
		last[m.Key] = m.N
	}
}
