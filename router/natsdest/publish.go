package natsdest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// state is where one event of a Send ended.
type state uint8

const (
	stateAcked   state = iota // stored (or a duplicate of a stored one)
	stateRefused              // refused for good: status is 4xx
	stateFailed               // not acked: retry (status 503)
	statePaused               // the destination cannot take anything: pause
)

// outcome is one event's end in a Send.
type outcome struct {
	state     state
	status    int    // refused or failed: the event's own status
	msg       string // the server's or the client's words
	err       error  // failed or paused: why
	ambiguous bool   // failed after the message went out: it may be stored
}

func (o outcome) reason() string {
	if o.msg != "" {
		return o.msg
	}
	if o.err != nil {
		return o.err.Error()
	}
	return "unknown"
}

// pub is one Send's publishing: runs of one user's events go in parallel,
// each run in order (see the package doc).
type pub struct {
	d      *Dest
	s      *session
	events []router.Event
	outs   []outcome // by event index; each written by its run only
	opts   []jetstream.PublishOpt
}

// run publishes one user's events in order, each after the previous one's
// ack; after a failure the rest stay unsent and are named failed too.
func (p *pub) run(ctx context.Context, idx []int) {
	subj := make([]byte, 0, 64)
	for n, i := range idx {
		subj = p.d.tmpl.Subject(subj[:0], &p.events[i])
		o := p.one(ctx, &p.events[i], string(subj))
		p.outs[i] = o
		if o.state == stateFailed || o.state == statePaused {
			for _, j := range idx[n+1:] {
				p.outs[j] = outcome{state: stateFailed, status: 503, err: o.err,
					msg: "not sent: an earlier event of its user failed: " + o.reason()}
			}
			return
		}
	}
}

// one publishes ev to subject and waits for its ack.
func (p *pub) one(ctx context.Context, ev *router.Event, subject string) outcome {
	if err := ctx.Err(); err != nil {
		return outcome{state: stateFailed, status: 503, err: fmt.Errorf("not sent: %w", err)}
	}
	// The payload is not copied: the client copies it into its write buffer
	// in PublishMsgAsync and, with retries off, never reads it again.
	m := &nats.Msg{Subject: subject, Data: ev.Payload, Header: p.d.header(ev)}
	denied := p.d.conn.deny.wait()
	sent := time.Now()
	paf, err := p.s.js.PublishMsgAsync(m, p.opts...)
	if err != nil {
		return publishError(err)
	}
	ok, failed := paf.Ok(), paf.Err()
	for {
		select {
		case ack := <-ok:
			if ack.Duplicate {
				p.d.duplicates.Add(1)
			}
			return outcome{state: stateAcked}
		case err := <-failed:
			return p.ackError(ctx, subject, err)
		case <-ctx.Done():
			return outcome{state: stateFailed, status: 503, ambiguous: true,
				err: fmt.Errorf("no ack for the publish to %q: %w", subject, ctx.Err())}
		case <-denied:
			if msg, ok := p.d.conn.deny.since(subject, sent); ok {
				return outcome{state: stateRefused, status: 403, msg: msg}
			}
			denied = p.d.conn.deny.wait()
		}
	}
}

// publishError classifies a publish the client refused to send.
func publishError(err error) outcome {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return outcome{state: stateRefused, status: 413, msg: "message larger than the server's max_payload: " + err.Error()}
	case errors.Is(err, nats.ErrBadSubject):
		return outcome{state: stateRefused, status: 400, msg: err.Error()}
	}
	// Closed, reconnecting (nothing is buffered), too many pending acks
	// until the deadline: not sent, so not ambiguous.
	return outcome{state: stateFailed, status: 503, err: fmt.Errorf("cannot publish: %w", err)}
}

// ackError classifies the error that came instead of an ack.
func (p *pub) ackError(ctx context.Context, subject string, err error) outcome {
	var api *jetstream.APIError
	switch {
	case errors.As(err, &api):
		if api.Code >= 400 && api.Code < 500 && api.Code != 408 && api.Code != 429 {
			status := api.Code
			if api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
				status = 413
			}
			return outcome{state: stateRefused, status: status, msg: fmt.Sprintf("JetStream refused the message (%d, err_code %d): %s", api.Code, api.ErrorCode, api.Description)}
		}
		return outcome{state: stateFailed, status: 503, err: fmt.Errorf("JetStream cannot store it now: %w", err)}
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		why := p.d.noResponders(ctx, p.s, subject)
		switch {
		case errors.Is(why, ErrStreamNotFound):
			return outcome{state: statePaused, err: why}
		case why != nil:
			return outcome{state: stateRefused, status: 404, msg: why.Error()}
		}
		return outcome{state: stateFailed, status: 503, err: fmt.Errorf("no responders for %q (the stream has no leader?): %w", subject, err)}
	}
	// Disconnected, ack timed out: the message may be stored.
	return outcome{state: stateFailed, status: 503, ambiguous: true, err: fmt.Errorf("no ack for the publish to %q: %w", subject, err)}
}
