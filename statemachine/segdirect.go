package statemachine

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-relay/flotilla/internal/directio"
)

// Segments written with direct I/O (Store.SetDirectIO). Apply appends a large Update's
// records in chunks; a part's bytes are staged in a block-aligned buffer and written
// with O_DIRECT in whole blocks at block offsets as the buffer fills, so they skip the
// page cache, whose copy (and the pages it allocates) was a third of the nodes' CPU in
// a 3-replica ingest on a VM. Flush, which commit calls before readers are woken,
// writes what is left (less than a block) through the page cache, so readers find
// every published byte in the file.
//
// Invariants:
//   - the file holds every byte below filed, and the stage holds the part's bytes
//     from stageOff (a block offset) to the writer's end; without a stage, the file
//     holds everything (a stage is taken at the first write after a Flush and given
//     back by it, so an idle group holds none);
//   - a direct write rewrites only the part's last, partial block, with the bytes it
//     held and new ones after them: what was fsynced is written again unchanged, as
//     the page cache's writeback of a partial page does;
//   - durability is unchanged: a part is durable once Sync (Flush, then fsync)
//     returns. The power-loss test's filesystem is not the operating system's, so it
//     runs the page-cache path; TestSegmentDirectIO runs this one on a real disk.

// segStageSize is how much of a part is staged before a direct write: large writes,
// few of them.
const segStageSize = 1 << 20

// segDirect is a part's direct-I/O state.
type segDirect struct {
	store    *Store
	stage    []byte // nil: none taken (the file holds every byte)
	staged   int
	stageOff int64
	filed    int64
	dio      *os.File // the part opened with O_DIRECT, while a stage is held
}

// SetDirectIO turns direct writes of segments on or off (see segdirect.go); call it
// before groups are started. It stays off on a filesystem other than the operating
// system's (the tests' crashable one) or a platform without direct I/O, and it reports
// whether it is on.
func (s *Store) SetDirectIO(on bool) bool {
	on = on && directio.Available() && s.fs == vfs.Default
	s.direct.On.Store(on)
	return on
}

// DirectIO reports whether segments are written with direct I/O: off when it was not
// asked for, or since a filesystem refused it.
func (s *Store) DirectIO() bool { return s.direct.On.Load() }

func (s *Store) newSegFile(f vfs.File, path string, off int64) *segFile {
	sf := &segFile{File: f, path: path, w: fileWriter{f: f, off: off}}
	if s.direct.On.Load() {
		sf.d = &segDirect{store: s}
	}
	return sf
}

// write stages p, writing whole blocks out as the stage fills.
func (d *segDirect) write(f *segFile, p []byte) (int, error) {
	if d.stage == nil {
		if err := d.take(f); err != nil {
			return 0, err
		}
	}
	n := 0
	for n < len(p) {
		c := copy(d.stage[d.staged:], p[n:])
		d.staged += c
		n += c
		f.w.off += int64(c)
		if d.staged == len(d.stage) {
			if err := d.writeBlocks(f); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// take takes a stage and fills it with the part's last, partial block from the file.
func (d *segDirect) take(f *segFile) error {
	if b, ok := d.store.stages.Get().(*[]byte); ok {
		d.stage = *b
	} else {
		d.stage = directio.Aligned(segStageSize)
	}
	d.stageOff = f.w.off &^ (directio.Block - 1)
	d.staged = int(f.w.off - d.stageOff)
	d.filed = f.w.off
	if d.staged > 0 {
		if _, err := f.File.ReadAt(d.stage[:d.staged], d.stageOff); err != nil {
			d.release()
			return fmt.Errorf("read the last block of segment %s back: %w", f.path, err)
		}
	}
	return nil
}

// writeBlocks writes the stage's whole blocks and keeps the partial one.
func (d *segDirect) writeBlocks(f *segFile) error {
	whole := d.staged &^ (directio.Block - 1)
	if whole == 0 {
		return nil
	}
	if err := d.writeDirect(f, d.stage[:whole], d.stageOff); err != nil {
		return err
	}
	d.staged = copy(d.stage, d.stage[whole:d.staged])
	d.stageOff += int64(whole)
	d.filed = max(d.filed, d.stageOff)
	return nil
}

// writeDirect writes whole blocks b at off with O_DIRECT; where the filesystem
// refuses it, through the page cache (the same bytes at the same place: a short direct
// write leaves nothing wrong behind).
func (d *segDirect) writeDirect(f *segFile, b []byte, off int64) error {
	if d.store.direct.On.Load() {
		var err error
		if d.dio == nil {
			d.dio, err = os.OpenFile(f.path, os.O_WRONLY|directio.Flag, 0)
		}
		if err == nil {
			if _, err = d.dio.WriteAt(b, off); err == nil {
				return nil
			}
		}
		if !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("write segment %s with direct I/O: %w", f.path, err)
		}
		d.store.direct.Refused(f.path, err)
	}
	_, err := f.File.WriteAt(b, off)
	return err
}

// flush writes the whole blocks, then the partial one through the page cache, and
// gives the stage back.
func (d *segDirect) flush(f *segFile) error {
	if d.stage == nil {
		return nil
	}
	if err := d.writeBlocks(f); err != nil {
		return err
	}
	if end := d.stageOff + int64(d.staged); d.filed < end {
		if _, err := f.File.WriteAt(d.stage[d.filed-d.stageOff:d.staged], d.filed); err != nil {
			return fmt.Errorf("write segment %s: %w", f.path, err)
		}
		d.filed = end
	}
	d.release()
	return nil
}

// release gives the stage back and closes the direct handle.
func (d *segDirect) release() {
	if d.dio != nil {
		d.dio.Close()
		d.dio = nil
	}
	if b := d.stage; b != nil {
		d.store.stages.Put(&b)
	}
	d.stage, d.staged = nil, 0
}
