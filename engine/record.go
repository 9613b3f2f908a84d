package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Record is one event in the log.
//
// On Append the caller fills every field but Seq and Pos; the engine copies
// the bytes before Append returns, so the caller may reuse them afterwards.
// Append sets Seq (0 when the record was a duplicate and not stored).
//
// On read (Reader.Next, Engine.Read) the byte slices point into a buffer
// owned by the reader and are valid until its next call: copy what you keep.
type Record struct {
	// Seq is the record's sequence number: consecutive from 1, never reused.
	Seq uint64
	// Pos is where the record lies in the log; entries keep it so reading an
	// exception's payload costs one positioned read.
	Pos Pos
	// ReceivedAt is when ingest received the event, in Unix nanoseconds.
	ReceivedAt int64
	// Source is the name of the source (write key owner) it came from.
	Source []byte
	// Type is the event type (track, identify, ...).
	Type []byte
	// MessageID identifies the event for deduplication (with Source).
	MessageID []byte
	// Key is the ordering key (anonymousId, else userId).
	Key []byte
	// Payload is the event's JSON as stored.
	Payload []byte

	// groupStart is set on read when the frame was the first of its group
	// commit: every record before it was acknowledged (segment format 2).
	groupStart bool
}

// Pos locates a record: the segment's id in the high 32 bits, the frame's
// byte offset in the low 32.
type Pos uint64

func makePos(seg uint32, off int64) Pos { return Pos(uint64(seg)<<32 | uint64(uint32(off))) }

// Segment returns the id of the segment holding the record.
func (p Pos) Segment() uint32 { return uint32(p >> 32) }

// Offset returns the frame's byte offset inside its segment.
func (p Pos) Offset() int64 { return int64(uint32(p)) }

func (p Pos) String() string { return fmt.Sprintf("%d:%d", p.Segment(), p.Offset()) }

// Field limits enforced on Append (ErrInvalidRecord).
const (
	sourceBytesMax    = 255
	typeBytesMax      = 64
	messageIDBytesMax = 1024
	keyBytesMax       = 1024
)

// Frame layout, frozen (format versions 1 and 2):
//
//	+----------+----------+----------+--------------------------------+
//	| len u32  | crc u32  | seq u64  | body (len bytes)               |
//	+----------+----------+----------+--------------------------------+
//	crc = CRC-32C(seq || body), all integers little-endian.
//
//	body = receivedAt i64 | uvarint len, type | uvarint len, source |
//	       uvarint len, messageId | uvarint len, key | payload (the rest)
//
// Format 2 gives the seq field's top bit a meaning: frameGroupStart marks
// the first frame of a group commit. A group is written only after the one
// before it was fsynced and acknowledged, so a valid group-start frame with
// seq s proves that every seq below s was acknowledged: recovery tells a
// torn, never-acknowledged tail from acknowledged records that were lost,
// whatever else the index holds (recovery.go). Format 1 never sets it.
const (
	frameHeaderLen  = 16
	frameGroupStart = uint64(1) << 63
	// frameLenMin is the smallest frame: header, receivedAt and four empty
	// fields.
	frameLenMin = frameHeaderLen + 8 + 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errShortFrame = errors.New("short frame")

func validateRecord(r *Record, recordBytesMax int) error {
	switch {
	case len(r.Source) > sourceBytesMax:
		return fmt.Errorf("source of %d bytes exceeds %d: %w", len(r.Source), sourceBytesMax, ErrInvalidRecord)
	case len(r.Type) > typeBytesMax:
		return fmt.Errorf("type of %d bytes exceeds %d: %w", len(r.Type), typeBytesMax, ErrInvalidRecord)
	case len(r.MessageID) > messageIDBytesMax:
		return fmt.Errorf("messageId of %d bytes exceeds %d: %w", len(r.MessageID), messageIDBytesMax, ErrInvalidRecord)
	case len(r.Key) > keyBytesMax:
		return fmt.Errorf("key of %d bytes exceeds %d: %w", len(r.Key), keyBytesMax, ErrInvalidRecord)
	case frameLen(r) > recordBytesMax:
		return fmt.Errorf("record of %d bytes exceeds %d: %w", frameLen(r), recordBytesMax, ErrInvalidRecord)
	}
	return nil
}

// frameLen is the encoded size of r, header included.
func frameLen(r *Record) int {
	return frameHeaderLen + 8 + 4*binary.MaxVarintLen16 +
		len(r.Type) + len(r.Source) + len(r.MessageID) + len(r.Key) + len(r.Payload)
}

// appendFrame appends r's frame with sequence number seq to dst; seq may
// carry frameGroupStart.
func appendFrame(dst []byte, seq uint64, r *Record) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderLen)...)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.ReceivedAt))
	dst = appendField(dst, r.Type)
	dst = appendField(dst, r.Source)
	dst = appendField(dst, r.MessageID)
	dst = appendField(dst, r.Key)
	dst = append(dst, r.Payload...)
	hdr := dst[start : start+frameHeaderLen]
	binary.LittleEndian.PutUint32(hdr[0:], uint32(len(dst)-start-frameHeaderLen))
	binary.LittleEndian.PutUint64(hdr[8:], seq)
	binary.LittleEndian.PutUint32(hdr[4:], crc32.Checksum(dst[start+8:], crcTable))
	return dst
}

func appendField(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// decodeFrame decodes the frame at the start of buf. It returns
// errShortFrame when buf holds less than the whole frame (read more), and an
// error wrapping ErrCorrupt when the frame is bad. The record's slices alias
// buf.
func decodeFrame(buf []byte, recordBytesMax int) (Record, int, error) {
	var r Record
	if len(buf) < frameHeaderLen {
		return r, 0, errShortFrame
	}
	bodyLen := int(binary.LittleEndian.Uint32(buf[0:]))
	if bodyLen < 8 || bodyLen+frameHeaderLen > recordBytesMax {
		return r, 0, fmt.Errorf("frame length %d: %w", bodyLen, ErrCorrupt)
	}
	n := frameHeaderLen + bodyLen
	if len(buf) < n {
		return r, 0, errShortFrame
	}
	if crc32.Checksum(buf[8:n], crcTable) != binary.LittleEndian.Uint32(buf[4:]) {
		return r, 0, fmt.Errorf("frame checksum mismatch: %w", ErrCorrupt)
	}
	r.Seq = binary.LittleEndian.Uint64(buf[8:])
	r.groupStart = r.Seq&frameGroupStart != 0
	r.Seq &^= frameGroupStart
	body := buf[frameHeaderLen:n]
	r.ReceivedAt = int64(binary.LittleEndian.Uint64(body))
	body = body[8:]
	var ok bool
	if r.Type, body, ok = readField(body); !ok {
		return r, 0, fmt.Errorf("frame type field: %w", ErrCorrupt)
	}
	if r.Source, body, ok = readField(body); !ok {
		return r, 0, fmt.Errorf("frame source field: %w", ErrCorrupt)
	}
	if r.MessageID, body, ok = readField(body); !ok {
		return r, 0, fmt.Errorf("frame messageId field: %w", ErrCorrupt)
	}
	if r.Key, body, ok = readField(body); !ok {
		return r, 0, fmt.Errorf("frame key field: %w", ErrCorrupt)
	}
	r.Payload = body
	return r, n, nil
}

func readField(b []byte) (field, rest []byte, ok bool) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return nil, b, false
	}
	return b[n : n+int(l)], b[n+int(l):], true
}
