// Package fuzz holds Sluice's fuzz targets and the deterministic simulation
// of ingest, engine and router. The targets run briefly in CI (as seed-corpus
// tests) and for long with `make fuzz`.
//
// # The simulation
//
// Run(Knobs) drives the real engine, on a crashable in-memory file system,
// and one router.Machine per destination from one goroutine in virtual time
// (sim.go). A seed draws everything: the workload script (workload.go:
// appends with hot users, resends and repeats of messageIds, pauses,
// replays of dead letters, reclaims, outages, power losses, graceful
// restarts, with operation weights random per run), each destination's
// configuration and filters and its faults (dest.go: latency, slow
// answers, 5xx, connection errors, 429 with Retry-After, ambiguous
// timeouts, poison events refused with 4xx, outage windows), and storage
// faults (faults.go), each behind its Mode flag: index damage
// (ModeIndexDamage: at a power loss the index loses its WAL files or its
// whole folder; Open refuses or adopts, Recover rebuilds), a full disk
// (ModeDiskFull: for a stretch of virtual time segment writes and/or syncs
// fail with ENOSPC through an errorfs injector; appends fail and are not
// counted, and succeed again once the stretch ends) and bit flips
// (ModeBitFlip: between a shutdown and the reopen one bit flips in frames
// of sealed segments). In the knob string they are the mode bits 0x100,
// 0x200 and 0x400. Every request and every delivery is checked as it
// happens, and the end state after a liveness phase without faults (check.go): per-key order, no loss,
// duplicates only after an ambiguous attempt or a crash, dead letters only
// where the policy allows, bounded window and concurrency, pauses and
// Retry-After honoured, deduplication at append, durability across crashes,
// segments reclaimed. With storage faults the no-loss oracle is docs/guarantees.md's
// guarantee 6: every acknowledged event is delivered (to each destination
// whose filters accept it), a dead letter, or reported lost by seq
// (Engine.LostRanges), and only events whose frames were damaged (or whose
// segments were reclaimed before the index lost its record of that) may be
// reported lost. After index damage cursors revert: redeliveries are legal
// (as after any crash) and the trace says so; per-key order is checked as
// before, a lost event counting as final.
//
// A failure prints the violations, the knobs and the command that replays
// the run:
//
//	SLUICE_SIM_SEED=123 SLUICE_SIM_KNOBS='seed=123,steps=250,...' go test ./fuzz -run 'TestSimulationSeeds$' -v
//
// with SLUICE_SIM_TRACE=1 for the whole trace, and SLUICE_SIM_REDUCE=1 with
// -run TestSimulationReduce to shrink the knobs (reduce.go). Known bugs that
// are not fixed yet are counted rather than failed (Known, Tolerated; a
// run that cannot go on after one stops early and says so, Report.Stopped);
// the TestBug* tests hold their reduced seeds.
package fuzz
