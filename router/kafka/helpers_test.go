package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluice-cdi/sluice/router"
)

// cluster is what the shared tests need of a Kafka cluster: kfake, or a
// real one named by SLUICE_KAFKA_BROKERS.
type cluster struct {
	addrs []string
	fake  *kfake.Cluster // nil for a real cluster
}

// topicSeq makes topic names unique across tests and runs.
var topicSeq atomic.Int64

// newFake starts a kfake cluster of n brokers with the topics given (each
// with parts partitions); it is closed with the test.
func newFake(t testing.TB, n int, parts int32, topics ...string) *cluster {
	t.Helper()
	opts := []kfake.Opt{kfake.NumBrokers(n)}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(parts, topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &cluster{addrs: c.ListenAddrs(), fake: c}
}

// realCluster is the cluster SLUICE_KAFKA_BROKERS names (comma separated),
// or skips the test.
func realCluster(t *testing.T) *cluster {
	t.Helper()
	v := os.Getenv("SLUICE_KAFKA_BROKERS")
	if v == "" {
		t.Skip("SLUICE_KAFKA_BROKERS is not set: no real Kafka cluster to test against")
	}
	return &cluster{addrs: strings.Split(v, ",")}
}

// topic makes a unique topic of parts partitions, deleted with the test
// on a real cluster (kfake's go with it).
func (c *cluster) topic(t testing.TB, prefix string, parts int32) string {
	t.Helper()
	name := uniqueName(prefix)
	c.createNamed(t, name, parts)
	return name
}

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, topicSeq.Add(1))
}

// createNamed creates the topic.
func (c *cluster) createNamed(t testing.TB, name string, parts int32) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = name, parts, -1
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30000
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("cannot create topic %s: %v", name, err)
	}
	if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil {
		t.Fatalf("cannot create topic %s: %v", name, err)
	}
	if c.fake == nil {
		t.Cleanup(func() { c.deleteTopic(name) })
	}
}

func (c *cluster) deleteTopic(name string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.addrs...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrDeleteTopicsRequest()
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = kmsg.StringPtr(name)
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30000
	_, _ = req.RequestWith(ctx, cl)
}

// dest makes a destination on the cluster, closed with the test.
func (c *cluster) dest(t testing.TB, cfg Config) *Kafka {
	t.Helper()
	cfg.Brokers = c.addrs
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	k, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// payload is a test event's JSON: the key and the event's number within
// its key.
type payload struct {
	Type        string `json:"type"`
	Event       string `json:"event,omitempty"`
	AnonymousID string `json:"anonymousId"`
	N           int    `json:"n"`
	Pad         string `json:"pad,omitempty"`
}

// makeEvents is keys × perKey events in log order (round robin over keys).
func makeEvents(keys, perKey int) []router.Event {
	var evs []router.Event
	for n := range perKey {
		for k := range keys {
			evs = append(evs, event(fmt.Sprintf("user-%d", k), n, "track"))
		}
	}
	return evs
}

func event(key string, n int, typ string) router.Event {
	body, _ := json.Marshal(payload{Type: typ, Event: "Order Completed", AnonymousID: key, N: n})
	return router.Event{
		Seq:        uint64(n),
		MessageID:  fmt.Appendf(nil, "%s-%d", key, n),
		Key:        []byte(key),
		Type:       []byte(typ),
		Source:     []byte("web"),
		ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano() + int64(n)*int64(time.Millisecond),
		Payload:    body,
	}
}

// sendAll delivers events as a router would: workers many senders, each
// owning the keys that hash to it, send batches of at most size events in
// log order, one at a time, retrying a failed batch (the whole batch, or
// the events a partial answer names as retryable) until it is taken.
// Refused events are returned.
func sendAll(t testing.TB, d router.Destination, events []router.Event, workers, size int, during func(round int)) (refused []router.Event) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var rounds atomic.Int64
	for w := range workers {
		var mine []router.Event
		for _, ev := range events {
			if int(fnv(ev.Key))%workers == w {
				mine = append(mine, ev)
			}
		}
		wg.Go(func() {
			for len(mine) > 0 {
				b := mine[:min(size, len(mine))]
				mine = mine[len(b):]
				for tries := 0; len(b) > 0; tries++ {
					if tries > 50 {
						t.Errorf("a batch failed 50 times")
						return
					}
					if during != nil {
						during(int(rounds.Add(1)))
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					res := d.Send(ctx, b)
					cancel()
					var again []router.Event
					switch {
					case res.Pause:
						t.Errorf("paused: %v", res.Err)
						return
					case res.Err != nil:
						again = b
					case len(res.Rejected) > 0:
						for _, r := range res.Rejected {
							if r.Status >= 500 {
								again = append(again, b[r.Index])
							} else {
								mu.Lock()
								refused = append(refused, b[r.Index])
								mu.Unlock()
							}
						}
					case res.Status >= 400:
						mu.Lock()
						refused = append(refused, b...)
						mu.Unlock()
					}
					b = again
				}
			}
		})
	}
	wg.Wait()
	return refused
}

func fnv(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// consume reads every record of the topics until want records arrived (or
// fails the test after a minute).
func (c *cluster) consume(t testing.TB, want int, topics ...string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.addrs...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []*kgo.Record
	for len(out) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d records of %d within a minute", len(out), want)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		out = append(out, fs.Records()...)
	}
	return out
}

// checkDelivered checks that every event arrived, each key in one
// partition, in log order: the first copy of each event of a key comes
// after the first copy of the key's earlier events (a retried batch may
// leave duplicates, never an inversion). It returns the duplicates.
func checkDelivered(t testing.TB, recs []*kgo.Record, events []router.Event) (dups int) {
	t.Helper()
	type kp struct {
		topic string
		part  int32
	}
	partOf := map[string]kp{}
	seen := map[string]bool{}
	next := map[string]int{} // per key: the next event number expected first
	for _, r := range recs {
		var p payload
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("record value %q: %v", r.Value, err)
		}
		key := string(r.Key)
		if p.AnonymousID != key {
			t.Fatalf("record key %q holds an event of %q", key, p.AnonymousID)
		}
		if at, ok := partOf[key+"/"+r.Topic]; ok && at.part != r.Partition {
			t.Fatalf("key %s in partitions %d and %d of %s", key, at.part, r.Partition, r.Topic)
		}
		partOf[key+"/"+r.Topic] = kp{r.Topic, r.Partition}
		id := fmt.Sprintf("%s-%d", key, p.N)
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		if p.N != next[key] {
			t.Fatalf("key %s: event %d arrived first after event %d (want %d next)", key, p.N, next[key]-1, next[key])
		}
		next[key]++
		if h := header(r, "messageId"); h != id {
			t.Fatalf("record %s: messageId header %q", id, h)
		}
	}
	for _, ev := range events {
		if id := string(ev.MessageID); !seen[id] {
			t.Fatalf("event %s never arrived", id)
		}
	}
	return dups
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
