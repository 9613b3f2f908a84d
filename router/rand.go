package router

import (
	"math/rand/v2"
	"sync"
)

// systemRand is a Rand seeded from the OS, safe for concurrent use.
type systemRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func newSystemRand() *systemRand {
	return &systemRand{r: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

func (s *systemRand) Int64N(n int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Int64N(n)
}
