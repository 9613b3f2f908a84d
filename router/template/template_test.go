package template

import (
	"strings"
	"testing"

	"github.com/sluice-cdi/sluice/router"
)

func TestTemplate(t *testing.T) {
	ev := &router.Event{Source: []byte("web"), Type: []byte("track"), Key: []byte("u/1"),
		Payload: []byte(`{"type":"track","event":"Order Done","userId":"u/1"}`)}
	all := []Field{Source, Type, Event, Key}
	for _, c := range []struct{ tmpl, want string }{
		{"x:{source}:{type}:{event}:y", "x:web:track:Order Done:y"},
		{"{key}", "u/1"},
		{"static", "static"},
		{"", ""},
	} {
		tm, err := Parse(c.tmpl, all...)
		if err != nil {
			t.Fatalf("%q: %v", c.tmpl, err)
		}
		if got := string(tm.Append(nil, ev, nil)); got != c.want {
			t.Errorf("%q renders %q, want %q", c.tmpl, got, c.want)
		}
		if tm.Static() != !strings.Contains(c.tmpl, "{") {
			t.Errorf("%q: Static %v", c.tmpl, tm.Static())
		}
	}
	tm, _ := Parse("a/{key}", Key)
	slash := func(dst, v []byte) []byte { return append(dst, strings.ReplaceAll(string(v), "/", "_")...) }
	if got := string(tm.Append(nil, ev, slash)); got != "a/u_1" {
		t.Errorf("escaped: %q", got)
	}
	noEvent := &router.Event{Payload: []byte(`{"type":"identify"}`)}
	if tm, _ := Parse("x.{event}", Event); string(tm.Append(nil, noEvent, nil)) != "x." {
		t.Error("an event without a name renders as empty")
	}
	for _, bad := range []string{"{nope}", "{source", "x{}", "{key}"} {
		if _, err := Parse(bad, Source, Type, Event); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
