package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluice-cdi/sluice/router"
)

// batch is one Send: its records and their answers. The client may answer
// a record after Send has returned (see the package doc), so the answers
// are kept under a lock and Send reads a snapshot.
type batch struct {
	recs []kgo.Record
	hdrs []kgo.RecordHeader
	done chan struct{} // closed when every record is answered

	mu       sync.Mutex
	left     int     // records not answered yet
	answered []bool  // per record
	errs     []error // per record: its answer
}

func newBatch(n int) *batch {
	b := &batch{
		recs:     make([]kgo.Record, n),
		hdrs:     make([]kgo.RecordHeader, 3*n),
		done:     make(chan struct{}),
		left:     n,
		answered: make([]bool, n),
		errs:     make([]error, n),
	}
	if n == 0 {
		close(b.done)
	}
	return b
}

// fill makes the records of the events. Their bytes are copied into one
// buffer the batch owns: the client may hold a record after Send returns,
// and the events' bytes are not Send's to keep.
func (b *batch) fill(events []router.Event, k *Kafka) []kgo.Record {
	size := 0
	for i := range events {
		ev := &events[i]
		size += len(ev.Key) + len(ev.Payload) + len(ev.MessageID) + len(ev.Source) + len(ev.Type)
	}
	arena := make([]byte, 0, size)
	take := func(v []byte) []byte {
		if len(v) == 0 {
			return nil
		}
		arena = append(arena, v...)
		return arena[len(arena)-len(v) : len(arena) : len(arena)]
	}
	var name []byte
	for i := range events {
		ev := &events[i]
		r := &b.recs[i]
		name, r.Topic = k.topic.topic(ev, name[:0])
		r.Key = take(ev.Key)
		r.Value = take(ev.Payload)
		h := b.hdrs[3*i : 3*i+3 : 3*i+3]
		h[0] = kgo.RecordHeader{Key: "messageId", Value: take(ev.MessageID)}
		h[1] = kgo.RecordHeader{Key: "source", Value: take(ev.Source)}
		h[2] = kgo.RecordHeader{Key: "type", Value: take(ev.Type)}
		r.Headers = h
		if ev.ReceivedAt != 0 {
			r.Timestamp = time.Unix(0, ev.ReceivedAt)
		}
	}
	return b.recs
}

// promise is record i's callback: the client calls promises one at a time,
// possibly after Send returned.
func (b *batch) promise(i int) func(*kgo.Record, error) {
	return func(_ *kgo.Record, err error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.answered[i] {
			return
		}
		b.answered[i], b.errs[i] = true, err
		if b.left--; b.left == 0 {
			close(b.done)
		}
	}
}

// result reads the answers so far into the batch's Result: per record an
// outcome (see classify), then one Result for the router.
//
// connErr is the latest failed connection to a broker, if none succeeded
// since: an authentication failure there pauses the destination (the
// client retries such connections without failing the records), and
// another one is added to an outage's error to say what is wrong.
//
// ctxErr is the Send's context's error: a record failed on a context while
// its own is live was failed with the records before it on its partition,
// whose Send had ended (the client fails a partition's buffer together).
func (b *batch) result(events []router.Event, fixedTopic string, connErr, ctxErr error) router.Result {
	n := len(events)
	outs := make([]outcome, n)
	b.mu.Lock()
	for i := range outs {
		if !b.answered[i] {
			outs[i] = pending()
			continue
		}
		err := b.errs[i]
		if ctxErr == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			err = fmt.Errorf("failed with the records before it on its partition, whose Send had ended: %w", err)
		}
		outs[i] = classify(err, fixedTopic != "")
	}
	b.mu.Unlock()
	for i, o := range outs {
		if o.class == classPause {
			return router.Result{Pause: true, Err: pauseErr(o.err, b.recs[i].Topic, fixedTopic)}
		}
	}
	keepKeyOrder(events, outs)
	var ok, retry int
	var ambiguous bool
	var first error
	for i, o := range outs {
		switch o.class {
		case classOK:
			ok++
		case classRetry:
			retry++
			ambiguous = ambiguous || o.ambiguous
			if first == nil {
				first = fmt.Errorf("topic %s: %w", b.recs[i].Topic, o.err)
			}
		}
	}
	if retry > 0 && connErr != nil {
		if isAuthErr(connErr) {
			return router.Result{Pause: true, Err: pauseErr(connErr, "", fixedTopic)}
		}
		first = fmt.Errorf("%w (last connection error: %v)", first, connErr)
	}
	switch {
	case ok == n:
		return router.Result{Status: 200}
	case retry == n:
		return router.Result{Err: fmt.Errorf("kafka: %d of %d records not delivered, first: %w", retry, n, first), Ambiguous: ambiguous}
	case n == 1: // refused
		return router.Result{Status: outs[0].status, Body: reason(&b.recs[0], outs[0].err)}
	}
	res := router.Result{Status: 200}
	for i, o := range outs {
		switch o.class {
		case classRefused:
			res.Rejected = append(res.Rejected, router.Rejection{Index: i, Status: o.status, Reason: reason(&b.recs[i], o.err)})
		case classRetry:
			res.Rejected = append(res.Rejected, router.Rejection{Index: i, Status: 503, Reason: reason(&b.recs[i], o.err)})
		}
	}
	return res
}

// keepKeyOrder names as failed every event taken after a failed (retried)
// event of the same key in the batch, so that it goes again behind it.
// Within one partition the client never takes a record after failing an
// earlier one; with a topic template a user's events may be in several.
// Events without a key (ordering off) keep no order.
func keepKeyOrder(events []router.Event, outs []outcome) {
	var failed map[string]bool
	for i := range outs {
		if len(events[i].Key) == 0 {
			continue
		}
		switch outs[i].class {
		case classRetry:
			if failed == nil {
				failed = map[string]bool{}
			}
			failed[string(events[i].Key)] = true
		case classOK:
			if failed[string(events[i].Key)] {
				outs[i] = outcome{class: classRetry, err: errBehindFailed}
			}
		}
	}
}

// reason is a refused record's dead-letter reason: the topic and the
// broker's (or client's) message.
func reason(r *kgo.Record, err error) []byte {
	return fmt.Appendf(nil, "topic %s: %v", r.Topic, err)
}
