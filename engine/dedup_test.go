package engine

import (
	"encoding/binary"
	"math/rand/v2"
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

// sortPending orders keys so that a batch can be written as runs in one
// pass: by generation, then the hash's low and high halves, equal keys (an
// event replayed twice) side by side.
func TestSortPendingMatchesKeyOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for round := 0; round < 50; round++ {
		keys := make([]pendingKey, rng.IntN(2000))
		for i := range keys {
			k := pendingKey{gen: uint32(rng.IntN(3)), h: hash128{lo: rng.Uint64(), hi: rng.Uint64()}}
			switch rng.IntN(4) { // small values and ties in every field
			case 0:
				k.h.lo = uint64(rng.IntN(4))
			case 1:
				k.h.hi = uint64(rng.IntN(4))
			case 2:
				if i > 0 {
					k = keys[rng.IntN(i)]
				}
			}
			keys[i] = k
		}
		sortPending(keys)
		for i := 1; i < len(keys); i++ {
			a, b := keys[i-1], keys[i]
			if a.gen > b.gen || a.gen == b.gen && b.h.less(a.h) {
				t.Fatalf("round %d: key %d (%+v) sorted before key %d (%+v)", round, i-1, a, i, b)
			}
		}
	}
}

// BenchmarkDedupSortBatch: sorting a full index batch (DedupIndexBatchKeys
// random keys of one generation), the background batch's first step. One
// op is one key.
func BenchmarkDedupSortBatch(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]pendingKey, defaultDedupIndexBatchKeys)
	for i := range src {
		src[i] = pendingKey{gen: 7, h: hash128{lo: rng.Uint64(), hi: rng.Uint64()}}
	}
	keys := make([]pendingKey, len(src))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += len(keys) {
		b.StopTimer()
		copy(keys, src)
		b.StartTimer()
		sortPending(keys)
	}
}
