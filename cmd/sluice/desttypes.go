package main

import (
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/filedest"
	"github.com/sluice-cdi/sluice/router/webhook"
)

// destType is one destination type of the config file: the default batch
// size, and how its config block is checked and decoded. A new type is one
// entry of destTypes and a file holding its config block's type.
type destType struct {
	// batch is the default batch_size.
	batch int
	// complete checks and decodes the config block n at key path p (every
	// default filled, every value checked, errors through k). claims
	// keeps resources two destinations must not share (a file, a table).
	// It returns nil only when k holds an error.
	complete func(k *checker, n *yaml.Node, p string, claims claims) destConfig
}

// destConfig is a checked, complete config block.
type destConfig interface {
	// build starts the destination d of the config.
	build(d *Destination, log *slog.Logger) (router.Destination, error)
}

// destTypes are the destination types by their name in the config file.
var destTypes = map[string]destType{
	"webhook":  {batch: 1, complete: completeWebhook},
	"file":     {batch: 100, complete: completeFile},
	"postgres": {batch: 1000, complete: completePostgres}, // dest_warehouse.go
	"mysql":    {batch: 1000, complete: completeMySQL},
	"kafka":    {batch: 100, complete: completeKafka},
	"nats":     {batch: 100, complete: completeNATS},
	"rabbitmq": {batch: 100, complete: completeRabbitMQ},
	"redis":    {batch: 100, complete: completeRedis},
	"mqtt":     {batch: 100, complete: completeMQTT},
}

// destTypeNames lists the destination types, sorted.
func destTypeNames() []string {
	var names []string
	for name := range destTypes {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// claims maps a resource that only one destination may use (such as
// "file /abs/path") to the key path that claimed it.
type claims map[string]string

// claim records that key p uses resource, failing if another key did.
func (c claims) claim(k *checker, p, resource string) {
	if other, dup := c[resource]; dup {
		k.failf(p, "%s is also used by %s (line %d)", resource, destOf(other), k.line(other))
		return
	}
	c[resource] = p
}

// destOf is the destination part of a key path: "destinations[2]" of
// "destinations[2].config.path".
func destOf(p string) string {
	if i := strings.Index(p, "]"); i >= 0 {
		return p[:i+1]
	}
	return p
}

// WebhookConfig is a webhook destination's config block.
type WebhookConfig struct {
	URL     string            `yaml:"url"`    // absolute http(s) URL; required
	Method  string            `yaml:"method"` // default POST
	Headers map[string]string `yaml:"headers"`
	Secret  string            `yaml:"secret"`
	// PartialFailures: the endpoint may name the events of a batch it
	// refuses and take the rest (see webhook.Config.PartialFailures).
	PartialFailures bool `yaml:"partial_failures"`
}

// FileConfig is a file destination's config block.
type FileConfig struct {
	Path     string        `yaml:"path"`      // required; unique among file destinations
	MaxBytes int64         `yaml:"max_bytes"` // default 64 MiB
	MaxAge   time.Duration `yaml:"max_age"`   // default 1h
	Compress bool          `yaml:"compress"`  // zstd; adds .zst to the path
}

// completeWebhook checks and decodes a webhook's config block.
func completeWebhook(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	var w WebhookConfig
	if !decodeBlock(k, n, p, &w) {
		return nil
	}
	if w.URL == "" {
		k.failf(p+".url", "a webhook needs a url")
	} else if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		k.failf(p+".url", "want an absolute http:// or https:// URL, got %q", w.URL)
	}
	if w.Method == "" {
		w.Method = "POST"
	} else if strings.TrimFunc(w.Method, func(r rune) bool { return r >= 'A' && r <= 'Z' }) != "" {
		k.failf(p+".method", "want an HTTP method in capitals such as POST or PUT, got %q", w.Method)
	}
	for name, v := range w.Headers {
		if name == "" || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == ':' || r >= 0x7f }) {
			k.failf(p+".headers."+name, "not a valid header name")
		} else if strings.ContainsAny(v, "\r\n") { // the value may be a secret: never echoed
			k.failf(p+".headers."+name, "a header value must be one line")
		}
	}
	return &w
}

// completeFile checks and decodes a file destination's config block.
func completeFile(k *checker, n *yaml.Node, p string, claims claims) destConfig {
	var f FileConfig
	if !decodeBlock(k, n, p, &f) {
		return nil
	}
	count(k, &f.MaxBytes, p+".max_bytes", 64<<20)
	duration(k, &f.MaxAge, p+".max_age", time.Hour)
	if strings.TrimSpace(f.Path) == "" {
		k.failf(p+".path", "a file destination needs a path")
		return &f
	}
	eff := f.Path // as filedest.New opens it
	if f.Compress && !strings.HasSuffix(eff, ".zst") {
		eff += ".zst"
	}
	abs, err := filepath.Abs(eff)
	if err != nil {
		k.failf(p+".path", "cannot resolve %q: %v", f.Path, err)
		return &f
	}
	claims.claim(k, p+".path", "file "+abs)
	return &f
}

func (c *WebhookConfig) build(d *Destination, _ *slog.Logger) (router.Destination, error) {
	return webhook.New(webhook.Config{URL: c.URL, Method: c.Method, Headers: c.Headers, Secret: c.Secret,
		Batch: d.BatchSize > 1, Timeout: d.Timeout, PartialFailures: c.PartialFailures})
}

func (c *FileConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	return filedest.New(filedest.Config{Path: c.Path, MaxBytes: c.MaxBytes, MaxAge: c.MaxAge, Compress: c.Compress,
		Logger: log.With("component", "file", "destination", d.Name)})
}
