package warehouse

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Type is a column's kind, whatever the database calls it.
type Type uint8

const (
	TypeUnknown  Type = iota // a column of a type Sluice does not create: values go as text
	TypeInt                  // 64-bit integer
	TypeFloat                // double precision
	TypeBool                 // boolean
	TypeDatetime             // timestamp with time zone (UTC)
	TypeString               // text
	TypeJSON                 // JSON document
)

func (t Type) String() string {
	return [...]string{"unknown", "int", "float", "boolean", "datetime", "string", "json"}[t]
}

// Value is one typed cell. V holds int64, float64, bool, time.Time or
// string (text, and JSON documents as their text).
type Value struct {
	T Type
	V any
}

// infer types a JSON scalar decoded with UseNumber: integers, floats,
// booleans, strings that are RFC 3339 timestamps (datetime) and other
// strings. Arrays become their JSON text (strings). ok is false for null.
func infer(v any) (Value, bool) {
	switch x := v.(type) {
	case nil:
		return Value{}, false
	case bool:
		return Value{TypeBool, x}, true
	case json.Number:
		s := string(x)
		if !strings.ContainsAny(s, ".eE") {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return Value{TypeInt, i}, true
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return Value{TypeString, s}, true
		}
		return Value{TypeFloat, f}, true
	case string:
		if t, ok := parseTime(x); ok {
			return Value{TypeDatetime, t}, true
		}
		return Value{TypeString, x}, true
	default: // arrays (objects are flattened before)
		b, err := json.Marshal(x)
		if err != nil {
			return Value{TypeString, fmt.Sprint(x)}, true
		}
		return Value{TypeString, string(b)}, true
	}
}

// parseTime reads an RFC 3339 timestamp with a date, a T and a time (as
// SDKs send them); other strings are not timestamps.
func parseTime(s string) (time.Time, bool) {
	if len(s) < 20 || len(s) > 40 || s[4] != '-' || s[10] != 'T' && s[10] != 't' {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false
	}
	if t.Year() < 1 || t.Year() > 9999 {
		return time.Time{}, false
	}
	return t.UTC(), true
}

// merge is the type of a new column whose values in one batch have types
// a (seen first) and b: int and float widen to float; otherwise the first
// seen stands (the other values are discarded).
func merge(a, b Type) Type {
	if a == TypeInt && b == TypeFloat || a == TypeFloat && b == TypeInt {
		return TypeFloat
	}
	return a
}

// widens reports whether a column of type have should be altered to want
// for a value: only int to float, as the warehouse schema allows.
func widens(have, want Type) bool {
	return have == TypeInt && want == TypeFloat
}

// convert turns v into a value for a column of type col. ok is false when
// it cannot (the value is discarded and the cell left empty); reason says
// why.
func convert(v Value, col Type) (out Value, ok bool, reason string) {
	if v.T == col {
		return v, true, ""
	}
	switch col {
	case TypeFloat:
		if v.T == TypeInt {
			return Value{TypeFloat, float64(v.V.(int64))}, true, ""
		}
	case TypeString, TypeUnknown:
		return Value{col, text(v)}, true, ""
	case TypeJSON:
		b, err := json.Marshal(jsonable(v))
		if err == nil {
			return Value{TypeJSON, string(b)}, true, ""
		}
	case TypeDatetime:
		if v.T == TypeString {
			if t, ok := parseTime(v.V.(string)); ok {
				return Value{TypeDatetime, t}, true, ""
			}
		}
	}
	return Value{}, false, fmt.Sprintf("a %s value does not fit the column's type %s", v.T, col)
}

// text is a value as text: what a string column holds.
func text(v Value) string {
	switch x := v.V.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case time.Time:
		return x.Format(time.RFC3339Nano)
	}
	return fmt.Sprint(v.V)
}

// jsonable is a value as it goes into a JSON document.
func jsonable(v Value) any {
	if t, ok := v.V.(time.Time); ok {
		return t.Format(time.RFC3339Nano)
	}
	if v.T == TypeJSON {
		return json.RawMessage(v.V.(string))
	}
	return v.V
}
