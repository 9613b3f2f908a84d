//go:build !linux

package engine

import "github.com/cockroachdb/pebble/v2/vfs"

// allocateFile gives f n bytes of disk by writing zeros.
func allocateFile(f vfs.File, n int64) error { return writeZeros(f, n) }
