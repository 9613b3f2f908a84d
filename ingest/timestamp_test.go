package ingest

import (
	"math/rand/v2"
	"testing"
	"time"
)

// appendTimestamp writes what time.AppendFormat would, quicker, for every
// year (those outside 0-9999 go through AppendFormat).
func TestAppendTimestampAgreesWithFormat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	times := []time.Time{
		{}, time.Unix(0, 0), time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 26, 12, 0, 0, 500_000_000, time.FixedZone("x", -7*3600)),
	}
	for range 10_000 {
		times = append(times, time.Unix(rng.Int64N(1<<36)-1<<35, rng.Int64N(1e9)))
	}
	for _, tm := range times {
		want := `"` + tm.UTC().Format("2006-01-02T15:04:05.000Z07:00") + `"`
		if got := string(appendTimestamp(nil, tm)); got != want {
			t.Fatalf("appendTimestamp(%v) = %s, want %s", tm, got, want)
		}
	}
}
