package warehouse

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/router"
)

var testNames = Names{MaxLen: 63, Reserved: ReservedSet(SQLReserved, []string{"user"})}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{
		"userId": "user_id", "Product Viewed": "product_viewed", "HTTPStatus": "http_status", "already_snake": "already_snake",
		"postalCode": "postal_code", "$price": "price", "total billed": "total_billed", "a--b": "a_b", "iOS": "i_os",
		"v2Name": "v2_name", "ABC": "abc", "ünïcode": "n_code", "  ": "", "Order Completed!": "order_completed",
		"utm_source": "utm_source", "page.url": "page_url",
	} {
		if got := SnakeCase(in); got != want {
			t.Errorf("SnakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSanitize(t *testing.T) {
	n := Names{MaxLen: 10, Reserved: ReservedSet(SQLReserved)}
	for in, want := range map[string]string{
		"select": "_select", "1st": "_1st", "": "_", "order": "_order", "orders": "orders",
		"abcdefghijklmnop": "abcdefghij", "9abcdefghijkl": "_9abcdefgh",
	} {
		if got := n.Sanitize(in); got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
	}
	if got := n.Table("Users"); got != "_users" {
		t.Errorf("event Users goes to %q, want _users", got)
	}
	s1, s2 := n.Suffixed("abcdefghij", "fooBar"), n.Suffixed("abcdefghij", "foo bar")
	if len(s1) != 10 || s1 == s2 || s1 != n.Suffixed("abcdefghij", "fooBar") {
		t.Errorf("suffixed names %q %q: want 10 bytes, distinct per key, stable", s1, s2)
	}
}

func TestInferAndConvert(t *testing.T) {
	m := Mapping{Names: testNames, Schema: "s"}
	mp, err := m.Map(router.Event{MessageID: []byte("m"), Payload: []byte(`{"type":"track","event":"E","properties":
		{"i":42,"f":1.5,"e":1e3,"b":true,"t":"2024-01-02T03:04:05.678Z","s":"2024-01-02","n":null,"a":[1,"x"],"big":12345678901234567890}}`)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := mp.Rows[1].Row.Cells
	want := map[string]Type{"i": TypeInt, "f": TypeFloat, "e": TypeFloat, "b": TypeBool, "t": TypeDatetime, "s": TypeString,
		"a": TypeString, "big": TypeFloat}
	for k, typ := range want {
		if c[k].T != typ {
			t.Errorf("%s: %v, want %v", k, c[k].T, typ)
		}
	}
	if _, ok := c["n"]; ok {
		t.Error("a null made a cell")
	}
	if c["a"].V != `[1,"x"]` {
		t.Errorf("array as %v", c["a"].V)
	}
	cases := []struct {
		v     Value
		col   Type
		ok    bool
		out   any
		label string
	}{
		{Value{TypeInt, int64(3)}, TypeFloat, true, 3.0, "int to float"},
		{Value{TypeFloat, 2.5}, TypeInt, false, nil, "float to int (widened by DDL, not here)"},
		{Value{TypeString, "x"}, TypeInt, false, nil, "text to int"},
		{Value{TypeInt, int64(7)}, TypeString, true, "7", "int to text"},
		{Value{TypeBool, true}, TypeString, true, "true", "bool to text"},
		{Value{TypeString, "2024-01-02T03:04:05Z"}, TypeDatetime, true, time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), "text timestamp"},
		{Value{TypeString, "soon"}, TypeDatetime, false, nil, "text to datetime"},
		{Value{TypeInt, int64(1)}, TypeBool, false, nil, "int to bool"},
		{Value{TypeString, "x"}, TypeJSON, true, `"x"`, "text to json"},
	}
	for _, tc := range cases {
		out, ok, why := convert(tc.v, tc.col)
		if ok != tc.ok || ok && out.V != tc.out {
			t.Errorf("%s: %v %v (%s)", tc.label, out.V, ok, why)
		}
	}
}

func mapOne(t *testing.T, m *Mapping, payload string) Mapped {
	t.Helper()
	mp, err := m.Map(router.Event{Seq: 1, MessageID: []byte("mid"), Source: []byte("iOS App"), ReceivedAt: time.Now().UnixNano(),
		Payload: []byte(payload)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return mp
}

func tables(mp Mapped) string {
	var ts []string
	for _, r := range mp.Rows {
		ts = append(ts, r.Table)
	}
	return strings.Join(ts, ",")
}

func TestTableRouting(t *testing.T) {
	m := &Mapping{Names: testNames}
	for payload, want := range map[string]string{
		`{"type":"track","event":"Order Completed","userId":"u"}`:          "tracks,order_completed",
		`{"type":"track","event":"tracks","userId":"u"}`:                   "tracks,_tracks",
		`{"type":"track","userId":"u"}`:                                    "tracks",
		`{"type":"identify","userId":"u","traits":{"a":1}}`:                "identifies,users",
		`{"type":"identify","anonymousId":"a","traits":{"a":1}}`:           "identifies",
		`{"type":"page","userId":"u"}`:                                     "pages",
		`{"type":"screen","userId":"u"}`:                                   "screens",
		`{"type":"group","userId":"u","groupId":"g"}`:                      "groups",
		`{"type":"alias","userId":"u","previousId":"p"}`:                   "aliases",
		`{"type":"identify","userId":"u","context":{"traits":{"x":true}}}`: "identifies,users",
	} {
		mp := mapOne(t, m, payload)
		if got := tables(mp); got != want {
			t.Errorf("%s: tables %s, want %s", payload, got, want)
		}
		if mp.Schema != "i_os_app" {
			t.Errorf("schema %q, want the source's name in snake_case", mp.Schema)
		}
	}
	skip := &Mapping{Names: testNames, SkipTracks: true, SkipUsers: true}
	if got := tables(mapOne(t, skip, `{"type":"track","event":"A","userId":"u"}`)); got != "a" {
		t.Errorf("skip_tracks_table: %s", got)
	}
	if got := tables(mapOne(t, skip, `{"type":"identify","userId":"u"}`)); got != "identifies" {
		t.Errorf("skip_users_table: %s", got)
	}
	for _, bad := range []string{`[1]`, `{"type":"boom","userId":"u"}`, `{"userId":"u"}`} {
		if _, err := m.Map(router.Event{MessageID: []byte("m"), Payload: []byte(bad)}, 0); err == nil {
			t.Errorf("%s mapped", bad)
		}
	}
}

func TestColumnsAndCollisions(t *testing.T) {
	m := &Mapping{Names: testNames, JSONColumns: []string{"properties.cart"}}
	mp := mapOne(t, m, `{"type":"track","event":"Bought","userId":"u","anonymousId":"a","messageId":"m1",
		"sentAt":"2024-01-01T00:00:00Z","originalTimestamp":"not a time",
		"context":{"library":{"name":"analytics-ios"},"traits":{"email":"e@x"}},
		"properties":{"fooBar":1,"foo_bar":2,"FOO BAR":3,"id":"prop","user_id":"x","select":4,"address":{"zipCode":"1"},
		"cart":{"items":[1,2]},"context_library_name":"shadow"}}`)
	tr, ev := mp.Rows[0].Row, mp.Rows[1].Row
	if _, ok := tr.Cells["foo_bar"]; ok {
		t.Error("tracks has properties")
	}
	c := ev.Cells
	want := map[string]any{
		"id": "m1", "user_id": "u", "anonymous_id": "a", "event": "bought", "event_text": "Bought",
		"context_library_name": "analytics-ios", "context_traits_email": "e@x",
		"foo_bar":                                                          int64(2), // the key that is the name keeps it
		testNames.Suffixed("foo_bar", "fooBar"):                            int64(1),
		testNames.Suffixed("foo_bar", "FOO BAR"):                           int64(3),
		testNames.Suffixed("id", "id"):                                     "prop",
		testNames.Suffixed("user_id", "user_id"):                           "x",
		testNames.Suffixed("context_library_name", "context_library_name"): "shadow",
		"_select": int64(4), "address_zip_code": "1", "cart": `{"items":[1,2]}`,
	}
	for k, v := range want {
		if c[k].V != v {
			t.Errorf("%s = %#v, want %#v", k, c[k].V, v)
		}
	}
	if c["cart"].T != TypeJSON {
		t.Errorf("json column typed %v", c["cart"].T)
	}
	if c["original_timestamp"].V != nil || len(ev.Discards) != 1 || ev.Discards[0].Column != "original_timestamp" || ev.Discards[0].Table != "bought" {
		t.Errorf("a bad timestamp: cell %v, discards %+v", c["original_timestamp"], ev.Discards)
	}
	if c["sent_at"].V != time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) {
		t.Errorf("sent_at %v", c["sent_at"].V)
	}
}

func TestPlan(t *testing.T) {
	m := &Mapping{Names: testNames, Schema: "s"}
	var mapped []Mapped
	for i, p := range []string{
		`{"type":"identify","userId":"u1","traits":{"plan":"free","n":1,"city":"Oslo"}}`,
		`{"type":"track","event":"E","userId":"u1","properties":{"x":1}}`,
		`{"type":"identify","userId":"u1","traits":{"plan":"pro","n":2.5}}`,
		`{"type":"track","event":"E","userId":"u1","properties":{"x":"text","y":true}}`,
	} {
		mp, err := m.Map(router.Event{Seq: uint64(10 + i), MessageID: []byte{'m', byte('0' + i)}, Payload: []byte(p)}, i)
		if err != nil {
			t.Fatal(err)
		}
		mapped = append(mapped, mp)
	}
	bts := group(mapped, nil)
	var users *batchTable
	for _, bt := range bts {
		if bt.table == TableUsers {
			users = bt
		}
	}
	if users == nil || len(users.rows) != 1 {
		t.Fatalf("users rows: %+v", users)
	}
	u := users.rows[0]
	if u.Cells["plan"].V != "pro" || u.Cells["city"].V != "Oslo" || u.Cells["n"].V != 2.5 || len(u.events()) != 2 {
		t.Errorf("merged user %+v events %v", u.Cells, u.events())
	}
	migs := migrations(bts, map[string]Schema{"s": {"e": {"id": TypeString, "x": TypeInt}}})
	byTable := map[string]Migration{}
	for _, mg := range migs {
		byTable[mg.Table] = mg
	}
	e := byTable["e"]
	if e.Create || !hasCol(e.Add, "y", TypeBool) || hasCol(e.Add, "x", TypeInt) {
		t.Errorf("migration of e: %+v", e)
	}
	if id := byTable["identifies"]; !id.Create || id.Add[0].Name != "id" || !hasCol(id.Add, "n", TypeFloat) {
		t.Errorf("migration of identifies (n: int then float = float): %+v", id)
	}
	known := map[string]Schema{"s": {"e": {"id": TypeString, "x": TypeInt}}}
	for _, mg := range migs { // as if applied
		if known["s"][mg.Table] == nil {
			known["s"][mg.Table] = map[string]Type{}
		}
		for _, c := range mg.Add {
			known["s"][mg.Table][c.Name] = c.Type
		}
	}
	var onlyE []*batchTable
	for _, bt := range bts {
		if bt.table == "e" {
			onlyE = append(onlyE, bt)
		}
	}
	loads, discards := typed(onlyE, known, time.Now())
	if discards != 1 || len(loads) != 2 || loads[1].Table != TableDiscards {
		t.Fatalf("typed: %d discards, %d loads", discards, len(loads))
	}
	d := loads[1].Rows[0]
	if d[0] != "e" || d[1] != "m3" || d[2] != "x" || d[3] != "text" {
		t.Errorf("discard row %v", d)
	}
}

func hasCol(cols []Column, name string, typ Type) bool {
	for _, c := range cols {
		if c.Name == name && c.Type == typ {
			return true
		}
	}
	return false
}
