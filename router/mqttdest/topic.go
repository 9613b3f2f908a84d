package mqttdest

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
)

// topicTemplate is a topic with placeholders {source}, {type} and {event}
// (a track event's name; empty for other types), parsed once. A value put
// in a placeholder has '/', '+', '#' and NUL replaced by '_': it stays one
// topic level and never a wildcard.
type topicTemplate struct {
	parts    []part
	useEvent bool
}

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

// CheckTopic reports whether s is a valid topic template.
func CheckTopic(s string) error {
	_, err := parseTopic(s)
	return err
}

func parseTopic(s string) (topicTemplate, error) {
	if s == "" {
		return topicTemplate{}, fmt.Errorf("empty topic")
	}
	if strings.ContainsAny(s, "+#\x00") {
		return topicTemplate{}, fmt.Errorf("topic %q holds a wildcard (+ or #) or NUL, which a publish may not", s)
	}
	var t topicTemplate
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
			return topicTemplate{}, fmt.Errorf("unclosed placeholder in %q", s)
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
			return topicTemplate{}, fmt.Errorf("unknown placeholder {%s} (want {source}, {type} or {event})", name)
		}
		s = s[i+j+1:]
	}
	return t, nil
}

// appendTo appends ev's topic to buf.
func (t *topicTemplate) appendTo(buf []byte, ev *router.Event) []byte {
	for _, p := range t.parts {
		switch p.hole {
		case holeNone:
			buf = append(buf, p.lit...)
		case holeSource:
			buf = appendLevel(buf, string(ev.Source))
		case holeType:
			buf = appendLevel(buf, string(ev.Type))
		case holeEvent:
			buf = appendLevel(buf, eventName(ev.Payload))
		}
	}
	return buf
}

// appendLevel appends v with the characters that would change the topic's
// shape replaced.
func appendLevel(dst []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '/', '+', '#', 0:
			dst = append(dst, '_')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// eventName is the "event" field of a stored event, or "".
func eventName(payload []byte) string {
	var v struct {
		Event string `json:"event"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	return v.Event
}
