package engine

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers match them with errors.Is; the engine wraps them
// with context ("cannot append: ...").
var (
	// ErrDiskBudget: the configured disk budget is used up. Nothing was
	// written. Ingest answers 503 with Retry-After.
	ErrDiskBudget = errors.New("disk budget exhausted")
	// ErrBacklogFull: the slowest consumer is too far behind. Nothing was
	// written. Ingest answers 429 with Retry-After.
	ErrBacklogFull = errors.New("backlog limit reached")
	// ErrUnavailable: a write or sync failed (ENOSPC, EIO). Nothing of the
	// failed batch is acknowledged; the engine retries recovery on the next
	// call and every Options.DiskCheckInterval, and works again once the
	// disk does.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrDiskFull: the data directory's filesystem has less free space
	// than Options.DiskFreeBytesMin, or filled up. Nothing was written. It
	// wraps ErrUnavailable (ingest answers 503 with Retry-After); appends
	// resume by themselves once reclaim or the operator frees space
	// (diskfull.go).
	ErrDiskFull = fmt.Errorf("%w: disk full", ErrUnavailable)
	// ErrClosed: the engine is closed.
	ErrClosed = errors.New("engine closed")
	// ErrInvalidRecord: a record violates a size limit.
	ErrInvalidRecord = errors.New("invalid record")
	// ErrCorrupt: stored bytes failed their checksum or framing checks.
	ErrCorrupt = errors.New("corrupt data")
	// ErrIndexDamaged: the index does not describe the segment files (it
	// is missing, or damaged in a way Open cannot repair by itself). Open
	// changed nothing; Recover rebuilds the index from the segments.
	ErrIndexDamaged = errors.New("index missing or damaged")
	// ErrNotFound: no such record, entry or consumer.
	ErrNotFound = errors.New("not found")
	// ErrIllegalTransition: a state transition outside the table in state.go.
	ErrIllegalTransition = errors.New("illegal state transition")
)
