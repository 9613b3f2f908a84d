package main

import (
	"log/slog"
	"net/url"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/mqttdest"
)

// MQTTConfig is an MQTT destination's config block (see mqttdest.Config).
type MQTTConfig struct {
	// Broker is tcp://host:port, ssl://host:port or ws(s)://...; required.
	Broker string `yaml:"broker"`
	// Topic is a template over {source}, {type} and {event}; required.
	Topic  string `yaml:"topic"`
	QoS    int    `yaml:"qos"`    // 1 (default: delivered on PUBACK) or 2 (PUBCOMP)
	Retain bool   `yaml:"retain"` // default off
	// ClientID defaults to "sluice-<destination name>"; unique per broker
	// in the file.
	ClientID string `yaml:"client_id"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// CleanSession: default true; false keeps the broker's session
	// across reconnects.
	CleanSession *bool         `yaml:"clean_session"`
	MaxInflight  int           `yaml:"max_inflight"` // unacknowledged publishes; default 1024
	KeepAlive    time.Duration `yaml:"keep_alive"`   // default 10s
}

// completeMQTT checks and decodes an MQTT destination's config block.
func completeMQTT(k *checker, n *yaml.Node, p string, claims claims) destConfig {
	var m MQTTConfig
	if !decodeBlock(k, n, p, &m) {
		return nil
	}
	if m.Broker == "" {
		k.failf(p+".broker", "an mqtt destination needs a broker such as tcp://127.0.0.1:1883")
	} else if u, err := url.Parse(m.Broker); err != nil || u.Host == "" || !validMQTTScheme(u.Scheme) {
		k.failf(p+".broker", "want tcp://, ssl://, tls://, ws:// or wss:// with host:port, got %q", m.Broker)
	}
	if m.Topic == "" {
		k.failf(p+".topic", "an mqtt destination needs a topic (a template over {source}, {type}, {event})")
	} else if err := mqttdest.CheckTopic(m.Topic); err != nil {
		k.failf(p+".topic", "%v", err)
	}
	switch {
	case !k.set(p + ".qos"):
		m.QoS = 1
	case m.QoS != 1 && m.QoS != 2:
		k.failf(p+".qos", "want 1 (delivered on PUBACK) or 2 (on PUBCOMP), got %s; QoS 0 has no acknowledgement", k.raw(p+".qos"))
	}
	if m.CleanSession == nil {
		m.CleanSession = new(bool)
		*m.CleanSession = true
	}
	count(k, &m.MaxInflight, p+".max_inflight", 1024)
	if m.MaxInflight > 65535 {
		k.failf(p+".max_inflight", "must be at most 65535, MQTT's packet ids (got %s)", k.raw(p+".max_inflight"))
	}
	duration(k, &m.KeepAlive, p+".keep_alive", 10*time.Second)
	if k.set(p+".client_id") && m.ClientID == "" {
		k.failf(p+".client_id", "must not be empty (default sluice-<destination name>)")
	}
	if m.ClientID != "" && m.Broker != "" {
		claims.claim(k, p+".client_id", "mqtt client id "+m.ClientID+" at "+m.Broker)
	}
	return &m
}

func validMQTTScheme(s string) bool {
	switch s {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
		return true
	}
	return false
}

func (c *MQTTConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	id := c.ClientID
	if id == "" {
		id = "sluice-" + d.Name
	}
	return mqttdest.New(mqttdest.Config{Broker: c.Broker, Topic: c.Topic, QoS: byte(c.QoS), Retain: c.Retain,
		ClientID: id, Username: c.Username, Password: c.Password, PersistentSession: !*c.CleanSession,
		InFlightMax: c.MaxInflight, Timeout: d.Timeout, KeepAlive: c.KeepAlive,
		Logger: log.With("component", "mqtt", "destination", d.Name)})
}
