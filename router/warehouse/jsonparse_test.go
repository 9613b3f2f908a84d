package warehouse

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

var jsonSeeds = []string{
	`{}`, `{"a":1}`, ` { "a" : [1, 2.5, -3e-2, "x", true, false, null, {"b":{}}] } `,
	`{"s":"caf\u00e9 \"q\" \\ \n","u":"ünï","t":"tab	in"}`, `{"a":1}x`, `[1]`, `"s"`, `{"a":01}`, `{"a":1.}`,
	`{"a":-}`, `{"a":tru}`, `{"a":1,}`, `{"a" 1}`, `{"dup":1,"dup":2}`, `{"big":12345678901234567890123}`,
	`{"bad":"\xff"}`, `{"a":[}`, `{"a":"unterminated}`, `{"n":-0.5E+10}`, "{\"ctl\":\"a\x01b\"}",
	`{"deep":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}`,
}

// FuzzDecodeObject: the fast decoder agrees with encoding/json (UseNumber)
// on every input, result or error.
func FuzzDecodeObject(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(benchPayload))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeObject(data)
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		var want any
		werr := d.Decode(&want)
		if werr == nil && d.More() {
			werr = errNotObject
		}
		wm, isObj := want.(map[string]any)
		if werr != nil || !isObj {
			if err == nil {
				t.Fatalf("%q: decoded %v, encoding/json says %v (%T)", data, got, werr, want)
			}
			return
		}
		if err != nil || !reflect.DeepEqual(got, wm) {
			t.Fatalf("%q:\n got %#v (%v)\nwant %#v", data, got, err, wm)
		}
	})
}
