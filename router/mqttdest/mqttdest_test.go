package mqttdest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sluice-cdi/sluice/router"
)

// The tests publish to the real Mosquitto on 127.0.0.1:1883 (override with
// SLUICE_TEST_MQTT, host:port), each under a topic prefix of its own, and
// check with a paho subscriber; the authentication test starts a private
// mosquitto with a password file on a free port.

func brokerAddr() string {
	if a := os.Getenv("SLUICE_TEST_MQTT"); a != "" {
		return a
	}
	return "127.0.0.1:1883"
}

func needBroker(t *testing.T, addr string) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Skipf("no MQTT broker at %s: %v", addr, err)
	}
	c.Close()
}

// topicPrefix is a topic prefix of the test's own.
func topicPrefix(t *testing.T) string {
	return fmt.Sprintf("sluicetest/%s/%d", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
}

// msg is one message a subscriber got.
type msg struct {
	topic   string
	payload string
	retain  bool
}

// subscriber collects the messages of a topic filter, in arrival order.
type subscriber struct {
	mu   sync.Mutex
	got  []msg
	more chan struct{} // signalled on each message
}

func subscribe(t *testing.T, addr, filter string) *subscriber {
	s := &subscriber{more: make(chan struct{}, 1)}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(fmt.Sprintf("sluicetest-sub-%d", time.Now().UnixNano())).SetOrderMatters(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber cannot connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		s.mu.Lock()
		s.got = append(s.got, msg{m.Topic(), string(m.Payload()), m.Retained()})
		s.mu.Unlock()
		select {
		case s.more <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("cannot subscribe: %v", tok.Error())
	}
	return s
}

// wait waits until n distinct messages arrived (or 10 s passed) and
// returns every copy.
func (s *subscriber) wait(t *testing.T, n int) []msg {
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got := append([]msg(nil), s.got...)
		s.mu.Unlock()
		distinct := map[string]bool{}
		for _, m := range got {
			distinct[m.topic+" "+m.payload] = true
		}
		if len(distinct) >= n {
			return got
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("%d of %d messages arrived", len(got), n)
		}
	}
}

func newDest(t *testing.T, cfg Config) *MQTT {
	if cfg.ClientID == "" {
		cfg.ClientID = fmt.Sprintf("sluicetest-%d", time.Now().UnixNano())
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mk(user string, n int, typ, name string) router.Event {
	mid := fmt.Sprintf("%s-%d", user, n)
	payload := fmt.Sprintf(`{"type":%q,"event":%q,"userId":%q,"messageId":%q}`, typ, name, user, mid)
	return router.Event{MessageID: []byte(mid), Key: []byte(user), Type: []byte(typ), Source: []byte("web"), Payload: []byte(payload)}
}

// midOf reads a payload's messageId (the tests' payloads are mk's).
func midOf(payload string) string {
	_, rest, _ := strings.Cut(payload, `"messageId":"`)
	mid, _, _ := strings.Cut(rest, `"`)
	return mid
}

// checkFirstCopies checks that each user's first copies are 0..n-1 in
// order and returns the number of second copies.
func checkFirstCopies(t *testing.T, got []msg, users []string, n int) (dups int) {
	t.Helper()
	seen := map[string]bool{}
	next := map[string]int{}
	for _, m := range got {
		mid := midOf(m.payload)
		if seen[mid] {
			dups++
			continue
		}
		seen[mid] = true
		user, num, _ := strings.Cut(mid, "-")
		k, _ := strconv.Atoi(num)
		if k != next[user] {
			t.Fatalf("user %s: first copy of %d where %d was due", user, k, next[user])
		}
		next[user]++
	}
	for _, u := range users {
		if next[u] != n {
			t.Fatalf("user %s: %d of %d arrived", u, next[u], n)
		}
	}
	return dups
}

func TestDeliverInOrder(t *testing.T) {
	addr := brokerAddr()
	needBroker(t, addr)
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			p := topicPrefix(t)
			sub := subscribe(t, addr, p+"/#")
			d := newDest(t, Config{Broker: "tcp://" + addr, Topic: p + "/{source}/{event}", QoS: qos})
			users := []string{"u1", "u2", "u3"}
			const n = 50
			var batch []router.Event
			for i := range n {
				for _, u := range users {
					batch = append(batch, mk(u, i, "track", "Clicked"))
					if len(batch) == 10 {
						if res := d.Send(context.Background(), batch); res.Err != nil || res.Status != 200 || res.Rejected != nil {
							t.Fatalf("send: %+v", res)
						}
						batch = batch[:0]
					}
				}
			}
			got := sub.wait(t, n*len(users))
			for _, m := range got {
				if m.topic != p+"/web/Clicked" || m.retain {
					t.Fatalf("message %+v", m)
				}
			}
			if dups := checkFirstCopies(t, got, users, n); dups != 0 {
				t.Fatalf("%d second copies", dups)
			}
		})
	}
}

func TestTopicLevels(t *testing.T) {
	addr := brokerAddr()
	needBroker(t, addr)
	p := topicPrefix(t)
	sub := subscribe(t, addr, p+"/#")
	d := newDest(t, Config{Broker: "tcp://" + addr, Topic: p + "/{type}/{event}", Retain: true})
	if res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "a/b+c#d"), mk("u", 1, "identify", "")}); res.Status != 200 {
		t.Fatalf("send: %+v", res)
	}
	got := sub.wait(t, 2)
	if got[0].topic != p+"/track/a_b_c_d" || got[1].topic != p+"/identify/" {
		t.Fatalf("topics %q, %q", got[0].topic, got[1].topic)
	}
	// Retained: a later subscriber gets the last message of each topic.
	late := subscribe(t, addr, p+"/track/#")
	if m := late.wait(t, 1)[0]; !m.retain || midOf(m.payload) != "u-0" {
		t.Fatalf("retained %+v", m)
	}
	clear := newDest(t, Config{Broker: "tcp://" + addr, Topic: p + "/{type}/{event}", Retain: true})
	for _, ev := range []router.Event{mk("u", 0, "track", "a/b+c#d"), mk("u", 1, "identify", "")} {
		ev.Payload = nil // an empty retained message clears the topic's
		clear.Send(context.Background(), []router.Event{ev})
	}
}

func TestConfig(t *testing.T) {
	for _, bad := range []Config{
		{Broker: "127.0.0.1:1883", Topic: "t", ClientID: "c"},
		{Broker: "http://127.0.0.1:1883", Topic: "t", ClientID: "c"},
		{Broker: "tcp://127.0.0.1:1883", Topic: "t/+", ClientID: "c"},
		{Broker: "tcp://127.0.0.1:1883", Topic: "t/{user}", ClientID: "c"},
		{Broker: "tcp://127.0.0.1:1883", Topic: "t", ClientID: "c", QoS: 3},
		{Broker: "tcp://127.0.0.1:1883", Topic: "t"},
		{Broker: "tcp://127.0.0.1:1883", Topic: "", ClientID: "c"},
	} {
		if m, err := New(bad); err == nil {
			m.Close()
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// TestConnectionCutMidStream cuts the destination's connection to the
// broker while users' batches are in flight, refuses reconnection for a
// while, then lets it through: every failure is an outage, and resent,
// every event arrives, first copies in order.
func TestConnectionCutMidStream(t *testing.T) {
	addr := brokerAddr()
	needBroker(t, addr)
	p := topicPrefix(t)
	sub := subscribe(t, addr, p+"/#")
	prx := startCutter(t, addr)
	d := newDest(t, Config{Broker: "tcp://" + prx.addr(), Topic: p + "/{type}"})
	users := []string{"a", "b", "c", "d"}
	const n, batch = 300, 10
	var mu sync.Mutex
	outages, ambiguous := 0, 0
	var wg sync.WaitGroup
	started := make(chan struct{}, len(users))
	for _, u := range users {
		wg.Go(func() {
			for i := 0; i < n; i += batch {
				var evs []router.Event
				for j := i; j < i+batch; j++ {
					evs = append(evs, mk(u, j, "track", "x"))
				}
				for attempt := 0; ; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					res := d.Send(ctx, evs)
					cancel()
					if res.Err == nil && res.Status == 200 && res.Rejected == nil {
						break
					}
					if res.Pause || (res.Err == nil && !allRetryable(res.Rejected)) {
						t.Errorf("user %s batch %d: not an outage: %+v", u, i, res)
						return
					}
					mu.Lock()
					outages++
					if res.Ambiguous {
						ambiguous++
					}
					mu.Unlock()
					if attempt > 400 {
						t.Errorf("user %s batch %d: still failing: %+v", u, i, res)
						return
					}
					// The router backs off; taking the whole batch again
					// is what it does with a partial answer's retries too.
					time.Sleep(20 * time.Millisecond)
				}
				if i == 2*batch {
					started <- struct{}{}
				}
			}
		})
	}
	<-started
	prx.cutAll()
	for d.conn.current().up {
		time.Sleep(time.Millisecond) // waiting for the loss to be seen
	}
	time.Sleep(300 * time.Millisecond) // refused for a while: Sends fail meanwhile
	prx.restore()
	wg.Wait()
	if outages == 0 {
		t.Fatal("no Send failed across the cut")
	}
	got := sub.wait(t, n*len(users))
	dups := checkFirstCopies(t, got, users, n)
	t.Logf("%d outage answers (%d ambiguous); %d second copies", outages, ambiguous, dups)
}

func allRetryable(rej []router.Rejection) bool {
	for _, r := range rej {
		if r.Status < 500 {
			return false
		}
	}
	return len(rej) > 0
}

// TestInFlightBound holds every byte to the broker: a Send of more events
// than the bound publishes only the bound's worth and gives up on the
// rest waiting for a slot.
func TestInFlightBound(t *testing.T) {
	addr := brokerAddr()
	needBroker(t, addr)
	prx := startCutter(t, addr)
	d := newDest(t, Config{Broker: "tcp://" + prx.addr(), Topic: topicPrefix(t), InFlightMax: 3})
	prx.hold()
	var evs []router.Event
	for i := range 6 {
		evs = append(evs, mk("u", i, "track", "x"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errs, published := d.publish(ctx, d.conn.current(), evs)
	if !published {
		t.Fatal("nothing published")
	}
	for i, err := range errs {
		want := "no acknowledgement"
		if i >= 3 {
			want = "in-flight slot"
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("event %d: %v, want %q", i, err, want)
		}
	}
	if len(d.slots) != 0 {
		t.Fatalf("%d slots still taken after Send", len(d.slots))
	}
}

// private is a mosquitto of the test's own with a password file.
func privateBroker(t *testing.T, user, pass string) string {
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("no mosquitto binary")
	}
	// mosquitto started as root reads its files as user mosquitto: not
	// under t.TempDir's private folder.
	dir, err := os.MkdirTemp("", "sluicetest-mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	pw := filepath.Join(dir, "passwd")
	if out, err := exec.Command("mosquitto_passwd", "-b", "-c", pw, user, pass).CombinedOutput(); err != nil {
		t.Skipf("mosquitto_passwd: %v %s", err, out)
	}
	os.Chmod(pw, 0o644)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, fmt.Appendf(nil, "listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n", port, pw), 0o644)
	cmd := exec.Command("mosquitto", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if i > 500 {
			t.Fatal("private mosquitto did not start")
		}
		time.Sleep(10 * time.Millisecond) // waiting for it to listen
	}
}

func TestAuthenticationRefusedPauses(t *testing.T) {
	addr := privateBroker(t, "sluice", "right")
	for _, cfg := range []Config{{Username: "sluice", Password: "wrong"}, {}} {
		cfg.Broker, cfg.Topic = "tcp://"+addr, "t"
		d := newDest(t, cfg)
		res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")})
		if !res.Pause || res.Err == nil || res.Ambiguous {
			t.Fatalf("user %q: %+v", cfg.Username, res)
		}
	}
	d := newDest(t, Config{Broker: "tcp://" + addr, Topic: "t", Username: "sluice", Password: "right"})
	if res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")}); res.Status != 200 {
		t.Fatalf("right password: %+v", res)
	}
}

func TestBrokerDownIsAnOutage(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens
	d := newDest(t, Config{Broker: "tcp://" + addr, Topic: "t"})
	res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")})
	if res.Err == nil || res.Pause || res.Ambiguous || res.Status != 0 {
		t.Fatalf("broker down: %+v", res)
	}
}

// TestConcurrentSendsShareTheBound: Sends that together want more slots
// than the bound all finish; none waits for slots another holds while that
// one waits for more.
func TestConcurrentSendsShareTheBound(t *testing.T) {
	addr := brokerAddr()
	needBroker(t, addr)
	d := newDest(t, Config{Broker: "tcp://" + addr, Topic: topicPrefix(t), InFlightMax: 10})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var evs []router.Event
			for i := range 50 {
				evs = append(evs, mk(fmt.Sprintf("u%d", g), i, "track", "x"))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if res := d.Send(ctx, evs); res.Status != 200 || res.Rejected != nil || res.Err != nil {
				t.Errorf("sender %d: %+v", g, res)
			}
		})
	}
	wg.Wait()
	if len(d.slots) != 0 {
		t.Fatalf("%d slots still taken", len(d.slots))
	}
}
