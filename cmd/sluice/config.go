package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the YAML file `sluice serve --config` reads. Every field's
// default is applied in applyDefaults; every check is in validate.
type Config struct {
	// Listen is the ingest HTTP address. Default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// DataDir holds the log and index. Default ./data.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json. Default text.
	LogFormat string `yaml:"log_format"`
	// AdminListen is the admin API address. Default 127.0.0.1:8081.
	AdminListen string `yaml:"admin_listen"`
	// AdminToken is the admin API's bearer token; without one the admin
	// API refuses a non-loopback address.
	AdminToken   string        `yaml:"admin_token"`
	Sources      []Source      `yaml:"sources"`
	Destinations []Destination `yaml:"destinations"`
	Ingest       IngestConfig  `yaml:"ingest"`
	Engine       EngineConfig  `yaml:"engine"`
}

// Source is a write key and its name.
type Source struct {
	Name     string `yaml:"name"`
	WriteKey string `yaml:"write_key"`
	line     int
}

// UnmarshalYAML keeps the line for error messages.
func (s *Source) UnmarshalYAML(n *yaml.Node) error {
	type plain Source
	if err := decodeStrict(n, (*plain)(s)); err != nil {
		return err
	}
	s.line = n.Line
	return nil
}

// Destination is one delivery target.
type Destination struct {
	Name     string   `yaml:"name"`
	Type     string   `yaml:"type"`
	Sources  []string `yaml:"sources"`
	Events   []string `yaml:"events"`
	Ordering *bool    `yaml:"ordering"`
	// BatchSize: events per request (webhook: more than 1 sends a JSON
	// array). Default 1 for webhook, 100 for file.
	BatchSize int `yaml:"batch_size"`
	// Concurrency caps requests in flight. Default 64.
	Concurrency int `yaml:"concurrency"`
	// RateLimit caps events per second. Default none.
	RateLimit float64 `yaml:"rate_limit"`
	// Timeout bounds one request. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	Retry   RetryConfig   `yaml:"retry"`
	// Config holds the type's own settings (webhook: url, method, headers,
	// secret; file: path, max_bytes, max_age, compress).
	Config yaml.Node `yaml:"config"`
	line   int
}

// RetryConfig is a destination's retry block; zero means the router's
// default (see router.Policy).
type RetryConfig struct {
	MinAttempts      int           `yaml:"min_attempts"`
	MaxAge           time.Duration `yaml:"max_age"`
	BackoffInitial   time.Duration `yaml:"backoff_initial"`
	BackoffMax       time.Duration `yaml:"backoff_max"`
	AbortStatuses    []int         `yaml:"abort_statuses"`
	RetryStatuses    []int         `yaml:"retry_statuses"`
	ThrottleStatuses []int         `yaml:"throttle_statuses"`
	FailureRatio     float64       `yaml:"failure_ratio"`
	FailureMin       int           `yaml:"failure_min"`
}

// WebhookConfig is a webhook destination's config block.
type WebhookConfig struct {
	URL     string            `yaml:"url"`
	Method  string            `yaml:"method"`
	Headers map[string]string `yaml:"headers"`
	Secret  string            `yaml:"secret"`
	// PartialFailures: the endpoint may name the events of a batch it
	// refuses and take the rest (see webhook.Config.PartialFailures).
	PartialFailures bool `yaml:"partial_failures"`
}

// FileConfig is a file destination's config block.
type FileConfig struct {
	Path     string        `yaml:"path"`
	MaxBytes int64         `yaml:"max_bytes"`
	MaxAge   time.Duration `yaml:"max_age"`
	Compress bool          `yaml:"compress"`
}

// UnmarshalYAML keeps the line for error messages.
func (d *Destination) UnmarshalYAML(n *yaml.Node) error {
	type plain Destination
	if err := decodeStrict(n, (*plain)(d)); err != nil {
		return err
	}
	d.line = n.Line
	return nil
}

// IngestConfig tunes the gateway; zero means the ingest package's default.
type IngestConfig struct {
	EventBytesMax     int           `yaml:"event_bytes_max"`
	RequestBytesMax   int           `yaml:"request_bytes_max"`
	InFlightMax       int           `yaml:"in_flight_max"`
	ConnectionsMax    int           `yaml:"connections_max"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	WriteTimeout      time.Duration `yaml:"write_timeout"`
	RetryAfter        time.Duration `yaml:"retry_after"`
	TrustForwardedFor bool          `yaml:"trust_forwarded_for"`
}

// EngineConfig tunes the log; zero means the engine package's default.
type EngineConfig struct {
	SegmentBytesMax  int64         `yaml:"segment_bytes_max"`
	DiskBudgetBytes  int64         `yaml:"disk_budget_bytes"`
	BacklogEventsMax int64         `yaml:"backlog_events_max"`
	DedupWindow      time.Duration `yaml:"dedup_window"`
	DedupFilterBytes int           `yaml:"dedup_filter_bytes"`
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

var validEventTypes = map[string]bool{"track": true, "identify": true, "page": true, "screen": true, "group": true, "alias": true}

// loadConfig reads, checks and completes a config file.
func loadConfig(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config: %w", err)
	}
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func parseConfig(raw []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, errEmpty) || err.Error() == "EOF" {
			return nil, fmt.Errorf("empty config")
		}
		return nil, err
	}
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

var errEmpty = errors.New("empty")

// decodeStrict decodes a node rejecting unknown keys (yaml.v3 applies
// KnownFields only at the top-level decoder, not in custom unmarshalers).
func decodeStrict(n *yaml.Node, v any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return fmt.Errorf("line %d: %v", n.Line, te.Errors)
		}
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.DataDir == "" {
		c.DataDir = "./data"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.AdminListen == "" {
		c.AdminListen = "127.0.0.1:8081"
	}
	for i := range c.Destinations {
		d := &c.Destinations[i]
		if d.Ordering == nil {
			t := true
			d.Ordering = &t
		}
	}
}

func (c *Config) validate() error {
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log_format %q: want text or json", c.LogFormat)
	}
	if c.Engine.DiskCheckInterval < 0 {
		return fmt.Errorf("engine.disk_check_interval %v must not be negative", c.Engine.DiskCheckInterval)
	}
	if len(c.Sources) == 0 {
		return fmt.Errorf("sources: at least one source is required")
	}
	names, keys := map[string]int{}, map[string]int{}
	for _, s := range c.Sources {
		switch {
		case s.Name == "":
			return fmt.Errorf("line %d: source needs a name", s.line)
		case s.WriteKey == "":
			return fmt.Errorf("line %d: source %q needs a write_key", s.line, s.Name)
		case names[s.Name] != 0:
			return fmt.Errorf("line %d: source name %q already used on line %d", s.line, s.Name, names[s.Name])
		case keys[s.WriteKey] != 0:
			return fmt.Errorf("line %d: write_key of source %q already used on line %d", s.line, s.Name, keys[s.WriteKey])
		}
		names[s.Name], keys[s.WriteKey] = s.line, s.line
	}
	dests := map[string]int{}
	for _, d := range c.Destinations {
		if d.Name == "" {
			return fmt.Errorf("line %d: destination needs a name", d.line)
		}
		if dests[d.Name] != 0 {
			return fmt.Errorf("line %d: destination name %q already used on line %d", d.line, d.Name, dests[d.Name])
		}
		dests[d.Name] = d.line
		if err := d.checkType(); err != nil {
			return err
		}
		for _, s := range d.Sources {
			if names[s] == 0 {
				return fmt.Errorf("line %d: destination %q names unknown source %q", d.line, d.Name, s)
			}
		}
		for _, e := range d.Events {
			if !validEventTypes[e] {
				return fmt.Errorf("line %d: destination %q: unknown event type %q", d.line, d.Name, e)
			}
		}
	}
	return nil
}

// checkType decodes the type-specific config block strictly.
func (d *Destination) checkType() error {
	switch d.Type {
	case "webhook":
		var w WebhookConfig
		if err := d.decodeConfig(&w); err != nil {
			return err
		}
		if w.URL == "" {
			return fmt.Errorf("line %d: webhook destination %q needs config.url", d.line, d.Name)
		}
	case "file":
		var f FileConfig
		if err := d.decodeConfig(&f); err != nil {
			return err
		}
		if f.Path == "" {
			return fmt.Errorf("line %d: file destination %q needs config.path", d.line, d.Name)
		}
	case "":
		return fmt.Errorf("line %d: destination %q needs a type (webhook or file)", d.line, d.Name)
	default:
		return fmt.Errorf("line %d: destination %q has unknown type %q (known: webhook, file)", d.line, d.Name, d.Type)
	}
	return nil
}

func (d *Destination) decodeConfig(v any) error {
	if d.Config.Kind == 0 {
		return nil
	}
	if err := decodeStrict(&d.Config, v); err != nil {
		return fmt.Errorf("destination %q config: %w", d.Name, err)
	}
	return nil
}
