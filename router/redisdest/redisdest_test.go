package redisdest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-cdi/sluice/router"
)

// The tests run against the real Redis on 127.0.0.1:6379 (override with
// SLUICE_TEST_REDIS), each under a key prefix of its own that it deletes;
// the restart tests start a private redis-server on a free port.

func testAddr() string {
	if a := os.Getenv("SLUICE_TEST_REDIS"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// admin is a plain client for checking what landed; skip if no server.
func admin(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Skipf("no redis at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// prefix returns a key prefix of the test's own, deleted at cleanup.
func prefix(t testing.TB, c *redis.Client) string {
	p := fmt.Sprintf("sluicetest:%s:%d:", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	t.Cleanup(func() {
		ctx := context.Background()
		for _, pat := range []string{p + "*", "sluice:seen:" + p + "*"} {
			iter := c.Scan(ctx, 0, pat, 1000).Iterator()
			for iter.Next(ctx) {
				c.Del(ctx, iter.Val())
			}
		}
	})
	return p
}

func newDest(t testing.TB, cfg Config) *Redis {
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// mk makes event n of user, of the given type and track name.
func mk(user string, n int, typ, name string) router.Event {
	mid := fmt.Sprintf("%s-%d", user, n)
	payload := fmt.Sprintf(`{"type":%q,"event":%q,"userId":%q,"messageId":%q,"properties":{"n":%d}}`, typ, name, user, mid, n)
	return router.Event{MessageID: []byte(mid), Key: []byte(user), Type: []byte(typ), Source: []byte("web"), Payload: []byte(payload)}
}

// entry is one stream entry as the tests read it.
type entry struct{ stream, event, mid, typ, source string }

// read lists the entries of the streams, each stream in order.
func read(t testing.TB, c *redis.Client, streams ...string) []entry {
	var out []entry
	for _, s := range streams {
		msgs, err := c.XRange(context.Background(), s, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", s, err)
		}
		for _, m := range msgs {
			out = append(out, entry{s, m.Values["event"].(string), m.Values["message_id"].(string),
				m.Values["type"].(string), m.Values["source"].(string)})
		}
	}
	return out
}

// firstCopies checks that each user's first copies of the events are
// 0..n-1 in order, and returns how many copies arrived in all.
func firstCopies(t testing.TB, got []entry, users []string, n int) int {
	t.Helper()
	seen := map[string]bool{}
	next := map[string]int{}
	for _, e := range got {
		if seen[e.mid] {
			continue
		}
		seen[e.mid] = true
		user, num, _ := strings.Cut(e.mid, "-")
		k, _ := strconv.Atoi(num)
		if k != next[user] {
			t.Fatalf("user %s: first copy of event %d where %d was due", user, k, next[user])
		}
		next[user]++
	}
	for _, u := range users {
		if next[u] != n {
			t.Fatalf("user %s: %d of %d events arrived", u, next[u], n)
		}
	}
	return len(got)
}

func TestDeliverInOrder(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	d := newDest(t, Config{Addr: testAddr(), Stream: p + "{source}.{type}"})
	users := []string{"u1", "u2", "u3"}
	const n = 30
	var batch []router.Event
	for i := range n {
		for _, u := range users {
			typ := "track"
			if i%5 == 4 {
				typ = "identify"
			}
			batch = append(batch, mk(u, i, typ, "Clicked"))
			if len(batch) == 10 {
				if res := d.Send(context.Background(), batch); res.Err != nil || res.Status != 200 || res.Rejected != nil {
					t.Fatalf("send: %+v", res)
				}
				batch = batch[:0]
			}
		}
	}
	got := read(t, c, p+"web.track", p+"web.identify")
	if len(got) != n*len(users) {
		t.Fatalf("%d entries, want %d", len(got), n*len(users))
	}
	// Per stream, each user's events are in order; merged, all arrived.
	last := map[string]int{}
	for _, e := range got {
		if !strings.Contains(e.event, `"messageId":"`+e.mid+`"`) || e.source != "web" ||
			e.stream != p+"web."+e.typ {
			t.Fatalf("entry %+v", e)
		}
		user, num, _ := strings.Cut(e.mid, "-")
		k, _ := strconv.Atoi(num)
		if prev, ok := last[e.stream+user]; ok && k <= prev {
			t.Fatalf("stream %s user %s: event %d after %d", e.stream, user, k, prev)
		}
		last[e.stream+user] = k
	}
}

func TestMaxLenTrims(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	d := newDest(t, Config{Addr: testAddr(), Stream: p + "s", MaxLen: 100})
	for i := range 10 {
		var batch []router.Event
		for j := range 100 {
			batch = append(batch, mk("u", i*100+j, "track", "x"))
		}
		if res := d.Send(context.Background(), batch); res.Status != 200 {
			t.Fatalf("send: %+v", res)
		}
	}
	// Approximate trimming drops whole nodes: at least 100 stay, and far
	// fewer than the 1000 added.
	if n := c.XLen(context.Background(), p+"s").Val(); n < 100 || n >= 1000 {
		t.Fatalf("XLEN %d after 1000 adds with max_len 100", n)
	}
}

func TestWrongTypeRefusedAlone(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	d := newDest(t, Config{Addr: testAddr(), Stream: p + "{event}"})
	c.Set(context.Background(), p+"bad", "a string", 0)
	batch := []router.Event{mk("u1", 0, "track", "good"), mk("u1", 1, "track", "good"),
		mk("u1", 2, "track", "bad"), mk("u1", 3, "track", "good"), mk("u2", 0, "track", "good")}
	res := d.Send(context.Background(), batch)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 {
		t.Fatalf("result %+v", res)
	}
	r := res.Rejected[0]
	if r.Index != 2 || r.Status != 400 || !strings.HasPrefix(string(r.Reason), "WRONGTYPE") {
		t.Fatalf("rejection %+v (%s)", r, r.Reason)
	}
	got := read(t, c, p+"good")
	if len(got) != 4 || got[2].mid != "u1-3" {
		t.Fatalf("entries %+v", got)
	}
	// Alone, its own status.
	if res := d.Send(context.Background(), batch[2:3]); res.Status != 400 || !strings.Contains(string(res.Body), "WRONGTYPE") {
		t.Fatalf("single: %+v", res)
	}
}

// aclUser creates a Redis user for the test, deleted at cleanup.
func aclUser(t *testing.T, c *redis.Client, rules ...any) (name, pass string) {
	name = fmt.Sprintf("sluicetest%d", time.Now().UnixNano())
	pass = "pw-" + name
	args := append([]any{"ACL", "SETUSER", name, "on", ">" + pass}, rules...)
	if err := c.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	t.Cleanup(func() { c.Do(context.Background(), "ACL", "DELUSER", name) })
	return name, pass
}

func TestNoPermKeyRefusedAlone(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	user, pass := aclUser(t, c, "~"+p+"ok*", "+@all")
	d := newDest(t, Config{Addr: testAddr(), Username: user, Password: pass, Stream: p + "{event}"})
	batch := []router.Event{mk("u1", 0, "track", "ok"), mk("u1", 1, "track", "denied"), mk("u1", 2, "track", "ok")}
	res := d.Send(context.Background(), batch)
	if res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 || res.Rejected[0].Status != 403 ||
		!strings.HasPrefix(string(res.Rejected[0].Reason), "NOPERM") {
		t.Fatalf("result %+v", res)
	}
	if got := read(t, c, p+"ok"); len(got) != 2 || got[1].mid != "u1-2" {
		t.Fatalf("entries %+v", got)
	}
}

func TestCredentialsRefusedPause(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	user, pass := aclUser(t, c, "~*", "+@all")
	for _, tc := range []struct {
		name, pass string
	}{{user, "wrong"}, {"nosuchuser" + user, pass}} {
		d := newDest(t, Config{Addr: testAddr(), Username: tc.name, Password: tc.pass, Stream: p + "s"})
		res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x")})
		if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "WRONGPASS") {
			t.Fatalf("%s: result %+v", tc.name, res)
		}
	}
	// A user that may not XADD at all pauses the destination too.
	noXadd, pass2 := aclUser(t, c, "~*", "+@all", "-xadd")
	d := newDest(t, Config{Addr: testAddr(), Username: noXadd, Password: pass2, Stream: p + "s"})
	if res := d.Send(context.Background(), []router.Event{mk("u", 0, "track", "x"), mk("v", 0, "track", "x")}); !res.Pause {
		t.Fatalf("no xadd permission: %+v", res)
	}
	if n := c.Exists(context.Background(), p+"s").Val(); n != 0 {
		t.Fatal("something was added")
	}
}

func TestIdempotentSkipsResend(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	d := newDest(t, Config{Addr: testAddr(), Stream: p + "{event}", Idempotent: true, DedupWindow: time.Minute,
		DedupPrefix: "sluice:seen:" + p, MaxLen: 1000})
	c.Set(context.Background(), p+"bad", "a string", 0)
	batch := []router.Event{mk("u1", 0, "track", "s"), mk("u1", 1, "track", "bad"), mk("u1", 2, "track", "s")}
	for round := range 2 {
		res := d.Send(context.Background(), batch)
		if res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 ||
			!strings.HasPrefix(string(res.Rejected[0].Reason), "WRONGTYPE") {
			t.Fatalf("round %d: %+v", round, res)
		}
	}
	if got := read(t, c, p+"s"); len(got) != 2 {
		t.Fatalf("%d entries after a resend, want 2: %+v", len(got), got)
	}
	if d.Duplicates() != 2 {
		t.Fatalf("%d duplicates counted, want 2", d.Duplicates())
	}
	// The refused event left no key: once its stream is fixed it goes in.
	c.Del(context.Background(), p+"bad")
	if res := d.Send(context.Background(), batch[1:2]); res.Status != 200 {
		t.Fatalf("fixed: %+v", res)
	}
	if got := read(t, c, p+"bad"); len(got) != 1 {
		t.Fatalf("fixed stream: %+v", got)
	}
	// The script is loaded again when the server forgot it.
	c.ScriptFlush(context.Background())
	if res := d.Send(context.Background(), []router.Event{mk("u9", 0, "track", "s")}); res.Status != 200 {
		t.Fatalf("after SCRIPT FLUSH: %+v", res)
	}
}

func TestIdempotentWindowEnds(t *testing.T) {
	c := admin(t, testAddr())
	p := prefix(t, c)
	d := newDest(t, Config{Addr: testAddr(), Stream: p + "s", Idempotent: true, DedupWindow: 50 * time.Millisecond,
		DedupPrefix: "sluice:seen:" + p})
	ev := []router.Event{mk("u1", 0, "track", "s")}
	d.Send(context.Background(), ev)
	key := "sluice:seen:" + p + p + "s:web:u1-0"
	if c.Exists(context.Background(), key).Val() != 1 {
		t.Fatalf("no dedup key %s", key)
	}
	for c.Exists(context.Background(), key).Val() == 1 {
		time.Sleep(10 * time.Millisecond) // waiting on the key's expiry
	}
	d.Send(context.Background(), ev)
	if n := c.XLen(context.Background(), p+"s").Val(); n != 2 {
		t.Fatalf("XLEN %d after a resend past the window, want 2", n)
	}
}

func TestTemplate(t *testing.T) {
	for _, bad := range []string{"a{nope}", "a{source", "{}"} {
		if _, err := New(Config{Stream: bad}); err == nil {
			t.Errorf("stream %q accepted", bad)
		}
	}
	for _, bad := range []Config{{}, {Stream: "s", Addr: "nohost"}, {Stream: "s", MaxLen: -1}} {
		if _, err := New(bad); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
	tm, err := parseTemplate("x:{source}:{type}:{event}:y")
	if err != nil {
		t.Fatal(err)
	}
	ev := mk("u", 1, "track", "Order Done")
	if got := string(tm.Append(nil, &ev, nil)); got != "x:web:track:Order Done:y" {
		t.Fatalf("expanded %q", got)
	}
}

// clientIDs lists the ids of the server's connections named name.
func clientIDs(t testing.TB, c *redis.Client, name string) []string {
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for line := range strings.SplitSeq(list, "\n") {
		if strings.Contains(line, " name="+name+" ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			ids = append(ids, id)
		}
	}
	return ids
}

// deliverAll sends each user's events in batches of batch, one goroutine
// per user, resending a batch until it is taken whole; each result must be
// a success or an outage (never a refusal). disrupt runs once the first
// batches went through.
func deliverAll(t *testing.T, d *Redis, users []string, n, batch int, disrupt func()) (outages int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	started := make(chan struct{}, len(users))
	for _, u := range users {
		wg.Go(func() {
			for i := 0; i < n; i += batch {
				var evs []router.Event
				for j := i; j < min(n, i+batch); j++ {
					evs = append(evs, mk(u, j, "track", "x"))
				}
				for attempt := 0; ; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					res := d.Send(ctx, evs)
					cancel()
					if res.Err == nil && res.Status == 200 && res.Rejected == nil {
						break
					}
					if res.Err == nil || res.Pause || res.Status != 0 {
						t.Errorf("user %s batch %d: not an outage: %+v", u, i, res)
						return
					}
					mu.Lock()
					outages++
					mu.Unlock()
					if attempt > 500 {
						t.Errorf("user %s batch %d: still failing: %v", u, i, res.Err)
						return
					}
					time.Sleep(20 * time.Millisecond) // the router's backoff, in short
				}
				if i == batch {
					started <- struct{}{}
				}
			}
		})
	}
	<-started
	disrupt()
	wg.Wait()
	return outages
}

// TestClientKilledDuringDelivery kills the destination's connections while
// their transactions wait in the server (CLIENT PAUSE WRITE holds them
// unprocessed): the Sends fail as outages, and resent, nothing is lost.
func TestClientKilledDuringDelivery(t *testing.T) {
	srv := startPrivate(t)
	c := admin(t, srv.addr())
	name := fmt.Sprintf("sluicetest-%d", time.Now().UnixNano())
	d := newDest(t, Config{Addr: srv.addr(), Stream: "s", ClientName: name})
	users := []string{"a", "b", "c", "d"}
	const n = 400
	killed := 0
	outages := deliverAll(t, d, users, n, 20, func() {
		for range 3 {
			ctx := context.Background()
			c.Do(ctx, "CLIENT", "PAUSE", 2000, "WRITE")
			for i := 0; len(pending(t, c, name)) == 0; i++ {
				if i > 1000 {
					t.Fatal("no transaction held by the pause")
				}
				time.Sleep(time.Millisecond) // waiting for a Send to reach the server
			}
			for _, id := range clientIDs(t, c, name) {
				if c.Do(ctx, "CLIENT", "KILL", "ID", id).Err() == nil {
					killed++
				}
			}
			c.Do(ctx, "CLIENT", "UNPAUSE")
		}
	})
	if killed == 0 || outages == 0 {
		t.Fatalf("%d connections killed, %d outage answers", killed, outages)
	}
	copies := firstCopies(t, read(t, c, "s"), users, n)
	t.Logf("%d connections killed, %d outage answers; %d copies of %d events", killed, outages, copies, n*len(users))
}

// pending lists the ids of the connections named name whose query buffer
// holds commands not yet run.
func pending(t testing.TB, c *redis.Client, name string) []string {
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for line := range strings.SplitSeq(list, "\n") {
		if strings.Contains(line, " name="+name+" ") && !strings.Contains(line, " qbuf=0 ") {
			id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
			ids = append(ids, id)
		}
	}
	return ids
}
