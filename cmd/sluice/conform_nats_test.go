package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsTarget is the conformance suite's NATS JetStream service: the
// machine's nats-server (127.0.0.1:4222, JetStream on). Sluice creates the
// stream itself (create_stream, named after the run's id, with a small
// max_msg_size); the poison event is one larger than it, refused by
// JetStream with its own message. The stream keeps each subject's order,
// and each user's events share one subject (the key hash), so it keeps
// each user's order.
type natsTarget struct {
	js jetstream.JetStream
}

// natsConformURL is the machine's nats-server.
const natsConformURL = "127.0.0.1:4222"

// natsConformMaxMsg is the stream's max_msg_size: a conformance event is
// far smaller, the poison far larger.
const natsConformMaxMsg = 2048

func newNATSTarget(t *testing.T) conformTarget {
	nc, err := nats.Connect("nats://"+natsConformURL, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("nats-server with JetStream must run on %s (.ci/run starts it): %v", natsConformURL, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &natsTarget{js: js}
}

func (n *natsTarget) upstream(*testing.T) string { return natsConformURL }

func (n *natsTarget) config(t *testing.T, id, addr string) string {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.js.DeleteStream(ctx, id)
	})
	return fmt.Sprintf(`type: nats
batch_size: 20
config:
  url: nats://%s
  subject: %s.{source}.{type}.{key_hash:4}
  stream: %s
  create_stream:
    max_msg_size: %d
    duplicate_window: 10m
`, addr, id, id, natsConformMaxMsg)
}

func (n *natsTarget) received(t *testing.T, id string) ([]conformEvent, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := n.js.Stream(ctx, id)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, true // sluice has not created it yet
	}
	if err != nil {
		t.Fatalf("cannot open stream %s: %v", id, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []conformEvent
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("cannot read message %d of %s: %v", seq, id, err)
		}
		var ev struct {
			MessageID string `json:"messageId"`
			UserID    string `json:"userId"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("message %d of %s is not an event: %v", seq, id, err)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != ev.MessageID {
			t.Errorf("message %d has Nats-Msg-Id %q, its messageId is %q", seq, got, ev.MessageID)
		}
		out = append(out, conformEvent{ID: ev.MessageID, User: ev.UserID})
	}
	return out, true
}

func (n *natsTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{
		edit: func(ev map[string]any) {
			ev["properties"].(map[string]any)["blob"] = strings.Repeat("x", 2*natsConformMaxMsg)
		},
		says: "message size exceeds maximum allowed",
	}, ""
}
