package engine

import (
	"encoding/binary"
	"fmt"
)

// Entry is a stored exception: an event that is failed, skipped or aborted
// for one consumer. Successful delivery needs no entry: the cursor implies it.
type Entry struct {
	// Seq is the event's sequence number.
	Seq uint64
	// Pos is where the event lies in the log (from Record.Pos).
	Pos Pos
	// State is StateFailed, StateSkipped or StateAborted.
	State State
	// Flags carries EntryReplayed, EntryUnconfirmed and future bits.
	Flags EntryFlags
	// Key is the event's ordering key.
	Key []byte
	// ReceivedAt is the event's receive time (Unix ns), for age limits.
	ReceivedAt int64
	// Attempts counts delivery attempts charged to the event (outage
	// attempts are not charged).
	Attempts uint32
	// FirstFailure and LastAttempt are Unix ns; zero when unknown.
	FirstFailure int64
	LastAttempt  int64
	// DueAt is when a failed event's next attempt is due (Unix ns).
	DueAt int64
	// LastStatus is the last response's status code (negative: transport
	// error, 0: none).
	LastStatus int32
	// Reason says why the event failed or was aborted.
	Reason string
	// Response is the start of the last response body, at most
	// ResponseBytesMax bytes (longer ones are cut on write).
	Response []byte
}

// EntryFlags are bits of Entry.Flags; values are stored, so frozen.
type EntryFlags uint8

const (
	// EntryReplayed marks an aborted event re-queued by Replay: it keeps its
	// messageId and sets no barrier.
	EntryReplayed EntryFlags = 1 << 0
	// EntryUnconfirmed marks a failed entry whose last failure is not
	// counted in Attempts yet: the router counts it once the destination
	// is seen delivering other events after it (a message problem, not an
	// outage).
	EntryUnconfirmed EntryFlags = 1 << 1
)

// ResponseBytesMax caps Entry.Response.
const ResponseBytesMax = 4096

// reasonBytesMax caps Entry.Reason.
const reasonBytesMax = 1024

const entryVersion = 1

// Entry value layout (version 1, frozen):
//
//	version u8 | state u8 | flags u8 | pos u64 | receivedAt i64 |
//	attempts uvarint | firstFailure varint | lastAttempt varint |
//	dueAt varint | lastStatus varint | reason (uvarint len, bytes) |
//	response (uvarint len, bytes) | key (uvarint len, bytes)
func appendEntry(dst []byte, e *Entry) []byte {
	dst = append(dst, entryVersion, byte(e.State), byte(e.Flags))
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Pos))
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.ReceivedAt))
	dst = binary.AppendUvarint(dst, uint64(e.Attempts))
	dst = binary.AppendVarint(dst, e.FirstFailure)
	dst = binary.AppendVarint(dst, e.LastAttempt)
	dst = binary.AppendVarint(dst, e.DueAt)
	dst = binary.AppendVarint(dst, int64(e.LastStatus))
	reason := e.Reason
	if len(reason) > reasonBytesMax {
		reason = reason[:reasonBytesMax]
	}
	dst = binary.AppendUvarint(dst, uint64(len(reason)))
	dst = append(dst, reason...)
	resp := e.Response
	if len(resp) > ResponseBytesMax {
		resp = resp[:ResponseBytesMax]
	}
	dst = appendField(dst, resp)
	return appendField(dst, e.Key)
}

// decodeEntry decodes an entry value; seq comes from the key. The result
// copies nothing it keeps: Key and Response are fresh slices.
func decodeEntry(seq uint64, v []byte) (Entry, error) {
	e := Entry{Seq: seq}
	bad := func(what string) (Entry, error) {
		return Entry{}, fmt.Errorf("entry %d: bad %s: %w", seq, what, ErrCorrupt)
	}
	if len(v) < 19 || v[0] != entryVersion {
		return bad("header")
	}
	e.State, e.Flags = State(v[1]), EntryFlags(v[2])
	if !e.State.stored() {
		return bad("state")
	}
	e.Pos = Pos(binary.BigEndian.Uint64(v[3:]))
	e.ReceivedAt = int64(binary.BigEndian.Uint64(v[11:]))
	v = v[19:]
	att, n := binary.Uvarint(v)
	if n <= 0 || att > 1<<32-1 {
		return bad("attempts")
	}
	e.Attempts, v = uint32(att), v[n:]
	var vals [4]int64
	for i := range vals {
		x, n := binary.Varint(v)
		if n <= 0 {
			return bad("times")
		}
		vals[i], v = x, v[n:]
	}
	e.FirstFailure, e.LastAttempt, e.DueAt = vals[0], vals[1], vals[2]
	if vals[3] < -1<<31 || vals[3] > 1<<31-1 {
		return bad("status")
	}
	e.LastStatus = int32(vals[3])
	var reason, resp, key []byte
	var ok bool
	if reason, v, ok = readField(v); !ok {
		return bad("reason")
	}
	if resp, v, ok = readField(v); !ok {
		return bad("response")
	}
	if key, v, ok = readField(v); !ok || len(v) != 0 {
		return bad("key")
	}
	e.Reason = string(reason)
	if len(resp) > 0 {
		e.Response = append([]byte(nil), resp...)
	}
	e.Key = append([]byte(nil), key...)
	return e, nil
}
