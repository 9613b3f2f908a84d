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
//
// The index holds the segment manifest, consumers and their cursors,
// exception entries (failed, skipped, aborted) with their secondary indexes
// (due time, ordering key), barriers, straggler copies, the names of the
// dedup runs and the dedup checkpoint (keys.go has the layout). Integers in
// keys are big-endian. The segment format version (1) is in every segment
// header, the index version (3) in the index under 0x01 'v'; every layout
// marked "frozen" changes only with a new version. Version 1 kept dedup keys
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
// the manifest. Up to two deleted segments' files are kept, and one becomes
// the next segment's file, renamed ahead of time (spare.go): overwriting
// blocks is cheaper to fsync than allocating them, and a rotation only
// writes a header and the synced manifest batch.
//
// # Recovery
//
// Open removes segment files the manifest does not name, scans the active
// segment frame by frame and cuts it at the first bad frame (a torn tail,
// beyond the last acknowledged record because acknowledgement follows
// fsync; or, in a recycled file, the older segment's bytes), replays the log past the dedup checkpoint into the dedup index,
// and loads cursors and entry counts from the index alone. The dedup
// checkpoint moves with each batch of dedup runs, always to records already
// fsynced: a log that ends before it lost acknowledged records (damage, a deleted file), which are reported
// (Stats.LostRecords) and whose seqs are never reused. It always starts
// a fresh active segment. Corruption inside a sealed segment is found when
// it is read: the rest of that segment is reported (Stats.LostRecords and an
// error log line) and skipped.
package engine
