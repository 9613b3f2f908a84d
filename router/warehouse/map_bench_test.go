package warehouse

import (
	"fmt"
	"testing"

	"github.com/sluice-cdi/sluice/router"
)

// benchPayload is a 600-byte Segment-shaped track event (as
// warehousetest.BenchEvents makes them).
const benchPayload = `{"type":"track","event":"Product Viewed","messageId":"m-%08d","userId":"user-0042","anonymousId":"anon-0042",` +
	`"timestamp":"2026-01-01T00:00:00.123Z","sentAt":"2026-01-01T00:00:00.123Z","originalTimestamp":"2026-01-01T00:00:00.123Z",` +
	`"receivedAt":"2026-01-01T00:00:00.123Z","context":{"library":{"name":"analytics.js","version":"4.1.0"},"ip":"203.0.113.42",` +
	`"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",` +
	`"page":{"path":"/p/42","url":"https://shop.example/p/42","title":"Product 42"},"locale":"en-US"},` +
	`"properties":{"product_id":"sku-42","price":19.99,"quantity":2,"category":"books","name":"Item 42","currency":"USD","in_stock":true}}`

// BenchmarkMap: mapping one event to its rows (tracks and its event
// table), the CPU part of a load.
func BenchmarkMap(b *testing.B) {
	evs := make([]router.Event, 1000)
	for i := range evs {
		evs[i] = router.Event{MessageID: fmt.Appendf(nil, "m-%08d", i), Payload: fmt.Appendf(nil, benchPayload, i)}
	}
	m := Mapping{Names: testNames, Schema: "s", cache: &nameCache{names: map[string]string{}}}
	b.ReportAllocs()
	b.SetBytes(int64(len(evs[0].Payload)))
	for i := 0; b.Loop(); i++ {
		if _, err := m.Map(evs[i%len(evs)], 0); err != nil {
			b.Fatal(err)
		}
	}
}
