package main

import (
	"log/slog"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"gopkg.in/yaml.v3"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/rabbitmq"
)

// RabbitMQConfig is a rabbitmq destination's config block (see
// rabbitmq.Config).
type RabbitMQConfig struct {
	URL string `yaml:"url"` // amqp:// or amqps://; required
	// Exchange receives the messages; required ("" names the default
	// exchange, which routes to the queue named by the routing key).
	Exchange *string `yaml:"exchange"`
	// RoutingKey is a template over {source} {type} {event} {key}.
	// Default "{source}.{type}".
	RoutingKey string            `yaml:"routing_key"`
	Persistent *bool             `yaml:"persistent"` // delivery mode 2; default true
	Mandatory  *bool             `yaml:"mandatory"`  // unroutable messages refused; default true
	Headers    map[string]string `yaml:"headers"`    // beside source and type
	// DeclareExchange declares the exchange on every connection.
	DeclareExchange *DeclareExchangeConfig `yaml:"declare_exchange"`
	Channels        int                    `yaml:"channels"`          // pool size; default 16
	MessageBytesMax int                    `yaml:"message_bytes_max"` // default: learnt from the broker
	// BlockedRetryAfter is the pause while the broker blocks publishing.
	// Default 5s.
	BlockedRetryAfter time.Duration `yaml:"blocked_retry_after"`
}

// DeclareExchangeConfig is how a rabbitmq destination declares its
// exchange.
type DeclareExchangeConfig struct {
	Type    string `yaml:"type"`    // direct, fanout, topic, headers, x-consistent-hash, ...; default topic
	Durable *bool  `yaml:"durable"` // default true
}

// completeRabbitMQ checks and decodes a rabbitmq destination's config
// block.
func completeRabbitMQ(k *checker, n *yaml.Node, p string, _ claims) destConfig {
	var c RabbitMQConfig
	if !decodeBlock(k, n, p, &c) {
		return nil
	}
	if c.URL == "" {
		k.failf(p+".url", "a rabbitmq destination needs a url (amqp://user:password@host:5672/vhost)")
	} else if _, err := amqp.ParseURI(c.URL); err != nil {
		k.failf(p+".url", "want an amqp:// or amqps:// URL: %v", rabbitmq.RedactURL(err.Error(), c.URL))
	}
	if c.Exchange == nil {
		k.failf(p+".exchange", `a rabbitmq destination needs an exchange ("" for the default exchange)`)
		return &c
	}
	text(k, &c.RoutingKey, p+".routing_key", "{source}.{type}")
	if _, err := rabbitmq.ParseTemplate(c.RoutingKey); err != nil {
		k.failf(p+".routing_key", "%v", err)
	}
	for name := range c.Headers {
		if name == "source" || name == "type" || name == "" || len(name) > rabbitmq.RoutingKeyBytesMax {
			k.failf(p+".headers."+name, "want a name of 1 to 255 bytes other than source and type (set on every message)")
		}
	}
	if d := c.DeclareExchange; d != nil {
		text(k, &d.Type, p+".declare_exchange.type", "topic")
		if *c.Exchange == "" {
			k.failf(p+".declare_exchange", `the default exchange ("") cannot be declared`)
		}
		if d.Durable == nil {
			d.Durable = new(true)
		}
	}
	count(k, &c.Channels, p+".channels", 16)
	limit(k, &c.MessageBytesMax, p+".message_bytes_max")
	duration(k, &c.BlockedRetryAfter, p+".blocked_retry_after", 5*time.Second)
	if c.Persistent == nil {
		c.Persistent = new(true)
	}
	if c.Mandatory == nil {
		c.Mandatory = new(true)
	}
	return &c
}

func (c *RabbitMQConfig) build(d *Destination, log *slog.Logger) (router.Destination, error) {
	cfg := rabbitmq.Config{URL: c.URL, Name: "sluice " + d.Name, Exchange: *c.Exchange, RoutingKey: c.RoutingKey,
		Transient: !*c.Persistent, NotMandatory: !*c.Mandatory, Headers: c.Headers, Channels: c.Channels,
		MessageBytesMax: c.MessageBytesMax, Timeout: d.Timeout, BlockedRetryAfter: c.BlockedRetryAfter,
		Logger: log.With("component", "rabbitmq", "destination", d.Name)}
	if x := c.DeclareExchange; x != nil {
		cfg.Declare = &rabbitmq.Declare{Type: x.Type, Durable: *x.Durable}
	}
	return rabbitmq.New(cfg)
}
