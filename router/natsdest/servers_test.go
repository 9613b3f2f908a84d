package natsdest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// sharedURL is the machine's nats-server (JetStream on); .ci/run starts
// it when it is down.
const sharedURL = "nats://127.0.0.1:4222"

// connect returns a plain JetStream client of url for checks.
func connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("cannot connect to %s (the tests need nats-server with JetStream there; .ci/run starts it): %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// uniqueName is a stream name and subject prefix no other test uses.
func uniqueName(t testing.TB) string {
	var b [4]byte
	rand.Read(b[:])
	base := regexp.MustCompile(`[^A-Za-z0-9]`).ReplaceAllString(t.Name(), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	return base + "_" + hex.EncodeToString(b[:])
}

// makeStream creates a stream taking prefix.> and deletes it at the end.
func makeStream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatalf("cannot create stream %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() { deleteStream(js, cfg.Name) })
}

func deleteStream(js jetstream.JetStream, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js.DeleteStream(ctx, name)
}

// stored is one message read back from a stream.
type stored struct {
	Seq     uint64
	Subject string
	MsgID   string
	Header  nats.Header
	Key     string
	N       int // the event's number within its key
	Data    []byte
}

// readAll returns every message of the stream, in stream order.
func readAll(t testing.TB, js jetstream.JetStream, stream string) []stored {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("cannot open stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []stored
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("cannot read message %d: %v", seq, err)
		}
		var p struct {
			UserID string `json:"userId"`
			N      int    `json:"n"`
		}
		json.Unmarshal(m.Data, &p)
		out = append(out, stored{Seq: m.Sequence, Subject: m.Subject, MsgID: m.Header.Get(jetstream.MsgIDHeader),
			Header: m.Header, Key: p.UserID, N: p.N, Data: m.Data})
	}
	return out
}

// event is a track event of user key, its n-th, named name.
func event(source, key string, n int, name string) router.Event {
	mid := fmt.Sprintf("%s-%s-%d", source, key, n)
	payload := fmt.Sprintf(`{"type":"track","event":%q,"userId":%q,"messageId":%q,"n":%d,"properties":{"pad":"%s"}}`,
		name, key, mid, n, strings.Repeat("x", 64))
	return router.Event{Seq: uint64(n), MessageID: []byte(mid), Key: []byte(key), Type: []byte("track"),
		Source: []byte(source), Payload: []byte(payload)}
}

// newDest makes a destination with the test's logger, closed at the end.
func newDest(t testing.TB, cfg Config) *Dest {
	t.Helper()
	if cfg.Logger == nil && !testing.Verbose() {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// send sends with a deadline.
func send(d *Dest, events []router.Event) router.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Send(ctx, events)
}

// freePort returns a loopback port nothing listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is a nats-server process a test started.
type server struct {
	name string
	url  string
	cmd  *exec.Cmd
	once sync.Once
}

// kill ends it with SIGKILL (at most once).
func (s *server) kill() {
	s.once.Do(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	})
}

// startServer runs nats-server with a config file holding conf (plus
// listen, JetStream and store dir), and waits until it takes connections.
func startServer(t testing.TB, name, conf string) *server {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	file := filepath.Join(dir, "server.conf")
	js := fmt.Sprintf("jetstream: {store_dir: %q}\n", filepath.Join(dir, "js"))
	if strings.Contains(conf, "jetstream") { // the test's own
		js = ""
	}
	full := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\n%s%s\n", name, port, js, conf)
	if err := os.WriteFile(file, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nats-server", "-c", file)
	cmd.Stdout, cmd.Stderr = nil, nil
	if log := os.Getenv("NATSDEST_SERVER_LOG"); log != "" {
		cmd.Args = append(cmd.Args, "-l", filepath.Join(log, name+".log"))
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start nats-server (is it installed?): %v", err)
	}
	s := &server{name: name, url: fmt.Sprintf("nats://127.0.0.1:%d", port), cmd: cmd}
	t.Cleanup(s.kill)
	waitTCP(t, fmt.Sprintf("127.0.0.1:%d", port))
	return s
}

// waitTCP waits until addr accepts connections.
func waitTCP(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server at %s never listened: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startCluster runs n nats-servers as one JetStream cluster on loopback
// and waits until it has a meta leader.
func startCluster(t testing.TB, n int) []*server {
	t.Helper()
	cports := make([]int, n)
	var routes []string
	for i := range cports {
		cports[i] = freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", cports[i]))
	}
	cname := uniqueName(t)
	var srvs []*server
	for i := range n {
		conf := fmt.Sprintf("cluster: {name: %s, listen: 127.0.0.1:%d, routes: [%s]}", cname, cports[i], strings.Join(routes, ", "))
		srvs = append(srvs, startServer(t, fmt.Sprintf("n%d", i+1), conf))
	}
	_, js := connect(t, srvs[0].url)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return srvs
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster elected no JetStream leader: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// urls lists the servers' URLs.
func urls(srvs []*server) []string {
	var u []string
	for _, s := range srvs {
		u = append(u, s.url)
	}
	return u
}
