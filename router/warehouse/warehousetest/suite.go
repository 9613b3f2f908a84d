package warehousetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/warehouse"
)

// Harness is what the suite needs of one database.
type Harness struct {
	// Addr is the database's host:port.
	Addr string
	// Open returns a dialect connected through addr (the database's, or a
	// proxy's) with the rights of the tests' user.
	Open func(t testing.TB, addr string) warehouse.Dialect
	// OpenRestricted returns a dialect whose user may read and write the
	// database but not create anything (schema, database, table).
	OpenRestricted func(t testing.TB) warehouse.Dialect
	// Exec runs an operator's statement.
	Exec func(t testing.TB, sql string)
	// Query returns the rows of a query as text, NULL as "NULL".
	Query func(t testing.TB, sql string) [][]string
	// Drop removes a schema (MySQL: database) and everything in it.
	Drop func(t testing.TB, schema string)
	// Table is the quoted qualified name of a table.
	Table func(schema, table string) string
	// CheckMaxLen is the SQL of a CHECK constraint an operator adds: the
	// column's text at most n characters.
	CheckMaxLen func(schema, table, col string, n int) string
	// AlterType is the SQL that changes a column's type to text.
	AlterToText func(schema, table, col string) string
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	s := &suite{h: h}
	t.Run("SpecMapping", s.specMapping)
	t.Run("SchemaEvolution", s.evolution)
	t.Run("TypeConflictsToDiscards", s.discards)
	t.Run("OperatorTypeChange", s.operatorType)
	t.Run("ReservedAndCollidingNames", s.names)
	t.Run("SameBatchTwice", s.twice)
	t.Run("CheckConstraintRefusesOneRow", s.check)
	t.Run("ConnectionCutMidLoad", s.cut)
	t.Run("AmbiguousCommit", s.ambiguous)
	t.Run("UsersLatestWins", s.users)
	t.Run("ConcurrentMigrations", s.concurrent)
	t.Run("PermissionDeniedPauses", s.permission)
	t.Run("CoalescedSends", s.coalesced)
	t.Run("JSONColumnsAndSkips", s.jsonColumns)
}

type suite struct{ h Harness }

// fresh returns a warehouse loading into a new schema, dropped at the end.
func (s *suite) fresh(t *testing.T, addr string, mod func(*warehouse.Config)) (*warehouse.Warehouse, string) {
	schema := fmt.Sprintf("sluice_test_%08x", rand.Uint32())
	t.Cleanup(func() { s.h.Drop(t, schema) })
	cfg := warehouse.Config{Dialect: s.h.Open(t, addr), Schema: schema}
	if mod != nil {
		mod(&cfg)
	}
	w, err := warehouse.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, schema
}

func send(t *testing.T, w *warehouse.Warehouse, evs ...router.Event) router.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return w.Send(ctx, evs)
}

func mustLoad(t *testing.T, w *warehouse.Warehouse, evs ...router.Event) {
	t.Helper()
	if res := send(t, w, evs...); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 || res.Pause {
		t.Fatalf("load: %+v (err %v, rejected %s)", res, res.Err, rejected(res))
	}
}

func rejected(res router.Result) string {
	var b strings.Builder
	for _, r := range res.Rejected {
		fmt.Fprintf(&b, "[%d %d %s] ", r.Index, r.Status, r.Reason)
	}
	return b.String()
}

// q is the rows of sql as text, one line per row, cells joined with "|".
func (s *suite) q(t *testing.T, sql string) string {
	t.Helper()
	var lines []string
	for _, r := range s.h.Query(t, sql) {
		lines = append(lines, strings.Join(r, "|"))
	}
	return strings.Join(lines, "\n")
}

func (s *suite) columns(t *testing.T, w *warehouse.Warehouse, schema, table string) map[string]warehouse.Type {
	t.Helper()
	d := s.h.Open(t, s.h.Addr)
	defer d.Close()
	sch, err := d.ReadSchema(context.Background(), schema)
	if err != nil {
		t.Fatal(err)
	}
	return sch[table]
}

func (s *suite) wantColumns(t *testing.T, w *warehouse.Warehouse, schema, table string, want map[string]warehouse.Type) {
	t.Helper()
	got := s.columns(t, w, schema, table)
	for c, typ := range want {
		if g, ok := got[c]; !ok || g != typ {
			t.Errorf("%s.%s: column %s is %v (present %v), want %v; columns %v", schema, table, c, g, ok, typ, got)
		}
	}
}

func (s *suite) specMapping(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	mustLoad(t, w, Event(1, "web", SpecTrack), Event(2, "web", SpecIdentify), Event(3, "web", SpecPage),
		Event(4, "web", SpecScreen), Event(5, "web", SpecGroup), Event(6, "web", SpecAlias))
	std := map[string]warehouse.Type{"id": warehouse.TypeString, "anonymous_id": warehouse.TypeString,
		"user_id": warehouse.TypeString, "received_at": warehouse.TypeDatetime, "sent_at": warehouse.TypeDatetime,
		"timestamp": warehouse.TypeDatetime, "original_timestamp": warehouse.TypeDatetime, "uuid_ts": warehouse.TypeDatetime}
	with := func(extra map[string]warehouse.Type) map[string]warehouse.Type {
		out := map[string]warehouse.Type{}
		for k, v := range std {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	track := with(map[string]warehouse.Type{"event": warehouse.TypeString, "event_text": warehouse.TypeString,
		"context_library_name": warehouse.TypeString, "context_page_url": warehouse.TypeString, "context_ip": warehouse.TypeString,
		"context_user_agent": warehouse.TypeString})
	s.wantColumns(t, w, sch, "tracks", track)
	if _, ok := s.columns(t, w, sch, "tracks")["title"]; ok {
		t.Error("tracks has a property column")
	}
	s.wantColumns(t, w, sch, "course_clicked", with(map[string]warehouse.Type{"event": warehouse.TypeString,
		"title": warehouse.TypeString, "price": warehouse.TypeFloat, "lessons": warehouse.TypeInt, "tags": warehouse.TypeString,
		"teacher_first_name": warehouse.TypeString, "teacher_rating": warehouse.TypeInt, "context_page_path": warehouse.TypeString}))
	s.wantColumns(t, w, sch, "identifies", with(map[string]warehouse.Type{"name": warehouse.TypeString, "email": warehouse.TypeString,
		"logins": warehouse.TypeInt, "address_postal_code": warehouse.TypeString, "address_city": warehouse.TypeString, "context_ip": warehouse.TypeString}))
	s.wantColumns(t, w, sch, "users", map[string]warehouse.Type{"id": warehouse.TypeString, "received_at": warehouse.TypeDatetime,
		"name": warehouse.TypeString, "plan": warehouse.TypeString, "logins": warehouse.TypeInt, "address_street": warehouse.TypeString})
	s.wantColumns(t, w, sch, "pages", with(map[string]warehouse.Type{"name": warehouse.TypeString, "title": warehouse.TypeString,
		"url": warehouse.TypeString, "path": warehouse.TypeString, "referrer": warehouse.TypeString}))
	s.wantColumns(t, w, sch, "screens", with(map[string]warehouse.Type{"name": warehouse.TypeString, "variation": warehouse.TypeString,
		"context_app_name": warehouse.TypeString, "context_os_version": warehouse.TypeString}))
	s.wantColumns(t, w, sch, "groups", with(map[string]warehouse.Type{"group_id": warehouse.TypeString, "name": warehouse.TypeString,
		"employees": warehouse.TypeInt, "total_billed": warehouse.TypeInt, "industry": warehouse.TypeString}))
	s.wantColumns(t, w, sch, "aliases", with(map[string]warehouse.Type{"previous_id": warehouse.TypeString}))

	T := func(table string) string { return s.h.Table(sch, table) }
	if got, want := s.q(t, "SELECT id, user_id, anonymous_id, event, event_text, context_ip FROM "+T("tracks")),
		"ajs-f8ca1e4de5024d9430b3928bd8ac6b96|AiUGstSDIg|23adfd82-aa0f-45a7-a756-24f2a7a4c895|course_clicked|Course Clicked|108.0.78.21"; got != want {
		t.Errorf("tracks:\n got %s\nwant %s", got, want)
	}
	if got, want := s.q(t, "SELECT title, lessons, tags, teacher_first_name FROM "+T("course_clicked")),
		`Intro to Analytics|12|["intro","free"]|Ada`; got != want {
		t.Errorf("course_clicked:\n got %s\nwant %s", got, want)
	}
	if got, want := s.q(t, "SELECT id, name, email, address_city FROM "+T("users")),
		"97980cfea0067|Peter Gibbons|peter@example.com|San Francisco"; got != want {
		t.Errorf("users:\n got %s\nwant %s", got, want)
	}
	if got, want := s.q(t, "SELECT group_id, name, total_billed FROM "+T("groups")), "0e8c78ea9d97a7b8185e8632|Initech|830"; got != want {
		t.Errorf("groups:\n got %s\nwant %s", got, want)
	}
	if got, want := s.q(t, "SELECT user_id, previous_id FROM "+T("aliases")), "507f191e81011|39239-239239-239239-23923"; got != want {
		t.Errorf("aliases:\n got %s\nwant %s", got, want)
	}
	if got, want := s.q(t, "SELECT name, path FROM "+T("pages")+" UNION ALL SELECT name, variation FROM "+T("screens")),
		"Home|/\nHome|blue signup button"; got != want {
		t.Errorf("pages, screens:\n got %s\nwant %s", got, want)
	}
	if got := s.q(t, "SELECT COUNT(*) FROM "+T("tracks")+" WHERE received_at IS NULL OR uuid_ts IS NULL OR sent_at IS NULL"); got != "0" {
		t.Errorf("tracks rows without received_at, uuid_ts or sent_at: %s", got)
	}
	st := w.Stats()
	if st.Tables[sch+".tracks"].Rows != 1 || st.Tables[sch+".users"].Rows != 1 || st.TablesCreated != 8 || st.LatencyCount != 6 || st.LastLoad.IsZero() {
		t.Errorf("stats %+v", st)
	}
	// The same figures for the admin API and /metrics (router.Reporter).
	var rows, loads, lat float64 = -1, -1, -1
	for _, f := range router.Reporter(w).Report() {
		switch {
		case f.Name == "sluice_warehouse_rows_total" && len(f.Labels) == 1 && f.Labels[0] == [2]string{"table", sch + ".tracks"}:
			rows = f.Value
		case f.Name == "sluice_warehouse_loads_total":
			loads = f.Value
		case f.Name == "sluice_warehouse_load_latency_seconds" && f.Labels[0][1] == "1":
			lat = f.Value
		}
	}
	if rows != 1 || loads != float64(st.Loads) || lat != st.LatencyMax.Seconds() {
		t.Errorf("report: tracks rows %v, loads %v, latency max %v; stats %+v", rows, loads, lat, st)
	}
}

func (s *suite) evolution(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	mustLoad(t, w, Event(1, "web", Track("m1", "u1", "Signed Up", map[string]any{"plan": "free"})))
	mustLoad(t, w, Event(2, "web", Track("m2", "u2", "Signed Up", map[string]any{"plan": "pro", "seats": 3, "trial": true})))
	s.wantColumns(t, w, sch, "signed_up", map[string]warehouse.Type{"plan": warehouse.TypeString, "seats": warehouse.TypeInt, "trial": warehouse.TypeBool})
	if got, want := s.q(t, "SELECT id, plan, seats FROM "+s.h.Table(sch, "signed_up")+" ORDER BY id"), "m1|free|NULL\nm2|pro|3"; got != want {
		t.Errorf("rows:\n got %s\nwant %s", got, want)
	}
	if st := w.Stats(); st.ColumnsAdded != 2 {
		t.Errorf("columns added %d, want 2", st.ColumnsAdded)
	}
	// int to float widens the column
	mustLoad(t, w, Event(3, "web", Track("m3", "u3", "Signed Up", map[string]any{"seats": 2.5})))
	s.wantColumns(t, w, sch, "signed_up", map[string]warehouse.Type{"seats": warehouse.TypeFloat})
	if got, want := s.q(t, "SELECT id, seats FROM "+s.h.Table(sch, "signed_up")+" WHERE seats IS NOT NULL ORDER BY id"), "m2|3\nm3|2.5"; got != want {
		t.Errorf("widened:\n got %s\nwant %s", got, want)
	}
}

func (s *suite) discards(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	mustLoad(t, w, Event(1, "web", Track("m1", "u1", "Paid", map[string]any{"amount": 10, "at": "2024-05-01T10:00:00Z"})))
	mustLoad(t, w, Event(2, "web", Track("m2", "u1", "Paid", map[string]any{"amount": "ten", "at": "yesterday", "note": "x"})))
	if got, want := s.q(t, "SELECT id, amount, note FROM "+s.h.Table(sch, "paid")+" ORDER BY id"), "m1|10|NULL\nm2|NULL|x"; got != want {
		t.Errorf("paid:\n got %s\nwant %s", got, want)
	}
	got := s.q(t, "SELECT table_name, column_name, column_value, row_id FROM "+s.h.Table(sch, "rudder_discards")+" ORDER BY column_name")
	if want := "paid|amount|ten|m2\npaid|at|yesterday|m2"; got != want {
		t.Errorf("discards:\n got %s\nwant %s", got, want)
	}
	// loading it again adds no discard
	mustLoad(t, w, Event(2, "web", Track("m2", "u1", "Paid", map[string]any{"amount": "ten", "at": "yesterday", "note": "x"})))
	if n := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, "rudder_discards")); n != "2" {
		t.Errorf("discards after a reload: %s", n)
	}
	if st := w.Stats(); st.Discards < 2 {
		t.Errorf("stats discards %d", st.Discards)
	}
}

func (s *suite) operatorType(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	mustLoad(t, w, Event(1, "web", Track("m1", "u1", "Rated", map[string]any{"score": 5})))
	s.h.Exec(t, s.h.AlterToText(sch, "rated", "score"))
	mustLoad(t, w, Event(2, "web", Track("m2", "u1", "Rated", map[string]any{"score": "five"})))
	if got, want := s.q(t, "SELECT id, score FROM "+s.h.Table(sch, "rated")+" ORDER BY id"), "m1|5\nm2|five"; got != want {
		t.Errorf("rated:\n got %s\nwant %s", got, want)
	}
}

func (s *suite) names(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	long := strings.Repeat("very_long_property_name_", 5)
	mustLoad(t, w, Event(1, "web", Track("m1", "u1", "Select", map[string]any{
		"select": 1, "1st place": "a", "fooBar": "camel", "foo_bar": "snake", "id": "prop-id", long + "a": "x", long + "b": "y",
		"user": "u", "ünïcode": "z"})))
	names := w.Stats() // tables created
	_ = names
	cols := s.columns(t, w, sch, "_select")
	if cols == nil {
		t.Fatalf("no table _select (for the reserved event name Select)")
	}
	d := s.h.Open(t, s.h.Addr)
	defer d.Close()
	max := d.Names().MaxLen
	want := []string{"_select", "_1st_place", "foo_bar", d.Names().Suffixed("foo_bar", "fooBar"), d.Names().Suffixed("id", "id")}
	for _, c := range want {
		if _, ok := cols[c]; !ok {
			t.Errorf("no column %s in %v", c, cols)
		}
	}
	longs := 0
	for c := range cols {
		if len(c) > max {
			t.Errorf("column %s longer than %d", c, max)
		}
		if strings.HasPrefix(c, "very_long") {
			longs++
		}
	}
	if longs != 2 {
		t.Errorf("%d columns for the two long names, want 2: %v", longs, cols)
	}
	if got, want := s.q(t, "SELECT id, foo_bar, "+d.Names().Suffixed("foo_bar", "fooBar")+" FROM "+s.h.Table(sch, "_select")), "m1|snake|camel"; got != want {
		t.Errorf("collisions:\n got %s\nwant %s", got, want)
	}
}

func (s *suite) twice(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	var batch []router.Event
	for i := range 50 {
		batch = append(batch, Event(uint64(i+1), "web", Track(fmt.Sprintf("m%02d", i), fmt.Sprintf("u%d", i%7), "Clicked", map[string]any{"n": i})))
		batch = append(batch, Event(uint64(i+1), "web", Identify(fmt.Sprintf("i%02d", i), fmt.Sprintf("u%d", i%7), time.Now(), map[string]any{"n": i})))
	}
	mustLoad(t, w, batch...)
	mustLoad(t, w, batch...)
	for table, want := range map[string]string{"tracks": "50|50", "clicked": "50|50", "identifies": "50|50", "users": "7|7"} {
		if got := s.q(t, "SELECT COUNT(*), COUNT(DISTINCT id) FROM "+s.h.Table(sch, table)); got != want {
			t.Errorf("%s: rows, ids %s, want %s", table, got, want)
		}
	}
}

func (s *suite) check(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	mustLoad(t, w, Event(1, "web", Track("m0", "u0", "Commented", map[string]any{"text": "hi"})))
	s.h.Exec(t, s.h.CheckMaxLen(sch, "commented", "text", 10))
	var batch []router.Event
	for i := 1; i <= 20; i++ {
		text := "ok"
		if i == 13 {
			text = "this comment is far too long"
		}
		batch = append(batch, Event(uint64(i+1), "web", Track(fmt.Sprintf("m%d", i), fmt.Sprintf("u%d", i%3), "Commented", map[string]any{"text": text})))
	}
	res := send(t, w, batch...)
	if res.Err != nil || res.Status != 200 || len(res.Rejected) != 1 || res.Rejected[0].Index != 12 || res.Rejected[0].Status != 400 {
		t.Fatalf("result %+v, rejected %s", res, rejected(res))
	}
	if why := strings.ToLower(string(res.Rejected[0].Reason)); !strings.Contains(why, "constraint") || !strings.Contains(why, "text_len") {
		t.Errorf("reason %q does not carry the database's message", res.Rejected[0].Reason)
	}
	for _, table := range []string{"tracks", "commented"} {
		if got := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, table)+" WHERE id <> 'm0'"); got != "19" {
			t.Errorf("%s: %s rows, want 19", table, got)
		}
		if got := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, table)+" WHERE id = 'm13'"); got != "0" {
			t.Errorf("%s holds the refused event", table)
		}
	}
	// alone, it is refused with 400
	if res := send(t, w, batch[12]); res.Status != 400 || res.Err != nil {
		t.Errorf("lone refused event: %+v", res)
	}
}

func (s *suite) cutBatch(n int) []router.Event {
	var batch []router.Event
	for i := range n {
		batch = append(batch, Event(uint64(i+1), "web", Track(fmt.Sprintf("c%05d", i), fmt.Sprintf("u%d", i%100), "Viewed",
			map[string]any{"n": i, "page": strings.Repeat("p", 200)})))
	}
	return batch
}

func (s *suite) cut(t *testing.T) {
	p := NewProxy(t, s.h.Addr)
	w, sch := s.fresh(t, p.Addr(), nil)
	mustLoad(t, w, s.cutBatch(1)...) // tables exist: the cut falls in the load
	batch := s.cutBatch(3000)
	p.CutAfter(64 << 10)
	res := send(t, w, batch...)
	if res.Err == nil || res.Pause || len(res.Rejected) > 0 || res.Status >= 400 && res.Status < 500 || p.Cuts() == 0 {
		t.Fatalf("a cut load: %+v (cuts %d), want an outage", res, p.Cuts())
	}
	// while down: refused connections are an outage too
	if res := send(t, w, batch[:10]...); res.Err == nil || res.Pause {
		t.Fatalf("load while down: %+v", res)
	}
	p.Restore()
	mustLoad(t, w, batch...)
	if got := s.q(t, "SELECT COUNT(*), COUNT(DISTINCT id) FROM "+s.h.Table(sch, "viewed")); got != "3000|3000" {
		t.Errorf("after the outage: rows, ids %s, want 3000|3000", got)
	}
}

func (s *suite) ambiguous(t *testing.T) {
	p := NewProxy(t, s.h.Addr)
	w, sch := s.fresh(t, p.Addr(), nil)
	batch := s.cutBatch(200)
	mustLoad(t, w, batch[:1]...)
	p.CutOnCommit()
	res := send(t, w, batch...)
	if res.Err == nil || !res.Ambiguous || res.Pause {
		t.Fatalf("a commit cut: %+v, want an ambiguous error", res)
	}
	p.Restore()
	mustLoad(t, w, batch...)
	if got := s.q(t, "SELECT COUNT(*), COUNT(DISTINCT id) FROM "+s.h.Table(sch, "viewed")); got != "200|200" {
		t.Errorf("after the ambiguous commit: rows, ids %s, want 200|200", got)
	}
}

func (s *suite) users(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	t0 := time.Now().Add(-time.Hour)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// one batch: two identifies of u1 in log order, the later wins per trait
	mustLoad(t, w,
		Event(1, "web", Identify("i1", "u1", at(1), map[string]any{"plan": "free", "name": "Ann", "city": "Oslo"})),
		Event(2, "web", Identify("i2", "u2", at(2), map[string]any{"plan": "free"})),
		Event(3, "web", Identify("i3", "u1", at(3), map[string]any{"plan": "pro", "name": "Anna"})))
	// a later batch: newer traits win, absent ones stay
	mustLoad(t, w, Event(4, "web", Identify("i4", "u1", at(4), map[string]any{"plan": "enterprise"})))
	// an older identify loaded late (a replayed dead letter) only fills gaps
	mustLoad(t, w, Event(5, "web", Identify("i0", "u1", at(0), map[string]any{"plan": "trial", "email": "ann@example.com"})))
	if got, want := s.q(t, "SELECT id, plan, name, city, email FROM "+s.h.Table(sch, "users")+" ORDER BY id"),
		"u1|enterprise|Anna|Oslo|ann@example.com\nu2|free|NULL|NULL|NULL"; got != want {
		t.Errorf("users:\n got %s\nwant %s", got, want)
	}
	if got := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, "identifies")); got != "5" {
		t.Errorf("identifies: %s rows", got)
	}
}

func (s *suite) concurrent(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, nil)
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []router.Event
			for i := range 20 {
				batch = append(batch, Event(uint64(g*100+i), "web", Track(fmt.Sprintf("g%d-%d", g, i), fmt.Sprintf("u%d", g), "Spread",
					map[string]any{fmt.Sprintf("p%d", i%5): i, fmt.Sprintf("g%d", g): true})))
				batch = append(batch, Event(uint64(g*100+i), "web", Identify(fmt.Sprintf("gi%d-%d", g, i), fmt.Sprintf("u%d", i%4), time.Now(),
					map[string]any{fmt.Sprintf("t%d", g%4): i})))
			}
			if res := send(t, w, batch...); res.Err != nil || res.Status != 200 || len(res.Rejected) > 0 {
				errs <- fmt.Sprintf("goroutine %d: %+v %v", g, res, res.Err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, "spread")); got != "320" {
		t.Errorf("spread: %s rows, want 320", got)
	}
	if n := len(s.columns(t, w, sch, "spread")); n < 16+5 {
		t.Errorf("spread has %d columns", n)
	}
}

func (s *suite) permission(t *testing.T) {
	schema := fmt.Sprintf("sluice_test_%08x", rand.Uint32())
	t.Cleanup(func() { s.h.Drop(t, schema) })
	w, err := warehouse.New(warehouse.Config{Dialect: s.h.OpenRestricted(t), Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	res := send(t, w, Event(1, "web", SpecTrack))
	if !res.Pause || res.Err == nil || !strings.Contains(res.Err.Error(), "permission") {
		t.Fatalf("a load without the right to create: %+v, want a pause", res)
	}
}

func (s *suite) coalesced(t *testing.T) {
	// the pool fills (8 Sends of 10 events = BatchMaxEvents) long before
	// the wait ends: one transaction, each Send told of its own refusal
	w, sch := s.fresh(t, s.h.Addr, func(c *warehouse.Config) { c.BatchMaxEvents, c.BatchMaxWait = 80, time.Minute })
	w2, _ := warehouse.New(warehouse.Config{Dialect: s.h.Open(t, s.h.Addr), Schema: sch})
	defer w2.Close()
	mustLoad(t, w2, Event(1, "web", Track("m0", "u0", "Noted", map[string]any{"text": "hi"})))
	s.h.Exec(t, s.h.CheckMaxLen(sch, "noted", "text", 10))
	results := make([]router.Result, 8)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []router.Event
			for i := range 10 {
				text := "ok"
				if g == 3 && i == 4 {
					text = "far too long for the check"
				}
				batch = append(batch, Event(uint64(g*10+i+2), "web", Track(fmt.Sprintf("n%d-%d", g, i), fmt.Sprintf("u%d", g), "Noted", map[string]any{"text": text})))
			}
			results[g] = send(t, w, batch...)
		}()
	}
	wg.Wait()
	for g, res := range results {
		want := 0
		if g == 3 {
			want = 1
		}
		if res.Err != nil || res.Status != 200 || len(res.Rejected) != want || want == 1 && res.Rejected[0].Index != 4 {
			t.Errorf("send %d: %+v %s", g, res, rejected(res))
		}
	}
	if got := s.q(t, "SELECT COUNT(*) FROM "+s.h.Table(sch, "noted")); got != "80" {
		t.Errorf("noted: %s rows, want 80", got)
	}
	if st := w.Stats(); st.Loads != 1 {
		t.Errorf("%d transactions for 8 coalesced Sends, want 1", st.Loads)
	}
}

func (s *suite) jsonColumns(t *testing.T) {
	w, sch := s.fresh(t, s.h.Addr, func(c *warehouse.Config) {
		c.JSONColumns, c.SkipTracks, c.SkipUsers = []string{"properties.cart"}, true, true
	})
	mustLoad(t, w, Event(1, "web", Track("j1", "u1", "Cart Updated", map[string]any{"cart": map[string]any{"items": []any{1, "two"}, "total": 3.5}})),
		Event(2, "web", Identify("j2", "u1", time.Now(), map[string]any{"plan": "pro"})))
	got := s.q(t, "SELECT cart FROM "+s.h.Table(sch, "cart_updated"))
	if strings.ReplaceAll(got, " ", "") != `{"items":[1,"two"],"total":3.5}` {
		t.Errorf("json column holds %s", got)
	}
	cols := s.columns(t, w, sch, "cart_updated")
	if _, flat := cols["cart_total"]; flat || cols["cart"] == warehouse.TypeUnknown {
		t.Errorf("json column: columns %v", cols)
	}
	sc := s.columns(t, w, sch, "tracks")
	su := s.columns(t, w, sch, "users")
	if sc != nil || su != nil {
		t.Errorf("skip_tracks_table, skip_users_table: tracks %v, users %v", sc, su)
	}
}
