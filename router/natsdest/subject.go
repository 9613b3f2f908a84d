package natsdest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/sluice-cdi/sluice/router"
)

// tokenBytesMax caps the bytes one placeholder puts into a subject: an
// event name is the client's text, and a subject is parsed by every server
// it crosses.
const tokenBytesMax = 64

// keyHashMax bounds N in {key_hash:N}.
const keyHashMax = 1 << 20

// Template is a parsed subject template: literal text and placeholders.
//
//	events.{source}.{type}.{event}.{key_hash:16}
//
// {source} is the event's source name, {type} its type (track, identify,
// ...), {event} the track event's name (page and screen: their name; "_"
// when there is none), {key_hash:N} the xxhash64 of the ordering key modulo
// N, in decimal. Each value is sanitized into a legal subject token: bytes
// other than ASCII letters, digits, '-' and '_' become '_', an empty value
// becomes '_', and a value is cut at 64 bytes.
type Template struct {
	parts     []part
	needEvent bool // some part is {event}: the payload is read
}

// part is a literal (kind partLiteral) or a placeholder.
type part struct {
	kind    partKind
	literal string
	mod     uint64 // {key_hash:N}
}

type partKind uint8

const (
	partLiteral partKind = iota
	partSource
	partType
	partEvent
	partKeyHash
)

// ErrTemplate is a subject template that cannot make legal subjects.
var ErrTemplate = errors.New("bad subject template")

// ParseTemplate parses and checks a subject template.
func ParseTemplate(s string) (*Template, error) {
	t := &Template{}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			t.parts = append(t.parts, part{literal: rest})
			break
		}
		if open > 0 {
			t.parts = append(t.parts, part{literal: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("%w %q: unclosed {", ErrTemplate, s)
		}
		p, err := parsePlaceholder(rest[open+1 : open+end])
		if err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrTemplate, s, err)
		}
		t.needEvent = t.needEvent || p.kind == partEvent
		t.parts = append(t.parts, p)
		rest = rest[open+end+1:]
	}
	for _, p := range t.parts {
		if p.kind == partLiteral && strings.ContainsAny(p.literal, "}*> \t\r\n") {
			return nil, fmt.Errorf("%w %q: literal text may not hold '}', wildcards or spaces", ErrTemplate, s)
		}
	}
	if err := checkSubject(string(t.render(nil, "x", "x", []byte("x"), "x"))); err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrTemplate, s, err)
	}
	return t, nil
}

func parsePlaceholder(name string) (part, error) {
	switch name {
	case "source":
		return part{kind: partSource}, nil
	case "type":
		return part{kind: partType}, nil
	case "event":
		return part{kind: partEvent}, nil
	}
	if n, ok := strings.CutPrefix(name, "key_hash:"); ok {
		mod, err := strconv.ParseUint(n, 10, 32)
		if err != nil || mod < 1 || mod > keyHashMax {
			return part{}, fmt.Errorf("{key_hash:N} needs N from 1 to %d, got %q", keyHashMax, n)
		}
		return part{kind: partKeyHash, mod: mod}, nil
	}
	return part{}, fmt.Errorf("unknown placeholder {%s} (want {source}, {type}, {event} or {key_hash:N})", name)
}

// checkSubject reports why s is not a legal subject to publish to.
func checkSubject(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	for tok := range strings.SplitSeq(s, ".") {
		switch {
		case tok == "":
			return fmt.Errorf("subject %q has an empty token", s)
		case tok == "*" || tok == ">":
			return fmt.Errorf("subject %q has a wildcard", s)
		case strings.ContainsAny(tok, " \t\r\n"):
			return fmt.Errorf("subject %q has white space", s)
		}
	}
	return nil
}

// Subject appends the subject for ev to dst.
func (t *Template) Subject(dst []byte, ev *router.Event) []byte {
	name := ""
	if t.needEvent {
		name = eventName(ev.Payload)
	}
	return t.render(dst, string(ev.Source), string(ev.Type), ev.Key, name)
}

func (t *Template) render(dst []byte, source, typ string, key []byte, name string) []byte {
	for _, p := range t.parts {
		switch p.kind {
		case partLiteral:
			dst = append(dst, p.literal...)
		case partSource:
			dst = appendToken(dst, source)
		case partType:
			dst = appendToken(dst, typ)
		case partEvent:
			dst = appendToken(dst, name)
		case partKeyHash:
			dst = strconv.AppendUint(dst, xxhash.Sum64(key)%p.mod, 10)
		}
	}
	return dst
}

// Wildcard is the template with each placeholder's token replaced by '*':
// the subjects a stream needs to take every subject it makes (a token
// mixing text and a placeholder becomes '*' whole).
func (t *Template) Wildcard() string {
	var b strings.Builder
	for _, p := range t.parts {
		if p.kind == partLiteral {
			b.WriteString(p.literal)
		} else {
			b.WriteString("\x00")
		}
	}
	toks := strings.Split(b.String(), ".")
	for i, tok := range toks {
		if strings.Contains(tok, "\x00") {
			toks[i] = "*"
		}
	}
	return strings.Join(toks, ".")
}

// appendToken appends v sanitized into one legal subject token.
func appendToken(dst []byte, v string) []byte {
	if v == "" {
		return append(dst, '_')
	}
	if len(v) > tokenBytesMax {
		v = v[:tokenBytesMax]
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			dst = append(dst, c)
		} else {
			dst = append(dst, '_')
		}
	}
	return dst
}

// eventName is a track event's "event", or a page or screen's "name"; ""
// when the payload has neither as a string.
func eventName(payload []byte) string {
	if !bytes.Contains(payload, []byte(`"event"`)) && !bytes.Contains(payload, []byte(`"name"`)) {
		return ""
	}
	var v struct {
		Event json.RawMessage `json:"event"`
		Name  json.RawMessage `json:"name"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	for _, raw := range []json.RawMessage{v.Event, v.Name} {
		var s string
		if len(raw) > 0 && json.Unmarshal(raw, &s) == nil && s != "" {
			return s
		}
	}
	return ""
}

// subjectMatches reports whether subject falls under filter (a stream's
// subject, with '*' for one token and a final '>' for one or more).
func subjectMatches(filter, subject string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subject, ".")
		if ft == ">" {
			return true
		}
		if ft != "*" && ft != st {
			return false
		}
		if !fmore || !smore {
			return fmore == smore
		}
		filter, subject = frest, srest
	}
}
