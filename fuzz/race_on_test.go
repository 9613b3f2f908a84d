//go:build race

package fuzz

// raceEnabled: under the race detector the simulation runs ten times
// slower, so the seed tests run fewer seeds.
const raceEnabled = true
