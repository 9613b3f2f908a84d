package natsdest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// redialWait is how long a failed dial is reported to every Send before
// the next Send dials again: during an outage each batch fails at once
// instead of each dialling in turn.
const redialWait = time.Second

// session is one live connection and its JetStream context.
type session struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// conn owns the destination's connection: it dials on first use and again
// when the client has given up (closed after refused credentials), never
// more often than redialWait.
type conn struct {
	cfg  *Config
	log  *slog.Logger
	deny *denials
	acks *acks

	mu struct {
		sync.Mutex
		s       *session
		lastErr error
		lastTry time.Time
		closed  bool
	}
}

// errClosed is a Send after Close.
var errClosed = errors.New("destination closed")

// get returns a connected session, dialling if there is none. The error is
// the dial's or the connection's last (refused credentials, refused TCP).
func (c *conn) get(ctx context.Context) (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, errClosed
	}
	if s := c.mu.s; s != nil && !s.nc.IsClosed() {
		if s.nc.IsConnected() {
			return s, nil
		}
		// Reconnecting: the client redials by itself.
		if err := s.nc.LastError(); err != nil {
			return nil, fmt.Errorf("not connected to NATS: %w", err)
		}
		return nil, fmt.Errorf("not connected to NATS (status %v)", s.nc.Status())
	}
	if c.mu.s != nil && c.mu.lastErr == nil {
		c.mu.lastErr = c.mu.s.nc.LastError()
		if c.mu.lastErr == nil {
			c.mu.lastErr = nats.ErrConnectionClosed
		}
	}
	if !c.mu.lastTry.IsZero() && time.Since(c.mu.lastTry) < redialWait && c.mu.lastErr != nil {
		return nil, c.mu.lastErr
	}
	c.mu.lastTry = time.Now()
	s, err := c.dial(ctx)
	if err != nil {
		c.mu.s, c.mu.lastErr = nil, err
		return nil, err
	}
	c.mu.s, c.mu.lastErr = s, nil
	return s, nil
}

// dial connects to the first server of the list that answers.
func (c *conn) dial(ctx context.Context) (*session, error) {
	opts, err := c.options()
	if err != nil {
		return nil, err
	}
	timeout := c.cfg.ConnectTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	opts = append(opts, nats.Timeout(max(timeout, time.Millisecond)))
	nc, err := nats.Connect(strings.Join(c.cfg.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", strings.Join(c.cfg.URLs, ","), err)
	}
	js, err := jetstream.New(nc,
		// Send bounds pending publishes at MaxPending, freeing a slot when it
		// gives up on an ack; the client keeps such a publish pending until
		// its own ack timeout, so its bound, a backstop, is higher.
		jetstream.WithPublishAsyncMaxPending(2*c.cfg.MaxPending),
		// Acks that never come (a publish lost with a leader) free their
		// pending slot after this; Send has given up on them by then.
		jetstream.WithPublishAsyncTimeout(c.cfg.Timeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
			c.acks.done(m, ack, nil)
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			c.acks.done(m, nil, err)
		}))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cannot open JetStream: %w", err)
	}
	c.log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
	return &session{nc: nc, js: js}, nil
}

// options are the client options of the config.
func (c *conn) options() ([]nats.Option, error) {
	cfg := c.cfg
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		// No buffering while reconnecting: a publish then fails at once
		// (an outage the router sees) instead of waiting out the timeout.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(cfg.PingInterval),
		nats.MaxPingsOutstanding(2),
		nats.ErrorHandler(c.asyncError),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				c.log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
	}
	switch {
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NkeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("cannot read nkey seed file: %w", err)
		}
		opts = append(opts, o)
	}
	if t := cfg.TLS; t.Enabled || t.CAFile != "" || t.CertFile != "" {
		opts = append(opts, nats.Secure(&tls.Config{
			ServerName:         t.ServerName,
			InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice
			MinVersion:         tls.VersionTLS12,
		}))
		if t.CAFile != "" {
			opts = append(opts, nats.RootCAs(t.CAFile))
		}
		if t.CertFile != "" {
			opts = append(opts, nats.ClientCert(t.CertFile, t.KeyFile))
		}
	}
	return opts, nil
}

// asyncError receives the server's asynchronous errors; a publish refused
// by the account's permissions is one, and the publish gets no ack.
func (c *conn) asyncError(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) {
		if m := permissionRe.FindStringSubmatch(err.Error()); m != nil {
			c.deny.add(m[1], err.Error())
			return
		}
	}
	c.log.Warn("NATS error", "err", err)
}

var permissionRe = regexp.MustCompile(`(?i)permissions violation for publish to "([^"]+)"`)

// close closes the connection; later gets fail.
func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.closed = true
	if c.mu.s != nil {
		c.mu.s.nc.Close()
		c.mu.s = nil
	}
}

// isAuthError reports an error that says the destination's credentials
// are refused: nothing will go until an operator acts.
func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		errors.Is(err, nats.ErrNkeysNotSupported)
}

// denials records subjects the server refused to take a publish on
// (permission violations, which carry no ack): waiters for an ack watch
// changed() and look their subject up.
type denials struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on each add
	subj    map[string]denial
}

type denial struct {
	at  time.Time
	msg string
}

// denialsMax bounds the subjects remembered; past it the oldest go.
const denialsMax = 1024

func newDenials() *denials {
	return &denials{changed: make(chan struct{}), subj: map[string]denial{}}
}

func (d *denials) add(subject, msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.subj) >= denialsMax {
		clear(d.subj)
	}
	d.subj[subject] = denial{at: time.Now(), msg: msg}
	close(d.changed)
	d.changed = make(chan struct{})
}

// wait returns a channel closed at the next add.
func (d *denials) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// since returns the server's message when subject was refused at or after
// t (a publish sent at t was then refused too: the server answers in order).
func (d *denials) since(subject string, t time.Time) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.subj[subject]
	if !ok || v.at.Before(t) {
		return "", false
	}
	return v.msg, true
}
