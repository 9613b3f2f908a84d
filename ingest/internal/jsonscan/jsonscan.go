// Package jsonscan validates JSON and finds the byte spans of values without
// decoding them, so ingest can edit a client's event in place.
//
// Spans are half-open [start, end) offsets into the caller's buffer; nothing
// here allocates or keeps the buffer. Strings are checked for control
// characters and escapes; invalid UTF-8 is not an error here (ingest repairs
// it before scanning).
package jsonscan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// DepthMax bounds nesting so hostile input cannot exhaust the stack.
const DepthMax = 128

// ErrSyntax is wrapped by every error about malformed JSON.
var ErrSyntax = errors.New("invalid JSON")

func syntaxErr(i int, what string) error {
	return fmt.Errorf("%w at offset %d: %s", ErrSyntax, i, what)
}

// SkipSpace returns the index of the first non-whitespace byte at or after i.
func SkipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// Value validates the value starting at b[i] (no leading space) and returns
// the index just past it.
func Value(b []byte, i int) (int, error) { return value(b, i, 0) }

func value(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, syntaxErr(i, "unexpected end")
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := String(b, i)
		return end, err
	case c == '{':
		return object(b, i, depth+1, nil)
	case c == '[':
		return array(b, i, depth+1, nil)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return number(b, i)
	default:
		return i, syntaxErr(i, fmt.Sprintf("unexpected byte %q", c))
	}
}

func literal(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, syntaxErr(i, "bad literal")
	}
	return i + len(lit), nil
}

func number(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return start, syntaxErr(start, "bad number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return start, syntaxErr(start, "bad fraction")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return start, syntaxErr(start, "bad exponent")
		}
	}
	return i, nil
}

// String validates the string starting at b[i] (a quote) and returns the
// index past its closing quote and whether it contains escapes.
func String(b []byte, i int) (end int, escaped bool, err error) {
	if i >= len(b) || b[i] != '"' {
		return i, false, syntaxErr(i, "expected string")
	}
	j := i + 1
	for {
		// Skip 8 plain bytes at a time: no quote, backslash or control.
		for j+8 <= len(b) && !special(binary.LittleEndian.Uint64(b[j:])) {
			j += 8
		}
		if j >= len(b) {
			return len(b), escaped, syntaxErr(len(b), "unterminated string")
		}
		switch c := b[j]; {
		case c == '"':
			return j + 1, escaped, nil
		case c == '\\':
			escaped = true
			j++
			if j >= len(b) {
				return j, escaped, syntaxErr(j, "unterminated escape")
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-j < 5 || !isHex4(b[j+1:j+5]) {
					return j, escaped, syntaxErr(j, "bad \\u escape")
				}
				j += 4
			default:
				return j, escaped, syntaxErr(j, "bad escape")
			}
		case c < 0x20:
			return j, escaped, syntaxErr(j, "control character in string")
		}
		j++
	}
}

// special reports whether any of the 8 bytes in x is a quote, a backslash
// or a control character (SWAR: no byte at or above 0x80 matches).
func special(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	less := (x - lo*0x20) & ^x & hi
	q := x ^ (lo * '"')
	bs := x ^ (lo * '\\')
	return less|((q-lo)&^q&hi)|((bs-lo)&^bs&hi) != 0
}

func isHex4(h []byte) bool {
	for _, c := range h[:4] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// MemberFunc receives one object member: the key's span without quotes
// (escapes left as they are), whether the key has escapes, and the value's
// span.
type MemberFunc func(keyStart, keyEnd int, keyEscaped bool, valStart, valEnd int) error

// MemberScanFunc scans one object member's value: the key's span without
// quotes, whether the key has escapes, and where the value starts. It must
// validate the value (with Value, ObjectScan, ...) and return the index past
// it.
type MemberScanFunc func(keyStart, keyEnd int, keyEscaped bool, valStart int) (valEnd int, err error)

// ObjectScan validates the object starting at b[i] and returns the index
// past it; it hands each member's value to fn to scan (in order), so a
// caller that wants the members of a nested object gets them in the same
// pass.
func ObjectScan(b []byte, i int, fn MemberScanFunc) (int, error) { return object(b, i, 1, fn) }

func object(b []byte, i, depth int, scan MemberScanFunc) (int, error) {
	if depth > DepthMax {
		return i, syntaxErr(i, "nesting too deep")
	}
	if i >= len(b) || b[i] != '{' {
		return i, syntaxErr(i, "expected object")
	}
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		ks := i
		ke, esc, err := String(b, i)
		if err != nil {
			return ke, err
		}
		i = SkipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return i, syntaxErr(i, "expected ':'")
		}
		vs := SkipSpace(b, i+1)
		var ve int
		if scan != nil {
			ve, err = scan(ks+1, ke-1, esc, vs)
		} else {
			ve, err = value(b, vs, depth)
		}
		if err != nil {
			return ve, err
		}
		i = SkipSpace(b, ve)
		if i >= len(b) {
			return i, syntaxErr(i, "unterminated object")
		}
		switch b[i] {
		case ',':
			i = SkipSpace(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return i, syntaxErr(i, "expected ',' or '}'")
		}
	}
}

// ElementScanFunc scans one array element starting at b[start]: it must
// validate it and return the index past it.
type ElementScanFunc func(start int) (end int, err error)

// ArrayScan validates the array starting at b[i] and returns the index past
// it; it hands each element to fn to scan (in one pass with whatever fn
// records of it).
func ArrayScan(b []byte, i int, fn ElementScanFunc) (int, error) { return array(b, i, 1, fn) }

func array(b []byte, i, depth int, scan ElementScanFunc) (int, error) {
	if depth > DepthMax {
		return i, syntaxErr(i, "nesting too deep")
	}
	if i >= len(b) || b[i] != '[' {
		return i, syntaxErr(i, "expected array")
	}
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		s := i
		var e int
		var err error
		if scan != nil {
			e, err = scan(s)
		} else {
			e, err = value(b, s, depth)
		}
		if err != nil {
			return e, err
		}
		i = SkipSpace(b, e)
		if i >= len(b) {
			return i, syntaxErr(i, "unterminated array")
		}
		switch b[i] {
		case ',':
			i = SkipSpace(b, i+1)
		case ']':
			return i + 1, nil
		default:
			return i, syntaxErr(i, "expected ',' or ']'")
		}
	}
}

// Document validates that b holds exactly one JSON value (with optional
// surrounding space) and returns its span.
func Document(b []byte) (start, end int, err error) {
	start = SkipSpace(b, 0)
	end, err = Value(b, start)
	if err != nil {
		return start, end, err
	}
	if rest := SkipSpace(b, end); rest != len(b) {
		return start, end, syntaxErr(rest, "trailing data")
	}
	return start, end, nil
}

// AppendUnquoted appends the decoded content of the JSON string s (with its
// quotes) to dst. s must have passed String.
func AppendUnquoted(dst, s []byte) []byte {
	s = s[1 : len(s)-1]
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		switch s[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := rune(hex4(s[i+1:]))
			i += 4
			if r >= 0xd800 && r < 0xdc00 && i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
				r2 := rune(hex4(s[i+3:]))
				if r2 >= 0xdc00 && r2 < 0xe000 {
					r = (r-0xd800)<<10 | (r2 - 0xdc00) + 0x10000
					i += 6
				}
			}
			if r >= 0xd800 && r < 0xe000 {
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, s[i])
		}
	}
	return dst
}

func hex4(h []byte) uint16 {
	var v uint16
	for _, c := range h[:4] {
		v <<= 4
		switch {
		case c >= '0' && c <= '9':
			v |= uint16(c - '0')
		case c >= 'a' && c <= 'f':
			v |= uint16(c - 'a' + 10)
		default:
			v |= uint16(c - 'A' + 10)
		}
	}
	return v
}

// AppendQuoted appends s as a JSON string.
func AppendQuoted(dst []byte, s []byte) []byte {
	const hexd = "0123456789abcdef"
	dst = append(dst, '"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexd[c>>4], hexd[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}
