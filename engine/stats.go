package engine

import (
	"sort"
	"sync/atomic"
	"time"
)

// counters are the engine's running totals.
type counters struct {
	groups, groupRecords, fsyncs, bytesWritten   atomic.Uint64
	writeErrors, rejectedBudget, rejectedBacklog atomic.Uint64
	rejectedDiskFull                             atomic.Uint64
	lostRecords, truncatedBytes, stragglersMoved atomic.Uint64
	segmentsCreated, segmentsDeleted             atomic.Uint64
	segmentsRecycled, dedupRebuilds              atomic.Uint64
}

// Stats is a snapshot of the engine for metrics and health checks.
type Stats struct {
	Segments     int
	SegmentBytes int64
	IndexBytes   int64
	// DiskBytes is what the budget counts (segments plus index).
	DiskBytes int64
	// FirstSeq is the oldest seq still stored in a segment; LastSeq the
	// durable high-water mark.
	FirstSeq, LastSeq uint64

	Groups          uint64
	GroupRecords    uint64 // records committed in all groups
	Fsyncs          uint64
	BytesWritten    uint64
	WriteErrors     uint64
	RejectedBudget  uint64
	RejectedBacklog uint64
	// RejectedDiskFull counts appends refused with ErrDiskFull.
	RejectedDiskFull uint64
	// LostRecords counts records found unreadable (corruption, missing
	// files); TruncatedBytes the torn tails cut at recovery.
	LostRecords    uint64
	TruncatedBytes uint64
	// Lost lists every seq known lost, this process or before (the lost
	// set in the index: LostRanges).
	Lost            []SeqRange
	StragglersMoved uint64
	SegmentsCreated uint64
	SegmentsDeleted uint64
	// SegmentsRecycled counts segments started in a reclaimed one's file.
	SegmentsRecycled uint64
	// IndexWriteAmp is Pebble's write amplification.
	IndexWriteAmp float64
	// DedupRuns and DedupRunBytes describe the dedup runs on disk (their
	// bytes are part of IndexBytes); DedupWriteAmp is the bytes written
	// into runs, new and merged, over the bytes of the keys indexed.
	DedupRuns     int
	DedupRunBytes int64
	DedupWriteAmp float64
	// DedupRebuilds counts rebuilds of damaged dedup runs' keys from the
	// log while running.
	DedupRebuilds uint64
	// Healthy is false while appends fail: a write error not yet repaired,
	// or free disk space low (DiskLow).
	Healthy bool
	// DiskLow: appends fail with ErrDiskFull, free space being under
	// DiskFreeBytesMin or the reserve file deleted (diskfull.go).
	DiskLow bool
	// DiskAvailBytes is the free space of the data directory's filesystem
	// at the last check; -1 when the FS cannot tell.
	DiskAvailBytes int64
	Consumers      []ConsumerStats
}

// ConsumerStats describes one consumer's progress.
type ConsumerStats struct {
	Name          string
	Cursor        uint64
	BacklogEvents uint64
	BacklogBytes  int64
	// OldestPendingAge is the age of the oldest waiting event (an upper
	// bound when the cursor's position is unknown).
	OldestPendingAge         time.Duration
	Failed, Skipped, Aborted int64
}

// Stats returns a snapshot. It reads one frame per consumer with a backlog,
// so call it at metrics-scrape rates, not per event.
func (e *Engine) Stats() Stats {
	st := Stats{
		LastSeq:         e.hwm.Load(),
		Groups:          e.stats.groups.Load(),
		GroupRecords:    e.stats.groupRecords.Load(),
		Fsyncs:          e.stats.fsyncs.Load(),
		BytesWritten:    e.stats.bytesWritten.Load(),
		WriteErrors:     e.stats.writeErrors.Load(),
		RejectedBudget:  e.stats.rejectedBudget.Load(),
		RejectedBacklog: e.stats.rejectedBacklog.Load(),

		RejectedDiskFull: e.stats.rejectedDiskFull.Load(),
		DiskLow:          e.disk.low.Load(),
		DiskAvailBytes:   e.disk.avail.Load(),
		LostRecords:      e.stats.lostRecords.Load(),
		TruncatedBytes:   e.stats.truncatedBytes.Load(),
		StragglersMoved:  e.stats.stragglersMoved.Load(),
		SegmentsCreated:  e.stats.segmentsCreated.Load(),
		SegmentsDeleted:  e.stats.segmentsDeleted.Load(),

		SegmentsRecycled: e.stats.segmentsRecycled.Load(),
		DedupRebuilds:    e.stats.dedupRebuilds.Load(),
		Lost:             e.LostRanges(),
	}
	e.writeMu.Lock()
	st.Healthy = e.broken == nil && !st.DiskLow
	e.writeMu.Unlock()
	m := e.db.Metrics()
	st.DedupRuns = int(e.dedup.runCount.Load())
	st.DedupRunBytes = e.dedup.runBytes.Load()
	if in := e.dedup.keysIn.Load(); in > 0 {
		st.DedupWriteAmp = float64(e.dedup.runBytesWritten.Load()) / float64(in*runEntryBytes)
	}
	st.IndexBytes = int64(m.DiskSpaceUsage()) + st.DedupRunBytes
	total := m.Total()
	st.IndexWriteAmp = total.WriteAmp()
	e.segMu.RLock()
	segs := e.segments // never edited in place (reclaim.go)
	e.segMu.RUnlock()
	st.Segments = len(segs)
	for _, s := range segs {
		st.SegmentBytes += s.size.Load()
	}
	if len(segs) > 0 {
		st.FirstSeq = segs[0].baseSeq
	} else {
		st.FirstSeq = e.hwm.Load() + 1 // no segment (opened on a full disk): nothing stored
	}
	st.DiskBytes = st.SegmentBytes + st.IndexBytes
	now := e.opts.Now()
	for _, c := range e.Consumers() {
		st.Consumers = append(st.Consumers, e.consumerStats(c, segs, st.LastSeq, now))
	}
	sort.Slice(st.Consumers, func(i, j int) bool { return st.Consumers[i].Name < st.Consumers[j].Name })
	return st
}

func (e *Engine) consumerStats(c *Consumer, segs []*segment, last uint64, now time.Time) ConsumerStats {
	cur, pos := c.Cursor()
	cs := ConsumerStats{
		Name:    c.name,
		Cursor:  cur,
		Failed:  c.Count(StateFailed),
		Skipped: c.Count(StateSkipped),
		Aborted: c.Count(StateAborted),
	}
	if cur > last {
		return cs
	}
	cs.BacklogEvents = last + 1 - cur
	var oldest *segment
	for _, s := range segs {
		if s.lastSeq.Load() < cur {
			continue
		}
		if oldest == nil {
			oldest = s
			if pos.Segment() == s.id {
				cs.BacklogBytes += s.size.Load() - pos.Offset()
				continue
			}
		}
		cs.BacklogBytes += s.size.Load() - segmentHeaderLen
	}
	if oldest == nil {
		return cs
	}
	if rec, err := e.Read(cur, pos); err == nil && pos != 0 {
		cs.OldestPendingAge = now.Sub(time.Unix(0, rec.ReceivedAt))
	} else if rec, err := e.readFrame(oldest, segmentHeaderLen); err == nil {
		cs.OldestPendingAge = now.Sub(time.Unix(0, rec.ReceivedAt))
	}
	return cs
}
