package engine

import (
	"iter"
	"math/bits"
	"math/rand/v2"
)

// keySet holds the dedup keys waiting for the index (dedup.fresh and
// dedup.flushing): hashes with their generation. Every stored event adds
// one, so it is on the committer's path: an open-addressing table with
// linear probing and 24-byte slots touches one cache line per operation,
// where a Go map with 128-bit keys took about twice as long once it held
// a batch's worth of keys (BenchmarkDedupLookupAbsent/seen/fresh=200k).
//
// The slot is chosen from both halves of the hash mixed with a random
// seed, so clients cannot line their keys up in one probe run by choosing
// message ids (the hash is not keyed). The table grows (doubling, at half
// full) but never shrinks: cleared between batches, it keeps its size, so
// a busy engine stops growing it after the first batches.
type keySet struct {
	slots []keySlot
	shift uint8 // 64 - log2(len(slots))
	n     int
	seed  uint64
}

type keySlot struct {
	h    hash128
	gen  uint32
	used bool
}

const keySetMinSlots = 1 << 10

func newKeySet() *keySet {
	s := &keySet{seed: rand.Uint64() | 1}
	s.alloc(keySetMinSlots)
	return s
}

func (s *keySet) alloc(n int) {
	s.slots = make([]keySlot, n)
	s.shift = uint8(64 - bits.TrailingZeros(uint(n)))
	s.n = 0
}

// home is h's first slot.
func (s *keySet) home(h hash128) int {
	x := (h.lo ^ s.seed) * 0x9e3779b97f4a7c15
	x ^= bits.RotateLeft64(h.hi, 31) * 0xbf58476d1ce4e5b9
	return int(x >> s.shift)
}

func (s *keySet) next(i int) int { return (i + 1) & (len(s.slots) - 1) }

// Len is the number of keys.
func (s *keySet) Len() int { return s.n }

// Get returns h's generation, if h is in the set.
func (s *keySet) Get(h hash128) (uint32, bool) {
	for i := s.home(h); ; i = s.next(i) {
		sl := &s.slots[i]
		if !sl.used {
			return 0, false
		}
		if sl.h == h {
			return sl.gen, true
		}
	}
}

// Set adds h with generation gen, or sets the generation of h.
func (s *keySet) Set(h hash128, gen uint32) {
	if 2*(s.n+1) > len(s.slots) {
		s.grow()
	}
	for i := s.home(h); ; i = s.next(i) {
		sl := &s.slots[i]
		if !sl.used {
			*sl = keySlot{h: h, gen: gen, used: true}
			s.n++
			return
		}
		if sl.h == h {
			sl.gen = gen
			return
		}
	}
}

func (s *keySet) grow() {
	old := s.slots
	s.alloc(2 * len(old))
	for i := range old {
		if old[i].used {
			s.Set(old[i].h, old[i].gen)
		}
	}
}

// Delete removes h, if present. The slots after it in its probe run move
// back so that no lookup stops early at the hole (no tombstones).
func (s *keySet) Delete(h hash128) {
	i := s.home(h)
	for ; ; i = s.next(i) {
		if !s.slots[i].used {
			return
		}
		if s.slots[i].h == h {
			break
		}
	}
	for j := s.next(i); s.slots[j].used; j = s.next(j) {
		// The key at j may move to the hole at i unless its home lies
		// cyclically in (i, j]: then i is before its home.
		k := s.home(s.slots[j].h)
		if i <= j && i < k && k <= j || i > j && (i < k || k <= j) {
			continue
		}
		s.slots[i] = s.slots[j]
		i = j
	}
	s.slots[i] = keySlot{}
	s.n--
}

// Clear removes every key and keeps the table's size.
func (s *keySet) Clear() {
	if s.n > 0 {
		clear(s.slots)
		s.n = 0
	}
}

// All yields every key and its generation, in no particular order.
func (s *keySet) All() iter.Seq2[hash128, uint32] {
	return func(yield func(hash128, uint32) bool) {
		for i := range s.slots {
			if s.slots[i].used && !yield(s.slots[i].h, s.slots[i].gen) {
				return
			}
		}
	}
}
