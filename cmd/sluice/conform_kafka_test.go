package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// kafkaTarget is the conformance suite's Kafka: no broker can be installed
// here, so it is franz-go's in-process cluster (kfake), one broker, which
// the sluice binary reaches over 127.0.0.1.
//
// The proxy: a Kafka client dials the seed brokers only to learn the
// cluster's brokers, then dials the addresses the metadata advertises. A
// proxy in front of the seed alone would see only the metadata requests;
// the produce traffic would go straight to the broker and the outage and
// stall phases would test nothing. So the broker advertises the proxy's
// address: kfake takes its listener from ListenFn and advertises that
// listener's Addr(), so the target hands it a listener that accepts on a
// real port (the proxy's upstream) and names the proxy's address once the
// suite has started the proxy (config). Every byte sluice exchanges with
// the broker then crosses the proxy. The target's own consumer dials the
// broker directly (its dialer maps the proxy's address to the real one),
// so it reads what the broker holds while the proxy is cut or stalled.
//
// Poison: the broker's message.max.bytes is 8 KiB and the destination's
// record_bytes_max mirrors it (as README says to set it), so a record of
// more than 8 KiB is refused with Kafka's MESSAGE_TOO_LARGE; the client
// checks it before sending, so the record is refused alone and never shares
// a refused batch with other users' events.
//
// Throttle: skipped. A Kafka broker throttles a producer by delaying its
// answers (throttle_time_ms, quotas), which the client honours inside; it
// never refuses a record for it, so there is nothing for sluice to see.
type kafkaTarget struct {
	fake     *kfake.Cluster
	real     string                 // the broker's own listening address
	adv      atomic.Pointer[string] // the address it advertises (the proxy's)
	consumer *kgo.Client

	mu   sync.Mutex
	held []conformEvent
}

// kafkaMessageBytesMax is the broker's message.max.bytes in the suite.
const kafkaMessageBytesMax = 8192

func newKafkaTarget(t *testing.T) conformTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &kafkaTarget{real: ln.Addr().String()}
	k.fake, err = kfake.NewCluster(kfake.NumBrokers(1),
		kfake.ListenFn(func(string, string) (net.Listener, error) { return &advertised{Listener: ln, as: &k.adv}, nil }),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": fmt.Sprint(kafkaMessageBytesMax)}))
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(k.fake.Close)
	return k
}

// advertised is a listener that names another address (the proxy's) once
// it is set.
type advertised struct {
	net.Listener
	as *atomic.Pointer[string]
}

func (a *advertised) Addr() net.Addr {
	if s := a.as.Load(); s != nil {
		if addr, err := net.ResolveTCPAddr("tcp", *s); err == nil {
			return addr
		}
	}
	return a.Listener.Addr()
}

func (k *kafkaTarget) upstream(*testing.T) string { return k.real }

func (k *kafkaTarget) config(t *testing.T, id, addr string) string {
	k.adv.Store(&addr)
	k.checkAdvertised(t, addr)
	k.createTopic(t, id)
	k.consume(t, id, addr)
	return fmt.Sprintf("type: kafka\nconfig:\n  brokers: [%s]\n  topic: %s\n  record_bytes_max: %d\n  linger: 2ms\n",
		addr, id, kafkaMessageBytesMax)
}

// dialer dials the broker directly, even where the metadata names the
// proxy.
func (k *kafkaTarget) dialer(proxy string) kgo.Opt {
	var d net.Dialer
	return kgo.Dialer(func(ctx context.Context, network, host string) (net.Conn, error) {
		if host == proxy {
			host = k.real
		}
		return d.DialContext(ctx, network, host)
	})
}

// checkAdvertised checks that the broker's metadata names the proxy, so
// that sluice's produce traffic crosses it.
func (k *kafkaTarget) checkAdvertised(t *testing.T, proxy string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.real), k.dialer(proxy))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	for _, b := range resp.Brokers {
		if got := net.JoinHostPort(b.Host, fmt.Sprint(b.Port)); got != proxy {
			t.Fatalf("the broker advertises %s, not the proxy's %s: produce traffic would bypass the proxy", got, proxy)
		}
	}
}

func (k *kafkaTarget) createTopic(t *testing.T, topic string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.real))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 4, 1
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("cannot create topic %s: %v", topic, err)
	}
}

// consume reads the topic from the start into held until the test ends.
func (k *kafkaTarget) consume(t *testing.T, topic, proxy string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.real), k.dialer(proxy), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			var evs []conformEvent
			fs.EachRecord(func(r *kgo.Record) {
				var v struct {
					UserID string `json:"userId"`
				}
				_ = json.Unmarshal(r.Value, &v)
				id := ""
				for _, h := range r.Headers {
					if h.Key == "messageId" {
						id = string(h.Value)
					}
				}
				evs = append(evs, conformEvent{ID: id, User: v.UserID})
			})
			k.mu.Lock()
			k.held = append(k.held, evs...)
			k.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cl.Close()
	})
}

// received is what the topic holds, in partition order (a user's events
// are in one partition).
func (k *kafkaTarget) received(*testing.T, string) ([]conformEvent, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]conformEvent(nil), k.held...), true
}

func (k *kafkaTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{
		edit: func(ev map[string]any) {
			ev["properties"].(map[string]any)["blob"] = strings.Repeat("x", kafkaMessageBytesMax+100)
		},
		says: "MESSAGE_TOO_LARGE",
	}, ""
}
