// Package mqttdest is the MQTT destination (MQTT 3.1.1, with paho): each
// event's JSON is published on a topic named by a template, at QoS 1 (an
// event is delivered when the broker's PUBACK arrives) or QoS 2 (PUBCOMP),
// over one connection per destination, kept up by a reconnect loop.
//
// Order: a Send publishes its events one after another on the one
// connection, and the broker keeps QoS 1 and 2 messages in order per topic
// (MQTT 3.1.1 section 4.6), so each user's events arrive in batch order; the
// router sends a user's next batch only after this one is acknowledged.
//
// What can and cannot be told. MQTT 3.1.1 has no per-message refusal: a
// broker that will not take a publish (an ACL that denies the topic, a
// message over its size limit) either acknowledges and drops it (Mosquitto
// with an ACL does this) or closes the connection (Mosquitto over
// message_size_limit/max_packet_size). Sluice cannot see the first at all:
// the event counts as delivered. The second looks like a lost connection:
// the batch is retried as an outage, and the router bisects and, when the
// broker keeps closing on one event while taking others, charges and
// aborts it. What Sluice can tell: the connection refused (outage, not
// ambiguous); the connection lost or a timeout after a publish was written
// (outage, ambiguous: the broker may have it; sent again); the broker
// refusing the credentials or client id in its CONNACK (the destination
// pauses until an operator resumes it).
package mqttdest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures an MQTT destination.
type Config struct {
	// Broker is the broker's URL: tcp://host:port, ssl://host:port (also
	// tls://, mqtts://), ws:// or wss://. Required.
	Broker string
	// Topic names each event's topic: a template over {source}, {type}
	// and {event} (see topicTemplate). Required.
	Topic string
	// QoS is 1 or 2. Default 1.
	QoS byte
	// Retain sets the retain flag on every publish. Default off.
	Retain bool
	// ClientID identifies the connection to the broker; a broker drops
	// the older of two connections with one id. Required (the config
	// file derives it from the destination's name).
	ClientID string
	// Username and Password authenticate, if set.
	Username, Password string
	// PersistentSession connects with CleanSession=0: the broker keeps the
	// session (and its unacknowledged QoS 2 state) across reconnects. The
	// default is a clean session.
	PersistentSession bool
	// InFlightMax bounds the publishes not yet acknowledged, over all
	// Sends. Default 1024.
	InFlightMax int
	// Timeout bounds a Send when the caller's context has no deadline, and
	// each connection attempt. Default 30s.
	Timeout time.Duration
	// KeepAlive is the MQTT keep-alive: a connection silent for about
	// this long is deemed lost. Default 10s.
	KeepAlive time.Duration
	// TLS is used for ssl:// and wss:// brokers. Default: system roots.
	TLS *tls.Config
	// Logger logs connection losses. Default slog.Default().
	Logger *slog.Logger
}

// MQTT publishes events to an MQTT broker. Safe for concurrent use.
type MQTT struct {
	cfg   Config
	topic topicTemplate
	conn  *conn
	slots chan struct{} // InFlightMax tokens: one per unacknowledged publish
	bufs  sync.Pool     // of *[]byte, for topics
}

// New checks the config, starts connecting and returns the destination
// once the first attempt is over (connected or not: a broker down at start
// is an outage like any other, and the loop keeps trying).
func New(cfg Config) (*MQTT, error) {
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("mqtt: broker %q must be a URL such as tcp://127.0.0.1:1883", cfg.Broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return nil, fmt.Errorf("mqtt: broker %q: scheme must be tcp, ssl, tls, mqtts, ws or wss", cfg.Broker)
	}
	t, err := parseTopic(cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("mqtt: topic: %w", err)
	}
	if cfg.QoS == 0 {
		cfg.QoS = 1
	}
	if cfg.QoS > 2 {
		return nil, fmt.Errorf("mqtt: qos %d: want 1 or 2", cfg.QoS)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("mqtt: a client id is required")
	}
	if cfg.InFlightMax == 0 {
		cfg.InFlightMax = 1024
	}
	if cfg.InFlightMax < 1 || cfg.InFlightMax > 65535 {
		return nil, fmt.Errorf("mqtt: in-flight bound %d out of [1, 65535] (MQTT has 65535 packet ids)", cfg.InFlightMax)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(!cfg.PersistentSession).
		SetProtocolVersion(4).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(min(cfg.KeepAlive, 10*time.Second)).
		SetConnectTimeout(min(cfg.Timeout, 10*time.Second)).
		// How long a Publish may wait to hand its packet to paho's writer:
		// that is quick on a live connection, and a Publish stuck on a
		// dead one must not hold up the reconnect (see conn.connecting).
		SetWriteTimeout(min(cfg.Timeout, time.Second)).
		SetOrderMatters(false) // we subscribe to nothing
	if cfg.TLS != nil {
		opts.SetTLSConfig(cfg.TLS)
	}
	m := &MQTT{cfg: cfg, topic: t, slots: make(chan struct{}, cfg.InFlightMax),
		conn: newConn(opts, cfg.Logger.With("broker", u.Redacted()))}
	first := make(chan struct{}, 1)
	go m.conn.run(first)
	<-first
	return m, nil
}

// Send publishes the events in order and waits for each acknowledgement.
func (m *MQTT) Send(ctx context.Context, events []router.Event) router.Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
		defer cancel()
	}
	g := m.conn.current()
	if !g.up {
		return router.Result{Err: fmt.Errorf("mqtt: %w", g.err), Pause: g.auth}
	}
	errs, published := m.publish(ctx, g, events)
	return result(events, errs, published)
}

// publish publishes the events on g's connection, in order, and waits for
// their acknowledgements: errs says which failed, published whether any
// was handed to the connection.
func (m *MQTT) publish(ctx context.Context, g *generation, events []router.Event) (errs []error, published bool) {
	bp, _ := m.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer m.bufs.Put(bp)
	toks := make([]mqtt.Token, len(events))
	errs = make([]error, len(events))
	// Each publish takes a slot, given back once its acknowledgement came
	// or was given up on. When none is free, this Send waits for its own
	// oldest publish rather than for others' slots: Sends that each held
	// slots while waiting for more could otherwise wait for each other
	// until their deadlines.
	waited := 0 // toks[:waited] are settled and their slots given back
	settle := func() {
		errs[waited] = wait(ctx, toks[waited], g)
		<-m.slots
		waited++
	}
	defer func() {
		for ; waited < len(toks) && toks[waited] != nil; waited++ {
			<-m.slots
		}
	}()
	for i := range events {
		if err := m.slot(ctx, g, func() bool { return waited < i }, settle); err != nil {
			for j := i; j < len(events); j++ {
				errs[j] = err
			}
			break
		}
		*bp = m.topic.appendTo((*bp)[:0], &events[i])
		if toks[i] = m.publishOne(g, string(*bp), events[i].Payload); toks[i] == nil {
			<-m.slots
			for j := i; j < len(events); j++ {
				errs[j] = errors.New("connection lost")
			}
			break
		}
		published = true
	}
	for waited < len(toks) && toks[waited] != nil {
		settle()
	}
	return errs, published
}

// slot takes an in-flight slot; while none is free it settles the Send's
// oldest publish (settle) if it has one pending, else waits.
func (m *MQTT) slot(ctx context.Context, g *generation, pending func() bool, settle func()) error {
	for {
		select {
		case m.slots <- struct{}{}:
			return nil
		default:
		}
		if pending() {
			settle() // its slot is free now, unless another Send takes it first
			select {
			case <-ctx.Done(): // given up on: publish nothing more
				return fmt.Errorf("waiting for an in-flight slot: %w", ctx.Err())
			case <-g.ended:
				return errors.New("connection lost")
			default:
			}
			continue
		}
		select {
		case m.slots <- struct{}{}:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for an in-flight slot: %w", ctx.Err())
		case <-g.ended:
			return errors.New("connection lost")
		}
	}
}

// publishOne publishes one event on g's connection, or returns nil if g
// has ended. paho keeps the payload past Send (its outbound queue, and its
// store for a resend): it gets a copy.
func (m *MQTT) publishOne(g *generation, topic string, payload []byte) mqtt.Token {
	m.conn.connecting.RLock()
	defer m.conn.connecting.RUnlock()
	select {
	case <-g.ended:
		return nil
	default:
	}
	return m.conn.client.Publish(topic, m.cfg.QoS, m.cfg.Retain, bytes.Clone(payload))
}

// wait waits for a publish's acknowledgement. One that completes after its
// connection's generation ended is not trusted: paho completes the tokens
// of publishes it resends from its store when it connects again.
func wait(ctx context.Context, tok mqtt.Token, g *generation) error {
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("no acknowledgement: %w", ctx.Err())
	case <-g.ended:
		return errors.New("connection lost before the acknowledgement")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	select {
	case <-g.ended:
		return errors.New("connection lost about the acknowledgement")
	default:
		return nil
	}
}

// result is the Send's result: 200 when every event was acknowledged, an
// error (ambiguous once something was published) when none was, and
// otherwise 200 naming the failed ones in Rejected as retryable (503),
// with every later event of the same user, so that none counts as
// delivered ahead of an earlier one that will be sent again.
func result(events []router.Event, errs []error, published bool) router.Result {
	failed := 0
	var first error
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	switch {
	case failed == 0:
		return router.Result{Status: 200}
	case failed == len(events) || len(events) == 1:
		return router.Result{Err: fmt.Errorf("mqtt: %w", first), Ambiguous: published}
	}
	var rej []router.Rejection
	stopped := map[string]bool{}
	for i, err := range errs {
		key := string(events[i].Key)
		switch {
		case err != nil:
			rej = append(rej, router.Rejection{Index: i, Status: 503, Reason: []byte(err.Error())})
			stopped[key] = true
		case stopped[key]:
			rej = append(rej, router.Rejection{Index: i, Status: 503,
				Reason: []byte("sent again behind an earlier event of the same user")})
		}
	}
	return router.Result{Status: 200, Rejected: rej}
}

// Close disconnects.
func (m *MQTT) Close() error {
	m.conn.close()
	return nil
}
