package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/natsdest"
)

// NATSConfig is a nats (JetStream) destination's config block.
type NATSConfig struct {
	// URL is one server URL, several separated by commas, or a list.
	// Required. nats://, tls://, ws:// or wss://; host:port means nats://.
	URL yaml.Node `yaml:"url"`
	// Subject is the subject template (natsdest.Template). Required.
	Subject string `yaml:"subject"`
	// Stream is the stream the subjects must land in (optional): checked
	// before the first publish, paused when missing.
	Stream       string            `yaml:"stream"`
	CreateStream *NATSStreamConfig `yaml:"create_stream"`
	User         string            `yaml:"user"`
	Password     string            `yaml:"password"`
	Token        string            `yaml:"token"`
	CredsFile    string            `yaml:"creds_file"`
	NkeySeedFile string            `yaml:"nkey_seed_file"`
	TLS          NATSTLSConfig     `yaml:"tls"`
	// MaxPending bounds publishes awaiting an ack. Default 4096.
	MaxPending     int           `yaml:"max_pending"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"` // default 5s
	urls           []string
}

// NATSStreamConfig is create_stream: the stream made when it is missing.
type NATSStreamConfig struct {
	Name            string        `yaml:"name"`             // default: stream; must equal it when both are set
	Subjects        []string      `yaml:"subjects"`         // default: the template with '*' for each placeholder
	Replicas        int           `yaml:"replicas"`         // 1 to 5; default 1
	DuplicateWindow time.Duration `yaml:"duplicate_window"` // default 2m
	MaxMsgSize      int           `yaml:"max_msg_size"`     // bytes; 0 (default): the server's max_payload
	Storage         string        `yaml:"storage"`          // file (default) or memory
}

// NATSTLSConfig is the client's TLS.
type NATSTLSConfig struct {
	Enabled            bool   `yaml:"enabled"` // TLS without a CA or client certificate
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// completeNATS checks and decodes a nats destination's config block.
func completeNATS(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	var c NATSConfig
	if !decodeBlock(k, n, p, &c) {
		return nil
	}
	c.urls = natsURLs(k, &c.URL, p+".url")
	if c.Subject == "" {
		k.failf(p+".subject", "a nats destination needs a subject (a template such as events.{source}.{type})")
	} else if _, err := natsdest.ParseTemplate(c.Subject); err != nil {
		k.failf(p+".subject", "%v", err)
	}
	if cs := c.CreateStream; cs != nil {
		completeNATSStream(k, cs, &c, p+".create_stream")
	}
	if c.Stream != "" && !validStreamName(c.Stream) {
		k.failf(p+".stream", "want a stream name without spaces, '.', '*', '>', '/' or '\\', got %q", c.Stream)
	}
	switch {
	case c.User != "" && c.Token != "":
		k.failf(p+".token", "user/password and token are exclusive")
	case c.Password != "" && c.User == "":
		k.failf(p+".password", "a password needs a user")
	}
	readable(k, c.CredsFile, p+".creds_file")
	readable(k, c.NkeySeedFile, p+".nkey_seed_file")
	readable(k, c.TLS.CAFile, p+".tls.ca_file")
	readable(k, c.TLS.CertFile, p+".tls.cert_file")
	readable(k, c.TLS.KeyFile, p+".tls.key_file")
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		k.failf(p+".tls", "cert_file and key_file go together")
	}
	count(k, &c.MaxPending, p+".max_pending", 4096)
	duration(k, &c.ConnectTimeout, p+".connect_timeout", 5*time.Second)
	return &c
}

// completeNATSStream checks create_stream; its name becomes the stream's.
func completeNATSStream(k *checker, cs *NATSStreamConfig, c *NATSConfig, p string) {
	switch {
	case cs.Name == "" && c.Stream == "":
		k.failf(p, "create_stream needs a stream name (stream, or create_stream.name)")
	case cs.Name != "" && c.Stream != "" && cs.Name != c.Stream:
		k.failf(p+".name", "%q differs from stream %q", cs.Name, c.Stream)
	case c.Stream == "":
		c.Stream = cs.Name
	}
	for i, s := range cs.Subjects {
		if !validFilter(s) {
			k.failf(fmt.Sprintf("%s.subjects[%d]", p, i), "not a subject filter: %q", s)
		}
	}
	if !k.set(p + ".replicas") {
		cs.Replicas = 1
	} else if cs.Replicas < 1 || cs.Replicas > 5 {
		k.failf(p+".replicas", "want 1 to 5 (got %d)", cs.Replicas)
	}
	duration(k, &cs.DuplicateWindow, p+".duplicate_window", 2*time.Minute)
	if cs.MaxMsgSize < 0 || cs.MaxMsgSize > 1<<30 {
		k.failf(p+".max_msg_size", "want 0 (the server's max_payload) to 1 GiB (got %d)", cs.MaxMsgSize)
	}
	switch cs.Storage {
	case "":
		cs.Storage = "file"
	case "file", "memory":
	default:
		k.failf(p+".storage", "want file or memory, got %q", cs.Storage)
	}
}

// natsURLs reads url: a string (commas allowed) or a list of strings.
func natsURLs(k *checker, n *yaml.Node, p string) []string {
	var raw []string
	switch n.Kind {
	case 0:
		k.failf(p, "a nats destination needs a url")
		return nil
	case yaml.ScalarNode:
		raw = strings.Split(n.Value, ",")
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				k.failf(p, "want a URL or a list of URLs")
				return nil
			}
			raw = append(raw, item.Value)
		}
	default:
		k.failf(p, "want a URL or a list of URLs")
		return nil
	}
	var out []string
	for _, s := range raw {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil || u.Hostname() == "" {
			k.failf(p, "want nats://host:port (or tls://, ws://, wss://), got %q", s)
			return nil
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			k.failf(p, "want nats://host:port (or tls://, ws://, wss://), got %q", s)
			return nil
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		k.failf(p, "a nats destination needs a url")
	}
	return out
}

// readable fails key when file is set and cannot be read.
func readable(k *checker, file, key string) {
	if file == "" {
		return
	}
	f, err := os.Open(file)
	if err != nil {
		k.failf(key, "cannot read %q: %v", file, err)
		return
	}
	f.Close()
}

func validStreamName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}

// validFilter reports whether s is a subject filter: non-empty tokens,
// '>' only last.
func validFilter(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" || t == ">" && i != len(toks)-1 {
			return false
		}
	}
	return true
}

func (c *NATSConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	cfg := natsdest.Config{URLs: c.urls, Subject: c.Subject, Stream: c.Stream,
		User: c.User, Password: c.Password, Token: c.Token, CredsFile: c.CredsFile, NkeySeedFile: c.NkeySeedFile,
		TLS: natsdest.TLSConfig{Enabled: c.TLS.Enabled, CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile,
			KeyFile: c.TLS.KeyFile, ServerName: c.TLS.ServerName, InsecureSkipVerify: c.TLS.InsecureSkipVerify},
		MaxPending: c.MaxPending, Timeout: d.Timeout, ConnectTimeout: c.ConnectTimeout,
		Name: "sluice/" + d.Name, Logger: log.With("component", "nats", "destination", d.Name)}
	if cs := c.CreateStream; cs != nil {
		cfg.CreateStream = &natsdest.StreamConfig{Subjects: cs.Subjects, Replicas: cs.Replicas,
			DuplicateWindow: cs.DuplicateWindow, MaxMsgSize: int32(cs.MaxMsgSize), Memory: cs.Storage == "memory"}
	}
	return natsdest.New(cfg)
}
