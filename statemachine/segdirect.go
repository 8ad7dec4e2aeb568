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
// every published byte in the file. A write of less than segDirectMin with no stage
// held (an Update of a few small transactions) goes through the page cache, as before.
//
// Invariants:
//   - no direct write covers a range the page cache was given: a page begun through
//     the page cache (the partial block a Flush leaves) is completed through it, and
//     direct writes start at the next page (segAlign: a block, or a larger memory page).
//     Else Linux would have to write the page back and invalidate it first, on the
//     apply path, and an invalidation that fails leaves stale bytes for readers. (The
//     page cache may take bytes written directly before: dropPending's write over a
//     cut, a refused direct write written again. That order is safe.);
//   - a stage that never filled (an Update of less than segStageSize) goes through the
//     page cache whole at Flush: a direct write would add a wait for the disk before
//     readers are woken, for little;
//   - with a stage held, the file holds every byte below stageOff (a block offset) and
//     the stage the bytes from there to the writer's end; without one, the file holds
//     everything. A stage is taken at a large write and given back by Flush, so an
//     idle group holds none;
//   - durability is unchanged: a part is durable once Sync (Flush, then fsync)
//     returns. The power-loss test's filesystem is not the operating system's, so it
//     runs the page-cache path; TestSegmentDirectIO and the SIGKILL crash test run
//     this one on a real disk.

// segStageSize is how much of a part is staged before a direct write: large writes,
// few of them.
const segStageSize = 1 << 20

// segDirectMin is the smallest write that takes a stage: a smaller one (an Update of
// a few small transactions) goes through the page cache as before, where its bytes
// cost little and a direct write of its blocks would wait for the disk on the apply
// path.
const segDirectMin = 64 << 10

// segDirect is a part's direct-I/O state.
type segDirect struct {
	store    *Store
	buf      *[]byte // the stage's buffer, from Store.stages; nil: no stage held
	staged   int
	stageOff int64
	filled   bool     // the stage filled (and was written directly) since it was taken
	dio      *os.File // the part opened with O_DIRECT, while a stage is held
}

// segAlign is where direct writes may start: a block boundary that is also a memory
// page boundary, so that a page the page cache holds is never under a direct write.
func segAlign() int64 { return int64(max(directio.Block, os.Getpagesize())) }

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

// filler is the bytes of a write, produced on demand: fill copies them from off into
// dst. Successive fills move forward.
type filler interface {
	size() int
	fill(dst []byte, off int)
}

// plainBytes is a filler of bytes already in place.
type plainBytes []byte

func (p plainBytes) size() int                { return len(p) }
func (p plainBytes) fill(dst []byte, off int) { copy(dst, p[off:]) }

// write stages p, writing whole blocks out as the stage fills. Taking a stage, it
// first completes the part's partial last block through the page cache, which began it.
func (d *segDirect) write(f *segFile, p []byte) (int, error) {
	return d.writeFrom(f, plainBytes(p))
}

// writeFrom is write for bytes produced by src, which fills the stage directly.
func (d *segDirect) writeFrom(f *segFile, src filler) (int, error) {
	n, size := 0, src.size()
	if d.buf == nil {
		if head := min(int(-f.w.off&(segAlign()-1)), size); head > 0 {
			b, ok := src.(plainBytes)
			if !ok {
				b = make([]byte, head)
				src.fill(b, 0)
			}
			m, err := f.w.Write(b[:head])
			if n += m; err != nil {
				return n, fmt.Errorf("write segment %s: %w", f.path, err)
			}
		}
		if n == size {
			return n, nil
		}
		if err := d.take(f.w.off); err != nil {
			return n, err
		}
	}
	stage := *d.buf
	for n < size {
		c := min(len(stage)-d.staged, size-n)
		src.fill(stage[d.staged:d.staged+c], n)
		d.staged += c
		n += c
		f.w.off += int64(c)
		if d.staged == len(stage) {
			if err := d.writeBlocks(f); err != nil {
				return n, err
			}
			d.filled = true
		}
	}
	return n, nil
}

// take takes a stage for the part's bytes from off, a segAlign offset. Where the
// file system would take a misaligned direct write through the page cache (ext4 does,
// silently) only this check finds one.
func (d *segDirect) take(off int64) error {
	if off&(segAlign()-1) != 0 {
		return fmt.Errorf("a stage may not start at offset %d: direct writes would cover a page the page cache holds", off)
	}
	if b, ok := d.store.stages.Get().(*[]byte); ok {
		d.buf = b
	} else {
		b := directio.Aligned(segStageSize)
		d.buf = &b
	}
	d.stageOff, d.staged, d.filled = off, 0, false
	return nil
}

// writeBlocks writes the stage's whole blocks and keeps the partial one.
func (d *segDirect) writeBlocks(f *segFile) error {
	stage := *d.buf
	whole := d.staged &^ (directio.Block - 1)
	if whole == 0 {
		return nil
	}
	if err := d.writeDirect(f, stage[:whole], d.stageOff); err != nil {
		return err
	}
	d.staged = copy(stage, stage[whole:d.staged])
	d.stageOff += int64(whole)
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
				d.store.directWrites.Add(1)
				return nil
			}
		}
		if !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("write segment %s with direct I/O: %w", f.path, err)
		}
		d.store.direct.Refused(f.path, err)
	}
	if _, err := f.File.WriteAt(b, off); err != nil {
		return fmt.Errorf("write segment %s: %w", f.path, err)
	}
	return nil
}

// flush writes the whole blocks (if the stage filled before: else everything goes
// through the page cache), then the partial one through the page cache, and gives the
// stage back.
func (d *segDirect) flush(f *segFile) error {
	if d.buf == nil {
		return nil
	}
	if d.filled {
		if err := d.writeBlocks(f); err != nil {
			return err
		}
	}
	if d.staged > 0 {
		if _, err := f.File.WriteAt((*d.buf)[:d.staged], d.stageOff); err != nil {
			return fmt.Errorf("write segment %s: %w", f.path, err)
		}
	}
	d.release()
	return nil
}

// staging reports whether a stage is held.
func (d *segDirect) staging() bool { return d != nil && d.buf != nil }

// release gives the stage back and closes the direct handle (again: a no-op).
func (d *segDirect) release() {
	if d.dio != nil {
		d.dio.Close()
		d.dio = nil
	}
	if d.buf != nil {
		d.store.stages.Put(d.buf)
		d.buf = nil
	}
	d.staged = 0
}
