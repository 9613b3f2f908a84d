package engine

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzFrameDecode: decoding arbitrary bytes never panics and reports
// either a short frame, corruption or a record; an encoded record always
// decodes back to itself.
func FuzzFrameDecode(f *testing.F) {
	f.Add([]byte("payload"), []byte("key"), []byte("mid"), uint64(7), []byte{})
	f.Add([]byte{}, []byte{}, []byte{}, uint64(1), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17})
	f.Fuzz(func(t *testing.T, payload, key, mid []byte, seq uint64, garbage []byte) {
		if _, _, err := decodeFrame(garbage, 1<<20); err != nil && !errors.Is(err, errShortFrame) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("unexpected error class: %v", err)
		}
		if len(key) > keyBytesMax || len(mid) > messageIDBytesMax {
			return
		}
		in := Record{ReceivedAt: int64(seq), Source: []byte("src"), Type: []byte("track"), MessageID: mid, Key: key, Payload: payload}
		buf := appendFrame(nil, seq, &in)
		out, n, err := decodeFrame(buf, 1<<30)
		if err != nil || n != len(buf) {
			t.Fatalf("round trip: n=%d len=%d err=%v", n, len(buf), err)
		}
		if out.Seq != seq || out.ReceivedAt != in.ReceivedAt || !bytes.Equal(out.Payload, payload) || !bytes.Equal(out.Key, key) || !bytes.Equal(out.MessageID, mid) {
			t.Fatalf("round trip mismatch: %+v", out)
		}
		if len(buf) > frameHeaderLen {
			buf[len(buf)-1] ^= 0x40 // any flipped bit is caught by the checksum
			if _, _, err := decodeFrame(buf, 1<<30); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flipped bit not detected: %v", err)
			}
		}
	})
}

// FuzzEntryDecode: entry values round-trip and garbage never panics.
func FuzzEntryDecode(f *testing.F) {
	f.Add([]byte("k"), "reason", []byte("resp"), uint32(3), int64(100), int32(503), []byte{1, 3, 0})
	f.Fuzz(func(t *testing.T, key []byte, reason string, resp []byte, attempts uint32, due int64, status int32, garbage []byte) {
		decodeEntry(1, garbage)
		in := Entry{Seq: 9, Pos: makePos(3, 77), State: StateFailed, Key: key, Attempts: attempts, DueAt: due, LastStatus: status, Reason: reason, Response: resp}
		out, err := decodeEntry(9, appendEntry(nil, &in))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp) > ResponseBytesMax {
			resp = resp[:ResponseBytesMax]
		}
		if len(reason) > reasonBytesMax {
			reason = reason[:reasonBytesMax]
		}
		if out.Pos != in.Pos || out.Attempts != attempts || out.DueAt != due || out.LastStatus != status || out.Reason != reason || !bytes.Equal(out.Key, key) || !bytes.Equal(out.Response, resp) {
			t.Fatalf("round trip mismatch: %+v vs %+v", out, in)
		}
	})
}
