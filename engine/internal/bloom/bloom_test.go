package bloom

import (
	"math/rand/v2"
	"testing"
)

func TestNoFalseNegatives(t *testing.T) {
	f := New(64 << 10)
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, 50_000)
	for i := range keys {
		keys[i] = rng.Uint64()
		f.Add(keys[i])
	}
	for _, k := range keys {
		if !f.MayContain(k) {
			t.Fatalf("added key %x reported absent", k)
		}
	}
	if f.Count() != uint64(len(keys)) {
		t.Fatalf("count %d, want %d", f.Count(), len(keys))
	}
}

func TestFalsePositiveRateAtDesignLoad(t *testing.T) {
	const n = 100_000
	f := New(n * 10 / 8) // 10 bits per key
	rng := rand.New(rand.NewPCG(3, 4))
	for range n {
		f.Add(rng.Uint64())
	}
	fp := 0
	const trials = 200_000
	for range trials {
		if f.MayContain(rng.Uint64()) {
			fp++
		}
	}
	if rate := float64(fp) / trials; rate > 0.03 {
		t.Fatalf("false positive rate %.4f at 10 bits/key, want < 0.03", rate)
	}
}

func TestTinyFilterStillCorrect(t *testing.T) {
	f := New(1)
	if f.SizeBytes() != 64 {
		t.Fatalf("size %d, want one 64-byte block", f.SizeBytes())
	}
	f.Add(42)
	if !f.MayContain(42) {
		t.Fatal("added key reported absent")
	}
}

func BenchmarkMayContainAbsent(b *testing.B) {
	f := New(16 << 20)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 1_000_000 {
		f.Add(rng.Uint64())
	}
	b.ReportAllocs()
	h := uint64(0)
	for b.Loop() {
		h += 0x9e3779b97f4a7c15
		f.MayContain(h)
	}
}
