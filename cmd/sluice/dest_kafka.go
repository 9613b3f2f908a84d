package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/kafka"
)

// KafkaConfig is a kafka destination's config block (see router/kafka).
type KafkaConfig struct {
	Brokers []string `yaml:"brokers"` // host:port; required
	// Topic is a name or a template over {source}, {type} and {event};
	// required.
	Topic string `yaml:"topic"`
	// AutoCreateTopics lets the brokers create a missing topic (when they
	// allow it); default false: a missing topic is an error.
	AutoCreateTopics bool          `yaml:"auto_create_topics"`
	ClientID         string        `yaml:"client_id"`   // default sluice
	Compression      string        `yaml:"compression"` // zstd (default), lz4, snappy, gzip, none
	Linger           time.Duration `yaml:"linger"`      // default 1ms
	// RecordBytesMax is the largest record batch, and so record, the
	// client sends (default 1,000,012); keep it at or below the topics'
	// max.message.bytes so an oversized record is refused alone.
	RecordBytesMax int64 `yaml:"record_bytes_max"`
	// BufferBytesMax bounds the bytes the client buffers (default 64 MiB).
	BufferBytesMax int64 `yaml:"buffer_bytes_max"`
	// RecordRetries bounds the client's tries of a record on retriable
	// broker errors (default 10).
	RecordRetries int        `yaml:"record_retries"`
	SASL          *KafkaSASL `yaml:"sasl"`
	TLS           *KafkaTLS  `yaml:"tls"`
	tls           *tls.Config
}

// KafkaSASL is a kafka destination's SASL block.
type KafkaSASL struct {
	Mechanism string `yaml:"mechanism"` // plain, scram-sha-256, scram-sha-512
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// KafkaTLS is a kafka destination's TLS block: present means TLS is on.
type KafkaTLS struct {
	CAFile             string `yaml:"ca_file"`   // default: the system's roots
	CertFile           string `yaml:"cert_file"` // client certificate, with key_file
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"` // default: each broker's host
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// completeKafka checks and decodes a kafka destination's config block.
func completeKafka(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	var c KafkaConfig
	if !decodeBlock(k, n, p, &c) {
		return nil
	}
	if len(c.Brokers) == 0 {
		k.failf(p+".brokers", "a kafka destination needs brokers (a list of host:port)")
	}
	for i, b := range c.Brokers {
		if host, port, err := net.SplitHostPort(b); err != nil || host == "" || port == "" {
			k.failf(fmt.Sprintf("%s.brokers[%d]", p, i), "want host:port, got %q", b)
		}
	}
	if c.Topic == "" {
		k.failf(p+".topic", "a kafka destination needs a topic (a name, or a template such as events.{source}.{type})")
	} else if err := kafka.CheckTopic(c.Topic); err != nil {
		k.failf(p+".topic", "%v", err)
	}
	if c.ClientID == "" {
		c.ClientID = "sluice"
	}
	if c.Compression == "" {
		c.Compression = "zstd"
	} else if !slices.Contains(kafka.Compressions, c.Compression) {
		k.failf(p+".compression", "want one of %s, got %q", strings.Join(kafka.Compressions, ", "), c.Compression)
	}
	duration(k, &c.Linger, p+".linger", time.Millisecond)
	count(k, &c.RecordBytesMax, p+".record_bytes_max", 1_000_012)
	if c.RecordBytesMax < 512 || c.RecordBytesMax > 1<<30 {
		k.failf(p+".record_bytes_max", "want 512 to 1073741824 bytes, got %s", k.raw(p+".record_bytes_max"))
	}
	count(k, &c.BufferBytesMax, p+".buffer_bytes_max", 64<<20)
	if c.BufferBytesMax < c.RecordBytesMax {
		k.failf(p+".buffer_bytes_max", "must be at least record_bytes_max (%d)", c.RecordBytesMax)
	}
	count(k, &c.RecordRetries, p+".record_retries", 10)
	if s := c.SASL; s != nil {
		if !slices.Contains(kafka.SASLMechanisms, s.Mechanism) {
			k.failf(p+".sasl.mechanism", "want one of %s, got %q", strings.Join(kafka.SASLMechanisms, ", "), s.Mechanism)
		}
		if s.Username == "" {
			k.failf(p+".sasl.username", "SASL needs a username")
		}
		if s.Password == "" { // never echoed
			k.failf(p+".sasl.password", "SASL needs a password")
		}
	}
	if c.TLS != nil {
		c.tls = tlsConfig(k, c.TLS, p+".tls")
	}
	return &c
}

// tlsConfig loads the TLS block's files.
func tlsConfig(k *checker, t *KafkaTLS, p string) *tls.Config {
	cfg := &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			k.failf(p+".ca_file", "cannot read: %v", err)
			return nil
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			k.failf(p+".ca_file", "no PEM certificate in %s", t.CAFile)
			return nil
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		k.failf(p+".cert_file", "cert_file and key_file go together")
		return nil
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			k.failf(p+".cert_file", "cannot load the client certificate: %v", err)
			return nil
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

func (c *KafkaConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	cfg := kafka.Config{
		Brokers: c.Brokers, Topic: c.Topic, AutoCreateTopics: c.AutoCreateTopics, ClientID: c.ClientID, Compression: c.Compression,
		Linger: c.Linger, RecordBytesMax: int32(c.RecordBytesMax), BufferBytesMax: c.BufferBytesMax,
		RecordRetries: c.RecordRetries, Timeout: d.Timeout, TLS: c.tls,
		Logger: log.With("destination", d.Name),
	}
	if c.SASL != nil {
		cfg.SASL = &kafka.SASL{Mechanism: c.SASL.Mechanism, Username: c.SASL.Username, Password: c.SASL.Password}
	}
	return kafka.New(cfg)
}
