package fuzz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sluice-cdi/sluice/engine"
)

// The workload is a script drawn from the seed before the run starts, so
// it is the same whatever the configuration (the metamorphic test relies
// on that) and a shorter run is a prefix of a longer one (the reducer).

type opKind uint8

const (
	opAppend  opKind = iota // a batch of new events, some resent or repeated
	opResend                // only resends of earlier messageIds
	opPause                 // pause a destination
	opResume                // resume it
	opReplay                // replay some dead letters, maybe "fixing" them first
	opCrash                 // power loss
	opRestart               // graceful restart
	opReclaim               // delete consumed segments
	opOutage                // a destination goes down for a while
	opIdle                  // time passes
	opKinds                 // the kinds above are weighted per run (workload.weights)
)

// Storage faults come from a stream of their own (faultOp), so that the
// script of the kinds above is the same with or without them.
const (
	opIndexDamage opKind = opKinds + iota // power loss, and the index loses its WAL or folder
	opDiskFull                            // segment writes/syncs fail with ENOSPC for a while
	opFlip                                // shutdown, bytes flipped in sealed frames, reopen
	opKindsAll
)

var opNames = [opKindsAll]string{"append", "resend", "pause", "resume", "replay", "crash", "restart", "reclaim", "outage", "idle",
	"index-damage", "disk-full", "flip"}

type op struct {
	kind opKind
	dt   time.Duration // virtual time before the operation
	dest int
	recs []engine.Record
	dur  time.Duration
	conn bool
	pct  uint64 // replay: share of the dead letters
	cure bool
	salt uint64 // replay: which dead letters; flip: which frames and bytes
	// variant: index damage: what the index loses (indexLoss); disk
	// full: which operations fail (fullWrites, fullSyncs).
	variant uint8
	count   int  // flip: frames to damage
	restart bool // flip: a graceful restart rather than a power loss
	noScan  bool // flip: no full read of the log after the reopen
}

// workload holds the per-run shape of the script (swarm testing: the
// weights and sizes are themselves random).
type workload struct {
	r        *rand.Rand
	weights  [opKinds]int
	dtMean   time.Duration
	batchMax int
	pResend  float64
	pRepeat  float64
	pHot     float64
	hot      int
	padMax   int
	gen      []engine.Record // every new record so far, for resends
}

func (s *Sim) script() []op {
	r := s.wrng
	w := &workload{r: r}
	for k := range w.weights {
		if r.IntN(10) >= 3 {
			w.weights[k] = 1 + r.IntN(10)
		}
	}
	w.weights[opAppend] = 10 + r.IntN(30)
	w.weights[opCrash] = min(w.weights[opCrash], 2)
	w.weights[opRestart] = min(w.weights[opRestart], 2)
	for _, m := range []struct {
		mode Mode
		kind opKind
	}{{ModeCrash, opCrash}, {ModeOutage, opOutage}, {ModeReplay, opReplay}} {
		if s.k.Mode&m.mode == 0 {
			w.weights[m.kind] = 0
		}
	}
	w.dtMean = pick(r, 0, time.Millisecond, 5*time.Millisecond, 20*time.Millisecond, 100*time.Millisecond, 500*time.Millisecond)
	w.batchMax = pick(r, 1, 3, 10, 30)
	w.pResend = pick(r, 0, 0.02, 0.1, 0.3)
	w.pRepeat = pick(r, 0, 0.02, 0.1)
	w.pHot = pick(r, 0, 0.3, 0.8)
	w.hot = max(1, s.k.Users/10)
	w.padMax = pick(r, 50, 300, 2000)
	xr := seeded(s.k.Seed, 5)
	rates := [3]float64{pick(xr, 0.004, 0.01, 0.02), pick(xr, 0.01, 0.02, 0.05), pick(xr, 0.01, 0.02, 0.04)}
	ops := make([]op, 0, s.k.Steps)
	for range s.k.Steps {
		o, ok := s.faultOp(xr, rates, w)
		if !ok {
			o = s.nextOp(w)
		}
		ops = append(ops, o)
	}
	return ops
}

// faultOp draws the step's storage fault, if any: index damage, disk
// full and flips each take their rate's share of the steps while their
// mode is on. Every call draws the same values from xr whatever the
// modes, so that dropping one mode leaves the others' faults in place.
func (s *Sim) faultOp(xr *rand.Rand, rates [3]float64, w *workload) (op, bool) {
	u, dt := xr.Float64(), time.Duration(xr.ExpFloat64()*float64(w.dtMean))
	variant, salt, restart, noScan := uint8(xr.IntN(4)), xr.Uint64(), xr.IntN(2) == 0, xr.IntN(2) == 0
	dur := time.Duration(float64(pick(xr, 20*time.Millisecond, 200*time.Millisecond, 2*time.Second, 20*time.Second, time.Minute)) * (0.5 + xr.Float64()))
	count := 1 + xr.IntN(3)
	o := op{dt: dt, salt: salt}
	switch m := s.k.Mode; {
	case u < rates[0]:
		if m&ModeIndexDamage == 0 {
			return o, false
		}
		o.kind, o.variant = opIndexDamage, 1+variant%uint8(indexLossKinds-1)
	case u < rates[0]+rates[1]:
		if m&ModeDiskFull == 0 {
			return o, false
		}
		o.kind, o.variant, o.dur = opDiskFull, variant%3+1, dur
	case u < rates[0]+rates[1]+rates[2]:
		if m&ModeBitFlip == 0 {
			return o, false
		}
		o.kind, o.count, o.restart, o.noScan = opFlip, count, restart, noScan
	default:
		return o, false
	}
	return o, true
}

func (w *workload) kind() opKind {
	total := 0
	for _, x := range w.weights {
		total += x
	}
	n := w.r.IntN(total)
	for k, x := range w.weights {
		if n < x {
			return opKind(k)
		}
		n -= x
	}
	return opAppend
}

func (s *Sim) nextOp(w *workload) op {
	r := w.r
	o := op{kind: w.kind(), dest: r.IntN(s.k.Dests)}
	if w.dtMean > 0 {
		o.dt = time.Duration(r.ExpFloat64() * float64(w.dtMean))
	}
	switch o.kind {
	case opAppend:
		n := 1 + r.IntN(w.batchMax)
		for j := range n {
			switch {
			case len(w.gen) > 0 && r.Float64() < w.pResend:
				o.recs = append(o.recs, w.resend())
			case j > 0 && r.Float64() < w.pRepeat:
				o.recs = append(o.recs, o.recs[r.IntN(j)])
			default:
				o.recs = append(o.recs, s.newRecord(w))
			}
		}
	case opResend:
		if len(w.gen) == 0 {
			o.kind, o.recs = opAppend, []engine.Record{s.newRecord(w)}
			break
		}
		for range 1 + r.IntN(5) {
			o.recs = append(o.recs, w.resend())
		}
	case opReplay:
		o.pct, o.cure, o.salt = uint64(20+r.IntN(81)), r.IntN(2) == 0, r.Uint64()
	case opOutage:
		o.dur = time.Duration(float64(pick(r, 200*time.Millisecond, 2*time.Second, 20*time.Second, 2*time.Minute)) * (0.5 + r.Float64()))
		o.conn = r.IntN(2) == 0
	case opIdle:
		o.dur = pick(r, time.Second, 30*time.Second, 5*time.Minute, 30*time.Minute)
	}
	return o
}

// resend picks an earlier record, most often a recent one.
func (w *workload) resend() engine.Record {
	n := len(w.gen)
	if w.r.IntN(4) == 0 {
		return w.gen[w.r.IntN(n)]
	}
	return w.gen[n-1-w.r.IntN(min(n, 50))]
}

func (s *Sim) newRecord(w *workload) engine.Record {
	r := w.r
	u := r.IntN(s.k.Users)
	if r.Float64() < w.pHot {
		u = r.IntN(w.hot)
	}
	n := len(w.gen) + 1
	key, typ, src := fmt.Sprintf("u%d", u), pick(r, types...), pick(r, sources...)
	pad := make([]byte, r.IntN(w.padMax))
	for i := range pad {
		pad[i] = 'a' + byte(i%26)
	}
	rec := engine.Record{
		Source: []byte(src), Type: []byte(typ), MessageID: fmt.Appendf(nil, "m%d", n), Key: []byte(key),
		Payload: fmt.Appendf(nil, `{"type":%q,"messageId":"m%d","userId":%q,"pad":%q}`, typ, n, key, pad),
	}
	w.gen = append(w.gen, rec)
	return rec
}

func (s *Sim) exec(o op) {
	var d *dest
	if o.dest < len(s.dests) {
		d = s.dests[o.dest]
	}
	switch o.kind {
	case opAppend, opResend:
		s.tracef("op %d %s %d records", s.step, opNames[o.kind], len(o.recs))
		s.appendRecs(o.recs)
	case opPause:
		s.tracef("op %d pause %s", s.step, d.name)
		d.paused = true
		d.m.Pause()
	case opResume:
		s.tracef("op %d resume %s", s.step, d.name)
		d.paused = false
		d.m.Resume()
	case opReplay:
		s.replay(d, o)
	case opCrash:
		s.tracef("op %d crash", s.step)
		s.crash(nil)
	case opRestart:
		s.tracef("op %d restart", s.step)
		s.restart(nil)
	case opReclaim:
		before := s.eng.Stats().FirstSeq
		n, err := s.eng.Reclaim()
		if s.k.Trace && n > 0 {
			var curs []uint64
			for _, d := range s.dests {
				c, _ := d.cons.Cursor()
				curs = append(curs, c)
			}
			s.tracef("op %d reclaim: %d segments, first seq %d -> %d, cursors %v", s.step, n, before, s.eng.Stats().FirstSeq, curs)
			break
		}
		s.tracef("op %d reclaim: %d segments", s.step, n)
		if err != nil {
			s.violate("durability", nil, "", nil, "cannot reclaim: %v", err)
		}
	case opOutage:
		s.tracef("op %d outage %s for %v (conn %v)", s.step, d.name, o.dur, o.conn)
		d.outages = append(d.outages, span{from: s.now(), to: s.now().Add(o.dur), conn: o.conn})
	case opIdle:
		s.tracef("op %d idle %v", s.step, o.dur)
		s.runUntil(s.now().Add(o.dur))
	case opIndexDamage:
		s.tracef("op %d crash with index damage: the index loses %s", s.step, indexLoss(o.variant))
		s.reclaimedBelow = max(s.reclaimedBelow, s.eng.Stats().FirstSeq)
		s.crash(&storageFault{index: indexLoss(o.variant)})
	case opDiskFull:
		s.diskFull(o)
	case opFlip:
		s.flip(o)
	}
}

// Expectations of one record at append.
const (
	mustStore = iota
	mustDedup
	mayEither // an old resend: its dedup generation may be gone
)

// appendRecs appends like ingest does and checks what the engine says:
// new events get consecutive seqs, resends within the dedup window and
// repeats inside the batch are duplicates.
func (s *Sim) appendRecs(spec []engine.Record) {
	now := s.now()
	recs := make([]engine.Record, len(spec))
	want := make([]int, len(spec))
	inBatch := map[string]bool{}
	for i, r := range spec {
		recs[i] = r
		recs[i].ReceivedAt = now.UnixNano()
		id := string(r.Source) + "\x00" + string(r.MessageID)
		switch prev := s.byMsg[id]; {
		case inBatch[id]:
			want[i] = mustDedup
		case prev == nil:
			want[i] = mustStore
		case now.Sub(time.Unix(0, prev.receivedAt)) < s.dedupMust:
			want[i] = mustDedup
		default:
			want[i] = mayEither
		}
		inBatch[id] = true
	}
	res, err := s.eng.Append(context.Background(), recs)
	if err != nil && s.appendRefused(recs, err) {
		return
	}
	if err != nil {
		s.violate("durability", nil, "", nil, "append of %d records failed: %v", len(recs), err)
		s.stopped = true
		return
	}
	s.unacked = nil // the failed groups' bytes are past a sealed end now
	stored, dups := 0, 0
	for i := range recs {
		r := &recs[i]
		if r.Seq == 0 {
			dups++
			if want[i] == mustStore {
				s.violate("dedup", nil, string(r.Key), nil, "new messageId %s (source %s) treated as a duplicate", r.MessageID, r.Source)
			}
			continue
		}
		stored++
		if want[i] == mustDedup && s.forgotDedup(r) {
			s.tracef("messageId %s (source %s) stored again as %d within the dedup window: its first copy's frame was damaged, or reclaimed before an index damage (BUG-RECOVER-DEDUP, tolerated)", r.MessageID, r.Source, r.Seq)
		} else if want[i] == mustDedup {
			s.violate("dedup", nil, string(r.Key), []uint64{r.Seq}, "messageId %s (source %s) stored again as %d within the dedup window", r.MessageID, r.Source, r.Seq)
		}
		if r.Seq != s.lastAcked+1 {
			s.violate("durability", nil, string(r.Key), []uint64{r.Seq}, "append assigned seq %d, want %d", r.Seq, s.lastAcked+1)
		}
		s.addEvent(r)
	}
	if res.Stored != stored || res.Duplicates != dups || (stored > 0 && res.LastSeq != s.lastAcked) {
		s.violate("durability", nil, "", nil, "append result %+v, records say %d stored, %d duplicates, last %d", res, stored, dups, s.lastAcked)
	}
	s.rep.Duplicates += dups
}

// forgotDedup reports whether the engine may have forgotten r's dedup key
// with a damaged index (KnownRecoverDedup, while tolerated): its stored
// copy was reclaimed before an index-damage fault.
//
// A stored copy whose frame got a flipped bit may be forgotten too: its
// key is rebuilt from the log after a restart, and the frame no longer
// reads. Storing the resend then brings the lost event back.
func (s *Sim) forgotDedup(r *engine.Record) bool {
	prev := s.byMsg[string(r.Source)+"\x00"+string(r.MessageID)]
	return prev != nil && (s.flipped[prev.seq] || prev.seq < s.reclaimedBelow && s.tolerate(KnownRecoverDedup) ||
		prev.seq < s.asideBelow && s.tolerate(KnownRecoverAside))
}

func (s *Sim) addEvent(r *engine.Record) {
	ev := &simEvent{
		seq: r.Seq, key: string(r.Key), msgID: string(r.MessageID), source: string(r.Source), typ: string(r.Type),
		payload: r.Payload, receivedAt: r.ReceivedAt,
	}
	s.events = append(s.events, ev)
	s.lastAcked = r.Seq
	s.byMsg[ev.source+"\x00"+ev.msgID] = ev
	s.keyEvents[ev.key] = append(s.keyEvents[ev.key], ev)
	s.rep.Appended++
}

// replay re-queues a share of a destination's dead letters (chosen by
// hash, so the choice does not consume the script's stream) and kicks the
// machine. With cure, the destination stops refusing them first.
func (s *Sim) replay(d *dest, o op) {
	var seqs []uint64
	n, err := d.cons.Replay(s.now().UnixNano(), func(e *engine.Entry) bool {
		h := (e.Seq ^ o.salt) * 0x9e3779b97f4a7c15
		if (h>>32)%100 < o.pct {
			seqs = append(seqs, e.Seq)
			return true
		}
		return false
	})
	if err != nil {
		s.violate("harness", d, "", nil, "cannot replay: %v", err)
		return
	}
	if n != len(seqs) {
		s.violate("harness", d, "", seqs, "replay says %d, matched %d", n, len(seqs))
	}
	for _, q := range seqs {
		d.replayed[q] = true
		if ev := s.event(q); o.cure && ev != nil {
			s.cured[ev.msgID] = true
		}
	}
	s.rep.Replayed += len(seqs)
	s.tracef("op %d replay %s: %d dead letters %s (cure %v)", s.step, d.name, len(seqs), s.fmtSeqs(seqs), o.cure)
	d.m.Kick()
}
