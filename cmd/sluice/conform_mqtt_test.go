package main

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// mqttTarget is the conformance suite's MQTT service: the real Mosquitto on
// 127.0.0.1:1883, a topic per run ("sluiceconf/<id>/<event>"), and a paho
// subscriber connected straight to the broker (not through the suite's
// proxy) that keeps every message in arrival order. MQTT 3.1.1 has no
// per-message refusal and no way to ask a client to slow down: no poison
// and no throttle phase (see router/mqttdest's package doc).
type mqttTarget struct {
	mu   sync.Mutex
	held map[string][]conformEvent // by run id
}

const mqttConformAddr = "127.0.0.1:1883"

func newMQTTTarget(t *testing.T) conformTarget {
	c, err := net.DialTimeout("tcp", mqttConformAddr, time.Second)
	if err != nil {
		t.Skipf("no MQTT broker at %s: %v", mqttConformAddr, err)
	}
	c.Close()
	return &mqttTarget{held: map[string][]conformEvent{}}
}

func (m *mqttTarget) upstream(*testing.T) string { return mqttConformAddr }

// config subscribes to the run's topics before sluice publishes anything.
func (m *mqttTarget) config(t *testing.T, id, addr string) string {
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + mqttConformAddr).SetClientID("sluiceconf-sub-" + id).
		SetOrderMatters(true)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber cannot connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe("sluiceconf/"+id+"/#", 1, func(_ mqtt.Client, msg mqtt.Message) {
		var ev webhookEvent
		if json.Unmarshal(msg.Payload(), &ev) != nil {
			ev.MessageID = "not JSON: " + string(msg.Payload())
		}
		m.mu.Lock()
		m.held[id] = append(m.held[id], conformEvent{ID: ev.MessageID, User: ev.UserID})
		m.mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("cannot subscribe: %v", tok.Error())
	}
	return fmt.Sprintf("type: mqtt\nconfig:\n  broker: tcp://%s\n  topic: \"sluiceconf/%s/{event}\"\n  client_id: sluiceconf-%s\n",
		addr, id, id)
}

func (m *mqttTarget) received(_ *testing.T, id string) ([]conformEvent, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]conformEvent(nil), m.held[id]...), true
}

func (m *mqttTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{}, "MQTT 3.1.1 has no per-message refusal: a broker drops a publish it refuses, or disconnects"
}
