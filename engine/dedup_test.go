package engine

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestDedupHashStable: the dedup hash names index keys written by earlier
// versions, so it must not change. The reference is the definition: lo =
// xxhash64(source 0 messageId), hi = xxhash64(lo (LE) source 0 messageId).
func TestDedupHashStable(t *testing.T) {
	ref := func(source, id []byte) hash128 {
		pair := append(append(append([]byte{}, source...), 0), id...)
		lo := xxhash.Sum64(pair)
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], lo)
		return hash128{lo: lo, hi: xxhash.Sum64(append(b[:], pair...))}
	}
	d := &dedup{}
	for _, tc := range []struct{ source, id string }{
		{"", ""}, {"web", "m-1"}, {"web", "m-2"}, {"ios", "m-1"},
		{"a", strings.Repeat("x", 256)}, {strings.Repeat("s", 100), "ümlaut"},
	} {
		got, want := d.hash([]byte(tc.source), []byte(tc.id)), ref([]byte(tc.source), []byte(tc.id))
		if got != want {
			t.Errorf("hash(%q, %q) = %x, want %x", tc.source, tc.id, got, want)
		}
	}
	// A value computed by the version that wrote the first indexes.
	if got := d.hash([]byte("web"), []byte("m-1")); got.lo != xxhash.Sum64String("web\x00m-1") {
		t.Errorf("lo = %x, want xxhash64 of the pair", got.lo)
	}
}
