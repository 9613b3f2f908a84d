package mqttdest

import (
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router/internal/drainbench"
)

// BenchmarkMQTTDrain: QoS 1 publishes to one topic of the local
// Mosquitto; the ceiling is the same paho client publishing the same
// payloads at the same QoS.
func BenchmarkMQTTDrain(b *testing.B) {
	for _, qos := range []byte{1, 2} {
		b.Run(fmt.Sprintf("qos=%d", qos), func(b *testing.B) {
			addr := brokerAddr()
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				b.Skipf("no MQTT broker at %s: %v", addr, err)
			}
			c.Close()
			topic := fmt.Sprintf("sluicebench/%d", time.Now().UnixNano())
			d, err := New(Config{Broker: "tcp://" + addr, Topic: topic + "/{type}", QoS: qos,
				ClientID: fmt.Sprintf("sluicebench-%d", time.Now().UnixNano()), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			client := d.conn.client
			drainbench.Compare(b, d, func(batch []engine.Record) error {
				toks := make([]mqtt.Token, len(batch))
				for i, r := range batch {
					toks[i] = client.Publish(topic+"/ceiling", qos, false, r.Payload)
				}
				for _, t := range toks {
					if t.Wait(); t.Error() != nil {
						return t.Error()
					}
				}
				return nil
			})
		})
	}
}
