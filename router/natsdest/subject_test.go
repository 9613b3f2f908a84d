package natsdest

import (
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/sluice-cdi/sluice/router"
)

func TestTemplateSubjects(t *testing.T) {
	ev := func(source, typ, key, payload string) router.Event {
		return router.Event{Source: []byte(source), Type: []byte(typ), Key: []byte(key), Payload: []byte(payload)}
	}
	long := strings.Repeat("a", 100)
	for _, c := range []struct {
		tmpl string
		ev   router.Event
		want string
	}{
		{"events.{source}.{type}", ev("web", "track", "u1", `{}`), "events.web.track"},
		{"events.{event}", ev("web", "track", "u1", `{"event":"Order Completed"}`), "events.Order_Completed"},
		{"events.{event}", ev("web", "track", "u1", `{"event":"a.b*c>d"}`), "events.a_b_c_d"},
		{"events.{event}", ev("web", "page", "u1", `{"name":"Home"}`), "events.Home"},
		{"events.{event}", ev("web", "identify", "u1", `{"traits":{}}`), "events._"},
		{"events.{event}", ev("web", "track", "u1", `{"event":42}`), "events._"},
		{"events.{event}", ev("web", "track", "u1", `not json "event"`), "events._"},
		{"events.{event}", ev("web", "track", "u1", `{"event":"`+long+`"}`), "events." + long[:tokenBytesMax]},
		{"events.{event}", ev("web", "track", "u1", `{"event":"café"}`), "events.caf__"},
		{"e.{source}", ev("", "track", "u1", `{}`), "e._"},
		{"e.v1-{type}-x", ev("web", "track", "u1", `{}`), "e.v1-track-x"},
		{"e.{key_hash:1}", ev("web", "track", "anything", `{}`), "e.0"},
	} {
		tm, err := ParseTemplate(c.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", c.tmpl, err)
		}
		if got := string(tm.Subject(nil, &c.ev)); got != c.want {
			t.Errorf("%s with %s: %q, want %q", c.tmpl, c.ev.Payload, got, c.want)
		}
	}
}

func TestKeyHash(t *testing.T) {
	tm, err := ParseTemplate("p.{key_hash:16}")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, k := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"} {
		ev := router.Event{Key: []byte(k)}
		got := string(tm.Subject(nil, &ev))
		if want := "p." + itoa(xxhash.Sum64String(k)%16); got != want {
			t.Fatalf("key %s: %q, want %q", k, got, want)
		}
		if again := string(tm.Subject(nil, &ev)); again != got {
			t.Fatalf("key %s: %q then %q", k, got, again)
		}
		seen[got] = true
	}
	if len(seen) < 3 {
		t.Fatalf("8 keys spread over %d subjects of 16", len(seen))
	}
}

func itoa(v uint64) string {
	if v < 10 {
		return string(rune('0' + v))
	}
	return itoa(v/10) + string(rune('0'+v%10))
}

func TestTemplateRefused(t *testing.T) {
	for _, s := range []string{
		"", "events.", ".events", "a..b", "events.*", "events.>", "a b", "events.{nope}", "events.{type",
		"events.{key_hash:0}", "events.{key_hash:x}", "events.{key_hash:99999999}", "a}b",
	} {
		if _, err := ParseTemplate(s); err == nil {
			t.Errorf("template %q accepted", s)
		}
	}
}

func TestWildcard(t *testing.T) {
	for tmpl, want := range map[string]string{
		"events.{source}.{type}":  "events.*.*",
		"events.v1-{type}.x":      "events.*.x",
		"plain.subject":           "plain.subject",
		"{source}.{key_hash:4}.e": "*.*.e",
	} {
		tm, err := ParseTemplate(tmpl)
		if err != nil {
			t.Fatal(err)
		}
		if got := tm.Wildcard(); got != want {
			t.Errorf("%s: %q, want %q", tmpl, got, want)
		}
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, c := range []struct {
		filter, subject string
		want            bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{"*.b", "a.b", true},
		{"a.b.c", "a.b", false},
		{">", "x.y", true},
	} {
		if got := subjectMatches(c.filter, c.subject); got != c.want {
			t.Errorf("%s ~ %s: %v", c.filter, c.subject, got)
		}
	}
}

func TestSanitizeHeader(t *testing.T) {
	if got := sanitizeHeader([]byte("a\r\nb\x00c")); got != "a__b_c" {
		t.Fatalf("%q", got)
	}
	if got := sanitizeHeader([]byte("plain-id")); got != "plain-id" {
		t.Fatalf("%q", got)
	}
}
