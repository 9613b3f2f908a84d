package natsdest

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// privateConf is a server with one user who may not publish under
// <prefix>.denied, and a small max_payload.
const privateConf = `
max_payload: 2048
authorization {
  users = [
    {user: sluice, password: s3cret, permissions: {publish: {allow: [">"], deny: ["P.denied.>"]}, subscribe: {allow: ["_INBOX.>"]}}}
  ]
}
`

// TestPrivateServerErrors runs the classifications that need a server of
// their own: refused credentials pause; a subject the user may not publish
// to, and a message over max_payload, are that event's refusals while its
// user's later events and other users go.
func TestPrivateServerErrors(t *testing.T) {
	srv := startServer(t, "private", privateConf)
	_, js := connect(t, srv.url, nats.UserInfo("sluice", "s3cret"))
	makeStream(t, js, jetstream.StreamConfig{Name: "P", Subjects: []string{"P.>"}})

	t.Run("wrong password pauses", func(t *testing.T) {
		d := newDest(t, Config{URLs: []string{srv.url}, User: "sluice", Password: "wrong", Stream: "P", Subject: "P.{type}"})
		res := send(d, []router.Event{event("web", "alice", 0, "a")})
		if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "uthorization") {
			t.Fatalf("result %+v", res)
		}
		// Still refused on the next Send, past the redial wait too.
		if res := send(d, []router.Event{event("web", "alice", 0, "a")}); !res.Pause {
			t.Fatalf("second send %+v", res)
		}
	})
	t.Run("no credentials pause", func(t *testing.T) {
		d := newDest(t, Config{URLs: []string{srv.url}, Subject: "P.{type}"})
		if res := send(d, []router.Event{event("web", "alice", 0, "a")}); !res.Pause {
			t.Fatalf("result %+v", res)
		}
	})
	t.Run("refused subject and too large", func(t *testing.T) {
		d := newDest(t, Config{URLs: []string{srv.url}, User: "sluice", Password: "s3cret", Stream: "P", Subject: "P.{event}.{type}"})
		big := event("web", "alice", 2, "ok")
		big.Payload = bytes.Replace(big.Payload, []byte(`"pad":"`), []byte(`"pad":"`+strings.Repeat("y", 3000)), 1)
		events := []router.Event{
			event("web", "alice", 0, "ok"),
			event("web", "alice", 1, "denied"), // publish permission refused
			big,                                // over max_payload
			event("web", "alice", 3, "ok"),
			event("web", "bob", 0, "ok"),
		}
		res := send(d, events)
		if res.Err != nil || res.Status != 200 || len(res.Rejected) != 2 {
			t.Fatalf("result %+v", res)
		}
		byIndex := map[int]router.Rejection{}
		for _, r := range res.Rejected {
			byIndex[r.Index] = r
		}
		if r := byIndex[1]; r.Status != 403 || !strings.Contains(string(r.Reason), "Permissions Violation") {
			t.Fatalf("denied subject: %+v %s", r, r.Reason)
		}
		if r := byIndex[2]; r.Status != 413 || !strings.Contains(string(r.Reason), "max_payload") {
			t.Fatalf("too large: %+v %s", r, r.Reason)
		}
		var got []string
		for _, m := range readAll(t, js, "P") {
			got = append(got, m.Key+string(rune('0'+m.N)))
		}
		if s := strings.Join(got, " "); len(got) != 3 || strings.Index(s, "alice0") > strings.Index(s, "alice3") || !strings.Contains(s, "bob0") {
			t.Fatalf("stored %q, want alice0 before alice3, and bob0", s)
		}
	})
}

// TestJetStreamOffPauses: a server without JetStream pauses the
// destination, with or without a stream named.
func TestJetStreamOffPauses(t *testing.T) {
	srv := startServer(t, "nojs", "jetstream: disabled")
	for _, stream := range []string{"S", ""} {
		d := newDest(t, Config{URLs: []string{srv.url}, Stream: stream, Subject: "S.{type}"})
		res := send(d, []router.Event{event("web", "alice", 0, "a")})
		if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "not enabled") {
			t.Fatalf("stream %q: %+v", stream, res)
		}
	}
}
