package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// natsDoc is a config with one nats destination whose config block holds
// block (indent 6); a bad line is marked "#<", and a missing key's is
// the config line.
func natsDoc(block string) string {
	mark := ""
	if !strings.Contains(block, "#<") {
		mark = " #<"
	}
	return cfgHead + "destinations:\n  - name: bus\n    type: nats\n    config:" + mark + "\n" + block
}

// TestNATSConfigRefusesBadValues: each bad value names its key and line.
func TestNATSConfigRefusesBadValues(t *testing.T) {
	const subj = "      subject: events.{type}\n"
	const u = "      url: nats://127.0.0.1:4222\n"
	for _, tc := range []struct{ name, block, key, msg string }{
		{"no url", subj + "      stream: S\n", "destinations[0].config.url", "needs a url"},
		{"bad url scheme", "      url: http://h:1 #<\n" + subj, "destinations[0].config.url", "want nats://host:port"},
		{"url block", "      url: {a: b} #<\n" + subj, "destinations[0].config.url", "want a URL or a list"},
		{"no subject", u + "      stream: S\n", "destinations[0].config.subject", "needs a subject"},
		{"bad placeholder", u + "      subject: events.{nope} #<\n", "destinations[0].config.subject", "unknown placeholder {nope}"},
		{"wildcard subject", u + "      subject: events.* #<\n", "destinations[0].config.subject", "wildcards"},
		{"bad key hash", u + "      subject: e.{key_hash:0} #<\n", "destinations[0].config.subject", "{key_hash:N}"},
		{"bad stream name", u + subj + "      stream: a.b #<\n", "destinations[0].config.stream", "want a stream name"},
		{"create without name", u + subj + "      create_stream: {replicas: 3} #<\n", "destinations[0].config.create_stream", "needs a stream name"},
		{"create name differs", u + subj + "      stream: A\n      create_stream:\n        name: B #<\n", "destinations[0].config.create_stream.name", `"B" differs from stream "A"`},
		{"replicas", u + subj + "      stream: A\n      create_stream:\n        replicas: 7 #<\n", "destinations[0].config.create_stream.replicas", "want 1 to 5"},
		{"storage", u + subj + "      stream: A\n      create_stream:\n        storage: tape #<\n", "destinations[0].config.create_stream.storage", "want file or memory"},
		{"dup window", u + subj + "      stream: A\n      create_stream:\n        duplicate_window: -1s #<\n", "destinations[0].config.create_stream.duplicate_window", "must not be negative"},
		{"bad filter", u + subj + "      stream: A\n      create_stream:\n        subjects: [a.>.b] #<\n", "destinations[0].config.create_stream.subjects[0]", "not a subject filter"},
		{"user and token", u + subj + "      user: a\n      token: t #<\n", "destinations[0].config.token", "exclusive"},
		{"password alone", u + subj + "      password: p #<\n", "destinations[0].config.password", "needs a user"},
		{"creds missing", u + subj + "      creds_file: /nonexistent/x.creds #<\n", "destinations[0].config.creds_file", "cannot read"},
		{"max pending", u + subj + "      max_pending: 0 #<\n", "destinations[0].config.max_pending", "must be positive"},
		{"unknown key", u + subj + "      subjekt: x #<\n", "destinations[0].config.subjekt", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused(t, natsDoc(tc.block), tc.key, tc.msg)
		})
	}
}

// TestNATSConfigDefaults: url as a list or comma-separated, defaults
// filled, create_stream's name taken as the stream's.
func TestNATSConfigDefaults(t *testing.T) {
	for _, url := range []string{
		"[nats://127.0.0.1:4222, '127.0.0.1:4223']",
		"nats://127.0.0.1:4222,127.0.0.1:4223",
	} {
		doc := natsDoc("      url: " + url + "\n      subject: events.{source}.{type}\n      create_stream: {name: EV}\n")
		cfg, err := parseConfig([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		d := cfg.Destinations[0]
		c := d.typed.(*NATSConfig)
		if want := []string{"nats://127.0.0.1:4222", "nats://127.0.0.1:4223"}; !reflect.DeepEqual(c.urls, want) {
			t.Fatalf("urls %q", c.urls)
		}
		cs := c.CreateStream
		if c.Stream != "EV" || c.MaxPending != 4096 || c.ConnectTimeout != 5*time.Second || d.BatchSize != 100 ||
			cs.Replicas != 1 || cs.DuplicateWindow != 2*time.Minute || cs.Storage != "file" {
			t.Fatalf("config %+v, stream %+v, batch %d", c, cs, d.BatchSize)
		}
	}
}
