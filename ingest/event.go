package ingest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/ingest/internal/jsonscan"
)

// Event types the Segment spec defines; anything else is refused.
var eventTypes = [][]byte{
	[]byte("track"), []byte("identify"), []byte("page"), []byte("screen"), []byte("group"), []byte("alias"),
}

func knownType(t []byte) []byte {
	for _, k := range eventTypes {
		if bytes.Equal(k, t) {
			return k
		}
	}
	return nil
}

// messageIDBytesMax is the longest messageId accepted (DESIGN.md: 400 past
// 256 bytes).
const messageIDBytesMax = 256

// keyBytesMax bounds userId and anonymousId so ordering keys stay compact.
const keyBytesMax = 1024

// batchContext holds a batch request's top-level fields that apply to every
// event in it (raw value spans of the request body).
type batchContext struct {
	context, integrations, sentAt []byte
}

// requestInfo is what the request itself contributes to each event.
type requestInfo struct {
	source     []byte
	ip         []byte
	receivedAt time.Time
	pathType   []byte // type implied by the endpoint (/v1/track), or nil
}

// eventError refuses a request because of one event.
type eventError struct {
	status int
	index  int // -1 for single-event requests
	msg    string
}

func (e *eventError) Error() string {
	if e.index < 0 {
		return e.msg
	}
	return fmt.Sprintf("event %d: %s", e.index, e.msg)
}

// builder turns raw client events into enriched ones, appending their JSON
// to out and their record fields to meta; records are made at the end, once
// out stops moving. One builder serves one request; builders are pooled.
type builder struct {
	out      []byte
	fields   []byte // unquoted messageId and key values
	meta     []eventMeta
	recs     []engine.Record
	members  []member
	ctxKeys  []span
	maxEvent int
}

type span struct{ s, e int }

func (s span) ok() bool { return s.e > s.s }

type eventMeta struct {
	payload, messageID, key span
	typ                     []byte
}

type memberKind uint8

const (
	mOther memberKind = iota
	mType
	mUserID
	mAnonymousID
	mMessageID
	mTimestamp
	mOriginalTimestamp
	mSentAt
	mContext
	mIntegrations
	mReceivedAt
	mProjectID
	mWriteKey
)

var memberNames = map[string]memberKind{
	"type": mType, "userId": mUserID, "anonymousId": mAnonymousID, "messageId": mMessageID,
	"timestamp": mTimestamp, "originalTimestamp": mOriginalTimestamp, "sentAt": mSentAt,
	"context": mContext, "integrations": mIntegrations, "receivedAt": mReceivedAt,
	"projectId": mProjectID, "writeKey": mWriteKey,
}

type member struct {
	start int // the key's opening quote
	val   span
	kind  memberKind
}

func (b *builder) reset() {
	b.out, b.fields, b.meta, b.recs = b.out[:0], b.fields[:0], b.meta[:0], b.recs[:0]
}

// collect validates the object at body[s:] and records its members.
func (b *builder) collect(body []byte, s int) error {
	b.members = b.members[:0]
	_, err := jsonscan.Object(body, s, func(ks, ke int, esc bool, vs, ve int) error {
		b.members = append(b.members, member{start: ks - 1, val: span{vs, ve}, kind: memberKindOf(body[ks:ke], esc)})
		return nil
	})
	return err
}

func memberKindOf(key []byte, escaped bool) memberKind {
	if escaped {
		key = jsonscan.AppendUnquoted(nil, append(append([]byte{'"'}, key...), '"'))
	}
	if len(key) > 17 || len(key) < 4 {
		return mOther
	}
	return memberNames[string(key)] // no allocation: map lookup with string(bytes)
}

// find returns the value span of the last member of a kind.
func (b *builder) find(kind memberKind) span {
	var sp span
	for _, m := range b.members {
		if m.kind == kind {
			sp = m.val
		}
	}
	return sp
}

// isEmpty reports whether a value span is absent, null or "".
func isEmpty(body []byte, sp span) bool {
	if !sp.ok() {
		return true
	}
	v := body[sp.s:sp.e]
	return string(v) == "null" || string(v) == `""`
}

// addEvent validates and enriches the event object at body[s:e].
func (b *builder) addEvent(body []byte, s, e, index int, bc *batchContext, ri *requestInfo) error {
	bad := func(status int, format string, args ...any) error {
		return &eventError{status: status, index: index, msg: fmt.Sprintf(format, args...)}
	}
	if e-s > b.maxEvent {
		return bad(http.StatusRequestEntityTooLarge, "event of %d bytes exceeds the limit of %d", e-s, b.maxEvent)
	}
	if body[s] != '{' {
		return bad(http.StatusBadRequest, "event must be a JSON object")
	}
	if err := b.collect(body, s); err != nil {
		return bad(http.StatusBadRequest, "%v", err)
	}
	var meta eventMeta
	// type
	if sp := b.find(mType); sp.ok() {
		if body[sp.s] != '"' {
			return bad(http.StatusBadRequest, "type must be a string")
		}
		meta.typ = knownType(body[sp.s+1 : sp.e-1])
		if meta.typ == nil {
			return bad(http.StatusBadRequest, "unknown type %s", body[sp.s:sp.e])
		}
	} else if ri.pathType != nil {
		meta.typ = ri.pathType
	} else {
		return bad(http.StatusBadRequest, "missing type")
	}
	// ordering key: anonymousId, else userId
	anon, user := b.find(mAnonymousID), b.find(mUserID)
	keySpan := anon
	if isEmpty(body, anon) {
		keySpan = user
	}
	if isEmpty(body, keySpan) {
		return bad(http.StatusBadRequest, "neither userId nor anonymousId is set")
	}
	var err error
	if meta.key, err = b.appendScalar(body, keySpan, keyBytesMax); err != nil {
		return bad(http.StatusBadRequest, "userId/anonymousId: %v", err)
	}
	// messageId
	midSpan := b.find(mMessageID)
	genID := isEmpty(body, midSpan)
	if !genID {
		if meta.messageID, err = b.appendScalar(body, midSpan, messageIDBytesMax); err != nil {
			return bad(http.StatusBadRequest, "messageId: %v", err)
		}
	} else {
		start := len(b.fields)
		b.fields = appendUUID(b.fields)
		meta.messageID = span{start, len(b.fields)}
	}
	ctxSpan := b.find(mContext)
	if ctxSpan.ok() && body[ctxSpan.s] != '{' && !isEmpty(body, ctxSpan) {
		return bad(http.StatusBadRequest, "context must be an object")
	}
	meta.payload.s = len(b.out)
	b.writeEvent(body, &meta, genID, bc, ri)
	meta.payload.e = len(b.out)
	b.meta = append(b.meta, meta)
	return nil
}

// appendScalar appends the text of a string or number value to b.fields.
func (b *builder) appendScalar(body []byte, sp span, max int) (span, error) {
	v := body[sp.s:sp.e]
	start := len(b.fields)
	switch {
	case v[0] == '"':
		b.fields = jsonscan.AppendUnquoted(b.fields, v)
	case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
		b.fields = append(b.fields, v...)
	default:
		return span{}, fmt.Errorf("must be a string or number")
	}
	if n := len(b.fields) - start; n > max {
		b.fields = b.fields[:start]
		return span{}, fmt.Errorf("%d bytes exceeds the limit of %d", n, max)
	}
	return span{start, len(b.fields)}, nil
}

// writeEvent appends the enriched event: the client's members verbatim
// except the ones the server owns or rewrites, then the server's fields.
func (b *builder) writeEvent(body []byte, meta *eventMeta, genID bool, bc *batchContext, ri *requestInfo) {
	ts, tsRewrite, origTs := b.timestamps(body, bc, ri)
	ctxSpan := b.find(mContext)
	ctxRewrite := b.contextNeedsRewrite(body, ctxSpan, bc, ri)
	hasIntegrations := b.find(mIntegrations).ok()
	hasType := b.find(mType).ok()

	out := append(b.out, '{')
	first := true
	sep := func() {
		if !first {
			out = append(out, ',')
		}
		first = false
	}
	for _, m := range b.members {
		switch {
		case m.kind == mReceivedAt, m.kind == mProjectID, m.kind == mWriteKey:
			continue
		case m.kind == mTimestamp && tsRewrite:
			continue
		case m.kind == mMessageID && genID: // null or "": replaced below
			continue
		case m.kind == mOriginalTimestamp && origTs != nil: // null or "": replaced below
			continue
		case m.kind == mContext && ctxRewrite:
			continue
		}
		sep()
		out = append(out, body[m.start:m.val.e]...)
	}
	if !hasType {
		sep()
		out = append(out, `"type":"`...)
		out = append(out, meta.typ...)
		out = append(out, '"')
	}
	if genID {
		sep()
		out = append(out, `"messageId":`...)
		out = jsonscan.AppendQuoted(out, b.fields[meta.messageID.s:meta.messageID.e])
	}
	if origTs != nil {
		sep()
		out = append(out, `"originalTimestamp":`...)
		out = append(out, origTs...)
	}
	if tsRewrite {
		sep()
		out = append(out, `"timestamp":`...)
		out = appendTimestamp(out, ts)
	}
	sep()
	out = append(out, `"receivedAt":`...)
	out = appendTimestamp(out, ri.receivedAt)
	sep()
	out = append(out, `"projectId":`...)
	out = jsonscan.AppendQuoted(out, ri.source)
	if !hasIntegrations && bc != nil && bc.integrations != nil {
		sep()
		out = append(out, `"integrations":`...)
		out = append(out, bc.integrations...)
	}
	if ctxRewrite {
		sep()
		out = b.appendContext(out, body, ctxSpan, bc, ri)
	}
	b.out = append(out, '}')
}

// timestamps applies Segment's clock-skew correction:
// timestamp = receivedAt - (sentAt - originalTimestamp), where the original
// is the client's originalTimestamp, else its timestamp. It returns the new
// timestamp, whether to write it, and the raw originalTimestamp value to add
// (the client's timestamp, when it sent no originalTimestamp).
func (b *builder) timestamps(body []byte, bc *batchContext, ri *requestInfo) (time.Time, bool, []byte) {
	tsSpan, origSpan, sentSpan := b.find(mTimestamp), b.find(mOriginalTimestamp), b.find(mSentAt)
	orig := origSpan
	if isEmpty(body, orig) {
		orig = tsSpan
	}
	var sent []byte
	if !isEmpty(body, sentSpan) {
		sent = body[sentSpan.s:sentSpan.e]
	} else if bc != nil {
		sent = bc.sentAt
	}
	origT, origOK := parseStringTime(body, orig)
	sentT, sentOK := parseStringTime(sent, span{0, len(sent)})
	var addOrig []byte
	if isEmpty(body, origSpan) && origOK {
		addOrig = body[tsSpan.s:tsSpan.e]
	}
	switch {
	case origOK && sentOK:
		return ri.receivedAt.Add(-sentT.Sub(origT)), true, addOrig
	case origOK:
		if _, ok := parseStringTime(body, tsSpan); ok {
			return time.Time{}, false, addOrig // the client's timestamp stands
		}
		return origT, true, addOrig // missing or unparsable: use the original
	default:
		return ri.receivedAt, true, nil
	}
}

func parseStringTime(body []byte, sp span) (time.Time, bool) {
	if sp.e-sp.s < 3 || body[sp.s] != '"' {
		return time.Time{}, false
	}
	return parseTimestamp(body[sp.s+1 : sp.e-1])
}

// contextNeedsRewrite reports whether the event's context must be rebuilt:
// to merge the batch's context, or to add the client's IP.
func (b *builder) contextNeedsRewrite(body []byte, ctx span, bc *batchContext, ri *requestInfo) bool {
	if bc != nil && bc.context != nil && len(bc.context) > 2 {
		return true
	}
	if len(ri.ip) == 0 {
		return false
	}
	if isEmpty(body, ctx) {
		return true
	}
	hasIP := false
	jsonscan.Object(body, ctx.s, func(ks, ke int, esc bool, vs, ve int) error {
		if string(body[ks:ke]) == "ip" && !isEmpty(body, span{vs, ve}) {
			hasIP = true
		}
		return nil
	})
	return !hasIP
}

// appendContext writes "context":{...}: the event's members, then the
// batch context's members the event lacks, then "ip" if neither has one.
func (b *builder) appendContext(out, body []byte, ctx span, bc *batchContext, ri *requestInfo) []byte {
	out = append(out, `"context":{`...)
	first := true
	b.ctxKeys = b.ctxKeys[:0]
	hasIP := false
	add := func(src []byte, ks, ve int, key []byte, v span) {
		if string(key) == "ip" && isEmpty(src, v) {
			return // an empty ip is replaced by the request's
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, src[ks-1:ve]...)
		if string(key) == "ip" && !isEmpty(src, v) {
			hasIP = true
		}
	}
	if !isEmpty(body, ctx) {
		jsonscan.Object(body, ctx.s, func(ks, ke int, esc bool, vs, ve int) error {
			b.ctxKeys = append(b.ctxKeys, span{ks, ke})
			add(body, ks, ve, body[ks:ke], span{vs, ve})
			return nil
		})
	}
	if bc != nil && bc.context != nil {
		bctx := bc.context
		jsonscan.Object(bctx, 0, func(ks, ke int, esc bool, vs, ve int) error {
			for _, k := range b.ctxKeys {
				if bytes.Equal(body[k.s:k.e], bctx[ks:ke]) {
					return nil
				}
			}
			add(bctx, ks, ve, bctx[ks:ke], span{vs, ve})
			return nil
		})
	}
	if !hasIP && len(ri.ip) > 0 {
		if !first {
			out = append(out, ',')
		}
		out = append(out, `"ip":`...)
		out = jsonscan.AppendQuoted(out, ri.ip)
	}
	return append(out, '}')
}

// records returns the engine records of the events added so far. Their
// slices alias the builder's buffers.
func (b *builder) records(ri *requestInfo) []engine.Record {
	for _, m := range b.meta {
		b.recs = append(b.recs, engine.Record{
			ReceivedAt: ri.receivedAt.UnixNano(),
			Source:     ri.source,
			Type:       m.typ,
			MessageID:  b.fields[m.messageID.s:m.messageID.e],
			Key:        b.fields[m.key.s:m.key.e],
			Payload:    b.out[m.payload.s:m.payload.e],
		})
	}
	return b.recs
}

// appendUUID appends a random version-4 UUID.
func appendUUID(dst []byte) []byte {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
	return append(dst, s[:]...)
}
