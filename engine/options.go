package engine

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Options configures an Engine. The zero value of every field means its
// default; Open fills the defaults in (withDefaults) and rejects impossible
// values.
type Options struct {
	// Dir is the data directory. Segments go to Dir/log, the index to
	// Dir/index. Required.
	Dir string
	// FS is the filesystem for segments and the index alike, so a crashable
	// in-memory FS crashes both the same way. Default: the OS filesystem.
	FS vfs.FS
	// Logger receives one line per problem, never one per event.
	// Default: slog.Default().
	Logger *slog.Logger
	// Now is the clock (dedup generations, ages). Default: time.Now.
	Now func() time.Time

	// SegmentBytesMax cuts a segment once it holds this many bytes.
	// Default 64 MiB.
	SegmentBytesMax int64
	// SegmentRecordsMax cuts a segment once it holds this many records.
	// Default 1,000,000.
	SegmentRecordsMax int64
	// GroupBytesMax bounds the bytes written per group commit; callers past
	// it wait for the next group. Default 8 MiB.
	GroupBytesMax int
	// RecordBytesMax bounds one encoded record. Default 1 MiB.
	RecordBytesMax int

	// DiskBudgetBytes bounds segments (with reclaimed files kept for
	// reuse, which are not kept past 90% of it) plus index on disk; past it
	// Append fails with ErrDiskBudget. Default 0: no budget.
	DiskBudgetBytes int64
	// BacklogEventsMax bounds events between the slowest consumer's cursor
	// and the log's end; past it Append fails with ErrBacklogFull.
	// Default 0: no limit.
	BacklogEventsMax int64

	// ReserveBytes is the size of Dir/reserve, a file that holds disk space
	// for the index (diskfull.go). When a write of the index finds the disk
	// full, or Open finds less free space than DiskFreeBytesMin, the file
	// is deleted, so that cursor commits and reclaim (its manifest batch,
	// its dedup keys) still have room and reclaim can free space; it is
	// made again once the free space is at least ReserveBytes +
	// DiskFreeBytesMin, and appends wait for that. Not counted in
	// DiskBudgetBytes. Default 64 MiB; negative: no reserve.
	ReserveBytes int64
	// DiskFreeBytesMin: while the data directory's filesystem has less free
	// space than this, Append fails with ErrDiskFull (an ErrUnavailable)
	// and Stats().Healthy is false, so that the disk never fills up under
	// appends. Checked every DiskCheckInterval and whenever a quarter of it
	// was written to segments since the last check. Default 64 MiB;
	// negative: no floor. Where the FS cannot tell its free space
	// (vfs.FS.GetDiskUsage fails, as on an in-memory FS), there is neither
	// floor nor reserve.
	DiskFreeBytesMin int64
	// DiskCheckInterval is how often free space is checked, the reserve
	// made again and a failed active segment repaired (sealed and a new one
	// started) without waiting for an append. Default 1s.
	DiskCheckInterval time.Duration

	// DedupWindow is how long (source, messageId) pairs are remembered.
	// Default 24h. Negative disables deduplication.
	DedupWindow time.Duration
	// DedupGenerations splits the window into this many generations, each
	// dropped whole when it leaves the window. Default 4.
	DedupGenerations int
	// DedupFilterBytes is the memory for the dedup Bloom filters, shared by
	// the live generations. Past their design capacity the filters answer
	// "maybe" more often and lookups go to the index: slower, still exact.
	// Default 64 MiB.
	DedupFilterBytes int
	// DedupIndexBatchKeys: accepted dedup keys wait in memory and go to the
	// index in sorted batches of this many, or once the oldest waited
	// DedupIndexInterval. Defaults 262144 and 1s. (The batches are written
	// in the background; a deterministic simulation sets both very large,
	// and the keys then reach the index only when Reclaim or Close needs
	// them.)
	DedupIndexBatchKeys int
	DedupIndexInterval  time.Duration

	// ReclaimInterval is how often sealed, fully consumed segments are
	// deleted. Default 1s. Negative: only when Reclaim is called.
	ReclaimInterval time.Duration
	// ReclaimActiveMinBytes: a fully consumed active segment larger than this
	// is cut during reclaim so that its space can go too. Default 1 MiB.
	ReclaimActiveMinBytes int64

	// IndexCacheBytes is Pebble's block cache. Default 32 MiB.
	IndexCacheBytes int64
	// IndexMemTableBytes is Pebble's memtable size. Default 16 MiB.
	IndexMemTableBytes uint64
	// NoSyncData skips fsync on segment writes (benchmarks of the rest of the
	// path only). Never set it in production: acknowledgements stop being
	// durable.
	NoSyncData bool
}

const (
	defaultSegmentBytesMax       = 64 << 20
	defaultSegmentRecordsMax     = 1_000_000
	defaultGroupBytesMax         = 8 << 20
	defaultRecordBytesMax        = 1 << 20
	defaultDedupWindow           = 24 * time.Hour
	defaultDedupGenerations      = 4
	defaultDedupFilterBytes      = 64 << 20
	defaultDedupIndexBatchKeys   = 256 << 10
	defaultReclaimInterval       = time.Second
	defaultReclaimActiveMinBytes = 1 << 20
	defaultReserveBytes          = 64 << 20
	defaultDiskFreeBytesMin      = 64 << 20
	defaultDiskCheckInterval     = time.Second
	defaultIndexCacheBytes       = 32 << 20
	defaultIndexMemTableBytes    = 16 << 20
	segmentBytesCap              = 1 << 32 // offsets are 32 bits in Pos
)

// withDefaults returns a copy of o with defaults filled in, or an error
// naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, fmt.Errorf("options: Dir is required")
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	setDefault(&o.SegmentBytesMax, defaultSegmentBytesMax)
	setDefault(&o.SegmentRecordsMax, defaultSegmentRecordsMax)
	setDefault(&o.RecordBytesMax, int(min(defaultRecordBytesMax, o.SegmentBytesMax)))
	setDefault(&o.GroupBytesMax, max(defaultGroupBytesMax, o.RecordBytesMax))
	setDefault(&o.DedupWindow, defaultDedupWindow)
	setDefault(&o.DedupGenerations, defaultDedupGenerations)
	setDefault(&o.DedupFilterBytes, defaultDedupFilterBytes)
	setDefault(&o.DedupIndexBatchKeys, defaultDedupIndexBatchKeys)
	setDefault(&o.DedupIndexInterval, time.Second)
	setDefault(&o.ReclaimInterval, defaultReclaimInterval)
	setDefault(&o.ReclaimActiveMinBytes, defaultReclaimActiveMinBytes)
	setDefault(&o.ReserveBytes, defaultReserveBytes)
	setDefault(&o.DiskFreeBytesMin, defaultDiskFreeBytesMin)
	setDefault(&o.DiskCheckInterval, defaultDiskCheckInterval)
	setDefault(&o.IndexCacheBytes, defaultIndexCacheBytes)
	setDefault(&o.IndexMemTableBytes, defaultIndexMemTableBytes)
	switch {
	case o.SegmentBytesMax < 4096 || o.SegmentBytesMax > segmentBytesCap:
		return o, fmt.Errorf("options: SegmentBytesMax %d out of range [4096, 4GiB]", o.SegmentBytesMax)
	case o.SegmentRecordsMax < 1:
		return o, fmt.Errorf("options: SegmentRecordsMax %d must be positive", o.SegmentRecordsMax)
	case o.RecordBytesMax < 64 || int64(o.RecordBytesMax) > o.SegmentBytesMax:
		return o, fmt.Errorf("options: RecordBytesMax %d must be in [64, SegmentBytesMax]", o.RecordBytesMax)
	case o.SegmentBytesMax+int64(o.GroupBytesMax) > segmentBytesCap:
		// A segment is cut between groups, so it may overshoot by a group;
		// offsets must still fit Pos's 32 bits.
		return o, fmt.Errorf("options: SegmentBytesMax + GroupBytesMax must not exceed 4GiB")
	case o.GroupBytesMax < o.RecordBytesMax:
		return o, fmt.Errorf("options: GroupBytesMax %d must be at least RecordBytesMax", o.GroupBytesMax)
	case o.DedupGenerations < 1 || o.DedupGenerations > 64:
		return o, fmt.Errorf("options: DedupGenerations %d out of range [1, 64]", o.DedupGenerations)
	case o.DedupFilterBytes < 1024:
		return o, fmt.Errorf("options: DedupFilterBytes %d below 1024", o.DedupFilterBytes)
	case o.DedupIndexBatchKeys < 1 || o.DedupIndexInterval < 0:
		return o, fmt.Errorf("options: DedupIndexBatchKeys %d and DedupIndexInterval %v must be positive", o.DedupIndexBatchKeys, o.DedupIndexInterval)
	case o.DiskBudgetBytes < 0 || o.BacklogEventsMax < 0:
		return o, fmt.Errorf("options: DiskBudgetBytes and BacklogEventsMax must not be negative")
	case o.DiskCheckInterval < 0:
		return o, fmt.Errorf("options: DiskCheckInterval %v must be positive", o.DiskCheckInterval)
	}
	return o, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
