package fuzz

import (
	"bytes"
	"errors"
	"slices"
	"strings"

	"github.com/sluice-cdi/sluice/engine"
)

// The checks. Those that hold at every moment run as things happen
// (checkDispatch at each request, recordSeqs at each delivery, checkBounds
// after each machine call, checkAppend at each append, checkDurable after
// each restart); the end-state ones run after the liveness phase
// (finalChecks).

// checkDispatch checks a request as the destination receives it: known,
// intact events that pass the filters, none already in flight, and with
// ordering, per key: in seq order, one request at a time, and every earlier
// event of the key final (delivered or aborted) unless this event was
// delivered before (a resend) or replayed (replays never wait).
func (s *Sim) checkDispatch(d *dest, f *flight) {
	s.checkPace(d, f)
	last := map[string]uint64{}
	inBatch := map[uint64]bool{}
	for _, e := range f.disp.Events {
		ev := s.event(e.Seq)
		if ev == nil {
			s.violate("content", d, string(e.Key), []uint64{e.Seq}, "dispatched event %d that was never acknowledged (last acknowledged %d)", e.Seq, s.lastAcked)
			continue
		}
		if string(e.MessageID) != ev.msgID || string(e.Key) != ev.key || string(e.Source) != ev.source ||
			string(e.Type) != ev.typ || e.ReceivedAt != ev.receivedAt || !bytes.Equal(e.Payload, ev.payload) {
			s.violate("content", d, ev.key, []uint64{e.Seq}, "event %d sent as messageId %q key %q source %q type %q (%d payload bytes), stored as %q %q %q %q (%d bytes)",
				e.Seq, e.MessageID, e.Key, e.Source, e.Type, len(e.Payload), ev.msgID, ev.key, ev.source, ev.typ, len(ev.payload))
		}
		if !d.passes(ev) {
			s.violate("filter", d, ev.key, []uint64{e.Seq}, "sent event %d (source %s, type %s) that the filters refuse", e.Seq, ev.source, ev.typ)
		}
		if inBatch[e.Seq] || s.inFlightElsewhere(d, f, e.Seq) {
			s.violate("router", d, ev.key, []uint64{e.Seq}, "event %d sent while already in flight", e.Seq)
		}
		if d.cfg.Ordering {
			s.checkDispatchOrder(d, ev, last, inBatch)
		}
		inBatch[e.Seq] = true
	}
	if d.cfg.Ordering {
		f.keys = s.batchKeys(d, f.seqs)
		for _, k := range f.keys {
			d.keyOut[k]++
		}
	}
}

// checkPace: nothing is sent while the destination is paused, before a
// 429's Retry-After has passed, or while a probe is out (the breaker sends
// one request at a time until the destination answers).
func (s *Sim) checkPace(d *dest, f *flight) {
	now := s.now()
	switch {
	case d.paused:
		s.violate("pace", d, "", f.seqs, "request sent while the destination is paused")
	case now.Before(d.throttledUntil):
		s.violate("pace", d, "", f.seqs, "request sent %v before the Retry-After of a 429 ended", d.throttledUntil.Sub(now))
	}
	for _, o := range d.flights {
		if o.disp.Probe {
			s.violate("pace", d, "", f.seqs, "request sent while probe %d is in flight", o.id)
			break
		}
	}
}

func (s *Sim) checkDispatchOrder(d *dest, ev *simEvent, last map[string]uint64, inBatch map[uint64]bool) {
	if p, ok := last[ev.key]; ok && p > ev.seq {
		s.violate("order", d, ev.key, []uint64{p, ev.seq}, "event %d after %d of the same key in one request", ev.seq, p)
	}
	_, sameBatch := last[ev.key]
	last[ev.key] = ev.seq
	if d.replayed[ev.seq] {
		return
	}
	if d.keyOut[ev.key] > 0 && !sameBatch {
		s.violate("order", d, ev.key, []uint64{ev.seq}, "event %d sent while another request of its key is in flight", ev.seq)
	}
	if d.delivered[ev.seq] == 0 {
		if bad := s.unsettledBefore(d, ev, inBatch); len(bad) > 0 {
			s.violate("order", d, ev.key, append(bad, ev.seq), "event %d sent while earlier events %v of its key are neither delivered nor aborted", ev.seq, bad)
		}
	}
}

// checkDup: a second delivery needs an ambiguous attempt of the event or a
// crash since its first delivery. A graceful restart is not enough.
func (s *Sim) checkDup(d *dest, ev *simEvent) {
	if s.excused(d, ev.seq) {
		return
	}
	s.violate("dup", d, ev.key, []uint64{ev.seq}, "messageId %s delivered again (time %d) without an ambiguous attempt or a crash since its first delivery (graceful restarts since: %d)",
		ev.msgID, d.delivered[ev.seq]+1, s.restarts-d.firstRestart[ev.seq])
}

// excused reports whether the router may have lost track of a delivered
// event: an ambiguous attempt of it, or a crash since its first delivery,
// or (while KnownRestartForgets is tolerated) a graceful restart since.
func (s *Sim) excused(d *dest, q uint64) bool {
	if d.ambiguous[q] || d.firstCrash[q] != s.crashes {
		return true
	}
	return d.firstRestart[q] != s.restarts && s.tolerate(KnownRestartForgets)
}

func (s *Sim) inFlightElsewhere(d *dest, f *flight, seq uint64) bool {
	for _, o := range d.flights {
		if o != f && slices.Contains(o.seqs, seq) {
			return true
		}
	}
	return false
}

// unsettledBefore returns the earlier events of ev's key that pass the
// filters and are not final for d: not delivered, not known aborted, not
// replayed (a replayed event was aborted), and not old enough to have
// expired. Events earlier in the same request count as final.
func (s *Sim) unsettledBefore(d *dest, ev *simEvent, inBatch map[uint64]bool) []uint64 {
	list := s.keyEvents[ev.key]
	p := d.keyPtr[ev.key]
	for p < len(list) && (d.delivered[list[p].seq] > 0 || d.replayed[list[p].seq] || !d.passes(list[p])) {
		p++ // final for good: delivery and replay are never undone
	}
	d.keyPtr[ev.key] = p
	var bad []uint64
	for _, a := range list[p:] {
		if a.seq >= ev.seq {
			break
		}
		if !d.passes(a) || d.delivered[a.seq] > 0 || d.replayed[a.seq] || d.knownAborted[a.seq] || inBatch[a.seq] || s.mayExpire(d, a) {
			continue
		}
		bad = append(bad, a.seq)
	}
	if len(bad) > 0 && len(s.flipped)+s.damages > 0 {
		// Events reported lost are final too (they can never be sent).
		lost := s.eng.LostRanges()
		bad = slices.DeleteFunc(bad, func(q uint64) bool {
			return slices.ContainsFunc(lost, func(r engine.SeqRange) bool { return r.First <= q && q <= r.Last }) || s.droppedByRecover(q, false)
		})
	}
	return bad
}

// mayExpire reports whether the router may have aborted ev as expired.
func (s *Sim) mayExpire(d *dest, ev *simEvent) bool {
	return s.now().UnixNano()-ev.receivedAt > int64(d.cfg.Policy.MaxAge)
}

// checkBounds: the window and the requests in flight stay within their
// limits, and the machine agrees with the simulator on what is in flight.
func (s *Sim) checkBounds(d *dest) {
	if w := d.m.WindowEvents(); w > d.cfg.WindowEvents {
		s.violate("bounds", d, "", nil, "window holds %d events, more than WindowEvents %d", w, d.cfg.WindowEvents)
	}
	n := d.m.InFlight()
	if n > d.cfg.ConcurrencyMax {
		s.violate("bounds", d, "", nil, "%d requests in flight, more than ConcurrencyMax %d", n, d.cfg.ConcurrencyMax)
	}
	if n != len(d.flights) {
		s.violate("router", d, "", nil, "machine counts %d requests in flight, the destination has %d", n, len(d.flights))
	}
}

// checkDurable runs after every reopen: the log ends exactly at the last
// acknowledged event (nothing lost, nothing unacknowledged appeared but
// refused appends' records), and, with scan, every event still stored
// reads back intact and every one it skips is reported lost. Only damaged
// frames may be reported lost (checkLost).
func (s *Sim) checkDurable(why string, scan bool) {
	s.adoptUnacked(why)
	if last := s.eng.LastSeq(); last != s.lastAcked {
		s.violate("durability", nil, "", nil, "after %s the log ends at %d, the last acknowledged event is %d", why, last, s.lastAcked)
		return
	}
	defer s.checkLost(why)
	if !scan {
		return
	}
	st := s.eng.Stats()
	first := max(st.FirstSeq, 1)
	r, err := s.eng.NewReader(first, 0)
	if err != nil {
		s.violate("durability", nil, "", nil, "after %s: cannot read the log: %v", why, err)
		return
	}
	defer r.Close()
	want := first
	var buf []engine.Record
	for range 1 << 20 {
		recs, err := r.Next(buf[:0], 256)
		if err != nil {
			s.violate("durability", nil, "", nil, "after %s: cannot read the log at %d: %v", why, want, err)
			return
		}
		if len(recs) == 0 {
			break
		}
		for _, rec := range recs {
			ev := s.event(rec.Seq)
			if rec.Seq > want && rec.Seq <= s.lastAcked && s.reportedLost(want, rec.Seq-1) {
				want = rec.Seq // skipped damaged frames, reported lost
			}
			if rec.Seq != want || ev == nil || string(rec.MessageID) != ev.msgID || !bytes.Equal(rec.Payload, ev.payload) {
				s.violate("durability", nil, string(rec.Key), []uint64{rec.Seq}, "after %s: read event %d (messageId %q), want event %d", why, rec.Seq, rec.MessageID, want)
				return
			}
			want++
		}
		buf = recs
	}
	if want <= s.lastAcked && first <= s.lastAcked && !s.reportedLost(want, s.lastAcked) {
		s.violate("durability", nil, "", nil, "after %s the log reads up to %d, want %d", why, want-1, s.lastAcked)
	}
}

// reportedLost reports whether every seq of first..last is in LostRanges.
func (s *Sim) reportedLost(first, last uint64) bool {
	lost := s.eng.LostRanges()
	for q := first; q <= last; q++ {
		if !slices.ContainsFunc(lost, func(r engine.SeqRange) bool { return r.First <= q && q <= r.Last }) {
			return false
		}
	}
	return true
}

// checkLost: every seq the engine reports lost is an acknowledged event
// whose frame the simulator damaged (a flipped byte loses that frame
// only). It returns the lost set.
func (s *Sim) checkLost(why string) map[uint64]bool {
	lost := map[uint64]bool{}
	for _, r := range s.eng.LostRanges() {
		for q := r.First; q <= r.Last; q++ {
			lost[q] = true
			if q < s.reclaimedBelow {
				// Reclaimed before an index-damage fault: the older
				// index still named the segment, whose file is gone.
				continue
			}
			if s.flipped[q] || s.wrongLost[q] {
				continue
			}
			s.wrongLost[q] = true // one violation per seq
			if len(s.wrongLost) <= 3 {
				s.violate("durability", nil, "", []uint64{q}, "after %s the engine reports event %d lost (ranges %v), but no frame of it was damaged (flipped: %v)",
					why, q, s.eng.LostRanges(), sortedSeqs(s.flipped))
			}
		}
	}
	s.rep.Lost, s.rep.LostReclaimed = len(lost), 0
	for q := range lost {
		if q < s.reclaimedBelow {
			s.rep.LostReclaimed++
		}
	}
	return lost
}

func sortedSeqs(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for q := range m {
		out = append(out, q)
	}
	slices.Sort(out)
	return out
}

// loadAborted makes the durable dead letters known aborted.
func (s *Sim) loadAborted(d *dest) error {
	ents, err := d.cons.Aborted(0, 1<<30, nil)
	for _, e := range ents {
		d.knownAborted[e.Seq] = true
	}
	return err
}

// finalChecks runs once every destination is idle.
func (s *Sim) finalChecks() {
	s.lost = s.checkLost("the run")
	for _, d := range s.dests {
		d.m.Flush(s.now())
		ents, err := d.cons.Aborted(0, 1<<30, nil)
		if err != nil {
			s.violate("harness", d, "", nil, "cannot list aborted entries: %v", err)
			continue
		}
		aborted := map[uint64]engine.Entry{}
		for _, e := range ents {
			aborted[e.Seq] = e
			s.checkAbort(d, e)
		}
		s.checkEndState(d, len(ents))
		s.checkNoLoss(d, aborted)
		s.checkFirstOrder(d)
		s.rep.Aborted += len(ents)
		s.rep.Outcomes = append(s.rep.Outcomes, s.outcomeOf(d, aborted))
	}
	s.checkReclaim()
}

// checkEndState: the cursor is at the end, nothing in flight, no failed or
// skipped entries, no barriers, and the counts agree with the entries.
func (s *Sim) checkEndState(d *dest, aborted int) {
	cur, _ := d.cons.Cursor()
	if !s.cursorAtEnd(cur, true) || d.m.InFlight() > 0 || d.cons.Count(engine.StateFailed) > 0 || d.cons.Count(engine.StateSkipped) > 0 {
		s.violate("liveness", d, "", nil, "not settled at the end: %s", s.describe(d))
	}
	if n := d.cons.Count(engine.StateAborted); n != int64(aborted) {
		s.violate("harness", d, "", nil, "consumer counts %d aborted entries, lists %d", n, aborted)
	}
	var keys []string
	if err := d.cons.Barriers(func(key []byte, head uint64) error {
		keys = append(keys, string(key))
		return nil
	}); err != nil {
		s.violate("harness", d, "", nil, "cannot list barriers: %v", err)
	}
	if len(keys) > 0 {
		s.violate("liveness", d, keys[0], nil, "barriers left at the end on keys %q", keys)
	}
}

// checkNoLoss: every acknowledged event that passes the filters was
// delivered, is a dead letter, or is reported lost (its frame was
// damaged); filtered events were neither delivered nor aborted; an event
// both delivered and aborted needs an ambiguous attempt or a crash.
func (s *Sim) checkNoLoss(d *dest, aborted map[uint64]engine.Entry) {
	for _, ev := range s.events {
		_, isAborted := aborted[ev.seq]
		n := d.delivered[ev.seq]
		switch {
		case !d.passes(ev):
			if n > 0 || isAborted {
				s.violate("filter", d, ev.key, []uint64{ev.seq}, "filtered event %d delivered %d times (aborted %v)", ev.seq, n, isAborted)
			}
		case n == 0 && !isAborted && s.lost[ev.seq]:
			// Reported lost by seq: not silent.
		case n == 0 && !isAborted && s.droppedByRecover(ev.seq, true):
			// Its straggler copy was in the lost index, or Recover set
			// its file aside (BUG-STRAGGLER-LOSS, BUG-RECOVER-ASIDE).
		case n == 0 && !isAborted:
			s.violate("loss", d, ev.key, []uint64{ev.seq}, "event %d (messageId %s) neither delivered nor aborted nor reported lost (flipped %v)", ev.seq, ev.msgID, s.flipped[ev.seq])
		case n > 0 && isAborted && !s.excused(d, ev.seq):
			s.violate("abort", d, ev.key, []uint64{ev.seq}, "event %d delivered and also aborted (%q), with no ambiguous attempt or crash since it was delivered",
				ev.seq, aborted[ev.seq].Reason)
		}
	}
}

// checkAbort: a dead letter's reason is one the policy allows.
func (s *Sim) checkAbort(d *dest, e engine.Entry) {
	ev := s.event(e.Seq)
	if ev == nil {
		s.violate("abort", d, string(e.Key), []uint64{e.Seq}, "aborted entry %d for an event never acknowledged", e.Seq)
		return
	}
	pol := d.cfg.Policy
	switch r := e.Reason; {
	case strings.HasPrefix(r, "rejected with status"):
		st := e.LastStatus
		if d.solo4xx[e.Seq] == 0 || st < 400 || st >= 500 || st == 408 || st == 429 {
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d aborted as %q (status %d) but the destination never refused it alone", e.Seq, r, st)
		}
	case strings.HasPrefix(r, "failed "):
		switch {
		case int(e.Attempts) < pol.MinAttempts:
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d aborted after %d attempts, MinAttempts is %d: %q", e.Seq, e.Attempts, pol.MinAttempts, r)
		case d.soloFail[e.Seq] < int(e.Attempts):
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d charged %d attempts but failed alone only %d times: %q", e.Seq, e.Attempts, d.soloFail[e.Seq], r)
		case d.confirmedFail[e.Seq] < int(e.Attempts) && !s.tolerate(KnownOutageAbort):
			// An outage is never charged to an event: a failure counts
			// only if the destination delivered another request sent
			// after it (the policy's evidence of a message problem).
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d charged %d attempts, but only %d of its failures were followed by a delivery of other events (outage failures charged): %q",
				e.Seq, e.Attempts, d.confirmedFail[e.Seq], r)
		}
	case strings.HasPrefix(r, "payload unreadable"):
		gone := strings.Contains(r, "not found") && (s.flipped[e.Seq] && s.tolerate(KnownReclaimUnlisted) || s.droppedByRecover(e.Seq, true))
		if !s.lost[e.Seq] && !gone {
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d aborted as unreadable, but it is not reported lost: %q", e.Seq, r)
		}
	case strings.HasPrefix(r, "expired"):
		at := e.LastAttempt
		if at == 0 {
			at = s.now().UnixNano() // window events expire with no attempt time
		}
		if at-ev.receivedAt <= int64(pol.MaxAge) {
			s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d aborted as expired at age %v, MaxAge %v", e.Seq, e.LastAttempt-ev.receivedAt, pol.MaxAge)
		}
	default:
		s.violate("abort", d, ev.key, []uint64{e.Seq}, "event %d aborted for a reason the policy does not allow: %q", e.Seq, r)
	}
}

// checkFirstOrder: with ordering and no crash, each key's first deliveries
// are in seq order (replayed events aside: they never wait).
func (s *Sim) checkFirstOrder(d *dest) {
	if !d.cfg.Ordering || s.crashes > 0 {
		return // a crash may forget an abort: the event goes again, late
	}
	if s.restarts > 0 && Tolerated&KnownRestartForgets != 0 && s.k.Strict&KnownRestartForgets == 0 {
		return // so may a graceful restart (BUG-RESTART-FORGETS)
	}
	for _, k := range sortedKeys(d.firstOrder) {
		var prev uint64
		for _, q := range d.firstOrder[k] {
			if d.replayed[q] {
				continue
			}
			if q < prev {
				s.violate("order", d, k, []uint64{prev, q}, "first deliveries of the key out of order: %d after %d", q, prev)
				break
			}
			prev = q
		}
	}
}

// checkReclaim: once every destination is idle, reclaiming leaves only the
// active segment, loses nothing, and every dead letter's payload is still
// readable (from its segment or the straggler store).
func (s *Sim) checkReclaim() {
	if _, err := s.eng.Reclaim(); err != nil {
		s.violate("bounds", nil, "", nil, "cannot reclaim: %v", err)
		return
	}
	st := s.eng.Stats()
	// A broken engine (its last write failed, or it opened on a full disk)
	// keeps the newest segment that shows on disk where seqs stand (sealed
	// with records) and those after it: its active segment's header may
	// not be on disk, nor that of an empty segment sealed by a rotation on
	// the full disk, and the index must not be the only record of the
	// seqs (engine.seqWitness).
	limit := 1
	if !st.Healthy {
		limit = 3
	}
	if st.Segments > limit && s.rep.Tolerated[KnownLostTail] == 0 {
		s.violate("bounds", nil, "", nil, "%d segments left after reclaim with every destination idle (first seq %d, last %d)", st.Segments, st.FirstSeq, st.LastSeq)
	}
	lost := s.checkLost("reclaim")
	for _, d := range s.dests {
		ents, err := d.cons.Aborted(0, 1<<30, nil)
		if err != nil {
			continue
		}
		for _, e := range ents {
			rec, err := s.eng.Read(e.Seq, e.Pos)
			if err != nil && (lost[e.Seq] || errors.Is(err, engine.ErrNotFound) &&
				(s.flipped[e.Seq] && s.tolerate(KnownReclaimUnlisted) || s.droppedByRecover(e.Seq, true))) {
				continue // its frame was damaged: reported lost (or a tolerated known bug)
			}
			if ev := s.event(e.Seq); err != nil || ev == nil || string(rec.MessageID) != ev.msgID {
				s.violate("durability", d, string(e.Key), []uint64{e.Seq}, "dead letter %d unreadable after reclaim: %v", e.Seq, err)
			}
		}
	}
}

func (s *Sim) outcomeOf(d *dest, aborted map[uint64]engine.Entry) Outcome {
	o := Outcome{Dest: d.name, Ordering: d.cfg.Ordering}
	for _, ev := range s.events {
		if d.delivered[ev.seq] > 0 {
			o.Delivered = append(o.Delivered, ev.msgID)
		}
		if _, ok := aborted[ev.seq]; ok {
			o.Aborted = append(o.Aborted, ev.msgID)
		}
	}
	slices.Sort(o.Delivered)
	slices.Sort(o.Aborted)
	if d.cfg.Ordering {
		o.KeyOrder = map[string][]string{}
		for k, seqs := range d.firstOrder {
			for _, q := range seqs {
				o.KeyOrder[k] = append(o.KeyOrder[k], s.event(q).msgID)
			}
		}
	}
	return o
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
