package engine

import "fmt"

// State is where one event stands for one consumer (destination).
//
// Only Failed, Skipped and Aborted are stored as entries. Waiting is implied
// by seq >= cursor, Succeeded and Filtered by seq < cursor with no entry.
// Executing and Throttled exist only in the router's memory; they are listed
// so the whole vocabulary lives in one place.
type State uint8

// The states of DESIGN.md's three queues. The numeric values are stored on
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
// state before, columns the state after. It is checked on every write (Txn)
// and on every replay of stored entries (Open, Check).
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
