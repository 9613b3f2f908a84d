package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// kafkaDoc is a valid config with one kafka destination whose config block
// holds conf (indent 6); "#<" marks the line an error must name.
// A conf starting with "#<" marks the config: line itself.
func kafkaDoc(conf string) string {
	mark := ""
	if rest, ok := strings.CutPrefix(conf, "#<\n"); ok {
		mark, conf = " #<", rest
	}
	return cfgHead + "destinations:\n  - name: bus\n    type: kafka\n    config:" + mark + "\n" + conf
}

const kafkaBase = "      brokers: [127.0.0.1:9092]\n      topic: events\n"

// TestKafkaConfigRefusesBadValues: each bad value of a kafka block is
// refused with its key and line.
func TestKafkaConfigRefusesBadValues(t *testing.T) {
	for _, tc := range []struct{ name, conf, key, msg string }{
		{"no brokers", "#<\n      topic: events\n", "destinations[0].config.brokers", "needs brokers"},
		{"broker without port", "      brokers: [localhost] #<\n      topic: events\n", "destinations[0].config.brokers[0]", `want host:port, got "localhost"`},
		{"no topic", "#<\n      brokers: [127.0.0.1:9092]\n", "destinations[0].config.topic", "needs a topic"},
		{"illegal topic", "      brokers: [127.0.0.1:9092]\n      topic: 'my events' #<\n", "destinations[0].config.topic", `" " is not allowed`},
		{"unknown placeholder", "      brokers: [127.0.0.1:9092]\n      topic: ev.{user} #<\n", "destinations[0].config.topic", `unknown placeholder "{user}"`},
		{"compression", kafkaBase + "      compression: brotli #<\n", "destinations[0].config.compression", "want one of zstd, lz4, snappy, gzip, none"},
		{"linger", kafkaBase + "      linger: -1ms #<\n", "destinations[0].config.linger", "must not be negative"},
		{"record bytes", kafkaBase + "      record_bytes_max: 100 #<\n", "destinations[0].config.record_bytes_max", "want 512 to"},
		{"buffer under record", kafkaBase + "      record_bytes_max: 2000000\n      buffer_bytes_max: 1000000 #<\n", "destinations[0].config.buffer_bytes_max", "at least record_bytes_max"},
		{"sasl mechanism", kafkaBase + "      sasl:\n        mechanism: kerberos #<\n        username: u\n        password: p\n", "destinations[0].config.sasl.mechanism", "want one of plain, scram-sha-256, scram-sha-512"},
		{"sasl password", kafkaBase + "      sasl: #<\n        mechanism: plain\n        username: u\n", "destinations[0].config.sasl.password", "needs a password"},
		{"tls ca", kafkaBase + "      tls:\n        ca_file: /nonexistent/ca.pem #<\n", "destinations[0].config.tls.ca_file", "cannot read"},
		{"tls key alone", kafkaBase + "      tls: #<\n        key_file: k.pem\n", "destinations[0].config.tls.cert_file", "go together"},
		{"unknown key", kafkaBase + "      acks: 1 #<\n", "destinations[0].config.acks", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused(t, kafkaDoc(tc.conf), tc.key, tc.msg)
		})
	}
}

// TestKafkaConfigDefaults: a minimal kafka block comes out complete.
func TestKafkaConfigDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(kafkaDoc(kafkaBase)))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Destinations[0]
	k := d.typed.(*KafkaConfig)
	got := fmt.Sprint(d.BatchSize, k.ClientID, k.Compression, k.Linger, k.RecordBytesMax, k.BufferBytesMax, k.RecordRetries)
	want := fmt.Sprint(100, "sluice", "zstd", time.Millisecond, 1_000_012, 64<<20, 10)
	if got != want {
		t.Fatalf("defaults %s, want %s", got, want)
	}
	dest, err := d.typed.build(&d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	dest.Close()
}
