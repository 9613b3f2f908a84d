package filedest

import (
	"errors"
	"io/fs"
	"os"
)

// FS is the file system a destination writes through: the operating
// system's by default. Tests substitute one that fails on purpose.
type FS interface {
	// MkdirAll creates dir and its parents.
	MkdirAll(dir string) error
	// OpenAppend opens name for appending (and reading), creating it if
	// needed.
	OpenAppend(name string) (AppendFile, error)
	// Exists reports whether name exists.
	Exists(name string) (bool, error)
	// Rename renames a file, replacing nothing the caller has not checked.
	Rename(from, to string) error
	// SyncDir makes the directory's entries (a rename) durable.
	SyncDir(dir string) error
}

// AppendFile is an open file whose writes go at its end.
type AppendFile interface {
	// Write appends p; a short write returns an error.
	Write(p []byte) (int, error)
	ReadAt(p []byte, off int64) (int, error)
	// Sync makes what was written durable.
	Sync() error
	// Truncate cuts the file to size bytes; later writes go after them.
	Truncate(size int64) error
	// Size is the file's length.
	Size() (int64, error)
	Close() error
}

// OS is the operating system's file system.
type OS struct{}

func (OS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }

func (OS) OpenAppend(name string) (AppendFile, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (OS) Exists(name string) (bool, error) {
	_, err := os.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

func (OS) Rename(from, to string) error { return os.Rename(from, to) }

func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
