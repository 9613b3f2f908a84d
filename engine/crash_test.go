package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sluice-cdi/sluice/engine/crashfs"
)

// Crash tests: a live engine on a crashable in-memory FS is cloned with
// vfs.MemFS.CrashClone at random moments while appenders and a consumer
// work, and each clone, which holds the synced data plus a random part of
// the unsynced data, is opened and checked. Segments and the Pebble index
// live on the same FS, so both crash at the same instant.
//
// Every iteration has its own seed; a failure names the command that
// replays it. The seed fixes the workload's choices and the crash's choice
// of unsynced blocks, not the goroutines' interleaving, so a replay explores
// the same kind of history rather than the identical one.
//
//	SLUICE_CRASH_SEED=N   run only the iteration with seed N
//	SLUICE_CRASH_ITERS=N  run N iterations (default crashItersDefault)

const crashItersDefault = 16

// logCapture collects warnings and errors logged by an engine.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *logCapture) logger() *slog.Logger { return slog.New(&captureHandler{c: c}) }

// engineErrors returns the error lines not logged by Pebble.
func (c *logCapture) engineErrors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.lines {
		if strings.HasPrefix(l, "ERROR") && !strings.Contains(l, "component=pebble") {
			out = append(out, l)
		}
	}
	return out
}

func (c *logCapture) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

type captureHandler struct {
	c     *logCapture
	attrs []slog.Attr
}

func (h *captureHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s", a)
		return true
	})
	h.c.mu.Lock()
	h.c.lines = append(h.c.lines, b.String())
	h.c.mu.Unlock()
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureHandler{c: h.c, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

// Records of the crash, corruption and error tests are derived from their
// messageId alone, so any record read back can be checked on its own.
func keyFor(msgID string) []byte {
	return fmt.Appendf(nil, "k%d", crc32.ChecksumIEEE([]byte(msgID))%5)
}

func payloadFor(msgID string) []byte {
	pad := int(crc32.ChecksumIEEE([]byte(msgID)) % 300)
	return fmt.Appendf(nil, `{"messageId":%q,"pad":%q}`, msgID, strings.Repeat("x", pad))
}

func recFor(msgID string) Record {
	return Record{
		ReceivedAt: time.Now().UnixNano(),
		Source:     []byte("web"),
		Type:       []byte("track"),
		MessageID:  []byte(msgID),
		Key:        keyFor(msgID),
		Payload:    payloadFor(msgID),
	}
}

func recsFor(msgIDs []string) []Record {
	out := make([]Record, len(msgIDs))
	for i, m := range msgIDs {
		out[i] = recFor(m)
	}
	return out
}

// checkRec reports whether a record read back is the one its messageId
// names.
func checkRec(r Record) error {
	m := string(r.MessageID)
	if !bytes.Equal(r.Payload, payloadFor(m)) || !bytes.Equal(r.Key, keyFor(m)) {
		return fmt.Errorf("record %d (messageId %q) has payload %q key %q", r.Seq, m, r.Payload, r.Key)
	}
	return nil
}

func crashOptions(fs vfs.FS, l *slog.Logger) Options {
	o := testOptions(fs)
	o.Logger = l
	o.ReclaimActiveMinBytes = 4 << 10 // let reclaim cut the active segment too
	o.DedupIndexBatchKeys = 100       // index batches (and their checkpoints) during the run
	return o
}

// ackLog is what the appenders know: acknowledged seq -> messageId.
type ackLog struct {
	mu    sync.Mutex
	acked map[uint64]string
}

func (a *ackLog) add(recs []Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range recs {
		if r.Seq != 0 {
			a.acked[r.Seq] = string(r.MessageID)
		}
	}
}

func (a *ackLog) snapshot() map[uint64]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.acked)
}

// crashClone is one crashed copy with what was acknowledged before it.
type crashClone struct {
	fs      crashfs.FS
	acked   map[uint64]string
	percent int
	noDedup bool // the run had deduplication off
}

// crashIterOptions are crashOptions with deduplication off for one seed in
// four: recovery must tell a torn tail from lost records without the dedup
// checkpoint.
func crashIterOptions(fs vfs.FS, l *slog.Logger, noDedup bool) Options {
	o := crashOptions(fs, l)
	if noDedup {
		o.DedupWindow = -1
	}
	return o
}

func crashEnvUint(t *testing.T, name string) (uint64, bool) {
	s := os.Getenv(name)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return n, true
}

func TestCrashRecovery(t *testing.T) {
	var seeds []uint64
	if s, ok := crashEnvUint(t, "SLUICE_CRASH_SEED"); ok {
		seeds = []uint64{s}
	} else {
		n := uint64(crashItersDefault)
		if testing.Short() {
			n = 4
		}
		if v, ok := crashEnvUint(t, "SLUICE_CRASH_ITERS"); ok {
			n = v
		}
		base := uint64(time.Now().UnixNano())
		t.Logf("base seed %d, %d iterations", base, n)
		for i := range n {
			seeds = append(seeds, base+i)
		}
	}
	for _, seed := range seeds {
		ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runCrashIteration(t, seed) })
		if !ok {
			t.Logf("replay with: SLUICE_CRASH_SEED=%d go test ./engine -run 'TestCrashRecovery' -count=1 -v", seed)
			return
		}
	}
}

// crashPercent picks the share of unsynced data a clone keeps: 0, 50, 100
// and a random value in turn.
func crashPercent(seed uint64, rng *rand.Rand) int {
	switch seed % 4 {
	case 0:
		return 0
	case 1:
		return 50
	case 2:
		return 100
	default:
		return 1 + rng.IntN(99)
	}
}

func runCrashIteration(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	fs := crashfs.New()
	logs := &logCapture{}
	noDedup := seed%4 == 3
	e, err := Open(crashIterOptions(fs, logs.logger(), noDedup))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	c, err := e.Consumer("c")
	if err != nil {
		t.Fatal(err)
	}
	acks := &ackLog{acked: make(map[uint64]string)}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	appenders := 2 + rng.IntN(3)
	for g := range appenders {
		wg.Add(1)
		grng := rand.New(rand.NewPCG(seed, uint64(g+1)))
		go func() {
			defer wg.Done()
			if err := crashAppender(e, g, grng, acks, &stop, !noDedup); err != nil {
				errc <- fmt.Errorf("appender %d: %w", g, err)
			}
		}()
	}
	wg.Add(1)
	crng := rand.New(rand.NewPCG(seed, 0xc0))
	go func() {
		defer wg.Done()
		if err := crashConsumer(e, c, crng, &stop); err != nil {
			errc <- fmt.Errorf("consumer: %w", err)
		}
	}()

	var clones []crashClone
	for range 1 + rng.IntN(3) {
		time.Sleep(time.Duration(2+rng.IntN(40)) * time.Millisecond)
		acked := acks.snapshot() // every Append in it returned before the clone
		p := crashPercent(seed, rng)
		cfg := vfs.CrashCloneCfg{UnsyncedDataPercent: p, RNG: rand.New(rand.NewPCG(seed, rng.Uint64()))}
		clones = append(clones, crashClone{fs: fs.CrashClone(cfg), acked: acked, percent: p, noDedup: noDedup})
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if errs := logs.engineErrors(); len(errs) > 0 {
		t.Errorf("engine logged errors during the workload:\n%s", strings.Join(errs, "\n"))
	}
	if t.Failed() {
		return
	}
	for i, cl := range clones {
		t.Logf("clone %d: %d acked records, UnsyncedDataPercent=%d", i, len(cl.acked), cl.percent)
		checkCrashClone(t, cl, i, rng)
		if t.Failed() {
			return
		}
	}
}

// crashAppender appends batches of 1..50 new records until stopped, and
// now and then one of its acknowledged batches again, which must be found
// duplicate.
func crashAppender(e *Engine, g int, rng *rand.Rand, acks *ackLog, stop *atomic.Bool, resend bool) error {
	var done [][]string
	next := 0
	for !stop.Load() {
		if resend && len(done) > 0 && rng.IntN(20) == 0 {
			ids := done[rng.IntN(len(done))]
			res, err := e.Append(context.Background(), recsFor(ids))
			if err != nil {
				return err
			}
			if res.Stored != 0 || res.Duplicates != len(ids) {
				return fmt.Errorf("re-append of %d acknowledged records: %+v", len(ids), res)
			}
			continue
		}
		ids := make([]string, 1+rng.IntN(50))
		for i := range ids {
			ids[i] = fmt.Sprintf("g%d-%d", g, next)
			next++
		}
		recs := recsFor(ids)
		res, err := e.Append(context.Background(), recs)
		if err != nil {
			return err
		}
		if res.Stored != len(ids) {
			return fmt.Errorf("append of %d new records: %+v", len(ids), res)
		}
		acks.add(recs)
		done = append(done, ids)
	}
	return nil
}

// consumerModel is the consumer goroutine's view of its entries and
// barriers, used only to pick legal transitions.
type consumerModel struct {
	entries  map[uint64]Entry
	seqs     []uint64 // keys of entries, in insertion order, for seeded picks
	barriers map[string]uint64
}

func (m *consumerModel) set(en Entry) {
	if _, ok := m.entries[en.Seq]; !ok {
		m.seqs = append(m.seqs, en.Seq)
	}
	m.entries[en.Seq] = en
}

func (m *consumerModel) drop(seq uint64) {
	delete(m.entries, seq)
	m.seqs = slices.DeleteFunc(m.seqs, func(s uint64) bool { return s == seq })
}

// crashConsumer reads behind the appenders and commits random transitions:
// cursor advances with failed, skipped and aborted entries, retries,
// successes, aborts, replays, purges, barrier changes, and reclaims.
func crashConsumer(e *Engine, c *Consumer, rng *rand.Rand, stop *atomic.Bool) error {
	m := &consumerModel{entries: make(map[uint64]Entry), barriers: make(map[string]uint64)}
	var buf []Record
	for !stop.Load() {
		ch := e.Changed()
		cur, pos := c.Cursor()
		r, err := e.NewReader(cur, pos)
		if err != nil {
			return err
		}
		buf, err = r.Next(buf[:0], 1+rng.IntN(60))
		if err != nil {
			r.Close()
			return err
		}
		type item struct {
			seq uint64
			pos Pos
			key []byte
		}
		items := make([]item, len(buf))
		for i, x := range buf {
			if err := checkRec(x); err != nil {
				r.Close()
				return err
			}
			items[i] = item{x.Seq, x.Pos, append([]byte(nil), x.Key...)}
		}
		r.Close()
		if len(items) > 0 && items[0].seq != cur {
			return fmt.Errorf("reader from cursor %d returned seq %d first", cur, items[0].seq)
		}

		tx := c.Begin()
		var puts []Entry
		var drops []uint64
		named := make(map[uint64]bool)
		if len(items) > 0 {
			to, toPos := items[len(items)-1].seq+1, Pos(0)
			if len(items) > 1 && rng.IntN(2) == 0 {
				// Stop before the last one, with its Pos as the cursor's hint.
				last := items[len(items)-1]
				to, toPos = last.seq, last.pos
				items = items[:len(items)-1]
			}
			for _, it := range items {
				en := Entry{Seq: it.seq, Pos: it.pos, Key: it.key, Attempts: 1}
				switch x := rng.IntN(100); {
				case x < 10:
					en.State, en.DueAt = StateFailed, rng.Int64N(1e9)
				case x < 15:
					en.State = StateSkipped
				case x < 18:
					en.State, en.Reason, en.LastStatus = StateAborted, "poison", 400
				default:
					continue
				}
				tx.Put(en)
				puts = append(puts, en)
				named[en.Seq] = true
			}
			tx.Advance(to, toPos)
		}
		for range rng.IntN(4) {
			if len(m.seqs) == 0 {
				break
			}
			seq := m.seqs[rng.IntN(len(m.seqs))]
			if named[seq] {
				continue
			}
			named[seq] = true
			en := m.entries[seq]
			x := rng.IntN(10)
			switch {
			case en.State == StateAborted && x < 5:
				tx.Purge(seq)
				drops = append(drops, seq)
			case en.State == StateAborted:
				en.State, en.Attempts, en.DueAt, en.Flags = StateFailed, 0, rng.Int64N(1e9), EntryReplayed
				tx.Put(en)
				puts = append(puts, en)
			case x < 4:
				tx.Succeed(seq)
				drops = append(drops, seq)
			case x < 7:
				en.State, en.Attempts, en.DueAt = StateFailed, en.Attempts+1, rng.Int64N(1e9)
				tx.Put(en)
				puts = append(puts, en)
			default:
				en.State, en.Reason = StateAborted, "gave up"
				tx.Put(en)
				puts = append(puts, en)
			}
		}
		var setB map[string]uint64
		var clearB []string
		if rng.IntN(4) == 0 {
			key := fmt.Sprintf("k%d", rng.IntN(5))
			if _, ok := m.barriers[key]; ok {
				tx.ClearBarrier([]byte(key))
				clearB = append(clearB, key)
			} else if cur > 1 {
				head := 1 + rng.Uint64N(cur-1)
				tx.SetBarrier([]byte(key), head)
				setB = map[string]uint64{key: head}
			}
		}
		if rng.IntN(4) == 0 {
			err = tx.CommitSync()
		} else {
			err = tx.Commit()
		}
		if err != nil {
			return err
		}
		for _, en := range puts {
			m.set(en)
		}
		for _, seq := range drops {
			m.drop(seq)
		}
		maps.Copy(m.barriers, setB)
		for _, k := range clearB {
			delete(m.barriers, k)
		}
		if rng.IntN(8) == 0 {
			if _, err := e.Reclaim(); err != nil {
				return fmt.Errorf("reclaim: %w", err)
			}
		}
		if len(buf) == 0 {
			select {
			case <-ch:
			case <-time.After(time.Millisecond):
			}
		}
	}
	return nil
}

// checkCrashClone opens a crashed copy and checks what must have survived
// and that nothing refers to what did not.
func checkCrashClone(t *testing.T, cl crashClone, idx int, rng *rand.Rand) {
	t.Helper()
	logs := &logCapture{}
	e, err := Open(crashIterOptions(cl.fs, logs.logger(), cl.noDedup))
	if err != nil {
		t.Fatalf("clone %d: reopen after crash: %v", idx, err)
	}
	defer func() {
		if e != nil {
			e.Close()
		}
	}()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("clone %d (UnsyncedDataPercent=%d): %s\nengine log:\n%s", idx, cl.percent, fmt.Sprintf(format, args...), logs.all())
	}
	st := e.Stats()
	last := e.LastSeq()
	if st.LostRecords != 0 {
		fail("a crash lost %d records", st.LostRecords)
	}

	// (c) Consecutive seqs from the first stored segment to LastSeq, each
	// record intact, no messageId twice.
	all := readAll(t, e, 1)
	first := st.FirstSeq
	if len(all) == 0 {
		if last != 0 && first != last+1 {
			fail("empty log but FirstSeq %d, LastSeq %d", first, last)
		}
	} else if all[0].Seq != first || all[len(all)-1].Seq != last {
		fail("log holds %d..%d, want FirstSeq %d .. LastSeq %d", all[0].Seq, all[len(all)-1].Seq, first, last)
	}
	bySeq := make(map[uint64]string, len(all))
	seen := make(map[string]uint64, len(all))
	for i, r := range all {
		if r.Seq != first+uint64(i) {
			fail("record %d has seq %d, want %d", i, r.Seq, first+uint64(i))
		}
		if err := checkRec(r); err != nil {
			fail("%v", err)
		}
		m := string(r.MessageID)
		if s, dup := seen[m]; dup {
			fail("messageId %q stored twice: seq %d and %d", m, s, r.Seq)
		}
		seen[m] = r.Seq
		bySeq[r.Seq] = m
	}

	// Cursors as stored (Open clamps a cursor past the end in memory only,
	// with an error log, so read the index itself).
	minCursor := last + 1
	for _, c := range e.Consumers() {
		v, closer, err := e.db.Get(cursorKey(c.id))
		if err != nil {
			fail("cursor of %q: %v", c.name, err)
		}
		cur, pos := decodeTestCursor(v)
		closer.Close()
		if cur > last+1 || cur == 0 {
			fail("stored cursor of %q is %d, log ends at %d", c.name, cur, last)
		}
		if mem, _ := c.Cursor(); mem != cur {
			fail("cursor of %q is %d in memory, %d stored", c.name, mem, cur)
		}
		minCursor = min(minCursor, cur)
		if pos != 0 && cur <= last {
			r, err := e.Read(cur, pos)
			if err != nil || r.Seq != cur {
				fail("cursor %d of %q has Pos %s: %v (seq %d)", cur, c.name, pos, err, r.Seq)
			}
		}
		checkCrashEntries(t, e, c, cur, last, fail)
	}

	for _, c := range e.Consumers() {
		t.Logf("clone %d: log %d..%d in %d segments, torn tail %d bytes, cursor %d, entries failed %d skipped %d aborted %d",
			idx, first, last, st.Segments, st.TruncatedBytes, c.cursor.Load(), c.Count(StateFailed), c.Count(StateSkipped), c.Count(StateAborted))
	}

	// (b) Every record acknowledged before the crash is there with its seq
	// and payload, or was reclaimed: below every durable cursor.
	maxAcked := uint64(0)
	for seq, m := range cl.acked {
		maxAcked = max(maxAcked, seq)
		if seq < first {
			if seq >= minCursor {
				fail("acknowledged record %d (%q) is gone but cursor %d has not passed it", seq, m, minCursor)
			}
			continue
		}
		if got, ok := bySeq[seq]; !ok || got != m {
			fail("acknowledged record %d (%q) lost or changed: found %q (log %d..%d)", seq, m, got, first, last)
		}
	}
	if maxAcked > last {
		fail("LastSeq %d below acknowledged seq %d", last, maxAcked)
	}
	if errs := logs.engineErrors(); len(errs) > 0 {
		fail("recovery logged errors:\n%s", strings.Join(errs, "\n"))
	}

	// (e) The engine works on: acknowledged records are still known to
	// dedup, new ones get the next seqs, the consumer moves on.
	var dupIDs []string
	for _, m := range cl.acked {
		if len(dupIDs) == 50 {
			break
		}
		dupIDs = append(dupIDs, m)
	}
	if len(dupIDs) > 0 && !cl.noDedup {
		res, err := e.Append(context.Background(), recsFor(dupIDs))
		if err != nil || res.Stored != 0 || res.Duplicates != len(dupIDs) {
			fail("re-append of %d acknowledged records after crash: %+v %v", len(dupIDs), res, err)
		}
	}
	ids := make([]string, 1+rng.IntN(200))
	for i := range ids {
		ids[i] = fmt.Sprintf("post-%d-%d", idx, i)
	}
	recs := recsFor(ids)
	if res, err := e.Append(context.Background(), recs); err != nil || res.Stored != len(ids) || recs[0].Seq != last+1 {
		fail("append after crash: %+v %v, first seq %d, want %d", res, err, recs[0].Seq, last+1)
	}
	got := readAll(t, e, last+1)
	if len(got) != len(ids) {
		fail("read %d records appended after crash, want %d", len(got), len(ids))
	}
	for i, r := range got {
		if r.Seq != last+1+uint64(i) || string(r.MessageID) != ids[i] {
			fail("after crash, record %d is seq %d %q", i, r.Seq, r.MessageID)
		}
		if x, err := e.Read(r.Seq, r.Pos); err != nil || x.Seq != r.Seq || checkRec(x) != nil {
			fail("read %d at %s after crash: %v", r.Seq, r.Pos, err)
		}
	}
	for _, c := range e.Consumers() {
		tx := c.Begin()
		tx.Advance(e.LastSeq()+1, 0)
		if err := tx.CommitSync(); err != nil {
			fail("advance %q after crash: %v", c.name, err)
		}
	}
	if _, err := e.Reclaim(); err != nil {
		fail("reclaim after crash: %v", err)
	}
	want := e.LastSeq()
	if err := e.Close(); err != nil {
		fail("close after crash: %v", err)
	}
	e = nil

	// Recovery is repeatable: a second open sees the same log.
	e2, err := Open(crashIterOptions(cl.fs, logs.logger(), cl.noDedup))
	if err != nil {
		fail("second reopen: %v", err)
	}
	if e2.LastSeq() != want {
		e2.Close()
		fail("second reopen: LastSeq %d, want %d", e2.LastSeq(), want)
	}
	if err := e2.Close(); err != nil {
		fail("second close: %v", err)
	}
}

func decodeTestCursor(v []byte) (uint64, Pos) {
	if len(v) != 16 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(v), Pos(binary.BigEndian.Uint64(v[8:]))
}

// checkCrashEntries checks that every stored entry of c is below its
// cursor and names a record that can be read, and that the due and key
// indexes and barriers agree with the entries.
func checkCrashEntries(t *testing.T, e *Engine, c *Consumer, cur, last uint64, fail func(string, ...any)) {
	t.Helper()
	failed := make(map[uint64]bool)
	byKey := make(map[string]map[uint64]bool)
	var counts [StatePurged + 1]int64
	for _, p := range []byte{prefixEntry, prefixAborted} {
		err := e.scanEntries(p, c.id, 0, func(en Entry) bool {
			counts[en.State]++
			if en.Seq >= cur {
				fail("entry %d (%s) of %q at or past cursor %d", en.Seq, en.State, c.name, cur)
			}
			r, err := e.Read(en.Seq, en.Pos)
			if err != nil {
				fail("entry %d (%s) at %s of %q names no record: %v", en.Seq, en.State, en.Pos, c.name, err)
			}
			if r.Seq != en.Seq || checkRec(r) != nil || !bytes.Equal(r.Key, en.Key) {
				fail("entry %d at %s of %q reads seq %d key %q", en.Seq, en.Pos, c.name, r.Seq, r.Key)
			}
			if en.State == StateFailed {
				failed[en.Seq] = true
			}
			if en.State != StateAborted {
				if byKey[string(en.Key)] == nil {
					byKey[string(en.Key)] = make(map[uint64]bool)
				}
				byKey[string(en.Key)][en.Seq] = true
			}
			return true
		})
		if err != nil {
			fail("scan entries of %q: %v", c.name, err)
		}
	}
	for _, s := range []State{StateFailed, StateSkipped, StateAborted} {
		if c.Count(s) != counts[s] {
			fail("%q counts %d %s entries, index holds %d", c.name, c.Count(s), s, counts[s])
		}
	}
	due, err := c.Due(math.MaxInt64, 1<<30)
	if err != nil {
		fail("due entries of %q: %v", c.name, err)
	}
	if len(due) != len(failed) {
		fail("%q: %d due entries, %d failed entries", c.name, len(due), len(failed))
	}
	for _, en := range due {
		if !failed[en.Seq] {
			fail("%q: due entry %d is not failed (%s)", c.name, en.Seq, en.State)
		}
	}
	for k := range 5 {
		key := fmt.Sprintf("k%d", k)
		ke, err := c.KeyEntries([]byte(key), 1<<30)
		if err != nil {
			fail("key entries of %q: %v", c.name, err)
		}
		if len(ke) != len(byKey[key]) {
			fail("%q: key %s lists %d entries, want %d", c.name, key, len(ke), len(byKey[key]))
		}
		for _, en := range ke {
			if !byKey[key][en.Seq] {
				fail("%q: key %s lists entry %d", c.name, key, en.Seq)
			}
		}
	}
	err = c.Barriers(func(key []byte, head uint64) error {
		if head == 0 || head > last {
			return fmt.Errorf("barrier %q has head %d, log ends at %d", key, head, last)
		}
		return nil
	})
	if err != nil {
		fail("barriers of %q: %v", c.name, err)
	}
}
