// Package natsdest is the NATS JetStream destination: each event is
// published to a subject made from a template (see Template), with its
// messageId as Nats-Msg-Id so that the stream's duplicate window refuses a
// resend, and is delivered once JetStream acknowledges it as stored.
//
// Order. One Send publishes the batch's users in parallel (asynchronous
// publishes, at most MaxPending unacknowledged on the connection), but one
// user's events one after another: each waits for the previous one's ack.
// So a user's event is never stored after a later one of the same batch
// failed to be: when an ack fails (timeout, lost connection, no leader),
// that event and the user's later ones are named as failed (503) in
// Result.Rejected and nothing later of the user was published. The router
// retries them in order; whatever of them was stored after all (an ack
// lost, not the message) is refused by the duplicate window, acked as a
// duplicate, and counts as delivered.
//
// Errors. Lost connection, timeouts, no leader, "no responders" with the
// stream present: an outage (Err, or 503 by event). A message larger than
// the server's max_payload or the stream's max_msg_size, a subject the
// stream does not take, a subject the account may not publish to: that
// event is refused (4xx, aborted with the server's words). Refused
// credentials, a server without JetStream, or the stream missing while
// create_stream is off: Result.Pause.
package natsdest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a NATS JetStream destination.
type Config struct {
	// URLs are the servers to connect to (nats://host:port, tls://...);
	// the client fails over among them and those the cluster announces.
	// Required.
	URLs []string
	// Subject is the subject template (see Template). Required.
	Subject string
	// Stream, if set, is the stream the subjects must land in: it is looked
	// up (or created, with CreateStream) before the first publish, each
	// publish carries Nats-Expected-Stream, and when it is missing the
	// destination pauses with "stream not found".
	Stream string
	// CreateStream, if set, creates Stream when it is missing.
	CreateStream *StreamConfig
	// Credentials: at most one of User/Password and Token, plus optionally
	// a creds file (JWT) or an nkey seed file.
	User, Password, Token   string
	CredsFile, NkeySeedFile string
	TLS                     TLSConfig
	// MaxPending bounds publishes awaiting their ack on the connection,
	// across all Sends. Default 4096.
	MaxPending int
	// Timeout bounds a Send whose context has no deadline, and an ack.
	// Default 30s.
	Timeout time.Duration
	// ConnectTimeout bounds one dial. Default 5s.
	ConnectTimeout time.Duration
	// PingInterval: a connection that answers no ping for two of these is
	// dropped and redialled. Default 10s.
	PingInterval time.Duration
	// Name is the client's name shown by the server. Default "sluice".
	Name   string
	Logger *slog.Logger
}

// StreamConfig is the stream CreateStream makes.
type StreamConfig struct {
	// Subjects it takes. Default: the template with every placeholder's
	// token as '*' (Template.Wildcard).
	Subjects []string
	// Replicas. Default 1.
	Replicas int
	// DuplicateWindow: how long a Nats-Msg-Id is remembered. Default 2m
	// (the server's).
	DuplicateWindow time.Duration
	// MaxMsgSize in bytes; 0: the server's max_payload.
	MaxMsgSize int32
	// Memory stores the stream in memory instead of files.
	Memory bool
}

// TLSConfig are the client's TLS settings.
type TLSConfig struct {
	Enabled            bool   // TLS even without a CA or client certificate
	CAFile             string // PEM roots to trust instead of the system's
	CertFile, KeyFile  string // client certificate
	ServerName         string
	InsecureSkipVerify bool
}

// Dest publishes events to JetStream. Safe for concurrent use.
type Dest struct {
	cfg     Config
	tmpl    *Template
	log     *slog.Logger
	conn    *conn
	stream  streamCheck
	noRetry jetstream.PublishOpt
	acks    *acks

	delivered, duplicates, refused, failed atomic.Uint64
}

// Stats are counters since New.
type Stats struct {
	Delivered  uint64 // acked, duplicates included
	Duplicates uint64 // acked as duplicates (Nats-Msg-Id seen in the window)
	Refused    uint64 // named as refused (4xx)
	Failed     uint64 // not acked, to be retried
}

// New checks the config and returns the destination. It dials at once but
// does not fail if no server answers: Sends fail (an outage) until one
// does.
func New(cfg Config) (*Dest, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("nats: no url")
	}
	tmpl, err := ParseTemplate(cfg.Subject)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	if cfg.CreateStream != nil && cfg.Stream == "" {
		return nil, errors.New("nats: create_stream needs a stream name")
	}
	if cfg.User != "" && cfg.Token != "" {
		return nil, errors.New("nats: user and token are exclusive")
	}
	setDefault(&cfg.MaxPending, 4096)
	setDefault(&cfg.Timeout, 30*time.Second)
	setDefault(&cfg.ConnectTimeout, 5*time.Second)
	setDefault(&cfg.PingInterval, 10*time.Second)
	setDefault(&cfg.Name, "sluice")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if c := cfg.CreateStream; c != nil {
		setDefault(&c.Replicas, 1)
		setDefault(&c.DuplicateWindow, 2*time.Minute)
	}
	d := &Dest{cfg: cfg, tmpl: tmpl, log: cfg.Logger, noRetry: jetstream.WithRetryAttempts(0),
		acks: &acks{pending: make(chan struct{}, cfg.MaxPending)}}
	d.conn = &conn{cfg: &d.cfg, log: d.log, deny: newDenials(), acks: d.acks}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	if s, err := d.conn.get(ctx); err != nil {
		d.log.Warn("cannot connect to NATS yet; deliveries wait for it", "err", err)
	} else if err := d.ensureStream(ctx, s); err != nil {
		d.log.Warn("JetStream stream not ready yet", "err", err)
	}
	return d, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// Stats returns the counters.
func (d *Dest) Stats() Stats {
	return Stats{Delivered: d.delivered.Load(), Duplicates: d.duplicates.Load(),
		Refused: d.refused.Load(), Failed: d.failed.Load()}
}

// Close closes the connection.
func (d *Dest) Close() error {
	d.conn.close()
	return nil
}

// Send publishes the events and waits for their acks (see the package doc
// for the order kept and the result).
func (d *Dest) Send(ctx context.Context, events []router.Event) router.Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cfg.Timeout)
		defer cancel()
	}
	s, err := d.conn.get(ctx)
	if err != nil {
		return connFailure(err)
	}
	if err := d.ensureStream(ctx, s); err != nil {
		if errors.Is(err, ErrStreamNotFound) {
			return router.Result{Pause: true, Err: fmt.Errorf("nats: %w", err)}
		}
		return router.Result{Err: fmt.Errorf("nats: %w", err)}
	}
	deadline, _ := ctx.Deadline()
	p := &pub{d: d, s: s, events: events, runs: runsByKey(events), outs: make([]outcome, len(events)),
		opts: []jetstream.PublishOpt{d.noRetry, jetstream.WithStallWait(max(time.Until(deadline), time.Millisecond))}}
	p.publishAll(ctx)
	return d.result(p.outs)
}

// connFailure is the result of a Send that has no connection.
func connFailure(err error) router.Result {
	err = fmt.Errorf("nats: %w", err)
	if isAuthError(err) {
		return router.Result{Pause: true, Err: err}
	}
	return router.Result{Err: err}
}

// runsByKey groups the indexes of events by ordering key, each group in
// batch order.
func runsByKey(events []router.Event) [][]int {
	at := make(map[string]int, len(events))
	var runs [][]int
	for i := range events {
		k := string(events[i].Key)
		r, ok := at[k]
		if !ok {
			r = len(runs)
			at[k] = r
			runs = append(runs, nil)
		}
		runs[r] = append(runs[r], i)
	}
	return runs
}

// result makes a Send's result of the events' outcomes.
func (d *Dest) result(outs []outcome) router.Result {
	var rej []router.Rejection
	acked, failed, ambiguous := 0, 0, false
	var firstErr error
	for i, o := range outs {
		switch o.state {
		case stateAcked:
			acked++
			continue
		case statePaused:
			return router.Result{Pause: true, Err: fmt.Errorf("nats: %w", o.err)}
		case stateFailed:
			failed++
			ambiguous = ambiguous || o.ambiguous
			if firstErr == nil {
				firstErr = o.err
			}
		}
		rej = append(rej, router.Rejection{Index: i, Status: o.status, Reason: []byte(o.reason())})
	}
	d.delivered.Add(uint64(acked))
	d.failed.Add(uint64(failed))
	d.refused.Add(uint64(len(rej) - failed))
	switch {
	case len(rej) == 0:
		return router.Result{Status: 200}
	case failed == len(outs):
		// Nothing taken, nothing refused: a failed request, which the
		// router's breaker counts.
		return router.Result{Err: fmt.Errorf("nats: %w", firstErr), Ambiguous: ambiguous}
	}
	return router.Result{Status: 200, Rejected: rej}
}

// sanitizeHeader makes v a legal header value: control bytes (a line break
// would end the header block) become '_'.
func sanitizeHeader(v []byte) string {
	ok := true
	for _, c := range v {
		if c < ' ' || c == 0x7f {
			ok = false
			break
		}
	}
	if ok {
		return string(v)
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, string(v))
}

// header is the headers of ev's message.
func (d *Dest) header(ev *router.Event) nats.Header {
	h := make(nats.Header, 6)
	if len(ev.MessageID) > 0 {
		h[jetstream.MsgIDHeader] = []string{sanitizeHeader(ev.MessageID)}
	}
	if d.cfg.Stream != "" {
		h[jetstream.ExpectedStreamHeader] = []string{d.cfg.Stream}
	}
	h["Content-Type"] = []string{"application/json"}
	h["Sluice-Source"] = []string{sanitizeHeader(ev.Source)}
	h["Sluice-Type"] = []string{sanitizeHeader(ev.Type)}
	h["Sluice-Key"] = []string{sanitizeHeader(ev.Key)}
	return h
}
