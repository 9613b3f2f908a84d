package natsdest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-cdi/sluice/router"
)

// state is where one event of a Send ended.
type state uint8

const (
	stateWaiting state = iota // published, no answer yet (or not published yet)
	stateAcked                // stored (or a duplicate of a stored one)
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

// answer is the client's word on one publish: an ack or an error. The
// client's ack and error handlers (acks.done) deliver it to the Send that
// published, through that Send's channel.
type answer struct {
	run, idx int // the run (user) and the event
	ack      *jetstream.PubAck
	err      error
}

// waiter is a published message's Send: where its answer goes.
type waiter struct {
	ch       chan<- answer // buffered for every event of the Send: never blocks
	run, idx int
}

// acks routes the client's answers to the Sends waiting for them, by
// message. Every publish the client took gets exactly one answer (the
// ack, or an error: the server's, a timeout after Config.Timeout, a lost
// connection), also after its Send gave up, which frees its pending slot.
type acks struct {
	waiting sync.Map // *nats.Msg -> waiter
	pending chan struct{}
}

// done is the client's ack and error handler.
func (a *acks) done(m *nats.Msg, ack *jetstream.PubAck, err error) {
	v, ok := a.waiting.LoadAndDelete(m)
	if !ok {
		return
	}
	<-a.pending
	w := v.(waiter)
	w.ch <- answer{run: w.run, idx: w.idx, ack: ack, err: err}
}

// pub is one Send's publishing (see the package doc): runs of one user's
// events go in parallel, each run in order, one event in flight per run.
type pub struct {
	d      *Dest
	s      *session
	events []router.Event
	runs   [][]int   // event indexes per user, in batch order
	next   []int     // per run, the position of its event in flight
	outs   []outcome // by event index
	subj   []string  // per run, the subject of its event in flight
	sent   []time.Time
	answer chan answer
	opts   []jetstream.PublishOpt
	buf    []byte
	noResp map[string]error // subject -> why it had no responders (noResponders)
}

// publishAll publishes every run's events, each after the previous one's
// answer, until all are answered or ctx ends.
func (p *pub) publishAll(ctx context.Context) {
	p.answer = make(chan answer, len(p.events))
	p.next = make([]int, len(p.runs))
	p.subj = make([]string, len(p.runs))
	p.sent = make([]time.Time, len(p.runs))
	inFlight := 0
	for r := range p.runs {
		if p.start(ctx, r) {
			inFlight++
		}
	}
	denied := p.d.conn.deny.wait()
	for inFlight > 0 {
		select {
		case a := <-p.answer:
			if p.awaiting(a.run) != a.idx {
				continue // settled meanwhile (refused by a permission error)
			}
			inFlight--
			if p.settle(a.run, p.classify(ctx, a)) && p.start(ctx, a.run) {
				inFlight++
			}
		case <-denied:
			denied = p.d.conn.deny.wait()
			for r := range p.runs {
				if p.awaiting(r) < 0 {
					continue
				}
				if msg, ok := p.d.conn.deny.since(p.subj[r], p.sent[r]); ok {
					// Its answer (a timeout) will find it settled.
					inFlight--
					if p.settle(r, outcome{state: stateRefused, status: 403, msg: msg}) && p.start(ctx, r) {
						inFlight++
					}
				}
			}
		case <-ctx.Done():
			for r := range p.runs {
				if p.awaiting(r) >= 0 {
					p.settle(r, outcome{state: stateFailed, status: 503, ambiguous: true,
						err: fmt.Errorf("no ack for the publish to %q: %w", p.subj[r], ctx.Err())})
				}
			}
			return
		}
	}
}

// awaiting is the event of run r awaiting its answer, or -1.
func (p *pub) awaiting(r int) int {
	if p.subj[r] == "" || p.next[r] >= len(p.runs[r]) {
		return -1
	}
	return p.runs[r][p.next[r]]
}

// start publishes run r's next event, settling it (and the rest of the
// run) if it cannot go; it reports whether an answer is now awaited.
func (p *pub) start(ctx context.Context, r int) bool {
	for p.next[r] < len(p.runs[r]) {
		i := p.runs[r][p.next[r]]
		p.buf = p.d.tmpl.Subject(p.buf[:0], &p.events[i])
		p.subj[r] = string(p.buf)
		o, sent := p.publish(ctx, r, i, p.subj[r])
		if sent {
			p.sent[r] = time.Now()
			return true
		}
		if !p.settle(r, o) {
			return false
		}
	}
	return false
}

// settle records the outcome of run r's event in flight and reports
// whether the run goes on (the event was taken or refused for good); after
// a failure the run's later events are named failed, unpublished.
func (p *pub) settle(r int, o outcome) bool {
	run := p.runs[r]
	p.outs[run[p.next[r]]] = o
	p.subj[r] = ""
	if o.state == stateFailed || o.state == statePaused {
		for _, j := range run[p.next[r]+1:] {
			p.outs[j] = outcome{state: stateFailed, status: 503, err: o.err,
				msg: "not sent: an earlier event of its user failed: " + o.reason()}
		}
		p.next[r] = len(run)
		return false
	}
	p.next[r]++
	return p.next[r] < len(run)
}

// publish hands ev to the client; sent is false when it did not take it
// (o says why).
func (p *pub) publish(ctx context.Context, r, i int, subject string) (o outcome, sent bool) {
	ev := &p.events[i]
	if err := ctx.Err(); err != nil {
		return outcome{state: stateFailed, status: 503, err: fmt.Errorf("not sent: %w", err)}, false
	}
	// The payload is not copied: the client copies it into its write buffer
	// in PublishMsgAsync and, with retries off, never reads it again; the
	// message is kept (by the client and acks) until its answer, so Data is
	// cleared once it is written, to keep nothing of the event's bytes.
	m := &nats.Msg{Subject: subject, Data: ev.Payload, Header: p.d.header(ev)}
	select {
	case p.d.acks.pending <- struct{}{}: // freed by acks.done
	case <-ctx.Done():
		return outcome{state: stateFailed, status: 503,
			err: fmt.Errorf("not sent: %d publishes awaiting acks: %w", cap(p.d.acks.pending), ctx.Err())}, false
	}
	p.d.acks.waiting.Store(m, waiter{ch: p.answer, run: r, idx: i})
	if _, err := p.s.js.PublishMsgAsync(m, p.opts...); err != nil {
		if _, ours := p.d.acks.waiting.LoadAndDelete(m); ours {
			<-p.d.acks.pending
		}
		return publishError(err), false
	}
	m.Data = nil
	return outcome{}, true
}

// classify turns an answer into its event's outcome.
func (p *pub) classify(ctx context.Context, a answer) outcome {
	if a.err == nil {
		if a.ack.Duplicate {
			p.d.duplicates.Add(1)
		}
		return outcome{state: stateAcked}
	}
	return p.ackError(ctx, p.subj[a.run], a.err)
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
		// Asked once per subject and Send: with no leader, the lookup may
		// take until the deadline, and every run of the Send gets here.
		why, asked := p.noResp[subject]
		if !asked {
			why = p.d.noResponders(ctx, p.s, subject)
			if p.noResp == nil {
				p.noResp = map[string]error{}
			}
			p.noResp[subject] = why
		}
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
