// Package router delivers the log's events to destinations: one Router per
// destination reads the log from the destination's cursor, filters,
// partitions by ordering key, sends, and records each event's state in the
// engine (the three queues: failed, skipped and aborted entries beside a
// cursor that implies success).
//
// Per destination:
//
//   - Events of one ordering key are sent one batch at a time, in order. A
//     failed event sets a barrier on its key: later events of the key are
//     stored as skipped, in order, while other keys flow on. When the failed
//     event succeeds or is aborted, the key's skipped events go next, in
//     order, before any newer event of the key.
//   - A failure is charged to the event only while the destination looks
//     healthy (a message problem); after MinAttempts charged failures the
//     event is aborted into the dead letters. When many unrelated events
//     fail, the breaker opens: nothing is sent, nothing is charged, and a
//     single probe after an exponential, jittered backoff decides when to
//     resume.
//   - 429 and Retry-After pause the destination without counting as
//     failures; concurrency adapts (AIMD) and an optional rate limit caps
//     events per second.
//   - Memory is bounded by the window (events read ahead of the cursor),
//     and across routers by a shared WindowBudget.
//
// # One step function
//
// The algorithm lives in core, a state machine with no goroutines and no
// clock of its own, and it has one driver: Machine.Step (machine.go). A
// step applies the results of the requests that finished, then reads new
// events into the window (fill), chooses the requests to send (poll), moves
// the cursor past settled events and commits (advance, flush), always in
// that order. Production, the simulator and the scripted tests all run that
// step; they differ only in the clock and the I/O:
//
//   - Router.Run (router.go) steps in real time: it sends each request on a
//     goroutine and hands the results that arrived to the next Step, and
//     waits for a result, new records, room in the window budget or
//     Machine.NextWake.
//   - The simulator (fuzz/sim.go) steps one Machine per destination in
//     virtual time against faulty fake destinations, crashes and storage
//     faults.
//   - The scripted scenarios (core_test.go, on harness_test.go) step it
//     in virtual time too, observing it between phases through
//     Machine.Hooks.
//
// # Files, by phase of a step
//
//   - core.go: the state (core, item, batch) and the driver-facing helpers
//     (nextWake, the window's bounds and budget).
//   - keyqueue.go: per-key order (keyQueues): what may be sent next for a
//     key, what is skipped behind a failed head, when the barrier lifts;
//     its invariants are in its doc and tested against a model.
//   - fill.go: reading the log into the window and admitting events.
//   - dispatch.go: poll, assembling window and stored-entry batches.
//   - complete.go: applying a result (success, throttle, refusal, failure,
//     partial answers, bisection) to the events.
//   - advance.go: moving the cursor past settled events, spilling a slow
//     head, committing; stopping gracefully.
//   - entries.go: stored entries: due retries, draining a key's skipped
//     events, loading an entry's event.
package router
