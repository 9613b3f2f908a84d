package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisTarget is the conformance suite's Redis Streams service: the real
// Redis on 127.0.0.1:6379, a stream per run named after the track event
// ("sluiceconf:<id>:<event>"). The poison event is named so that its stream
// is a key that holds a string: Redis refuses its XADD with WRONGTYPE.
// Redis has no way to ask a client to slow down: no throttle phase.
type redisTarget struct {
	client *redis.Client
}

const redisConformAddr = "127.0.0.1:6379"

func newRedisTarget(t *testing.T) conformTarget {
	c := redis.NewClient(&redis.Options{Addr: redisConformAddr, MaxRetries: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Skipf("no redis at %s: %v", redisConformAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &redisTarget{client: c}
}

func (r *redisTarget) upstream(*testing.T) string { return redisConformAddr }

func (r *redisTarget) config(t *testing.T, id, addr string) string {
	t.Cleanup(func() {
		ctx := context.Background()
		iter := r.client.Scan(ctx, 0, "sluiceconf:"+id+":*", 1000).Iterator()
		for iter.Next(ctx) {
			r.client.Del(ctx, iter.Val())
		}
	})
	return fmt.Sprintf("type: redis\nconfig:\n  addr: %s\n  stream: \"sluiceconf:%s:{event}\"\n", addr, id)
}

func (r *redisTarget) received(t *testing.T, id string) ([]conformEvent, bool) {
	msgs, err := r.client.XRange(context.Background(), "sluiceconf:"+id+":Conformance Checked", "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE: %v", err)
	}
	out := make([]conformEvent, 0, len(msgs))
	for _, m := range msgs {
		var ev webhookEvent
		if s, _ := m.Values["event"].(string); json.Unmarshal([]byte(s), &ev) != nil {
			t.Fatalf("entry %s holds no event JSON: %v", m.ID, m.Values)
		}
		out = append(out, conformEvent{ID: ev.MessageID, User: ev.UserID})
	}
	return out, true
}

func (r *redisTarget) poison(t *testing.T, id string) (conformPoison, string) {
	if err := r.client.Set(context.Background(), "sluiceconf:"+id+":Poison", "not a stream", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	return conformPoison{edit: func(ev map[string]any) { ev["event"] = "Poison" }, says: "WRONGTYPE"}, ""
}
