package rabbitmq

import (
	"testing"

	"github.com/sluice-cdi/sluice/router"
)

func TestTemplate(t *testing.T) {
	ev := &router.Event{Source: []byte("web"), Type: []byte("track"), Key: []byte("user-1"),
		Payload: []byte(`{"type":"track","properties":{"event":"nested"},"event":"Order Completed"}`)}
	for _, c := range []struct{ tmpl, want string }{
		{"{source}.{type}", "web.track"},
		{"{key}", "user-1"},
		{"events.{event}", "events.Order Completed"},
		{"static", "static"},
		{"", ""},
		{"{type}-{type}", "track-track"},
	} {
		tm, err := ParseTemplate(c.tmpl)
		if err != nil {
			t.Fatalf("%q: %v", c.tmpl, err)
		}
		if got := string(tm.Append(nil, ev, nil)); got != c.want {
			t.Errorf("%q: got %q, want %q", c.tmpl, got, c.want)
		}
		if static := tm.Static(); static != (c.tmpl == "static" || c.tmpl == "") {
			t.Errorf("%q: static %v", c.tmpl, static)
		}
	}
	noEvent := &router.Event{Payload: []byte(`{"type":"identify"}`)}
	if tm, _ := ParseTemplate("x.{event}"); string(tm.Append(nil, noEvent, nil)) != "x." {
		t.Errorf("identify: %q", tm.Append(nil, noEvent, nil))
	}
	for _, bad := range []string{"{user}", "{source", "a.{}.b", "{SOURCE}"} {
		if _, err := ParseTemplate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
