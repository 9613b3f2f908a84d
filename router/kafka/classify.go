package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// class is what a record's answer means for its event.
type class int

const (
	classOK      class = iota + 1
	classRefused       // the broker refused this record: aborted with its message
	classRetry         // not delivered now (outage): retried
	classPause         // the destination can take nothing until an operator acts
)

// outcome is one record's classified answer.
type outcome struct {
	class     class
	status    int   // classRefused: the HTTP-like status
	err       error // the answer
	ambiguous bool  // classRetry: the record may have been written
}

// errNoAnswer stands for a record the client had not answered when Send
// returned: it may still be written.
var errNoAnswer = errors.New("no answer from the brokers before the timeout")

// errBehindFailed is a record taken after a failed one of its key.
var errBehindFailed = errors.New("taken after an earlier event of the same key failed; sent again to keep its order")

func pending() outcome { return outcome{class: classRetry, err: errNoAnswer, ambiguous: true} }

// classify reads one record's answer. fixed is true when the destination
// has one topic: then a missing or forbidden topic stops everything
// (pause), where with a template it concerns only the events it names.
func classify(err error, fixed bool) outcome {
	refused := func(status int) outcome { return outcome{class: classRefused, status: status, err: err} }
	switch {
	case err == nil:
		return outcome{class: classOK}

	// The record's own fault.
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		return refused(413)
	case errors.Is(err, kerr.InvalidTopicException), errors.Is(err, kerr.InvalidRecord),
		errors.Is(err, kerr.InvalidTimestamp), errors.Is(err, kerr.PolicyViolation):
		return refused(400)
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		if fixed {
			return outcome{class: classPause, err: err}
		}
		return refused(403)
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		if fixed {
			return outcome{class: classPause, err: err}
		}
		return refused(404)

	// The whole destination's: credentials, permissions, settings.
	case isAuthErr(err), errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.InvalidRequiredAcks):
		return outcome{class: classPause, err: err}

	// Outages: not written, retried.
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client fails a record on its context only while it is safe
		// to: never written, or answered.
		return outcome{class: classRetry, err: err}
	case errors.Is(err, kerr.RequestTimedOut), errors.Is(err, kerr.NotEnoughReplicasAfterAppend),
		errors.Is(err, kgo.ErrRecordTimeout), errors.Is(err, kgo.ErrRecordRetries),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isTimeout(err):
		// Possibly written before the answer was lost (or before a
		// retry that failed): a duplicate may follow.
		return outcome{class: classRetry, err: err, ambiguous: true}
	}
	// Everything else (leader changes, not enough replicas, unreachable
	// brokers, unknown server errors): an outage. Retrying loses nothing;
	// an event that keeps failing while others pass is aborted by the
	// router in the end.
	return outcome{class: classRetry, err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// pauseErr says why the destination pauses, and what to do.
func pauseErr(err error, topic, fixed string) error {
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("kafka: topic %s does not exist (create it, or set auto_create_topics with brokers that allow it, then resume): %w", fixed, err)
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		return fmt.Errorf("kafka: not allowed to write to topic %s (grant WRITE on it, then resume): %w", fixed, err)
	case isAuthErr(err):
		return fmt.Errorf("kafka: authentication failed (check the SASL credentials and mechanism, or the TLS certificates, then resume): %w", err)
	case errors.Is(err, kerr.ClusterAuthorizationFailed):
		return fmt.Errorf("kafka: cluster authorization failed (idempotent writes need IDEMPOTENT_WRITE on the cluster before Kafka 3.0), then resume: %w", err)
	}
	return fmt.Errorf("kafka: topic %s: %w", topic, err)
}

// isAuthErr reports whether a connection failed on credentials or
// certificates: no retry can fix that.
func isAuthErr(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
	)
	return errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.IllegalSaslState) ||
		errors.Is(err, kerr.UnsupportedSaslMechanism) || errors.As(err, &unknownAuthority) ||
		errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

// connErrors remembers the latest failed connection to a broker until one
// succeeds (a kgo.HookBrokerConnect), and tells Sends when it failed on
// credentials.
type connErrors struct {
	mu       sync.Mutex
	err      error
	auth     chan struct{} // closed while err is an authentication failure
	authDone bool          // auth is closed
}

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (c *connErrors) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		err = fmt.Errorf("broker %s:%d: %w", meta.Host, meta.Port, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	switch {
	case err != nil && isAuthErr(err) && !c.authDone:
		if c.auth == nil {
			c.auth = make(chan struct{})
		}
		close(c.auth)
		c.authDone = true
	case err == nil && c.authDone:
		c.auth, c.authDone = nil, false
	}
}

// last is the latest connection error, nil after a success.
func (c *connErrors) last() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// authFailed is closed once a connection fails on credentials (until one
// succeeds again).
func (c *connErrors) authFailed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.auth == nil {
		c.auth = make(chan struct{})
	}
	return c.auth
}
