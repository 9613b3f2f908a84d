package router

// keyState is one ordering key's place in the router.
type keyState struct {
	key          string
	busy         bool    // a batch with its events is in flight
	blocked      bool    // barrier: earlier events of the key are failed or skipped
	pending      []*item // window events waiting, in seq order
	queued       bool    // in core.ready
	draining     bool    // in core.drains
	failedWindow int     // failed events in the window not yet stored
}

func (c *core) keyState(k string) *keyState {
	ks := c.keys[k]
	if ks == nil {
		ks = &keyState{key: k}
		c.keys[k] = ks
	}
	return ks
}

// forget drops a key's state once nothing refers to it.
func (c *core) forget(ks *keyState) {
	if !ks.busy && !ks.blocked && !ks.queued && !ks.draining && len(ks.pending) == 0 && ks.failedWindow == 0 {
		delete(c.keys, ks.key)
	}
}

func (c *core) markReady(ks *keyState) {
	if !ks.queued && !ks.busy && !ks.blocked && len(ks.pending) > 0 {
		ks.queued = true
		c.ready = append(c.ready, ks)
	}
}

func (c *core) queueDrain(ks *keyState) {
	if !ks.draining {
		ks.draining = true
		c.drains = append(c.drains, ks)
	}
}
