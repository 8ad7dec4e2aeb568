package raftlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	gvfs "github.com/lni/goutils/vfs"
)

// A payload file is a sequence of records: a recordHeaderLen-byte header (recordMagic,
// the payload's length, its entry's index, the payload's CRC32C and the header's
// own), then the payload. The headers let a restarted node learn the highest index
// each file holds (when it may go) without the LSM.
const (
	recordHeaderLen = 24
	recordMagic     = 0x464c5031 // "FLP1"
	fileSuffix      = ".payloads"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ref is where an entry's payload lives: the LSM stores its encoding as the entry's
// Cmd (refLen bytes, starting with refMagic).
type ref struct {
	file   uint64 // the file's sequence number in its group
	offset int64  // of the payload, past its record header
	length uint32
	crc    uint32 // CRC32C of the payload
	typ    uint32 // the entry's own type (pb.EntryType)
}

const refLen = 8 + 8 + 8 + 4 + 4 + 4

var refMagic = [8]byte{'f', 'l', 'o', 't', 'p', 'a', 'y', '1'}

func (r ref) encode() []byte {
	b := make([]byte, refLen)
	copy(b, refMagic[:])
	binary.LittleEndian.PutUint64(b[8:], r.file)
	binary.LittleEndian.PutUint64(b[16:], uint64(r.offset))
	binary.LittleEndian.PutUint32(b[24:], r.length)
	binary.LittleEndian.PutUint32(b[28:], r.crc)
	binary.LittleEndian.PutUint32(b[32:], r.typ)
	return b
}

func decodeRef(b []byte) (ref, error) {
	if len(b) != refLen || [8]byte(b[:8]) != refMagic {
		return ref{}, fmt.Errorf("not a payload reference (%d bytes)", len(b))
	}
	return ref{file: binary.LittleEndian.Uint64(b[8:]), offset: int64(binary.LittleEndian.Uint64(b[16:])),
		length: binary.LittleEndian.Uint32(b[24:]), crc: binary.LittleEndian.Uint32(b[28:]), typ: binary.LittleEndian.Uint32(b[32:])}, nil
}

// payFile is one payload file of a group.
type payFile struct {
	seq      uint64
	path     string
	size     int64
	maxIndex uint64 // the highest entry index it holds (0: none)
	minIndex uint64 // the lowest, for the file being appended to (0: none yet)
	// w is open from an append to the sync after it, only: a node with thousands of
	// groups keeps no descriptor per group.
	w     gvfs.File
	dirty bool // written since its last sync
	whole bool // scanned to its end without a damaged or torn record
}

func (f *payFile) close() {
	if f.w != nil {
		f.w.Close()
		f.w = nil
	}
}

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
}

// openGroupLog lists and scans dir's payload files; dir is made at the first append.
func openGroupLog(fs gvfs.FS, root, dir string, fileSize int64) (*groupLog, error) {
	// The group's directory entry in root may not be durable yet (a process that
	// made it died before its first sync): the next sync covers it again.
	g := &groupLog{fs: fs, dir: dir, fileSize: fileSize, files: map[uint64]*payFile{}, nextSeq: 1, syncDirs: []string{root}}
	names, err := fs.List(dir)
	if errors.Is(err, os.ErrNotExist) {
		return g, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list payload directory %s: %w", dir, err)
	}
	var last *payFile
	for _, name := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, fileSuffix), 16, 64)
		if !strings.HasSuffix(name, fileSuffix) || err != nil {
			continue
		}
		f := &payFile{seq: seq, path: fs.PathJoin(dir, name)}
		if f.whole, err = g.scan(f); err != nil {
			return nil, err
		}
		g.files[seq] = f
		g.nextSeq = max(g.nextSeq, seq+1)
		if last == nil || seq > last.seq {
			last = f
		}
	}
	for _, f := range g.files {
		if !f.whole && f != last {
			// Only the last file of a process can have a torn tail (a file is
			// synced whole before the next one starts): damage in another may hide
			// higher indexes than its headers show, so it stays until the group's
			// data goes (a read of a damaged payload fails on its CRC, naming it).
			f.maxIndex = math.MaxUint64
		}
	}
	return g, nil
}

// scan reads f's record headers for the highest index it holds; it stops at the
// first incomplete or damaged header (a tail a power cut tore: nothing refers to it)
// and reports whether it read the file to its end.
func (g *groupLog) scan(f *payFile) (whole bool, err error) {
	r, err := g.fs.Open(f.path)
	if err != nil {
		return false, fmt.Errorf("open payload file %s: %w", f.path, err)
	}
	defer r.Close()
	st, err := r.Stat()
	if err != nil {
		return false, fmt.Errorf("stat payload file %s: %w", f.path, err)
	}
	f.size = st.Size()
	var hdr [recordHeaderLen]byte
	off := int64(0)
	for off+recordHeaderLen <= f.size {
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return false, fmt.Errorf("read payload file %s at %d: %w", f.path, off, err)
		}
		if binary.LittleEndian.Uint32(hdr[0:]) != recordMagic || crc32.Checksum(hdr[:20], castagnoli) != binary.LittleEndian.Uint32(hdr[20:]) {
			break
		}
		f.maxIndex = max(f.maxIndex, binary.LittleEndian.Uint64(hdr[8:]))
		off += recordHeaderLen + int64(binary.LittleEndian.Uint32(hdr[4:]))
	}
	return off == f.size, nil
}

// append writes the payload of the entry at index to the current file (a new one
// when there is none or it is full); it is durable after the next sync.
func (g *groupLog) append(index uint64, payload []byte) (ref, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == nil || g.cur.size >= g.fileSize {
		if len(g.files) == 0 {
			if err := g.fs.MkdirAll(g.dir, 0o755); err != nil {
				return ref{}, fmt.Errorf("create payload directory %s: %w", g.dir, err)
			}
		}
		f := &payFile{seq: g.nextSeq, path: g.fs.PathJoin(g.dir, fmt.Sprintf("%016x%s", g.nextSeq, fileSuffix))}
		w, err := g.fs.Create(f.path)
		if err != nil {
			return ref{}, fmt.Errorf("create payload file %s: %w", f.path, err)
		}
		f.w = w
		g.nextSeq++
		g.files[f.seq] = f
		g.cur = f
		g.syncDirs = append(g.syncDirs, g.dir)
	}
	f := g.cur
	if f.w == nil {
		w, err := g.fs.OpenForAppend(f.path)
		if err != nil {
			return ref{}, fmt.Errorf("open payload file %s: %w", f.path, err)
		}
		f.w = w
	}
	crc := crc32.Checksum(payload, castagnoli)
	var hdr [recordHeaderLen]byte
	binary.LittleEndian.PutUint32(hdr[0:], recordMagic)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(hdr[8:], index)
	binary.LittleEndian.PutUint32(hdr[16:], crc)
	binary.LittleEndian.PutUint32(hdr[20:], crc32.Checksum(hdr[:20], castagnoli))
	f.dirty = true
	if _, err := f.w.Write(hdr[:]); err != nil {
		g.cur = nil // its size is unknown now: append no more to it
		return ref{}, fmt.Errorf("write payload file %s: %w", f.path, err)
	}
	if _, err := f.w.Write(payload); err != nil {
		g.cur = nil
		return ref{}, fmt.Errorf("write payload file %s: %w", f.path, err)
	}
	r := ref{file: f.seq, offset: f.size + recordHeaderLen, length: uint32(len(payload)), crc: crc}
	f.size += recordHeaderLen + int64(len(payload))
	f.maxIndex = max(f.maxIndex, index)
	if f.minIndex == 0 || index < f.minIndex {
		f.minIndex = index
	}
	return r, nil
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
		g.cur = nil
	}
	seqs := make([]uint64, 0, len(g.files))
	for seq := range g.files {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, seq := range seqs {
		f := g.files[seq]
		if f.maxIndex > index || f.dirty {
			continue
		}
		f.close()
		if err := g.fs.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove payload file %s: %w", f.path, err)
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
