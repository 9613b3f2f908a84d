package engine

// A seeded model test of the engine.
//
// A plain in-memory model (slices and maps) holds what the engine should
// hold: the log, the dedup set, and per consumer its cursor, entries,
// barriers and entry counts. A run draws a random sequence of operations
// from a seeded math/rand/v2 generator, with per-run random weights (swarm
// testing: some operations are switched off entirely in a run, which reaches
// states a uniform mix rarely does), applies each to both the engine and the
// model, and after every step compares all that the engine shows with the
// model: the log (contents, seqs, positions), cursors, counts, every entry
// (point reads and a full index scan), due and key queues, barriers, pages of
// aborted entries, reads of every entry's record (also from the straggler
// store once its segment is gone), and the straggler store itself.
//
// Illegal operations (entries for events passed without one, entries at or
// past the cursor, settling an event that has no entry, moving a cursor back
// or past the log's end, transitions outside the table in state.go, states
// that are never stored, seq 0) must fail with ErrIllegalTransition and
// change nothing, including the legal transitions committed with them in the
// same Txn; naming one event twice in a Txn must fail too.
//
// Consumers are created (at most 2 or 3 live at a time) and, rarely, dropped.
//
// Restarts come in three kinds, all on vfs.NewCrashableMem:
//
//   - a clean Close and Open: nothing may be lost;
//   - a crash after syncing the index (syncIndex: LogData with pebble.Sync),
//     then CrashClone with UnsyncedDataPercent 0: nothing may be lost;
//   - a crash without that sync. Txn.Commit writes the index unsynced, so the
//     commits since the last synced index write may be lost, but only as a
//     whole tail: the recovered state must equal the state after one of those
//     commits (never part of one). The model keeps that list of candidate
//     states (pending) since the last write it knows to be synced: CommitSync,
//     creating or dropping a consumer, Replay or Purge that changed
//     something, Reclaim or Append that cut or deleted a segment (both commit
//     the manifest synced), Close and Open. It adopts the newest candidate
//     the engine matches. (Pebble may sync more on its own, e.g. when a
//     memtable fills; that only makes a newer candidate match.)
//
// The log itself is never lost: Append acknowledges only fsynced records.
//
// Replaying a failure: the failure message names the seed and step and the
// command, SLUICE_MODEL_SEED=<seed> go test ./engine -run 'TestModel/seeds$'.
// SLUICE_MODEL_SEEDS=N runs N seeds (default modelDefaultSeeds) starting at
// SLUICE_MODEL_SEED_BASE (default 1); SLUICE_MODEL_STEPS sets the steps per
// seed (a replay needs at least the failing step; fewer or more steps do not
// change the operations before it); SLUICE_MODEL_TRACE=1 logs every
// operation.
//
// The canary subtests run deliberately wrong models and require the
// comparison to fail, proving the checker finds bugs of those kinds.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine/crashfs"
)

const (
	modelDefaultSeeds = 6
	modelDefaultSteps = 200
)

// modelBug makes the model deliberately wrong (canaries).
type modelBug int

const (
	bugNone modelBug = iota
	// bugCountNoDecrement: settling a failed entry as succeeded forgets to
	// decrement the failed count.
	bugCountNoDecrement
	// bugKeyEntriesReversed: the model lists a key's queue newest first.
	bugKeyEntriesReversed
	// bugCrashKeepsUnsynced: the model believes unsynced commits survive a
	// crash.
	bugCrashKeepsUnsynced
	// bugStragglerEarlyDrop: the model expects a straggler copy to go as soon
	// as any consumer settles its entry.
	bugStragglerEarlyDrop
)

var modelBugNames = map[modelBug]string{
	bugCountNoDecrement:   "count-no-decrement",
	bugKeyEntriesReversed: "key-entries-reversed",
	bugCrashKeepsUnsynced: "crash-keeps-unsynced",
	bugStragglerEarlyDrop: "straggler-early-drop",
}

// syncIndex makes every index write so far durable (Txn.Commit is unsynced).
func syncIndex(e *Engine) error { return e.db.LogData(nil, pebble.Sync) }

// ---------------------------------------------------------------------------
// The model.

type mRec struct {
	seq        uint64
	pos        Pos
	receivedAt int64
	source     []byte
	typ        []byte
	msgID      []byte
	key        []byte
	payload    []byte
}

// mCons is one consumer's state. Values are never changed once adopted by
// the model: a transaction works on a clone and replaces the old one on
// success, so snapshots (crash candidates) can share them.
type mCons struct {
	name     string
	cursor   uint64
	pos      Pos
	entries  map[uint64]Entry
	barriers map[string]uint64
	counts   [StatePurged + 1]int64
	// dropped lists seqs whose entry this consumer settled (only tracked
	// for bugStragglerEarlyDrop).
	dropped map[uint64]bool
}

func (c *mCons) clone() *mCons {
	n := *c
	n.entries = make(map[uint64]Entry, len(c.entries))
	for k, v := range c.entries {
		n.entries[k] = v
	}
	n.barriers = make(map[string]uint64, len(c.barriers))
	for k, v := range c.barriers {
		n.barriers[k] = v
	}
	n.dropped = make(map[uint64]bool, len(c.dropped))
	for k, v := range c.dropped {
		n.dropped[k] = v
	}
	return &n
}

// modelNormEntry returns en as the engine stores it.
func modelNormEntry(en Entry) Entry {
	if len(en.Reason) > reasonBytesMax {
		en.Reason = en.Reason[:reasonBytesMax]
	}
	if len(en.Response) > ResponseBytesMax {
		en.Response = en.Response[:ResponseBytesMax]
	}
	if len(en.Response) == 0 {
		en.Response = nil
	} else {
		en.Response = bytes.Clone(en.Response)
	}
	if len(en.Key) == 0 {
		en.Key = nil
	} else {
		en.Key = bytes.Clone(en.Key)
	}
	return en
}

func (c *mCons) put(en Entry) {
	if prev, ok := c.entries[en.Seq]; ok {
		c.counts[prev.State]--
	}
	c.entries[en.Seq] = modelNormEntry(en)
	c.counts[en.State]++
}

func (c *mCons) settle(seq uint64, bug modelBug) {
	prev := c.entries[seq]
	delete(c.entries, seq)
	if !(bug == bugCountNoDecrement && prev.State == StateFailed) {
		c.counts[prev.State]--
	}
	if bug == bugStragglerEarlyDrop {
		c.dropped[seq] = true
	}
}

type modelState struct {
	bug   modelBug
	log   []mRec // log[i].seq == i+1
	seen  map[string]bool
	cons  map[string]*mCons
	names []string // in creation order
}

func (m *modelState) last() uint64 { return uint64(len(m.log)) }

func (m *modelState) posOf(seq uint64) Pos {
	if seq >= 1 && seq <= m.last() {
		return m.log[seq-1].pos
	}
	return 0
}

func modelDedupKey(source, msgID []byte) string {
	return string(source) + "\x00" + string(msgID)
}

// snapshot returns the consumer states (shared, they are immutable).
func (m *modelState) snapshot() map[string]*mCons {
	s := make(map[string]*mCons, len(m.cons))
	for k, v := range m.cons {
		s[k] = v
	}
	return s
}

// ---------------------------------------------------------------------------
// The run.

type modelOp int

const (
	opAppend modelOp = iota
	opConsumer
	opAdvance
	opRetry
	opBarrier
	opReplay
	opPurge
	opReclaim
	opClock
	opIllegal
	opReopen
	opCrashSynced
	opCrashUnsynced
	opDrop
	opCount
)

var opNames = [...]string{"append", "consumer", "advance", "retry", "barrier", "replay", "purge", "reclaim", "clock", "illegal", "reopen", "crash-synced", "crash-unsynced", "drop"}

// modelCoverage counts what runs exercised, to show that the interesting
// cases happen at all.
type modelCoverage struct {
	ops             [opCount]int
	illegal         int // illegal transactions rejected
	lossyCrashes    int // unsynced crashes that lost commits
	lostCommits     int
	stragglers      uint64 // straggler copies made
	segmentsDeleted uint64
}

func (c *modelCoverage) String() string {
	var b strings.Builder
	for op, n := range c.ops {
		fmt.Fprintf(&b, "%s=%d ", opNames[op], n)
	}
	fmt.Fprintf(&b, "| illegal rejected=%d, crashes losing commits=%d (%d commits), stragglers=%d, segments deleted=%d",
		c.illegal, c.lossyCrashes, c.lostCommits, c.stragglers, c.segmentsDeleted)
	return b.String()
}

type modelRun struct {
	cov  *modelCoverage
	t    testing.TB
	seed uint64
	bug  modelBug
	r    *rand.Rand

	weights [opCount]int
	total   int

	// Per-run parameters.
	maxCons   int
	maxBatch  int
	payMax    int
	pDup      float64
	pEmptyID  float64
	pExc      float64
	pSync     float64
	keys      [][]byte
	sources   [][]byte
	reasons   []string
	trace     bool
	lastTrace []string

	opts Options
	fs   crashfs.FS
	e    *Engine
	m    *modelState
	made int // consumers created so far (names are never reused)
	// pending holds consumer states that a crash may recover to besides the
	// current one: the states before each unsynced commit since the last
	// synced index write, oldest first.
	pending  []map[string]*mCons
	now      int64
	msgN     int
	firstSeq uint64
	step     int
}

func newModelRun(t testing.TB, seed uint64, bug modelBug) *modelRun {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed5eed5eed5eed))
	mr := &modelRun{cov: &modelCoverage{}, t: t, seed: seed, bug: bug, r: r, trace: os.Getenv("SLUICE_MODEL_TRACE") != ""}
	// Swarm: each operation is off in a quarter of the runs, else weighted
	// 1..10. Appending, consumers and advancing are always on.
	for op := range opCount {
		if r.IntN(4) == 0 && op != opAppend && op != opConsumer && op != opAdvance {
			continue
		}
		w := 1 + r.IntN(10)
		if op == opConsumer || op == opDrop {
			w = 1 + r.IntN(2)
		}
		mr.weights[op] = w
		mr.total += w
	}
	mr.maxCons = 2 + r.IntN(2)
	mr.maxBatch = 1 + r.IntN(30)
	mr.payMax = 10 + r.IntN(700)
	mr.pDup = r.Float64() * 0.3
	mr.pEmptyID = r.Float64() * 0.05
	mr.pExc = 0.05 + r.Float64()*0.4
	mr.pSync = r.Float64() * 0.3
	allKeys := []string{"a", "bb", "k", "user-1", "user-22", "", "zz"}
	r.Shuffle(len(allKeys), func(i, j int) { allKeys[i], allKeys[j] = allKeys[j], allKeys[i] })
	for _, k := range allKeys[:1+r.IntN(len(allKeys))] {
		mr.keys = append(mr.keys, []byte(k))
	}
	allSources := []string{"web", "ios", "server"}
	for _, s := range allSources[:1+r.IntN(len(allSources))] {
		mr.sources = append(mr.sources, []byte(s))
	}
	mr.reasons = []string{"timeout", "http 500", "poison", "gone"}[:1+r.IntN(4)]

	mr.fs = crashfs.New()
	mr.opts = testOptions(mr.fs)
	mr.opts.SegmentBytesMax = []int64{4096, 8192, 16 << 10}[r.IntN(3)]
	mr.opts.ReclaimActiveMinBytes = []int64{1, 2048, 1 << 20}[r.IntN(3)]
	mr.opts.DedupIndexBatchKeys = []int{1, 5, 40, 1 << 16}[r.IntN(4)]
	mr.m = &modelState{bug: bug, seen: make(map[string]bool), cons: make(map[string]*mCons)}
	mr.now = 1_000_000
	mr.firstSeq = 1
	return mr
}

// modelFailure is what a failed run reports.
type modelFailure struct {
	seed uint64
	step int
	op   string
	err  error
	tail []string
}

func (f *modelFailure) Error() string {
	return fmt.Sprintf("model: seed %d, step %d (%s): %v\nlast operations:\n  %s\nreplay: SLUICE_MODEL_SEED=%d go test ./engine -run 'TestModel/seeds$' -count=1 -v",
		f.seed, f.step, f.op, f.err, strings.Join(f.tail, "\n  "), f.seed)
}

func (mr *modelRun) logf(format string, args ...any) {
	s := fmt.Sprintf("%d: ", mr.step) + fmt.Sprintf(format, args...)
	if mr.trace {
		mr.t.Log(s)
	}
	mr.lastTrace = append(mr.lastTrace, s)
	if len(mr.lastTrace) > 12 {
		mr.lastTrace = mr.lastTrace[1:]
	}
}

func (mr *modelRun) run(steps int) (err *modelFailure) {
	e, oerr := Open(mr.opts)
	if oerr != nil {
		return &modelFailure{seed: mr.seed, op: "open", err: oerr}
	}
	mr.e = e
	defer func() {
		if mr.e != nil {
			mr.countStats()
			mr.e.Close()
		}
	}()
	for mr.step = 1; mr.step <= steps; mr.step++ {
		op := mr.pick()
		mr.cov.ops[op]++
		if err := mr.do(op); err != nil {
			return &modelFailure{seed: mr.seed, step: mr.step, op: opNames[op], err: err, tail: mr.lastTrace}
		}
		if err := mr.check(); err != nil {
			return &modelFailure{seed: mr.seed, step: mr.step, op: opNames[op] + ", then check", err: err, tail: mr.lastTrace}
		}
	}
	return nil
}

// countStats adds the engine's counters (reset by every Open) to coverage.
func (mr *modelRun) countStats() {
	st := mr.e.Stats()
	mr.cov.stragglers += st.StragglersMoved
	mr.cov.segmentsDeleted += st.SegmentsDeleted
}

func (mr *modelRun) pick() modelOp {
	n := mr.r.IntN(mr.total)
	for op := range opCount {
		if n < mr.weights[op] {
			return op
		}
		n -= mr.weights[op]
	}
	panic("unreachable")
}

func (mr *modelRun) do(op modelOp) error {
	switch op {
	case opAppend:
		return mr.doAppend()
	case opConsumer:
		return mr.doConsumer()
	case opAdvance:
		return mr.doAdvance()
	case opRetry:
		return mr.doRetry()
	case opBarrier:
		return mr.doBarrier()
	case opReplay, opPurge:
		return mr.doRewriteAborted(op == opReplay)
	case opReclaim:
		return mr.doReclaim()
	case opClock:
		mr.now += int64(mr.r.IntN(200))
		mr.logf("clock %d", mr.now)
		return nil
	case opIllegal:
		return mr.doIllegal()
	case opReopen, opCrashSynced, opCrashUnsynced:
		return mr.doRestart(op)
	case opDrop:
		return mr.doDrop()
	}
	return fmt.Errorf("unknown op %d", op)
}

func (mr *modelRun) consumer(name string) (*Consumer, error) {
	for _, c := range mr.e.Consumers() {
		if c.Name() == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("consumer %q missing from the engine", name)
}

// pickConsumer returns a random consumer's name, or "" when there is none.
func (mr *modelRun) pickConsumer() string {
	if len(mr.m.names) == 0 {
		return ""
	}
	return mr.m.names[mr.r.IntN(len(mr.m.names))]
}

// synced records that the index was synced: earlier states cannot come back.
func (mr *modelRun) synced() { mr.pending = nil }

// adopt replaces a consumer's state after an unsynced (sync false) or synced
// commit.
func (mr *modelRun) adopt(next *mCons, sync bool) {
	if sync {
		mr.synced()
	} else {
		mr.pending = append(mr.pending, mr.m.snapshot())
	}
	mr.m.cons[next.name] = next
}

func (mr *modelRun) doAppend() error {
	m, r := mr.m, mr.r
	n := 1 + r.IntN(mr.maxBatch)
	recs := make([]Record, n)
	type want struct {
		seq uint64
		dup bool
	}
	wants := make([]want, n)
	next := m.last() + 1
	seenNow := make(map[string]bool)
	for i := range recs {
		src := mr.sources[r.IntN(len(mr.sources))]
		var id []byte
		switch {
		case r.Float64() < mr.pEmptyID:
		case mr.msgN > 0 && r.Float64() < mr.pDup:
			id = fmt.Appendf(nil, "m%d", r.IntN(mr.msgN))
		default:
			id = fmt.Appendf(nil, "m%d", mr.msgN)
			mr.msgN++
		}
		pay := make([]byte, 1+r.IntN(mr.payMax))
		for j := range pay {
			pay[j] = 'a' + byte(r.IntN(26))
		}
		recs[i] = Record{
			ReceivedAt: 1_700_000_000_000_000_000 + int64(mr.step)*1000 + int64(i),
			Source:     src,
			Type:       []byte([]string{"track", "identify"}[r.IntN(2)]),
			MessageID:  id,
			Key:        mr.keys[r.IntN(len(mr.keys))],
			Payload:    pay,
		}
		k := modelDedupKey(src, id)
		if len(id) > 0 && (m.seen[k] || seenNow[k]) {
			wants[i].dup = true
			continue
		}
		if len(id) > 0 {
			seenNow[k] = true
		}
		wants[i].seq = next
		next++
	}
	before := mr.e.Stats()
	res, err := mr.e.Append(context.Background(), recs)
	if err != nil {
		return fmt.Errorf("append: %w", err)
	}
	stored := int(next - 1 - m.last())
	mr.logf("append %d records: %d stored, %d duplicates", n, res.Stored, res.Duplicates)
	if res.Stored != stored || res.Duplicates != n-stored {
		return fmt.Errorf("append result %+v, want %d stored, %d duplicates", res, stored, n-stored)
	}
	if stored > 0 && res.LastSeq != next-1 {
		return fmt.Errorf("append LastSeq %d, want %d", res.LastSeq, next-1)
	}
	for i := range recs {
		if recs[i].Seq != wants[i].seq {
			return fmt.Errorf("record %d got seq %d, want %d (duplicate %v)", i, recs[i].Seq, wants[i].seq, wants[i].dup)
		}
	}
	if after := mr.e.Stats(); after.SegmentsCreated != before.SegmentsCreated {
		mr.synced() // the rotation committed the manifest synced
	}
	for k := range seenNow {
		m.seen[k] = true
	}
	if stored == 0 {
		return nil
	}
	// Learn the positions from the log.
	first := m.last() + 1
	rd, err := mr.e.NewReader(first, 0)
	if err != nil {
		return err
	}
	defer rd.Close()
	// Next may return fewer records than asked before the end (one buffer
	// per call); only an empty batch means the end.
	var got []Record
	for {
		n := len(got)
		got, err = rd.Next(got, stored+1-len(got))
		if err != nil {
			return fmt.Errorf("read back: %w", err)
		}
		for i := n; i < len(got); i++ {
			got[i].Payload, got[i].MessageID = bytes.Clone(got[i].Payload), bytes.Clone(got[i].MessageID)
		}
		if len(got) == n || len(got) > stored {
			break
		}
	}
	if len(got) != stored {
		return fmt.Errorf("read back %d records from %d, want %d", len(got), first, stored)
	}
	for i := range recs {
		if recs[i].Seq == 0 {
			continue
		}
		g := got[recs[i].Seq-first]
		if g.Seq != recs[i].Seq || !bytes.Equal(g.Payload, recs[i].Payload) || !bytes.Equal(g.MessageID, recs[i].MessageID) {
			return fmt.Errorf("read back seq %d: got seq %d payload %q", recs[i].Seq, g.Seq, g.Payload)
		}
		m.log = append(m.log, mRec{
			seq: g.Seq, pos: g.Pos, receivedAt: recs[i].ReceivedAt,
			source: bytes.Clone(recs[i].Source), typ: bytes.Clone(recs[i].Type),
			msgID: bytes.Clone(recs[i].MessageID), key: bytes.Clone(recs[i].Key),
			payload: bytes.Clone(recs[i].Payload),
		})
	}
	return nil
}

func (mr *modelRun) doConsumer() error {
	m := mr.m
	if len(m.names) >= mr.maxCons {
		// Asking again returns the same consumer and changes nothing.
		name := mr.pickConsumer()
		c, err := mr.e.Consumer(name)
		if err != nil {
			return err
		}
		if cur, _ := c.Cursor(); cur != m.cons[name].cursor {
			return fmt.Errorf("existing consumer %q returned with cursor %d, want %d", name, cur, m.cons[name].cursor)
		}
		mr.logf("consumer %q again", name)
		return nil
	}
	name := fmt.Sprintf("c%d", mr.made)
	mr.made++
	if _, err := mr.e.Consumer(name); err != nil {
		return err
	}
	mr.logf("consumer %q created at %d", name, m.last()+1)
	m.names = append(m.names, name)
	mr.adopt(&mCons{name: name, cursor: m.last() + 1, entries: map[uint64]Entry{}, barriers: map[string]uint64{}, dropped: map[uint64]bool{}}, true)
	return nil
}

func (mr *modelRun) doDrop() error {
	name := mr.pickConsumer()
	if name == "" || mr.r.IntN(3) != 0 { // rare: consumers are few
		return nil
	}
	if err := mr.e.DropConsumer(name); err != nil {
		return err
	}
	mr.logf("drop consumer %q with %d entries", name, len(mr.m.cons[name].entries))
	m := mr.m
	m.names = slices.DeleteFunc(m.names, func(n string) bool { return n == name })
	delete(m.cons, name)
	mr.synced() // the drop commits synced
	if err := mr.e.DropConsumer(name); !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("dropping %q twice: %v, want ErrNotFound", name, err)
	}
	return nil
}

// newEntry returns a first entry for the event seq in state s.
func (mr *modelRun) newEntry(seq uint64, s State) Entry {
	rec := mr.m.log[seq-1]
	en := Entry{Seq: seq, Pos: rec.pos, State: s, Key: rec.key, ReceivedAt: rec.receivedAt}
	switch s {
	case StateFailed:
		en.Attempts, en.FirstFailure, en.LastAttempt = 1, mr.now, mr.now
		en.DueAt = mr.now + int64(mr.r.IntN(100))
		en.LastStatus = 500
		en.Reason = mr.reasons[mr.r.IntN(len(mr.reasons))]
	case StateSkipped:
		en.Reason = "behind barrier"
	case StateAborted:
		en.Attempts = uint32(mr.r.IntN(5))
		en.LastStatus = 400
		en.Reason = mr.reasons[mr.r.IntN(len(mr.reasons))]
		if mr.r.IntN(10) == 0 { // longer than reasonBytesMax: cut on write
			en.Reason = strings.Repeat("r", reasonBytesMax+1+mr.r.IntN(50))
		}
		en.Response = mr.response()
	}
	return en
}

func (mr *modelRun) response() []byte {
	switch mr.r.IntN(8) {
	case 0:
		return nil
	case 1: // longer than ResponseBytesMax: cut on write
		return bytes.Repeat([]byte("x"), ResponseBytesMax+1+mr.r.IntN(100))
	}
	return fmt.Appendf(nil, `{"error":%d}`, mr.r.IntN(1000))
}

func (mr *modelRun) randomState() State {
	switch n := mr.r.IntN(4); n {
	case 0, 1:
		return StateFailed
	case 2:
		return StateSkipped
	}
	return StateAborted
}

// addAdvance adds to tx a cursor advance over a random span with entries for
// some passed events, applied to mc too.
func (mr *modelRun) addAdvance(tx *Txn, mc *mCons, used map[uint64]bool) {
	r, last := mr.r, mr.m.last()
	span := last + 1 - mc.cursor
	var d uint64
	switch n := r.IntN(10); {
	case span == 0:
	case n < 6:
		d = uint64(r.IntN(int(min(span, 20)) + 1))
	case n < 9:
		d = span
	default:
		d = uint64(r.IntN(int(span) + 1))
	}
	to := mc.cursor + d
	for seq := mc.cursor; seq < to; seq++ {
		if r.Float64() >= mr.pExc {
			continue
		}
		en := mr.newEntry(seq, mr.randomState())
		tx.Put(en)
		mc.put(en)
		used[seq] = true
		if en.State == StateFailed && r.IntN(3) == 0 {
			if _, ok := mc.barriers[string(en.Key)]; !ok {
				tx.SetBarrier(en.Key, seq)
				mc.barriers[string(en.Key)] = seq
			}
		}
	}
	tx.Advance(to, mr.m.posOf(to))
	mc.cursor, mc.pos = to, mr.m.posOf(to)
}

// addRetries adds up to n legal transitions of existing entries.
func (mr *modelRun) addRetries(tx *Txn, mc *mCons, n int, used map[uint64]bool) int {
	seqs := modelSortedSeqs(mc.entries)
	mr.r.Shuffle(len(seqs), func(i, j int) { seqs[i], seqs[j] = seqs[j], seqs[i] })
	done := 0
	for _, seq := range seqs {
		if done == n {
			break
		}
		if used[seq] {
			continue
		}
		used[seq] = true
		done++
		prev := mc.entries[seq]
		en := prev
		en.LastAttempt = mr.now
		k := mr.r.IntN(3)
		switch {
		case prev.State == StateFailed && k == 0, prev.State == StateSkipped && k == 0, prev.State == StateAborted && k == 0:
			// failed -> failed (retry later), skipped -> failed (barrier
			// lifted, first attempt failed), aborted -> failed (replay).
			en.State = StateFailed
			en.Attempts++
			en.DueAt = mr.now + int64(mr.r.IntN(300))
			en.LastStatus = int32(500 + mr.r.IntN(4))
			if en.FirstFailure == 0 {
				en.FirstFailure = mr.now
			}
			tx.Put(en)
			mc.put(en)
		case prev.State == StateSkipped && k == 1 && mr.r.IntN(2) == 0:
			en.Reason = "still behind barrier"
			tx.Put(en)
			mc.put(en)
		case k == 1:
			// -> aborted (aborted -> aborted annotates).
			en.State = StateAborted
			en.Reason = mr.reasons[mr.r.IntN(len(mr.reasons))]
			en.LastStatus = 400
			en.Response = mr.response()
			tx.Put(en)
			mc.put(en)
		case prev.State == StateAborted:
			tx.Purge(seq)
			mc.settle(seq, mr.bug)
		default:
			tx.Succeed(seq)
			mc.settle(seq, mr.bug)
			if h, ok := mc.barriers[string(prev.Key)]; ok && h == seq && mr.r.IntN(2) == 0 {
				tx.ClearBarrier(prev.Key)
				delete(mc.barriers, string(prev.Key))
			}
		}
	}
	return done
}

func (mr *modelRun) addBarriers(tx *Txn, mc *mCons) {
	for range 1 + mr.r.IntN(3) {
		k := mr.keys[mr.r.IntN(len(mr.keys))]
		if mr.r.IntN(2) == 0 {
			head := uint64(1 + mr.r.IntN(int(mr.m.last()+1)))
			tx.SetBarrier(k, head)
			mc.barriers[string(k)] = head
		} else {
			tx.ClearBarrier(k)
			delete(mc.barriers, string(k))
		}
	}
}

func (mr *modelRun) commit(tx *Txn, next *mCons) error {
	sync := mr.r.Float64() < mr.pSync
	var err error
	if sync {
		err = tx.CommitSync()
	} else {
		err = tx.Commit()
	}
	if err != nil {
		return fmt.Errorf("commit of %q: %w", next.name, err)
	}
	mr.adopt(next, sync && !tx.Empty())
	return nil
}

func (mr *modelRun) doAdvance() error {
	name := mr.pickConsumer()
	if name == "" {
		return nil
	}
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	mc := mr.m.cons[name].clone()
	from := mc.cursor
	tx := c.Begin()
	used := map[uint64]bool{}
	mr.addAdvance(tx, mc, used)
	nr := 0
	if mr.r.IntN(4) == 0 {
		nr = mr.addRetries(tx, mc, 1+mr.r.IntN(2), used)
	}
	mr.logf("advance %q %d -> %d with %d entries, %d retries", name, from, mc.cursor, len(used)-nr, nr)
	return mr.commit(tx, mc)
}

func (mr *modelRun) doRetry() error {
	name := mr.pickConsumer()
	if name == "" || len(mr.m.cons[name].entries) == 0 {
		return nil
	}
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	mc := mr.m.cons[name].clone()
	tx := c.Begin()
	n := mr.addRetries(tx, mc, 1+mr.r.IntN(3), map[uint64]bool{})
	mr.logf("retry %q: %d transitions", name, n)
	return mr.commit(tx, mc)
}

func (mr *modelRun) doBarrier() error {
	name := mr.pickConsumer()
	if name == "" {
		return nil
	}
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	mc := mr.m.cons[name].clone()
	tx := c.Begin()
	mr.addBarriers(tx, mc)
	mr.logf("barriers %q", name)
	return mr.commit(tx, mc)
}

// randomMatch returns nil (all) or a match on one reason.
func (mr *modelRun) randomMatch() (func(*Entry) bool, string) {
	if mr.r.IntN(2) == 0 {
		return nil, "all"
	}
	reason := mr.reasons[mr.r.IntN(len(mr.reasons))]
	return func(en *Entry) bool { return en.Reason == reason }, "reason " + reason
}

func (mr *modelRun) doRewriteAborted(replay bool) error {
	name := mr.pickConsumer()
	if name == "" {
		return nil
	}
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	match, desc := mr.randomMatch()
	mc := mr.m.cons[name].clone()
	want := 0
	for _, seq := range modelSortedSeqs(mc.entries) {
		en := mc.entries[seq]
		if en.State != StateAborted || (match != nil && !match(&en)) {
			continue
		}
		want++
		if replay {
			en.State, en.Attempts, en.DueAt = StateFailed, 0, mr.now
			en.Flags |= EntryReplayed
			mc.put(en)
		} else {
			mc.settle(seq, mr.bug)
		}
	}
	var n int
	if replay {
		n, err = c.Replay(mr.now, match)
	} else {
		n, err = c.Purge(match)
	}
	mr.logf("replay=%v %q %s: %d", replay, name, desc, n)
	if err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("replay=%v %s: %d entries, want %d", replay, desc, n, want)
	}
	mr.adopt(mc, n > 0)
	return nil
}

func (mr *modelRun) minCursor() uint64 {
	minCur := mr.m.last() + 1
	for _, c := range mr.m.cons {
		minCur = min(minCur, c.cursor)
	}
	return minCur
}

func (mr *modelRun) doReclaim() error {
	before := mr.e.Stats()
	n, err := mr.e.Reclaim()
	if err != nil {
		return fmt.Errorf("reclaim: %w", err)
	}
	after := mr.e.Stats()
	mr.logf("reclaim: %d segments deleted, %d left", n, after.Segments)
	if d := after.SegmentsDeleted - before.SegmentsDeleted; d != uint64(n) {
		return fmt.Errorf("reclaim returned %d, deleted %d", n, d)
	}
	if n > 0 || after.SegmentsCreated != before.SegmentsCreated {
		mr.synced()
	}
	// Reclaim deletes everything it may: the oldest segment left is the
	// active one or holds an event some cursor has not passed.
	minCur := mr.minCursor()
	mr.e.segMu.RLock()
	segs := slices.Clone(mr.e.segments)
	mr.e.segMu.RUnlock()
	if len(segs) == 0 {
		return fmt.Errorf("no segments after reclaim")
	}
	if len(segs) > 1 && segs[0].lastSeq.Load() < minCur {
		return fmt.Errorf("reclaim left segment %d (seqs %d..%d) though every cursor is at or past %d", segs[0].id, segs[0].baseSeq, segs[0].lastSeq.Load(), minCur)
	}
	a := segs[len(segs)-1]
	if len(segs) == 1 && a.records() > 0 && a.lastSeq.Load() < minCur && a.size.Load() >= mr.opts.ReclaimActiveMinBytes {
		return fmt.Errorf("reclaim kept consumed active segment %d of %d bytes (min %d)", a.id, a.size.Load(), mr.opts.ReclaimActiveMinBytes)
	}
	return nil
}

func (mr *modelRun) doRestart(op modelOp) error {
	old := mr.e
	mr.countStats()
	switch op {
	case opReopen:
		mr.logf("close and reopen")
		if err := old.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
	case opCrashSynced:
		mr.logf("sync index and crash")
		if err := syncIndex(old); err != nil {
			return err
		}
		clone := mr.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		old.Close()
		mr.fs = clone
	case opCrashUnsynced:
		mr.logf("crash with %d unsynced commits", len(mr.pending))
		clone := mr.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		old.Close()
		mr.fs = clone
	}
	mr.e = nil
	mr.opts.FS = mr.fs
	e, err := Open(mr.opts)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	mr.e = e
	if op == opCrashUnsynced && mr.bug != bugCrashKeepsUnsynced {
		if err := mr.matchCandidate(); err != nil {
			return err
		}
	}
	mr.synced() // Open committed the manifest synced
	return nil
}

// matchCandidate adopts the newest candidate state that the recovered
// engine matches exactly.
func (mr *modelRun) matchCandidate() error {
	cands := append(slices.Clone(mr.pending), mr.m.snapshot())
	var first error
	for i := len(cands) - 1; i >= 0; i-- {
		err := mr.compareConsumerState(cands[i])
		if err == nil {
			if i < len(cands)-1 {
				mr.logf("crash lost %d unsynced commits", len(cands)-1-i)
				mr.cov.lossyCrashes++
				mr.cov.lostCommits += len(cands) - 1 - i
			}
			mr.m.cons = cands[i]
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return fmt.Errorf("recovered state matches none of the %d states since the last synced write; against the newest: %w", len(cands), first)
}

// compareConsumerState compares cursors, entries (a full scan) and barriers
// of every consumer with want.
func (mr *modelRun) compareConsumerState(want map[string]*mCons) error {
	e := mr.e
	if got := len(e.Consumers()); got != len(want) {
		return fmt.Errorf("engine has %d consumers, model %d", got, len(want))
	}
	for _, name := range modelSortedNames(want) {
		mc := want[name]
		c, err := mr.consumer(name)
		if err != nil {
			return err
		}
		if cur, pos := c.Cursor(); cur != mc.cursor || pos != mc.pos {
			return fmt.Errorf("consumer %q cursor %d pos %s, want %d pos %s", name, cur, pos, mc.cursor, mc.pos)
		}
		var scanned []Entry
		for _, p := range []byte{prefixEntry, prefixAborted} {
			if err := e.scanEntries(p, c.id, 0, func(en Entry) bool {
				scanned = append(scanned, en)
				return true
			}); err != nil {
				return fmt.Errorf("scan entries of %q: %w", name, err)
			}
		}
		slices.SortFunc(scanned, func(a, b Entry) int { return cmp.Compare(a.Seq, b.Seq) })
		seqs := modelSortedSeqs(mc.entries)
		if len(scanned) != len(seqs) {
			return fmt.Errorf("consumer %q: index holds %d entries %v, model %d %v", name, len(scanned), modelEntrySeqs(scanned), len(seqs), seqs)
		}
		for i, en := range scanned {
			if err := modelEntryDiff(en, mc.entries[seqs[i]]); err != nil {
				return fmt.Errorf("consumer %q scanned %w", name, err)
			}
		}
		type bar struct {
			key  string
			head uint64
		}
		var gotB []bar
		if err := c.Barriers(func(key []byte, head uint64) error {
			gotB = append(gotB, bar{string(key), head})
			return nil
		}); err != nil {
			return err
		}
		// Barriers come in index order: by key length, then bytes.
		var wantB []bar
		for k, h := range mc.barriers {
			wantB = append(wantB, bar{k, h})
		}
		slices.SortFunc(wantB, func(a, b bar) int {
			return cmp.Or(cmp.Compare(len(a.key), len(b.key)), strings.Compare(a.key, b.key))
		})
		if !slices.Equal(gotB, wantB) {
			return fmt.Errorf("consumer %q barriers %+v, want %+v", name, gotB, wantB)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Illegal operations.

func (mr *modelRun) doIllegal() error {
	name := mr.pickConsumer()
	if name == "" {
		return nil
	}
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	r, last := mr.r, mr.m.last()
	cur := mr.m.cons[name]
	scratch := cur.clone() // legal noise goes here; it must not be applied
	tx := c.Begin()
	used := map[uint64]bool{}
	kind := r.IntN(9)
	noise := r.IntN(2) == 0
	advanced := false
	if noise && kind != 3 && kind != 4 && r.IntN(2) == 0 {
		mr.addAdvance(tx, scratch, used)
		advanced = true
	}
	if noise && r.IntN(2) == 0 {
		mr.addRetries(tx, scratch, 1, used)
	}
	if noise && r.IntN(3) == 0 {
		mr.addBarriers(tx, scratch)
	}
	cursor := cur.cursor // the cursor the illegal put is checked against
	if advanced {
		cursor = scratch.cursor
	}
	// free returns a seq in [lo, hi] that is not named yet and has no entry,
	// or 0.
	free := func(lo, hi uint64) uint64 {
		for range 20 {
			if hi < lo {
				return 0
			}
			s := lo + uint64(r.IntN(int(hi-lo+1)))
			if _, ok := cur.entries[s]; !ok && !used[s] && s > 0 {
				return s
			}
		}
		return 0
	}
	var desc string
	switch kind {
	case 0: // an entry for an event passed without one
		s := free(1, cur.cursor-1)
		if s == 0 || s > last {
			return nil
		}
		tx.Put(mr.newEntry(s, mr.randomState()))
		desc = fmt.Sprintf("put for passed event %d", s)
	case 1: // an entry at or past the cursor
		s := free(cursor, cursor+3)
		if s == 0 {
			return nil
		}
		en := Entry{Seq: s, State: mr.randomState(), Key: []byte("k"), DueAt: mr.now}
		if s <= last {
			en = mr.newEntry(s, en.State)
		}
		tx.Put(en)
		desc = fmt.Sprintf("put at %d, cursor %d", s, cursor)
	case 2: // settling an event without an entry
		s := free(1, last+2)
		if s == 0 {
			return nil
		}
		if r.IntN(2) == 0 {
			tx.Succeed(s)
		} else {
			tx.Purge(s)
		}
		desc = fmt.Sprintf("settle %d without entry", s)
	case 3: // moving the cursor back
		if cur.cursor <= 1 {
			return nil
		}
		to := uint64(r.IntN(int(cur.cursor - 1)))
		tx.Advance(to, mr.m.posOf(to))
		desc = fmt.Sprintf("cursor back %d -> %d", cur.cursor, to)
	case 4: // moving the cursor past the log's end
		to := last + 2 + uint64(r.IntN(3))
		tx.Advance(to, 0)
		desc = fmt.Sprintf("cursor past end %d -> %d", cur.cursor, to)
	case 5: // a transition outside the table
		var cands []uint64
		for _, s := range modelSortedSeqs(cur.entries) {
			if !used[s] {
				cands = append(cands, s)
			}
		}
		if len(cands) == 0 {
			return nil
		}
		s := cands[r.IntN(len(cands))]
		en := cur.entries[s]
		switch en.State {
		case StateFailed:
			if r.IntN(2) == 0 {
				en.State = StateSkipped
				tx.Put(en)
			} else {
				tx.Purge(s)
			}
		case StateSkipped:
			tx.Purge(s)
		case StateAborted:
			if r.IntN(2) == 0 {
				en.State = StateSkipped
				tx.Put(en)
			} else {
				tx.Succeed(s)
			}
		}
		desc = fmt.Sprintf("illegal transition of %d from %s", s, cur.entries[s].State)
	case 6: // an entry in a state that is never stored
		s := free(cur.cursor, cursor-1)
		if s == 0 || !advanced {
			return nil
		}
		en := mr.newEntry(s, StateFailed)
		en.State = []State{StateWaiting, StateSucceeded, StateFiltered, StatePurged, StateExecuting}[r.IntN(5)]
		tx.Put(en)
		desc = fmt.Sprintf("put %d in state %s", s, en.State)
	case 7: // seq 0
		tx.Put(Entry{Seq: 0, State: StateFailed})
		desc = "put seq 0"
	case 8: // one event named twice: an error, though not a transition's
		var cands []uint64
		for _, s := range modelSortedSeqs(cur.entries) {
			if !used[s] {
				cands = append(cands, s)
			}
		}
		if len(cands) == 0 {
			return nil
		}
		s := cands[r.IntN(len(cands))]
		if cur.entries[s].State == StateAborted {
			tx.Purge(s)
			tx.Purge(s)
		} else {
			tx.Succeed(s)
			tx.Succeed(s)
		}
		mr.logf("illegal %q: settle %d twice (with noise %v)", name, s, noise)
		if err := tx.Commit(); err == nil {
			return fmt.Errorf("settling %d twice in one transaction committed", s)
		}
		return nil
	}
	mr.logf("illegal %q: %s (with noise %v)", name, desc, noise)
	if r.IntN(2) == 0 {
		err = tx.CommitSync()
	} else {
		err = tx.Commit()
	}
	if !errors.Is(err, ErrIllegalTransition) {
		return fmt.Errorf("illegal %s: commit returned %v, want ErrIllegalTransition", desc, err)
	}
	mr.cov.illegal++
	return nil // check() verifies that nothing changed
}

// ---------------------------------------------------------------------------
// The comparison.

func (mr *modelRun) check() error {
	e, m := mr.e, mr.m
	last := m.last()
	if got := e.LastSeq(); got != last {
		return fmt.Errorf("LastSeq %d, want %d", got, last)
	}
	// The log: a suffix that every cursor still needs, in order.
	got := readAll(mr.t, e, 1)
	first := last + 1
	if len(got) > 0 {
		first = got[0].Seq
	}
	for i, g := range got {
		if g.Seq != first+uint64(i) {
			return fmt.Errorf("log record %d has seq %d, want %d", i, g.Seq, first+uint64(i))
		}
		if g.Seq > last {
			return fmt.Errorf("log has seq %d past the end %d", g.Seq, last)
		}
		w := m.log[g.Seq-1]
		if g.Pos != w.pos || !bytes.Equal(g.Payload, w.payload) || !bytes.Equal(g.MessageID, w.msgID) || !bytes.Equal(g.Key, w.key) || g.ReceivedAt != w.receivedAt {
			return fmt.Errorf("log record %d differs: pos %s payload %.20q id %q key %q, want pos %s payload %.20q id %q key %q",
				g.Seq, g.Pos, g.Payload, g.MessageID, g.Key, w.pos, w.payload, w.msgID, w.key)
		}
	}
	if len(got) > 0 && got[len(got)-1].Seq != last {
		return fmt.Errorf("log ends at %d, want %d", got[len(got)-1].Seq, last)
	}
	st := e.Stats()
	if st.FirstSeq != first {
		return fmt.Errorf("Stats.FirstSeq %d, but the log starts at %d", st.FirstSeq, first)
	}
	if first < mr.firstSeq {
		return fmt.Errorf("log start went back from %d to %d", mr.firstSeq, first)
	}
	mr.firstSeq = first
	if minCur := mr.minCursor(); first > minCur {
		return fmt.Errorf("log starts at %d but a cursor is at %d: events reclaimed too early", first, minCur)
	}
	if err := mr.compareConsumerState(m.cons); err != nil {
		return err
	}
	if len(st.Consumers) != len(m.cons) {
		return fmt.Errorf("Stats has %d consumers, want %d", len(st.Consumers), len(m.cons))
	}
	for _, cs := range st.Consumers {
		mc := m.cons[cs.Name]
		if mc == nil || cs.Cursor != mc.cursor || cs.Failed != mc.countOf(StateFailed) || cs.Skipped != mc.countOf(StateSkipped) ||
			cs.Aborted != mc.countOf(StateAborted) || cs.BacklogEvents != last+1-mc.cursor {
			return fmt.Errorf("Stats of consumer %+v disagree with model", cs)
		}
		// A reader from the cursor with its position hint starts there.
		rd, err := e.NewReader(mc.cursor, mc.pos)
		if err != nil {
			return fmt.Errorf("reader of %q: %w", cs.Name, err)
		}
		b, err := rd.Next(nil, 1)
		rd.Close()
		if err != nil {
			return fmt.Errorf("reader of %q: %w", cs.Name, err)
		}
		if mc.cursor <= last && (len(b) != 1 || b[0].Seq != mc.cursor || b[0].Pos != m.posOf(mc.cursor)) {
			return fmt.Errorf("reader of %q from its cursor %d (hint %s) read %v", cs.Name, mc.cursor, mc.pos, b)
		}
		if mc.cursor > last && len(b) != 0 {
			return fmt.Errorf("reader of %q past the end read %v", cs.Name, b)
		}
	}
	readable := map[uint64]bool{}
	for _, name := range m.names {
		if err := mr.checkConsumer(name, readable); err != nil {
			return fmt.Errorf("consumer %q: %w", name, err)
		}
	}
	return mr.checkStragglers()
}

func (mr *modelRun) checkConsumer(name string, readable map[uint64]bool) error {
	m, r := mr.m, mr.r
	mc := m.cons[name]
	c, err := mr.consumer(name)
	if err != nil {
		return err
	}
	for s := range StatePurged + 2 {
		if got, want := c.Count(s), mc.countOf(s); got != want {
			return fmt.Errorf("Count(%s) = %d, want %d", s, got, want)
		}
	}
	seqs := modelSortedSeqs(mc.entries)
	for _, seq := range seqs {
		en, err := c.Entry(seq)
		if err != nil {
			return fmt.Errorf("Entry(%d): %w", seq, err)
		}
		if err := modelEntryDiff(en, mc.entries[seq]); err != nil {
			return err
		}
		if !readable[seq] {
			if err := mr.checkRead(seq, en.Pos); err != nil {
				return err
			}
			readable[seq] = true
		}
	}
	// A few events without an entry have none.
	for range 3 {
		s := uint64(r.IntN(int(m.last() + 2)))
		if _, ok := mc.entries[s]; ok {
			continue
		}
		if _, err := c.Entry(s); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("Entry(%d) without entry: %v, want ErrNotFound", s, err)
		}
	}
	// Due.
	var due []Entry
	nextDue, hasDue := int64(0), false
	for _, seq := range seqs {
		en := mc.entries[seq]
		if en.State != StateFailed {
			continue
		}
		if !hasDue || en.DueAt < nextDue {
			nextDue, hasDue = en.DueAt, true
		}
		if en.DueAt <= mr.now {
			due = append(due, en)
		}
	}
	slices.SortStableFunc(due, func(a, b Entry) int { return cmp.Or(cmp.Compare(a.DueAt, b.DueAt), cmp.Compare(a.Seq, b.Seq)) })
	for _, limit := range []int{len(due) + 1, 1 + r.IntN(4), 0} {
		got, err := c.Due(mr.now, limit)
		if err != nil {
			return fmt.Errorf("Due: %w", err)
		}
		if err := modelEntriesDiff("Due", got, due[:min(limit, len(due))]); err != nil {
			return err
		}
	}
	if nd, ok, err := c.NextDue(); err != nil || ok != hasDue || nd != nextDue {
		return fmt.Errorf("NextDue = %d %v %v, want %d %v", nd, ok, err, nextDue, hasDue)
	}
	// Key queues.
	for _, key := range mr.keys {
		var want []Entry
		for _, seq := range seqs {
			en := mc.entries[seq]
			if (en.State == StateFailed || en.State == StateSkipped) && bytes.Equal(en.Key, key) {
				want = append(want, en)
			}
		}
		if m.bug == bugKeyEntriesReversed {
			slices.Reverse(want)
		}
		for _, limit := range []int{len(want) + 1, 1 + r.IntN(3)} {
			got, err := c.KeyEntries(key, limit)
			if err != nil {
				return fmt.Errorf("KeyEntries(%q): %w", key, err)
			}
			if err := modelEntriesDiff(fmt.Sprintf("KeyEntries(%q)", key), got, want[:min(limit, len(want))]); err != nil {
				return err
			}
		}
		h, ok, err := c.Barrier(key)
		wh, wok := mc.barriers[string(key)]
		if err != nil || ok != wok || h != wh {
			return fmt.Errorf("Barrier(%q) = %d %v %v, want %d %v", key, h, ok, err, wh, wok)
		}
	}
	// Pages of aborted entries, all or one reason.
	match, desc := mr.randomMatch()
	var aborted []Entry
	for _, seq := range seqs {
		en := mc.entries[seq]
		if en.State == StateAborted && (match == nil || match(&en)) {
			aborted = append(aborted, en)
		}
	}
	limit := 1 + r.IntN(4)
	after, i := uint64(0), 0
	for {
		page, err := c.Aborted(after, limit, match)
		if err != nil {
			return fmt.Errorf("Aborted: %w", err)
		}
		want := aborted[i:min(i+limit, len(aborted))]
		if err := modelEntriesDiff(fmt.Sprintf("Aborted(%d, %d, %s)", after, limit, desc), page, want); err != nil {
			return err
		}
		if len(page) == 0 {
			break
		}
		i += len(page)
		after = page[len(page)-1].Seq
	}
	if page, err := c.Aborted(0, 0, match); err != nil || len(page) != 0 {
		return fmt.Errorf("Aborted with limit 0 returned %d entries, %v", len(page), err)
	}
	return nil
}

func (c *mCons) countOf(s State) int64 {
	if int(s) >= len(c.counts) {
		return 0
	}
	return c.counts[s]
}

// checkRead reads the record of an entry by its position (from its segment
// or, once that is gone, from the straggler store).
func (mr *modelRun) checkRead(seq uint64, pos Pos) error {
	rec, err := mr.e.Read(seq, pos)
	if err != nil {
		return fmt.Errorf("Read(%d, %s): %w", seq, pos, err)
	}
	w := mr.m.log[seq-1]
	if rec.Seq != seq || !bytes.Equal(rec.Payload, w.payload) || !bytes.Equal(rec.MessageID, w.msgID) ||
		!bytes.Equal(rec.Key, w.key) || !bytes.Equal(rec.Source, w.source) || !bytes.Equal(rec.Type, w.typ) {
		return fmt.Errorf("Read(%d, %s) = seq %d payload %.20q, want %.20q", seq, pos, rec.Seq, rec.Payload, w.payload)
	}
	return nil
}

// checkStragglers compares the straggler store with the entries: it holds a
// copy of exactly the events that some consumer has an entry for and whose
// segment is gone.
func (mr *modelRun) checkStragglers() error {
	e := mr.e
	e.segMu.RLock()
	live := map[uint32]bool{}
	for _, s := range e.segments {
		live[s.id] = true
	}
	e.segMu.RUnlock()
	want := map[uint64]bool{}
	for _, mc := range mr.m.cons {
		for seq, en := range mc.entries {
			if !live[en.Pos.Segment()] {
				want[seq] = true
			}
		}
	}
	if mr.bug == bugStragglerEarlyDrop {
		for _, mc := range mr.m.cons {
			for seq := range mc.dropped {
				delete(want, seq)
			}
		}
	}
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixStraggler}, UpperBound: []byte{prefixStraggler + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	got := map[uint64]bool{}
	for it.First(); it.Valid(); it.Next() {
		if len(it.Key()) != 9 {
			return fmt.Errorf("straggler key %x", it.Key())
		}
		got[binary.BigEndian.Uint64(it.Key()[1:])] = true
	}
	if err := it.Error(); err != nil {
		return err
	}
	for seq := range want {
		if !got[seq] {
			return fmt.Errorf("no straggler copy of %d, whose segment is gone but which has an entry", seq)
		}
	}
	for seq := range got {
		if !want[seq] {
			return fmt.Errorf("straggler copy of %d kept, but no consumer needs it (or its segment is live)", seq)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Helpers.

func modelSortedSeqs(m map[uint64]Entry) []uint64 {
	out := make([]uint64, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func modelSortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func modelEntrySeqs(es []Entry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

func modelEntryDiff(got, want Entry) error {
	if got.Seq != want.Seq || got.Pos != want.Pos || got.State != want.State || got.Flags != want.Flags ||
		!bytes.Equal(got.Key, want.Key) || got.ReceivedAt != want.ReceivedAt || got.Attempts != want.Attempts ||
		got.FirstFailure != want.FirstFailure || got.LastAttempt != want.LastAttempt || got.DueAt != want.DueAt ||
		got.LastStatus != want.LastStatus || got.Reason != want.Reason || !bytes.Equal(got.Response, want.Response) {
		return fmt.Errorf("entry %d differs:\n  got  %s\n  want %s", want.Seq, modelEntryString(got), modelEntryString(want))
	}
	return nil
}

func modelEntryString(e Entry) string {
	return fmt.Sprintf("seq=%d pos=%s %s flags=%d key=%q recv=%d att=%d first=%d last=%d due=%d status=%d reason=%q resp=%d bytes",
		e.Seq, e.Pos, e.State, e.Flags, e.Key, e.ReceivedAt, e.Attempts, e.FirstFailure, e.LastAttempt, e.DueAt, e.LastStatus, e.Reason, len(e.Response))
}

func modelEntriesDiff(what string, got, want []Entry) error {
	if len(got) != len(want) {
		return fmt.Errorf("%s returned %v, want %v", what, modelEntrySeqs(got), modelEntrySeqs(want))
	}
	for i := range got {
		if err := modelEntryDiff(got[i], want[i]); err != nil {
			return fmt.Errorf("%s at %d (got %v, want %v): %w", what, i, modelEntrySeqs(got), modelEntrySeqs(want), err)
		}
	}
	return nil
}

func modelEnvInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err == nil {
			return n
		}
	}
	return def
}

// ---------------------------------------------------------------------------
// The tests.

// modelRegressionSeeds failed once and run every time: 464 (reclaim kept
// an empty segment after a restart when the last records carried no dedup
// key: the dedup keys counted as indexed only through the checkpoint) and
// 1089 (the same, depending on timing).
var modelRegressionSeeds = []uint64{464, 1089}

func TestModel(t *testing.T) {
	steps := modelEnvInt("SLUICE_MODEL_STEPS", modelDefaultSteps)
	t.Run("seeds", func(t *testing.T) {
		var seeds []uint64
		if v := os.Getenv("SLUICE_MODEL_SEED"); v != "" {
			s, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("SLUICE_MODEL_SEED=%q: %v", v, err)
			}
			seeds = []uint64{s}
		} else {
			base := uint64(modelEnvInt("SLUICE_MODEL_SEED_BASE", 1))
			for i := range modelEnvInt("SLUICE_MODEL_SEEDS", modelDefaultSeeds) {
				seeds = append(seeds, base+uint64(i))
			}
			seeds = append(seeds, modelRegressionSeeds...)
		}
		var cov modelCoverage
		for _, seed := range seeds {
			mr := newModelRun(t, seed, bugNone)
			f := mr.run(steps)
			if f != nil {
				t.Fatal(f)
			}
			for op, n := range mr.cov.ops {
				cov.ops[op] += n
			}
			cov.illegal += mr.cov.illegal
			cov.lossyCrashes += mr.cov.lossyCrashes
			cov.lostCommits += mr.cov.lostCommits
			cov.stragglers += mr.cov.stragglers
			cov.segmentsDeleted += mr.cov.segmentsDeleted
		}
		t.Logf("%d seeds of %d steps passed; %s", len(seeds), steps, &cov)
	})
	// Canaries: a wrong model must be caught within a few seeds.
	for _, bug := range []modelBug{bugCountNoDecrement, bugKeyEntriesReversed, bugCrashKeepsUnsynced, bugStragglerEarlyDrop} {
		t.Run("canary/"+modelBugNames[bug], func(t *testing.T) {
			for seed := uint64(1); seed <= 40; seed++ {
				f := newModelRun(t, seed, bug).run(steps)
				if f == nil {
					continue
				}
				// The same run with the right model must pass: the failure
				// is the model bug's, not the engine's.
				if ok := newModelRun(t, seed, bugNone).run(f.step); ok != nil {
					t.Fatalf("canary seed %d failed with the right model too: %v", seed, ok)
				}
				t.Logf("caught at seed %d step %d: %.300v", f.seed, f.step, f.err)
				return
			}
			t.Fatalf("the checker did not notice the model bug %s in 40 seeds", modelBugNames[bug])
		})
	}
}
