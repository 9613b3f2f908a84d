package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"slices"
	"testing"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/webhook"
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

// With NamePoison the sink takes a batch's good events and names the poison
// ones in the webhook destination's partial_failures format.
func TestNamePoison(t *testing.T) {
	s := New(Config{PoisonPercent: 30, NamePoison: true})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer s.Close()
	w, err := webhook.New(webhook.Config{URL: "http://" + ln.Addr().String() + "/ingest", Batch: true, PartialFailures: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var evs []router.Event
	var want []int
	for i := range 20 {
		mid := fmt.Sprintf("m-%d", i)
		evs = append(evs, router.Event{MessageID: []byte(mid), Payload: fmt.Appendf(nil, `{"messageId":%q,"userId":"u","properties":{"n":%d}}`, mid, i)})
		if IsPoison(mid, 30) {
			want = append(want, i)
		}
	}
	if len(want) == 0 || len(want) == len(evs) {
		t.Fatalf("poison %v: pick other ids", want)
	}
	res := w.Send(context.Background(), evs)
	var got []int
	for _, r := range res.Rejected {
		if r.Status != 400 {
			t.Errorf("rejection %+v", r)
		}
		got = append(got, r.Index)
	}
	if res.Status != 200 || !slices.Equal(got, want) {
		t.Fatalf("status %d, rejected %v, want %v", res.Status, got, want)
	}
	for i, ev := range evs {
		if n, poison := s.Arrived(string(ev.MessageID)), slices.Contains(want, i); (n == 1) == poison || n > 1 {
			t.Errorf("event %d (poison %v) arrived %d times", i, poison, n)
		}
	}
}
