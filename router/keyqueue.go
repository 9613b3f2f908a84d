package router

// keyQueues is a destination's per-user order (guarantee 4): for every
// ordering key with something in progress, a keyQueue; and the two lists
// the core serves keys from: ready (keys whose window events may be sent,
// in the order they became ready) and drains (keys whose stored entries go
// next). It decides what may be sent next for a key, what is skipped behind
// a failed head and when the barrier lifts; core does the I/O (reading,
// sending, storing entries and barriers) around it.
//
// Invariants (checked by keyqueue_test.go against a model):
//
//  1. One request per key: while a request with a key's events is in
//     flight (busy) nothing else of the key is sent, neither window events
//     nor stored entries.
//  2. In order: a key's window events wait in pending in seq order and
//     leave it only from the head, to a request or as skipped; a request
//     takes a prefix of pending. Events put back (an unanswered or bisected
//     request) go back before the rest, in their order.
//  3. Barrier: once an event of the key failed (in the window or stored:
//     blocked), no window event of the key is sent until the barrier
//     lifts; the cursor passes the key's waiting events only as skipped,
//     from the head, in order (skipHead).
//  4. The barrier lifts only when nothing of the key is stored any more
//     (core's drain found no entry) and no failed event of the key waits
//     in the window to be stored (failedWindow == 0), with no request of
//     the key in flight; then its window events go on from the head.
//  5. Progress: a key with waiting window events, no request in flight
//     and no barrier is in ready (so it is served without new input).
//  6. Bookkeeping: a key is in ready exactly when queued is set, in drains
//     exactly when draining is set, each at most once. A keyQueue is
//     dropped only when nothing refers to it: not busy, not blocked, not
//     queued, not draining, no pending events, no failed window event.
//
// Without ordering (Config.Ordering false) window events bypass the key
// queues (core.loose); keys get a keyQueue only for stored barriers, which
// still drain in order (restoreBarrier).
type keyQueues struct {
	keys   map[string]*keyQueue
	ready  []*keyQueue // keys that may have window events to send (queued)
	drains []*keyQueue // keys whose stored entries go next (draining)
}

// keyQueue is one ordering key's place in the router.
type keyQueue struct {
	key          string
	pending      []*item // window events waiting, in seq order
	busy         bool    // a request with its events is in flight
	blocked      bool    // barrier: earlier events of the key are failed or skipped
	queued       bool    // in keyQueues.ready
	draining     bool    // in keyQueues.drains
	failedWindow int     // failed events in the window not yet stored
}

func newKeyQueues() keyQueues { return keyQueues{keys: make(map[string]*keyQueue)} }

// get returns key's queue, made if it has none.
func (q *keyQueues) get(key string) *keyQueue {
	k := q.keys[key]
	if k == nil {
		k = &keyQueue{key: key}
		q.keys[key] = k
	}
	return k
}

// forget drops a key's queue once nothing refers to it (invariant 6).
func (q *keyQueues) forget(k *keyQueue) {
	if !k.busy && !k.blocked && !k.queued && !k.draining && len(k.pending) == 0 && k.failedWindow == 0 {
		delete(q.keys, k.key)
	}
}

// markReady queues a key that may send window events.
func (q *keyQueues) markReady(k *keyQueue) {
	if !k.queued && !k.busy && !k.blocked && len(k.pending) > 0 {
		k.queued = true
		q.ready = append(q.ready, k)
	}
}

// queueDrain queues a key whose stored entries go next.
func (q *keyQueues) queueDrain(k *keyQueue) {
	if !k.draining {
		k.draining = true
		q.drains = append(q.drains, k)
	}
}

// restoreBarrier sets up a barrier stored before a restart: the key is
// blocked and drains its stored entries.
func (q *keyQueues) restoreBarrier(key string) {
	k := q.get(key)
	k.blocked = true
	q.queueDrain(k)
}

// admit appends a window event read from the log to its key's queue.
func (q *keyQueues) admit(it *item) {
	k := q.get(it.key)
	k.pending = append(k.pending, it)
	q.markReady(k)
}

// anyReady reports whether a key may have window events to send.
func (q *keyQueues) anyReady() bool { return len(q.ready) > 0 }

// nextReady returns the first ready key's first waiting event (nil when
// none is ready or the key has none), for the caller to see whether it fits
// before taking the key.
func (q *keyQueues) nextReady() (k *keyQueue, head *item) {
	if len(q.ready) == 0 {
		return nil, nil
	}
	k = q.ready[0]
	if len(k.pending) > 0 {
		head = k.pending[0]
	}
	return k, head
}

// takeReady takes the first ready key off ready and reports whether its
// window events may be sent: not while a request of the key is in flight
// or its barrier is up (it was ready when queued, and may have changed
// since).
func (q *keyQueues) takeReady() (k *keyQueue, ok bool) {
	k = q.ready[0]
	q.ready = q.ready[1:]
	k.queued = false
	return k, !k.busy && !k.blocked
}

// head is the key's first waiting window event, nil when none waits.
func (k *keyQueue) head() *item {
	if len(k.pending) == 0 {
		return nil
	}
	return k.pending[0]
}

// take removes the key's first waiting window event (head).
func (k *keyQueue) take() { k.pending = k.pending[1:] }

// taken ends taking events of a key taken off ready: with some sent the
// key is busy until release; with none sent it is queued again if events
// still wait (they did not fit this request, invariant 5), else dropped if
// idle.
func (q *keyQueues) taken(k *keyQueue, sent bool) {
	if sent {
		k.busy = true
		return
	}
	q.markReady(k)
	q.forget(k)
}

// isBusy reports whether a request with key's events is in flight.
func (q *keyQueues) isBusy(key string) bool {
	k := q.keys[key]
	return k != nil && k.busy
}

// isBlocked reports whether key's barrier is up.
func (q *keyQueues) isBlocked(key string) bool {
	k := q.keys[key]
	return k != nil && k.blocked
}

// has reports whether key has a queue.
func (q *keyQueues) has(key string) bool { return q.keys[key] != nil }

// sendEntries marks key busy: a request with its stored entries goes out.
func (q *keyQueues) sendEntries(key string) { q.get(key).busy = true }

// release frees the key of it, an event of a request that is over, and
// queues what comes next for it. With drain, an event that was stored
// queues its key's drain: its stored successors go next. A replayed event
// never blocks its key, but it may share a drained request with its key's
// skipped events, so a blocked key's drain goes on after it too.
func (q *keyQueues) release(it *item, drain bool) {
	k := q.keys[it.key]
	if k == nil {
		return
	}
	if drain && it.persisted && (!it.replayed || k.blocked) {
		q.queueDrain(k)
	}
	if k.busy {
		k.busy = false
		q.markReady(k)
	}
	q.forget(k)
}

// putBack returns an event that was sent, unanswered or to be bisected, to
// the front of its key's waiting events. Putting a request's events back
// last first keeps them in order (invariant 2).
func (q *keyQueues) putBack(it *item) {
	k := q.get(it.key)
	k.pending = append([]*item{it}, k.pending...)
}

// failedInWindow raises key's barrier for a window event that failed: it
// is stored as the key's failed head when the cursor passes it
// (failedStored), and the barrier cannot lift before.
func (q *keyQueues) failedInWindow(key string) {
	k := q.get(key)
	k.blocked = true
	k.failedWindow++
}

// failedStored notes that a failed window event of key was stored.
func (q *keyQueues) failedStored(key string) {
	k := q.keys[key]
	if k == nil || k.failedWindow == 0 {
		panic("BUG: router: a failed window event stored that its key did not count")
	}
	k.failedWindow--
	q.forget(k)
}

// skipHead takes it, a waiting window event the cursor reached, off its
// key's queue if it is to be stored as skipped: its key's barrier is up
// and it is the key's next event (invariant 3).
func (q *keyQueues) skipHead(it *item) bool {
	k := q.keys[it.key]
	if k == nil || !k.blocked || k.head() != it {
		return false
	}
	k.take()
	q.forget(k)
	return true
}

// takeUnblockedHead takes it off its key's queue if it is the key's next
// event and the key has no barrier: the event that would go next.
func (q *keyQueues) takeUnblockedHead(it *item) bool {
	k := q.keys[it.key]
	if k == nil || k.blocked || k.head() != it {
		return false
	}
	k.take()
	return true
}

// block raises key's barrier for an event stored while in flight (its
// answer settles the entry later); it reports false if the barrier was up.
func (q *keyQueues) block(key string) bool {
	k := q.get(key)
	if k.blocked {
		return false
	}
	k.blocked = true
	return true
}

// takeDrains returns the keys queued to drain and empties the list.
func (q *keyQueues) takeDrains() []*keyQueue {
	ds := q.drains
	q.drains = nil
	for _, k := range ds {
		k.draining = false
	}
	return ds
}

// drain queues key's drain (its queue made if it has none).
func (q *keyQueues) drain(key string) { q.queueDrain(q.get(key)) }

// mayLift reports whether k's barrier may lift once its stored entries
// are all settled: no failed event of the key waits in the window to be
// stored (invariant 4).
func (k *keyQueue) mayLift() bool { return k.failedWindow == 0 }

// lift lifts k's barrier: its waiting window events go next, in order.
func (q *keyQueues) lift(k *keyQueue) {
	if k.busy || k.failedWindow > 0 {
		panic("BUG: router: barrier lifted with a request in flight or a failed event in the window")
	}
	k.blocked = false
	q.markReady(k)
	q.forget(k)
}
