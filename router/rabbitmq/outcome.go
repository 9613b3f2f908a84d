package rabbitmq

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-cdi/sluice/router"
)

// result tells the router what became of a batch (the package doc's
// table). Events with a definite answer (ack, nack, return, refusal)
// are named one by one; when some have none, the reason the channel or
// connection failed decides between naming the one event that caused it
// and retrying the whole batch.
func (r *RabbitMQ) result(l *link, b *batch) router.Result {
	if b.unmatched != nil {
		// An unroutable message that cannot be named would count as
		// delivered: the whole batch goes again instead.
		return router.Result{Err: fmt.Errorf("rabbitmq: %w", b.unmatched), Ambiguous: true}
	}
	closed := b.closeErr != nil || l.lost()
	if closed {
		// The library fails every open confirm when the channel closes:
		// those are unknown, not nacked.
		for i, f := range b.fates {
			if f == fateNacked {
				b.fates[i] = fatePending
			}
		}
	}
	unknown, published := 0, false
	for i, f := range b.fates {
		if f == fatePending || f == fateUnsent {
			unknown++
			published = published || b.dcs[i] != nil
		}
	}
	if unknown == 0 {
		return b.named(-1, 0, nil)
	}
	e := b.closeErr
	switch {
	case l.lost() || e == nil:
		// The connection is gone, the context ended, or a publish failed:
		// an outage, nothing refused.
		if b.waitErr != nil {
			if reason := l.blocked.Load(); reason != nil {
				return blockedResult(*reason, r.cfg.BlockedRetryAfter, published)
			}
		}
		return router.Result{Err: fmt.Errorf("rabbitmq: %w", b.why(l)), Ambiguous: published}
	case e.Code == amqp.NotFound:
		return r.exchangeMissing(l, e, published)
	case e.Code == amqp.AccessRefused:
		if i := b.topicRefused(e.Reason); i >= 0 {
			return b.named(i, 403, []byte("access refused: "+e.Reason))
		}
		return router.Result{Pause: true, Err: fmt.Errorf("rabbitmq: the broker refuses publishing to exchange %q: %w",
			r.cfg.Exchange, e)}
	case e.Code == amqp.PreconditionFailed:
		if i, max := b.tooLarge(e.Reason); i >= 0 {
			r.learnSizeMax(max)
			return b.named(i, 413, []byte("message too large: "+e.Reason))
		}
	}
	return router.Result{Err: fmt.Errorf("rabbitmq: the broker closed the channel: %w", e), Ambiguous: published}
}

// why is the reason a batch stopped with events unanswered.
func (b *batch) why(l *link) error {
	switch {
	case l.lost() && l.conn.IsClosed():
		select {
		case <-l.done:
			return l.err
		default:
			return errors.New("connection lost")
		}
	case b.pubErr != nil:
		return fmt.Errorf("cannot publish: %w", b.pubErr)
	case b.waitErr != nil:
		return fmt.Errorf("no confirm in time: %w", b.waitErr)
	}
	return errors.New("no confirm")
}

// named is the answer naming each event not delivered: culprit (if >= 0)
// refused with status and reason, events refused or returned as such,
// nacked and unanswered ones retried (503). A retried event's later
// events of the same user, delivered or not, are retried too (named 503),
// so that the user's order holds: they arrive again after it.
func (b *batch) named(culprit, status int, reason []byte) router.Result {
	var rej []router.Rejection
	var behind map[string]bool // users with an event retried
	for i, f := range b.fates {
		key := b.events[i].Key
		switch {
		case i == culprit:
			rej = append(rej, router.Rejection{Index: i, Status: status, Reason: reason})
		case f == fateRefused:
			rej = append(rej, router.Rejection{Index: i, Status: b.status[i], Reason: b.reasons[i]})
		case f == fateReturned:
			rej = append(rej, router.Rejection{Index: i, Status: 400, Reason: b.reasons[i]})
		case f == fateNacked || f == fatePending || f == fateUnsent:
			why := "nacked by the broker"
			if f != fateNacked {
				why = "not confirmed: the broker closed the channel on another message"
			}
			rej = append(rej, router.Rejection{Index: i, Status: 503, Reason: []byte(why)})
			if behind == nil {
				behind = map[string]bool{}
			}
			behind[string(key)] = true
		case f == fateAcked && behind[string(key)]:
			rej = append(rej, router.Rejection{Index: i, Status: 503,
				Reason: []byte("sent again after an earlier event of the same user")})
		}
	}
	return router.Result{Status: 200, Rejected: rej}
}

// topicRefused is the event the broker refused for topic authorisation
// ("access to topic 'KEY' in exchange ..."): the first unanswered one
// published with that routing key, or -1.
func (b *batch) topicRefused(reason string) int {
	const pre, post = "access to topic '", "' in exchange '"
	i := strings.Index(reason, pre)
	if i < 0 {
		return -1
	}
	rest := reason[i+len(pre):]
	j := strings.LastIndex(rest, post)
	if j < 0 {
		return -1
	}
	return b.firstUnanswered(func(k int) bool { return b.keys[k] == rest[:j] })
}

// tooLarge is the event the broker refused for its size ("message size N
// is larger than [configured] max size M"): the first unanswered one
// published with a body of N bytes, or -1; and M.
func (b *batch) tooLarge(reason string) (int, int64) {
	n, ok1 := numberAfter(reason, "message size ")
	m, ok2 := numberAfter(reason, "max size ")
	if !ok1 || !ok2 {
		return -1, 0
	}
	return b.firstUnanswered(func(k int) bool { return int64(len(b.events[k].Payload)) == n }), m
}

func (b *batch) firstUnanswered(match func(int) bool) int {
	for i, f := range b.fates {
		if f == fatePending && b.dcs[i] != nil && match(i) {
			return i
		}
	}
	return -1
}

// numberAfter reads the decimal number following the first pre in s.
func numberAfter(s, pre string) (int64, bool) {
	i := strings.Index(s, pre)
	if i < 0 {
		return 0, false
	}
	s = s[i+len(pre):]
	j := 0
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(s[:j], 10, 64)
	return n, err == nil
}

// learnSizeMax lowers the size refused before publishing to the broker's.
func (r *RabbitMQ) learnSizeMax(max int64) {
	for {
		cur := r.sizeMax.Load()
		if max <= 0 || cur > 0 && cur <= max || r.sizeMax.CompareAndSwap(cur, max) {
			return
		}
	}
}

// exchangeMissing answers a publish to an exchange that does not exist:
// declared again when the destination declares it (the batch is retried),
// else the destination pauses until an operator creates it.
func (r *RabbitMQ) exchangeMissing(l *link, e *amqp.Error, published bool) router.Result {
	if r.cfg.Declare == nil {
		return router.Result{Pause: true, Err: fmt.Errorf(
			"rabbitmq: exchange %q does not exist (%s): create it, or set declare_exchange", r.cfg.Exchange, e.Reason)}
	}
	if err := r.declare(l.conn); err != nil {
		return router.Result{Err: fmt.Errorf("rabbitmq: exchange %q was deleted: %w", r.cfg.Exchange, err),
			Pause: errors.Is(err, errDialPause), Ambiguous: published}
	}
	r.log.Warn("rabbitmq exchange was missing; declared it again", "exchange", r.cfg.Exchange)
	return router.Result{Err: fmt.Errorf("rabbitmq: exchange %q was missing (declared again): %w", r.cfg.Exchange, e),
		Ambiguous: published}
}

// blockedResult is the answer while the broker blocks publishing: a
// throttle, so the router waits without charging anything.
func blockedResult(reason string, after time.Duration, ambiguous bool) router.Result {
	return router.Result{Status: 429, RetryAfter: after, Ambiguous: ambiguous,
		Body: []byte("rabbitmq blocks publishing: " + reason)}
}
