package natsdest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStreamNotFound is a stream that is missing while create_stream is
// off (or no stream takes the subjects): the destination pauses.
var ErrStreamNotFound = errors.New("stream not found")

// streamCheck remembers that the configured stream was seen (or made):
// until it is, every Send looks it up first.
type streamCheck struct {
	ok atomic.Bool
}

// ensure makes sure the configured stream exists, creating it when the
// config says so. It returns ErrStreamNotFound (wrapped) when it is
// missing and may not be created; other errors are the server's (an
// outage: JetStream unavailable, no leader yet).
func (d *Dest) ensureStream(ctx context.Context, s *session) error {
	if d.cfg.Stream == "" || d.stream.ok.Load() {
		return nil
	}
	_, err := s.js.Stream(ctx, d.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) && d.cfg.CreateStream != nil {
		err = d.createStream(ctx, s)
	}
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("%w: JetStream stream %q (create_stream is off)", ErrStreamNotFound, d.cfg.Stream)
	case jetStreamOff(s, err):
		return fmt.Errorf("%w: JetStream is not enabled: %w", ErrStreamNotFound, err)
	case err != nil:
		return fmt.Errorf("cannot look up stream %q: %w", d.cfg.Stream, err)
	}
	d.stream.ok.Store(true)
	return nil
}

// createStream creates the configured stream; one that appeared meanwhile
// (another Sluice, another Send) will do.
func (d *Dest) createStream(ctx context.Context, s *session) error {
	c := d.cfg.CreateStream
	sc := jetstream.StreamConfig{
		Name:       d.cfg.Stream,
		Subjects:   c.Subjects,
		Replicas:   c.Replicas,
		Duplicates: c.DuplicateWindow,
		MaxMsgSize: c.MaxMsgSize,
		Storage:    jetstream.FileStorage,
	}
	if len(sc.Subjects) == 0 {
		sc.Subjects = []string{d.tmpl.Wildcard()}
	}
	if c.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	_, err := s.js.CreateStream(ctx, sc)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot create stream %q: %w", d.cfg.Stream, err)
	}
	d.log.Info("created JetStream stream", "stream", d.cfg.Stream, "subjects", sc.Subjects, "replicas", sc.Replicas)
	return nil
}

// noResponders says why a publish on subject had no responders: no
// stream takes it (errNoStreamForSubject: that event is refused), the
// stream is gone (ErrStreamNotFound: the destination pauses, unless it
// may create it), or the stream is there and has no leader (nil: an
// outage).
func (d *Dest) noResponders(ctx context.Context, s *session, subject string) error {
	if d.cfg.Stream == "" {
		name, err := s.js.StreamNameBySubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound) || err == nil && name == "":
			return fmt.Errorf("%w: no JetStream stream takes subject %q", ErrStreamNotFound, subject)
		case jetStreamOff(s, err):
			return fmt.Errorf("%w: JetStream is not enabled: %w", ErrStreamNotFound, err)
		case err != nil:
			return nil // JetStream itself does not answer: an outage
		}
		return nil
	}
	st, err := s.js.Stream(ctx, d.cfg.Stream)
	switch {
	case jetStreamOff(s, err):
		return fmt.Errorf("%w: JetStream is not enabled: %w", ErrStreamNotFound, err)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		d.stream.ok.Store(false)
		if d.cfg.CreateStream == nil {
			return fmt.Errorf("%w: JetStream stream %q (create_stream is off)", ErrStreamNotFound, d.cfg.Stream)
		}
		if err := d.createStream(ctx, s); err != nil {
			d.log.Warn("cannot create the missing stream", "err", err)
		}
		return nil // an outage: the events go again into the new stream
	case err != nil:
		return nil
	}
	subjects := st.CachedInfo().Config.Subjects
	if !slices.ContainsFunc(subjects, func(f string) bool { return subjectMatches(f, subject) }) {
		return fmt.Errorf("%w: stream %q takes %v, not subject %q", errNoStreamForSubject, d.cfg.Stream, subjects, subject)
	}
	return nil
}

// errNoStreamForSubject is a subject outside the configured stream's.
var errNoStreamForSubject = errors.New("subject not in the stream")

// jetStreamOff reports that err, of a JetStream API request, says the
// server or account has no JetStream: nothing can be stored until an
// operator turns it on (the destination pauses). An API request nobody
// answers means that only when the server says so in its INFO; otherwise
// it is a cluster without a meta leader yet (an outage).
func jetStreamOff(s *session, err error) bool {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return true
	}
	if errors.Is(err, nats.ErrNoResponders) {
		on, _ := s.nc.ConnectedServerJetStream()
		return !on
	}
	return false
}
