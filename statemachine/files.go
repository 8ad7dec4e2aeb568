package statemachine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Every file the storage touches goes through the store's vfs.FS (pebble's, which the
// index uses too). In production that is the operating system's; the power-loss test
// runs the whole store on pebble's crashable in-memory filesystem, which keeps only
// what was synced (and a random share of what was not), so a missing fsync shows
// as a loss in the rounds where the cut drops what it left unsynced.
//
// Invariants kept here:
//   - a new file or directory entry is durable only after its directory is synced
//     (syncDir; mkdirAll syncs the parent of every directory it creates);
//   - writes go through WriteAt at an offset the caller tracks (fileWriter): pebble's
//     vfs.File.Write may scribble over its argument, WriteAt does not;
//   - a truncation is durable when truncateFile returns.

// truncSuffix names the copy a filesystem without truncation builds (see
// truncateFile); Open removes leftovers of an interrupted one.
const truncSuffix = ".trunc"

// syncDir makes the entries of dir durable: files created, renamed or removed in it.
func (s *Store) syncDir(dir string) error {
	d, err := s.fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// mkdirAll creates dir and any missing parents, syncing the parent of each directory
// it creates, so that the directory survives a power loss with what it will hold.
func (s *Store) mkdirAll(dir string) error {
	var missing []string
	for d := dir; ; d = s.fs.PathDir(d) {
		if _, err := s.fs.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		if s.fs.PathDir(d) == d {
			break
		}
	}
	if err := s.fs.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := s.syncDir(s.fs.PathDir(missing[i])); err != nil {
			return fmt.Errorf("sync the directory holding %s: %w", missing[i], err)
		}
	}
	return nil
}

// list returns the names in dir, or none if it cannot be read.
func (s *Store) list(dir string) []string {
	names, _ := s.fs.List(dir)
	return names
}

// fileWriter appends to a vfs.File at the offset it tracks.
type fileWriter struct {
	f   vfs.File
	off int64
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}

// segFile is a segment part open for appending: the file, its path and where the next
// record goes. With the store's direct I/O on, appended bytes are staged and written
// in whole blocks with O_DIRECT (segdirect.go); Flush puts the rest in the file. Only
// Write, WriteAt, Flush, Sync and Close know of the stage: the embedded file's other
// methods see the flushed bytes only.
type segFile struct {
	vfs.File
	path string
	w    fileWriter
	d    *segDirect // nil: every write goes through the page cache
}

func (s *Store) createSeg(path string) (*segFile, error) {
	f, err := s.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, err
	}
	return s.newSegFile(f, path, 0), nil
}

// openSeg opens an existing part for appending at off.
func (s *Store) openSeg(path string, off int64) (*segFile, error) {
	f, err := s.fs.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, err
	}
	return s.newSegFile(f, path, off), nil
}

// Name is the part's path.
func (f *segFile) Name() string { return f.path }

// Write appends p at the part's end. With direct I/O, a write of segDirectMin or more
// (and the rest of its Update) is staged, and may stay so until Flush (or Sync,
// WriteAt, Close): readers see it only after that.
func (f *segFile) Write(p []byte) (int, error) {
	if f.staged(len(p)) {
		return f.d.write(f, p)
	}
	if err := f.Flush(); err != nil {
		return 0, err
	}
	return f.w.Write(p)
}

// writeStaged appends src's bytes through the direct-I/O stage, filled in place. The
// caller checked that the part writes directly (staged reports it).
func (f *segFile) writeStaged(src filler) (int, error) { return f.d.writeFrom(f, src) }

// staged reports whether a write of n bytes would go through the direct-I/O stage.
func (f *segFile) staged(n int) bool {
	return f.d != nil && f.d.store.DirectIO() && (f.d.staging() || n >= segDirectMin)
}

// Flush puts every byte appended so far in the file, where readers find it.
func (f *segFile) Flush() error {
	if f.d == nil {
		return nil
	}
	return f.d.flush(f)
}

// Sync flushes the part and fsyncs it.
func (f *segFile) Sync() error {
	if err := f.Flush(); err != nil {
		return err
	}
	return f.File.Sync()
}

// WriteAt writes p at off, after what is staged (dropPending writes a record over the
// bytes it cuts).
func (f *segFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.Flush(); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

// Close flushes the part and closes it (and its direct handle, the flush failed or not).
func (f *segFile) Close() error {
	err := f.Flush()
	if f.d != nil {
		f.d.release()
	}
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	return err
}

// truncater is the optional method of files that can be cut in place: the operating
// system's files have it (pebble's wrap *os.File), pebble's MemFS does not.
type truncater interface{ Truncate(size int64) error }

// truncate cuts the part to size, durably, and appends after it from then on.
//
// Where the filesystem cannot truncate, the prefix is copied to a new file, synced and
// renamed over the part, and the directory synced: a power loss leaves either the old
// part (the caller's redo handles it as before the cut) or the cut one.
func (s *Store) truncate(f *segFile, size int64) error {
	if err := f.Flush(); err != nil {
		return err
	}
	if t, ok := f.File.(truncater); ok {
		if err := t.Truncate(size); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		f.w.off = size
		return nil
	}
	tmp := f.path + truncSuffix
	out, err := s.fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	_, err = io.Copy(&fileWriter{f: out}, io.NewSectionReader(f.File, 0, size))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.fs.Rename(tmp, f.path)
	}
	if err == nil {
		err = s.syncDir(s.fs.PathDir(f.path))
	}
	if err != nil {
		_ = s.fs.Remove(tmp)
		return err
	}
	nf, err := s.fs.OpenReadWrite(f.path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	old := f.File
	f.File, f.w = nf, fileWriter{f: nf, off: size}
	return old.Close() // the copy is durable: a failed close of the old handle loses nothing, but is reported
}

// removeTruncLeftovers deletes copies an interrupted truncate left in dir.
func (s *Store) removeTruncLeftovers(dir string) error {
	for _, name := range s.list(dir) {
		if strings.HasSuffix(name, truncSuffix) {
			if err := s.fs.Remove(s.fs.PathJoin(dir, name)); err != nil {
				return err
			}
		}
	}
	return nil
}
