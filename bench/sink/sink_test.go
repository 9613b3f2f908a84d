package sink

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestFastEvents checks the reflection-free decoder against encoding/json
// on bodies it accepts, and that it declines what it does not handle.
func TestFastEvents(t *testing.T) {
	accept := []string{
		`{"messageId":"m1","anonymousId":"a1","userId":"u1","receivedAt":"2026-01-02T03:04:05.678Z","properties":{"n":7}}`,
		` [ {"type":"track","messageId":"m1","context":{"x":[1,2,{"y":"\"}"}],"z":null},"anonymousId":"a","properties":{"a":"b\\","n":3,"c":[true,false]}},
		   {"messageId":"m2","userId":"u2","properties":{"n":-4},"traits":{}} ] `,
		`[]`,
		`{"messageId":"m3","properties":{}}`,
	}
	for _, body := range accept {
		got, ok := fastEvents([]byte(body))
		if !ok {
			t.Fatalf("declined %s", body)
		}
		var want []event
		if body[0] == '[' || body[1] == '[' {
			if err := json.Unmarshal([]byte(body), &want); err != nil {
				t.Fatal(err)
			}
		} else {
			want = make([]event, 1)
			if err := json.Unmarshal([]byte(body), &want[0]); err != nil {
				t.Fatal(err)
			}
		}
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\ngot  %+v\nwant %+v", body, got, want)
		}
	}
	for _, body := range []string{
		``, `{`, `[{"messageId":"m1"}`, `{"messageId":"m\u0031"}`, `{"userId":42}`, `{"properties":{"n":1.5}}`,
		`{"messageId":"m1"} x`, `[{"messageId":"m1"},]`, `{"a":tru`, `{"properties":"not an object"}`,
	} {
		if _, ok := fastEvents([]byte(body)); ok {
			t.Fatalf("accepted %q", body)
		}
	}
}
