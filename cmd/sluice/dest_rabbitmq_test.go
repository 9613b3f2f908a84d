package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// rabbitDest is the base config with a rabbitmq destination whose config
// block holds lines (indent 6).
// A missing key is reported at the block's line: lines starting "#<"
// mark it.
func rabbitDest(lines string) string {
	block := "    config:\n"
	if rest, ok := strings.CutPrefix(lines, "#<"); ok {
		block, lines = "    config: #<\n", rest
	}
	return withTop("") + "  - name: queue\n    type: rabbitmq\n" + block + lines
}

const rabbitBase = "      url: amqp://guest:guest@127.0.0.1:5672/\n      exchange: events\n"

func TestRabbitMQConfigErrors(t *testing.T) {
	const p = "destinations[2].config"
	for _, tc := range []struct{ name, lines, key, msg string }{
		{"no url", "#<      exchange: events\n", p + ".url", "needs a url"},
		{"bad url", "      url: http://h:5672/ #<\n      exchange: events\n", p + ".url", "want an amqp:// or amqps:// URL"},
		{"password kept out", "      url: amqp://u:s3cret@h:notaport/ #<\n      exchange: events\n", p + ".url", "xxxxx"},
		{"no exchange", "#<      url: amqp://127.0.0.1/\n", p + ".exchange", "needs an exchange"},
		{"unknown placeholder", rabbitBase + "      routing_key: '{source}.{user}' #<\n", p + ".routing_key", `unknown placeholder "{user}"`},
		{"unclosed placeholder", rabbitBase + "      routing_key: '{source' #<\n", p + ".routing_key", "unclosed"},
		{"reserved header", rabbitBase + "      headers:\n        source: x #<\n", p + ".headers.source", "other than source and type"},
		{"declare default exchange", "      url: amqp://127.0.0.1/\n      exchange: ''\n      declare_exchange: #<\n        type: direct\n", p + ".declare_exchange", "cannot be declared"},
		{"channels", rabbitBase + "      channels: 0 #<\n", p + ".channels", "must be positive"},
		{"message_bytes_max", rabbitBase + "      message_bytes_max: -1 #<\n", p + ".message_bytes_max", "must not be negative"},
		{"persistent", rabbitBase + "      persistent: sometimes #<\n", p + ".persistent", "want true or false"},
		{"unknown key", rabbitBase + "      routing: x #<\n", p + ".routing", "unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := refused(t, rabbitDest(tc.lines), tc.key, tc.msg)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the password is in the message: %v", err)
			}
		})
	}
}

func TestRabbitMQConfigDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(rabbitDest(rabbitBase + "      declare_exchange: {type: x-consistent-hash}\n")))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Destinations[2]
	c := d.typed.(*RabbitMQConfig)
	got := fmt.Sprint(d.BatchSize, c.RoutingKey, *c.Persistent, *c.Mandatory, c.Channels, c.MessageBytesMax,
		c.BlockedRetryAfter, c.DeclareExchange.Type, *c.DeclareExchange.Durable)
	want := fmt.Sprint(100, "{source}.{type}", true, true, 16, 0, 5*time.Second, "x-consistent-hash", true)
	if got != want {
		t.Errorf("defaults %s, want %s", got, want)
	}
}
