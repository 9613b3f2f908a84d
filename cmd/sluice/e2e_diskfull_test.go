package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestE2EDiskFull runs the real binary with its data dir on a 64 MiB tmpfs
// and a webhook destination that is down while events are posted, until
// ingest answers 503 with Retry-After (the disk is full, but for the
// floor). Then the destination comes back: delivery drains, reclaim frees
// the disk, and with no new traffic /health must turn 200 again and new
// posts be acknowledged, with every acknowledged event delivered.
//
// It needs root (to mount the tmpfs) and skips otherwise.
func TestE2EDiskFull(t *testing.T) {
	mnt := mountTmpfs(t, "64m")
	hook := newGatedHook()
	defer hook.srv.Close()
	hook.down.Store(true)
	dataDir := filepath.Join(mnt, "data")
	p := startDiskFullServer(t, dataDir, hook.srv.URL)
	client := &http.Client{Timeout: 10 * time.Second}

	// Fill: 4 posters, 100 events of ~1 KB per request, until a 503.
	var mu sync.Mutex
	acked := map[string]bool{}
	var full atomic.Bool
	var wg sync.WaitGroup
	pad := strings.Repeat("x", 900)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !full.Load(); n++ {
				if n > 10000 {
					t.Errorf("poster %d: no 503 after %d requests", g, n)
					return
				}
				var b strings.Builder
				var ids []string
				b.WriteString(`{"batch":[`)
				for i := range 100 {
					id := fmt.Sprintf("df-%d-%d-%d", g, n, i)
					ids = append(ids, id)
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, `{"type":"track","userId":"u%d","event":"E","messageId":%q,"properties":{"pad":%q}}`, i%7, id, pad)
				}
				b.WriteString(`]}`)
				status, retryAfter, err := postDiskFull(client, p.url+"/v1/batch", b.String())
				switch {
				case err != nil:
					t.Errorf("post: %v", err)
					return
				case status == http.StatusOK:
					mu.Lock()
					for _, id := range ids {
						acked[id] = true
					}
					mu.Unlock()
				case status == http.StatusServiceUnavailable:
					if retryAfter == "" {
						t.Errorf("503 without Retry-After")
					}
					full.Store(true)
				default:
					t.Errorf("post: status %d", status)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("disk full after %d acknowledged events", len(acked))
	if code := healthStatus(client, p.url); code != http.StatusServiceUnavailable {
		t.Fatalf("/health %d on a full disk, want 503", code)
	}

	// The destination comes back: no more posts until /health says so.
	hook.down.Store(false)
	waitForLong(t, "/health 200 after delivery drained", func() bool { return healthStatus(client, p.url) == http.StatusOK })
	for i := range 20 {
		id := fmt.Sprintf("df-after-%d", i)
		body := fmt.Sprintf(`{"type":"track","userId":"u","event":"E","messageId":%q}`, id)
		status, _, err := postDiskFull(client, p.url+"/v1/track", body)
		if err != nil || status != http.StatusOK {
			t.Fatalf("post after recovery: %d %v", status, err)
		}
		acked[id] = true
	}
	waitForLong(t, "every acknowledged event delivered", func() bool { return len(hook.missing(acked)) == 0 })
	warns := 0
	for _, l := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			warns++
		}
	}
	t.Logf("%d events delivered; %d warning and error lines", len(acked), warns)
	if warns > 40 {
		t.Fatalf("%d warning and error lines: a flood\n%s", warns, p.logs.String())
	}
	p.stop(t)
}

// mountTmpfs mounts a tmpfs of size for the test (root only: it skips
// otherwise), unmounted at the end after the servers the test starts later.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("fills a tmpfs")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs for the data dir")
	}
	mnt := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s); the test needs one", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// TestE2EStartOnFullDisk: sluice killed with events in its index's WAL,
// then the disk filled to the last byte with its reserve already spent.
// Opening the index needs room to replay the WAL: sluice must not exit (a
// supervisor restarting it in a loop would add load to a full machine) but
// wait, logging why, and start as soon as space is freed, with every
// acknowledged event delivered.
func TestE2EStartOnFullDisk(t *testing.T) {
	mnt := mountTmpfs(t, "32m")
	hook := newGatedHook()
	defer hook.srv.Close()
	hook.down.Store(true) // events stay in the log and the index
	dataDir := filepath.Join(mnt, "data")
	p := startDiskFullServer(t, dataDir, hook.srv.URL)
	client := &http.Client{Timeout: 10 * time.Second}
	acked := map[string]bool{}
	for i := range 50 {
		id := fmt.Sprintf("full-start-%d", i)
		body := fmt.Sprintf(`{"userId":"u%d","event":"E","messageId":%q}`, i%5, id)
		if status, _, err := postDiskFull(client, p.url+"/v1/track", body); status != http.StatusOK {
			t.Fatalf("post %d: %d %v", i, status, err)
		}
		acked[id] = true
	}
	p.kill(t)

	if err := os.Remove(filepath.Join(dataDir, "reserve")); err != nil {
		t.Fatalf("the reserve file: %v", err)
	}
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			break // ENOSPC
		}
	}
	for n := len(chunk) / 2; n > 0; n /= 2 { // to the last byte
		for {
			if _, err := f.Write(chunk[:n]); err != nil {
				break
			}
		}
	}
	f.Close()

	hook.down.Store(false)
	addr, cfgPath := diskFullConfig(t, dataDir, hook.srv.URL)
	p = launch(t, sluiceBinary(t), dataDir, addr, cfgPath)
	waitForLong(t, "sluice to say it waits for free space", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("sluice exited on a full disk (%v), want it to wait", p.state)
		default:
		}
		return strings.Contains(p.logs.String(), "waiting for free space")
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitForLong(t, "sluice to start once space is free", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("sluice exited: %v", p.state)
		default:
		}
		return healthStatus(&http.Client{Timeout: time.Second}, p.url) == http.StatusOK
	})
	waitForLong(t, "every acknowledged event delivered", func() bool { return len(hook.missing(acked)) == 0 })
	p.stop(t)
}

// gatedHook is a webhook endpoint that answers 503 while down and records
// the messageIds it takes.
type gatedHook struct {
	srv  *httptest.Server
	down atomic.Bool
	mu   sync.Mutex
	got  map[string]bool
}

func newGatedHook() *gatedHook {
	h := &gatedHook{got: map[string]bool{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || h.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var events []struct {
			MessageID string `json:"messageId"`
		}
		if err := json.Unmarshal(body, &events); err != nil {
			var one struct {
				MessageID string `json:"messageId"`
			}
			if err := json.Unmarshal(body, &one); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			events = append(events, one)
		}
		h.mu.Lock()
		for _, e := range events {
			h.got[e.MessageID] = true
		}
		h.mu.Unlock()
	}))
	return h
}

// missing returns the acknowledged messageIds not delivered yet.
func (h *gatedHook) missing(acked map[string]bool) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id := range acked {
		if !h.got[id] {
			out = append(out, id)
		}
	}
	return out
}

// startDiskFullServer starts `sluice serve` with small segments, a 4 MiB
// reserve and floor, and quick reclaim and disk checks, delivering to url.
func startDiskFullServer(t *testing.T, dataDir, url string) *sluiceProc {
	t.Helper()
	addr, cfgPath := diskFullConfig(t, dataDir, url)
	p := launch(t, sluiceBinary(t), dataDir, addr, cfgPath)
	client := &http.Client{Timeout: time.Second}
	waitForLong(t, "sluice to answer /health 200", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("sluice exited: %v\n%s", p.state, p.logs.String())
		default:
		}
		return healthStatus(client, p.url) == http.StatusOK
	})
	return p
}

// diskFullConfig writes startDiskFullServer's config on a free port and
// returns the address and the config's path.
func diskFullConfig(t *testing.T, dataDir, url string) (addr, cfgPath string) {
	t.Helper()
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg := fmt.Sprintf(`# written by cmd/sluice/e2e_diskfull_test.go
listen: %q
admin_listen: 127.0.0.1:0
data_dir: %q
log_level: info
sources:
  - name: %q
    write_key: %q
destinations:
  - name: hook
    type: webhook
    batch_size: 100
    timeout: 5s
    retry:
      backoff_initial: 50ms
      backoff_max: 300ms
    config:
      url: %s/ingest
ingest:
  retry_after: 1s
engine:
  segment_bytes_max: 1048576
  reclaim_interval: 100ms
  reserve_bytes: 4194304
  disk_free_bytes_min: 4194304
  disk_check_interval: 100ms
  dedup_filter_bytes: 1048576
`, addr, dataDir, srcWeb.name, srcWeb.key, url)
	cfgPath = filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return addr, cfgPath
}

func postDiskFull(c *http.Client, target, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(srcWeb.key, "")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

func healthStatus(c *http.Client, base string) int {
	resp, err := c.Get(base + "/health")
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitForLong polls cond every 50 ms for up to two minutes.
func waitForLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
