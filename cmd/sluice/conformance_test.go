package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// The conformance suite: every destination type runs the same scripted
// cases, the real sluice binary delivering to the real service, so a new
// destination type gets them by implementing conformTarget in a file of
// its own (conform_<type>_test.go) and adding one line to conformTargets.
//
// One server per type goes through the phases in order, each sending
// events of several users through /v1/batch (acknowledged in order, so the
// log order per user is the send order):
//
//   - deliver: everything arrives, once, in order per user;
//   - poison: one event the service refuses by its own rule (a constraint,
//     a size limit, an unroutable key) is a dead letter with the
//     service's reason, and only it: the user's later events flow on;
//   - outage: the proxy between sluice and the service cuts every
//     connection and refuses new ones, then comes back: nothing is lost,
//     nothing is charged (no dead letter);
//   - stall: the proxy stops forwarding for longer than the destination's
//     timeout, then resumes (a hung broker, flow control): nothing lost;
//   - throttle: the service asks to slow down, where it can
//     (conformThrottler): nothing lost, nothing charged;
//   - crash: sluice is killed with SIGKILL with deliveries in flight and
//     restarted: everything arrives at least once, in order.
//
// At the end: every acknowledged event arrived or is the poison dead
// letter; the first copies of each user's events are in log order where
// the service keeps an order; no copy arrived twice before the phases
// that may legitimately resend (outage onwards: an ambiguous attempt); the
// duplicates after them are counted in the log.

// conformEvent is one copy of an event the service holds.
type conformEvent struct{ ID, User string }

// conformTarget is a destination type under the suite, with its real
// service.
type conformTarget interface {
	// upstream is the service's host:port, which the suite's proxy
	// forwards to, or "" when the type reaches no network service (the
	// outage and stall phases are then skipped).
	upstream(t *testing.T) string
	// config returns the destination's keys for a fresh target id (a
	// table, topic, stream, queue or file of its own) reached at addr (the
	// proxy's host:port; "" without an upstream), as YAML lines at the
	// level of a destination's keys: "type: x\nconfig:\n  url: ...\n". It
	// may set batch_size and concurrency, not timeout or retry.
	config(t *testing.T, id, addr string) string
	// received lists every copy of every event the service holds for id,
	// in the service's order per user; ordered is false when the service
	// keeps no order (a table).
	received(t *testing.T, id string) (evs []conformEvent, ordered bool)
	// poison returns how to make an event the service refuses by its own
	// rule, set up for id; or skip says why the type has no such event.
	poison(t *testing.T, id string) (p conformPoison, skip string)
}

// conformPoison is an event a service refuses.
type conformPoison struct {
	// edit makes a track event one the service refuses.
	edit func(ev map[string]any)
	// says is a part of the service's own reason, which the dead letter
	// must keep (in its reason or response).
	says string
}

// conformThrottler is a target whose service can ask sluice to slow down.
type conformThrottler interface {
	// throttle makes the service ask to slow down until stop is called.
	throttle(t *testing.T, id string) (stop func())
}

// conformTargets are the destination types under the suite, by type name.
// Each builds its target for one test; it may skip the test when its
// service cannot run here (say why).
var conformTargets = map[string]func(t *testing.T) conformTarget{
	"webhook":  newWebhookTarget,
	"file":     newFileTarget,
	"redis":    newRedisTarget,
	"mqtt":     newMQTTTarget,
	"kafka":    newKafkaTarget,
	"nats":     newNATSTarget,
	"postgres": newPostgresTarget,
	"mysql":    newMySQLTarget,
	"rabbitmq": newRabbitTarget,
}

func TestConformance(t *testing.T) {
	names := make([]string, 0, len(conformTargets))
	for name := range conformTargets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // most of a run is waiting on the service or a phase
			runConformance(t, conformTargets[name](t))
		})
	}
}

// conformRun is one run of the suite against a target.
type conformRun struct {
	t      *testing.T
	target conformTarget
	id     string
	prx    *proxy // nil without an upstream
	dest   string // the destination's YAML list item
	data   string
	srv    *sluiceProc
	client *http.Client
	n      int                 // events sent
	sent   map[string][]string // per user, acknowledged messageIds in log order
	phase  map[string]string   // messageId -> phase it was sent in
	poison string              // the poison event's messageId, if any
	says   string              // what the service says of the poison
}

const conformUsers = 6

func runConformance(t *testing.T, target conformTarget) {
	r := &conformRun{t: t, target: target, id: fmt.Sprintf("conform%d", time.Now().UnixNano()%1_000_000_000),
		data: t.TempDir(), client: &http.Client{Timeout: 10 * time.Second},
		sent: map[string][]string{}, phase: map[string]string{}}
	addr := ""
	if up := target.upstream(t); up != "" {
		r.prx = startProxy(t, up)
		addr = r.prx.addr()
	}
	var b strings.Builder
	b.WriteString("  - name: conform\n")
	for line := range strings.SplitSeq(strings.TrimRight(target.config(t, r.id, addr), "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	b.WriteString("    timeout: 2s\n    retry:\n      min_attempts: 3\n      backoff_initial: 100ms\n      backoff_max: 1s\n")
	r.dest = b.String()
	r.srv = startServerWith(t, r.data, r.dest)

	// deliver
	r.send("deliver", 60, nil)
	r.waitArrived("deliver")

	// poison
	if p, skip := target.poison(t, r.id); skip != "" {
		t.Logf("poison: skipped: %s", skip)
	} else {
		r.says = p.says
		r.send("poison", 10, nil)
		r.send("poison", 1, p.edit)
		r.send("poison", 10, nil)
		r.waitArrived("poison")
		r.waitDead("the poison event a dead letter")
	}
	r.checkReceived(true) // nothing so far may have been sent twice

	if r.prx == nil {
		t.Logf("outage, stall: skipped: the type reaches no network service")
	} else {
		// outage
		r.prx.cut()
		r.send("outage", 60, nil)
		time.Sleep(3 * time.Second) // the breaker opens meanwhile; the check is that nothing is charged
		r.prx.pass()
		r.waitArrived("outage")

		// stall
		r.prx.stall()
		r.send("stall", 60, nil)
		time.Sleep(3 * time.Second) // longer than the destination's 2 s timeout
		r.prx.pass()
		r.waitArrived("stall")
	}

	// throttle
	if th, ok := target.(conformThrottler); ok {
		stop := th.throttle(t, r.id)
		r.send("throttle", 60, nil)
		time.Sleep(2 * time.Second)
		stop()
		r.waitArrived("throttle")
	} else {
		t.Logf("throttle: skipped: the service has no way to ask for less")
	}

	// crash
	r.send("crash", 100, nil)
	r.srv.kill(t)
	r.srv = startServerWith(t, r.data, r.dest)
	r.send("crash", 60, nil)
	r.waitArrived("crash")
	r.waitDead("no new dead letters after the crash")
	r.checkReceived(false)
	if st := destStatus(t, adminAddr(t, r.srv), "conform"); st["state"] != "healthy" {
		t.Errorf("destination ends %v, want healthy: %v", st["state"], st)
	}
}

// send posts n track events of the phase, spread over the users, in
// /v1/batch requests of up to 20, each retried until acknowledged; edit,
// if not nil, shapes each event (the poison).
func (r *conformRun) send(phase string, n int, edit func(map[string]any)) {
	r.t.Helper()
	for start := 0; start < n; start += 20 {
		var evs []map[string]any
		for range min(20, n-start) {
			r.n++
			user := fmt.Sprintf("user-%d", r.n%conformUsers)
			ev := map[string]any{"type": "track", "userId": user, "event": "Conformance Checked",
				"messageId":  fmt.Sprintf("%s-%s-%d", r.id, phase, r.n),
				"properties": map[string]any{"n": r.n, "phase": phase, "note": "a conformance event"}}
			if edit != nil {
				edit(ev)
			}
			evs = append(evs, ev)
		}
		body, err := json.Marshal(map[string]any{"batch": evs})
		if err != nil {
			r.t.Fatal(err)
		}
		r.post(body)
		for _, ev := range evs {
			id, user := ev["messageId"].(string), ev["userId"].(string)
			r.sent[user] = append(r.sent[user], id)
			r.phase[id] = phase
			if edit != nil {
				r.poison = id
			}
		}
	}
}

// post sends one batch until sluice acknowledges it.
func (r *conformRun) post(body []byte) {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, err := post(context.Background(), r.client, r.srv.url+"/v1/batch", srcWeb, body)
		if status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("batch not acknowledged within 30s: status %d, %v", status, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitArrived waits until every acknowledged event but the poison has
// arrived at least once.
func (r *conformRun) waitArrived(phase string) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing := r.missing()
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("after the %s phase, %d acknowledged events never arrived, e.g. %v; status %v",
				phase, len(missing), missing[:min(5, len(missing))], destStatus(r.t, adminAddr(r.t, r.srv), "conform"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// missing lists the acknowledged events (but the poison) not received.
func (r *conformRun) missing() []string {
	evs, _ := r.target.received(r.t, r.id)
	got := make(map[string]bool, len(evs))
	for _, e := range evs {
		got[e.ID] = true
	}
	var out []string
	for _, ids := range r.sent {
		for _, id := range ids {
			if !got[id] && id != r.poison {
				out = append(out, id+" ("+r.phase[id]+")")
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitDead waits until the dead letters are exactly the poison event (or
// none without one), with the service's reason.
func (r *conformRun) waitDead(what string) {
	r.t.Helper()
	admin := adminAddr(r.t, r.srv)
	var dead map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for {
		dead = conformDeadLetters(r.t, admin)
		if _, ok := dead[r.poison]; ok || r.poison == "" {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: the poison event %s is not a dead letter (dead letters %v)", what, r.poison, dead)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for id, reason := range dead {
		switch {
		case id != r.poison:
			r.t.Errorf("%s: event %s (%s phase) is a dead letter: %s", what, id, r.phase[id], reason)
		case !strings.Contains(reason, r.says):
			r.t.Errorf("%s: the poison dead letter says %q, not the service's %q", what, reason, r.says)
		default:
			r.t.Logf("poison dead letter: %s", reason)
		}
	}
}

// conformDeadLetters lists the destination's dead letters: messageId ->
// reason and the service's response.
func conformDeadLetters(t *testing.T, admin string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/v1/destinations/conform/dlq?limit=1000")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer resp.Body.Close()
	var dls []struct {
		MessageID string `json:"message_id"`
		Reason    string `json:"reason"`
		Response  string `json:"response"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dls); err != nil {
		t.Fatalf("admin API: dlq: %v", err)
	}
	out := map[string]string{}
	for _, d := range dls {
		out[d.MessageID] = d.Reason + ": " + d.Response
	}
	return out
}

// checkReceived checks what the service holds: only events that were
// sent; each user's first copies in log order (where the service keeps an
// order); with exact, no second copy of anything.
func (r *conformRun) checkReceived(exact bool) {
	r.t.Helper()
	evs, ordered := r.target.received(r.t, r.id)
	user := map[string]string{}
	for u, ids := range r.sent {
		for _, id := range ids {
			user[id] = u
		}
	}
	seen := map[string]bool{}
	first := map[string][]string{}
	dups := 0
	for _, e := range evs {
		switch {
		case user[e.ID] == "":
			r.t.Errorf("the service holds %s, which was never sent", e.ID)
			continue
		case user[e.ID] != e.User:
			r.t.Errorf("the service holds %s as user %q, sent as %q", e.ID, e.User, user[e.ID])
		case e.ID == r.poison:
			r.t.Errorf("the service holds the poison event %s", e.ID)
		}
		if seen[e.ID] {
			dups++
			if exact {
				r.t.Errorf("%s (%s phase) arrived twice", e.ID, r.phase[e.ID])
			}
			continue
		}
		seen[e.ID] = true
		first[e.User] = append(first[e.User], e.ID)
	}
	r.t.Logf("%d events sent, %d copies held, %d second copies", r.n, len(evs), dups)
	if !ordered {
		return
	}
	for u, ids := range r.sent {
		want := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == r.poison })
		if got := first[u]; !slices.Equal(got, want) {
			r.t.Errorf("%s's events arrived out of order:\n got %s\nwant %s", u, brief(got), brief(want))
		}
	}
}

// brief shortens a list of messageIds for a failure message.
func brief(ids []string) string {
	var b bytes.Buffer
	for i, id := range ids {
		if i == 12 {
			fmt.Fprintf(&b, " ... (%d in all)", len(ids))
			break
		}
		b.WriteString(" " + id[strings.LastIndexByte(id, '-')+1:])
	}
	return b.String()
}
