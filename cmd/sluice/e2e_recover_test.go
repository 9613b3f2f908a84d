package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// archivedIDs returns how often each messageId is in the archive file
// destination's output.
func archivedIDs(t *testing.T, dataDir string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "out", "events.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, `"messageId":"`); i >= 0 {
			rest := line[i+len(`"messageId":"`):]
			got[rest[:strings.IndexByte(rest, '"')]]++
		}
	}
	return got
}

// TestE2ERecoverLostIndex deletes the index of a stopped server: the next
// start refuses (exit status 1, naming `sluice recover`) and deletes no
// segment file; `sluice recover --config` rebuilds the index; the server
// then starts and delivers every acknowledged event again (its cursor was
// lost with the index: at least once, never skipped).
func TestE2ERecoverLostIndex(t *testing.T) {
	dir := t.TempDir()
	srv := startServer(t, dir)
	client := &http.Client{Timeout: 10 * time.Second}
	batch := newLoadBatch(srcWeb, "rec", 300)
	if status, err := post(context.Background(), client, srv.url+"/v1/batch", srcWeb, batch.body); err != nil || status != 200 {
		t.Fatalf("post: %d %v", status, err)
	}
	waitFor(t, "archive delivery", func() bool { return len(archivedIDs(t, dir)) == len(batch.ids) })
	srv.stop(t)

	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.seg"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment files: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "index")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "out", "events.jsonl")); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg := writeConfig(t, addr, dir, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sluiceBinary(t), "serve", "--config", cfg).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "sluice recover") {
		t.Fatalf("serve without its index: exit %d (want 1), output:\n%s", code, out)
	}
	if after, _ := filepath.Glob(filepath.Join(dir, "log", "*.seg")); len(after) != len(segs) {
		t.Fatalf("segment files %d after the refused start, want %d", len(after), len(segs))
	}

	rep, code := cli(t, "recover", "--config", cfg)
	if code != 0 || !strings.Contains(rep, "rebuilt from the segment files") || !strings.Contains(rep, "lost: none") {
		t.Fatalf("recover: exit %d\n%s", code, rep)
	}
	t.Logf("recover:\n%s", rep)
	srv = startServer(t, dir)
	waitFor(t, "redelivery after recovery", func() bool {
		got := archivedIDs(t, dir)
		for _, id := range batch.ids {
			if got[id] == 0 {
				return false
			}
		}
		return true
	})
	// Dedup was rebuilt from the log: a resend is acknowledged, not stored.
	if status, err := post(context.Background(), client, srv.url+"/v1/batch", srcWeb, batch.body); err != nil || status != 200 {
		t.Fatalf("resend: %d %v", status, err)
	}
	if n := srv.metric(t, "sluice_ingest_dedup_hits_total"); n < float64(len(batch.ids)) {
		t.Fatalf("dedup hits %v after a resend of %d events", n, len(batch.ids))
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
