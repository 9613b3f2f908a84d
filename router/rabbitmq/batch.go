package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// fate is what became of one event of a Send.
type fate uint8

const (
	fateUnsent   fate = iota // not published (a failure stopped the batch first)
	fateRefused              // refused before publishing (status and reason set)
	fatePending              // published, no confirm yet
	fateAcked                // confirmed: delivered
	fateNacked               // the broker nacked it
	fateReturned             // returned unroutable (mandatory)
)

// batch is one Send's events and what became of each.
type batch struct {
	events  []router.Event
	keys    []string // routing keys
	fates   []fate
	status  []int    // of refused events
	reasons [][]byte // of refused and returned events
	dcs     []*amqp.DeferredConfirmation
	// returns are the channel's returns, nil once the library closed them
	// (the channel is closed). retFrom is where the next return is looked
	// for: the broker returns messages in the order they were published.
	returns <-chan amqp.Return
	retFrom int

	closeErr  *amqp.Error // the broker closed the channel, and why
	pubErr    error       // a publish failed
	waitErr   error       // the context ended before every confirm came
	unmatched error       // a return that names no event of the batch
}

// prepare renders each event's routing key and refuses, before anything
// is published, an event whose key or size the broker would refuse.
func (r *RabbitMQ) prepare(events []router.Event) *batch {
	n := len(events)
	b := &batch{events: events, keys: make([]string, n), fates: make([]fate, n), status: make([]int, n),
		reasons: make([][]byte, n), dcs: make([]*amqp.DeferredConfirmation, n)}
	sizeMax := r.sizeMax.Load()
	var buf []byte
	static, key := r.key.Static(), ""
	if static {
		key = string(r.key.Append(nil, nil, nil))
	}
	for i := range events {
		ev := &events[i]
		if static {
			b.keys[i] = key
		} else {
			buf = r.key.Append(buf[:0], ev, nil)
			b.keys[i] = string(buf)
		}
		switch {
		case len(b.keys[i]) > RoutingKeyBytesMax:
			b.refuse(i, 400, fmt.Sprintf("routing key of %d bytes: AMQP allows at most %d", len(b.keys[i]), RoutingKeyBytesMax))
		case sizeMax > 0 && int64(len(ev.Payload)) > sizeMax:
			b.refuse(i, 413, fmt.Sprintf("message too large: %d bytes, the broker takes at most %d", len(ev.Payload), sizeMax))
		}
	}
	return b
}

func (b *batch) refuse(i, status int, reason string) {
	b.fates[i], b.status[i], b.reasons[i] = fateRefused, status, []byte(reason)
}

// errBlocked stops a wait for confirms: the broker blocks publishing.
var errBlocked = errors.New("the broker blocks publishing")

// settled reports whether every event published has its confirm.
func (b *batch) settled() bool {
	for _, f := range b.fates {
		if f == fatePending {
			return false
		}
	}
	return b.waitErr == nil
}

// publish publishes the batch's events on c in order, then waits for
// their confirms, taking returns as they come. It stops publishing at the
// first failure: what follows is not sent.
func (r *RabbitMQ) publish(ctx context.Context, l *link, c *channel, b *batch) {
	p := amqp.Publishing{ContentType: "application/json", AppId: "sluice", DeliveryMode: amqp.Persistent,
		Headers: make(amqp.Table, 2+len(r.cfg.Headers))}
	if r.cfg.Transient {
		p.DeliveryMode = amqp.Transient
	}
	for k, v := range r.cfg.Headers {
		p.Headers[k] = v
	}
	b.returns = c.returns
	var source, typ string
	for i := range b.events {
		if b.fates[i] != fateUnsent {
			continue
		}
		ev := &b.events[i]
		// The library encodes the message before Publish returns, so one
		// Publishing and its headers serve every event, and the event's
		// bytes are not kept.
		if source != string(ev.Source) {
			source = string(ev.Source)
		}
		if typ != string(ev.Type) {
			typ = string(ev.Type)
		}
		p.Headers["source"], p.Headers["type"] = source, typ
		p.MessageId = string(ev.MessageID)
		p.Timestamp = time.Unix(0, ev.ReceivedAt)
		p.Body = ev.Payload
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, r.cfg.Exchange, b.keys[i], !r.cfg.NotMandatory, false, p)
		if err != nil {
			b.pubErr = err
			break
		}
		b.dcs[i], b.fates[i] = dc, fatePending
		b.takeReturns()
	}
	p.Body = nil
	b.wait(ctx, l.blockedSignal())
	b.takeReturns()
	select {
	case e, ok := <-c.closes:
		if ok {
			b.closeErr = e
		}
	default:
	}
}

// wait waits for every published event's confirm, in order, taking
// returns meanwhile (the library drops those it cannot hand over). It
// gives up when the context ends or the broker blocks publishing: what
// it has not confirmed yet may wait there for the alarm's end.
func (b *batch) wait(ctx context.Context, blocked <-chan struct{}) {
	for i := range b.events {
		for b.fates[i] == fatePending || b.fates[i] == fateReturned && !done(b.dcs[i]) {
			select {
			case <-b.dcs[i].Done():
				if b.fates[i] == fatePending {
					b.fates[i] = fateNacked
					if b.dcs[i].Acked() {
						b.fates[i] = fateAcked
					}
				}
			case ret, ok := <-b.returns:
				b.take(ret, ok)
			case <-ctx.Done():
				b.waitErr = ctx.Err()
				return
			case <-blocked:
				b.waitErr = errBlocked
				return
			}
		}
	}
}

func done(dc *amqp.DeferredConfirmation) bool {
	select {
	case <-dc.Done():
		return true
	default:
		return false
	}
}

// takeReturns takes the returns already there. The broker sends a
// message's return before its confirm, and the library hands it over
// before it marks the confirm, so once every confirm is in, so are the
// returns.
func (b *batch) takeReturns() {
	for b.returns != nil {
		select {
		case ret, ok := <-b.returns:
			b.take(ret, ok)
		default:
			return
		}
	}
}

// take takes one receive from the returns.
func (b *batch) take(ret amqp.Return, ok bool) {
	if !ok {
		b.returns = nil
		return
	}
	b.returned(ret)
}

// returned marks the event the broker returned: the first published and
// not yet returned at or after retFrom with the message's id and size.
func (b *batch) returned(ret amqp.Return) {
	for i := b.retFrom; i < len(b.events); i++ {
		ev := &b.events[i]
		if b.dcs[i] == nil || b.fates[i] == fateReturned || ret.MessageId != string(ev.MessageID) ||
			len(ret.Body) != len(ev.Payload) {
			continue
		}
		if b.fates[i] == fateAcked || b.fates[i] == fateNacked || b.fates[i] == fatePending {
			b.fates[i] = fateReturned
			b.reasons[i] = fmt.Appendf(nil, "unroutable: %s (exchange %q, routing key %q)", ret.ReplyText, ret.Exchange, ret.RoutingKey)
			b.retFrom = i + 1
			return
		}
	}
	if b.unmatched == nil {
		b.unmatched = fmt.Errorf("the broker returned message %q (%d bytes), which is none of the batch's", ret.MessageId,
			len(ret.Body))
	}
}
