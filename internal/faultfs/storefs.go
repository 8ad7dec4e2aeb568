package faultfs

import (
	"github.com/cockroachdb/pebble/v2/vfs"
)

// storeFS is the segment store's filesystem under the knobs: syncs wait the
// delay, and the journal hears of every create, open for writing, sync, rename,
// link and removal.
type storeFS struct {
	vfs.FS
	delay   *Delay
	journal *Journal
}

func (s *storeFS) wrap(path string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &storeFile{File: f, fs: s, path: path}, nil
}

// Unwrap is the filesystem underneath.
func (s *storeFS) Unwrap() vfs.FS { return s.FS }

// Create journals the file as holding nothing durable, then creates it.
func (s *storeFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	s.journal.created(name)
	f, err := s.FS.Create(name, category)
	return s.wrap(name, f, err)
}

// OpenReadWrite journals the size the file has as durable.
func (s *storeFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := s.FS.OpenReadWrite(name, category, opts...)
	if err == nil && s.journal != nil {
		if fi, serr := f.Stat(); serr == nil {
			s.journal.opened(name, fi.Size())
		}
	}
	return s.wrap(name, f, err)
}

// OpenDir wraps the directory so that its syncs wait the delay too.
func (s *storeFS) OpenDir(name string) (vfs.File, error) {
	f, err := s.FS.OpenDir(name)
	return s.wrap(name, f, err)
}

// Rename carries the file's record to its new name.
func (s *storeFS) Rename(oldname, newname string) error {
	err := s.FS.Rename(oldname, newname)
	if err == nil {
		s.journal.renamed(oldname, newname)
	}
	return err
}

// Link gives the new name the file's record.
func (s *storeFS) Link(oldname, newname string) error {
	err := s.FS.Link(oldname, newname)
	if err == nil {
		s.journal.linked(oldname, newname)
	}
	return err
}

// ReuseForWrite is a rename and an open that keeps the content.
func (s *storeFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := s.FS.ReuseForWrite(oldname, newname, category)
	if err == nil {
		s.journal.renamed(oldname, newname)
	}
	return s.wrap(newname, f, err)
}

// Remove forgets the file's record.
func (s *storeFS) Remove(name string) error {
	err := s.FS.Remove(name)
	if err == nil {
		s.journal.removed(name)
	}
	return err
}

type storeFile struct {
	vfs.File
	fs   *storeFS
	path string
}

// size is what the file holds now: what a sync that starts now makes durable.
func (f *storeFile) size() int64 {
	fi, err := f.File.Stat()
	if err != nil {
		return -1
	}
	return fi.Size()
}

func (f *storeFile) synced(n int64, err error) error {
	if err == nil && n >= 0 {
		f.fs.journal.synced(f.path, n)
	}
	return err
}

// Sync waits the delay, syncs, and journals the durable size.
func (f *storeFile) Sync() error {
	f.fs.delay.wait()
	n := f.size()
	return f.synced(n, f.File.Sync())
}

// SyncData is Sync without the metadata.
func (f *storeFile) SyncData() error {
	f.fs.delay.wait()
	n := f.size()
	return f.synced(n, f.File.SyncData())
}

// SyncTo makes the first length bytes durable (all of them when it reports a
// full sync).
func (f *storeFile) SyncTo(length int64) (bool, error) {
	f.fs.delay.wait()
	n := f.size()
	full, err := f.File.SyncTo(length)
	if !full {
		n = min(n, length)
	}
	return full, f.synced(n, err)
}
