package ingest

import (
	"time"
)

// parseTimestamp parses the ISO-8601 forms the SDKs send
// (2024-05-01T12:00:00.123Z, with or without fraction, Z or ±hh:mm) without
// allocating; anything else goes through time.Parse.
func parseTimestamp(b []byte) (time.Time, bool) {
	if t, ok := parseISOFast(b); ok {
		return t, true
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	return t, err == nil
}

func parseISOFast(b []byte) (time.Time, bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != ' ') || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	num := func(s []byte) (int, bool) {
		n := 0
		for _, c := range s {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(b[0:4])
	month, ok2 := num(b[5:7])
	day, ok3 := num(b[8:10])
	hour, ok4 := num(b[11:13])
	minute, ok5 := num(b[14:16])
	sec, ok6 := num(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || sec > 60 {
		return time.Time{}, false
	}
	i, nsec := 19, 0
	if b[i] == '.' {
		i++
		digits := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			if digits < 9 {
				nsec = nsec*10 + int(b[i]-'0')
				digits++
			}
			i++
		}
		if digits == 0 {
			return time.Time{}, false
		}
		for ; digits < 9; digits++ {
			nsec *= 10
		}
	}
	offset := 0
	switch {
	case i == len(b)-1 && (b[i] == 'Z' || b[i] == 'z'):
	case i == len(b)-6 && (b[i] == '+' || b[i] == '-') && b[i+3] == ':':
		oh, ok1 := num(b[i+1 : i+3])
		om, ok2 := num(b[i+4 : i+6])
		if !ok1 || !ok2 || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		offset = oh*3600 + om*60
		if b[i] == '-' {
			offset = -offset
		}
	default:
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day { // 2024-02-31 normalised into March
		return time.Time{}, false
	}
	return t.Add(-time.Duration(offset) * time.Second), true
}

// appendTimestamp appends t as a quoted ISO-8601 UTC timestamp with
// milliseconds, the form Segment and RudderStack use.
func appendTimestamp(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		dst = append(dst, '"')
		dst = t.AppendFormat(dst, "2006-01-02T15:04:05.000Z07:00")
		return append(dst, '"')
	}
	hour, minute, sec := t.Clock()
	var b [26]byte // "2006-01-02T15:04:05.000Z"
	digits := func(at, n, width int) {
		for i := at + width - 1; i >= at; i-- {
			b[i] = byte('0' + n%10)
			n /= 10
		}
	}
	b[0], b[25] = '"', '"'
	digits(1, year, 4)
	b[5] = '-'
	digits(6, int(month), 2)
	b[8] = '-'
	digits(9, day, 2)
	b[11] = 'T'
	digits(12, hour, 2)
	b[14] = ':'
	digits(15, minute, 2)
	b[17] = ':'
	digits(18, sec, 2)
	b[20] = '.'
	digits(21, t.Nanosecond()/1e6, 3)
	b[24] = 'Z'
	return append(dst, b[:]...)
}
