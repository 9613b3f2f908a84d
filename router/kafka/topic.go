package kafka

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
)

// TopicBytesMax is the longest topic name Kafka accepts.
const TopicBytesMax = 249

// topicTemplate is a topic name with {source}, {type} and {event}
// placeholders, parsed once.
type topicTemplate struct {
	parts []topicPart
	fixed string // the whole name when there is no placeholder
	event bool   // some part needs the payload's event name
}

type topicPart struct {
	lit string
	ph  placeholder // 0: lit
}

type placeholder int

const (
	phNone placeholder = iota
	phSource
	phType
	phEvent
)

var placeholders = map[string]placeholder{"{source}": phSource, "{type}": phType, "{event}": phEvent}

// parseTopic checks a topic or topic template. The literal text must be
// legal in a Kafka topic name (letters, digits, '.', '_', '-'); a fixed
// name must also be at most TopicBytesMax long and not "." or "..".
func parseTopic(s string) (topicTemplate, error) {
	var t topicTemplate
	if s == "" {
		return t, fmt.Errorf("empty topic")
	}
	rest := s
	for rest != "" {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			i = len(rest)
		}
		if i > 0 {
			lit := rest[:i]
			if j := strings.IndexFunc(lit, func(r rune) bool { return !legalTopicByte(r) }); j >= 0 {
				return t, fmt.Errorf("topic %q: %q is not allowed in a topic name (letters, digits, '.', '_', '-' and the placeholders {source} {type} {event})", s, lit[j:j+1])
			}
			t.parts = append(t.parts, topicPart{lit: lit})
			rest = rest[i:]
			continue
		}
		j := strings.IndexByte(rest, '}')
		if j < 0 {
			return t, fmt.Errorf("topic %q: unclosed placeholder %q", s, rest)
		}
		ph, ok := placeholders[rest[:j+1]]
		if !ok {
			return t, fmt.Errorf("topic %q: unknown placeholder %q (want {source}, {type} or {event})", s, rest[:j+1])
		}
		t.parts = append(t.parts, topicPart{ph: ph})
		t.event = t.event || ph == phEvent
		rest = rest[j+1:]
	}
	if len(t.parts) == 1 && t.parts[0].ph == phNone {
		t.fixed = s
		switch {
		case len(s) > TopicBytesMax:
			return t, fmt.Errorf("topic %q is %d bytes long; Kafka allows %d", s, len(s), TopicBytesMax)
		case s == "." || s == "..":
			return t, fmt.Errorf("topic %q is not a legal name", s)
		}
	}
	return t, nil
}

func legalTopicByte(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

// topic is the event's topic: the fixed name, or the template with each
// placeholder's value sanitized (every byte not legal in a topic name
// becomes '_'; an empty value is "_"), cut to TopicBytesMax.
func (t *topicTemplate) topic(ev *router.Event, buf []byte) ([]byte, string) {
	if t.fixed != "" {
		return buf, t.fixed
	}
	start := len(buf)
	var name string
	if t.event {
		name = eventName(ev)
	}
	for _, p := range t.parts {
		switch p.ph {
		case phNone:
			buf = append(buf, p.lit...)
		case phSource:
			buf = appendSanitized(buf, ev.Source)
		case phType:
			buf = appendSanitized(buf, ev.Type)
		case phEvent:
			buf = appendSanitized(buf, []byte(name))
		}
	}
	out := buf[start:]
	if len(out) > TopicBytesMax {
		out = out[:TopicBytesMax]
	}
	if s := string(out); s != "." && s != ".." {
		return buf[:start], s
	}
	return buf[:start], strings.Repeat("_", len(out))
}

// appendSanitized appends v with each byte not legal in a topic name
// replaced by '_' (a multi-byte character becomes one '_' per byte).
func appendSanitized(buf, v []byte) []byte {
	if len(v) == 0 {
		return append(buf, '_')
	}
	for _, c := range v {
		if !legalTopicByte(rune(c)) {
			c = '_'
		}
		buf = append(buf, c)
	}
	return buf
}

// eventName is a track event's name ("event"), else a page or screen's
// "name", else the event's type.
func eventName(ev *router.Event) string {
	var p struct {
		Event string `json:"event"`
		Name  string `json:"name"`
	}
	_ = json.Unmarshal(ev.Payload, &p) // a stored event is valid JSON; if not, the type stands
	switch {
	case p.Event != "":
		return p.Event
	case p.Name != "":
		return p.Name
	}
	return string(ev.Type)
}

// CheckTopic checks a topic name or template as Config.Topic takes it.
func CheckTopic(s string) error {
	_, err := parseTopic(s)
	return err
}
