//go:build !unix

package engine

import "github.com/cockroachdb/pebble/v2/vfs"

// mapRunBlocks: without mmap, lookups read blocks with ReadAt.
func mapRunBlocks(vfs.File, int) ([]byte, error) { return nil, nil }

func unmapRunBlocks([]byte) error { return nil }
