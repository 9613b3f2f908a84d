package fuzz

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/sluice-cdi/sluice/engine"
)

// Storage faults: index damage at a power loss (ModeIndexDamage), a full
// disk for a stretch of virtual time (ModeDiskFull), bytes flipped in the
// frames of sealed segments between a shutdown and the reopen
// (ModeBitFlip). The oracle for all three is guarantee 6 of docs/guarantees.md: no
// acknowledged event is silently lost. Each one is, for every destination
// whose filters accept it, delivered, or a dead letter, or reported lost by
// seq (Engine.LostRanges), and only damaged frames may be reported lost.

// indexLoss is what an index-damage fault removes.
type indexLoss uint8

const (
	indexIntact    indexLoss = iota
	indexWAL                 // /sluice/index/*.log: the index comes back older
	indexFolder              // /sluice/index: Open refuses, Recover builds a new one
	indexLossKinds           // for draws
)

func (l indexLoss) String() string {
	return [...]string{"nothing", "its WAL files", "its whole folder"}[l]
}

// storageFault is what happens to the disk between a shutdown and the
// reopen.
type storageFault struct {
	index  indexLoss
	flips  []flipTarget
	noScan bool // checkDurable skips its full read: the routers meet the damage
}

// flipTarget is a frame to damage: the event's seq and where its frame
// starts.
type flipTarget struct {
	seq uint64
	pos engine.Pos
	r   *rand.Rand // which byte and bit
}

const (
	indexDir = "/sluice/index"
	logDir   = "/sluice/log/"
	// frameHeaderLen is a segment frame's len, crc and seq (engine/doc.go).
	frameHeaderLen = 16
	seqFlagBit     = uint64(1) << 63 // the group-start flag in a frame's seq
)

// fullDisk fails writes and/or syncs of segment files with ENOSPC while
// the virtual clock is inside its stretch. The engine's goroutines call
// it during Append, while the simulator waits and the clock stands still,
// so what fails depends on virtual time only. Pebble's files (the index)
// never fail: Pebble treats a failed WAL write as fatal.
type fullDisk struct {
	clock    *vclock
	from, to atomic.Int64 // virtual Unix ns; to == 0: off
	ops      atomic.Uint32
	hits     atomic.Int64
}

const (
	fullWrites uint32 = 1 << iota
	fullSyncs
)

func (f *fullDisk) String() string { return "sluice-sim-full-disk" }

// on reports whether the disk is full at t.
func (f *fullDisk) on(t time.Time) bool {
	ns := t.UnixNano()
	return f.to.Load() != 0 && ns >= f.from.Load() && ns < f.to.Load()
}

// MaybeError implements errorfs.Injector.
func (f *fullDisk) MaybeError(op errorfs.Op) error {
	if !f.on(f.clock.Now()) || !strings.HasPrefix(op.Path, logDir) || !strings.HasSuffix(op.Path, ".seg") {
		return nil
	}
	ops := f.ops.Load()
	switch op.Kind {
	case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFilePreallocate:
		if ops&fullWrites == 0 {
			return nil
		}
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo, errorfs.OpFileFlush:
		if ops&fullSyncs == 0 {
			return nil
		}
	default:
		return nil
	}
	f.hits.Add(1)
	return fmt.Errorf("simulated full disk: %s: %w", op.Path, syscall.ENOSPC)
}

// diskFull starts a stretch of full disk (op.variant says what fails).
func (s *Sim) diskFull(o op) {
	now := s.now()
	f := s.full
	if f.on(now) {
		o.dur = max(o.dur, time.Unix(0, f.to.Load()).Sub(now)) // one stretch at a time
	}
	f.ops.Store(uint32(o.variant))
	f.from.Store(now.UnixNano())
	f.to.Store(now.Add(o.dur).UnixNano())
	s.rep.DiskFull++
	what := map[uint8]string{1: "writes", 2: "syncs", 3: "writes and syncs"}[o.variant]
	s.tracef("op %d disk full for %v: segment %s fail with ENOSPC (appends must fail until %v)", s.step, o.dur, what, f.to.Load())
}

// appendRefused handles an append that failed while the disk is full: not
// acknowledged, so not counted; its records may still show up after a
// restart (a group whose sync failed can be whole in the file), hence
// kept as candidates until an append succeeds.
//
// An engine that opened on a full disk refuses appends with ErrDiskFull
// until its disk loop finds room; that loop runs in real time, which the
// simulation does not let it do, so the refusals last until the next
// reopen (a limit of the simulation, not of the engine).
func (s *Sim) appendRefused(recs []engine.Record, err error) bool {
	switch {
	case s.full.on(s.now()) && errors.Is(err, engine.ErrUnavailable):
	case s.openedFull && errors.Is(err, engine.ErrDiskFull):
	default:
		return false
	}
	s.rep.Refused += len(recs)
	for _, r := range recs {
		r.Seq = 0
		s.unacked = append(s.unacked, r)
	}
	s.tracef("append of %d records refused, disk full: %v", len(recs), err)
	return true
}

// adoptUnacked accepts records past the last acknowledged one after a
// reopen: each must be one of the refused appends' records, stored once.
// It reports whether the log now ends at the last acknowledged event.
func (s *Sim) adoptUnacked(why string) bool {
	last := s.eng.LastSeq()
	if last <= s.lastAcked || len(s.unacked) == 0 {
		return last == s.lastAcked
	}
	r, err := s.eng.NewReader(s.lastAcked+1, 0)
	if err != nil {
		s.violate("durability", nil, "", nil, "after %s: cannot read records past the last acknowledged one: %v", why, err)
		return false
	}
	defer r.Close()
	recs, err := r.Next(nil, int(last-s.lastAcked))
	if err != nil {
		s.violate("durability", nil, "", nil, "after %s: cannot read records past the last acknowledged one: %v", why, err)
		return false
	}
	for _, rec := range recs {
		i := slices.IndexFunc(s.unacked, func(u engine.Record) bool {
			return string(u.Source) == string(rec.Source) && string(u.MessageID) == string(rec.MessageID) && string(u.Payload) == string(rec.Payload)
		})
		if prev := s.byMsg[string(rec.Source)+"\x00"+string(rec.MessageID)]; prev != nil && s.now().Sub(time.Unix(0, prev.receivedAt)) < s.dedupMust {
			s.violate("dedup", nil, string(rec.Key), []uint64{rec.Seq}, "after %s the log keeps refused event %d, a duplicate of event %d (messageId %s) within the dedup window",
				why, rec.Seq, prev.seq, rec.MessageID)
		}
		if rec.Seq != s.lastAcked+1 || i < 0 {
			s.violate("durability", nil, string(rec.Key), []uint64{rec.Seq}, "after %s the log holds event %d (messageId %s) that was never acknowledged nor refused (last acknowledged %d)",
				why, rec.Seq, rec.MessageID, s.lastAcked)
			return false
		}
		rec.Payload = slices.Clone(rec.Payload)
		rec.Source, rec.Type, rec.MessageID, rec.Key = slices.Clone(rec.Source), slices.Clone(rec.Type), slices.Clone(rec.MessageID), slices.Clone(rec.Key)
		s.tracef("after %s the log keeps refused event #%d:%s (messageId %s): it counts as acknowledged", why, rec.Seq, rec.Key, rec.MessageID)
		s.addEvent(&rec)
		s.rep.Adopted++
	}
	s.unacked = nil
	return s.eng.LastSeq() == s.lastAcked
}

// damageIndex removes the index's WAL files or its whole folder on the
// file system the engine will reopen on, durably.
func (s *Sim) damageIndex(l indexLoss) {
	var err error
	switch l {
	case indexWAL:
		var names []string
		if names, err = s.fs.List(indexDir); err == nil {
			for _, n := range names {
				if strings.HasSuffix(n, ".log") && err == nil {
					err = s.fs.Remove(s.fs.PathJoin(indexDir, n))
				}
			}
		}
		if err == nil {
			err = syncDir(s.fs, indexDir)
		}
	case indexFolder:
		if err = s.fs.RemoveAll(indexDir); err == nil {
			err = syncDir(s.fs, "/sluice")
		}
	}
	if err != nil {
		s.violate("harness", nil, "", nil, "cannot damage the index: %v", err)
	}
	s.damages++
	s.rep.IndexDamages++
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// flip is a shutdown (a power loss or a graceful restart) with bytes
// flipped in sealed frames before the reopen.
func (s *Sim) flip(o op) {
	targets := s.flipTargets(o)
	s.tracef("op %d flip %d frames %s at a %s", s.step, len(targets), s.fmtTargets(targets), map[bool]string{false: "crash", true: "restart"}[o.restart])
	f := &storageFault{flips: targets, noScan: o.noScan}
	if o.restart {
		s.restart(f)
	} else {
		s.crash(f)
	}
}

func (s *Sim) fmtTargets(ts []flipTarget) string {
	seqs := make([]uint64, len(ts))
	for i, t := range ts {
		seqs[i] = t.seq
	}
	return s.fmtSeqs(seqs)
}

// flipTargets picks up to o.count stored events in sealed segments and
// finds their frames (while the engine runs). After a power loss the
// segment of the last acknowledged event is the active one, scanned at
// Open: only the segments before it are sealed. A graceful close seals
// them all.
func (s *Sim) flipTargets(o op) []flipTarget {
	r := rand.New(rand.NewPCG(o.salt, 0x666c6970))
	st := s.eng.Stats()
	first := max(st.FirstSeq, 1)
	if s.lastAcked < first {
		return nil
	}
	activeSeg := uint32(1<<32 - 1)
	if !o.restart {
		rec, ok := s.readOne(s.lastAcked)
		if !ok {
			return nil
		}
		activeSeg = rec.Pos.Segment()
	}
	var ts []flipTarget
	for range 4 * o.count {
		if len(ts) == o.count {
			break
		}
		q := first + r.Uint64N(s.lastAcked-first+1)
		rec, ok := s.readOne(q)
		if !ok || rec.Pos.Segment() >= activeSeg || slices.ContainsFunc(ts, func(t flipTarget) bool { return t.seq == q }) {
			continue
		}
		ts = append(ts, flipTarget{seq: q, pos: rec.Pos, r: rand.New(rand.NewPCG(o.salt, q))})
	}
	slices.SortFunc(ts, func(a, b flipTarget) int { return int(a.seq) - int(b.seq) })
	return ts
}

// readOne reads the record seq (false if it is not readable).
func (s *Sim) readOne(seq uint64) (engine.Record, bool) {
	rd, err := s.eng.NewReader(seq, 0)
	if err != nil {
		return engine.Record{}, false
	}
	defer rd.Close()
	recs, err := rd.Next(nil, 1)
	if err != nil || len(recs) == 0 || recs[0].Seq != seq {
		return engine.Record{}, false
	}
	return recs[0], true
}

// applyFlips flips one bit in each target frame (header or body), durably,
// on the file system the engine will reopen on. The frame's header is
// checked first: the simulator must damage the frame it meant to.
func (s *Sim) applyFlips(ts []flipTarget) {
	for _, t := range ts {
		path := fmt.Sprintf("%s%010d.seg", logDir, t.pos.Segment())
		if err := flipBit(s.fs, path, t); err != nil {
			s.violate("harness", nil, "", []uint64{t.seq}, "cannot flip a bit in the frame of event %d at %s: %v", t.seq, t.pos, err)
			continue
		}
		s.flipped[t.seq] = true
		s.rep.Flips++
	}
}

func flipBit(fs vfs.FS, path string, t flipTarget) error {
	f, err := fs.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	defer f.Close()
	off := t.pos.Offset()
	var hdr [frameHeaderLen]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return err
	}
	bodyLen := int64(binary.LittleEndian.Uint32(hdr[0:]))
	if seq := binary.LittleEndian.Uint64(hdr[8:]) &^ seqFlagBit; seq != t.seq {
		return fmt.Errorf("the frame there has seq %d", seq)
	}
	at := off + t.r.Int64N(frameHeaderLen+bodyLen)
	var b [1]byte
	if _, err := f.ReadAt(b[:], at); err != nil {
		return err
	}
	b[0] ^= 1 << t.r.IntN(8)
	if _, err := f.WriteAt(b[:], at); err != nil {
		return err
	}
	return f.Sync()
}

// listFiles lists the segment files and the index's WAL files with their
// sizes (for the trace).
func (s *Sim) listFiles() string {
	var b strings.Builder
	for _, dir := range []string{"/sluice/log", indexDir} {
		names, err := s.fs.List(dir)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", dir, err)
			continue
		}
		slices.Sort(names)
		fmt.Fprintf(&b, "%s:", dir)
		for _, n := range names {
			if !strings.HasSuffix(n, ".seg") && !strings.HasSuffix(n, ".log") {
				continue
			}
			if st, err := s.fs.Stat(s.fs.PathJoin(dir, n)); err == nil {
				fmt.Fprintf(&b, " %s(%d)", n, st.Size())
			}
		}
		b.WriteString("; ")
	}
	return b.String()
}

var spareRefusal = regexp.MustCompile(`segment file ([0-9]+\.seg) holds records up to seq [0-9]+ but its header is damaged: move it out`)

// spareRefused reports whether Recover refused a segment file whose header
// is damaged (KnownRecoverSpare), and which.
func spareRefused(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	m := spareRefusal.FindStringSubmatch(err.Error())
	if m == nil {
		return "", false
	}
	return m[1], true
}
