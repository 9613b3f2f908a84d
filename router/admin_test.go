package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router"
)

// adminEngine is an in-memory engine.
func adminEngine(t *testing.T) *engine.Engine {
	t.Helper()
	eng, err := engine.Open(engine.Options{Dir: "/d", FS: vfs.NewMem(), ReclaimInterval: -1, Logger: slog.New(slog.DiscardHandler),
		DedupFilterBytes: 1 << 16, IndexCacheBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

func adminAppend(t *testing.T, eng *engine.Engine, id string) {
	t.Helper()
	_, err := eng.Append(context.Background(), []engine.Record{{Source: []byte("web"), Type: []byte("track"),
		MessageID: []byte(id), Key: []byte("u1"), Payload: []byte(`{"userId":"u1"}`), ReceivedAt: time.Now().UnixNano()}})
	if err != nil {
		t.Fatal(err)
	}
}

// adminRouter is a router "hook" over eng delivering to dest (not running).
func adminRouter(t *testing.T, eng *engine.Engine, dest router.Destination) *router.Router {
	t.Helper()
	cons, err := eng.Consumer("hook")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(router.Config{Name: "hook", Ordering: true, Logger: slog.New(slog.DiscardHandler)}, eng, cons, dest)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// runRouter runs rt until stop is called or the test ends.
func runRouter(t *testing.T, rt *router.Router) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rt.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// TestAdminBearerToken: the token is accepted only as "Bearer <token>"
// (scheme in any case, one space, one token); anything else is 401 with
// a JSON error, and no Authorization value reaches the log at any level.
func TestAdminBearerToken(t *testing.T) {
	const token = "s3cret-t0ken"
	eng := adminEngine(t)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := router.NewAdmin(eng, []*router.Router{adminRouter(t, eng, &countDest{})}, router.AdminOptions{Token: token, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		header []string // Authorization values; nil: none
		ok     bool
	}{
		{[]string{"Bearer " + token}, true},
		{[]string{"bearer " + token}, true},
		{[]string{"BEARER " + token}, true},
		{nil, false},
		{[]string{token}, false}, // no scheme
		{[]string{"Basic " + token}, false},
		{[]string{"Bearer"}, false},
		{[]string{"Bearer "}, false},
		{[]string{"Bearer  " + token}, false}, // two spaces
		{[]string{"Bearer " + token + " extra"}, false},
		{[]string{"Bearer\t" + token}, false},
		{[]string{"Bearer " + token + "x"}, false},
		{[]string{"Bearer " + token[:len(token)-1]}, false},
		{[]string{"Bearer " + token, "Bearer " + token}, false}, // two headers
		{[]string{"Bearertoken" + token}, false},
	} {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/destinations", nil)
		for _, v := range tc.header {
			req.Header.Add("Authorization", v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		raw := new(bytes.Buffer)
		raw.ReadFrom(resp.Body)
		resp.Body.Close()
		switch {
		case tc.ok && resp.StatusCode != http.StatusOK:
			t.Errorf("Authorization %q: %d %s, want 200", tc.header, resp.StatusCode, raw)
		case !tc.ok && resp.StatusCode != http.StatusUnauthorized:
			t.Errorf("Authorization %q: %d, want 401", tc.header, resp.StatusCode)
		case !tc.ok && (resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(raw.Bytes(), &body) != nil || body["error"] == ""):
			t.Errorf("Authorization %q: 401 without a JSON error: %q", tc.header, raw)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), token[:8]) || strings.Contains(logs.String(), "Bearer") {
		t.Errorf("an Authorization value reached the log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestAdminServeShutdownRace: Shutdown may run while Serve is starting
// (cmd calls them from different goroutines); under -race this caught the
// server being assigned in Serve, and Serve must return (nil) either way.
func TestAdminServeShutdownRace(t *testing.T) {
	eng := adminEngine(t)
	for range 20 {
		a, err := router.NewAdmin(eng, nil, router.AdminOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- a.Serve(ln) }()
		if err := a.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		ln.Close() // so that a Serve that missed the Shutdown returns too
		if err := <-served; err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	}
}

// TestAdminPausedPersists: pause writes the paused file; a new admin (a
// restart) starts the destination paused, before it sends anything;
// resume clears it; a damaged file is an error naming it.
func TestAdminPausedPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "paused.json")
	eng := adminEngine(t)
	call := func(a *router.Admin, verb string) {
		t.Helper()
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/destinations/hook/"+verb, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", verb, rec.Code, rec.Body)
		}
	}
	fileSays := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}

	// First run: paused through the API, then an event arrives.
	dest1 := &countDest{}
	rt1 := adminRouter(t, eng, dest1)
	a1, err := router.NewAdmin(eng, []*router.Router{rt1}, router.AdminOptions{PausedPath: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if rt1.Status().State == "paused" {
		t.Fatal("paused without a paused file")
	}
	stop1 := runRouter(t, rt1)
	call(a1, "pause")
	if got := fileSays(); got != `{"paused":["hook"]}` {
		t.Fatalf("paused file after pause: %s", got)
	}
	adminAppend(t, eng, "m1")
	stop1()

	// Restart: a new router over the same log starts paused and sends
	// nothing (Kick returns once the loop has stepped over the event).
	dest2 := &countDest{}
	rt2 := adminRouter(t, eng, dest2)
	a2, err := router.NewAdmin(eng, []*router.Router{rt2}, router.AdminOptions{PausedPath: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if st := rt2.Status().State; st != "paused" {
		t.Fatalf("after restart: state %q, want paused", st)
	}
	runRouter(t, rt2)
	if err := rt2.Kick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := rt2.Status(); st.State != "paused" || st.Counters.Requests != 0 || dest1.n.Load()+dest2.n.Load() != 0 {
		t.Fatalf("after restart: %+v, %d sent", st, dest1.n.Load()+dest2.n.Load())
	}
	call(a2, "resume")
	if got := fileSays(); got != `{"paused":[]}` {
		t.Fatalf("paused file after resume: %s", got)
	}
	for dest2.n.Load() != 1 { // the test's deadline bounds this
		time.Sleep(time.Millisecond)
	}

	for _, damaged := range []string{"", "{", `{"paused":"hook"}`, `{"paused":[""]}`, `{"paused":[]} x`, `{"pause":["hook"]}`} {
		if err := os.WriteFile(path, []byte(damaged), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := router.NewAdmin(eng, []*router.Router{rt2}, router.AdminOptions{PausedPath: path})
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("paused file %q: got %v, want an error naming %s", damaged, err, path)
		}
	}
	if err := os.WriteFile(path, []byte(`{"paused":["gone"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := router.NewAdmin(eng, []*router.Router{rt2}, router.AdminOptions{PausedPath: path, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Errorf("a removed destination in the paused file: %v", err)
	}
}
