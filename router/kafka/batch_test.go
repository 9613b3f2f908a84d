package kafka

import (
	"errors"
	"testing"

	"github.com/sluice-cdi/sluice/router"
)

// TestKeepKeyOrder: an event taken after a failed one of its key is named
// failed too; other keys' events and events without a key stay taken.
func TestKeepKeyOrder(t *testing.T) {
	keys := []string{"a", "a", "", "b", "a", "", "b"}
	ok, retry := outcome{class: classOK}, outcome{class: classRetry, err: errors.New("x")}
	outs := []outcome{ok, retry, retry, ok, ok, ok, ok}
	evs := make([]router.Event, len(keys))
	for i, k := range keys {
		evs[i].Key = []byte(k)
	}
	keepKeyOrder(evs, outs)
	want := []class{classOK, classRetry, classRetry, classOK, classRetry, classOK, classOK}
	for i, o := range outs {
		if o.class != want[i] {
			t.Errorf("event %d (key %q): class %d, want %d", i, keys[i], o.class, want[i])
		}
	}
	if outs[4].err != errBehindFailed {
		t.Errorf("event 4: %v", outs[4].err)
	}
}
