// Package rabbitmq is the RabbitMQ destination: each event is published,
// in order, to one exchange over AMQP 0-9-1 with publisher confirms, and
// counts as delivered only when the broker acknowledges it.
//
// A Send takes one confirm-mode channel of a pool, publishes the batch's
// messages on it back to back (pipelined, so a user's events reach the
// broker in log order), then waits for their confirms. Every message is
// published mandatory (unless configured otherwise): the broker returns
// one it cannot route to any queue, and that event alone is refused
// ("unroutable: ..."). A message is
//
//	properties: content_type application/json, delivery_mode 2 (persistent),
//	            message_id = the event's messageId, timestamp = receivedAt,
//	            app_id sluice
//	headers:    source, type, and the configured headers
//	body:       the event as stored
//
// What the broker says, and what the router is told (outcome.go):
//
//	ack                                   delivered
//	basic.return (mandatory, no route)    that event refused, 400
//	nack                                  that event retried (503), and
//	                                      its user's later events with it
//	channel closed, message too large     that event refused (413), the
//	  (PRECONDITION_FAILED)               batch's unconfirmed others retried
//	channel closed, topic access refused  that event refused (403), the
//	                                      unconfirmed others retried
//	channel closed, exchange missing      the destination pauses (or, with
//	  (NOT_FOUND) or access refused         declare_exchange, the exchange
//	                                        is declared again and the
//	                                        batch retried)
//	connection refused, lost, timed out   outage: the whole batch retried
//	connection.blocked (resource alarm)   throttled: 429 with RetryAfter
//	credentials or vhost refused          the destination pauses
//
// frame_max does not limit a message: the library splits a body into
// frames. The broker's max_message_size does, and closes the channel.
//
// A channel the broker closed is replaced, never reused; a connection lost
// is dialled again by the next Send (one dial at a time; Sends meanwhile
// wait for it or report the outage).
//
// RabbitMQ has no duplicate window: a message published but not confirmed
// when the channel or connection failed may have arrived, and is sent
// again. Delivery is at-least-once; consumers deduplicate on message_id.
package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a RabbitMQ destination.
type Config struct {
	// URL is the broker: amqp:// or amqps://user:password@host:port/vhost.
	// Required.
	URL string
	// Name names the connection in the broker's management (the
	// destination's name). Default "sluice".
	Name string
	// Exchange receives the messages; "" is the default exchange, which
	// routes to the queue named by the routing key.
	Exchange string
	// RoutingKey is a template over {source} {type} {event} {key} (see
	// ParseTemplate). Default "{source}.{type}".
	RoutingKey string
	// Transient publishes with delivery mode 1: a broker restart loses
	// messages not yet consumed. Default false: persistent.
	Transient bool
	// NotMandatory publishes without the mandatory flag: the broker drops a
	// message no queue is bound for, and it counts as delivered. Default
	// false: mandatory, such a message is refused.
	NotMandatory bool
	// Headers are added to every message, beside source and type.
	Headers map[string]string
	// Declare, if set, declares the exchange on every connection.
	Declare *Declare
	// Channels bounds the pool of confirm-mode channels; a Send holds one
	// while it publishes and waits. Default 16.
	Channels int
	// MessageBytesMax refuses a larger event (413) without publishing it.
	// Default 0: the broker's limit, learnt from its first refusal.
	MessageBytesMax int
	// Timeout bounds a Send whose context has no deadline, a connection's
	// handshake and each write on the socket. Default 30s.
	Timeout time.Duration
	// BlockedRetryAfter is the pause the router is asked for while the
	// broker blocks publishing (memory or disk alarm). Default 5s.
	BlockedRetryAfter time.Duration
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// Declare is how the exchange is declared.
type Declare struct {
	// Type is the exchange type: direct, fanout, topic, headers, or a
	// plugin's such as x-consistent-hash. Required.
	Type string
	// Durable: the exchange survives a broker restart.
	Durable bool
}

// RabbitMQ publishes events to an exchange. Safe for concurrent use.
type RabbitMQ struct {
	cfg Config
	key Template
	log *slog.Logger
	// sizeMax is the largest body the broker takes, as configured or
	// learnt from a refusal; 0 while unknown.
	sizeMax atomic.Int64

	// mu guards the connection. Lock order: mu, then nothing.
	mu struct {
		sync.Mutex
		link    *link
		dialing chan struct{} // closed when the dial in progress ends; nil when none
		dialErr error         // the last dial's error
		links   int           // connections made
		closed  bool
	}
}

// ErrClosed is a Send after Close.
var ErrClosed = errors.New("rabbitmq: destination closed")

// New checks the config and returns the destination. It does not connect:
// the first Send does, so a broker down at start is an outage like any
// other.
func New(cfg Config) (*RabbitMQ, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	key, err := ParseTemplate(cfg.RoutingKey)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: routing key %q: %w", cfg.RoutingKey, err)
	}
	r := &RabbitMQ{cfg: cfg, key: key, log: cfg.Logger}
	r.sizeMax.Store(int64(cfg.MessageBytesMax))
	return r, nil
}

// complete fills the defaults and checks the values.
func (c *Config) complete() error {
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return fmt.Errorf("rabbitmq: url: %w", redact(err, c.URL))
	}
	if c.Name == "" {
		c.Name = "sluice"
	}
	if c.RoutingKey == "" {
		c.RoutingKey = "{source}.{type}"
	}
	if c.Channels == 0 {
		c.Channels = 16
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.BlockedRetryAfter == 0 {
		c.BlockedRetryAfter = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.Channels < 1:
		return fmt.Errorf("rabbitmq: channels %d must be at least 1", c.Channels)
	case c.MessageBytesMax < 0:
		return fmt.Errorf("rabbitmq: message_bytes_max %d must not be negative", c.MessageBytesMax)
	case c.Timeout < 0 || c.BlockedRetryAfter < 0:
		return fmt.Errorf("rabbitmq: timeouts must be positive")
	case c.Declare != nil && c.Exchange == "":
		return fmt.Errorf("rabbitmq: the default exchange (\"\") cannot be declared")
	case c.Declare != nil && c.Declare.Type == "":
		return fmt.Errorf("rabbitmq: declaring exchange %q needs a type", c.Exchange)
	}
	for name := range c.Headers {
		if name == "" || name == "source" || name == "type" || len(name) > RoutingKeyBytesMax {
			return fmt.Errorf("rabbitmq: header name %q: want 1 to 255 bytes, not source or type", name)
		}
	}
	return nil
}

// redact keeps a URL's password out of an error.
func redact(err error, raw string) error {
	if msg := RedactURL(err.Error(), raw); msg != err.Error() {
		return errors.New(msg)
	}
	return err
}

// RedactURL replaces the password of the URL raw in msg by xxxxx. It
// does not parse raw, which may be malformed (that is often why msg
// quotes it).
func RedactURL(msg, raw string) string {
	i, j := strings.Index(raw, "://"), strings.LastIndex(raw, "@")
	if i < 0 || j < i+3 {
		return msg
	}
	c := strings.IndexByte(raw[i+3:j], ':')
	if c < 0 {
		return msg
	}
	if pw := raw[i+3+c+1 : j]; pw != "" {
		return strings.ReplaceAll(msg, pw, "xxxxx")
	}
	return msg
}

// Send publishes the events on one channel, in order, and waits for the
// broker's confirms (see the package doc for what each answer becomes).
func (r *RabbitMQ) Send(ctx context.Context, events []router.Event) router.Result {
	if len(events) == 0 {
		return router.Result{Status: 200}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.Timeout)
		defer cancel()
	}
	b := r.prepare(events)
	l, err := r.connect(ctx)
	if err != nil {
		return router.Result{Err: fmt.Errorf("rabbitmq: %w", err), Pause: errors.Is(err, errDialPause)}
	}
	if reason := l.blocked.Load(); reason != nil {
		return blockedResult(*reason, r.cfg.BlockedRetryAfter, false)
	}
	c, err := l.acquire(ctx)
	if err != nil {
		return router.Result{Err: fmt.Errorf("rabbitmq: %w", err)}
	}
	r.publish(ctx, l, c, b)
	quiet := b.settled() && b.closeErr == nil && b.pubErr == nil
	l.release(c, quiet)
	return r.result(l, b)
}

// Close closes the connection; Sends after it fail.
func (r *RabbitMQ) Close() error {
	r.mu.Lock()
	l := r.mu.link
	r.mu.closed, r.mu.link = true, nil
	r.mu.Unlock()
	if l != nil && !l.conn.IsClosed() {
		if err := l.conn.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			return fmt.Errorf("rabbitmq: cannot close the connection: %w", err)
		}
	}
	return nil
}

// connect returns the live connection, dialling one if there is none. One
// dial runs at a time: a Send that finds one in progress waits for it (or
// its context) and takes its outcome.
func (r *RabbitMQ) connect(ctx context.Context) (*link, error) {
	r.mu.Lock()
	if r.mu.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	if l := r.mu.link; l != nil && !l.lost() {
		r.mu.Unlock()
		return l, nil
	}
	if w := r.mu.dialing; w != nil {
		r.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return nil, fmt.Errorf("reconnecting: %w", ctx.Err())
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if l := r.mu.link; l != nil && !l.lost() {
			return l, nil
		}
		if r.mu.dialErr == nil {
			return nil, errors.New("connection lost while reconnecting")
		}
		return nil, r.mu.dialErr
	}
	w := make(chan struct{})
	r.mu.dialing = w
	r.mu.Unlock()

	l, err := r.dial(ctx)

	r.mu.Lock()
	defer r.mu.Unlock()
	defer close(w)
	r.mu.dialing, r.mu.dialErr = nil, err
	if err != nil {
		return nil, err
	}
	if r.mu.closed {
		l.conn.Close()
		return nil, ErrClosed
	}
	r.mu.links++
	l.serial = r.mu.links
	r.mu.link = l
	return l, nil
}
