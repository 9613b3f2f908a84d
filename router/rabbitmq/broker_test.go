package rabbitmq

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// The tests run against the real RabbitMQ on 127.0.0.1:5672 (guest/guest;
// .ci/run starts it if it is down). Each test makes its own exchange and
// queue, named after the test, and deletes them.

const brokerAddr = "127.0.0.1:5672"

func brokerURL(addr string) string { return "amqp://guest:guest@" + addr + "/" }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var names atomic.Int64

// unique is a name no other test (or run) uses.
func unique(t testing.TB, what string) string {
	return fmt.Sprintf("sluice-test-%s-%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "-"), what, os.Getpid(), names.Add(1))
}

// admin is the test's own connection to the broker, to set up exchanges
// and queues and to read what arrived.
type admin struct {
	t    testing.TB
	conn *amqp.Connection
	ch   *amqp.Channel
}

func newAdmin(t testing.TB) *admin {
	t.Helper()
	conn, err := amqp.Dial(brokerURL(brokerAddr))
	if err != nil {
		t.Fatalf("cannot reach RabbitMQ at %s (start it with rabbitmq-server -detached): %v", brokerAddr, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	a := &admin{t: t, conn: conn, ch: ch}
	t.Cleanup(func() { conn.Close() })
	return a
}

// exchange declares a non-durable exchange deleted at cleanup.
func (a *admin) exchange(kind string) string {
	a.t.Helper()
	name := unique(a.t, "x")
	if err := a.ch.ExchangeDeclare(name, kind, false, false, false, false, nil); err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { a.deleteExchange(name) })
	return name
}

func (a *admin) deleteExchange(name string) {
	if ch, err := a.conn.Channel(); err == nil {
		ch.ExchangeDelete(name, false, false)
		ch.Close()
	}
}

// queue declares a queue bound to exchange with each binding key, deleted
// at cleanup.
func (a *admin) queue(exchange string, keys ...string) string {
	a.t.Helper()
	name := unique(a.t, "q")
	if _, err := a.ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() {
		if ch, err := a.conn.Channel(); err == nil {
			ch.QueueDelete(name, false, false, false)
			ch.Close()
		}
	})
	for _, k := range keys {
		if err := a.ch.QueueBind(name, k, exchange, false, nil); err != nil {
			a.t.Fatal(err)
		}
	}
	return name
}

// drain reads every message in the queue. A confirmed message is in its
// queue when the confirm arrives, so after the Sends returned, the queue
// holds all they delivered.
func (a *admin) drain(queue string) []amqp.Delivery {
	a.t.Helper()
	var got []amqp.Delivery
	for {
		d, ok, err := a.ch.Get(queue, true)
		if err != nil {
			a.t.Fatal(err)
		}
		if !ok {
			return got
		}
		got = append(got, d)
	}
}

// count is how many messages the queue holds.
func (a *admin) count(queue string) int {
	a.t.Helper()
	q, err := a.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	return q.Messages
}

// newDest returns a destination for the test, closed at cleanup.
func newDest(t testing.TB, cfg Config) *RabbitMQ {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = brokerURL(brokerAddr)
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	if cfg.Name == "" {
		cfg.Name = unique(t, "conn")
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// event is a track (or other type) event of user with a body that names it.
func event(seq int, user, typ, name string) router.Event {
	mid := fmt.Sprintf("m-%d", seq)
	return router.Event{Seq: uint64(seq), MessageID: []byte(mid), Key: []byte(user), Type: []byte(typ),
		Source: []byte("web"), ReceivedAt: time.Now().UnixNano(),
		Payload: fmt.Appendf(nil, `{"type":%q,"event":%q,"userId":%q,"messageId":%q,"properties":{"seq":%d}}`,
			typ, name, user, mid, seq)}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rabbitmqctl runs the broker's CLI (on the machine with the broker).
func rabbitmqctl(t testing.TB, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Skipf("rabbitmqctl not found: the broker is not local (%v)", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// proxy forwards TCP connections to the broker until cut.
type proxy struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
	target string
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cutAll() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { io.Copy(s, c); s.Close() }()
		go func() { io.Copy(c, s); c.Close() }()
	}
}

// cutAll closes every connection and refuses new ones until restore.
func (p *proxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// brokerLockPath is a lock file the tests that change the whole broker
// (a resource alarm, max_message_size) hold exclusively, and the
// conformance suite's rabbitmq target (cmd/sluice, another test process)
// holds shared: so a node-wide change never lands in its run.
var brokerLockPath = filepath.Join(os.TempDir(), "sluice-rabbitmq-broker.lock")

// brokerWide waits for the exclusive broker lock, held until cleanup.
func brokerWide(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(brokerLockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("cannot lock %s: %v", brokerLockPath, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}
