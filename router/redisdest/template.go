package redisdest

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
)

// template is a stream name with placeholders {source}, {type} and
// {event} (a track event's name, empty for other types), parsed once.
type template struct {
	parts    []part
	useEvent bool // some part is {event}: the payload must be read
}

// part is a literal or a placeholder.
type part struct {
	lit  string
	hole hole
}

type hole uint8

const (
	holeNone hole = iota
	holeSource
	holeType
	holeEvent
)

// parseTemplate parses s; an unknown or unclosed placeholder is an error.
func parseTemplate(s string) (template, error) {
	var t template
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
			return template{}, fmt.Errorf("unclosed placeholder in %q", s)
		}
		switch name := s[i+1 : i+j]; name {
		case "source":
			t.parts = append(t.parts, part{hole: holeSource})
		case "type":
			t.parts = append(t.parts, part{hole: holeType})
		case "event":
			t.parts = append(t.parts, part{hole: holeEvent})
			t.useEvent = true
		default:
			return template{}, fmt.Errorf("unknown placeholder {%s} (want {source}, {type} or {event})", name)
		}
		s = s[i+j+1:]
	}
	return t, nil
}

// appendTo appends ev's name by the template to dst.
func (t *template) appendTo(dst []byte, ev *router.Event) []byte {
	var name string
	if t.useEvent {
		name = eventName(ev.Payload)
	}
	for _, p := range t.parts {
		switch p.hole {
		case holeNone:
			dst = append(dst, p.lit...)
		case holeSource:
			dst = append(dst, ev.Source...)
		case holeType:
			dst = append(dst, ev.Type...)
		case holeEvent:
			dst = append(dst, name...)
		}
	}
	return dst
}

// eventName is the "event" field of a stored event (a track's name), or ""
// when it has none.
func eventName(payload []byte) string {
	var v struct {
		Event string `json:"event"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	return v.Event
}

// CheckTemplate reports whether s is a valid stream template.
func CheckTemplate(s string) error {
	_, err := parseTemplate(s)
	return err
}
