package statemachine

import (
	"errors"
	"hash/crc32"
	"iter"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/crcalg"
)

// A record of large events takes its CRC32C from its raft entry's rather than from a
// pass over its bytes. The node's raft log has the CRC32C of every large entry (it
// took it, or its transport did, once per node: see crcalg) and tells the node's
// memo that of the command the state machine is handed (raftlog's rememberCommand).
// A record's payload is part of that command, with a few bytes changed in each event
// (log_pos, flags, trailer: see segplace.go): CRC-32 is linear, so the record's
// checksum is the part's (crcalg.Poly.Part) with the changes' effect added
// (patchedCRC). What that saves is measured in the README ("Release 0.52"). The
// algebra costs a few microseconds per changed place (crcalg's
// multiplications), so it serves only events of derivedMinEvent bytes or more on
// average: for smaller ones the pass is cheaper. The bytes written are the same
// either way.

// derivedMinEvent is the average event size from which a record's checksum is
// derived: below it, the two shifts each event's changes cost (about 3 µs on the
// machine this was built on) exceed a pass over its bytes.
const derivedMinEvent = 64 << 10

// knownCRC is a raft entry's command and, when the node's memo knows it, its CRC32C.
type knownCRC struct {
	cmd []byte
	crc uint32
	ok  bool
}

// know returns cmd with its checksum, when memo holds it.
func know(memo *crcalg.Memo, cmd []byte) knownCRC {
	crc, ok := memo.Known(cmd)
	return knownCRC{cmd: cmd, crc: crc, ok: ok}
}

// part returns the CRC32C of events (holding count events or parts of events: the
// changes to come are about twice as many) when they are a part of the command whose checksum is known and deriving it is cheaper than a pass over
// them: the command's other bytes are few (their checksums are taken: a quarter
// of events' size at most), and its events large.
func (k *knownCRC) part(events []byte, count int) (uint32, bool) {
	off, ok := k.holds(events)
	if !ok || len(events) < max(count, 1)*derivedMinEvent || len(k.cmd)-len(events) > len(events)/4 {
		return 0, false
	}
	return crcalg.Castagnoli().Part(k.crc, k.cmd, off, len(events)), true
}

// holds returns where b begins in the command, if b is a part of it whose checksum
// could be derived (large enough for the algebra to pay).
func (k *knownCRC) holds(b []byte) (int, bool) {
	if k == nil || !k.ok || len(b) < derivedMinEvent {
		return 0, false
	}
	off := cap(k.cmd) - cap(b) // what DecodeCommand returns aliases the command
	if off < 0 || off+len(b) > len(k.cmd) || &k.cmd[off] != &b[0] {
		return 0, false
	}
	return off, true
}

// patchedCRC returns the CRC32C of n bytes whose checksum was crc before changes
// were made: at each offset (in order, not overlapping), the old bytes XOR the new.
// A change's effect is its bytes' zero-register CRC advanced through the bytes after
// it (crcalg), summed here in a register carried from change to change.
func patchedCRC(crc uint32, n int, changes iter.Seq2[int, []byte]) uint32 {
	c := crcalg.Castagnoli()
	var reg uint32
	pos := 0
	for off, d := range changes {
		if zero(d) {
			continue
		}
		reg = c.ShiftZeros(reg, off-pos)
		reg = ^crc32.Update(^reg, c.Table(), d)
		pos = off + len(d)
	}
	return crc ^ c.ShiftZeros(reg, n-pos)
}

func zero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// recordCRCOf returns the CRC32C a record header hdr (its index and type set) and a
// payload of n bytes whose own checksum is payloadCRC carry.
func recordCRCOf(hdr []byte, payloadCRC uint32, n int) uint32 {
	c := crcalg.Castagnoli()
	return c.Combine(c.Checksum(hdr[8:recordHeaderLen]), payloadCRC, n)
}

// placedPartCRC returns the CRC32C of placed, which is payload, a part of the
// entry's command, as the Placer left it (starting left bytes into an event, 0 at a
// boundary), when deriving it from the entry's is cheaper than a pass (see
// knownCRC.part). The Placer changes an event's log_pos and flags (header bytes 13
// to 18) in the part that holds its header and its trailer (the last 4 bytes) in the
// part that ends it: the bytes compared here, nothing else.
func placedPartCRC(known *knownCRC, payload, placed []byte, left uint64) (uint32, bool) {
	if _, ok := known.holds(payload); !ok {
		return 0, false
	}
	count := 0
	s := binlog.Stream{Left: left}
	if s.Feed(payload, func([]byte, bool, bool) error { count++; return nil }) != nil {
		return 0, false
	}
	crc, ok := known.part(payload, count)
	if !ok {
		return 0, false
	}
	changes := func(yield func(int, []byte) bool) {
		var d [binlog.HeaderLen]byte
		region := func(lo, hi int) bool {
			for i := lo; i < hi; i++ {
				d[i-lo] = payload[i] ^ placed[i]
			}
			return yield(lo, d[:hi-lo])
		}
		s, off := binlog.Stream{Left: left}, 0
		_ = s.Feed(payload, func(part []byte, first, last bool) error {
			at := off
			off += len(part)
			lo := at
			if first {
				if !region(at+13, at+binlog.HeaderLen) {
					return errStopChanges
				}
				lo = at + binlog.HeaderLen
			}
			if last && !region(max(lo, off-binlog.ChecksumLen), off) {
				return errStopChanges
			}
			return nil
		})
	}
	return patchedCRC(crc, len(payload), changes), true
}

// errStopChanges ends placedPartCRC's walk when its consumer stops early.
var errStopChanges = errors.New("stop the changes")
