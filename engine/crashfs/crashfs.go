// Package crashfs is test support: Pebble's crashable in-memory FS, made
// safe to crash (CrashClone) while an engine runs.
//
// Pebble v2.1.7's MemFS.Link read-locks the FS's clone lock twice; a
// CrashClone waiting between the two locks deadlocks both. Pebble itself
// may link files (ingestion), so FS makes Link fail: Pebble then copies the
// file, which takes the lock once per call.
package crashfs

import (
	"errors"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS is a crashable in-memory FS without hard links.
type FS struct {
	*vfs.MemFS
}

// New returns an empty crashable in-memory FS.
func New() FS { return FS{vfs.NewCrashableMem()} }

// Link always fails, so that callers copy instead.
func (FS) Link(oldname, newname string) error {
	return errors.New("crashfs: no hard links (copy instead)")
}

// CrashClone is MemFS.CrashClone, wrapped again.
func (f FS) CrashClone(cfg vfs.CrashCloneCfg) FS { return FS{f.MemFS.CrashClone(cfg)} }
