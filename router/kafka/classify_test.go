package kafka

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluice-cdi/sluice/router"
)

// TestErrorClasses injects each class of broker answer with kfake's
// faults and checks what Send makes of it: outage (Err, Status 0,
// Ambiguous when the records may have been written), refusal (4xx with the
// broker's message, named alone in a batch), or pause.
func TestErrorClasses(t *testing.T) {
	type want struct {
		outage, ambiguous, pause bool
		status                   int    // a refusal's
		msg                      string // in Err or Body
	}
	for _, tc := range []struct {
		name  string
		err   *kerr.Error
		topic string // the destination's topic; default "t"
		want  want
	}{
		{"not leader", kerr.NotLeaderForPartition, "", want{outage: true, msg: "NOT_LEADER_FOR_PARTITION"}},
		{"leader election", kerr.LeaderNotAvailable, "", want{outage: true, msg: "LEADER_NOT_AVAILABLE"}},
		{"not enough replicas", kerr.NotEnoughReplicas, "", want{outage: true, msg: "NOT_ENOUGH_REPLICAS"}},
		// Written, perhaps: the idempotent producer keeps retrying (past
		// RecordRetries) until the Send's context ends.
		{"request timed out", kerr.RequestTimedOut, "", want{outage: true, ambiguous: true, msg: "no answer"}},
		{"coordinator loading", kerr.CoordinatorLoadInProgress, "", want{outage: true, msg: "COORDINATOR_LOAD_IN_PROGRESS"}},
		{"too large at the broker", kerr.MessageTooLarge, "", want{status: 413, msg: "MESSAGE_TOO_LARGE"}},
		{"invalid topic", kerr.InvalidTopicException, "", want{status: 400, msg: "INVALID_TOPIC_EXCEPTION"}},
		{"forbidden fixed topic", kerr.TopicAuthorizationFailed, "", want{pause: true, msg: "TOPIC_AUTHORIZATION_FAILED"}},
		{"forbidden templated topic", kerr.TopicAuthorizationFailed, "{source}", want{status: 403, msg: "TOPIC_AUTHORIZATION_FAILED"}},
		{"cluster authorization", kerr.ClusterAuthorizationFailed, "", want{pause: true, msg: "CLUSTER_AUTHORIZATION_FAILED"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFake(t, 1, 2, "t", "web")
			topic := tc.topic
			if topic == "" {
				topic = "t"
			}
			d := c.dest(t, Config{Topic: topic, RecordRetries: 2})
			// Warm up (producer ID, metadata), so the fault hits the
			// produce request.
			if res := d.Send(context.Background(), []router.Event{event("warm", 0, "track")}); res.Status != 200 {
				t.Fatalf("warm-up: %+v", res)
			}
			h := c.fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: tc.err, Count: -1})
			defer h.Remove()
			timeout := 20 * time.Second
			if tc.want.ambiguous {
				timeout = 2 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			res := d.Send(ctx, []router.Event{event("a", 1, "track")})
			if h.Hits() == 0 {
				t.Fatal("the fault hit no produce request")
			}
			checkResult(t, res, tc.want.outage, tc.want.ambiguous, tc.want.pause, tc.want.status, tc.want.msg)
			if ctx.Err() != nil && !tc.want.ambiguous {
				t.Errorf("the record waited for the timeout instead of failing with the broker's error")
			}
		})
	}
}

func checkResult(t *testing.T, res router.Result, outage, ambiguous, pause bool, status int, msg string) {
	t.Helper()
	text := string(res.Body)
	if res.Err != nil {
		text = res.Err.Error()
	}
	switch {
	case pause:
		if !res.Pause || res.Err == nil {
			t.Fatalf("want a pause, got %+v", res)
		}
	case outage:
		if res.Err == nil || res.Status != 0 || res.Pause || res.Ambiguous != ambiguous {
			t.Fatalf("want an outage (ambiguous %v), got %+v", ambiguous, res)
		}
	default:
		if res.Status != status || res.Err != nil || res.Pause {
			t.Fatalf("want status %d, got %+v", status, res)
		}
	}
	if !strings.Contains(text, msg) {
		t.Fatalf("want %q in %q", msg, text)
	}
}

// TestRefusedNamedInBatch: a topic-level refusal on one of a template's
// topics names the events of that topic (with the broker's message) and
// delivers the others.
func TestRefusedNamedInBatch(t *testing.T) {
	c := newFake(t, 2, 2, "ev.track", "ev.page")
	d := c.dest(t, Config{Topic: "ev.{type}"})
	h := c.fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "ev.page", Err: kerr.InvalidTopicException, Count: -1})
	defer h.Remove()
	events := []router.Event{event("a", 0, "track"), event("a", 1, "page"), event("b", 0, "track"), event("c", 0, "page")}
	res := d.Send(context.Background(), events)
	if res.Status != 200 || res.Err != nil || len(res.Rejected) != 2 {
		t.Fatalf("want two named, got %+v", res)
	}
	for i, r := range res.Rejected {
		if r.Index != []int{1, 3}[i] || r.Status != 400 || !strings.Contains(string(r.Reason), "INVALID_TOPIC_EXCEPTION") {
			t.Fatalf("rejection %+v %s", r, r.Reason)
		}
	}
	if recs := c.consume(t, 2, "ev.track"); len(recs) != 2 {
		t.Fatalf("track: %d records", len(recs))
	}
}

// TestFailedKeyNamesLaterEvents: when one of a key's events fails
// (retryable) on one topic and a later one of the same key is taken on
// another, the later one is named too (503), so it is sent again behind
// the failed one; other keys' events are taken.
func TestFailedKeyNamesLaterEvents(t *testing.T) {
	c := newFake(t, 1, 1, "ev.track", "ev.page")
	d := c.dest(t, Config{Topic: "ev.{type}", RecordRetries: 1})
	h := c.fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "ev.page", Err: kerr.NotEnoughReplicas, Count: -1})
	defer h.Remove()
	events := []router.Event{event("a", 0, "page"), event("a", 1, "track"), event("b", 0, "track")}
	res := d.Send(context.Background(), events)
	if res.Status != 200 || len(res.Rejected) != 2 {
		t.Fatalf("want two named, got %+v", res)
	}
	for i, r := range res.Rejected {
		if r.Index != i || r.Status != 503 {
			t.Fatalf("rejection %+v %s", r, r.Reason)
		}
	}
	if !strings.Contains(string(res.Rejected[1].Reason), "same key") {
		t.Errorf("reason %s", res.Rejected[1].Reason)
	}
}

// TestUnknownTopic: a missing fixed topic pauses the destination; a
// missing templated one refuses its events (404).
func TestUnknownTopic(t *testing.T) {
	c := newFake(t, 1, 1, "t")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := c.dest(t, Config{Topic: "missing"}).Send(ctx, []router.Event{event("a", 0, "track")})
	checkResult(t, res, false, false, true, 0, "topic missing does not exist")
	res = c.dest(t, Config{Topic: "x.{type}"}).Send(ctx, []router.Event{event("a", 0, "track")})
	checkResult(t, res, false, false, false, 404, "UNKNOWN_TOPIC_OR_PARTITION")
}

// TestAutoCreateTopics: with auto_create_topics, brokers that allow it
// create a missing topic and the event is delivered.
func TestAutoCreateTopics(t *testing.T) {
	fc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fc.Close)
	c := &cluster{addrs: fc.ListenAddrs(), fake: fc}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res := c.dest(t, Config{Topic: "new.{type}", AutoCreateTopics: true}).Send(ctx, []router.Event{event("a", 0, "track")})
	if res.Status != 200 {
		t.Fatalf("want delivered, got %+v", res)
	}
	c.consume(t, 1, "new.track")
}

// TestSASLFailurePauses: a SASL authentication failure (as Kafka answers
// it: SASL_AUTHENTICATION_FAILED) pauses the destination with that
// reason; right credentials deliver. (kfake itself closes the connection
// on a bad password, which looks like a network error, so the answer is
// injected.)
func TestSASLFailurePauses(t *testing.T) {
	fc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-256", "u", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fc.Close)
	c := &cluster{addrs: fc.ListenAddrs(), fake: fc}
	good := c.dest(t, Config{Topic: "t", SASL: &SASL{Mechanism: "scram-sha-256", Username: "u", Password: "secret"}})
	if res := good.Send(context.Background(), []router.Event{event("a", 0, "track")}); res.Status != 200 {
		t.Fatalf("right credentials: %+v", res)
	}
	fc.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		fc.KeepControl()
		resp := kmsg.NewPtrSASLAuthenticateResponse()
		resp.Version = req.GetVersion()
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = kmsg.StringPtr("Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256")
		return resp, nil, true
	})
	bad := c.dest(t, Config{Topic: "t", SASL: &SASL{Mechanism: "scram-sha-256", Username: "u", Password: "wrong"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := bad.Send(ctx, []router.Event{event("a", 1, "track")})
	checkResult(t, res, false, false, true, 0, "SASL_AUTHENTICATION_FAILED")
}

// TestUnreachable: no broker listening is an outage whose error says so.
func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := &cluster{addrs: []string{addr}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res := c.dest(t, Config{Topic: "t"}).Send(ctx, []router.Event{event("a", 0, "track")})
	// Ambiguous or not, as the client failed the record on the context
	// before Send saw the deadline, or not.
	if res.Err == nil || res.Status != 0 || res.Pause || !strings.Contains(res.Err.Error(), "connection refused") {
		t.Fatalf("want an outage naming the refused connection, got %+v", res)
	}
}

// TestClassifyContext: a record failed on its context is an outage that
// was not written.
func TestClassifyContext(t *testing.T) {
	o := classify(context.DeadlineExceeded, true)
	if o.class != classRetry || o.ambiguous {
		t.Fatalf("%+v", o)
	}
	if o := classify(errors.Join(errors.New("x"), kerr.SaslAuthenticationFailed), false); o.class != classPause {
		t.Fatalf("wrapped SASL failure: %+v", o)
	}
}
