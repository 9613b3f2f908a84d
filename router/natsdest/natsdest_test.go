package natsdest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// TestDeliverSubjectsHeadersOrder: a batch of several users lands on the
// template's subjects with the headers, and each user's events are stored
// in batch order.
func TestDeliverSubjectsHeadersOrder(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
	d := newDest(t, Config{URLs: []string{sharedURL}, Stream: name,
		Subject: name + ".{source}.{type}.{event}.{key_hash:4}"})
	var events []router.Event
	for n := range 10 {
		for _, u := range []string{"alice", "bob", "carol"} {
			events = append(events, event("web", u, n, fmt.Sprintf("Order %d.done", n%2)))
		}
	}
	res := send(d, events)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 0 {
		t.Fatalf("result %+v", res)
	}
	got := readAll(t, js, name)
	if len(got) != len(events) {
		t.Fatalf("stored %d messages, want %d", len(got), len(events))
	}
	last := map[string]int{}
	for _, m := range got {
		if n, seen := last[m.Key]; seen && m.N <= n {
			t.Fatalf("user %s: event %d stored after %d", m.Key, m.N, n)
		}
		last[m.Key] = m.N
		want := fmt.Sprintf("%s.web.track.Order_%d_done.", name, m.N%2)
		if !strings.HasPrefix(m.Subject, want) {
			t.Fatalf("subject %q, want prefix %q", m.Subject, want)
		}
		wantMid := fmt.Sprintf("web-%s-%d", m.Key, m.N)
		h := m.Header
		if m.MsgID != wantMid || h.Get("Sluice-Source") != "web" || h.Get("Sluice-Type") != "track" ||
			h.Get("Sluice-Key") != m.Key || h.Get("Content-Type") != "application/json" ||
			h.Get(jetstream.ExpectedStreamHeader) != name {
			t.Fatalf("headers %v of %s", h, wantMid)
		}
	}
	// One user, one key hash: every subject of a user ends the same.
	hashOf := map[string]string{}
	for _, m := range got {
		h := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if prev, ok := hashOf[m.Key]; ok && prev != h {
			t.Fatalf("user %s has key hashes %s and %s", m.Key, prev, h)
		}
		hashOf[m.Key] = h
	}
	if s := d.Stats(); s.Delivered != uint64(len(events)) || s.Duplicates != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestDuplicateWindowRefusesResend: the same batch sent twice is stored
// once, and the second Send counts its events as delivered duplicates.
func TestDuplicateWindowRefusesResend(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
	d := newDest(t, Config{URLs: []string{sharedURL}, Subject: name + ".{type}"})
	var events []router.Event
	for n := range 20 {
		events = append(events, event("web", fmt.Sprint("u", n%4), n, "E"))
	}
	for round := range 2 {
		if res := send(d, events); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
			t.Fatalf("round %d: %+v", round, res)
		}
	}
	if got := readAll(t, js, name); len(got) != len(events) {
		t.Fatalf("stored %d messages after two sends of %d", len(got), len(events))
	}
	if s := d.Stats(); s.Duplicates != uint64(len(events)) || s.Delivered != 2*uint64(len(events)) {
		t.Fatalf("stats %+v", s)
	}
}

// TestFailedEventStopsItsUser: when one event's publish fails (retryably)
// the later events of its user are not published, and both are named 503;
// another user's events go. The failure: a stream that keeps one message
// per subject and discards new ones, with the subject already taken.
func TestFailedEventStopsItsUser(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"},
		MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew, DiscardNewPerSubject: true})
	ctx := t.Context()
	if _, err := js.Publish(ctx, name+".full", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	d := newDest(t, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{event}"})
	events := []router.Event{
		event("web", "alice", 0, "a0"),
		event("web", "alice", 1, "full"), // refused by the stream: 503
		event("web", "bob", 0, "b0"),
		event("web", "alice", 2, "a2"), // must not be stored
		event("web", "bob", 1, "b1"),
	}
	res := send(d, events)
	if res.Err != nil || res.Status != 200 {
		t.Fatalf("result %+v", res)
	}
	rejected := map[int]int{}
	for _, r := range res.Rejected {
		rejected[r.Index] = r.Status
	}
	if len(rejected) != 2 || rejected[1] != 503 || rejected[3] != 503 {
		t.Fatalf("rejected %+v, want events 1 and 3 as 503", res.Rejected)
	}
	var subjects []string
	for _, m := range readAll(t, js, name) {
		subjects = append(subjects, strings.TrimPrefix(m.Subject, name+"."))
	}
	got := strings.Join(subjects, " ")
	if len(subjects) != 4 || subjects[0] != "full" || strings.Contains(got, "a2") || !strings.Contains(got, "a0") ||
		strings.Index(got, "b0") > strings.Index(got, "b1") {
		t.Fatalf("stored subjects %q, want full, then a0, b0 and b1 (b0 before b1), and no a2", got)
	}
}

// TestTooLargeRefusedByName: a message over the stream's max_msg_size is
// named 413 with the server's words; the rest of its user goes (the
// refused event is final), in order.
func TestTooLargeRefusedByName(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, MaxMsgSize: 1024})
	d := newDest(t, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{type}"})
	big := event("web", "alice", 1, "big")
	big.Payload = bytes.Replace(big.Payload, []byte(`"pad":"`), []byte(`"pad":"`+strings.Repeat("y", 2000)), 1)
	events := []router.Event{event("web", "alice", 0, "a"), big, event("web", "alice", 2, "a")}
	res := send(d, events)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 {
		t.Fatalf("result %+v", res)
	}
	r := res.Rejected[0]
	if r.Index != 1 || r.Status != 413 || !strings.Contains(string(r.Reason), "message size exceeds maximum") {
		t.Fatalf("rejection %+v (%s)", r, r.Reason)
	}
	got := readAll(t, js, name)
	if len(got) != 2 || got[0].N != 0 || got[1].N != 2 {
		t.Fatalf("stored %+v", got)
	}
}

// TestMissingStreamPauses: a configured stream that is missing pauses the
// destination with "stream not found" and stores nothing; so does a
// subject no stream takes when no stream is configured.
func TestMissingStreamPauses(t *testing.T) {
	name := uniqueName(t)
	for _, cfg := range []Config{
		{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{type}"},
		{URLs: []string{sharedURL}, Subject: name + ".{type}"},
	} {
		d := newDest(t, cfg)
		res := send(d, []router.Event{event("web", "alice", 0, "a")})
		if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "stream not found") {
			t.Fatalf("stream %q: result %+v, want a pause for a missing stream", cfg.Stream, res)
		}
	}
}

// TestCreateStream: with create_stream a missing stream is made with the
// given settings (subjects from the template by default) and takes the
// events.
func TestCreateStream(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	t.Cleanup(func() { deleteStream(js, name) })
	d := newDest(t, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{source}.x-{type}",
		CreateStream: &StreamConfig{DuplicateWindow: 5 * 60e9, MaxMsgSize: 4096}})
	if res := send(d, []router.Event{event("web", "alice", 0, "a")}); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
		t.Fatalf("result %+v", res)
	}
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if len(c.Subjects) != 1 || c.Subjects[0] != name+".*.*" || c.Duplicates != 5*60e9 || c.MaxMsgSize != 4096 || c.Replicas != 1 {
		t.Fatalf("stream config %+v", c)
	}
	if got := readAll(t, js, name); len(got) != 1 || got[0].Subject != name+".web.x-track" {
		t.Fatalf("stored %+v", got)
	}
}

// TestSubjectOutsideStreamRefused: a subject the configured stream does
// not take is that event's refusal (404), not an outage.
func TestSubjectOutsideStreamRefused(t *testing.T) {
	_, js := connect(t, sharedURL)
	name := uniqueName(t)
	makeStream(t, js, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".track"}})
	d := newDest(t, Config{URLs: []string{sharedURL}, Stream: name, Subject: name + ".{event}"})
	res := send(d, []router.Event{event("web", "alice", 0, "track"), event("web", "bob", 0, "other")})
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 || res.Rejected[0].Status != 404 {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(string(res.Rejected[0].Reason), "not subject") {
		t.Fatalf("reason %s", res.Rejected[0].Reason)
	}
}

// TestServerDownIsOutage: no server: a plain failure (the router retries),
// neither a pause nor ambiguous.
func TestServerDownIsOutage(t *testing.T) {
	url := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	d := newDest(t, Config{URLs: []string{url}, Subject: "x.{type}", ConnectTimeout: 1e9})
	res := send(d, []router.Event{event("web", "alice", 0, "a")})
	if res.Err == nil || res.Pause || res.Ambiguous || res.Status != 0 {
		t.Fatalf("result %+v", res)
	}
}
