// Package bloom is a blocked Bloom filter over 64-bit hashes.
//
// Each key touches one 64-byte block (one cache line), so a lookup costs one
// memory access whatever the number of probes. The filter never answers
// "absent" for a key that was added; past its design capacity it answers
// "maybe" more often.
package bloom

import "math/bits"

const (
	wordsPerBlock = 8 // 8 x 64 bits = one 64-byte cache line
	probes        = 6 // bits set per key; ~1% false positives at 10 bits/key
)

// Filter is a blocked Bloom filter. It is not safe for concurrent use.
type Filter struct {
	words  []uint64
	blocks uint64
	count  uint64
}

// New returns a filter using about sizeBytes of memory (at least one block).
func New(sizeBytes int) *Filter {
	blocks := max(sizeBytes/(wordsPerBlock*8), 1)
	return &Filter{words: make([]uint64, blocks*wordsPerBlock), blocks: uint64(blocks)}
}

// Add inserts the key with hash h.
func (f *Filter) Add(h uint64) {
	block := f.block(h)
	for i, h2 := 0, h; i < probes; i++ {
		h2 = bits.RotateLeft64(h2, 9) * 0x9e3779b97f4a7c15
		bit := h2 >> 55 // 0..511
		block[bit>>6] |= 1 << (bit & 63)
	}
	f.count++
}

// MayContain reports whether a key with hash h may have been added.
func (f *Filter) MayContain(h uint64) bool {
	block := f.block(h)
	for i, h2 := 0, h; i < probes; i++ {
		h2 = bits.RotateLeft64(h2, 9) * 0x9e3779b97f4a7c15
		bit := h2 >> 55
		if block[bit>>6]&(1<<(bit&63)) == 0 {
			return false
		}
	}
	return true
}

// Count is the number of Add calls.
func (f *Filter) Count() uint64 { return f.count }

// SizeBytes is the memory the filter's bits use.
func (f *Filter) SizeBytes() int { return len(f.words) * 8 }

func (f *Filter) block(h uint64) []uint64 {
	hi, _ := bits.Mul64(h, f.blocks) // fast range reduction
	i := hi * wordsPerBlock
	return f.words[i : i+wordsPerBlock : i+wordsPerBlock]
}
