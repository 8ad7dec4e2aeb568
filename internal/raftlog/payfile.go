package raftlog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"

	"github.com/flotilla-relay/flotilla/internal/directio"
	gvfs "github.com/lni/goutils/vfs"
)

// A payload file is a sequence of records: a recordHeaderLen-byte header (recordMagic,
// the payload's length, its entry's index, the payload's CRC32C and the header's
// own), then the payload. The headers let a restarted node learn the highest index
// each file holds (when it may go) without the LSM.
//
// A salted file (named <seq>-<salt>.payloads, written from RecycleVersion on) may be
// a recycled one whose old records follow the new: its headers carry saltedMagic and
// a CRC32C seeded with the file's salt, so a scan ends at the first record of an
// earlier life (another salt, or the plain format) as at a torn tail. A salted file
// that ends short of its old bytes is sealed: a header-only record of index 0 claims
// the rest of the file (see seal), so that a scan of a finished file reads it whole.
const (
	recordHeaderLen = 24
	// blockSize is the unit of writes: whole blocks at block offsets (direct I/O).
	blockSize = directio.Block
	// stageSize is the most a group stages before it writes: large enough for the
	// disk to stream. A group's stage is no larger than what it has to stage (see
	// stagePool), as every group a save touches holds one until the save's sync.
	stageSize   = 4 << 20
	recordMagic = 0x464c5031 // "FLP1"
	saltedMagic = 0x464c5032 // "FLP2": a record of a salted file
	fileSuffix  = ".payloads"
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
	seq  uint64
	path string
	// salt is the salted format's (0: the plain format, recordMagic); seed is the
	// CRC32C of its bytes, where each header's CRC starts.
	salt uint64
	seed uint32
	// phys is how large the file was when it was taken from the spares (0: created
	// empty): what lies from size to phys is an earlier life's.
	phys     int64
	size     int64
	maxIndex uint64 // the highest entry index it holds (0: none)
	minIndex uint64 // the lowest, for the file being appended to (0: none yet)
	// w is open from an append to the sync after it, only: a node with thousands of
	// groups keeps no descriptor per group.
	w      gvfs.File
	direct bool // w was opened for direct I/O
	dirty  bool // appended to since its last sync
	whole  bool // scanned to its end without a damaged or torn record
	// stage holds the records appended since the last write (staged bytes of it),
	// which are written at offset written; size counts them.
	stage   *stageBuf
	staged  int
	written int64
}

// newPayFile describes the file seq of dir, salted unless salt is 0.
func newPayFile(fs gvfs.FS, dir string, seq, salt uint64) *payFile {
	name := fmt.Sprintf("%016x%s", seq, fileSuffix)
	if salt != 0 {
		name = fmt.Sprintf("%016x-%016x%s", seq, salt, fileSuffix)
	}
	f := &payFile{seq: seq, salt: salt, path: fs.PathJoin(dir, name)}
	if salt != 0 {
		f.seed = crc32.Checksum(binary.LittleEndian.AppendUint64(nil, salt), castagnoli)
	}
	return f
}

// parseName returns the sequence number and salt a payload file's name holds.
func parseName(name string) (seq, salt uint64, ok bool) {
	base, found := strings.CutSuffix(name, fileSuffix)
	if !found {
		return 0, 0, false
	}
	seqs, salts, salted := strings.Cut(base, "-")
	seq, err := strconv.ParseUint(seqs, 16, 64)
	if err != nil || len(seqs) != 16 {
		return 0, 0, false
	}
	if salted {
		if salt, err = strconv.ParseUint(salts, 16, 64); err != nil || salt == 0 || len(salts) != 16 {
			return 0, 0, false
		}
	}
	return seq, salt, true
}

// header encodes the header of f's record of n payload bytes.
func (f *payFile) header(index uint64, n int, crc uint32) []byte {
	hdr := make([]byte, recordHeaderLen)
	magic := uint32(recordMagic)
	if f.salt != 0 {
		magic = saltedMagic
	}
	binary.LittleEndian.PutUint32(hdr[0:], magic)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(n))
	binary.LittleEndian.PutUint64(hdr[8:], index)
	binary.LittleEndian.PutUint32(hdr[16:], crc)
	binary.LittleEndian.PutUint32(hdr[20:], crc32.Update(f.seed, castagnoli, hdr[:20]))
	return hdr
}

// headerOK reports whether hdr is a header of this life of f.
func (f *payFile) headerOK(hdr []byte) bool {
	magic := uint32(recordMagic)
	if f.salt != 0 {
		magic = saltedMagic
	}
	return binary.LittleEndian.Uint32(hdr[0:]) == magic && crc32.Update(f.seed, castagnoli, hdr[:20]) == binary.LittleEndian.Uint32(hdr[20:])
}

// close closes f's handle; what it had staged is dropped (never synced, so never
// referred to).
func (f *payFile) close() {
	if f.w != nil {
		f.w.Close()
		f.w = nil
	}
	f.stage, f.staged = nil, 0
}
