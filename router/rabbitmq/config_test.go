package rabbitmq

import (
	"strings"
	"testing"
)

func TestNewChecksConfig(t *testing.T) {
	ok := "amqp://guest:guest@127.0.0.1:5672/"
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"url", Config{URL: "http://h/"}, "url"},
		{"password kept out", Config{URL: "amqp://u:s3cret@h:port/"}, "url"},
		{"template", Config{URL: ok, RoutingKey: "{nope}"}, "unknown placeholder"},
		{"channels", Config{URL: ok, Channels: -1}, "channels"},
		{"size", Config{URL: ok, MessageBytesMax: -1}, "message_bytes_max"},
		{"declare default", Config{URL: ok, Declare: &Declare{Type: "topic"}}, "cannot be declared"},
		{"declare type", Config{URL: ok, Exchange: "x", Declare: &Declare{}}, "needs a type"},
		{"header", Config{URL: ok, Headers: map[string]string{"type": "x"}}, "header name"},
	} {
		_, err := New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: %v, want an error about %s", c.name, err, c.want)
		}
	}
	d, err := New(Config{URL: ok})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.RoutingKey != "{source}.{type}" || d.cfg.Channels != 16 || d.cfg.Name != "sluice" || d.cfg.Transient || d.cfg.NotMandatory {
		t.Errorf("defaults %+v", d.cfg)
	}
}
