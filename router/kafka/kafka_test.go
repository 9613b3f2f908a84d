package kafka

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

// TestDeliverManyKeysInOrder: many keys sent concurrently in mixed
// batches arrive once each, every key in one partition, in log order,
// with the record's key, headers and timestamp set.
func TestDeliverManyKeysInOrder(t *testing.T) {
	c := newFake(t, 3, 0)
	testDeliverManyKeys(t, c)
}

// TestRealCluster runs the delivery, template and too-large tests against
// the cluster SLUICE_KAFKA_BROKERS names.
func TestRealCluster(t *testing.T) {
	c := realCluster(t)
	t.Run("deliver", func(t *testing.T) { testDeliverManyKeys(t, c) })
	t.Run("template", func(t *testing.T) { testTemplate(t, c) })
	t.Run("too-large", func(t *testing.T) { testTooLargeAlone(t, c) })
}

func testDeliverManyKeys(t *testing.T, c *cluster) {
	topic := c.topic(t, "deliver", 8)
	d := c.dest(t, Config{Topic: topic})
	events := makeEvents(200, 20)
	if refused := sendAll(t, d, events, 16, 50, nil); len(refused) > 0 {
		t.Fatalf("%d events refused", len(refused))
	}
	recs := c.consume(t, len(events), topic)
	if dups := checkDelivered(t, recs, events); dups != 0 {
		t.Errorf("%d duplicates without any fault", dups)
	}
	r := recs[0]
	if header(r, "source") != "web" || header(r, "type") != "track" {
		t.Errorf("headers %+v", r.Headers)
	}
	if r.Timestamp.Year() != 2026 {
		t.Errorf("timestamp %v, want the event's receivedAt", r.Timestamp)
	}
}

// TestTemplate: a templated topic puts each event in the topic of its
// source and type (sanitized).
func TestTemplate(t *testing.T) {
	c := newFake(t, 1, 2, "ev.web.track", "ev.web.page", "ev.web.Order_Completed")
	testTemplate(t, c)
}

func testTemplate(t *testing.T, c *cluster) {
	prefix := "ev"
	if c.fake == nil {
		prefix = uniqueName("tpl")
		for _, s := range []string{"track", "page", "Order_Completed"} {
			c.createNamed(t, prefix+".web."+s, 2)
		}
	}
	d := c.dest(t, Config{Topic: prefix + ".{source}.{type}"})
	events := []router.Event{event("a", 0, "track"), event("a", 1, "page"), event("b", 0, "track")}
	if res := d.Send(context.Background(), events); res.Status != 200 || res.Err != nil || len(res.Rejected) > 0 {
		t.Fatalf("send: %+v", res)
	}
	if recs := c.consume(t, 2, prefix+".web.track"); len(recs) != 2 || string(recs[0].Key) == string(recs[1].Key) {
		t.Errorf("track topic holds %d records", len(recs))
	}
	if recs := c.consume(t, 1, prefix+".web.page"); len(recs) != 1 || string(recs[0].Key) != "a" {
		t.Errorf("page topic: %v", recs)
	}
	d = c.dest(t, Config{Topic: prefix + ".{source}.{event}"})
	if res := d.Send(context.Background(), events[:1]); res.Status != 200 {
		t.Fatalf("send by event name: %+v", res)
	}
	c.consume(t, 1, prefix+".web.Order_Completed")
}

// TestTooLargeAlone: a record over RecordBytesMax is refused alone (413,
// with the client's message) while the rest of its batch is delivered;
// alone in a batch, its status is the Result's.
func TestTooLargeAlone(t *testing.T) {
	testTooLargeAlone(t, newFake(t, 3, 0))
}

func testTooLargeAlone(t *testing.T, c *cluster) {
	topic := c.topic(t, "large", 4)
	d := c.dest(t, Config{Topic: topic, RecordBytesMax: 1024})
	events := makeEvents(5, 2)
	big := event("user-3", 0, "track")
	big.Payload = []byte(`{"type":"track","anonymousId":"user-3","n":0,"pad":"` + strings.Repeat("x", 2000) + `"}`)
	events[3] = big
	res := d.Send(context.Background(), events)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 {
		t.Fatalf("want 200 with one rejection, got %+v", res)
	}
	if r := res.Rejected[0]; r.Index != 3 || r.Status != 413 || !strings.Contains(string(r.Reason), "MESSAGE_TOO_LARGE") {
		t.Fatalf("rejection %+v (%s)", r, r.Reason)
	}
	recs := c.consume(t, len(events)-1, topic)
	for _, r := range recs {
		if header(r, "messageId") == string(big.MessageID) {
			t.Fatal("the refused record was delivered")
		}
	}
	res = d.Send(context.Background(), []router.Event{big})
	if res.Status != 413 || res.Err != nil || !strings.Contains(string(res.Body), topic) {
		t.Fatalf("alone: %+v", res)
	}
}

// TestLeaderChangesLoseNothing: leaders move between the brokers while
// many keys are delivered, and a broker leaves the cluster and another
// joins; whatever fails is sent again (as the router does), and every
// event arrives in order.
func TestLeaderChangesLoseNothing(t *testing.T) {
	c := newFake(t, 3, 6, "moving")
	d := c.dest(t, Config{Topic: "moving"})
	events := makeEvents(100, 20)
	var moves atomic.Int64
	sendAll(t, d, events, 8, 25, func(round int) {
		switch {
		case round == 25:
			if err := c.fake.RemoveNode(2); err != nil {
				t.Errorf("remove node: %v", err)
			}
		case round == 50:
			if _, _, err := c.fake.AddNode(-1, 0); err != nil {
				t.Errorf("add node: %v", err)
			}
		case round%10 == 0:
			c.fake.ShufflePartitionLeaders()
		default:
			return
		}
		moves.Add(1)
	})
	if moves.Load() < 3 {
		t.Fatalf("%d leader moves", moves.Load())
	}
	recs := c.consume(t, len(events), "moving")
	dups := checkDelivered(t, recs, events)
	t.Logf("%d leader moves, %d records, %d duplicates", moves.Load(), len(recs), dups)
}

// TestCloseFailsWhatIsLeft: after Close, a Send fails (retryable) and
// does not hang.
func TestCloseFailsWhatIsLeft(t *testing.T) {
	c := newFake(t, 1, 1, "t")
	d := c.dest(t, Config{Topic: "t"})
	d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := d.Send(ctx, makeEvents(1, 1))
	if res.Err == nil || res.Pause || res.Status != 0 || ctx.Err() != nil {
		t.Fatalf("send after close: %+v", res)
	}
}
