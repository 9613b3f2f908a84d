package rabbitmq

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
)

// RoutingKeyBytesMax is AMQP's limit on a routing key (a short string).
const RoutingKeyBytesMax = 255

// Template is a parsed routing key template: literal text with the
// placeholders {source}, {type}, {event} and {key} (the ordering key:
// userId or anonymousId, for consistent-hash exchanges).
type Template struct {
	parts []part
	event bool // some part is {event}: the payload must be read
}

type part struct {
	lit   string
	field field
}

type field uint8

const (
	fieldLit field = iota
	fieldSource
	fieldType
	fieldEvent
	fieldKey
)

var fields = map[string]field{"source": fieldSource, "type": fieldType, "event": fieldEvent, "key": fieldKey}

// ParseTemplate parses a routing key template. A '{' must open one of the
// placeholders; there is no escape (routing keys rarely need braces).
func ParseTemplate(s string) (Template, error) {
	var t Template
	for s != "" {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			t.parts = append(t.parts, part{lit: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, part{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return Template{}, fmt.Errorf("unclosed %q: want one of {source} {type} {event} {key}", s[i:])
		}
		f, ok := fields[s[i+1:i+j]]
		if !ok {
			return Template{}, fmt.Errorf("unknown placeholder %q: want one of {source} {type} {event} {key}", s[i:i+j+1])
		}
		t.parts = append(t.parts, part{field: f})
		t.event = t.event || f == fieldEvent
		s = s[i+j+1:]
	}
	return t, nil
}

// Static reports whether the template has no placeholder: its key is the
// same for every event.
func (t Template) Static() bool {
	for _, p := range t.parts {
		if p.field != fieldLit {
			return false
		}
	}
	return true
}

// Append appends the routing key of ev to dst. {event} is the payload's
// "event" member (a track event's name), empty when it has none.
func (t Template) Append(dst []byte, ev *router.Event) []byte {
	for _, p := range t.parts {
		switch p.field {
		case fieldLit:
			dst = append(dst, p.lit...)
		case fieldSource:
			dst = append(dst, ev.Source...)
		case fieldType:
			dst = append(dst, ev.Type...)
		case fieldEvent:
			dst = append(dst, eventName(ev.Payload)...)
		case fieldKey:
			dst = append(dst, ev.Key...)
		}
	}
	return dst
}

// eventName is the payload's top-level "event" string, or "".
func eventName(payload []byte) string {
	var v struct {
		Event string `json:"event"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	return v.Event
}
