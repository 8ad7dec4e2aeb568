package binlog

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/flotilla-relay/flotilla/internal/crcalg"
)

// Relocating an event (giving it a new log_pos and clearing header flags) changes at
// most 6 bytes of its header, and CRC32 is linear over GF(2): for two messages of
// the same length, crc(a) ^ crc(b) is the checksum of a ^ b taken with a zero
// register and no final inversion. So the trailer of a relocated event is its old
// trailer XOR the zero-register CRC of the changed bytes, advanced through the
// zero bytes that follow them up to the trailer. That costs O(log n) for an event of
// n bytes instead of a pass over it: placing the multi-megabyte row events of a
// large transaction was one of the passes every replica made over every byte it
// applied.
//
// It also keeps a property a recomputation lacked: a trailer that did not match its
// event before still does not match after, so damage done to an event between the
// syncer's check and a replica's apply reaches the replica's own check instead of
// being sealed with a fresh checksum. (Only for a whole event of relocateMin bytes or
// more: an event placed in parts, one larger than a raft entry's piece, is still
// checksummed afresh as its parts pass, see Placer.)

// relocateMin is the smallest event Relocate updates algebraically. The update costs
// one 32-step multiplication per one in the event's length in bits: 0.1-4 µs
// (BenchmarkRelocate, on the 2-core bench machine: 2.3 µs at 8 KiB - 1, 3.1 µs at 64
// KiB - 1, 4.0 µs at 1 MiB - 1), while checksumming again runs at about 30 GB/s (1.9
// µs at 64 KiB, 29 µs at 1 MiB). From 256 KiB (8.5 µs to checksum) the algebra
// always wins.
const relocateMin = 256 << 10

// Relocate is SetLogPos for an event whose trailer matches its bytes (every event
// the syncer proposes was checked): it rewrites log_pos and clears clearFlags in
// place, and when checksummed brings the trailer up to date, for an event of
// relocateMin bytes or more by the algebra above rather than by checksumming the event
// again. A large event's trailer that did not match still does not.
func Relocate(ev []byte, logPos uint32, clearFlags uint16, checksummed bool) {
	head, trailer := Relocation(ev, logPos, clearFlags, checksummed)
	copy(ev[13:19], head[:])
	if checksummed && len(ev) >= HeaderLen+ChecksumLen {
		binary.LittleEndian.PutUint32(ev[len(ev)-ChecksumLen:], trailer)
	}
}

// Relocation returns what Relocate would write into ev, without writing it: the
// header bytes 13 to 18 (log_pos and flags) and, when checksummed, the trailer. A
// writer that copies the event anyway patches the copy with them, so the event is
// read once.
func Relocation(ev []byte, logPos uint32, clearFlags uint16, checksummed bool) (head [6]byte, trailer uint32) {
	copy(head[:], ev[13:19])
	binary.LittleEndian.PutUint32(head[0:], logPos)
	f := binary.LittleEndian.Uint16(head[4:]) &^ clearFlags
	binary.LittleEndian.PutUint16(head[4:], f)
	if !checksummed || len(ev) < HeaderLen+ChecksumLen {
		return head, 0
	}
	n := len(ev) - ChecksumLen
	if len(ev) < relocateMin {
		c := crc32.Update(0, crc32.IEEETable, ev[:13])
		c = crc32.Update(c, crc32.IEEETable, head[:])
		return head, crc32.Update(c, crc32.IEEETable, ev[19:n])
	}
	var delta [6]byte
	changed := false
	for i := range delta {
		delta[i] = ev[13+i] ^ head[i]
		changed = changed || delta[i] != 0
	}
	trailer = binary.LittleEndian.Uint32(ev[n:])
	if !changed {
		return head, trailer
	}
	// The zero-register CRC of delta: crc32.Update inverts on entry and exit.
	c := ^crc32.Update(^uint32(0), crc32.IEEETable, delta[:])
	return head, trailer ^ crcalg.IEEE().ShiftZeros(c, n-19)
}
