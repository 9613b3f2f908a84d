package engine

import (
	"errors"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// allocateFile gives f n bytes of disk: fallocate where the file is a real
// one and the filesystem supports it (no data written, so a 64 MiB reserve
// costs nothing at Open), else zeros.
func allocateFile(f vfs.File, n int64) error {
	if fd := f.Fd(); fd != vfs.InvalidFd {
		err := syscall.Fallocate(int(fd), 0, 0, n)
		if err == nil || !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOSYS) {
			return err
		}
	}
	return writeZeros(f, n)
}
