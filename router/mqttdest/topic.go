package mqttdest

import (
	"fmt"
	"strings"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/template"
)

// topicTemplate is a topic with placeholders {source}, {type} and {event}
// (a track event's name; empty for other types), parsed once
// (router/template). A value put in a placeholder has '/', '+', '#' and
// NUL replaced by '_': it stays one topic level and never a wildcard.
type topicTemplate struct{ t template.Template }

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
	t, err := template.Parse(s, template.Source, template.Type, template.Event)
	return topicTemplate{t}, err
}

// appendTo appends ev's topic to buf.
func (t *topicTemplate) appendTo(buf []byte, ev *router.Event) []byte {
	return t.t.Append(buf, ev, appendLevel)
}

// appendLevel appends v with the characters that would change the topic's
// shape replaced.
func appendLevel(dst, v []byte) []byte {
	for _, c := range v {
		switch c {
		case '/', '+', '#', 0:
			dst = append(dst, '_')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
