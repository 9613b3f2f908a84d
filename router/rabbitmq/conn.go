package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// link is one AMQP connection and its pool of confirm-mode channels. A
// channel goes back to the pool only when every message published on it
// has been confirmed, so a Send that takes one finds it quiet: no confirm,
// return or close of an earlier Send can reach it.
type link struct {
	serial int // 1 for the destination's first connection, 2 for the next, ...
	conn   *amqp.Connection
	idle   chan *channel // channels ready for a Send
	slots  chan struct{} // one per open channel: cap is Config.Channels
	done   chan struct{} // closed when the connection is gone
	err    error         // why it is gone; written before done is closed
	// blocked is the broker's reason while it blocks the connection
	// (connection.blocked: a memory or disk alarm), nil otherwise.
	blocked atomic.Pointer[string]
	// blockedC is closed while the connection is blocked, so that a Send
	// waiting for confirms stops waiting; a new one replaces it when the
	// broker unblocks.
	bmu      sync.Mutex
	blockedC chan struct{}
}

// blockedSignal is closed when (or while) the broker blocks publishing.
func (l *link) blockedSignal() <-chan struct{} {
	l.bmu.Lock()
	defer l.bmu.Unlock()
	return l.blockedC
}

// setBlocked records the broker's blocking (reason) or unblocking (nil).
func (l *link) setBlocked(reason *string) {
	l.bmu.Lock()
	defer l.bmu.Unlock()
	l.blocked.Store(reason)
	select {
	case <-l.blockedC:
		if reason == nil {
			l.blockedC = make(chan struct{})
		}
	default:
		if reason != nil {
			close(l.blockedC)
		}
	}
}

// channel is one confirm-mode channel with its notifications. A channel the
// broker closed is never used again.
type channel struct {
	ch      *amqp.Channel
	returns chan amqp.Return // mandatory messages the broker could not route
	closes  chan *amqp.Error // the broker's reason, when it closes the channel
}

// returnsMax is the buffer of a channel's returns. The library drops a
// return it cannot hand over within 5 s, so Send drains them after every
// publish and while it waits for confirms; the buffer only has to cover a
// goroutine descheduled meanwhile.
const returnsMax = 1024

// errDialPause marks a dial error that no retry will cure: credentials
// refused, the vhost refused, an exchange that cannot be declared as
// configured. The destination pauses.
var errDialPause = errors.New("the broker refused the destination's setup")

// dial opens a connection, declares the exchange if configured and starts
// watching for the connection's end and for blocking.
func (r *RabbitMQ) dial(ctx context.Context) (*link, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(r.cfg.Timeout)
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(r.cfg.Name)
	conn, err := amqp.DialConfig(r.cfg.URL, amqp.Config{
		Heartbeat:  10 * time.Second,
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Deadline: deadline}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake's deadline; the library clears it once open.
			if err := c.SetDeadline(deadline); err != nil {
				c.Close()
				return nil, err
			}
			return &writeDeadlineConn{Conn: c, timeout: r.cfg.Timeout}, nil
		},
	})
	if err != nil {
		return nil, classifyDial(err)
	}
	l := &link{conn: conn, idle: make(chan *channel, r.cfg.Channels), slots: make(chan struct{}, r.cfg.Channels),
		done: make(chan struct{}), blockedC: make(chan struct{})}
	if r.cfg.Declare != nil {
		if err := r.declare(conn); err != nil {
			conn.Close()
			return nil, err
		}
	}
	closes := conn.NotifyClose(make(chan *amqp.Error, 1))
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	go r.watch(l, closes, blocks)
	r.log.Info("connected to rabbitmq", "server", conn.RemoteAddr().String())
	return l, nil
}

// classifyDial wraps a dial error: a refusal of the credentials or the
// vhost pauses the destination; anything else (refused, reset, timeout) is
// an outage.
func classifyDial(err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && (ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed) {
		return fmt.Errorf("%w: cannot connect: %v", errDialPause, err)
	}
	return fmt.Errorf("cannot connect: %w", err)
}

// declare declares the configured exchange. A refusal (the exchange
// exists with another type or durability, or the user may not configure
// it) pauses the destination.
func (r *RabbitMQ) declare(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("cannot open a channel to declare exchange %q: %w", r.cfg.Exchange, err)
	}
	d := r.cfg.Declare
	if err := ch.ExchangeDeclare(r.cfg.Exchange, d.Type, d.Durable, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Server && !conn.IsClosed() {
			return fmt.Errorf("%w: cannot declare exchange %q (type %s, durable %v): %v",
				errDialPause, r.cfg.Exchange, d.Type, d.Durable, err)
		}
		return fmt.Errorf("cannot declare exchange %q: %w", r.cfg.Exchange, err)
	}
	ch.Close()
	return nil
}

// watch follows a connection until it ends: blocking and unblocking, then
// the reason it closed.
func (r *RabbitMQ) watch(l *link, closes chan *amqp.Error, blocks chan amqp.Blocking) {
	for {
		select {
		case b, ok := <-blocks:
			if !ok {
				blocks = nil
				continue
			}
			if b.Active {
				reason := b.Reason
				l.setBlocked(&reason)
				r.log.Warn("rabbitmq blocks publishing", "reason", reason)
			} else {
				l.setBlocked(nil)
				r.log.Info("rabbitmq unblocked publishing")
			}
		case e := <-closes:
			l.err = errors.New("connection closed")
			if e != nil {
				l.err = fmt.Errorf("connection lost: %w", e)
				r.log.Warn("rabbitmq connection lost", "err", e)
			}
			close(l.done)
			return
		}
	}
}

// lost reports whether the connection is gone.
func (l *link) lost() bool {
	select {
	case <-l.done:
		return true
	default:
		return l.conn.IsClosed()
	}
}

// acquire takes a channel for a Send: an idle one, else a new one while
// fewer than the pool's size are open, else the first one given back.
func (l *link) acquire(ctx context.Context) (*channel, error) {
	for {
		var c *channel
		select {
		case c = <-l.idle:
		default:
			select {
			case c = <-l.idle:
			case l.slots <- struct{}{}:
				nc, err := l.open()
				if err != nil {
					<-l.slots
					return nil, err
				}
				return nc, nil
			case <-l.done:
				return nil, l.err
			case <-ctx.Done():
				return nil, fmt.Errorf("no channel free: %w", ctx.Err())
			}
		}
		if !c.ch.IsClosed() {
			return c, nil
		}
		<-l.slots
	}
}

// open opens a confirm-mode channel.
func (l *link) open() (*channel, error) {
	ch, err := l.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("cannot open a channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("cannot put a channel in confirm mode: %w", err)
	}
	return &channel{ch: ch, returns: ch.NotifyReturn(make(chan amqp.Return, returnsMax)),
		closes: ch.NotifyClose(make(chan *amqp.Error, 1))}, nil
}

// release gives a channel back: to the pool when quiet (every message
// published on it confirmed) and open, else it is closed, never reused.
func (l *link) release(c *channel, quiet bool) {
	if quiet && !c.ch.IsClosed() {
		l.idle <- c // never blocks: at most cap(slots) channels exist
		return
	}
	go func() {
		c.ch.Close() // waits for the broker's close-ok, or the connection's end
		<-l.slots
	}()
}

// writeDeadlineConn bounds every write: a broker that stops reading (it
// blocks publishers during a resource alarm) fails the connection after
// timeout instead of hanging a Send that cannot be cancelled (the
// library's writes do not take a context).
type writeDeadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *writeDeadlineConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
