// Package redisdest is the Redis Streams destination: each event is one
// XADD to a stream named by a template, with the event's JSON and its
// messageId, type and source as the entry's fields:
//
//	XADD <stream> [MAXLEN ~ n] * event <json> message_id <id> type <type> source <source>
//
// A Send is one MULTI/EXEC transaction sent as one pipeline (one round
// trip), with one result per event. The transaction is what keeps each
// user's order: Redis runs its commands back to back, so the server's state
// cannot change between two of them. Either nothing ran (the connection
// broke before EXEC, or a command was refused when queued: OOM, LOADING,
// BUSY, NOPERM for a key; EXECABORT) or every command ran and each has its
// own answer, where the only per-command failures are refusals for good
// (WRONGTYPE). So no event lands ahead of an earlier one of its user that
// will be retried. (For an answer this package does not know, the later
// events of the same user in the batch are sent again behind it, as a
// duplicate rather than out of order.)
//
// Delivery is at least once: Redis has no duplicate window, and a batch
// whose answer was lost (a timeout, a reset after EXEC) is sent again. With
// Idempotent, each XADD runs in a small Lua script that first checks a
// per-messageId key (SET ... PX window after the XADD) and skips a messageId
// seen within the window, so such a resend adds nothing.
package redisdest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-cdi/sluice/router"
	"github.com/sluice-cdi/sluice/router/template"
)

// Config configures a Redis Streams destination.
type Config struct {
	// Addr is the server's host:port. Default 127.0.0.1:6379.
	Addr string
	// Username and Password authenticate (AUTH); Username empty means the
	// default user.
	Username, Password string
	// DB is the database number. Default 0.
	DB int
	// TLS, if set, connects with TLS.
	TLS *tls.Config
	// Stream names the stream of each event: a template over {source},
	// {type} and {event} (a track event's name; empty for other types).
	// Required.
	Stream string
	// MaxLen, if positive, trims each stream to about this many entries
	// (XADD MAXLEN ~). Default 0: no trimming.
	MaxLen int64
	// Idempotent skips a messageId already added within DedupWindow (see
	// the package doc). Default off.
	Idempotent bool
	// DedupWindow is how long a messageId is remembered with Idempotent.
	// Each costs a key of about 100 bytes in Redis for that long. Default
	// 10m.
	DedupWindow time.Duration
	// DedupPrefix starts each remembered messageId's key:
	// <prefix><stream>:<source>:<messageId>. Default "sluice:seen:".
	DedupPrefix string
	// Conns bounds the connections to the server. Default 64 (the router's
	// default concurrency).
	Conns int
	// Timeout bounds a Send when the caller's context has no deadline, and
	// dialing. Default 30s.
	Timeout time.Duration
	// ClientName is set on each connection (CLIENT SETNAME). Default
	// "sluice".
	ClientName string
}

// Redis delivers events to Redis Streams. Safe for concurrent use.
type Redis struct {
	cfg    Config
	stream template.Template
	client *redis.Client
	script *redis.Script // the idempotent XADD; nil without Idempotent
	bufs   sync.Pool     // of *sendBufs
	dups   atomic.Uint64
}

// New checks the config and returns the destination. It does not connect:
// connections are made as Sends need them.
func New(cfg Config) (*Redis, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:6379"
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("redis: addr %q: %w", cfg.Addr, err)
	}
	if cfg.Stream == "" {
		return nil, errors.New("redis: a stream is required")
	}
	st, err := parseTemplate(cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("redis: stream: %w", err)
	}
	if cfg.MaxLen < 0 {
		return nil, fmt.Errorf("redis: max_len %d is negative", cfg.MaxLen)
	}
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = 10 * time.Minute
	}
	if cfg.DedupWindow < time.Millisecond {
		return nil, fmt.Errorf("redis: dedup_window %v is under a millisecond", cfg.DedupWindow)
	}
	if cfg.DedupPrefix == "" {
		cfg.DedupPrefix = "sluice:seen:"
	}
	if cfg.Conns == 0 {
		cfg.Conns = 64
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.ClientName == "" {
		cfg.ClientName = "sluice"
	}
	r := &Redis{cfg: cfg, stream: st}
	r.client = redis.NewClient(&redis.Options{
		Addr:       cfg.Addr,
		Username:   cfg.Username,
		Password:   cfg.Password,
		DB:         cfg.DB,
		TLSConfig:  cfg.TLS,
		ClientName: cfg.ClientName,
		// Sluice retries, in order, through its router: a client that
		// resent a pipeline by itself could reorder or duplicate it.
		MaxRetries:            -1,
		DialTimeout:           min(cfg.Timeout, 5*time.Second),
		ReadTimeout:           cfg.Timeout,
		WriteTimeout:          cfg.Timeout,
		ContextTimeoutEnabled: true, // the router's destination timeout bounds each Send
		PoolSize:              cfg.Conns,
		PoolTimeout:           cfg.Timeout,
		PipelinePoolSize:      -1, // one pool, bounded by Conns
		DisableIdentity:       true,
	})
	if cfg.Idempotent {
		r.script = redis.NewScript(idempotentXAdd)
	}
	return r, nil
}

// idempotentXAdd adds the entry unless its messageId's key exists, then
// sets that key for the window. KEYS: the messageId's key, the stream.
// ARGV: window in ms, max_len (0: none), then the entry's field-value
// pairs. It returns the entry's id, or 0 for a messageId seen.
//
// The key is set after the XADD, so a refused XADD (WRONGTYPE) leaves no
// key behind that would make a retry skip the event. A script's error
// keeps Redis's code (WRONGTYPE ... script: ...), so it classifies alike.
const idempotentXAdd = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local args = {KEYS[2]}
if ARGV[2] ~= '0' then
  args[#args+1] = 'MAXLEN'; args[#args+1] = '~'; args[#args+1] = ARGV[2]
end
args[#args+1] = '*'
for i = 3, #ARGV do args[#args+1] = ARGV[i] end
local id = redis.call('XADD', unpack(args))
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return id
`

// Duplicates is how many events the idempotent mode skipped as seen.
func (r *Redis) Duplicates() uint64 { return r.dups.Load() }

// sendBufs are one Send's reused buffers. The byte slices given to go-redis
// are written to the connection during Exec and not kept after it.
type sendBufs struct {
	names []byte // every event's stream name, back to back
	keys  []byte // every event's dedup key (Idempotent)
	ends  []int  // end of event i's name in names, and of its key in keys
	kends []int
	state []outcome
}

// outcome is one event's fate in a Send.
type outcome struct {
	kind kind
	err  error
}

// Send adds the events in one transaction (see the package doc).
func (r *Redis) Send(ctx context.Context, events []router.Event) router.Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.Timeout)
		defer cancel()
	}
	b, _ := r.bufs.Get().(*sendBufs)
	if b == nil {
		b = new(sendBufs)
	}
	defer r.bufs.Put(b)
	r.names(b, events)
	b.state = append(b.state[:0], make([]outcome, len(events))...)
	for i := range b.state {
		b.state[i].kind = kindAborted // not sent yet
	}
	// A round sends every event not yet decided. Another round follows
	// only when the last one ran nothing it did not answer for: an
	// EXECABORT caused by an event refused at queueing (NOPERM), or a
	// script that was not loaded.
	for round := 0; round < 3; round++ {
		again, whole := r.round(ctx, b, events)
		if whole != nil {
			return *whole
		}
		if !again {
			break
		}
	}
	return result(b, events)
}

// names fills b with each event's stream name (and dedup key).
func (r *Redis) names(b *sendBufs, events []router.Event) {
	b.names, b.keys, b.ends, b.kends = b.names[:0], b.keys[:0], b.ends[:0], b.kends[:0]
	for i := range events {
		start := len(b.names)
		b.names = r.stream.Append(b.names, &events[i], nil)
		b.ends = append(b.ends, len(b.names))
		if r.script != nil {
			b.keys = append(b.keys, r.cfg.DedupPrefix...)
			b.keys = append(b.keys, b.names[start:]...)
			b.keys = append(b.keys, ':')
			b.keys = append(b.keys, events[i].Source...)
			b.keys = append(b.keys, ':')
			b.keys = append(b.keys, events[i].MessageID...)
			b.kends = append(b.kends, len(b.keys))
		}
	}
}

// span is the i-th of the back-to-back slices of buf ending at ends.
func span(buf []byte, ends []int, i int) []byte {
	start := 0
	if i > 0 {
		start = ends[i-1]
	}
	return buf[start:ends[i]]
}

// round sends the events still undecided (kindAborted, kindNoScript) as one
// transaction and records each one's outcome. It reports whether another
// round should follow; whole is set when the round's answer is for the
// whole Send (a pause, or an outage with no answer per event).
func (r *Redis) round(ctx context.Context, b *sendBufs, events []router.Event) (again bool, whole *router.Result) {
	pipe := r.client.TxPipeline()
	idx := make([]int, 0, len(events))
	cmds := make([]redis.Cmder, 0, len(events))
	noScript := false
	for i := range events {
		if k := b.state[i].kind; k != kindAborted && k != kindNoScript {
			continue
		}
		noScript = noScript || b.state[i].kind == kindNoScript
		idx = append(idx, i)
		cmds = append(cmds, r.queue(ctx, pipe, b, events, i))
	}
	if len(cmds) == 0 {
		return false, nil
	}
	if noScript {
		if err := r.script.Load(ctx, r.client).Err(); err != nil {
			return false, r.whole(err)
		}
	}
	_, execErr := pipe.Exec(ctx)
	if execErr != nil && !anyErr(cmds) {
		// Failed before any command had an answer (a connection that
		// could not be set up: dial, AUTH): go-redis leaves the commands
		// without it.
		return false, r.whole(execErr)
	}
	refusedQueued, unrun := false, false
	for j, cmd := range cmds {
		i := idx[j]
		err := cmd.Err()
		k := classify(err)
		switch k {
		case kindPause:
			return false, r.whole(err)
		case kindOutage:
			if !isRedisErr(err) {
				// Not an answer: the whole transaction ran or not, unknown.
				return false, r.whole(err)
			}
		case kindRefused:
			refusedQueued = refusedQueued || err != nil
		case kindAborted, kindNoScript:
			unrun = true
		case kindOK:
			if r.script != nil {
				if n, isInt := cmd.(*redis.Cmd).Val().(int64); isInt && n == 0 {
					r.dups.Add(1)
				}
			}
		}
		b.state[i] = outcome{kind: k, err: err}
	}
	if execErr != nil && !isRedisErr(execErr) {
		return false, r.whole(execErr)
	}
	// Unrun commands are retried in this Send only when what stopped the
	// transaction was settled here: a refused event or a missing script.
	return unrun && (refusedQueued || noScriptIn(b)), nil
}

// queue adds event i's command to pipe.
func (r *Redis) queue(ctx context.Context, pipe redis.Pipeliner, b *sendBufs, events []router.Event, i int) redis.Cmder {
	ev := &events[i]
	name := span(b.names, b.ends, i)
	if r.script == nil {
		args := &redis.XAddArgs{
			Stream: string(name),
			MaxLen: r.cfg.MaxLen,
			Approx: r.cfg.MaxLen > 0,
			Values: []any{"event", ev.Payload, "message_id", ev.MessageID, "type", ev.Type, "source", ev.Source},
		}
		return pipe.XAdd(ctx, args)
	}
	keys := []string{string(span(b.keys, b.kends, i)), string(name)}
	return r.script.EvalSha(ctx, pipe, keys,
		r.cfg.DedupWindow.Milliseconds(), strconv.FormatInt(r.cfg.MaxLen, 10),
		"event", ev.Payload, "message_id", ev.MessageID, "type", ev.Type, "source", ev.Source)
}

func anyErr(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if c.Err() != nil {
			return true
		}
	}
	return false
}

func noScriptIn(b *sendBufs) bool {
	for _, o := range b.state {
		if o.kind == kindNoScript {
			return true
		}
	}
	return false
}

func isRedisErr(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr)
}

// whole is the result of a Send that failed as a whole with err.
func (r *Redis) whole(err error) *router.Result {
	res := &router.Result{Err: fmt.Errorf("redis %s: %w", r.cfg.Addr, err)}
	switch classify(err) {
	case kindPause:
		res.Pause = true
	case kindOutage:
		res.Ambiguous = ambiguous(err)
	}
	return res
}

// Close closes the connections.
func (r *Redis) Close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("redis: cannot close: %w", err)
	}
	return nil
}
