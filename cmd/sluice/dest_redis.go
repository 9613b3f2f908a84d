package main

import (
	"crypto/tls"
	"log/slog"
	"net"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/redisdest"
)

// RedisConfig is a Redis Streams destination's config block (see
// redisdest.Config).
type RedisConfig struct {
	Addr     string `yaml:"addr"`     // host:port; default 127.0.0.1:6379
	Username string `yaml:"username"` // ACL user; default the default user
	Password string `yaml:"password"`
	DB       int    `yaml:"db"`  // default 0
	TLS      bool   `yaml:"tls"` // connect with TLS (system roots)
	// Stream is a template over {source}, {type} and {event}; required.
	Stream string `yaml:"stream"`
	MaxLen int64  `yaml:"max_len"` // XADD MAXLEN ~ max_len; 0 (default): no trimming
	// Idempotent skips a messageId already added within dedup_window.
	Idempotent  bool          `yaml:"idempotent"`
	DedupWindow time.Duration `yaml:"dedup_window"` // default 10m
	DedupPrefix string        `yaml:"dedup_prefix"` // default "sluice:seen:"
	Conns       int           `yaml:"conns"`        // default: the destination's concurrency
}

// completeRedis checks and decodes a Redis destination's config block.
func completeRedis(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	var r RedisConfig
	if !decodeBlock(k, n, p, &r) {
		return nil
	}
	text(k, &r.Addr, p+".addr", "127.0.0.1:6379")
	if _, port, err := net.SplitHostPort(r.Addr); k.set(p+".addr") && (err != nil || port == "") {
		k.failf(p+".addr", "want host:port, got %q", r.Addr)
	}
	if r.DB < 0 {
		k.failf(p+".db", "must not be negative (got %s)", k.raw(p+".db"))
	}
	if r.Stream == "" {
		k.failf(p+".stream", "a redis destination needs a stream (a template over {source}, {type}, {event})")
	} else if err := redisdest.CheckTemplate(r.Stream); err != nil {
		k.failf(p+".stream", "%v", err)
	}
	limit(k, &r.MaxLen, p+".max_len")
	duration(k, &r.DedupWindow, p+".dedup_window", 10*time.Minute)
	if k.set(p+".dedup_window") && r.DedupWindow < time.Millisecond {
		k.failf(p+".dedup_window", "must be at least 1ms (got %s)", k.raw(p+".dedup_window"))
	}
	text(k, &r.DedupPrefix, p+".dedup_prefix", "sluice:seen:")
	if k.set(p+".conns") && r.Conns <= 0 {
		k.failf(p+".conns", "must be positive (got %s)", k.raw(p+".conns"))
	}
	return &r
}

func (c *RedisConfig) build(d *Destination, _ *slog.Logger) (router.Destination, error) {
	var tc *tls.Config
	if c.TLS {
		host, _, _ := net.SplitHostPort(c.Addr)
		tc = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	conns := c.Conns
	if conns == 0 {
		conns = d.Concurrency
	}
	return redisdest.New(redisdest.Config{Addr: c.Addr, Username: c.Username, Password: c.Password, DB: c.DB, TLS: tc,
		Stream: c.Stream, MaxLen: c.MaxLen, Idempotent: c.Idempotent, DedupWindow: c.DedupWindow,
		DedupPrefix: c.DedupPrefix, Conns: conns, Timeout: d.Timeout, ClientName: "sluice-" + d.Name})
}
