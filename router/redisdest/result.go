package redisdest

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/sluice-cdi/sluice/router"
)

// Statuses of events named in a partial answer (router.Rejection), in the
// router's HTTP-like terms.
const (
	statusWrongType = 400 // refused for good: the key holds another type
	statusNoPerm    = 403 // refused for good: the user may not write this key
	statusUnknown   = 500 // an error this package does not know: retried, charged
	statusOutage    = 503 // the server's state, or not run: retried
)

// result turns each event's outcome into the Send's result: 200 when all
// were added; an error when none was and none was refused (the server's
// state: nothing ran); otherwise 200 naming the others in Rejected. A
// single event gets its own status instead.
//
// Per-user order: after an event that will be retried, every later event
// of the same user in the batch is named for a retry too, whatever its own
// answer, so that none is delivered ahead of it (see the package doc for
// why, in a transaction, only an unknown answer can need this).
func result(b *sendBufs, events []router.Event) router.Result {
	ok, outage := 0, 0
	var firstErr error
	for _, o := range b.state {
		switch o.kind {
		case kindOK:
			ok++
		case kindOutage, kindAborted, kindNoScript:
			outage++
			// The cause (OOM, LOADING) rather than the EXECABORT it led to.
			if firstErr == nil || o.kind == kindOutage && classify(firstErr) != kindOutage {
				firstErr = o.err
			}
		}
	}
	switch {
	case ok == len(events):
		return router.Result{Status: 200}
	case outage == len(events):
		if firstErr == nil {
			firstErr = errors.New("not run")
		}
		return router.Result{Err: fmt.Errorf("redis: %w", firstErr)}
	case len(events) == 1:
		status, reason := own(b.state[0])
		return router.Result{Status: status, Body: reason}
	}
	var rej []router.Rejection
	var stopped map[string]bool // users with an event to retry
	for i, o := range b.state {
		status, reason := own(o)
		if stopped[string(events[i].Key)] && status != statusWrongType && status != statusNoPerm {
			status, reason = statusOutage, []byte("sent again behind an earlier event of the same user")
		}
		if status == 200 {
			continue
		}
		rej = append(rej, router.Rejection{Index: i, Status: status, Reason: reason})
		if status >= 500 {
			if stopped == nil {
				stopped = map[string]bool{}
			}
			stopped[string(events[i].Key)] = true
		}
	}
	return router.Result{Status: 200, Rejected: rej}
}

// own is an event's own status and Redis's reason.
func own(o outcome) (int, []byte) {
	var reason []byte
	if o.err != nil {
		reason = capped([]byte(o.err.Error()))
	}
	switch o.kind {
	case kindOK:
		return 200, nil
	case kindRefused:
		if bytes.HasPrefix(reason, []byte("NOPERM")) {
			return statusNoPerm, reason
		}
		return statusWrongType, reason
	case kindFailed:
		return statusUnknown, reason
	}
	if reason == nil {
		reason = []byte("not run")
	}
	return statusOutage, reason
}

func capped(b []byte) []byte {
	const max = 4096
	if len(b) > max {
		return b[:max]
	}
	return b
}
