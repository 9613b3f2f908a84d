// Package engine is Sluice's durable event log: payloads in append-only
// segment files, everything else in a Pebble index.
//
// # Write path
//
// Append validates a batch, queues it, and waits. One committer goroutine
// takes every queued batch (up to GroupBytesMax) as a group: it drops
// duplicates (dedup.go), assigns consecutive sequence numbers and encodes
// the frames into one buffer, while a syncer goroutine writes the group
// before it to the active segment and fsyncs once. When that group is
// durable the committer commits its dedup keys (to memory; the index gets
// them behind, in sorted tables), publishes the new high-water mark, wakes
// the callers and hands the next group over. Concurrent callers share that
// fsync (group commit). Readers never read past the high-water mark, so they
// never see a hole that later fills.
//
// A write or sync failure marks the engine broken: the failed group, and
// the one prepared after it (its duplicates and numbers assumed the failed
// one stored), are not acknowledged, and the next Append (or the disk
// check, every DiskCheckInterval) first seals the active segment at
// its last durable size (bytes past it are ignored forever) and starts a new
// one. Until that works (the disk has room again) Append returns
// ErrUnavailable; the process never exits for it. Appends also stop, with
// ErrDiskFull, while free space is under DiskFreeBytesMin, and a reserve
// file keeps room for the index to record deliveries and reclaim on a full
// disk (diskfull.go).
//
// # On disk
//
//	Dir/
//	  log/0000000001.seg   segment files (segment.go: header; record.go: frames)
//	  log/0000000002.seg
//	  log/aside/           files Recover set aside (never deleted)
//	  log/stragglers/0000000003.stg  frames moved out of a deleted segment (stragglers.go)
//	  index/               Pebble (keys.go: key layout)
//	  dedup/0000000000000001.run  dedup runs: sorted keys of one generation (dedupruns.go)
//	  reserve              room for the index on a full disk (diskfull.go)
//
// A segment frame:
//
//	+----------+----------+----------+--------------------------------+
//	| len u32  | crc u32  | seq u64  | body (len bytes)               |
//	+----------+----------+----------+--------------------------------+
//	crc = CRC-32C(seq || body), little-endian integers.
//	body = receivedAt i64 | type | source | messageId | key | payload
//	(the four fields each uvarint-length-prefixed; payload is the rest)
//	seq's top bit (segment format 2): the first frame of a group commit.
//
// The index holds the segment manifest, consumers and their cursors,
// exception entries (failed, skipped, aborted) with their secondary indexes
// (due time, ordering key), barriers, straggler copies, the names of the
// dedup runs and the dedup checkpoint (keys.go has the layout). Integers in
// keys are big-endian. The segment format version (2) is in every segment
// header, the index version (3) in the index under 0x01 'v'; every layout
// marked "frozen" changes only with a new version (segment format 1 files
// are read as they are). Version 1 kept dedup keys
// in Pebble by (source, messageId), version 2 by generation and a 128-bit
// hash; version 3 keeps the hashes in dedup runs, files of fixed-width
// sorted keys (dedupruns.go) that the engine merges itself. Open migrates
// versions 1 and 2 by dropping their dedup keys and rebuilding the runs
// from the retained log.
//
// # Consumers and the three queues
//
// Each destination is a Consumer with a durable cursor: every event below it
// is settled. Success costs no write of its own: it is implied by the cursor.
// Only exceptions get entries: failed (due time, attempts, first failure),
// skipped (behind a key's barrier), aborted (reason, last status, capped
// response; the dead letters). A Txn commits a cursor advance with the
// entries it creates and the barriers it moves, atomically; every transition
// is checked against the table in state.go.
//
// # Reclaiming space
//
// A sealed segment is deleted whole once every cursor is past it. Entries
// that still need one of its events (stragglers) first get a copy of the
// frame in the index, in the same synced batch that drops the segment from
// the manifest, and in a straggler file synced before it (so that a lost
// index does not take the only copy with it). Up to two deleted segments' files are kept, and one becomes
// the next segment's file, renamed ahead of time (spare.go): overwriting
// blocks is cheaper to fsync than allocating them, and a rotation only
// writes a header and the synced manifest batch.
//
// # Recovery
//
// Segment files are the source of truth for payloads (recovery.go). Open
// reconciles the manifest with the log directory: a segment whose file is
// gone is reported lost, but for the stragglers its straggler file still
// holds (an index older than a reclaim), which are restored and requeued
// for consumers whose cursors are older than the log; a file the manifest does not name is removed only
// when it holds no record still needed (a crash while deleting a consumed
// segment, a recycled file's older bytes, garbage); files past the
// manifest's end (the index lost its newest writes) are adopted; any other
// file holding records makes Open refuse with ErrIndexDamaged, changing
// nothing, and Recover (`sluice recover`) rebuilds the index from the
// segments (rebuild.go). A missing index folder, or an empty index beside
// segment files, is refused the same way.
//
// The last segment is scanned frame by frame; past a bad frame the scanner
// resynchronises at the next valid one (scan.go). The first frame of every
// group commit carries a flag (segment format 2, record.go): a valid
// group-start frame with seq s proves that every seq below s was
// acknowledged, because a group is written only after the one before it
// was fsynced. So a gap that ends at or below the highest seq known
// acknowledged (group starts, the dedup checkpoint, cursors) lost
// acknowledged records: they are reported and their seqs never reused; the
// first gap past it is a torn, never-acknowledged tail, cut there. Close
// seals the active segment, so after a clean stop nothing is scanned.
//
// A frame damaged in a sealed segment is found when it is read: the reader
// resynchronises at the next frame, and only the damaged record is lost.
// Every loss goes into the lost set (lost.go, index key 0x0f, and a copy in
// log/lost that outlives a lost index): logged at
// ERROR and counted in Stats.LostRecords once, whichever reader meets it,
// and listed by LostRanges; readers and cursors move past lost seqs. Open
// then adopts dedup run files the index does not name (an index that lost
// its newest writes lost their names), replays the log past the dedup
// checkpoint into the dedup index (and the whole retained log for a
// generation whose dedup run was damaged: deduprebuild.go), loads cursors
// and entry counts from the index alone, and starts a fresh active segment.
// Without the index, segment headers are the only record of where seqs
// stand: reclaim keeps the newest sealed segment until the active one's
// header is synced, and Recover never numbers below a header or record it
// found.
package engine
