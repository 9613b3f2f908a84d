package warehouse

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// decodeObject decodes a JSON object as encoding/json does with UseNumber
// (map[string]any, []any, string, json.Number, bool, nil), about four times
// faster: mapping is most of a load's CPU, and stored events are JSON that
// ingest has already validated. Anything it does not take on the fast
// path (escapes, non-ASCII text, malformed input) goes to encoding/json,
// so the result, or the error, is encoding/json's.
func decodeObject(data []byte) (map[string]any, error) {
	p := parser{b: data}
	p.ws()
	v, ok := p.value()
	if ok {
		p.ws()
		if m, isObj := v.(map[string]any); isObj && p.i == len(p.b) {
			return m, nil
		}
	}
	return slowDecode(data)
}

var errNotObject = errors.New("not a JSON object")

func slowDecode(data []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("data after the object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errNotObject
	}
	return m, nil
}

// parser is the fast path: ok false means "let encoding/json decide".
type parser struct {
	b     []byte
	i     int
	depth int
}

const depthMax = 64

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) value() (any, bool) {
	if p.i >= len(p.b) {
		return nil, false
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		return p.str()
	case c == 't':
		return true, p.lit("true")
	case c == 'f':
		return false, p.lit("false")
	case c == 'n':
		return nil, p.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	}
	return nil, false
}

func (p *parser) lit(s string) bool {
	if !bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		return false
	}
	p.i += len(s)
	return true
}

func (p *parser) object() (any, bool) {
	if p.depth++; p.depth > depthMax {
		return nil, false
	}
	defer func() { p.depth-- }()
	p.i++ // {
	m := make(map[string]any, 8)
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return m, true
	}
	for {
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return nil, false
		}
		k, ok := p.str()
		if !ok {
			return nil, false
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return nil, false
		}
		p.i++
		p.ws()
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		m[k.(string)] = v // a repeated key: the last wins, as in encoding/json
		p.ws()
		if p.i >= len(p.b) {
			return nil, false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return m, true
		default:
			return nil, false
		}
	}
}

func (p *parser) array() (any, bool) {
	if p.depth++; p.depth > depthMax {
		return nil, false
	}
	defer func() { p.depth-- }()
	p.i++ // [
	a := []any{}
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return a, true
	}
	for {
		p.ws()
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		a = append(a, v)
		p.ws()
		if p.i >= len(p.b) {
			return nil, false
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return a, true
		default:
			return nil, false
		}
	}
}

// str reads a string of printable ASCII without escapes; others are
// encoding/json's to decode (it replaces invalid UTF-8, reads escapes).
func (p *parser) str() (any, bool) {
	start := p.i + 1
	for j := start; j < len(p.b); j++ {
		c := p.b[j]
		switch {
		case c == '"':
			p.i = j + 1
			return string(p.b[start:j]), true
		case c == '\\' || c < 0x20:
			return p.slowStr()
		case c >= utf8.RuneSelf:
			return p.slowStr()
		}
	}
	return nil, false
}

// slowStr reads the string at p.i with encoding/json.
func (p *parser) slowStr() (any, bool) {
	end := p.i + 1
	for end < len(p.b) {
		if p.b[end] == '\\' {
			end += 2
			continue
		}
		if p.b[end] == '"' {
			break
		}
		end++
	}
	if end >= len(p.b) {
		return nil, false
	}
	var s string
	if err := json.Unmarshal(p.b[p.i:end+1], &s); err != nil {
		return nil, false
	}
	p.i = end + 1
	return s, true
}

// number reads a JSON number (strict grammar) as a json.Number.
func (p *parser) number() (any, bool) {
	start, j := p.i, p.i
	digits := func() int {
		n := 0
		for j < len(p.b) && p.b[j] >= '0' && p.b[j] <= '9' {
			j++
			n++
		}
		return n
	}
	if p.b[j] == '-' {
		j++
	}
	if j < len(p.b) && p.b[j] == '0' {
		j++
	} else if digits() == 0 {
		return nil, false
	}
	if j < len(p.b) && p.b[j] == '.' {
		j++
		if digits() == 0 {
			return nil, false
		}
	}
	if j < len(p.b) && (p.b[j] == 'e' || p.b[j] == 'E') {
		j++
		if j < len(p.b) && (p.b[j] == '+' || p.b[j] == '-') {
			j++
		}
		if digits() == 0 {
			return nil, false
		}
	}
	p.i = j
	return json.Number(p.b[start:j]), true
}
