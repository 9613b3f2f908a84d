package main

import (
	"strings"
	"testing"
	"time"
)

// queueDests is a valid config with a redis and an mqtt destination; each
// case adds lines to one of their config blocks (indent 6).
func queueDests(redisLines, mqttLines string) string {
	return cfgHead + `destinations:
  - name: stream
    type: redis
    config:
      stream: "events:{source}:{type}"
` + redisLines + `  - name: iot
    type: mqtt
    config:
      broker: tcp://127.0.0.1:1883
      topic: "sluice/{type}/{event}"
` + mqttLines
}

// swap is queueDests("", "") with one line's text replaced.
func swap(old, line string) string { return strings.Replace(queueDests("", ""), old, line, 1) }

func TestConfigRedisMQTTBadValues(t *testing.T) {
	if _, err := parseConfig([]byte(queueDests("", ""))); err != nil {
		t.Fatalf("the base config is refused: %v", err)
	}
	r, m := "destinations[0].config.", "destinations[1].config."
	for _, tc := range []struct{ name, doc, key, msg string }{
		{"redis addr", queueDests("      addr: localhost #<\n", ""), r + "addr", `want host:port, got "localhost"`},
		{"redis stream placeholder", swap(`stream: "events:{source}:{type}"`, `stream: "a:{user}" #<`), r + "stream", `unknown placeholder "{user}"`},
		{"redis max_len", queueDests("      max_len: -1 #<\n", ""), r + "max_len", "must not be negative"},
		{"redis db", queueDests("      db: -2 #<\n", ""), r + "db", "must not be negative"},
		{"redis dedup_window", queueDests("      dedup_window: 0s #<\n", ""), r + "dedup_window", "must be positive"},
		{"redis conns", queueDests("      conns: 0 #<\n", ""), r + "conns", "must be positive"},
		{"redis unknown key", queueDests("      maxlen: 5 #<\n", ""), r + "maxlen", ""},
		{"mqtt qos 0", queueDests("", "      qos: 0 #<\n"), m + "qos", "QoS 0 has no acknowledgement"},
		{"mqtt qos 3", queueDests("", "      qos: 3 #<\n"), m + "qos", "want 1"},
		{"mqtt wildcard", swap(`topic: "sluice/{type}/{event}"`, `topic: "a/#" #<`), m + "topic", "wildcard"},
		{"mqtt broker", swap("broker: tcp://127.0.0.1:1883", "broker: http://x:1 #<"), m + "broker", "want tcp://"},
		{"mqtt max_inflight", queueDests("", "      max_inflight: 70000 #<\n"), m + "max_inflight", "at most 65535"},
		{"mqtt client_id", queueDests("", "      client_id: \"\" #<\n"), m + "client_id", "must not be empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused(t, tc.doc, tc.key, tc.msg)
		})
	}
}

func TestConfigMQTTClientIDShared(t *testing.T) {
	doc := queueDests("", "      client_id: one\n") + `  - name: iot2
    type: mqtt
    config:
      broker: tcp://127.0.0.1:1883
      topic: t
      client_id: one #<
`
	_, err := parseConfig([]byte(doc))
	if err == nil || !strings.Contains(err.Error(), "also used by destinations[1]") {
		t.Fatalf("two destinations with one client id: %v", err)
	}
}

func TestConfigRedisMQTTDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(queueDests("", "")))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Destinations[0].typed.(*RedisConfig)
	m := cfg.Destinations[1].typed.(*MQTTConfig)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"redis batch", cfg.Destinations[0].BatchSize, 100},
		{"redis addr", r.Addr, "127.0.0.1:6379"},
		{"redis dedup", [2]any{r.Idempotent, r.DedupWindow}, [2]any{false, 10 * time.Minute}},
		{"redis trimming", r.MaxLen, int64(0)},
		{"mqtt batch", cfg.Destinations[1].BatchSize, 100},
		{"mqtt qos", m.QoS, 1},
		{"mqtt retain", m.Retain, false},
		{"mqtt clean session", *m.CleanSession, true},
		{"mqtt in flight", m.MaxInflight, 1024},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}
