package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluice-cdi/sluice/router"
)

// TestStalledSendNotOvertaken: a Send whose produce request is written but
// not answered (a stalled broker) returns at its deadline, ambiguous. The
// key's next events, sent after it (the router's retry, or the next batch
// once the stalled one was given up), land after the stalled record, never
// before it.
func TestStalledSendNotOvertaken(t *testing.T) {
	c := newFake(t, 1, 1, "o")
	d := c.dest(t, Config{Topic: "o"})
	if res := d.Send(context.Background(), []router.Event{event("warm", 0, "track")}); res.Status != 200 {
		t.Fatalf("warm-up: %+v", res)
	}
	release := make(chan struct{})
	stalled := make(chan struct{})
	c.fake.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		close(stalled)
		c.fake.SleepControl(func() { <-release })
		c.fake.DropControl()
		return nil, nil, false // then handled as usual
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stalled; cancel() }() // the Send's deadline, once the request is out
	res := d.Send(ctx, []router.Event{event("a", 0, "track")})
	if res.Err == nil || !res.Ambiguous {
		t.Fatalf("stalled send: want an ambiguous outage, got %+v", res)
	}
	done := make(chan router.Result)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- d.Send(ctx, []router.Event{event("a", 1, "track"), event("a", 2, "track")})
	}()
	close(release)
	if res := <-done; res.Status != 200 {
		t.Fatalf("later send: %+v", res)
	}
	recs := c.consume(t, 4, "o")[1:] // after the warm-up
	for i, want := range []string{"a-0", "a-1", "a-2"} {
		if got := header(recs[i], "messageId"); got != want {
			t.Fatalf("record %d is %s, want %s (the stalled one first)", i, got, want)
		}
	}
}

// TestCancelledRecordsNotDeliveredLater: records the brokers keep
// refusing with a retriable error are failed when their Send's context
// ends, so once the brokers recover they are not delivered behind the
// key's later events.
func TestCancelledRecordsNotDeliveredLater(t *testing.T) {
	c := newFake(t, 1, 1, "o")
	d := c.dest(t, Config{Topic: "o", RecordRetries: 1 << 20})
	if res := d.Send(context.Background(), []router.Event{event("warm", 0, "track")}); res.Status != 200 {
		t.Fatalf("warm-up: %+v", res)
	}
	h := c.fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotLeaderForPartition, Count: -1})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_ = h.Wait(context.Background(), 2) // refused, and retried once
		cancel()
	}()
	res := d.Send(ctx, []router.Event{event("a", 0, "track")})
	if res.Err == nil || res.Status != 0 {
		t.Fatalf("want an outage, got %+v", res)
	}
	h.Remove()
	// The first Sends after may fail with the given-up records (the
	// client fails a partition's buffer together): sent again, as the
	// router does.
	sendAll(t, d, []router.Event{event("a", 1, "track")}, 1, 1, nil)
	sendAll(t, d, []router.Event{event("z", 0, "track")}, 1, 1, nil)
	recs := c.consume(t, 3, "o")
	for _, r := range recs {
		if header(r, "messageId") == "a-0" {
			t.Fatal("the failed Send's record was delivered after it failed")
		}
	}
	if got := header(recs[1], "messageId"); got != "a-1" {
		t.Fatalf("second record %s", got)
	}
}
