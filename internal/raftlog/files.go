package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
	gvfs "github.com/lni/goutils/vfs"
)

// groupLog holds the payload files of one raft node (a group's replica on this
// node). Its methods are safe for concurrent use.
type groupLog struct {
	fs       gvfs.FS
	dir      string
	fileSize int64

	mu      sync.Mutex
	files   map[uint64]*payFile
	cur     *payFile // the file appended to; created by this process
	nextSeq uint64
	// syncDirs are directories whose entries changed (a file or the group's
	// directory created) since the last sync.
	syncDirs []string
	// direct: files are written with direct I/O (see openWrite); dio is told when
	// a filesystem refuses it (see Factory.DirectState).
	direct bool
	dio    *directio.Switch
	stages *stagePool
	// recycle says whether new files are salted (Factory.Recycle); pool, if set,
	// holds the spares new files are taken from and cut files are given to.
	recycle *atomic.Bool
	pool    *spares
	// crc is the node's checksum memo (Factory.CRC), nil for none.
	crc *crcalg.Memo
	// inPlace counts the payloads written from their own memory (putInPlace): the
	// LogDB's counter, nil for none.
	inPlace *atomic.Int64
}

// openGroupLog lists and scans dir's payload files; dir is made at the first append.
func openGroupLog(fs gvfs.FS, root, dir string, fileSize int64, direct bool, dio *directio.Switch, stages *stagePool, recycle *atomic.Bool, pool *spares) (*groupLog, error) {
	// The group's directory entry in root may not be durable yet (a process that
	// made it died before its first sync): the next sync covers it again.
	g := &groupLog{fs: fs, dir: dir, fileSize: fileSize, files: map[uint64]*payFile{}, nextSeq: 1, syncDirs: []string{root},
		direct: direct && directio.Available(), dio: dio, stages: stages, recycle: recycle, pool: pool}
	names, err := fs.List(dir)
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list payload directory %s: %w", dir, err)
	}
	var last *payFile
	var lastEnd int64
	for _, name := range names {
		seq, salt, ok := parseName(name)
		if !ok {
			continue
		}
		f := newPayFile(fs, dir, seq, salt)
		end, err := g.scan(f)
		if err != nil {
			return nil, err
		}
		f.whole = end == f.size
		g.files[seq] = f
		g.nextSeq = max(g.nextSeq, seq+1)
		if last == nil || seq > last.seq {
			last, lastEnd = f, end
		}
	}
	if last != nil && last.salt != 0 && !last.whole {
		// The last file of a process that stopped: what follows its last record
		// is a torn tail or an earlier life's bytes, which nothing refers to.
		// Sealed, it reads whole at every later start.
		if err := g.sealAt(last, lastEnd); err != nil {
			return nil, err
		}
	}
	for _, f := range g.files {
		if !f.whole && f != last {
			// Mostly the last file of a process has a torn tail, but a power cut
			// may also tear a file that was full, not yet synced, when the next one
			// began: damage in another may hide higher indexes than its headers
			// show, so it stays until the group's data goes (a read of a damaged
			// payload fails on its CRC, naming it).
			f.maxIndex = math.MaxUint64
		}
	}
	return g, nil
}

// scan reads f's record headers for the highest index it holds; it stops at the
// first incomplete or damaged header (a tail a power cut tore, or in a salted file
// an earlier life's record: nothing refers to either) and returns where, which is
// f.size when it read the file to its end.
func (g *groupLog) scan(f *payFile) (end int64, err error) {
	r, err := g.fs.Open(f.path)
	if err != nil {
		return 0, fmt.Errorf("open payload file %s: %w", f.path, err)
	}
	defer r.Close()
	st, err := r.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat payload file %s: %w", f.path, err)
	}
	f.size = st.Size()
	var hdr [recordHeaderLen]byte
	off := int64(0)
	for off+recordHeaderLen <= f.size {
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return 0, fmt.Errorf("read payload file %s at %d: %w", f.path, off, err)
		}
		if !f.headerOK(hdr[:]) {
			break
		}
		f.maxIndex = max(f.maxIndex, binary.LittleEndian.Uint64(hdr[8:]))
		off += recordHeaderLen + int64(binary.LittleEndian.Uint32(hdr[4:]))
	}
	return min(off, f.size), nil
}

// sealAt writes, at off of a salted file no process appends to, a header-only
// record of index 0 that claims the rest of the file, and syncs it: the file then
// reads whole. Only bytes nothing refers to are overwritten (see openGroupLog).
func (g *groupLog) sealAt(f *payFile, off int64) error {
	w, err := reopen(g.fs, f.path, f.size)
	if err != nil {
		return fmt.Errorf("open payload file %s to seal it: %w", f.path, err)
	}
	defer w.Close()
	n := max(f.size-off-recordHeaderLen, 0)
	if _, err := w.WriteAt(f.header(0, int(n), 0), off); err != nil {
		return fmt.Errorf("seal payload file %s at %d: %w", f.path, off, err)
	}
	if err := w.Sync(); err != nil {
		return fmt.Errorf("sync payload file %s: %w", f.path, err)
	}
	f.size = max(f.size, off+recordHeaderLen)
	f.whole = true
	return nil
}

// append stages the payload of the entry at index for the current file (a new one
// when there is none or it is full), or writes it from its own memory (putInPlace);
// it is durable after the next sync.
func (g *groupLog) append(index uint64, payload []byte) (ref, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur != nil && g.cur.size >= g.fileSize {
		// Full: its tail goes out now (sync makes it durable with the rest).
		f := g.cur
		err := g.finish(f)
		if err == nil && f.salt != 0 && f.phys > f.size {
			// Sealed and synced before the next file exists: a power cut that kept
			// the next file's name but not this seal would leave this file unread
			// to its end, kept for good (see openGroupLog).
			if err = g.seal(f); err == nil {
				if err = f.w.Sync(); err != nil {
					err = fmt.Errorf("sync payload file %s: %w", f.path, err)
				}
			}
			if err == nil {
				f.dirty = false
				f.close()
			}
		}
		if err != nil {
			g.cur = nil
			return ref{}, err
		}
		g.cur = nil
	}
	if g.cur == nil {
		if len(g.files) == 0 {
			if err := g.fs.MkdirAll(g.dir, 0o755); err != nil {
				return ref{}, fmt.Errorf("create payload directory %s: %w", g.dir, err)
			}
		}
		if err := g.newFile(); err != nil {
			return ref{}, err
		}
	}
	f := g.cur
	if f.w == nil {
		if err := g.openWrite(f, false); err != nil {
			return ref{}, err
		}
	}
	crc := g.crc.Checksum(payload) // from memory if the transport took it already
	f.dirty = true
	inPlace := f.direct && len(payload) >= directio.InPlaceMin && directio.IsAligned(payload)
	var err error
	if inPlace {
		// A pad before the header, so that the payload starts at a block.
		if gap := int(-(f.size + recordHeaderLen) & (blockSize - 1)); gap > 0 {
			err = g.putPad(f, gap)
		}
	}
	r := ref{file: f.seq, offset: f.size + recordHeaderLen, length: uint32(len(payload)), crc: crc}
	if err == nil && inPlace {
		err = g.putInPlace(f, f.header(index, len(payload), crc), payload)
		if err == nil && f.direct && g.inPlace != nil {
			g.inPlace.Add(1)
		}
	} else if err == nil {
		err = g.put(f, f.header(index, len(payload), crc), payload)
	}
	if err != nil {
		g.cur = nil // its size is unknown now: append no more to it
		return ref{}, err
	}
	f.maxIndex = max(f.maxIndex, index)
	if f.minIndex == 0 || index < f.minIndex {
		f.minIndex = index
	}
	return r, nil
}

// newFile starts the file appends go to: salted once recycling is on, and then
// taken from the spares when there is one (an overwrite, which the disk this was
// measured on took faster than a first write: see spare.go).
func (g *groupLog) newFile() error {
	var salt uint64
	if g.recycle != nil && g.recycle.Load() {
		for salt == 0 {
			salt = rand.Uint64()
		}
	}
	f := newPayFile(g.fs, g.dir, g.nextSeq, salt)
	spare := ""
	if salt != 0 && g.pool != nil {
		spare = g.pool.take()
	}
	if spare == "" || !g.takeSpare(f, spare) {
		if err := g.openWrite(f, true); err != nil {
			return err
		}
	}
	g.nextSeq++
	g.files[f.seq] = f
	g.cur = f
	g.syncDirs = append(g.syncDirs, g.dir)
	return nil
}

// reopen opens path for writing at offsets without truncating it: a file system's
// ReuseForWrite renamed to the same name, which every one in use keeps whole (its
// contract allows a new, empty file: that is checked, as the bytes below want must
// be kept).
func reopen(fs gvfs.FS, path string, want int64) (gvfs.File, error) {
	w, err := fs.ReuseForWrite(path, path)
	if err != nil {
		return nil, err
	}
	if st, err := w.Stat(); err != nil || st.Size() < want {
		w.Close()
		if err == nil {
			err = fmt.Errorf("the file system emptied it on reopening (%d bytes, want %d)", st.Size(), want)
		}
		return nil, err
	}
	return w, nil
}

// takeSpare makes the spare at path f's file, open for writing from its start. A
// spare that cannot be taken is removed and reported: the save goes on with a new
// file (recycling is an optimisation; a failed save stops the node).
func (g *groupLog) takeSpare(f *payFile, spare string) bool {
	err := g.fs.Rename(spare, f.path)
	if err == nil {
		// The spare's directory changed too: synced with the group's, so that a
		// crash cannot show the file under both names.
		g.syncDirs = append(g.syncDirs, g.pool.dir)
		var st os.FileInfo
		if st, err = g.fs.Stat(f.path); err == nil {
			f.phys = st.Size()
			err = g.openWrite(f, false)
		}
	}
	if err != nil {
		g.pool.log.Warn("a spare payload file could not be taken; writing a new one instead", "spare", spare, "file", f.path, "err", err)
		g.fs.Remove(spare)
		g.fs.Remove(f.path)
		f.phys = 0
		return false
	}
	g.pool.recycled.Add(1)
	return true
}

// seal ends a full salted file taken from the spares short of its old bytes: a
// record of index 0 in one block after its last (finish padded it to a block)
// claims the rest, so that a scan reads the file whole (see openGroupLog). The
// claimed bytes are not written.
func (g *groupLog) seal(f *payFile) error {
	if f.salt == 0 || f.phys <= f.size {
		return nil
	}
	if f.w == nil {
		if err := g.openWrite(f, false); err != nil {
			return err
		}
	}
	end := max(f.phys, f.size+blockSize)
	blk := directio.Aligned(blockSize)
	copy(blk, f.header(0, int(end-f.size-recordHeaderLen), 0))
	if _, err := f.w.WriteAt(blk, f.written); err != nil {
		return fmt.Errorf("seal payload file %s: %w", f.path, err)
	}
	f.written += blockSize
	f.size = end
	f.dirty = true
	return nil
}

// openWrite opens f for writing at its end: created (empty) with create set. With
// direct I/O it is opened with O_DIRECT, so its bytes go from the stage to the disk
// without a copy in the page cache; a filesystem that refuses O_DIRECT turns direct
// I/O off for the group.
func (g *groupLog) openWrite(f *payFile, create bool) error {
	if g.direct {
		flags := os.O_WRONLY | directio.Flag
		if create {
			flags |= os.O_CREATE | os.O_TRUNC
		}
		w, err := os.OpenFile(f.path, flags, 0o644)
		if err == nil {
			f.w, f.direct, f.written = w, true, f.size
			return nil
		}
		if !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("open payload file %s for direct I/O: %w", f.path, err)
		}
		g.refuseDirect(f.path, err)
	}
	var w gvfs.File
	var err error
	switch {
	case create:
		w, err = g.fs.Create(f.path)
	case f.salt != 0:
		// Written at offsets (an earlier life's bytes may follow its end).
		w, err = reopen(g.fs, f.path, f.size)
	default:
		w, err = g.fs.OpenForAppend(f.path)
	}
	if err != nil {
		return fmt.Errorf("open payload file %s: %w", f.path, err)
	}
	f.w, f.direct, f.written = w, false, f.size
	return nil
}

// sync makes every payload appended so far durable, with the directory entries of
// the files (and directory) that hold them.
func (g *groupLog) sync() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range g.files {
		if !f.dirty {
			continue
		}
		if err := g.finish(f); err != nil {
			if f == g.cur {
				g.cur = nil
			}
			return err
		}
		if err := f.w.Sync(); err != nil {
			return fmt.Errorf("sync payload file %s: %w", f.path, err)
		}
		f.dirty = false
		f.close()
	}
	for len(g.syncDirs) > 0 {
		if err := syncDir(g.fs, g.syncDirs[0]); err != nil {
			return err
		}
		g.syncDirs = g.syncDirs[1:]
	}
	return nil
}

func syncDir(fs gvfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// read returns the payload r names, checked against its CRC32C.
func (g *groupLog) read(r ref) ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.files[r.file]
	if f == nil {
		return nil, fmt.Errorf("payload file %016x%s of %s is missing: the raft log refers to it", r.file, fileSuffix, g.dir)
	}
	h, err := g.fs.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("open payload file %s: %w", f.path, err)
	}
	defer h.Close()
	b := make([]byte, r.length)
	if _, err := h.ReadAt(b, r.offset); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d of payload file %s: %w", r.length, r.offset, f.path, err)
	}
	if crc := crc32.Checksum(b, castagnoli); crc != r.crc {
		return nil, fmt.Errorf("payload at %d of file %s is corrupt (CRC32C %08x, want %08x)", r.offset, f.path, crc, r.crc)
	}
	g.crc.Remember(b, r.crc) // for the transport, sending it to a follower behind
	return b, nil
}

// removeTo removes the files whose entries are all at or below index. The file being
// appended to is closed for appends once the cut reaches into it, so that it can go
// at a later cut: a group with a large entry now and then would otherwise keep up to
// a whole file of entries long cut.
func (g *groupLog) removeTo(index uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur != nil && !g.cur.dirty && g.cur.minIndex != 0 && g.cur.minIndex <= index {
		// Its last sync padded it to a block: sealed there, and synced and closed
		// at once, if an earlier life's bytes follow and it does not go now.
		if f := g.cur; f.maxIndex > index && f.salt != 0 && f.phys > f.size {
			err := g.seal(f)
			if err == nil {
				if err = f.w.Sync(); err != nil {
					err = fmt.Errorf("sync payload file %s: %w", f.path, err)
				}
			}
			if err != nil {
				return err
			}
			f.dirty = false
			f.close()
		}
		g.cur = nil
	}
	seqs := make([]uint64, 0, len(g.files))
	for seq := range g.files {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	gave := false
	defer func() {
		if gave {
			g.pool.settle(g.dir)
		}
	}()
	for _, seq := range seqs {
		f := g.files[seq]
		if f.maxIndex > index || f.dirty {
			continue
		}
		f.close()
		if g.pool != nil && g.pool.give(f.path, g.dir, f.size) {
			gave = true
		} else {
			if err := g.fs.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove payload file %s: %w", f.path, err)
			}
		}
		delete(g.files, seq)
		if f == g.cur {
			g.cur = nil
		}
	}
	return nil
}

// removeAll removes every file and the directory: the node's data is gone.
func (g *groupLog) removeAll() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for seq, f := range g.files {
		f.close()
		delete(g.files, seq)
	}
	g.cur = nil
	if err := g.fs.RemoveAll(g.dir); err != nil {
		return fmt.Errorf("remove payload directory %s: %w", g.dir, err)
	}
	return nil
}

// close closes every open file (without syncing: what was not synced was never
// referred to).
func (g *groupLog) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range g.files {
		f.close()
	}
	g.cur = nil
}
