package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// adminAddr finds the admin API address in the server's start-up log line.
func adminAddr(t *testing.T, p *sluiceProc) string {
	t.Helper()
	m := regexp.MustCompile(`admin=(127\.0\.0\.1:\d+)`).FindStringSubmatch(p.logs.String())
	if m == nil {
		t.Fatalf("no admin address in the log:\n%s", p.logs.String())
	}
	return m[1]
}

// cli runs the sluice command in-process and returns its output.
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String() + errb.String(), code
}

// TestE2EOperations drives dead letters and pause/resume through the
// sluice CLI against a running server: events a webhook refuses become dead
// letters with their reason; replay re-delivers one with its messageId;
// purge deletes the rest; a paused destination sends nothing until resumed.
func TestE2EOperations(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	var mu sync.Mutex
	got := map[string]int{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			w.WriteHeader(http.StatusUnprocessableEntity)
			io.WriteString(w, `{"error":"schema mismatch"}`)
			return
		}
		mu.Lock()
		got[r.Header.Get("X-Sluice-Message-Id")]++
		mu.Unlock()
	}))
	defer hook.Close()
	delivered := func(id string) int { mu.Lock(); defer mu.Unlock(); return got[id] }
	srv := startServerWith(t, t.TempDir(), fmt.Sprintf("  - name: hook\n    type: webhook\n    config:\n      url: %s/in\n", hook.URL))
	admin := adminAddr(t, srv)
	ctx := context.Background()
	client := &http.Client{Timeout: 5 * time.Second}
	for i := range 5 {
		body := fmt.Sprintf(`{"type":"track","userId":"u%d","messageId":"ops-%d"}`, i, i)
		if status, err := post(ctx, client, srv.url+"/v1/track", srcWeb, []byte(body)); status != 200 {
			t.Fatalf("post: %d %v", status, err)
		}
	}
	waitFor(t, "5 dead letters", func() bool {
		out, _ := cli(t, "status", "--admin", admin, "--json")
		var st []map[string]any
		json.Unmarshal([]byte(out), &st)
		for _, d := range st {
			if d["destination"] == "hook" && d["aborted_entries"] == float64(5) {
				return true
			}
		}
		return false
	})
	out, code := cli(t, "dlq", "list", "--admin", admin, "--destination", "hook")
	if code != 0 || strings.Count(out, "\n") != 5 || !strings.Contains(out, "422") || !strings.Contains(out, "schema mismatch") {
		t.Fatalf("dlq list (%d):\n%s", code, out)
	}
	refuse.Store(false)
	out, code = cli(t, "dlq", "replay", "--admin", admin, "--destination", "hook", "--message-id", "ops-3")
	if code != 0 || !strings.Contains(out, "replayed 1") {
		t.Fatalf("dlq replay (%d): %s", code, out)
	}
	waitFor(t, "replayed event delivered", func() bool { return delivered("ops-3") == 1 })
	out, code = cli(t, "dlq", "purge", "--admin", admin, "--destination", "hook", "--reason", "422")
	if code != 0 || !strings.Contains(out, "purged 4") {
		t.Fatalf("dlq purge (%d): %s", code, out)
	}
	if out, _ = cli(t, "dlq", "list", "--admin", admin, "--destination", "hook"); strings.TrimSpace(out) != "" {
		t.Fatalf("dead letters left after purge: %s", out)
	}
	if out, code = cli(t, "pause", "--admin", admin, "hook"); code != 0 || !strings.Contains(out, "paused") {
		t.Fatalf("pause (%d): %s", code, out)
	}
	if status, _ := post(ctx, client, srv.url+"/v1/track", srcWeb, []byte(`{"type":"track","userId":"p","messageId":"ops-paused"}`)); status != 200 {
		t.Fatal("post while paused failed")
	}
	time.Sleep(500 * time.Millisecond)
	if delivered("ops-paused") != 0 {
		t.Fatal("a paused destination delivered")
	}
	if out, _ = cli(t, "status", "--admin", admin); !strings.Contains(out, "paused") {
		t.Fatalf("status does not say paused:\n%s", out)
	}
	if out, code = cli(t, "resume", "--admin", admin, "hook"); code != 0 {
		t.Fatalf("resume (%d): %s", code, out)
	}
	waitFor(t, "delivery after resume", func() bool { return delivered("ops-paused") == 1 })
	if _, code = cli(t, "dlq", "list", "--admin", admin, "--destination", "nope"); code == 0 {
		t.Fatal("dlq list of an unknown destination succeeded")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
