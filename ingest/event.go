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

// messageIDBytesMax is the longest messageId accepted: longer ones are
// refused with 400 (the engine would take up to 1024 bytes).
const messageIDBytesMax = 256

// keyBytesMax bounds userId and anonymousId so ordering keys stay compact.
const keyBytesMax = 1024

// batchContext holds a batch request's top-level fields that apply to every
// event in it (raw value spans of the request body), and the members of its
// context.
type batchContext struct {
	context, integrations, sentAt []byte
	ctxMembers                    []ctxMember
}

// requestInfo is what the request itself contributes to each event.
type requestInfo struct {
	source     []byte
	ip         []byte
	receivedAt time.Time
	// receivedAtJSON is receivedAt as appendTimestamp writes it (once per
	// request).
	receivedAtJSON []byte
	pathType       []byte // type implied by the endpoint (/v1/track), or nil
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

// builder turns raw client events into enriched ones in two steps. Collect
// (collectEvent, in the request's one validating pass over the body) notes
// each event's members and its context's members; add (addEvent, once the
// whole request is read, batch-level fields included) checks them and
// appends the enriched JSON to out and the record fields to meta. Records
// are made at the end, once out stops moving. No byte is scanned twice.
// One builder serves one request; builders are pooled.
type builder struct {
	out        []byte
	fields     []byte // unquoted messageId and key values
	meta       []eventMeta
	recs       []engine.Record
	events     []rawEvent
	members    []member    // of every collected event
	ctxMembers []ctxMember // of every collected event's context
	cur        []member    // the event being added
	curCtx     []ctxMember
	vals       [mKinds]span // the event being added: last value of each kind
	maxEvent   int
}

// rawEvent is a collected event: its span in the body and its members.
type rawEvent struct {
	s, e             int
	notObject        bool
	members, ctxMems span // ranges of builder.members and builder.ctxMembers
}

// ctxMember is one member of a context object: key (without quotes) and
// value spans.
type ctxMember struct{ key, val span }

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
	mKinds // the number of kinds
)

type member struct {
	start int // the key's opening quote
	val   span
	kind  memberKind
}

func (b *builder) reset() {
	b.out, b.fields, b.meta, b.recs = b.out[:0], b.fields[:0], b.meta[:0], b.recs[:0]
	b.resetEvents()
}

// resetEvents forgets the collected events.
func (b *builder) resetEvents() {
	b.events, b.members, b.ctxMembers = b.events[:0], b.members[:0], b.ctxMembers[:0]
}

// collectEvent validates the value at body[s:] as one event and notes its
// members; it returns the index past it. A value that is not an object is
// noted too: addEvent refuses it in its turn. hook, when set, sees each
// member as well (the request's own fields of a single-event request).
func (b *builder) collectEvent(body []byte, s int, hook jsonscan.MemberFunc) (int, error) {
	ev := rawEvent{s: s, members: span{len(b.members), len(b.members)}, ctxMems: span{len(b.ctxMembers), len(b.ctxMembers)}}
	if s >= len(body) || body[s] != '{' {
		end, err := jsonscan.Value(body, s)
		ev.e, ev.notObject = end, true
		b.events = append(b.events, ev)
		return end, err
	}
	scan := b.scanMember(body, ev.ctxMems.s)
	end, err := jsonscan.ObjectScan(body, s, func(ks, ke int, esc bool, vs int) (int, error) {
		ve, err := scan(ks, ke, esc, vs)
		if err == nil && hook != nil {
			err = hook(ks, ke, esc, vs, ve)
		}
		return ve, err
	})
	if err != nil {
		return end, err
	}
	ev.e, ev.members.e, ev.ctxMems.e = end, len(b.members), len(b.ctxMembers)
	b.events = append(b.events, ev)
	return end, nil
}

// scanMember returns the member scanner of an event whose context members
// start at ctxStart in b.ctxMembers: it notes each member, and the members
// of an object context (of the last context, as the last member of a name
// is the one that counts).
func (b *builder) scanMember(body []byte, ctxStart int) jsonscan.MemberScanFunc {
	return func(ks, ke int, esc bool, vs int) (int, error) {
		kind := memberKindOf(body[ks:ke], esc)
		var ve int
		var err error
		if kind == mContext {
			b.ctxMembers = b.ctxMembers[:ctxStart]
		}
		if kind == mContext && vs < len(body) && body[vs] == '{' {
			ve, err = b.scanContext(body, vs, &b.ctxMembers)
		} else {
			ve, err = jsonscan.Value(body, vs)
		}
		if err != nil {
			return ve, err
		}
		b.members = append(b.members, member{start: ks - 1, val: span{vs, ve}, kind: kind})
		return ve, nil
	}
}

// scanContext validates the context object at body[s:] and appends its
// members to *dst.
func (b *builder) scanContext(body []byte, s int, dst *[]ctxMember) (int, error) {
	return jsonscan.ObjectScan(body, s, func(ks, ke int, esc bool, vs int) (int, error) {
		ve, err := jsonscan.Value(body, vs)
		if err == nil {
			*dst = append(*dst, ctxMember{key: span{ks, ke}, val: span{vs, ve}})
		}
		return ve, err
	})
}

func memberKindOf(key []byte, escaped bool) memberKind {
	if escaped {
		key = jsonscan.AppendUnquoted(nil, append(append([]byte{'"'}, key...), '"'))
	}
	switch string(key) { // no allocation
	case "type":
		return mType
	case "userId":
		return mUserID
	case "anonymousId":
		return mAnonymousID
	case "messageId":
		return mMessageID
	case "timestamp":
		return mTimestamp
	case "originalTimestamp":
		return mOriginalTimestamp
	case "sentAt":
		return mSentAt
	case "context":
		return mContext
	case "integrations":
		return mIntegrations
	case "receivedAt":
		return mReceivedAt
	case "projectId":
		return mProjectID
	case "writeKey":
		return mWriteKey
	}
	return mOther
}

// find returns the value span of the current event's last member of a kind.
func (b *builder) find(kind memberKind) span { return b.vals[kind] }

// isEmpty reports whether a value span is absent, null or "".
func isEmpty(body []byte, sp span) bool {
	if !sp.ok() {
		return true
	}
	v := body[sp.s:sp.e]
	return string(v) == "null" || string(v) == `""`
}

// addEvent checks and enriches a collected event.
func (b *builder) addEvent(body []byte, ev *rawEvent, index int, bc *batchContext, ri *requestInfo) error {
	bad := func(status int, format string, args ...any) error {
		return &eventError{status: status, index: index, msg: fmt.Sprintf(format, args...)}
	}
	if ev.e-ev.s > b.maxEvent {
		return bad(http.StatusRequestEntityTooLarge, "event of %d bytes exceeds the limit of %d", ev.e-ev.s, b.maxEvent)
	}
	if ev.notObject {
		return bad(http.StatusBadRequest, "event must be a JSON object")
	}
	b.cur, b.curCtx = b.members[ev.members.s:ev.members.e], b.ctxMembers[ev.ctxMems.s:ev.ctxMems.e]
	b.vals = [mKinds]span{}
	for _, m := range b.cur {
		b.vals[m.kind] = m.val
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
	for _, m := range b.cur {
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
	out = append(out, ri.receivedAtJSON...)
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
	for _, m := range b.curCtx {
		if string(body[m.key.s:m.key.e]) == "ip" && !isEmpty(body, m.val) {
			return false
		}
	}
	return true
}

// appendContext writes "context":{...}: the event's members, then the
// batch context's members the event lacks, then "ip" if neither has one.
func (b *builder) appendContext(out, body []byte, ctx span, bc *batchContext, ri *requestInfo) []byte {
	out = append(out, `"context":{`...)
	first := true
	hasIP := false
	add := func(m ctxMember) {
		key := body[m.key.s:m.key.e]
		if string(key) == "ip" {
			if isEmpty(body, m.val) {
				return // an empty ip is replaced by the request's
			}
			hasIP = true
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, body[m.key.s-1:m.val.e]...)
	}
	var evCtx []ctxMember
	if !isEmpty(body, ctx) {
		evCtx = b.curCtx
	}
	for _, m := range evCtx {
		add(m)
	}
	if bc != nil {
	batch:
		for _, m := range bc.ctxMembers {
			for _, k := range evCtx {
				if bytes.Equal(body[k.key.s:k.key.e], body[m.key.s:m.key.e]) {
					continue batch
				}
			}
			add(m)
		}
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
