package faultfs

import (
	gvfs "github.com/lni/goutils/vfs"
)

// raftFS is the raft log's filesystem under the journal knob: dragonboat's LogDB
// (its pebble WAL, tables and manifests), its snapshots and the payload files of
// internal/raftlog. The journal hears of every create, open for appending, sync,
// rename, link and removal, as for the segment store, so a power cut loses what
// the raft log had not synced too. dragonboat takes it only inside its
// error-injecting filesystem (see Delay.Dragonboat).
type raftFS struct {
	gvfs.FS
	journal *Journal
}

func (s *raftFS) wrap(path string, f gvfs.File, err error) (gvfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &raftFile{File: f, journal: s.journal, path: path}, nil
}

// Create creates the file and journals it as holding nothing durable.
func (s *raftFS) Create(name string) (gvfs.File, error) {
	f, err := s.FS.Create(name)
	if err == nil {
		if jerr := s.journal.created(name); jerr != nil {
			f.Close()
			return nil, jerr
		}
	}
	return s.wrap(name, f, err)
}

// OpenForAppend journals the size the file has as durable.
func (s *raftFS) OpenForAppend(name string) (gvfs.File, error) {
	f, err := s.FS.OpenForAppend(name)
	if err == nil {
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

// ReuseForWrite is a rename and an open that keeps the content.
func (s *raftFS) ReuseForWrite(oldname, newname string) (gvfs.File, error) {
	f, err := s.FS.ReuseForWrite(oldname, newname)
	if err == nil {
		if jerr := s.journal.renamed(oldname, newname); jerr != nil {
			f.Close()
			return nil, jerr
		}
	}
	return s.wrap(newname, f, err)
}

// Rename carries the file's record to its new name.
func (s *raftFS) Rename(oldname, newname string) error {
	return s.journal.through(s.FS.Rename, s.journal.renamed, oldname, newname)
}

// Link gives the new name the file's record.
func (s *raftFS) Link(oldname, newname string) error {
	return s.journal.through(s.FS.Link, s.journal.linked, oldname, newname)
}

// Remove forgets the file's record.
func (s *raftFS) Remove(name string) error {
	return s.journal.removal(s.FS.Remove, name)
}

type raftFile struct {
	gvfs.File
	journal *Journal
	path    string
}

// Sync syncs and journals the size it made durable.
func (f *raftFile) Sync() error {
	fi, serr := f.File.Stat()
	err := f.File.Sync()
	if err == nil && serr == nil {
		err = f.journal.synced(f.path, fi.Size())
	}
	return err
}
