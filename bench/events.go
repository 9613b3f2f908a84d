// Package bench is Sluice's bundled load generator and benchmark harness:
// Segment-shaped events numbered per user (events.go), an HTTP load
// generator with a closed-loop and an open-loop mode (load.go), the HTTP
// ceilings the ingest figures are stated against (httpceiling.go), the
// scenarios that run a real `sluice serve` against the fault-injecting sink
// of bench/sink (scenario.go, scenarios.go) and their outputs: HdrHistogram
// percentile files, JSON results, SVG plots and the tables of BENCHMARKS.md
// (report.go, svg.go).
//
// Only 127.0.0.1 (or localhost) is ever a target.
package bench

import (
	"fmt"
	"strconv"
)

// EventConfig shapes generated events.
type EventConfig struct {
	// Bytes is the target size of one event as sent. Events are padded to
	// exactly Bytes (a "pad" property) unless their content alone is
	// larger. Default 600.
	Bytes int
	// Users is the number of distinct users (anonymousId). Default 1000.
	Users int
	// HotUsers and HotPercent skew the load: HotPercent of the requests
	// carry only events of the first HotUsers users (default 1 when
	// HotPercent > 0). See LoadConfig for how requests are routed.
	HotUsers   int
	HotPercent float64
	// RunID makes messageIds unique across runs (dedup would otherwise
	// drop a second run's events). Default: a random 8-hex-digit string.
	RunID string
	// Mix is the share of track, page and identify events in percent;
	// default 70/20/10.
	Mix [3]int
}

// Event types the generator makes.
const (
	TypeTrack    = "track"
	TypePage     = "page"
	TypeIdentify = "identify"
)

func (c EventConfig) withDefaults() (EventConfig, error) {
	if c.Bytes == 0 {
		c.Bytes = 600
	}
	if c.Users == 0 {
		c.Users = 1000
	}
	if c.HotPercent > 0 && c.HotUsers == 0 {
		c.HotUsers = 1
	}
	if c.Mix == [3]int{} {
		c.Mix = [3]int{70, 20, 10}
	}
	switch {
	case c.Bytes < 0 || c.Bytes > 1<<20:
		return c, fmt.Errorf("event bytes %d: want 1..1MiB", c.Bytes)
	case c.Users < 1:
		return c, fmt.Errorf("users %d: want at least 1", c.Users)
	case c.HotPercent < 0 || c.HotPercent >= 100:
		return c, fmt.Errorf("hot percent %g: want 0 <= p < 100", c.HotPercent)
	case c.HotPercent > 0 && c.HotUsers >= c.Users:
		return c, fmt.Errorf("hot users %d: want fewer than users (%d)", c.HotUsers, c.Users)
	case c.Mix[0] < 0 || c.Mix[1] < 0 || c.Mix[2] < 0 || c.Mix[0]+c.Mix[1]+c.Mix[2] == 0:
		return c, fmt.Errorf("mix %v: want non-negative shares, not all zero", c.Mix)
	}
	return c, nil
}

// MessageID returns the messageId of user's event number n in run runID.
func MessageID(runID string, user int, n int64) string {
	return string(AppendMessageID(nil, runID, user, n))
}

// AppendMessageID appends MessageID(runID, user, n) to dst: a version-4
// UUID, as the Segment and RudderStack SDKs send, whose 122 random-looking
// bits are a hash of (runID, user, n). Like the SDKs' ids they arrive in no
// order, which matters to anything that indexes them (Sluice's dedup).
func AppendMessageID(dst []byte, runID string, user int, n int64) []byte {
	a := mix(fnv64(runID) ^ uint64(user)*0x9e3779b97f4a7c15 ^ uint64(n))
	b := mix(a ^ uint64(n)*0xbf58476d1ce4e5b9 ^ uint64(user))
	var u [16]byte
	for i := range 8 {
		u[i], u[8+i] = byte(a>>(8*i)), byte(b>>(8*i))
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	const hexDigits = "0123456789abcdef"
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[c>>4], hexDigits[c&15])
	}
	return dst
}

// mix is SplitMix64's finaliser: a bijection on 64 bits, so distinct
// inputs stay distinct.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func fnv64(s string) uint64 {
	h := uint64(0xcbf29ce484222325)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 0x100000001b3
	}
	return h
}

// AnonymousID returns the ordering key of user in run runID: the sink
// groups by it.
func AnonymousID(runID string, user int) string {
	return string(appendAnonymousID(nil, runID, user))
}

func appendAnonymousID(dst []byte, runID string, user int) []byte {
	dst = append(dst, "anon-"...)
	dst = append(dst, runID...)
	dst = append(dst, '-')
	return appendPadded(dst, user, 8)
}

func appendPadded(dst []byte, v, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendInt(tmp[:0], int64(v), 10)
	for i := len(s); i < width; i++ {
		dst = append(dst, '0')
	}
	return append(dst, s...)
}

// EventType returns the type of user's event n under mix (deterministic,
// so a retry or a re-generation gives the same event).
func EventType(mix [3]int, user int, n int64) string {
	total := uint64(mix[0] + mix[1] + mix[2])
	h := mix64(uint64(user)<<40 ^ uint64(n))
	switch v := h % total; {
	case v < uint64(mix[0]):
		return TypeTrack
	case v < uint64(mix[0]+mix[1]):
		return TypePage
	default:
		return TypeIdentify
	}
}

func mix64(x uint64) uint64 { // splitmix64's finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

var products = [...]struct{ sku, name, price string }{
	{"sku-4711", "Trail Running Shoe", "129.95"},
	{"sku-2044", "Monopoly: 3rd Edition", "19.99"},
	{"sku-8812", "Espresso Grinder", "249.00"},
	{"sku-0093", "Merino Base Layer", "74.50"},
}

var pages = [...]struct{ path, title string }{
	{"/products/trail-shoe", "Trail Shoe | Shop"},
	{"/cart", "Your Cart | Shop"},
	{"/checkout/payment", "Payment | Shop"},
	{"/blog/grinders", "Choosing a grinder | Blog"},
}

const (
	ctxLibrary = `"context":{"library":{"name":"analytics.js","version":"5.2.0"},` +
		`"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",` +
		`"locale":"en-US","page":{"path":"`
	padOpen  = `,"pad":"`
	padClose = `"}}`
)

// AppendEvent appends one Segment-shaped event of type typ for user's
// event number n to dst: messageId, anonymousId and userId derived from
// runID and user, timestamp ts (an RFC 3339 string without quotes),
// realistic context and properties (traits for identify), and
// "properties":{"n":n,...} for the order check. The event is padded to
// exactly size bytes when its content is smaller.
func AppendEvent(dst []byte, runID string, size int, typ string, user int, n int64, ts []byte) []byte {
	start := len(dst)
	dst = append(dst, `{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","messageId":"`...)
	dst = AppendMessageID(dst, runID, user, n)
	dst = append(dst, `","anonymousId":"`...)
	dst = appendAnonymousID(dst, runID, user)
	dst = append(dst, `","userId":"user-`...)
	dst = appendPadded(dst, user, 8)
	dst = append(dst, `","timestamp":"`...)
	dst = append(dst, ts...)
	dst = append(dst, `",`...)
	p := products[(uint64(user)+uint64(n))%uint64(len(products))]
	pg := pages[(uint64(user)*7+uint64(n))%uint64(len(pages))]
	dst = append(dst, ctxLibrary...)
	dst = append(dst, pg.path...)
	dst = append(dst, `","title":"`...)
	dst = append(dst, pg.title...)
	dst = append(dst, `","url":"https://shop.example`...)
	dst = append(dst, pg.path...)
	dst = append(dst, `"}},`...)
	switch typ {
	case TypeTrack:
		dst = append(dst, `"event":"Product Viewed","properties":{"n":`...)
		dst = strconv.AppendInt(dst, n, 10)
		dst = append(dst, `,"product_id":"`...)
		dst = append(dst, p.sku...)
		dst = append(dst, `","name":"`...)
		dst = append(dst, p.name...)
		dst = append(dst, `","price":`...)
		dst = append(dst, p.price...)
		dst = append(dst, `,"currency":"USD"`...)
	case TypePage:
		dst = append(dst, `"name":"Product","properties":{"n":`...)
		dst = strconv.AppendInt(dst, n, 10)
		dst = append(dst, `,"path":"`...)
		dst = append(dst, pg.path...)
		dst = append(dst, `","referrer":"https://www.google.com/","search":"?utm_source=newsletter"`...)
	default: // identify
		dst = append(dst, `"traits":{"email":"user-`...)
		dst = appendPadded(dst, user, 8)
		dst = append(dst, `@example.com","plan":"pro","logins":`...)
		dst = strconv.AppendInt(dst, n, 10)
		dst = append(dst, `},"properties":{"n":`...)
		dst = strconv.AppendInt(dst, n, 10)
	}
	pad := size - (len(dst) - start) - len(padOpen) - len(padClose)
	if pad < 0 {
		return append(dst, "}}"...)
	}
	dst = append(dst, padOpen...)
	for range pad {
		dst = append(dst, 'x')
	}
	return append(dst, padClose...)
}
