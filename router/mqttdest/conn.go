package mqttdest

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// conn keeps the destination's one MQTT connection up: it connects, waits
// for the connection to be lost, and connects again with a capped backoff,
// until closed. paho's own auto-reconnect is not used: on a reconnect it
// completes the tokens of publishes it resends as if they had been
// acknowledged, and with a clean session it leaves them pending forever.
// Here every loss ends a generation: the publishes of that generation
// that were not acknowledged before it ended count as failed (see
// MQTT.wait).
type conn struct {
	client mqtt.Client
	log    *slog.Logger
	lost   chan error // from paho's OnConnectionLost; one pending is enough
	stop   chan struct{}
	done   chan struct{}

	mu  sync.Mutex
	gen *generation

	// connecting is held (write) while connecting, and (read) by a Send
	// from its check that its generation is on to its Publish: so no
	// Send of an ended generation publishes on the next connection, where
	// its events would land ahead of those lost with the first.
	connecting sync.RWMutex
}

// generation is one connection (or one failed attempt to get one).
type generation struct {
	up    bool
	ended chan struct{} // closed when the connection is lost (up only)
	err   error         // why it is down
	auth  bool          // err is the broker refusing the credentials or client id
}

// backoff bounds the waits between connection attempts.
const (
	backoffInitial = 100 * time.Millisecond
	backoffMax     = 2 * time.Second
)

func newConn(opts *mqtt.ClientOptions, log *slog.Logger) *conn {
	c := &conn{log: log, lost: make(chan error, 1), stop: make(chan struct{}), done: make(chan struct{}),
		gen: &generation{err: errors.New("not connected yet")}}
	opts.SetAutoReconnect(false)
	opts.SetConnectRetry(false)
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		select {
		case c.lost <- err:
		default:
		}
	})
	c.client = mqtt.NewClient(opts)
	return c
}

// current is the generation now.
func (c *conn) current() *generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *conn) set(g *generation) {
	c.mu.Lock()
	old := c.gen
	c.gen = g
	c.mu.Unlock()
	if old.up {
		close(old.ended)
	}
}

// run is the connection loop; first is signalled after the first attempt.
func (c *conn) run(first chan<- struct{}) {
	defer close(c.done)
	wait := backoffInitial
	for {
		c.connecting.Lock()
		tok := c.client.Connect()
		select {
		case <-tok.Done():
		case <-c.stop:
			c.connecting.Unlock()
			return
		}
		c.connecting.Unlock()
		if err := tok.Error(); err != nil {
			auth := false
			if ct, ok := tok.(*mqtt.ConnectToken); ok {
				// 2: identifier rejected, 4: bad user name or password,
				// 5: not authorised. 1 (protocol) and 3 (unavailable) pass.
				switch ct.ReturnCode() {
				case 2, 4, 5:
					auth = true
				}
			}
			c.set(&generation{err: fmt.Errorf("cannot connect: %w", err), auth: auth})
			if first != nil {
				first <- struct{}{}
				first = nil
			}
			if auth {
				c.log.Error("mqtt broker refused the connection", "err", err)
			}
			select {
			case <-time.After(wait):
			case <-c.stop:
				return
			}
			wait = min(2*wait, backoffMax)
			continue
		}
		wait = backoffInitial
		// paho reports each connection's loss once, after its status is
		// disconnected (so Connect may be called again): nothing stale
		// can be in c.lost here.
		c.set(&generation{up: true, ended: make(chan struct{})})
		if first != nil {
			first <- struct{}{}
			first = nil
		}
		select {
		case err := <-c.lost:
			c.log.Warn("mqtt connection lost", "err", err)
			c.set(&generation{err: fmt.Errorf("connection lost: %w", err)})
		case <-c.stop:
			return
		}
	}
}

// close stops the loop and disconnects.
func (c *conn) close() {
	close(c.stop)
	<-c.done
	c.client.Disconnect(250)
	c.set(&generation{err: errors.New("closed")})
}
