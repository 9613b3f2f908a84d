package kafka

import (
	"strings"
	"testing"

	"github.com/sluice-cdi/sluice/router"
)

// TestTopicTemplate: placeholders take the event's source, type and event
// name, sanitized to legal topic characters and cut to Kafka's length.
func TestTopicTemplate(t *testing.T) {
	ev := func(source, typ, payload string) *router.Event {
		return &router.Event{Source: []byte(source), Type: []byte(typ), Payload: []byte(payload)}
	}
	for _, tc := range []struct {
		tmpl string
		ev   *router.Event
		want string
	}{
		{"events", ev("web", "track", `{}`), "events"},
		{"ev.{source}.{type}", ev("web", "track", `{}`), "ev.web.track"},
		{"ev.{event}", ev("web", "track", `{"event":"Order Completed"}`), "ev.Order_Completed"},
		{"ev.{event}", ev("web", "page", `{"name":"Home/Pricing"}`), "ev.Home_Pricing"},
		{"ev.{event}", ev("web", "identify", `{"traits":{}}`), "ev.identify"},
		{"ev.{event}", ev("web", "track", `{"event":"Café"}`), "ev.Caf__"}, // é is two bytes
		{"{source}", ev("", "track", `{}`), "_"},
		{"{event}", ev("web", "track", `{"event":"."}`), "_"},
		{"{event}", ev("web", "track", `{"event":"`+strings.Repeat("a", 300)+`"}`), strings.Repeat("a", TopicBytesMax)},
	} {
		tt, err := parseTopic(tc.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tc.tmpl, err)
		}
		if _, got := tt.topic(tc.ev, nil); got != tc.want {
			t.Errorf("%s with %s: %q, want %q", tc.tmpl, tc.ev.Payload, got, tc.want)
		}
	}
	for _, bad := range []string{"", "a b", "ev.{user}", "ev.{type", ".", "..", strings.Repeat("x", 250), "ev/x"} {
		if _, err := parseTopic(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
