package engine

import "encoding/binary"

// Index key layout (Pebble), frozen for index version 3 (versions 1 and 2
// kept dedup keys in Pebble, 0x0b; Open migrates them). Integers are
// big-endian so that keys sort numerically. cid is a consumer's 4-byte id.
//
//	0x01 'v'                                → index version (u32)
//	0x02 segID u32                          → segment manifest value
//	0x03 name                               → consumer id (u32)
//	0x04 cid                                → cursor: seq u64 | pos u64
//	0x05 cid seq u64                        → entry (failed or skipped)
//	0x06 cid dueAt i64 seq u64              → nil: failed entries by due time
//	0x07 cid keyLen u16 key seq u64         → nil: failed/skipped by ordering key
//	0x08 cid keyLen u16 key                 → barrier: head seq u64
//	0x09 cid seq u64                        → entry (aborted: the dead letters)
//	0x0a seq u64                            → frame of a straggler moved out of
//	                                          a deleted segment
//	0x0b                                    → (versions 1 and 2: dedup keys)
//	0x0c                                    → dedup checkpoint: seq u64
//	0x0d                                    → next consumer id (u32)
//	0x0e id u64                             → dedup run: gen u32 | entries u64
//	0x0f first u64                          → lost seqs first..last: last u64
const (
	prefixVersion    = 0x01
	prefixSegment    = 0x02
	prefixConsumer   = 0x03
	prefixCursor     = 0x04
	prefixEntry      = 0x05
	prefixDue        = 0x06
	prefixKeyIndex   = 0x07
	prefixBarrier    = 0x08
	prefixAborted    = 0x09
	prefixStraggler  = 0x0a
	prefixDedup      = 0x0b
	prefixDedupCkpt  = 0x0c
	prefixConsumerID = 0x0d
	prefixDedupRun   = 0x0e
	prefixLost       = 0x0f
)

// segmentVersion is stored in every segment header (version 1 files are
// read as they are: they never set frameGroupStart); indexVersion under
// keyVersion.
const (
	segmentVersion = 2
	indexVersion   = 3
)

var (
	keyVersion    = []byte{prefixVersion, 'v'}
	keyDedupCkpt  = []byte{prefixDedupCkpt}
	keyConsumerID = []byte{prefixConsumerID}
)

func segmentKey(id uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{prefixSegment}, id)
}

func consumerKey(name string) []byte { return append([]byte{prefixConsumer}, name...) }

// prefixCID returns prefix|cid with room to append more.
func prefixCID(prefix byte, cid uint32) []byte {
	b := make([]byte, 0, 48)
	b = append(b, prefix)
	return binary.BigEndian.AppendUint32(b, cid)
}

func cursorKey(cid uint32) []byte { return prefixCID(prefixCursor, cid) }

func entryKey(cid uint32, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(prefixCID(prefixEntry, cid), seq)
}

func abortedKey(cid uint32, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(prefixCID(prefixAborted, cid), seq)
}

func dueKey(cid uint32, dueAt int64, seq uint64) []byte {
	b := binary.BigEndian.AppendUint64(prefixCID(prefixDue, cid), uint64(dueAt))
	return binary.BigEndian.AppendUint64(b, seq)
}

func keyIndexPrefix(cid uint32, key []byte) []byte {
	b := binary.BigEndian.AppendUint16(prefixCID(prefixKeyIndex, cid), uint16(len(key)))
	return append(b, key...)
}

func keyIndexKey(cid uint32, key []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(keyIndexPrefix(cid, key), seq)
}

func barrierKey(cid uint32, key []byte) []byte {
	b := binary.BigEndian.AppendUint16(prefixCID(prefixBarrier, cid), uint16(len(key)))
	return append(b, key...)
}

func stragglerKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixStraggler}, seq)
}

func lostKey(first uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixLost}, first)
}

func dedupRunKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixDedupRun}, id)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}
