package jsonscan

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestDocumentAgreesWithEncodingJSON(t *testing.T) {
	cases := []string{
		`{}`, `[]`, `{"a":1}`, ` {"a" : [1, 2.5, -3e10, true, false, null, "x\n\u00e9\ud83d\ude00"]} `,
		`"str"`, `0`, `-0.1E+2`, `{"a":{"b":{"c":[{}]}}}`,
		`{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `[1,]`, `01`, `1.`, `1e`, `tru`, `"\x"`, "\"a\x01\"",
		`{"a":1}x`, `"\u12"`, `nul`, `[`, `{"a":1 "b":2}`, ``, `   `,
	}
	for _, c := range cases {
		_, _, err := Document([]byte(c))
		want := json.Valid([]byte(c))
		if (err == nil) != want {
			t.Errorf("%q: Document err=%v, encoding/json valid=%v", c, err, want)
		}
		if err != nil && !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: error %v does not wrap ErrSyntax", c, err)
		}
	}
}

func TestObjectMembers(t *testing.T) {
	b := []byte(`{"type":"track", "us\u0065rId" : 42 ,"ctx":{"ip":"1"}}`)
	var keys, vals []string
	var escs []bool
	_, err := ObjectScan(b, 0, func(ks, ke int, esc bool, vs int) (int, error) {
		ve, err := Value(b, vs)
		keys = append(keys, string(b[ks:ke]))
		vals = append(vals, string(b[vs:ve]))
		escs = append(escs, esc)
		return ve, err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"type", `us\u0065rId`, "ctx"}
	wantV := []string{`"track"`, `42`, `{"ip":"1"}`}
	for i := range want {
		if keys[i] != want[i] || vals[i] != wantV[i] {
			t.Fatalf("member %d: %q=%q, want %q=%q", i, keys[i], vals[i], want[i], wantV[i])
		}
	}
	if escs[0] || !escs[1] {
		t.Fatalf("escape flags %v", escs)
	}
}

func TestDepthLimit(t *testing.T) {
	deep := make([]byte, 0, 2*DepthMax+10)
	for range DepthMax + 1 {
		deep = append(deep, '[')
	}
	for range DepthMax + 1 {
		deep = append(deep, ']')
	}
	if _, _, err := Document(deep); err == nil {
		t.Fatal("nesting past DepthMax accepted")
	}
}

func TestUnquoteRoundTrip(t *testing.T) {
	for _, s := range []string{"plain", "quote\"back\\slash", "tab\tnl\n", "é😀", "\x01ctl"} {
		q := AppendQuoted(nil, []byte(s))
		if _, _, err := String(q, 0); err != nil {
			t.Fatalf("%q quoted as %s: %v", s, q, err)
		}
		if got := string(AppendUnquoted(nil, q)); got != s {
			t.Fatalf("round trip %q -> %s -> %q", s, q, got)
		}
	}
	if got := string(AppendUnquoted(nil, []byte(`"\ud83d\ude00\u00e9\/"`))); got != "😀é/" {
		t.Fatalf("surrogates: %q", got)
	}
	if got := string(AppendUnquoted(nil, []byte(`"\ud83d"`))); got != "\uFFFD" {
		t.Fatalf("lone surrogate: %q", got)
	}
}

func FuzzDocument(f *testing.F) {
	for _, s := range []string{`{"a":[1,"x",{"b":null}]}`, `"\u00e9"`, `[1e5,-0.5]`, `{"a"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, err := Document(b)
		if (err == nil) != json.Valid(b) {
			t.Fatalf("Document err=%v but encoding/json valid=%v for %q", err, json.Valid(b), b)
		}
	})
}

// BenchmarkDocument measures the validating scan over a batch of ~600-byte
// analytics events (the ingest hot path scans each byte a few times).
func BenchmarkDocument(b *testing.B) {
	var doc []byte
	doc = append(doc, `{"batch":[`...)
	for i := range 100 {
		if i > 0 {
			doc = append(doc, ',')
		}
		doc = fmt.Appendf(doc, `{"type":"track","event":"Product Viewed","userId":"user-%d","anonymousId":"anon-%08d-5c1e-4b7a-9f0e-1d2c3b4a5968","messageId":"msg-%012d-0000-4000-8000-000000000000","timestamp":"2026-11-26T12:00:00.000Z","properties":{"product_id":"sku-%d","name":"Monopoly: 3rd Edition","price":19.99,"currency":"USD"},"context":{"library":{"name":"analytics.js","version":"5.2.0"},"page":{"path":"/p","title":"Shop","url":"https://shop.example/p"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0","locale":"en-US"}}`, i, i, i, i)
	}
	doc = append(doc, `]}`...)
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if _, _, err := Document(doc); err != nil {
			b.Fatal(err)
		}
	}
}
