package engine

import (
	"math/rand/v2"
	"testing"
)

// keySet against a Go map: random sets, updates, deletes and clears, with
// keys drawn from a small pool so that probe runs are long and deletes
// move keys back across them (and across the table's end). After every
// operation each pool key's presence and generation match the map.
func TestKeySetMatchesMap(t *testing.T) {
	for seed := uint64(0); seed < 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		pool := make([]hash128, 1+rng.IntN(3000))
		if seed%2 == 0 {
			pool = pool[:1+rng.IntN(20)]
		}
		for i := range pool {
			pool[i] = hash128{lo: rng.Uint64(), hi: rng.Uint64()}
			if i > 0 && rng.IntN(4) == 0 {
				pool[i].lo = pool[i-1].lo // same low half, another key
			}
		}
		s := newKeySet()
		s.seed = rng.Uint64() | 1
		if seed%2 == 0 {
			s.alloc(16) // tiny: probe runs wrap around the table's end
		}
		model := make(map[hash128]uint32)
		for op := 0; op < 20_000; op++ {
			h := pool[rng.IntN(len(pool))]
			switch r := rng.IntN(100); {
			case r < 55:
				gen := uint32(rng.IntN(5))
				s.Set(h, gen)
				model[h] = gen
			case r < 95:
				s.Delete(h)
				delete(model, h)
			case r < 96:
				s.Clear()
				clear(model)
			default:
				n := 0
				for k, gen := range s.All() {
					if g, ok := model[k]; !ok || g != gen {
						t.Fatalf("seed %d op %d: All yields %v gen %d, model has %d %v", seed, op, k, gen, g, ok)
					}
					n++
				}
				if n != len(model) {
					t.Fatalf("seed %d op %d: All yields %d keys, want %d", seed, op, n, len(model))
				}
			}
			if s.Len() != len(model) {
				t.Fatalf("seed %d op %d: Len %d, want %d", seed, op, s.Len(), len(model))
			}
			if op%97 == 0 || len(pool) < 50 {
				for _, k := range pool {
					g, ok := s.Get(k)
					if mg, mok := model[k]; ok != mok || g != mg {
						t.Fatalf("seed %d op %d: Get(%v) = %d %v, want %d %v", seed, op, k, g, ok, mg, mok)
					}
				}
			}
		}
	}
}

// Growing keeps every key, and a cleared table keeps its size.
func TestKeySetGrowAndClear(t *testing.T) {
	s := newKeySet()
	const n = 100_000
	key := func(i int) hash128 { return hash128{lo: uint64(i), hi: uint64(i) * 7} }
	for i := range n {
		s.Set(key(i), uint32(i%3))
	}
	if s.Len() != n || len(s.slots) < 2*n {
		t.Fatalf("%d keys in %d slots, want %d in at least %d", s.Len(), len(s.slots), n, 2*n)
	}
	for i := range n {
		if g, ok := s.Get(key(i)); !ok || g != uint32(i%3) {
			t.Fatalf("key %d: %d %v", i, g, ok)
		}
	}
	size := len(s.slots)
	s.Clear()
	if s.Len() != 0 || len(s.slots) != size {
		t.Fatalf("after Clear: %d keys in %d slots, want 0 in %d", s.Len(), len(s.slots), size)
	}
	if _, ok := s.Get(key(5)); ok {
		t.Fatal("a cleared key is still there")
	}
}
