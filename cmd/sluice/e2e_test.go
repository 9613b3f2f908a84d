package main

// End-to-end tests against the real binary: each test builds `sluice` once
// (per test run), runs `sluice serve --config` as a child process on a free
// 127.0.0.1 port with its own data dir, talks to it with real clients
// (Segment's Go SDK, Segment's and RudderStack's Node SDKs, net/http), stops
// it (SIGTERM, or SIGKILL for the crash test) and then opens the data dir
// with engine.Open to read back every stored record.
//
//	go test ./cmd/sluice -run E2E -count=1 -v
//
// The Node SDK tests need node and npm on PATH (they skip without them, and
// under -short); they run `npm install` from the registry into a temp dir.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	analytics "gopkg.in/segmentio/analytics-go.v3"

	"github.com/sluice-cdi/sluice/engine"
)

// ---------------------------------------------------------------------------
// Building and running the binary

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// moduleRoot finds the directory of this module's go.mod, walking up from
// the test's working directory (cmd/sluice under `go test`).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 16 {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			if bytes.Contains(b, []byte("module github.com/sluice-cdi/sluice\n")) {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("no go.mod of github.com/sluice-cdi/sluice above the working directory")
}

// sluiceBinary builds ./cmd/sluice once per test run and returns its path.
func sluiceBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("go tool not on PATH: %w", err)
			return
		}
		if buildDir, err = os.MkdirTemp("", "sluice-e2e-bin-"); err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(buildDir, "sluice")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/sluice")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/sluice: %v\n%s", err, out)
			return
		}
		buildBin = bin
		fmt.Fprintf(os.Stderr, "e2e: built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatalf("cannot build sluice: %v", buildErr)
	}
	return buildBin
}

// e2eSource is one configured source.
type e2eSource struct{ name, key string }

// The two sources every server is configured with.
var (
	srcWeb    = e2eSource{name: "web-shop", key: "wk_e2e_web_7f3a29"}
	srcMobile = e2eSource{name: "mobile-app", key: "wk_e2e_mobile_91c2d4"}
)

// syncBuffer collects the child's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sluiceProc is one running `sluice serve`.
type sluiceProc struct {
	dataDir string
	addr    string // 127.0.0.1:PORT
	url     string // http://127.0.0.1:PORT
	cmd     *exec.Cmd
	logs    *syncBuffer
	exited  chan struct{}
	state   *os.ProcessState // set once exited is closed
}

// freePort returns a port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("cannot find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// writeConfig writes a config for listen and dataDir with both sources and
// one file destination, plus extraDests.
func writeConfig(t *testing.T, listen, dataDir, extraDests string) string {
	t.Helper()
	cfg := fmt.Sprintf(`# written by cmd/sluice/e2e_test.go
listen: %q
admin_listen: 127.0.0.1:0
data_dir: %q
log_level: info
sources:
  - name: %q
    write_key: %q
  - name: %q
    write_key: %q
destinations:
  - name: archive
    type: file
    config:
      path: %q
%s
# The tests read every acknowledged event back from the log: keep it all.
engine:
  reclaim_interval: -1s
`, listen, dataDir, srcWeb.name, srcWeb.key, srcMobile.name, srcMobile.key, filepath.Join(dataDir, "out", "events.jsonl"), extraDests)
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startServer runs `sluice serve --config` on a free port with dataDir and
// waits until GET /health answers 200. A cleanup stops it with SIGTERM (if
// the test has not stopped or killed it) and asserts it exits 0.
func startServer(t *testing.T, dataDir string) *sluiceProc {
	t.Helper()
	return startServerWith(t, dataDir, "")
}

// startServerWith is startServer with more destinations (YAML list items
// under destinations:, indented by two spaces).
func startServerWith(t *testing.T, dataDir, extraDests string) *sluiceProc {
	t.Helper()
	bin := sluiceBinary(t)
	var lastLogs string
	for attempt := range 3 { // the free port may be taken meanwhile
		p, err := tryStart(t, bin, dataDir, extraDests)
		if err == nil {
			return p
		}
		lastLogs = p.logs.String()
		if !strings.Contains(lastLogs, "address already in use") {
			t.Fatalf("sluice did not start: %v\n--- sluice output ---\n%s", err, lastLogs)
		}
		t.Logf("attempt %d: port taken, retrying", attempt+1)
	}
	t.Fatalf("sluice did not start after 3 attempts\n--- sluice output ---\n%s", lastLogs)
	return nil
}

func tryStart(t *testing.T, bin, dataDir, extraDests string) (*sluiceProc, error) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfgPath := writeConfig(t, addr, dataDir, extraDests)
	p := launch(t, bin, dataDir, addr, cfgPath)
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		select {
		case <-p.exited:
			return p, fmt.Errorf("exited early: %v", p.state)
		default:
		}
		resp, err := client.Get(p.url + "/health")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	p.cmd.Process.Kill()
	<-p.exited
	return p, fmt.Errorf("GET /health did not answer 200 within 20s")
}

// launch runs `sluice serve --config cfgPath` for dataDir on addr. A
// cleanup stops it with SIGTERM (if the test has not stopped or killed it)
// and asserts it exits 0, and prints its output if the test failed.
func launch(t *testing.T, bin, dataDir, addr, cfgPath string) *sluiceProc {
	t.Helper()
	p := &sluiceProc{dataDir: dataDir, addr: addr, url: "http://" + addr, logs: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	p.cmd.Dir = filepath.Dir(cfgPath)
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", bin, err)
	}
	go func() {
		p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.stop(t)
		}
		if t.Failed() {
			t.Logf("--- sluice output (%s, pid %d) ---\n%s", p.addr, p.cmd.Process.Pid, p.logs.String())
		}
	})
	return p
}

// signal sends sig to the process.
func (p *sluiceProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("cannot send %v to sluice: %v", sig, err)
	}
}

// wait waits for the process to exit, at most d (then kills it and fails).
func (p *sluiceProc) wait(t *testing.T, d time.Duration) *os.ProcessState {
	t.Helper()
	select {
	case <-p.exited:
		return p.state
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("sluice did not exit within %v; killed it", d)
		return nil
	}
}

// stop sends SIGTERM, waits, and asserts exit status 0.
func (p *sluiceProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		t.Errorf("sluice had already exited: %v", p.state)
		return
	default:
	}
	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	st := p.wait(t, 45*time.Second)
	if !st.Success() {
		t.Errorf("sluice exited with %v after SIGTERM, want exit status 0", st)
	}
	t.Logf("sluice (%s) stopped by SIGTERM in %v: %v", p.addr, time.Since(start).Round(time.Millisecond), st)
}

// kill sends SIGKILL and waits.
func (p *sluiceProc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	st := p.wait(t, 15*time.Second)
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("sluice exited with %v, want killed by SIGKILL", st)
	}
}

// metric returns the value of an unlabelled series from GET /metrics.
func (p *sluiceProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(p.url + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not in /metrics", name)
	return 0
}

// ---------------------------------------------------------------------------
// Reading the store back

// storedRecord is one record read back from the data dir, bytes copied.
type storedRecord struct {
	Seq        uint64
	ReceivedAt int64
	Source     string
	Type       string
	MessageID  string
	Key        string
	Payload    []byte
}

// readStore opens dir (the server must have exited) and returns every
// stored record in sequence order.
func readStore(t *testing.T, dir string) []storedRecord {
	t.Helper()
	eng, err := engine.Open(engine.Options{
		Dir:             dir,
		ReclaimInterval: -1,
		Logger:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("engine.Open(%s): %v", dir, err)
	}
	defer func() {
		if err := eng.Close(); err != nil {
			t.Errorf("engine.Close: %v", err)
		}
	}()
	r, err := eng.NewReader(0, 0)
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	defer r.Close()
	var out []storedRecord
	var buf []engine.Record
	for i := 0; i < 1_000_000; i++ {
		buf, err = r.Next(buf[:0], 512)
		if err != nil {
			t.Fatalf("Reader.Next after %d records: %v", len(out), err)
		}
		if len(buf) == 0 {
			break
		}
		for _, rec := range buf {
			out = append(out, storedRecord{
				Seq:        rec.Seq,
				ReceivedAt: rec.ReceivedAt,
				Source:     string(rec.Source),
				Type:       string(rec.Type),
				MessageID:  string(rec.MessageID),
				Key:        string(rec.Key),
				Payload:    bytes.Clone(rec.Payload),
			})
		}
	}
	if st := eng.Stats(); st.LostRecords != 0 {
		t.Errorf("engine reports %d lost (unreadable) records", st.LostRecords)
	}
	for i := 1; i < len(out); i++ {
		if out[i].Seq != out[i-1].Seq+1 {
			t.Errorf("records %d and %d have seqs %d and %d, want consecutive", i-1, i, out[i-1].Seq, out[i].Seq)
			break
		}
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// wantEvent is what one sent event must look like once stored.
type wantEvent struct {
	source string // source name
	typ    string
	key    string // ordering key: anonymousId, else userId; "" = not checked
}

// checkStored asserts every wanted event is stored exactly once, under its
// source, with its type and key, and that every record (wanted or not) is
// a valid, enriched event: valid JSON, messageId/type/projectId matching the
// record, receivedAt equal to the record's, a parseable timestamp, the
// client IP in context.ip, no writeKey. No messageId may be stored twice.
// With exact, every record must be a wanted one. It returns the parsed
// payloads by messageId.
func checkStored(t *testing.T, recs []storedRecord, want map[string]wantEvent, exact bool, since time.Time) map[string]map[string]any {
	t.Helper()
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		} else if errs == 21 {
			t.Errorf("... more errors not shown")
		}
	}
	seen := make(map[string]int, len(recs))
	parsed := make(map[string]map[string]any, len(recs))
	until := time.Now().Add(time.Second)
	for _, r := range recs {
		seen[r.MessageID]++
		if seen[r.MessageID] == 2 {
			fail("messageId %q is stored more than once (seq %d is a repeat)", r.MessageID, r.Seq)
		}
		if !json.Valid(r.Payload) {
			fail("seq %d (%s): payload is not valid JSON: %q", r.Seq, r.MessageID, r.Payload)
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal(r.Payload, &ev); err != nil {
			fail("seq %d (%s): payload is not a JSON object: %v", r.Seq, r.MessageID, err)
			continue
		}
		parsed[r.MessageID] = ev
		if got, _ := ev["messageId"].(string); got != r.MessageID {
			fail("seq %d: payload messageId %q, record %q", r.Seq, got, r.MessageID)
		}
		if got, _ := ev["type"].(string); got != r.Type {
			fail("seq %d (%s): payload type %q, record %q", r.Seq, r.MessageID, got, r.Type)
		}
		if got, _ := ev["projectId"].(string); got != r.Source {
			fail("seq %d (%s): payload projectId %q, record source %q", r.Seq, r.MessageID, got, r.Source)
		}
		recv, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["receivedAt"]))
		switch {
		case err != nil:
			fail("seq %d (%s): receivedAt %v: %v", r.Seq, r.MessageID, ev["receivedAt"], err)
		case !recv.Equal(time.Unix(0, r.ReceivedAt).Truncate(time.Millisecond)):
			fail("seq %d (%s): payload receivedAt %v, record %v", r.Seq, r.MessageID, recv, time.Unix(0, r.ReceivedAt).UTC())
		case recv.Before(since.Add(-time.Second)) || recv.After(until):
			fail("seq %d (%s): receivedAt %v outside the test's run [%v, %v]", r.Seq, r.MessageID, recv, since, until)
		}
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["timestamp"])); err != nil {
			fail("seq %d (%s): timestamp %v: %v", r.Seq, r.MessageID, ev["timestamp"], err)
		}
		if c, _ := ev["context"].(map[string]any); c == nil || c["ip"] != "127.0.0.1" {
			fail("seq %d (%s): context.ip is %v, want 127.0.0.1", r.Seq, r.MessageID, ev["context"])
		}
		if _, ok := ev["writeKey"]; ok {
			fail("seq %d (%s): payload keeps the writeKey", r.Seq, r.MessageID)
		}
		w, ok := want[r.MessageID]
		if !ok {
			if exact {
				fail("seq %d: unexpected messageId %q (source %s) stored", r.Seq, r.MessageID, r.Source)
			}
			continue
		}
		if r.Source != w.source {
			fail("%s: stored under source %q, sent with the key of %q", r.MessageID, r.Source, w.source)
		}
		if r.Type != w.typ {
			fail("%s: stored type %q, sent %q", r.MessageID, r.Type, w.typ)
		}
		if w.key != "" && r.Key != w.key {
			fail("%s: ordering key %q, want %q", r.MessageID, r.Key, w.key)
		}
	}
	missing := 0
	for id := range want {
		if seen[id] == 0 {
			if missing++; missing <= 10 {
				fail("messageId %q was sent (and acknowledged) but is not stored", id)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged events are missing from the store", missing, len(want))
	}
	return parsed
}

// ---------------------------------------------------------------------------
// Raw HTTP load

// loadBatch is one /v1/batch request of the load tests.
type loadBatch struct {
	src  e2eSource
	body []byte
	ids  []string
	want map[string]wantEvent
}

var loadTypes = []string{"track", "identify", "page", "screen", "group", "alias"}

// newLoadBatch builds a batch of n events with messageIds prefix-0..n-1,
// types in rotation, keyed by userId or anonymousId.
func newLoadBatch(src e2eSource, prefix string, n int) loadBatch {
	b := loadBatch{src: src, want: make(map[string]wantEvent, n)}
	var buf bytes.Buffer
	buf.WriteString(`{"batch":[`)
	for k := range n {
		id := fmt.Sprintf("%s-%d", prefix, k)
		typ := loadTypes[k%len(loadTypes)]
		if k > 0 {
			buf.WriteByte(',')
		}
		ev := map[string]any{"type": typ, "messageId": id, "timestamp": time.Now().UTC().Format(time.RFC3339Nano)}
		key := fmt.Sprintf("user-%d", k%7)
		if k%3 == 0 {
			key = fmt.Sprintf("anon-%s-%d", prefix, k%5)
			ev["anonymousId"] = key
		} else {
			ev["userId"] = key
		}
		switch typ {
		case "track":
			ev["event"] = "Load Test"
			ev["properties"] = map[string]any{"i": k, "pad": strings.Repeat("x", 64)}
		case "identify", "group":
			ev["traits"] = map[string]any{"plan": "pro", "i": k}
			if typ == "group" {
				ev["groupId"] = "g-1"
			}
		case "page", "screen":
			ev["name"] = "Home"
		case "alias":
			ev["previousId"] = "old-" + key
		}
		j, _ := json.Marshal(ev)
		buf.Write(j)
		b.ids = append(b.ids, id)
		b.want[id] = wantEvent{source: src.name, typ: typ, key: key}
	}
	fmt.Fprintf(&buf, `],"sentAt":%q}`, time.Now().UTC().Format(time.RFC3339Nano))
	b.body = buf.Bytes()
	return b
}

// post sends body to path with the source's write key (HTTP Basic auth, as
// the SDKs do) and returns the status.
func post(ctx context.Context, c *http.Client, target string, src e2eSource, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(src.key, "")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
}

func mergeWant(dst map[string]wantEvent, batches ...loadBatch) {
	for _, b := range batches {
		for id, w := range b.want {
			dst[id] = w
		}
	}
}

// ---------------------------------------------------------------------------
// Segment's Go SDK

type goCallback struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func (c *goCallback) Success(analytics.Message) { c.ok.Add(1) }

func (c *goCallback) Failure(m analytics.Message, err error) {
	c.failed.Add(1)
	c.mu.Lock()
	c.errs = append(c.errs, fmt.Sprintf("%T: %v", m, err))
	c.mu.Unlock()
}

type goLogger struct{ t *testing.T }

func (l goLogger) Logf(format string, args ...any) { l.t.Logf("analytics-go: "+format, args...) }
func (l goLogger) Errorf(format string, args ...any) {
	l.t.Logf("analytics-go ERROR: "+format, args...)
}

// TestE2EAnalyticsGo sends a mix of every event type through Segment's Go
// SDK (gopkg.in/segmentio/analytics-go.v3, unmodified, pointed at the
// server) from both sources and checks each is stored exactly once with the
// enrichment, including Segment's clock-skew correction of timestamp for
// events sent with a timestamp an hour in the past.
func TestE2EAnalyticsGo(t *testing.T) {
	since := time.Now()
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)

	want := map[string]wantEvent{}
	origTS := map[string]time.Time{} // events sent with an explicit old timestamp
	past := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	for si, src := range []e2eSource{srcWeb, srcMobile} {
		cb := &goCallback{}
		client, err := analytics.NewWithConfig(src.key, analytics.Config{
			Endpoint:   srv.url,
			BatchSize:  7,
			Interval:   50 * time.Millisecond,
			Callback:   cb,
			Logger:     goLogger{t},
			RetryAfter: func(int) time.Duration { return 100 * time.Millisecond },
		})
		if err != nil {
			t.Fatalf("analytics.NewWithConfig: %v", err)
		}
		n := 30 - 12*si // 30 from web, 18 from mobile
		for i := range n {
			id := fmt.Sprintf("go-%s-%03d", src.name, i)
			user, anon := fmt.Sprintf("u-%d", i%5), fmt.Sprintf("a-%d", i%4)
			var msg analytics.Message
			var w wantEvent
			switch i % 6 {
			case 0:
				tr := analytics.Track{MessageId: id, UserId: user, Event: "Order Completed", Properties: analytics.NewProperties().SetRevenue(float64(i)).Set("sku", "s-1")}
				if i%12 == 0 {
					tr.Timestamp = past
					origTS[id] = past
				}
				msg, w = tr, wantEvent{src.name, "track", user}
			case 1:
				msg, w = analytics.Identify{MessageId: id, UserId: user, Traits: analytics.NewTraits().SetEmail(user + "@example.com")}, wantEvent{src.name, "identify", user}
			case 2:
				msg, w = analytics.Page{MessageId: id, AnonymousId: anon, Name: "Pricing", Properties: analytics.NewProperties().SetURL("https://example.com/pricing")}, wantEvent{src.name, "page", anon}
			case 3:
				msg, w = analytics.Screen{MessageId: id, AnonymousId: anon, UserId: user, Name: "Cart"}, wantEvent{src.name, "screen", anon}
			case 4:
				msg, w = analytics.Group{MessageId: id, UserId: user, GroupId: "acme", Traits: analytics.NewTraits().SetName("Acme")}, wantEvent{src.name, "group", user}
			default:
				msg, w = analytics.Alias{MessageId: id, UserId: user, PreviousId: anon}, wantEvent{src.name, "alias", user}
			}
			if err := client.Enqueue(msg); err != nil {
				t.Fatalf("Enqueue %s: %v", id, err)
			}
			want[id] = w
		}
		if err := client.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if cb.ok.Load() != int64(n) || cb.failed.Load() != 0 {
			t.Fatalf("source %s: SDK reports %d sent, %d failed of %d (%v)", src.name, cb.ok.Load(), cb.failed.Load(), n, cb.errs)
		}
	}
	srv.stop(t)

	recs := readStore(t, dataDir)
	if len(recs) != len(want) {
		t.Errorf("store holds %d records, sent %d events", len(recs), len(want))
	}
	events := checkStored(t, recs, want, true, since)
	if len(origTS) == 0 {
		t.Fatal("no event was sent with an explicit timestamp")
	}
	for id, orig := range origTS {
		ev := events[id]
		if ev == nil {
			continue
		}
		gotOrig, err := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["originalTimestamp"]))
		if err != nil || !gotOrig.Equal(orig) {
			t.Errorf("%s: originalTimestamp %v, want the sent timestamp %v", id, ev["originalTimestamp"], orig)
		}
		ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["timestamp"]))
		recv, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["receivedAt"]))
		// timestamp = receivedAt - (sentAt - originalTimestamp): about an
		// hour before receivedAt (sentAt trails the enqueue by the batching).
		if d := recv.Sub(ts); d < time.Hour-time.Second || d > time.Hour+30*time.Second {
			t.Errorf("%s: timestamp %v is %v before receivedAt %v, want about 1h (skew-corrected)", id, ts, d, recv)
		}
	}
}

// ---------------------------------------------------------------------------
// Node SDKs

// nodeResult is the JSON line the send.js scripts print.
type nodeResult struct {
	Sent []struct {
		MessageID string `json:"messageId"`
		Type      string `json:"type"`
		Key       string `json:"key"`
	} `json:"sent"`
	OK       int      `json:"ok"`
	Failed   int      `json:"failed"`
	Errors   []string `json:"errors"`
	Requests []struct {
		URL             string `json:"url"`
		Status          int    `json:"status"`
		ContentEncoding string `json:"contentEncoding"`
	} `json:"requests"`
}

// npmProject copies testdata/node/<name>/ to a temp dir and runs npm install
// there. It skips the test when node or npm is not on PATH.
func npmProject(t *testing.T, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("npm install from the registry: skipped in -short mode")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not on PATH", tool)
		}
	}
	src := filepath.Join("testdata", "node", name)
	dir := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm install in %s: %v\n%s", dir, err, out)
	}
	t.Logf("npm install (%s) took %v", name, time.Since(start).Round(time.Millisecond))
	return dir
}

// runNodeScript runs send.js in dir against srv as src and returns its
// report; it fails the test unless the script exits 0 (every event's SDK
// callback reported success).
func runNodeScript(t *testing.T, dir string, srv *sluiceProc, src e2eSource, prefix string, n int) nodeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "send.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"SLUICE_URL="+srv.url,
		"SLUICE_WRITE_KEY="+src.key,
		"SLUICE_EVENTS="+strconv.Itoa(n),
		"SLUICE_PREFIX="+prefix,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var res nodeResult
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &res); jerr != nil {
		t.Fatalf("node send.js (%s): %v; no report (%v)\nstdout:\n%s\nstderr:\n%s", src.name, err, jerr, stdout.String(), stderr.String())
	}
	if err != nil || res.OK != n || res.Failed != 0 {
		t.Fatalf("node send.js (%s): %v; %d ok, %d failed of %d; errors %v; requests %+v\nstderr:\n%s", src.name, err, res.OK, res.Failed, n, res.Errors, res.Requests, stderr.String())
	}
	if len(res.Sent) != n {
		t.Fatalf("node send.js (%s) reports %d events sent, want %d", src.name, len(res.Sent), n)
	}
	if len(res.Requests) == 0 {
		t.Errorf("node send.js (%s) recorded no HTTP request", src.name)
	}
	for _, r := range res.Requests {
		if r.URL != srv.url+"/v1/batch" || r.Status != http.StatusOK {
			t.Errorf("node send.js (%s): request to %s answered %d, want %s/v1/batch answered 200", src.name, r.URL, r.Status, srv.url)
		}
	}
	return res
}

// nodeSDKTest sends events from both sources through one Node SDK and
// checks the store.
func nodeSDKTest(t *testing.T, sdk string, check func(t *testing.T, res nodeResult)) {
	dir := npmProject(t, sdk)
	since := time.Now()
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	want := map[string]wantEvent{}
	types := map[string]int{}
	for i, src := range []e2eSource{srcWeb, srcMobile} {
		n := 24 + 7*i // not a multiple of the SDK's batch size
		res := runNodeScript(t, dir, srv, src, sdk+"-"+src.name, n)
		check(t, res)
		for _, s := range res.Sent {
			if _, dup := want[s.MessageID]; dup {
				t.Fatalf("script sent messageId %q twice", s.MessageID)
			}
			want[s.MessageID] = wantEvent{source: src.name, typ: s.Type, key: s.Key}
			types[s.Type]++
		}
	}
	if len(types) != 6 {
		t.Errorf("sent types %v, want all six", types)
	}
	srv.stop(t)
	recs := readStore(t, dataDir)
	if len(recs) != len(want) {
		t.Errorf("store holds %d records, sent %d events", len(recs), len(want))
	}
	checkStored(t, recs, want, true, since)
}

// TestE2EAnalyticsNode: Segment's Node SDK (@segment/analytics-node),
// installed from npm and run with node, posts to /v1/batch; every event is
// stored exactly once with the enrichment.
func TestE2EAnalyticsNode(t *testing.T) {
	t.Parallel()
	nodeSDKTest(t, "analytics-node", func(t *testing.T, res nodeResult) {})
}

// TestE2ERudderSDKNode: RudderStack's Node SDK (@rudderstack/rudder-sdk-node)
// posts gzip-compressed batches to /v1/batch; every event is stored exactly
// once with the enrichment.
func TestE2ERudderSDKNode(t *testing.T) {
	t.Parallel()
	nodeSDKTest(t, "rudder-sdk-node", func(t *testing.T, res nodeResult) {
		for _, r := range res.Requests {
			if r.ContentEncoding != "gzip" {
				t.Errorf("rudder-sdk-node sent a request with Content-Encoding %q, want gzip (the test means to cover gzip bodies)", r.ContentEncoding)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// Crash and shutdown

// TestE2EKill9DuringLoad: 8 clients post /v1/batch (50 events each) while
// the server is SIGKILLed at a random moment. After a restart on the same
// data dir: re-sending acknowledged batches is answered 200 and stores
// nothing (they survived, and dedup survives the crash); retrying the
// batches that got no answer (as an SDK would) is answered 200. Then every
// event of every batch answered 200 (and of every retried one) is stored
// exactly once, and nothing else is stored.
func TestE2EKill9DuringLoad(t *testing.T) {
	since := time.Now()
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)

	const workers, perBatch, batchesMax = 8, 50, 2000
	var (
		mu                 sync.Mutex
		acked, unanswered  []loadBatch
		killed             atomic.Bool
		ackedAfterKillSent atomic.Int64
	)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	loadStart := time.Now()
	deadline := loadStart.Add(3 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := []e2eSource{srcWeb, srcMobile}[w%2]
			for j := 0; j < batchesMax && time.Now().Before(deadline); j++ {
				b := newLoadBatch(src, fmt.Sprintf("k9-w%d-b%04d", w, j), perBatch)
				status, err := post(context.Background(), client, srv.url+"/v1/batch", src, b.body)
				mu.Lock()
				switch {
				case err != nil && killed.Load():
					unanswered = append(unanswered, b)
					mu.Unlock()
					return
				case err != nil:
					mu.Unlock()
					t.Errorf("worker %d: POST /v1/batch before the kill: %v", w, err)
					return
				case status == http.StatusOK:
					acked = append(acked, b)
					if killed.Load() {
						ackedAfterKillSent.Add(1)
					}
				default:
					mu.Unlock()
					t.Errorf("worker %d: POST /v1/batch answered %d", w, status)
					return
				}
				mu.Unlock()
			}
		}()
	}
	killAt := 300*time.Millisecond + rand.N(1200*time.Millisecond)
	time.Sleep(killAt)
	for i := 0; i < 100; i++ { // make sure some batches were acknowledged
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= workers {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed.Store(true)
	srv.kill(t)
	killedAt := time.Since(loadStart)
	wg.Wait()
	ackedEvents := len(acked) * perBatch
	t.Logf("SIGKILL %v into the load: %d batches (%d events) acknowledged (%d of them while the kill was being sent), %d unanswered",
		killedAt.Round(time.Millisecond), len(acked), ackedEvents, ackedAfterKillSent.Load(), len(unanswered))
	if len(acked) == 0 {
		t.Fatal("no batch was acknowledged before the kill")
	}
	if t.Failed() {
		t.FailNow()
	}

	srv2 := startServer(t, dataDir)
	// Re-send some acknowledged batches: the first, the last ones (most
	// likely in the last group commit before the crash) and a random one.
	resend := []loadBatch{acked[0], acked[len(acked)-1], acked[rand.N(len(acked))]}
	if len(acked) > 3 {
		resend = append(resend, acked[len(acked)-2])
	}
	resentEvents := 0
	for i, b := range resend {
		status, err := post(context.Background(), client, srv2.url+"/v1/batch", b.src, b.body)
		if err != nil || status != http.StatusOK {
			t.Errorf("re-sending acknowledged batch %d (%s): status %d, err %v; want 200", i, b.ids[0], status, err)
		}
		resentEvents += len(b.ids)
	}
	// Nothing of them is stored again: they all survived the crash (the
	// final check below finds every other acknowledged event, never re-sent).
	if stored := srv2.metric(t, "sluice_ingest_events_total"); stored != 0 {
		t.Errorf("re-sending %d acknowledged events stored %v of them again (sluice_ingest_events_total), want 0", resentEvents, stored)
	}
	if dups := srv2.metric(t, "sluice_ingest_dedup_hits_total"); dups != float64(resentEvents) {
		t.Errorf("after re-sending %d acknowledged events, sluice_ingest_dedup_hits_total = %v; want %d", resentEvents, dups, resentEvents)
	}
	// Retry the batches that got no answer, as an SDK does.
	for i, b := range unanswered {
		status, err := post(context.Background(), client, srv2.url+"/v1/batch", b.src, b.body)
		if err != nil || status != http.StatusOK {
			t.Errorf("retrying unanswered batch %d (%s): status %d, err %v; want 200", i, b.ids[0], status, err)
		}
	}
	if len(unanswered) > 0 {
		dups := srv2.metric(t, "sluice_ingest_dedup_hits_total") - float64(resentEvents)
		t.Logf("retried %d unanswered batches: %v of their %d events had been stored before the kill (deduplicated now)", len(unanswered), dups, len(unanswered)*perBatch)
	}
	client.CloseIdleConnections()
	srv2.stop(t)

	recs := readStore(t, dataDir)
	want := map[string]wantEvent{}
	mergeWant(want, acked...)
	mergeWant(want, unanswered...)
	t.Logf("store holds %d records; %d acknowledged + %d retried events expected", len(recs), ackedEvents, len(unanswered)*perBatch)
	checkStored(t, recs, want, true, since)
	if len(recs) != len(want) {
		t.Errorf("store holds %d records, want exactly the %d events of acknowledged and retried batches", len(recs), len(want))
	}
}

// TestE2EGracefulShutdown: SIGTERM while 8 clients post batches and one
// request's body is still being uploaded. The process exits 0, every
// request answered 200 (including those answered after the SIGTERM) is
// stored exactly once, and nothing else is stored.
func TestE2EGracefulShutdown(t *testing.T) {
	since := time.Now()
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)

	const workers, perBatch, batchesMax = 8, 100, 2000
	var (
		mu              sync.Mutex
		acked, failed   []loadBatch
		termSent        atomic.Bool
		ackedAfterTerm  atomic.Int64
		errorsAfterTerm atomic.Int64
	)
	client := &http.Client{Timeout: 40 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := []e2eSource{srcWeb, srcMobile}[w%2]
			for j := 0; j < batchesMax && time.Now().Before(deadline); j++ {
				b := newLoadBatch(src, fmt.Sprintf("gs-w%d-b%04d", w, j), perBatch)
				status, err := post(context.Background(), client, srv.url+"/v1/batch", src, b.body)
				mu.Lock()
				switch {
				case err != nil && termSent.Load():
					failed = append(failed, b)
					errorsAfterTerm.Add(1)
					mu.Unlock()
					return
				case err != nil:
					mu.Unlock()
					t.Errorf("worker %d: POST /v1/batch before SIGTERM: %v", w, err)
					return
				case status == http.StatusOK:
					acked = append(acked, b)
					if termSent.Load() {
						ackedAfterTerm.Add(1)
					}
				default:
					mu.Unlock()
					t.Errorf("worker %d: POST /v1/batch answered %d", w, status)
					return
				}
				mu.Unlock()
			}
		}()
	}

	// One request whose body is half uploaded when SIGTERM arrives: it is
	// in flight by any definition, and must be answered (and stored).
	slow := newLoadBatch(srcMobile, "gs-slow", 20)
	type slowResult struct {
		status int
		err    error
	}
	slowDone := make(chan slowResult, 1)
	halfSent := make(chan struct{})
	go func() {
		res := slowResult{}
		defer func() { slowDone <- res }()
		conn, err := net.DialTimeout("tcp", srv.addr, 5*time.Second)
		if err != nil {
			res.err = err
			close(halfSent)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(40 * time.Second))
		req, _ := http.NewRequest(http.MethodPost, srv.url+"/v1/batch", nil)
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(slow.src.key, "")
		var head bytes.Buffer
		fmt.Fprintf(&head, "POST /v1/batch HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n",
			srv.addr, req.Header.Get("Authorization"), len(slow.body))
		half := len(slow.body) / 2
		if _, res.err = conn.Write(append(head.Bytes(), slow.body[:half]...)); res.err != nil {
			close(halfSent)
			return
		}
		close(halfSent)
		for i := 0; i < 100 && !termSent.Load(); i++ {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // the server is shutting down meanwhile
		if _, res.err = conn.Write(slow.body[half:]); res.err != nil {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), req)
		if err != nil {
			res.err = err
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		res.status = resp.StatusCode
	}()

	<-halfSent
	time.Sleep(400 * time.Millisecond)
	termSent.Store(true)
	start := time.Now()
	srv.signal(t, syscall.SIGTERM)
	st := srv.wait(t, 45*time.Second)
	t.Logf("exited %v after SIGTERM: %v", time.Since(start).Round(time.Millisecond), st)
	if !st.Success() {
		t.Errorf("sluice exited with %v after SIGTERM while requests were in flight, want exit status 0", st)
	}
	wg.Wait()
	sr := <-slowDone
	t.Logf("%d batches of %d events acknowledged (%d of them after SIGTERM), %d failed after SIGTERM; slow request: status %d, err %v",
		len(acked), perBatch, ackedAfterTerm.Load(), errorsAfterTerm.Load(), sr.status, sr.err)
	if sr.err != nil || sr.status != http.StatusOK {
		t.Errorf("request whose body was half uploaded at SIGTERM: status %d, err %v; want 200 (graceful shutdown finishes requests in flight)", sr.status, sr.err)
	}
	if len(acked) == 0 {
		t.Fatal("no batch was acknowledged")
	}

	recs := readStore(t, dataDir)
	want := map[string]wantEvent{}
	mergeWant(want, acked...)
	if sr.status == http.StatusOK {
		mergeWant(want, slow)
	}
	// Requests that failed after SIGTERM may or may not have been stored
	// (no answer is no promise either way); anything else must not be.
	maybe := map[string]bool{}
	for _, b := range failed {
		for _, id := range b.ids {
			maybe[id] = true
		}
	}
	if sr.status != http.StatusOK {
		for _, id := range slow.ids {
			maybe[id] = true
		}
	}
	checkStored(t, recs, want, false, since)
	for _, r := range recs {
		if _, ok := want[r.MessageID]; !ok && !maybe[r.MessageID] {
			t.Errorf("seq %d: stored messageId %q was never sent", r.Seq, r.MessageID)
			break
		}
	}
	unacked := slices.DeleteFunc(slices.Clone(recs), func(r storedRecord) bool { return !maybe[r.MessageID] })
	t.Logf("store holds %d records: %d acknowledged, %d from requests that failed after SIGTERM", len(recs), len(want), len(unacked))
}

// ---------------------------------------------------------------------------
// Every route

// TestE2EEndpoints sends events through every ingest route of the running
// binary with net/http (long and short single-event paths, /v1/batch,
// /v1/b, /v1/import, /beacon/v1/batch with the key in the body, both pixel
// GETs, a gzip body, the key in ?writeKey=) plus refused requests (unknown
// key; a batch with one invalid event) and a repeated event, and checks the
// store holds exactly the accepted events, once each.
func TestE2EEndpoints(t *testing.T) {
	since := time.Now()
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	ctx := context.Background()
	want := map[string]wantEvent{}

	send := func(path string, src e2eSource, body string, wantStatus int) {
		t.Helper()
		status, err := post(ctx, client, srv.url+path, src, []byte(body))
		if err != nil || status != wantStatus {
			t.Errorf("POST %s %s: status %d, err %v; want %d", path, body, status, err, wantStatus)
		}
	}
	// Single-event routes: the type comes from the path.
	for i, typ := range loadTypes {
		for _, path := range []string{"/v1/" + typ, "/v1/" + typ[:1]} {
			src := []e2eSource{srcWeb, srcMobile}[i%2]
			id := "ep-" + strings.TrimPrefix(path, "/v1/")
			send(path, src, fmt.Sprintf(`{"userId":"u-%d","event":"E","name":"N","groupId":"g","previousId":"p","messageId":%q}`, i, id), http.StatusOK)
			want[id] = wantEvent{src.name, typ, fmt.Sprintf("u-%d", i)}
		}
	}
	// Batch routes.
	for i, path := range []string{"/v1/batch", "/v1/b", "/v1/import"} {
		b := newLoadBatch(srcMobile, "ep-"+strings.ReplaceAll(strings.Trim(path, "/"), "/", "_"), 6+i)
		send(path, b.src, string(b.body), http.StatusOK)
		mergeWant(want, b)
	}
	// The beacon: text/plain, the write key in the body (no auth header).
	{
		req, _ := http.NewRequest(http.MethodPost, srv.url+"/beacon/v1/batch", strings.NewReader(fmt.Sprintf(
			`{"writeKey":%q,"batch":[{"type":"page","anonymousId":"an-1","name":"Home","messageId":"ep-beacon"}]}`, srcWeb.key)))
		req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
		if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("POST /beacon/v1/batch: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		want["ep-beacon"] = wantEvent{srcWeb.name, "page", "an-1"}
	}
	// Pixels: plain parameters and base64 JSON; they always answer the GIF.
	data := base64.StdEncoding.EncodeToString([]byte(`{"anonymousId":"an-2","name":"Pricing","messageId":"ep-pixel-page"}`))
	for _, q := range []string{
		"/pixel/v1/track?writeKey=" + srcMobile.key + "&userId=u-px&event=Email%20Opened&messageId=ep-pixel-track&campaign=c1",
		"/pixel/v1/page?writeKey=" + srcMobile.key + "&data=" + url.QueryEscape(data),
	} {
		resp, err := client.Get(srv.url + q)
		if err != nil {
			t.Fatalf("GET %s: %v", q, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte("GIF89a")) {
			t.Errorf("GET %s: %d %q, want 200 and a GIF", q, resp.StatusCode, body)
		}
	}
	want["ep-pixel-track"] = wantEvent{srcMobile.name, "track", "u-px"}
	want["ep-pixel-page"] = wantEvent{srcMobile.name, "page", "an-2"}
	// A gzip body, and the write key in the query string.
	{
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write([]byte(`{"userId":"u-gz","event":"Zipped","messageId":"ep-gzip"}`))
		zw.Close()
		req, _ := http.NewRequest(http.MethodPost, srv.url+"/v1/track?writeKey="+srcWeb.key, &gz)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Encoding", "gzip")
		if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("POST gzip /v1/track?writeKey=: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		want["ep-gzip"] = wantEvent{srcWeb.name, "track", "u-gz"}
	}
	// Refused: an unknown key, and a batch with one invalid event (all or
	// nothing). Neither may store anything.
	send("/v1/track", e2eSource{name: "nobody", key: "wk_unknown"}, `{"userId":"u","event":"E","messageId":"rej-key"}`, http.StatusUnauthorized)
	send("/v1/batch", srcWeb, `{"batch":[{"type":"track","userId":"u","event":"E","messageId":"rej-ok"},{"type":"track","event":"no user","messageId":"rej-bad"}]}`, http.StatusBadRequest)
	// A repeat of an acknowledged event: 200, stored once.
	send("/v1/track", srcWeb, `{"userId":"u-0","event":"E","messageId":"ep-track"}`, http.StatusOK)

	if v := srv.metric(t, "sluice_ingest_dedup_hits_total"); v != 1 {
		t.Errorf("sluice_ingest_dedup_hits_total = %v, want 1", v)
	}
	srv.stop(t)
	recs := readStore(t, dataDir)
	if len(recs) != len(want) {
		t.Errorf("store holds %d records, want %d", len(recs), len(want))
	}
	events := checkStored(t, recs, want, true, since)
	if ev := events["ep-pixel-track"]; ev != nil {
		if p, _ := ev["properties"].(map[string]any); p == nil || p["campaign"] != "c1" {
			t.Errorf("pixel event properties = %v, want campaign c1", ev["properties"])
		}
	}
}

// ---------------------------------------------------------------------------
// Known bugs (skipped until fixed)

// duplicateKeys returns the object member names that occur more than once
// in one object anywhere in the JSON document.
func duplicateKeys(doc []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	type frame struct {
		obj    bool
		keys   map[string]bool
		expect bool // next string token in an object is a key
	}
	var stack []*frame
	var dups []string
	for i := 0; i < 1_000_000; i++ {
		tok, err := dec.Token()
		if err == io.EOF {
			return dups, nil
		}
		if err != nil {
			return dups, err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.expect {
			if k, ok := tok.(string); ok {
				if top.keys[k] {
					dups = append(dups, k)
				}
				top.keys[k] = true
				top.expect = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			if top != nil && top.obj {
				top.expect = true
			}
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, expect: true})
		case json.Delim('['):
			if top != nil && top.obj {
				top.expect = true
			}
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		default:
			if top != nil && top.obj {
				top.expect = true
			}
		}
	}
	return dups, fmt.Errorf("document too long")
}

// TestE2EStoredEventsWellFormed sends events whose optional fields are
// present but empty or invalid, the way hand-written clients send them, and
// checks that every stored event has unique member names (several
// warehouses reject duplicate keys; parsers disagree on which one wins) and
// an ISO-8601 timestamp.
func TestE2EStoredEventsWellFormed(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	bodies := map[string]string{ // key: the userId, to find the record again
		"wf-null-mid":   `{"userId":"wf-null-mid","event":"E","messageId":null}`,
		"wf-empty-mid":  `{"userId":"wf-empty-mid","event":"E","messageId":""}`,
		"wf-null-orig":  `{"userId":"wf-null-orig","event":"E","messageId":"wf-3","originalTimestamp":null,"timestamp":"2024-05-01T12:00:00.000Z","sentAt":"2024-05-01T12:00:01.000Z"}`,
		"wf-empty-ip":   `{"userId":"wf-empty-ip","event":"E","messageId":"wf-4","context":{"ip":""}}`,
		"wf-bad-ts":     `{"userId":"wf-bad-ts","event":"E","messageId":"wf-5","originalTimestamp":"2024-05-01T12:00:00Z","timestamp":"not a time"}`,
		"wf-control-ok": `{"userId":"wf-control-ok","event":"E","messageId":"wf-6","context":{"ip":"10.1.2.3"}}`,
	}
	for _, body := range bodies {
		if status, err := post(context.Background(), client, srv.url+"/v1/track", srcWeb, []byte(body)); err != nil || status != http.StatusOK {
			t.Fatalf("POST %s: %d %v", body, status, err)
		}
	}
	srv.stop(t)
	recs := readStore(t, dataDir)
	if len(recs) != len(bodies) {
		t.Fatalf("store holds %d records, sent %d", len(recs), len(bodies))
	}
	for _, r := range recs {
		dups, err := duplicateKeys(r.Payload)
		if err != nil {
			t.Errorf("key %s: stored payload is not valid JSON: %v\n%s", r.Key, err, r.Payload)
			continue
		}
		if len(dups) > 0 {
			t.Errorf("key %s: stored payload repeats member(s) %q:\n  sent   %s\n  stored %s", r.Key, dups, bodies[r.Key], r.Payload)
		}
		var ev struct {
			Timestamp string `json:"timestamp"`
		}
		json.Unmarshal(r.Payload, &ev)
		if _, err := time.Parse(time.RFC3339Nano, ev.Timestamp); err != nil {
			t.Errorf("key %s: stored timestamp %q is not ISO-8601:\n  sent   %s\n  stored %s", r.Key, ev.Timestamp, bodies[r.Key], r.Payload)
		}
	}
}
