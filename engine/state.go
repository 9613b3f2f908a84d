package engine

import "fmt"

// State is where one event stands for one consumer (destination).
//
// Only Failed, Skipped and Aborted are stored as entries. Waiting is implied
// by seq >= cursor, Succeeded and Filtered by seq < cursor with no entry.
// Executing and Throttled name states of the delivery model (docs/delivery.md)
// that the engine never stores; the router tracks in-flight and throttled
// events in memory with states of its own.
type State uint8

// The states of the three queues (docs/delivery.md). The numeric values are stored on
// disk (entry values): they are frozen.
const (
	StateWaiting   State = 0
	StateExecuting State = 1
	StateSucceeded State = 2
	StateFailed    State = 3
	StateSkipped   State = 4
	StateThrottled State = 5
	StateFiltered  State = 6
	StateAborted   State = 7
	// StatePurged is the end of an aborted entry that was deleted.
	StatePurged State = 8
)

var stateNames = [...]string{"waiting", "executing", "succeeded", "failed", "skipped", "throttled", "filtered", "aborted", "purged"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// stored reports whether entries in state s are kept in the index.
func (s State) stored() bool {
	return s == StateFailed || s == StateSkipped || s == StateAborted
}

// legal is the table of state transitions the index accepts. Rows are the
// state before, columns the state after. It is checked on every write
// (Txn); stored entries are checked only for a state that may be stored
// (decodeEntry). waiting -> filtered is legal too (not stored: the cursor
// passes it).
//
//	from \ to   failed skipped aborted succeeded purged
//	waiting       x      x       x        x
//	failed        x              x        x
//	skipped       x      x       x        x
//	aborted       x(replay)      x                 x
var legal = map[[2]State]bool{
	{StateWaiting, StateFailed}:    true,
	{StateWaiting, StateSkipped}:   true,
	{StateWaiting, StateAborted}:   true,
	{StateWaiting, StateSucceeded}: true,
	{StateWaiting, StateFiltered}:  true,
	{StateFailed, StateFailed}:     true,
	{StateFailed, StateAborted}:    true,
	{StateFailed, StateSucceeded}:  true,
	{StateSkipped, StateFailed}:    true,
	{StateSkipped, StateSkipped}:   true,
	{StateSkipped, StateAborted}:   true,
	{StateSkipped, StateSucceeded}: true,
	{StateAborted, StateFailed}:    true, // replay
	{StateAborted, StateAborted}:   true, // annotate
	{StateAborted, StatePurged}:    true,
}

// Legal reports whether an entry may move from one state to another.
func Legal(from, to State) bool { return legal[[2]State{from, to}] }

func checkTransition(seq uint64, from, to State) error {
	if !Legal(from, to) {
		return fmt.Errorf("cannot move event %d from %s to %s: %w", seq, from, to, ErrIllegalTransition)
	}
	return nil
}
