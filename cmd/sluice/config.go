package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// Config is the YAML file `sluice serve --config` reads. Every default and
// every check is in complete (and the functions it calls), key by key; the
// file's shape (known keys, value types) is checked by checker.walk
// against these types before anything is decoded.
type Config struct {
	// Listen is the ingest HTTP address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// DataDir holds the log and index. Default ./data.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json. Default text.
	LogFormat string `yaml:"log_format"`
	// AdminListen is the admin API address. Default 127.0.0.1:8081; must
	// differ from Listen.
	AdminListen string `yaml:"admin_listen"`
	// AdminToken is the admin API's bearer token; without one the admin
	// API refuses a non-loopback address.
	AdminToken   string        `yaml:"admin_token"`
	Sources      []Source      `yaml:"sources"`
	Destinations []Destination `yaml:"destinations"`
	Ingest       IngestConfig  `yaml:"ingest"`
	Engine       EngineConfig  `yaml:"engine"`
	Router       RouterConfig  `yaml:"router"`
}

// RouterConfig holds what all destinations share.
type RouterConfig struct {
	// WindowBudgetBytes bounds the read-ahead windows of all destinations
	// together (default 256 MiB); each may hold WindowReserveBytes of its
	// own (default 256 KiB) beyond it.
	WindowBudgetBytes  int64 `yaml:"window_budget_bytes"`
	WindowReserveBytes int64 `yaml:"window_reserve_bytes"`
}

// Source is a write key and its name.
type Source struct {
	Name     string `yaml:"name"`
	WriteKey string `yaml:"write_key"`
	line     int
}

// Destination is one delivery target.
type Destination struct {
	Name     string   `yaml:"name"`
	Type     string   `yaml:"type"`
	Sources  []string `yaml:"sources"`
	Events   []string `yaml:"events"`
	Ordering *bool    `yaml:"ordering"` // default true
	// BatchSize: events per request (webhook: more than 1 sends a JSON
	// array), at most 10,000. The default is the type's (destTypes).
	BatchSize int `yaml:"batch_size"`
	// Concurrency caps requests in flight. Default 64.
	Concurrency int `yaml:"concurrency"`
	// RateLimit caps events per second; 0 (the default) means none.
	RateLimit float64 `yaml:"rate_limit"`
	// Timeout bounds one request. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// WindowEvents and WindowBytes bound the events read ahead of the
	// cursor. Defaults 10,000 (at least batch_size, at most 1,000,000) and
	// 32 MiB (at most 1 GiB).
	WindowEvents int         `yaml:"window_events"`
	WindowBytes  int         `yaml:"window_bytes"`
	Retry        RetryConfig `yaml:"retry"`
	// Config holds the type's own settings, checked and decoded by the
	// type's complete (destTypes) into typed.
	Config yaml.Node `yaml:"config"`
	line   int
	typed  destConfig
}

// RetryConfig is a destination's retry block (see router.Policy).
type RetryConfig struct {
	MinAttempts    int           `yaml:"min_attempts"`    // default 3
	MaxAge         time.Duration `yaml:"max_age"`         // default 72h
	BackoffInitial time.Duration `yaml:"backoff_initial"` // default 1s
	BackoffMax     time.Duration `yaml:"backoff_max"`     // default 5m, at least backoff_initial
	// AbortStatuses default to the router's rule: every 4xx but 408 and
	// 429. No status may be in two of the three lists, nor be a 2xx.
	AbortStatuses    []int   `yaml:"abort_statuses"`
	RetryStatuses    []int   `yaml:"retry_statuses"`
	ThrottleStatuses []int   `yaml:"throttle_statuses"` // default [429]
	FailureRatio     float64 `yaml:"failure_ratio"`     // in (0, 1]; default 0.5
	FailureMin       int     `yaml:"failure_min"`       // 1 to healthWindow; default 5
}

// healthWindow is the router's default number of recent attempts its
// failure ratio looks at (router.Policy.HealthWindow); failure_min cannot
// exceed it.
const healthWindow = 20

// IngestConfig tunes the gateway (see ingest.Options).
type IngestConfig struct {
	EventBytesMax     int           `yaml:"event_bytes_max"`   // default 32 KiB
	RequestBytesMax   int           `yaml:"request_bytes_max"` // default 4 MiB
	InFlightMax       int           `yaml:"in_flight_max"`     // default 1024
	ConnectionsMax    int           `yaml:"connections_max"`   // default 10,000
	ReadTimeout       time.Duration `yaml:"read_timeout"`      // default 10s
	WriteTimeout      time.Duration `yaml:"write_timeout"`     // default 10s
	RetryAfter        time.Duration `yaml:"retry_after"`       // default 1s
	TrustForwardedFor bool          `yaml:"trust_forwarded_for"`
	// BodyBytesBudget bounds the request body bytes held across all
	// connections (default 64 x request_bytes_max); past it, 503.
	BodyBytesBudget int64 `yaml:"body_bytes_budget"`
}

// EngineConfig tunes the log (see engine.Options).
type EngineConfig struct {
	SegmentBytesMax  int64 `yaml:"segment_bytes_max"`  // default 64 MiB
	DiskBudgetBytes  int64 `yaml:"disk_budget_bytes"`  // 0 (default): none
	BacklogEventsMax int64 `yaml:"backlog_events_max"` // 0 (default): none
	// DedupWindow defaults to 24h; negative turns deduplication off.
	DedupWindow      time.Duration `yaml:"dedup_window"`
	DedupFilterBytes int           `yaml:"dedup_filter_bytes"` // default 64 MiB
	// ReclaimInterval is how often consumed segments are deleted (default
	// 1s); negative keeps every segment (for inspection and tests).
	ReclaimInterval time.Duration `yaml:"reclaim_interval"`
	// ReserveBytes is the size of data_dir/reserve, room kept for the
	// index so that a full disk recovers by itself (default 64 MiB;
	// negative: no reserve).
	ReserveBytes int64 `yaml:"reserve_bytes"`
	// DiskFreeBytesMin: while data_dir's filesystem has less free space,
	// ingest answers 503 with Retry-After and /health 503 (default 64 MiB;
	// negative: no floor).
	DiskFreeBytesMin int64 `yaml:"disk_free_bytes_min"`
	// DiskCheckInterval is how often free space is checked and a failed
	// segment repaired (default 1s).
	DiskCheckInterval time.Duration `yaml:"disk_check_interval"`
}

// The engine's limits the config must respect (engine.Options): a segment
// holds at least a page, and with the 8 MiB group commit it overshoots by
// its offsets must stay below 4 GiB; a record is at most 1 MiB.
const (
	segmentBytesMin  = 4096
	segmentBytesMax  = 1<<32 - 8<<20
	recordBytesLimit = 1 << 20
	filterBytesMin   = 1024
)

var validEventTypes = []string{"track", "identify", "page", "screen", "group", "alias"}

// loadConfig reads, checks and completes a config file.
func loadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config: %w", err)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("cannot load %s: %w", path, err)
	}
	return cfg, nil
}

// parseConfig checks the document's shape against Config (unknown keys,
// value types, duplicate keys), decodes it, then fills defaults and checks
// values. Errors name the key and its line.
func parseConfig(raw []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("cannot parse YAML: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, errors.New("config is empty")
	}
	k := &checker{keys: map[string]keyInfo{}}
	root := doc.Content[0]
	if err := k.walk(root, reflect.TypeFor[Config](), ""); err != nil {
		return nil, err
	}
	var cfg Config
	if err := root.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("BUG: cannot decode a checked config: %w", err)
	}
	if err := cfg.complete(k); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// KeyError is a bad configuration value: the key's path (such as
// destinations[0].retry.max_age) and the line it is on.
type KeyError struct {
	Line int // 0 when the key is missing and so is every enclosing one
	Key  string
	Msg  string
}

func (e *KeyError) Error() string {
	where := "config"
	if e.Line > 0 {
		where = fmt.Sprintf("config line %d", e.Line)
	}
	if e.Key == "" {
		return where + ": " + e.Msg
	}
	return where + ": " + e.Key + ": " + e.Msg
}

// keyInfo is where a key was set and its value's text (for messages).
type keyInfo struct {
	line int
	raw  string
}

// checker walks the document and then checks values, keeping the first
// error: the rules read as a list, with no error plumbing between them.
type checker struct {
	keys map[string]keyInfo // every key set to a non-null value, by path
	err  error
}

// set reports whether the file gives key a value (null counts as unset).
func (k *checker) set(key string) bool { _, ok := k.keys[key]; return ok }

// raw is the value's text as written.
func (k *checker) raw(key string) string { return k.keys[key].raw }

// line is key's line, else that of the nearest enclosing key that is set.
func (k *checker) line(key string) int {
	for key != "" {
		if ki, ok := k.keys[key]; ok {
			return ki.line
		}
		key = key[:max(strings.LastIndexAny(key, ".["), 0)]
	}
	return 0
}

func (k *checker) failf(key, format string, args ...any) {
	if k.err == nil {
		k.err = &KeyError{Line: k.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
	}
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	nodeType     = reflect.TypeFor[yaml.Node]()
)

// walk checks n against the Go type t the way yaml.v3 decodes it, and
// records the line of every key under path. It reports, with the real
// line: unknown and duplicate keys, a list or block where a value belongs
// (and the reverse), and values of the wrong type, in words rather than Go
// type names.
func (k *checker) walk(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	fail := func(format string, args ...any) error {
		return &KeyError{Line: n.Line, Key: path, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case t == nodeType: // a destination's config block: checked with its type
		return nil
	case t.Kind() == reflect.Pointer:
		return k.walk(n, t.Elem(), path)
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return fail("want a block of keys, got %s", describeNode(n))
		}
		return k.walkMapping(n, path, func(key string) (reflect.Type, bool) {
			f, ok := fieldByKey(t, key)
			return f.Type, ok
		}, yamlKeys(t))
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return fail("want a block of keys, got %s", describeNode(n))
		}
		return k.walkMapping(n, path, func(string) (reflect.Type, bool) { return t.Elem(), true }, "")
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return fail("want a list, got %s", describeNode(n))
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			k.keys[p] = keyInfo{line: item.Line, raw: item.Value}
			if err := k.walk(item, t.Elem(), p); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return fail("want %s, got %s", describeType(t), describeNode(n))
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		return fail("want %s, got %q", describeType(t), n.Value)
	}
	return nil
}

// walkMapping walks a block's keys; field gives each key's type (false:
// unknown key), known lists the keys for the message.
func (k *checker) walkMapping(n *yaml.Node, path string, field func(string) (reflect.Type, bool), known string) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Tag == "!!merge" {
			return &KeyError{Line: kn.Line, Key: path, Msg: "YAML merge keys (<<) are not supported; write the keys out"}
		}
		p := kn.Value
		if path != "" {
			p = path + "." + kn.Value
		}
		if first, dup := seen[kn.Value]; dup {
			return &KeyError{Line: kn.Line, Key: p, Msg: fmt.Sprintf("set twice (first on line %d)", first)}
		}
		seen[kn.Value] = kn.Line
		t, ok := field(kn.Value)
		if !ok {
			return &KeyError{Line: kn.Line, Key: p, Msg: "unknown key (known: " + known + ")"}
		}
		if !(vn.Kind == yaml.ScalarNode && vn.Tag == "!!null") {
			k.keys[p] = keyInfo{line: kn.Line, raw: vn.Value}
		}
		if err := k.walk(vn, t, p); err != nil {
			return err
		}
	}
	return nil
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func yamlKeys(t reflect.Type) string {
	var keys []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	return strings.Join(keys, ", ")
}

func describeType(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 30s, 5m or 1h"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	}
	return "a single value"
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a block of keys"
	case yaml.SequenceNode:
		return "a list"
	}
	return strconv.Quote(n.Value)
}

// complete fills every default and checks every value, in file order.
func (c *Config) complete(k *checker) error {
	c.completeTop(k)
	c.completeSources(k)
	names := map[string]int{}
	claims := claims{}
	for i := range c.Destinations {
		c.completeDestination(k, i, names, claims)
	}
	c.completeIngest(k)
	c.completeEngine(k)
	count(k, &c.Router.WindowBudgetBytes, "router.window_budget_bytes", 256<<20)
	count(k, &c.Router.WindowReserveBytes, "router.window_reserve_bytes", 256<<10)
	return k.err
}

func (c *Config) completeTop(k *checker) {
	text(k, &c.Listen, "listen", "127.0.0.1:8080")
	text(k, &c.AdminListen, "admin_listen", "127.0.0.1:8081")
	text(k, &c.DataDir, "data_dir", "./data")
	text(k, &c.LogLevel, "log_level", "info")
	text(k, &c.LogFormat, "log_format", "text")
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		k.failf("log_level", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		k.failf("log_format", "want text or json, got %q", c.LogFormat)
	}
	lhost, lport := hostPort(k, "listen", c.Listen)
	ahost, aport := hostPort(k, "admin_listen", c.AdminListen)
	if k.err == nil && aport != 0 && aport == lport && sameHost(lhost, ahost) {
		k.failf("admin_listen", "must differ from listen (both %s)", c.Listen)
	}
	if strings.ContainsFunc(c.AdminToken, unicode.IsSpace) {
		k.failf("admin_token", `must not contain spaces (clients send "Authorization: Bearer <token>")`)
	}
	if k.err == nil && c.AdminToken == "" && !isLoopback(ahost) {
		k.failf("admin_listen", "%s is not a loopback address: set admin_token to serve the admin API there", c.AdminListen)
	}
}

func (c *Config) completeSources(k *checker) {
	if len(c.Sources) == 0 {
		k.failf("sources", "at least one source is required")
		return
	}
	names, keys := map[string]int{}, map[string]int{}
	for i := range c.Sources {
		s, p := &c.Sources[i], fmt.Sprintf("sources[%d]", i)
		s.line = k.line(p)
		switch {
		case strings.TrimSpace(s.Name) == "":
			k.failf(p+".name", "a source needs a name")
		case strings.TrimSpace(s.WriteKey) == "":
			k.failf(p+".write_key", "a source needs a write key")
		case names[s.Name] != 0:
			k.failf(p+".name", "%q is already the name of the source on line %d", s.Name, names[s.Name])
		case keys[s.WriteKey] != 0:
			k.failf(p+".write_key", "already the write key of the source on line %d", keys[s.WriteKey])
		}
		names[s.Name], keys[s.WriteKey] = s.line, s.line
	}
}

func (c *Config) completeDestination(k *checker, i int, names map[string]int, claims claims) {
	d, p := &c.Destinations[i], fmt.Sprintf("destinations[%d]", i)
	d.line = k.line(p)
	switch {
	case strings.TrimSpace(d.Name) == "":
		k.failf(p+".name", "a destination needs a name")
	case names[d.Name] != 0:
		k.failf(p+".name", "%q is already the name of the destination on line %d", d.Name, names[d.Name])
	case destTypes[d.Type].complete == nil:
		k.failf(p+".type", "want one of %s, got %q", strings.Join(destTypeNames(), ", "), d.Type)
	}
	names[d.Name] = d.line
	for j, s := range d.Sources {
		if !slices.ContainsFunc(c.Sources, func(src Source) bool { return src.Name == s }) {
			k.failf(fmt.Sprintf("%s.sources[%d]", p, j), "no source is named %q", s)
		}
	}
	for j, e := range d.Events {
		if !slices.Contains(validEventTypes, e) {
			k.failf(fmt.Sprintf("%s.events[%d]", p, j), "unknown event type %q (known: %s)", e, strings.Join(validEventTypes, ", "))
		}
	}
	if d.Ordering == nil {
		d.Ordering = new(bool)
		*d.Ordering = true
	}
	dt := destTypes[d.Type]
	count(k, &d.BatchSize, p+".batch_size", max(dt.batch, 1))
	if d.BatchSize > 10_000 {
		k.failf(p+".batch_size", "must be at most 10000 (got %s)", k.raw(p+".batch_size"))
	}
	count(k, &d.Concurrency, p+".concurrency", 64)
	if r := d.RateLimit; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		k.failf(p+".rate_limit", "want events per second, 0 for no limit (got %s)", k.raw(p+".rate_limit"))
	}
	duration(k, &d.Timeout, p+".timeout", 30*time.Second)
	count(k, &d.WindowEvents, p+".window_events", max(10_000, d.BatchSize))
	if k.err == nil && (d.WindowEvents < d.BatchSize || d.WindowEvents > 1_000_000) {
		k.failf(p+".window_events", "must be from batch_size (%d) to 1000000 (got %s)", d.BatchSize, k.raw(p+".window_events"))
	}
	count(k, &d.WindowBytes, p+".window_bytes", 32<<20)
	if k.err == nil && d.WindowBytes > 1<<30 {
		k.failf(p+".window_bytes", "must be at most 1073741824 (got %s)", k.raw(p+".window_bytes"))
	}
	d.Retry.complete(k, p+".retry")
	if dt.complete != nil {
		d.typed = dt.complete(k, &d.Config, p+".config", claims)
	}
}

func (r *RetryConfig) complete(k *checker, p string) {
	count(k, &r.MinAttempts, p+".min_attempts", 3)
	duration(k, &r.MaxAge, p+".max_age", 72*time.Hour)
	duration(k, &r.BackoffInitial, p+".backoff_initial", time.Second)
	duration(k, &r.BackoffMax, p+".backoff_max", 5*time.Minute)
	if k.err == nil && r.BackoffMax < r.BackoffInitial {
		key := p + ".backoff_max"
		if !k.set(key) {
			key = p + ".backoff_initial"
		}
		k.failf(key, "backoff_max (%v) must be at least backoff_initial (%v)", r.BackoffMax, r.BackoffInitial)
	}
	if !k.set(p + ".failure_ratio") {
		r.FailureRatio = 0.5
	} else if !(r.FailureRatio > 0 && r.FailureRatio <= 1) { // NaN fails too
		k.failf(p+".failure_ratio", "must be above 0 and at most 1 (got %s)", k.raw(p+".failure_ratio"))
	}
	count(k, &r.FailureMin, p+".failure_min", 5)
	if r.FailureMin > healthWindow {
		k.failf(p+".failure_min", "must be at most %d, the recent attempts the ratio looks at (got %d)", healthWindow, r.FailureMin)
	}
	if r.ThrottleStatuses == nil {
		r.ThrottleStatuses = []int{429}
	}
	// Throttle first: its default is then named when an explicit list
	// collides with it.
	listedIn := map[int]string{}
	for _, l := range []struct {
		name string
		list []int
	}{{"throttle_statuses", r.ThrottleStatuses}, {"abort_statuses", r.AbortStatuses}, {"retry_statuses", r.RetryStatuses}} {
		for j, s := range l.list {
			key := fmt.Sprintf("%s.%s[%d]", p, l.name, j)
			if !k.set(key) {
				key = p + "." + l.name
			}
			switch other := listedIn[s]; {
			case s < 100 || s > 599:
				k.failf(key, "an HTTP status is from 100 to 599 (got %d)", s)
			case s/100 == 2:
				k.failf(key, "%d is a success, it cannot be listed", s)
			case other != "" && other != l.name:
				if !k.set(p + "." + other) {
					other += " (default [429])"
				}
				k.failf(key, "%d is also listed in %s", s, other)
			}
			listedIn[s] = l.name
		}
	}
}

// decodeBlock checks a destination's config block against v's type, then
// decodes it into v.
func decodeBlock(k *checker, n *yaml.Node, p string, v any) bool {
	if k.err != nil {
		return false
	}
	if n.Kind == 0 {
		return true
	}
	if err := k.walk(n, reflect.TypeOf(v).Elem(), p); err != nil {
		k.err = err
		return false
	}
	if err := n.Decode(v); err != nil {
		k.failf(p, "BUG: cannot decode a checked block: %v", err)
		return false
	}
	return true
}

func (c *Config) completeIngest(k *checker) {
	in := &c.Ingest
	count(k, &in.EventBytesMax, "ingest.event_bytes_max", 32<<10)
	count(k, &in.RequestBytesMax, "ingest.request_bytes_max", 4<<20)
	count(k, &in.InFlightMax, "ingest.in_flight_max", 1024)
	count(k, &in.ConnectionsMax, "ingest.connections_max", 10_000)
	duration(k, &in.ReadTimeout, "ingest.read_timeout", 10*time.Second)
	duration(k, &in.WriteTimeout, "ingest.write_timeout", 10*time.Second)
	duration(k, &in.RetryAfter, "ingest.retry_after", time.Second)
	if k.err == nil && in.EventBytesMax > in.RequestBytesMax {
		k.failf("ingest.event_bytes_max", "must not exceed request_bytes_max (%d), got %d", in.RequestBytesMax, in.EventBytesMax)
	}
	count(k, &in.BodyBytesBudget, "ingest.body_bytes_budget", 64*int64(in.RequestBytesMax))
	if k.err == nil && in.BodyBytesBudget < int64(in.RequestBytesMax) {
		k.failf("ingest.body_bytes_budget", "must be at least request_bytes_max (%d), got %d", in.RequestBytesMax, in.BodyBytesBudget)
	}
}

func (c *Config) completeEngine(k *checker) {
	e := &c.Engine
	count(k, &e.SegmentBytesMax, "engine.segment_bytes_max", 64<<20)
	if k.set("engine.segment_bytes_max") && (e.SegmentBytesMax < segmentBytesMin || e.SegmentBytesMax > segmentBytesMax) {
		k.failf("engine.segment_bytes_max", "must be from %d to %d (got %s)", segmentBytesMin, segmentBytesMax, k.raw("engine.segment_bytes_max"))
	}
	limit(k, &e.DiskBudgetBytes, "engine.disk_budget_bytes")
	limit(k, &e.BacklogEventsMax, "engine.backlog_events_max")
	durationOrOff(k, &e.DedupWindow, "engine.dedup_window", 24*time.Hour, "deduplication off")
	count(k, &e.DedupFilterBytes, "engine.dedup_filter_bytes", 64<<20)
	if e.DedupFilterBytes < filterBytesMin {
		k.failf("engine.dedup_filter_bytes", "must be at least %d (got %d)", filterBytesMin, e.DedupFilterBytes)
	}
	durationOrOff(k, &e.ReclaimInterval, "engine.reclaim_interval", time.Second, "never")
	sizeOrOff(k, &e.ReserveBytes, "engine.reserve_bytes", 64<<20, "no reserve file")
	sizeOrOff(k, &e.DiskFreeBytesMin, "engine.disk_free_bytes_min", 64<<20, "no free-space floor")
	duration(k, &e.DiskCheckInterval, "engine.disk_check_interval", time.Second)
	// An event must fit in one engine record with the fields the server
	// adds, so an event_bytes_max at the record limit is already too big.
	if rec := min(recordBytesLimit, e.SegmentBytesMax); k.err == nil && int64(c.Ingest.EventBytesMax) >= rec {
		k.failf("ingest.event_bytes_max", "must be below the engine's record limit of %d bytes, got %d", rec, c.Ingest.EventBytesMax)
	}
}

// text defaults an unset string; set, it must not be blank.
func text(k *checker, v *string, key, def string) {
	switch {
	case !k.set(key):
		*v = def
	case strings.TrimSpace(*v) == "":
		k.failf(key, "must not be empty (default %s)", def)
	}
}

// count defaults an unset size or count; set, it must be positive.
func count[T int | int64](k *checker, v *T, key string, def T) {
	if !k.set(key) {
		*v = def
	} else if *v <= 0 {
		k.failf(key, "must be positive (got %s)", k.raw(key))
	}
}

// limit checks a size or count where 0 (the default) means no limit.
func limit[T int | int64](k *checker, v *T, key string) {
	if *v < 0 {
		k.failf(key, "must not be negative; 0 means no limit (got %s)", k.raw(key))
	}
}

// duration defaults an unset duration; set, it must be positive.
func duration(k *checker, v *time.Duration, key string, def time.Duration) {
	switch {
	case !k.set(key):
		*v = def
	case *v < 0:
		k.failf(key, "must not be negative (got %s)", k.raw(key))
	case *v == 0:
		k.failf(key, "must be positive (got %s; default %v)", k.raw(key), def)
	}
}

// durationOrOff is duration where a negative value means off.
func durationOrOff(k *checker, v *time.Duration, key string, def time.Duration, off string) {
	switch {
	case !k.set(key):
		*v = def
	case *v == 0:
		k.failf(key, "must not be zero: positive, or negative for %s (got %s)", off, k.raw(key))
	}
}

// sizeOrOff defaults an unset size; a negative one means off, zero is
// refused.
func sizeOrOff(k *checker, v *int64, key string, def int64, off string) {
	switch {
	case !k.set(key):
		*v = def
	case *v == 0:
		k.failf(key, "must not be zero: positive, or negative for %s (got %s)", off, k.raw(key))
	}
}

// hostPort splits an address to listen on; the port is numeric.
func hostPort(k *checker, key, addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		k.failf(key, "want host:port such as 127.0.0.1:8080, got %q", addr)
		return "", 0
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		k.failf(key, "want a port number from 0 to 65535, got %q", port)
	}
	return host, int(n)
}

// sameHost reports whether listening on a and b (same port) would clash:
// the same address, or either one is every address.
func sameHost(a, b string) bool {
	norm := func(h string) net.IP {
		if h == "localhost" {
			h = "127.0.0.1"
		}
		return net.ParseIP(h)
	}
	ia, ib := norm(a), norm(b)
	if a == "" || b == "" || (ia != nil && ia.IsUnspecified()) || (ib != nil && ib.IsUnspecified()) {
		return true
	}
	if ia == nil || ib == nil {
		return a == b
	}
	return ia.Equal(ib)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
