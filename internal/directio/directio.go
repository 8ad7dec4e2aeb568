// Package directio holds what the node's two writers of bulk data (raft payload files,
// segments) share to write with direct I/O (O_DIRECT): the block they write in and
// block-aligned buffers.
//
// Why: on a virtual machine, copying written data into the page cache (the pages it
// allocates, and the faults that come with them) was the largest single cost of
// ingest: a third of the three nodes' CPU in a 3-replica ingest. Direct writes go from
// the process's buffer to the disk.
//
// Invariants:
//   - a direct write is whole Blocks at a Block offset, from a buffer aligned to Block
//     (Aligned); a filesystem that refuses it (EINVAL: a logical block larger than
//     Block, tmpfs, some FUSE filesystems) loses nothing: the caller writes the same
//     bytes through the page cache;
//   - a direct write is durable, like any other, only once the file is fsynced (the
//     disk's cache, and the file's size).
package directio

import (
	"log/slog"
	"sync/atomic"
	"unsafe"
)

// Block is the unit of direct writes: every one is whole blocks at a block offset,
// from a block-aligned buffer. 4 KiB is the logical block of nearly every disk
// (and a multiple of the rest).
const Block = 4096

// InPlaceMin is the size from which a raft payload is written from its own memory
// (raftlog), and so read by the raft transport into a block-aligned buffer of its
// own: the pad that puts it at a block costs at most a block and a record header
// (under 2% of it), and one more write.
const InPlaceMin = 256 << 10

// Available reports whether this platform has direct I/O (Flag is not 0).
func Available() bool { return Flag != 0 }

// Aligned returns a zeroed buffer of n bytes whose first byte is Block-aligned.
func Aligned(n int) []byte {
	raw := make([]byte, n+Block)
	off := int(-uintptr(unsafe.Pointer(&raw[0])) & (Block - 1))
	return raw[off : off+n : off+n]
}

// IsAligned reports whether b starts at a Block-aligned address.
func IsAligned(b []byte) bool {
	return len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))&(Block-1) == 0
}

// Switch is a writer's direct-I/O state, shared by its files: on until a filesystem
// refuses direct I/O, when the writer falls back to the page cache and says so once.
type Switch struct {
	// On is read by the node's gauge (and cleared here on a refusal); nil is off.
	On *atomic.Bool
	// Log gets the refusal's warning (nil: none).
	Log *slog.Logger
	// What names the files, for the warning ("raft payload files").
	What string
}

// Refused records that the filesystem refused direct I/O for the file at path; the
// first refusal is logged, naming the file and what to do.
func (s *Switch) Refused(path string, err error) {
	if s.On != nil && s.On.CompareAndSwap(true, false) && s.Log != nil {
		s.Log.Warn("the filesystem refused direct I/O (O_DIRECT) for "+s.What+": they go through the page cache from now on, which costs ingest CPU; nothing is lost (a local filesystem with logical blocks of at most 4 KiB, such as ext4 or XFS, takes it)",
			"file", path, "err", err)
	}
}
