package ceiling

import (
	"fmt"
	"strings"
)

// IDOffset is where the 16 hex digits of the messageId sit in an event made
// by Event (when it is large enough to hold one: see Event).
const IDOffset = len(`{"messageId":"msg-`)

const (
	idDigits = 16
	hexDigit = "0123456789abcdef"
	// shortEventBytes is the smallest event that still carries a messageId.
	shortEventBytes = IDOffset + idDigits + len(`","pad":""}`)
)

// Event appends to dst a Segment-like JSON track event of exactly size bytes
// whose messageId is "msg-" and id in 16 hex digits, at IDOffset. Events of
// the same size differ only in those digits and in the user fields derived
// from id. Below the size of a full event (about 540 bytes) it writes a
// shorter object, and below 45 bytes only filler without a messageId.
func Event(dst []byte, size int, id uint64) []byte {
	u := id % 100_000_000
	full := fmt.Sprintf(`{"messageId":"msg-%016x","type":"track","event":"Order Completed",`+
		`"userId":"user-%08d","anonymousId":"anon-%08d","timestamp":"2025-01-15T12:34:56.789Z",`+
		`"context":{"library":{"name":"analytics.js","version":"5.2.0"},"ip":"203.0.113.42","locale":"en-US",`+
		`"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"},`+
		`"properties":{"orderId":"ord-%08d","total":129.95,"currency":"USD",`+
		`"products":[{"sku":"SKU-1","name":"Trail Shoe","price":64.95,"quantity":2}]}`, id, u, u, u)
	const padOpen, padClose = `,"pad":"`, `"}`
	start := len(dst)
	switch {
	case size >= len(full)+len(padOpen)+len(padClose):
		dst = append(dst, full...)
	case size >= shortEventBytes:
		dst = fmt.Appendf(dst, `{"messageId":"msg-%016x"`, id)
	default:
		return append(dst, strings.Repeat("x", max(size, 0))...)
	}
	pad := size - (len(dst) - start) - len(padOpen) - len(padClose)
	dst = append(dst, padOpen...)
	dst = append(dst, strings.Repeat("x", pad)...)
	return append(dst, padClose...)
}

// PutID overwrites the messageId digits of an event made by Event with id.
// It does nothing to an event too small to carry one.
func PutID(event []byte, id uint64) {
	if len(event) < shortEventBytes {
		return
	}
	putHex(event[IDOffset:IDOffset+idDigits], id)
}

// MessageID appends "msg-" and id in 16 hex digits to dst: the messageId
// that Event and PutID write.
func MessageID(dst []byte, id uint64) []byte {
	dst = append(dst, "msg-"...)
	n := len(dst)
	dst = append(dst, make([]byte, idDigits)...)
	putHex(dst[n:], id)
	return dst
}

// PutMessageID overwrites the digits of a messageId made by MessageID.
func PutMessageID(msgID []byte, id uint64) {
	putHex(msgID[len(msgID)-idDigits:], id)
}

func putHex(dst []byte, id uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = hexDigit[id&0xf]
		id >>= 4
	}
}
