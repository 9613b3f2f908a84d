// Package template renders a destination's names (a stream, a topic, a
// routing key) from each event: literal text with the placeholders
// {source}, {type}, {event} (a track event's name, empty for other types)
// and, where a destination allows it, {key} (the ordering key).
package template

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
)

// Field is what a placeholder stands for.
type Field uint8

// The placeholders.
const (
	literal Field = iota
	Source        // {source}: the source's name
	Type          // {type}: the event type
	Event         // {event}: the payload's "event" (a track's name), "" when none
	Key           // {key}: the ordering key (anonymousId, else userId)
)

var names = map[string]Field{"source": Source, "type": Type, "event": Event, "key": Key}

func (f Field) String() string {
	for n, g := range names {
		if g == f {
			return "{" + n + "}"
		}
	}
	return "literal"
}

// Template is a parsed template. The zero value renders "".
type Template struct {
	parts []part
	event bool // some part is {event}: the payload is read
}

type part struct {
	lit   string
	field Field
}

// Parse parses s, which may use the placeholders in allowed. A '{' must
// open one of them; there is no escape.
func Parse(s string, allowed ...Field) (Template, error) {
	var want []string
	for _, f := range allowed {
		want = append(want, f.String())
	}
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
			return Template{}, fmt.Errorf("unclosed %q: want one of %s", s[i:], strings.Join(want, " "))
		}
		f, ok := names[s[i+1:i+j]]
		if !ok || !contains(allowed, f) {
			return Template{}, fmt.Errorf("unknown placeholder %q: want one of %s", s[i:i+j+1], strings.Join(want, " "))
		}
		t.parts = append(t.parts, part{field: f})
		t.event = t.event || f == Event
		s = s[i+j+1:]
	}
	return t, nil
}

func contains(fs []Field, f Field) bool {
	for _, g := range fs {
		if g == f {
			return true
		}
	}
	return false
}

// Static reports whether the template has no placeholder: it renders the
// same for every event.
func (t Template) Static() bool {
	for _, p := range t.parts {
		if p.field != literal {
			return false
		}
	}
	return true
}

// Append appends ev's rendering to dst. escape, if not nil, appends a
// placeholder's value in place of a plain append (to keep it one topic
// level, say).
func (t Template) Append(dst []byte, ev *router.Event, escape func(dst, v []byte) []byte) []byte {
	var event []byte
	if t.event {
		event = []byte(EventName(ev.Payload))
	}
	for _, p := range t.parts {
		var v []byte
		switch p.field {
		case literal:
			dst = append(dst, p.lit...)
			continue
		case Source:
			v = ev.Source
		case Type:
			v = ev.Type
		case Event:
			v = event
		case Key:
			v = ev.Key
		}
		if escape != nil {
			dst = escape(dst, v)
		} else {
			dst = append(dst, v...)
		}
	}
	return dst
}

// EventName is the "event" member of a stored event (a track's name), or
// "" when it has none.
func EventName(payload []byte) string {
	var v struct {
		Event string `json:"event"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	return v.Event
}
