package redisdest

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
)

// kind is what one command's error means for its event.
type kind uint8

const (
	kindOK       kind = iota
	kindRefused       // this event, for good: WRONGTYPE, NOPERM on its key
	kindOutage        // the server's state or the connection: retry, uncharged when many fail
	kindFailed        // an unknown error of this event: retried, charged while the server takes others
	kindPause         // the destination as a whole: credentials, permission to XADD
	kindAborted       // not executed (EXECABORT): another command of the transaction was refused
	kindNoScript      // the idempotent script is not loaded: load it and send again
)

// classify tells what err (a command's error, nil on success) means.
//
// Redis answers with an error code as the first word. The server's state
// (OOM under maxmemory, LOADING after a restart, BUSY with a long script,
// MISCONF when it cannot persist, READONLY on a replica, MASTERDOWN,
// TRYAGAIN, CLUSTERDOWN, max clients) refuses every write alike: outage.
// WRONGTYPE (the stream's key holds another type) and NOPERM for a key are
// the event's own: refused. NOAUTH and WRONGPASS, and NOPERM for the
// command itself, refuse the whole destination: pause. Anything that is not
// an answer (refused, reset, timed out, context done) is an outage.
func classify(err error) kind {
	if err == nil {
		return kindOK
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return kindOutage
	}
	msg := rerr.Error()
	code, rest, _ := strings.Cut(msg, " ")
	switch code {
	case "WRONGTYPE":
		return kindRefused
	case "NOPERM":
		// "this user has no permissions to access one of the keys used as
		// arguments" is the key's; "... to run the 'xadd' command" is the
		// user's.
		if strings.Contains(rest, "key") || strings.Contains(rest, "channel") {
			return kindRefused
		}
		return kindPause
	case "NOAUTH", "WRONGPASS":
		return kindPause
	case "EXECABORT":
		return kindAborted
	case "NOSCRIPT":
		return kindNoScript
	case "OOM", "LOADING", "BUSY", "MISCONF", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN",
		"NOREPLICAS", "MOVED", "ASK":
		return kindOutage
	case "ERR":
		if strings.HasPrefix(rest, "max number of clients") {
			return kindOutage
		}
	}
	return kindFailed
}

// ambiguous reports whether a transport error may have come after the
// commands reached the server (anything but a failed dial).
func ambiguous(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	var rerr redis.Error
	return !errors.As(err, &rerr)
}
