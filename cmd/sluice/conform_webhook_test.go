package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// webhookTarget is the conformance suite's webhook service: an HTTP server
// that keeps every event it takes, in arrival order, refuses an event
// whose properties say poison with 400, and answers 429 while throttled.
type webhookTarget struct {
	srv       *http.Server
	ln        net.Listener
	throttled atomic.Bool

	mu   sync.Mutex
	held []conformEvent
}

func newWebhookTarget(t *testing.T) conformTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &webhookTarget{ln: ln}
	w.srv = &http.Server{Handler: http.HandlerFunc(w.serve)}
	go w.srv.Serve(ln)
	t.Cleanup(func() { w.srv.Close() })
	return w
}

type webhookEvent struct {
	MessageID  string         `json:"messageId"`
	UserID     string         `json:"userId"`
	Properties map[string]any `json:"properties"`
}

func (w *webhookTarget) serve(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if w.throttled.Load() {
		rw.Header().Set("Retry-After", "1")
		rw.WriteHeader(http.StatusTooManyRequests)
		return
	}
	var evs []webhookEvent
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
		err = json.Unmarshal(body, &evs)
	} else {
		evs = make([]webhookEvent, 1)
		err = json.Unmarshal(body, &evs[0])
	}
	if err != nil {
		http.Error(rw, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	for _, ev := range evs {
		if ev.Properties["poison"] == true {
			http.Error(rw, fmt.Sprintf("event %s refused: poison property", ev.MessageID), http.StatusUnprocessableEntity)
			return
		}
	}
	w.mu.Lock()
	for _, ev := range evs {
		w.held = append(w.held, conformEvent{ID: ev.MessageID, User: ev.UserID})
	}
	w.mu.Unlock()
	rw.WriteHeader(http.StatusOK)
}

func (w *webhookTarget) upstream(*testing.T) string { return w.ln.Addr().String() }

func (w *webhookTarget) config(_ *testing.T, _, addr string) string {
	return fmt.Sprintf("type: webhook\nbatch_size: 10\nconfig:\n  url: http://%s/events\n", addr)
}

func (w *webhookTarget) received(*testing.T, string) ([]conformEvent, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]conformEvent(nil), w.held...), true
}

func (w *webhookTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{
		edit: func(ev map[string]any) { ev["properties"].(map[string]any)["poison"] = true },
		says: "refused: poison property",
	}, ""
}

func (w *webhookTarget) throttle(*testing.T, string) func() {
	w.throttled.Store(true)
	return func() { w.throttled.Store(false) }
}
