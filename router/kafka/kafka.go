// Package kafka is the Kafka destination: it produces each event as one
// record with franz-go's idempotent producer (acks=all) and answers a
// batch once every record of it is acknowledged or failed.
//
// # Records
//
// The value is the stored event JSON; the key is the ordering key
// (Event.Key), so one user's events hash to one partition (Kafka's
// murmur2, as the Java client does); the timestamp is the event's
// receivedAt; headers messageId, source and type carry the event's. The
// topic is fixed or a template over {source}, {type} and {event} (see
// Config.Topic).
//
// # Order
//
// The router sends a key's next batch only once the previous one has
// completed, and Send produces a batch's records in order, so a key's
// records enter the client's per-partition buffer in log order. From there
// the idempotent producer keeps them in order: up to five produce requests
// per broker are in flight, each batch carries a sequence number, and the
// broker refuses a batch out of sequence, so a retried request can neither
// duplicate nor reorder records.
//
// What is left is a failed Send whose records are still in the client
// when Send returns. They are of two kinds:
//
//   - not yet written to a broker: produced with Send's context, they are
//     failed when it ends (the first record of a client batch decides for
//     the batch), and the client then fails every record buffered behind
//     them on that partition, so none of them is delivered later;
//   - written, with no answer yet (a stalled or cut connection): the
//     idempotent producer cannot drop them without breaking its sequence,
//     so it keeps retrying them. Send reports them Ambiguous. Anything the
//     router sends afterwards for that key (the retry of the same events,
//     or later events once they were aborted) is buffered behind them on
//     the same partition, so it can only land after them; and if they
//     finally fail, the client fails everything buffered behind them too
//     ("gapless ordering": it never fails one record and then delivers a
//     later one of the partition).
//
// So a retried batch never lands behind a later one of its key; the price
// is a duplicate when an ambiguous record did arrive (at-least-once, with
// the messageId header to deduplicate). Failing a partition's buffer
// together has a cost too: a live Send's records buffered behind records
// given up are failed with them ("failed with the records before it"),
// and are retried.
//
// One window is left: the client fails a partition's buffer while Send is
// still producing the batch (microseconds, between two Produce calls), so
// that a key's earlier record fails and its later one, produced into the
// emptied buffer, is delivered. Send then names the later one as failed
// (below) so that it arrives again after the earlier one; the consumer
// sees it twice, the first copy early. RecordRetries is bounded
// (Config.RecordRetries) so that a retriable broker error (NOT_LEADER,
// NOT_ENOUGH_REPLICAS, ...) that persists fails the records with the
// broker's own error, which Send reports, instead of a bare timeout; the
// client enforces the bound only when that is safe for the sequence.
// RecordDeliveryTimeout is left unset: Send's context (the destination's
// timeout) bounds a record's life instead, and the produce request timeout
// is kept under it so that a broker waiting for its replicas answers
// REQUEST_TIMED_OUT before the Send gives up. A topic that does not exist
// fails its records after UnknownTopicRetries metadata loads.
//
// With a template, two events of one user may go to different topics:
// Kafka orders a partition, not topics. For these and for the window
// above, Send keeps the router's rule: when an event of a key fails and a
// later one of the same key in the batch was taken, the later one is named
// as failed too (503), so that it is delivered again after the earlier
// one.
//
// # Errors
//
// Each record's outcome is classified (see classify.go): a refusal of the
// record itself (too large, invalid topic, authorization on a templated
// topic, a missing templated topic) is named in Result.Rejected with a
// 4xx status and the broker's message while the others are taken;
// retriable broker errors, unreachable brokers and timeouts make the batch
// (or the records concerned) an outage; SASL authentication failures,
// cluster authorization failures, and a missing or forbidden fixed topic
// pause the destination (Result.Pause).
package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/sluice-cdi/sluice/router"
)

// Config configures a Kafka destination.
type Config struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string
	// Topic is a topic name, or a template over {source}, {type} and
	// {event} (a track event's name, a page or screen's name, else the
	// type), e.g. "sluice.{source}.{type}". Placeholder values are
	// sanitized to legal topic characters (others become '_'). Required.
	Topic string
	// AutoCreateTopics asks the brokers to create a missing topic (if
	// they allow it: auto.create.topics.enable) instead of failing.
	AutoCreateTopics bool
	// ClientID names the client to the brokers. Default "sluice".
	ClientID string
	// Compression is zstd (at its fastest level), lz4, snappy, gzip or
	// none. Default zstd.
	Compression string
	// Linger is how long a partition waits for more records before a
	// produce request. Default 1ms: a Send waits for its records' acks,
	// so linger is latency; many Sends in flight fill the batches.
	Linger time.Duration
	// RecordBytesMax bounds a record batch (ProducerBatchMaxBytes), and so
	// a record: a larger record is refused alone (413) by the client. Keep
	// it at or below the topics' max.message.bytes. Default 1,000,012.
	RecordBytesMax int32
	// BufferBytesMax bounds the bytes buffered in the client; a Send waits
	// for room. Default 64 MiB.
	BufferBytesMax int64
	// RecordRetries bounds the tries of a record on retriable broker
	// errors (see the package doc). Default 10.
	RecordRetries int
	// Timeout is the destination's timeout (of a Send); the produce
	// request timeout is kept under it. Default 30s.
	Timeout time.Duration
	// SASL, if set, authenticates every connection.
	SASL *SASL
	// TLS, if set, encrypts every connection.
	TLS *tls.Config
	// Logger receives the client's warnings. Default slog.Default.
	Logger *slog.Logger
}

// SASL is a SASL mechanism and its credentials.
type SASL struct {
	// Mechanism is plain, scram-sha-256 or scram-sha-512.
	Mechanism string
	Username  string
	Password  string
}

// Compressions are the Compression values.
var Compressions = []string{"zstd", "lz4", "snappy", "gzip", "none"}

// SASLMechanisms are the SASL.Mechanism values.
var SASLMechanisms = []string{"plain", "scram-sha-256", "scram-sha-512"}

// Kafka produces events to Kafka. Safe for concurrent use.
type Kafka struct {
	cl    *kgo.Client
	topic topicTemplate
	conns connErrors
}

// New checks the config and starts the client; it connects lazily, so New
// succeeds with every broker down.
func New(cfg Config) (*Kafka, error) {
	opts, topic, err := cfg.options()
	if err != nil {
		return nil, err
	}
	k := &Kafka{topic: topic}
	if k.cl, err = kgo.NewClient(append(opts, kgo.WithHooks(&k.conns))...); err != nil {
		return nil, fmt.Errorf("kafka: cannot create the client: %w", err)
	}
	return k, nil
}

// options are the client's options for cfg: every destination's client
// and the benchmark's ceiling use these.
func (cfg Config) options() ([]kgo.Opt, topicTemplate, error) {
	topic, err := parseTopic(cfg.Topic)
	if err != nil {
		return nil, topic, fmt.Errorf("kafka: %w", err)
	}
	if len(cfg.Brokers) == 0 {
		return nil, topic, errors.New("kafka: no brokers")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "sluice"
	}
	if cfg.Linger == 0 {
		cfg.Linger = 1 * time.Millisecond
	}
	if cfg.RecordBytesMax == 0 {
		cfg.RecordBytesMax = 1_000_012
	}
	if cfg.RecordBytesMax < 512 || cfg.RecordBytesMax > 1<<30 {
		return nil, topic, fmt.Errorf("kafka: record bytes max %d is outside [512, 1 GiB]", cfg.RecordBytesMax)
	}
	if cfg.BufferBytesMax == 0 {
		cfg.BufferBytesMax = 64 << 20
	}
	if cfg.BufferBytesMax < int64(cfg.RecordBytesMax) {
		return nil, topic, fmt.Errorf("kafka: buffer bytes max %d is below record bytes max %d", cfg.BufferBytesMax, cfg.RecordBytesMax)
	}
	if cfg.RecordRetries == 0 {
		cfg.RecordRetries = 10
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	codec, err := compression(cfg.Compression)
	if err != nil {
		return nil, topic, err
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()), // and idempotent writes: the client's default
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerLinger(cfg.Linger),
		kgo.ProducerBatchMaxBytes(cfg.RecordBytesMax),
		kgo.MaxBufferedBytes(int(cfg.BufferBytesMax)),
		kgo.MaxBufferedRecords(1 << 20), // bytes bound the buffer
		kgo.RecordRetries(cfg.RecordRetries),
		kgo.UnknownTopicRetries(3),
		kgo.ProduceRequestTimeout(min(10*time.Second, max(cfg.Timeout/3, 100*time.Millisecond))),
		kgo.MetadataMinAge(time.Second),
		kgo.WithLogger(slogger{cfg.Logger.With("component", "kafka")}),
	}
	if cfg.AutoCreateTopics {
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	if cfg.SASL != nil {
		m, err := mechanism(cfg.SASL)
		if err != nil {
			return nil, topic, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	if cfg.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(cfg.TLS))
	}
	return opts, topic, nil
}

func compression(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "", "zstd":
		return kgo.ZstdCompression().WithLevel(1), nil // zstd.SpeedFastest
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "none":
		return kgo.NoCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("kafka: compression %q: want one of %s", name, strings.Join(Compressions, ", "))
}

func mechanism(s *SASL) (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "plain":
		return plain.Auth{User: s.Username, Pass: s.Password}.AsMechanism(), nil
	case "scram-sha-256":
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("kafka: sasl mechanism %q: want one of %s", s.Mechanism, strings.Join(SASLMechanisms, ", "))
}

// Send produces the events, one record each, and waits until each is
// acknowledged or failed, or ctx ends (see the package doc for what
// happens to records still in the client then).
func (k *Kafka) Send(ctx context.Context, events []router.Event) router.Result {
	b := newBatch(len(events))
	recs := b.fill(events, k)
	for i := range recs {
		k.cl.Produce(ctx, &recs[i], b.promise(i))
	}
	select {
	case <-b.done:
	case <-ctx.Done():
	case <-k.conns.authFailed(): // the client would retry until ctx ends
	}
	return b.result(events, k.topic.fixed, k.conns.last(), ctx.Err())
}

// Close fails what is still buffered and closes the connections.
func (k *Kafka) Close() error {
	k.cl.Close()
	return nil
}

// slogger passes the client's log lines at warning and above to slog.
type slogger struct{ log *slog.Logger }

func (slogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l slogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	l.log.Log(context.Background(), lv, msg, keyvals...)
}
