package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Config files for the table below. Each case writes one bad value into a
// valid config and marks its line with "#<": the error must name that key
// and that line of the whole file (not a line counted inside a block).
const (
	cfgHead = `# a valid config, but for the marked line
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:8081
data_dir: ./data
sources:
  - name: web
    write_key: WK1
  - name: app
    write_key: WK2
`
	cfgHook = `destinations:
  - name: hook
    type: webhook
    sources: [web]
%s    config:
      url: http://127.0.0.1:9000/in
%s`
	cfgArchive = `  - name: archive
    type: file
    config:
      path: ./out/events.jsonl
%s`
)

// withDest adds lines to the webhook's block (indent 4), to its config
// block (indent 6) and to the file destination's config block (indent 6).
func withDest(dest, hookConf, fileConf string) string {
	return cfgHead + fmt.Sprintf(cfgHook, dest, hookConf) + fmt.Sprintf(cfgArchive, fileConf)
}

// withTop adds top-level lines after the destinations.
func withTop(lines string) string { return withDest("", "", "") + lines }

// withLine replaces the base config's line that starts with old.
func withLine(old, line string) string {
	doc := withTop("")
	i := strings.Index(doc, old)
	j := i + strings.IndexByte(doc[i:], '\n')
	return doc[:i] + line + doc[j:]
}

func dest(lines string) string     { return withDest(lines, "", "") }
func hookConf(lines string) string { return withDest("", lines, "") }
func fileConf(lines string) string { return withDest("", "", lines) }

// refused checks that doc is refused with the line marked "#<", key and
// a message holding msg, and returns the error.
func refused(t *testing.T, doc, key, msg string) error {
	t.Helper()
	_, err := parseConfig([]byte(doc))
	if err == nil {
		t.Fatalf("accepted:\n%s", doc)
	}
	want := fmt.Sprintf("config line %d: %s: ", markedLine(t, doc), key)
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), msg) {
		t.Fatalf("got  %v\nwant %s...%s\n%s", err, want, msg, doc)
	}
	return err
}

// markedLine is the 1-based line holding "#<".
func markedLine(t *testing.T, doc string) int {
	t.Helper()
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "#<") {
			return i + 1
		}
	}
	t.Fatalf("no #< marker in\n%s", doc)
	return 0
}

var badConfigs = []struct {
	name, doc, key, msg string
}{
	// Durations.
	{"negative max_age", dest("    retry:\n      max_age: -1h #<\n"), "destinations[0].retry.max_age", "must not be negative (got -1h)"},
	{"negative timeout", dest("    timeout: -5s #<\n"), "destinations[0].timeout", "must not be negative (got -5s)"},
	{"zero timeout", dest("    timeout: 0s #<\n"), "destinations[0].timeout", "must be positive (got 0s"},
	{"negative backoff_initial", dest("    retry:\n      backoff_initial: -1s #<\n"), "destinations[0].retry.backoff_initial", "must not be negative"},
	{"negative backoff_max", dest("    retry:\n      backoff_max: -1s #<\n"), "destinations[0].retry.backoff_max", "must not be negative"},
	{"backoff_max below initial", dest("    retry:\n      backoff_initial: 10s\n      backoff_max: 2s #<\n"), "destinations[0].retry.backoff_max", "must be at least backoff_initial (10s)"},
	{"backoff_initial above default max", dest("    retry:\n      backoff_initial: 1h #<\n"), "destinations[0].retry.backoff_initial", "must be at least backoff_initial (1h0m0s)"},
	{"negative file max_age", fileConf("      max_age: -1m #<\n"), "destinations[1].config.max_age", "must not be negative (got -1m)"},
	{"negative read_timeout", withTop("ingest:\n  read_timeout: -1s #<\n"), "ingest.read_timeout", "must not be negative"},
	{"negative write_timeout", withTop("ingest:\n  write_timeout: -1s #<\n"), "ingest.write_timeout", "must not be negative"},
	{"negative retry_after", withTop("ingest:\n  retry_after: -1s #<\n"), "ingest.retry_after", "must not be negative"},
	{"zero dedup_window", withTop("engine:\n  dedup_window: 0s #<\n"), "engine.dedup_window", "must not be zero"},
	{"zero reclaim_interval", withTop("engine:\n  reclaim_interval: 0s #<\n"), "engine.reclaim_interval", "must not be zero"},
	{"duration as a number", dest("    timeout: 30 #<\n"), "destinations[0].timeout", `want a duration such as 30s, 5m or 1h, got "30"`},
	{"duration as text", dest("    retry:\n      max_age: three days #<\n"), "destinations[0].retry.max_age", `want a duration`},

	// Sizes and counts.
	{"zero batch_size", dest("    batch_size: 0 #<\n"), "destinations[0].batch_size", "must be positive (got 0)"},
	{"negative batch_size", dest("    batch_size: -1 #<\n"), "destinations[0].batch_size", "must be positive (got -1)"},
	{"huge batch_size", dest("    batch_size: 10001 #<\n"), "destinations[0].batch_size", "must be at most 10000"},
	{"batch_size as text", dest("    batch_size: ten #<\n"), "destinations[0].batch_size", `want a whole number, got "ten"`},
	{"zero concurrency", dest("    concurrency: 0 #<\n"), "destinations[0].concurrency", "must be positive"},
	{"zero min_attempts", dest("    retry:\n      min_attempts: 0 #<\n"), "destinations[0].retry.min_attempts", "must be positive"},
	{"zero failure_min", dest("    retry:\n      failure_min: 0 #<\n"), "destinations[0].retry.failure_min", "must be positive"},
	{"failure_min past the window", dest("    retry:\n      failure_min: 21 #<\n"), "destinations[0].retry.failure_min", "must be at most 20"},
	{"zero in_flight_max", withTop("ingest:\n  in_flight_max: 0 #<\n"), "ingest.in_flight_max", "must be positive (got 0)"},
	{"negative event_bytes_max", withTop("ingest:\n  event_bytes_max: -1 #<\n"), "ingest.event_bytes_max", "must be positive (got -1)"},
	{"zero request_bytes_max", withTop("ingest:\n  request_bytes_max: 0 #<\n"), "ingest.request_bytes_max", "must be positive"},
	{"negative connections_max", withTop("ingest:\n  connections_max: -3 #<\n"), "ingest.connections_max", "must be positive"},
	{"event above request", withTop("ingest:\n  event_bytes_max: 8388608 #<\n"), "ingest.event_bytes_max", "must not exceed request_bytes_max (4194304)"},
	{"event above record", withTop("ingest:\n  event_bytes_max: 2097152 #<\n  request_bytes_max: 8388608\n"), "ingest.event_bytes_max", "record limit"},
	{"body budget below request", withTop("ingest:\n  body_bytes_budget: 1024 #<\n"), "ingest.body_bytes_budget", "must be at least request_bytes_max"},
	{"window below batch", dest("    batch_size: 500\n    window_events: 100 #<\n"), "destinations[0].window_events", "must be from batch_size (500)"},
	{"window bytes too big", dest("    window_bytes: 2147483648 #<\n"), "destinations[0].window_bytes", "at most"},
	{"zero window bytes", dest("    window_bytes: 0 #<\n"), "destinations[0].window_bytes", "must be positive"},
	{"zero window budget", withTop("router:\n  window_budget_bytes: 0 #<\n"), "router.window_budget_bytes", "must be positive"},
	{"zero body budget", withTop("ingest:\n  body_bytes_budget: 0 #<\n"), "ingest.body_bytes_budget", "must be positive"},
	{"zero reserve", withTop("engine:\n  reserve_bytes: 0 #<\n"), "engine.reserve_bytes", "must not be zero"},
	{"zero free floor", withTop("engine:\n  disk_free_bytes_min: 0 #<\n"), "engine.disk_free_bytes_min", "must not be zero"},
	{"negative disk check", withTop("engine:\n  disk_check_interval: -1s #<\n"), "engine.disk_check_interval", "must not be negative"},
	{"tiny segment", withTop("engine:\n  segment_bytes_max: 100 #<\n"), "engine.segment_bytes_max", "must be from 4096"},
	{"zero segment", withTop("engine:\n  segment_bytes_max: 0 #<\n"), "engine.segment_bytes_max", "must be positive"},
	{"negative disk budget", withTop("engine:\n  disk_budget_bytes: -1 #<\n"), "engine.disk_budget_bytes", "must not be negative"},
	{"negative backlog", withTop("engine:\n  backlog_events_max: -1 #<\n"), "engine.backlog_events_max", "must not be negative"},
	{"tiny dedup filter", withTop("engine:\n  dedup_filter_bytes: 10 #<\n"), "engine.dedup_filter_bytes", "must be at least 1024"},
	{"zero file max_bytes", fileConf("      max_bytes: 0 #<\n"), "destinations[1].config.max_bytes", "must be positive"},

	// Ratios and rates.
	{"zero failure_ratio", dest("    retry:\n      failure_ratio: 0 #<\n"), "destinations[0].retry.failure_ratio", "must be above 0 and at most 1 (got 0)"},
	{"failure_ratio above 1", dest("    retry:\n      failure_ratio: 1.5 #<\n"), "destinations[0].retry.failure_ratio", "(got 1.5)"},
	{"NaN failure_ratio", dest("    retry:\n      failure_ratio: .nan #<\n"), "destinations[0].retry.failure_ratio", "(got .nan)"},
	{"negative rate_limit", dest("    rate_limit: -1 #<\n"), "destinations[0].rate_limit", "0 for no limit (got -1)"},
	{"infinite rate_limit", dest("    rate_limit: .inf #<\n"), "destinations[0].rate_limit", "(got .inf)"},
	{"NaN rate_limit", dest("    rate_limit: .NaN #<\n"), "destinations[0].rate_limit", "(got .NaN)"},

	// Statuses.
	{"abort and throttle", dest("    retry:\n      throttle_statuses: [429, 503]\n      abort_statuses: [400, 503] #<\n"), "destinations[0].retry.abort_statuses[1]", "503 is also listed in throttle_statuses"},
	{"abort 429 with the default throttle", dest("    retry:\n      abort_statuses: [429] #<\n"), "destinations[0].retry.abort_statuses[0]", "429 is also listed in throttle_statuses (default [429])"},
	{"retry and throttle", dest("    retry:\n      retry_statuses:\n        - 404\n        - 429 #<\n"), "destinations[0].retry.retry_statuses[1]", "429 is also listed in throttle_statuses"},
	{"abort and retry", dest("    retry:\n      abort_statuses: [404]\n      retry_statuses: [404] #<\n"), "destinations[0].retry.retry_statuses[0]", "404 is also listed in abort_statuses"},
	{"status above 599", dest("    retry:\n      abort_statuses: [600] #<\n"), "destinations[0].retry.abort_statuses[0]", "from 100 to 599 (got 600)"},
	{"status below 100", dest("    retry:\n      retry_statuses: [99] #<\n"), "destinations[0].retry.retry_statuses[0]", "from 100 to 599 (got 99)"},
	{"success as retry", dest("    retry:\n      retry_statuses: [200] #<\n"), "destinations[0].retry.retry_statuses[0]", "200 is a success"},

	// Addresses and the admin API.
	{"listen is admin_listen", withLine("admin_listen:", "admin_listen: 127.0.0.1:8080 #<"), "admin_listen", "must differ from listen"},
	{"admin on every address, same port", withLine("admin_listen:", "admin_listen: 0.0.0.0:8080 #<\nadmin_token: t0k"), "admin_listen", "must differ from listen"},
	{"admin on localhost, same port", withLine("admin_listen:", "admin_listen: localhost:8080 #<"), "admin_listen", "must differ from listen"},
	{"non-loopback admin without token", withLine("admin_listen:", "admin_listen: 0.0.0.0:8081 #<"), "admin_listen", "not a loopback address: set admin_token"},
	{"admin on all interfaces without token", withLine("admin_listen:", "admin_listen: ':8081' #<"), "admin_listen", "not a loopback address"},
	{"admin_token with a space", withTop("admin_token: 'two words' #<\n"), "admin_token", "must not contain spaces"},
	{"listen without port", withLine("listen:", "listen: 127.0.0.1 #<"), "listen", "want host:port"},
	{"listen with a bad port", withLine("listen:", "listen: 127.0.0.1:http #<"), "listen", "want a port number"},
	{"empty data_dir", withLine("data_dir:", "data_dir: '' #<"), "data_dir", "must not be empty"},
	{"bad log_level", withTop("log_level: verbose #<\n"), "log_level", `want debug, info, warn or error, got "verbose"`},

	// Sources and destinations.
	{"empty write_key", strings.Replace(withTop(""), "write_key: WK2", "write_key: '' #<", 1), "sources[1].write_key", "needs a write key"},
	{"blank write_key", strings.Replace(withTop(""), "write_key: WK2", "write_key: '   ' #<", 1), "sources[1].write_key", "needs a write key"},
	{"missing write_key", strings.Replace(withTop(""), "  - name: app\n    write_key: WK2", "  - name: app #<", 1), "sources[1].write_key", "needs a write key"},
	{"shared write_key", strings.Replace(withTop(""), "write_key: WK2", "write_key: WK1 #<", 1), "sources[1].write_key", "already the write key of the source on line 6"},
	{"duplicate destination", withTop("") + "  - name: hook #<\n    type: file\n    config: {path: ./x.jsonl}\n", "destinations[2].name", `"hook" is already the name of the destination on line 11`},
	{"unknown type", strings.Replace(withTop(""), "type: webhook", "type: carrier-pigeon #<", 1), "destinations[0].type", "want one of " + strings.Join(destTypeNames(), ", ") + `, got "carrier-pigeon"`},
	{"unknown source", strings.Replace(withTop(""), "sources: [web]", "sources: [web, nope] #<", 1), "destinations[0].sources[1]", `no source is named "nope"`},
	{"unknown event type", dest("    events:\n      - track\n      - click #<\n"), "destinations[0].events[1]", `unknown event type "click"`},
	{"same file twice", withTop("") + "  - name: copy\n    type: file\n    config:\n      path: out/../out/./events.jsonl #<\n", "destinations[2].config.path", "events.jsonl is also used by destinations[1] (line 19)"},
	{"same compressed file twice", fileConf("      compress: true\n") + "  - name: copy\n    type: file\n    config:\n      path: ./out/events.jsonl.zst #<\n", "destinations[2].config.path", "is also used by destinations[1]"},
	{"webhook without url", strings.Replace(strings.Replace(withTop(""), "      url: http://127.0.0.1:9000/in\n", "      method: PUT\n", 1), "config:", "config: #<", 1), "destinations[0].config.url", "a webhook needs a url"},
	{"webhook url not a URL", strings.Replace(withTop(""), "url: http://127.0.0.1:9000/in", "url: '127.0.0.1:9000/in' #<", 1), "destinations[0].config.url", "want an absolute http:// or https:// URL"},
	{"webhook url unparseable", strings.Replace(withTop(""), "url: http://127.0.0.1:9000/in", "url: 'http://[::1' #<", 1), "destinations[0].config.url", "want an absolute"},
	{"webhook url without host", strings.Replace(withTop(""), "url: http://127.0.0.1:9000/in", "url: 'http:///in' #<", 1), "destinations[0].config.url", "want an absolute"},
	{"webhook url ftp", strings.Replace(withTop(""), "url: http://127.0.0.1:9000/in", "url: ftp://h/in #<", 1), "destinations[0].config.url", "want an absolute"},
	{"lower-case method", hookConf("      method: post #<\n"), "destinations[0].config.method", "in capitals"},
	{"header on two lines", hookConf("      headers:\n        X-Key: \"a\\nb\" #<\n"), "destinations[0].config.headers.X-Key", "must be one line"},
	{"header name with a space", hookConf("      headers:\n        'X Key': v #<\n"), "destinations[0].config.headers.X Key", "not a valid header name"},

	// The file's shape.
	{"unknown key in retry", dest("    retry:\n      max_tries: 3 #<\n"), "destinations[0].retry.max_tries", "unknown key (known: min_attempts"},
	{"unknown key in config block", hookConf("      uri: http://x #<\n"), "destinations[0].config.uri", "unknown key (known: url, method"},
	{"key set twice", dest("    timeout: 1s\n    timeout: 2s #<\n"), "destinations[0].timeout", "set twice (first on line 14)"},
	{"list where a block belongs", dest("    retry: [1, 2] #<\n"), "destinations[0].retry", "want a block of keys, got a list"},
	{"block where a value belongs", dest("    ordering: {a: 1} #<\n"), "destinations[0].ordering", "want true or false, got a block of keys"},
	{"not a boolean", dest("    ordering: maybe #<\n"), "destinations[0].ordering", `want true or false, got "maybe"`},
	{"wrong value in file config", fileConf("      compress: yes please #<\n"), "destinations[1].config.compress", "want true or false"},
}

// TestConfigRefusesBadValues: every bad value is an error naming its key
// and its line in the file, in words (no Go type names).
func TestConfigRefusesBadValues(t *testing.T) {
	if _, err := parseConfig([]byte(withTop(""))); err != nil {
		t.Fatalf("the base config is refused: %v", err)
	}
	for _, tc := range badConfigs {
		t.Run(tc.name, func(t *testing.T) {
			err := refused(t, tc.doc, tc.key, tc.msg)
			for _, goName := range []string{"time.Duration", "int64", "float64", "main.", "!!", "yaml:"} {
				if strings.Contains(err.Error(), goName) {
					t.Errorf("message shows %q: %v", goName, err)
				}
			}
		})
	}
}

// TestConfigErrorsWithoutLine: what is missing from the file has no line.
func TestConfigErrorsWithoutLine(t *testing.T) {
	for doc, want := range map[string]string{
		"listen: 127.0.0.1:8080\n": "config: sources: at least one source is required",
		"# nothing\n":              "config is empty",
		"":                         "config is empty",
		"- a\n- b\n":               "config line 1: want a block of keys, got a list",
		"listen: [\n":              "cannot parse YAML: yaml: line 1",
	} {
		if _, err := parseConfig([]byte(doc)); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: got %v, want %s", doc, err, want)
		}
	}
}

// TestConfigDefaults: a minimal config comes out complete, with the
// defaults README.md documents; a negative dedup_window or reclaim_interval
// still means off.
func TestConfigDefaults(t *testing.T) {
	cfg, err := parseConfig([]byte(withTop("engine:\n  dedup_window: -1s\n  reclaim_interval: -1s\n")))
	if err != nil {
		t.Fatal(err)
	}
	h, f := cfg.Destinations[0], cfg.Destinations[1]
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"log_level", cfg.LogLevel, "info"},
		{"hook batch", h.BatchSize, 1},
		{"file batch", f.BatchSize, 100},
		{"ordering", *h.Ordering, true},
		{"concurrency", h.Concurrency, 64},
		{"timeout", h.Timeout, 30 * time.Second},
		{"min_attempts", h.Retry.MinAttempts, 3},
		{"max_age", h.Retry.MaxAge, 72 * time.Hour},
		{"backoff", [2]time.Duration{h.Retry.BackoffInitial, h.Retry.BackoffMax}, [2]time.Duration{time.Second, 5 * time.Minute}},
		{"failure", [2]any{h.Retry.FailureRatio, h.Retry.FailureMin}, [2]any{0.5, 5}},
		{"throttle", fmt.Sprint(h.Retry.ThrottleStatuses), "[429]"},
		{"method", h.typed.(*WebhookConfig).Method, "POST"},
		{"file rotation", [2]any{f.typed.(*FileConfig).MaxBytes, f.typed.(*FileConfig).MaxAge}, [2]any{int64(64 << 20), time.Hour}},
		{"ingest", cfg.Ingest.EventBytesMax, 32 << 10},
		{"dedup off", cfg.Engine.DedupWindow, -time.Second},
		{"reclaim never", cfg.Engine.ReclaimInterval, -time.Second},
		{"lines", [2]int{cfg.Sources[1].line, h.line}, [2]int{8, 11}},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestConfigExamplesLoad: the quick-start file and README.md's full example
// are valid.
func TestConfigExamplesLoad(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(filepath.Join(root, "examples", "quickstart.yaml")); err != nil {
		t.Error(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "\n## Configuration\n")
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	if !ok || block == "" {
		t.Fatal("no yaml block under README.md's Configuration")
	}
	if _, err := parseConfig([]byte(block)); err != nil {
		t.Errorf("README.md's example: %v", err)
	}
}

// TestE2EBadConfigExits2: `sluice serve --config bad.yaml` exits with
// status 2 and the message, before serving anything (the admin address
// check included).
func TestE2EBadConfigExits2(t *testing.T) {
	bin := sluiceBinary(t)
	for _, tc := range []struct{ doc, want string }{
		{dest("    retry:\n      max_age: -1h #<\n"), "destinations[0].retry.max_age: must not be negative (got -1h)"},
		{withLine("admin_listen:", "admin_listen: 0.0.0.0:%d #<"), "admin_listen: 0.0.0.0:"},
	} {
		port := freePort(t)
		doc := strings.Replace(tc.doc, "127.0.0.1:8080", fmt.Sprintf("127.0.0.1:%d", port), 1)
		doc = strings.Replace(doc, "%d", fmt.Sprint(freePort(t)), 1)
		want := fmt.Sprintf("config line %d: %s", markedLine(t, doc), tc.want)
		path := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--config", path)
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Fatalf("sluice serve exited with %v, want exit status 2\n%s", err, out)
		}
		if !strings.Contains(string(out), want) || strings.Contains(string(out), "serving") {
			t.Fatalf("output does not say %q (or it served):\n%s", want, out)
		}
		if _, err := os.Stat(filepath.Join(cmd.Dir, "data")); err == nil {
			t.Errorf("a refused config created the data dir")
		}
	}
}
