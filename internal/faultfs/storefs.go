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
	sf := &storeFile{File: f, fs: s, path: path}
	if _, ok := f.(truncater); ok {
		// The store cuts such files in place (statemachine.truncate): keep the
		// method, or the faulted node would take the other path production never does.
		return &truncFile{sf}, nil
	}
	return sf, nil
}

type truncater interface{ Truncate(size int64) error }

// truncFile is a storeFile whose file can be cut in place.
type truncFile struct{ *storeFile }

// Truncate cuts the file and journals that no more than size can be durable.
func (f *truncFile) Truncate(size int64) error {
	if err := f.File.(truncater).Truncate(size); err != nil {
		return err
	}
	return f.fs.journal.truncated(f.path, size)
}

// Unwrap is the filesystem underneath.
func (s *storeFS) Unwrap() vfs.FS { return s.FS }

// Create creates the file and journals it as holding nothing durable.
func (s *storeFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := s.FS.Create(name, category)
	if err == nil {
		if jerr := s.journal.created(name); jerr != nil {
			f.Close()
			return nil, jerr
		}
	}
	return s.wrap(name, f, err)
}

// OpenReadWrite journals the size the file has as durable.
func (s *storeFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := s.FS.OpenReadWrite(name, category, opts...)
	if err == nil && s.journal != nil {
		fi, serr := f.Stat()
		if serr == nil {
			serr = s.journal.opened(name, fi.Size())
		}
		if serr != nil {
			f.Close()
			return nil, serr
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
	return s.journal.through(s.FS.Rename, s.journal.renamed, oldname, newname)
}

// Link gives the new name the file's record.
func (s *storeFS) Link(oldname, newname string) error {
	return s.journal.through(s.FS.Link, s.journal.linked, oldname, newname)
}

// ReuseForWrite is a rename and an open that keeps the content.
func (s *storeFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := s.FS.ReuseForWrite(oldname, newname, category)
	if err == nil {
		if jerr := s.journal.renamed(oldname, newname); jerr != nil {
			f.Close()
			return nil, jerr
		}
	}
	return s.wrap(newname, f, err)
}

// Remove forgets the file's record.
func (s *storeFS) Remove(name string) error {
	return s.journal.removal(s.FS.Remove, name)
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
		err = f.fs.journal.synced(f.path, n)
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

// SyncTo journals only a full sync: a partial one (sync_file_range) promises
// nothing durable.
func (f *storeFile) SyncTo(length int64) (bool, error) {
	f.fs.delay.wait()
	n := f.size()
	full, err := f.File.SyncTo(length)
	if !full && err == nil {
		return false, nil
	}
	return full, f.synced(n, err)
}
