//go:build unix

package engine

import (
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// mapRunBlocks maps a run's blocks (the first size bytes of f) read-only,
// or returns nil when f has no descriptor (an in-memory FS) or size is 0:
// lookups then read blocks with ReadAt. Runs are immutable and a run's
// file is unmapped (unmapRunBlocks) before it is removed.
func mapRunBlocks(f vfs.File, size int) ([]byte, error) {
	fd := f.Fd()
	if fd == vfs.InvalidFd || size == 0 {
		return nil, nil
	}
	return syscall.Mmap(int(fd), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
}

func unmapRunBlocks(b []byte) error {
	if b == nil {
		return nil
	}
	return syscall.Munmap(b)
}
