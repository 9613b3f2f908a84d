package redisdest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-cdi/sluice/router"
)

// private is a redis-server of the test's own, with an fsynced AOF so that
// a kill -9 loses nothing it acknowledged.
type private struct {
	t     *testing.T
	dir   string
	port  int
	extra []string // more redis-server arguments
	pass  string   // requirepass, for the readiness check
	cmd   *exec.Cmd
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startPrivate(t *testing.T, extra ...string) *private {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("no redis-server binary")
	}
	s := &private{t: t, dir: t.TempDir(), port: freePort(t), extra: extra}
	for i, a := range extra {
		if a == "--requirepass" {
			s.pass = extra[i+1]
		}
	}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *private) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *private) start() {
	s.cmd = exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--logfile", filepath.Join(s.dir, "redis.log"))
	s.cmd.Args = append(s.cmd.Args, s.extra...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("cannot start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1, Password: s.pass})
	defer c.Close()
	for i := 0; c.Ping(context.Background()).Err() != nil; i++ {
		if i > 500 {
			s.t.Fatalf("private redis-server on %d did not start", s.port)
		}
		time.Sleep(10 * time.Millisecond) // waiting for it to listen
	}
}

// kill ends it with SIGKILL and waits.
func (s *private) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
		s.cmd = nil
	}
}

func TestServerRestartedDuringDelivery(t *testing.T) {
	srv := startPrivate(t)
	c := admin(t, srv.addr())
	d := newDest(t, Config{Addr: srv.addr(), Stream: "s"})
	users := []string{"a", "b", "c"}
	const n = 300
	outages := deliverAll(t, d, users, n, 10, func() {
		srv.kill()
		time.Sleep(200 * time.Millisecond) // down for a while: sends fail meanwhile
		srv.start()
	})
	if outages == 0 {
		t.Fatal("no send failed while the server was down")
	}
	copies := firstCopies(t, read(t, c, "s"), users, n)
	t.Logf("%d outage answers; %d copies of %d events", outages, copies, n*len(users))
}

func TestOutOfMemoryIsAnOutage(t *testing.T) {
	srv := startPrivate(t)
	c := admin(t, srv.addr())
	d := newDest(t, Config{Addr: srv.addr(), Stream: "s:{event}"})
	ctx := context.Background()
	c.XAdd(ctx, &redis.XAddArgs{Stream: "s:x", Values: []any{"a", "b"}}) // a stream that exists
	c.ConfigSet(ctx, "maxmemory", "1")
	for _, batch := range [][]router.Event{{mk("u", 0, "track", "x")}, {mk("u", 0, "track", "x"), mk("v", 0, "track", "y")},
		{mk("v", 0, "track", "y"), mk("u", 0, "track", "x")}} {
		res := d.Send(ctx, batch)
		if res.Err == nil || res.Status != 0 || res.Pause || !strings.Contains(res.Err.Error(), "OOM") {
			t.Fatalf("under maxmemory: %+v", res)
		}
	}
	c.ConfigSet(ctx, "maxmemory", "0")
	if res := d.Send(ctx, []router.Event{mk("u", 0, "track", "x")}); res.Status != 200 {
		t.Fatalf("after: %+v", res)
	}
}

func TestServerDownIsAnOutage(t *testing.T) {
	port := freePort(t) // nothing listens
	d := newDest(t, Config{Addr: fmt.Sprintf("127.0.0.1:%d", port), Stream: "s"})
	res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")})
	if res.Err == nil || res.Status != 0 || res.Pause || res.Ambiguous {
		t.Fatalf("connection refused: %+v", res)
	}
}

func TestPasswordRequiredPauses(t *testing.T) {
	srv := startPrivate(t, "--requirepass", "s3cret")
	for _, pass := range []string{"", "wrong"} {
		d := newDest(t, Config{Addr: srv.addr(), Password: pass, Stream: "s"})
		res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x"), mk("v", 0, "track", "x")})
		if !res.Pause || res.Err == nil {
			t.Fatalf("password %q: %+v", pass, res)
		}
	}
	d := newDest(t, Config{Addr: srv.addr(), Password: "s3cret", Stream: "s"})
	if res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")}); res.Status != 200 {
		t.Fatalf("right password: %+v", res)
	}
}
