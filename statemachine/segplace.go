package statemachine

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// A large record of whole events goes from the raft entry to the segment's direct-I/O
// stage in one copy. Placing its events (log_pos, flags and trailer, see
// binlog.Relocation) changes at most 10 bytes of each, so they are computed from the
// entry, which raft owns and nobody modifies, as patches; the record's CRC32C is taken
// over the entry's bytes with the patches in their place; and the copy into the stage
// applies the patches as it goes. Before, the record was built in the Update's buffer
// (a copy), placed there (a pass, and a CRC32 of every event), checksummed (a pass) and
// copied into the stage: three passes and two copies of every byte a replica applied,
// now one pass and one copy. Readers cannot tell: the bytes written are the same.

// placedMin is the smallest payload written this way: a smaller one is built in the
// Update's buffer with the records around it, which the stage takes in one copy.
const placedMin = segDirectMin

// patch is a few bytes a placed record's copy holds instead of the entry's: an
// event's log_pos and flags, or its trailer.
type patch struct {
	off int
	n   uint8
	b   [6]byte
}

// placedRecord is a record as it is written: its header, then src with patches over
// it (in offset order).
type placedRecord struct {
	hdr     [recordHeaderLen]byte
	src     []byte
	patches []patch
	next    int // the first patch not wholly before the last fill
}

func (r *placedRecord) size() int { return recordHeaderLen + len(r.src) }

// fill copies the record's bytes from off into dst. Successive fills move forward.
func (r *placedRecord) fill(dst []byte, off int) {
	if off < recordHeaderLen {
		k := copy(dst, r.hdr[off:])
		dst, off = dst[k:], recordHeaderLen
		if len(dst) == 0 {
			return
		}
	}
	off -= recordHeaderLen
	copy(dst, r.src[off:])
	end := off + len(dst)
	for r.next < len(r.patches) && r.patches[r.next].off+int(r.patches[r.next].n) <= off {
		r.next++
	}
	for i := r.next; i < len(r.patches) && r.patches[i].off < end; i++ {
		p := &r.patches[i]
		for j := range int(p.n) {
			if k := p.off + j - off; k >= 0 && k < len(dst) {
				dst[k] = p.b[j]
			}
		}
	}
}

// placeRecord prepares r to write events, a payload of whole events that starts at
// served position start, as a record of type typ for raft entry index: the events
// placed as binlog.Placer would place them, and the header with the CRC32C of what is
// written. It reports false, leaving the work to the Placer, when events does not
// split into whole events (an event cut across pieces, or damage apply's checks let
// through), and r then holds nothing of events.
func (g *Group) placeRecord(r *placedRecord, events []byte, start uint64, typ byte, index uint64) bool {
	// Whole events only: a piece that ends inside an event (the first of every event
	// larger than a piece) is found by its headers alone, before any other work.
	for off := 0; off < len(events); {
		if len(events)-off < binlog.HeaderLen {
			return false
		}
		size := int(binary.LittleEndian.Uint32(events[off+9:]))
		if size < binlog.HeaderLen || size > len(events)-off {
			return false
		}
		off += size
	}
	r.src, r.patches, r.next = events, r.patches[:0], 0
	binary.LittleEndian.PutUint32(r.hdr[0:], uint32(len(events)))
	binary.LittleEndian.PutUint64(r.hdr[8:], index)
	r.hdr[16] = typ
	c := crc32.Update(0, castagnoli, r.hdr[8:recordHeaderLen])
	pos := start
	checksummed := g.m.Checksummed
	for off := 0; off < len(events); {
		size := int(binary.LittleEndian.Uint32(events[off+9:]))
		ev := events[off : off+size]
		pos += uint64(size)
		head, trailer := binlog.Relocation(ev, uint32(pos), binlog.FlagBinlogInUse, checksummed)
		hp := patch{off: off + 13, n: uint8(len(head))}
		copy(hp.b[:], head[:])
		r.patches = append(r.patches, hp)
		c = crc32.Update(c, castagnoli, ev[:13])
		c = crc32.Update(c, castagnoli, head[:])
		if checksummed && size >= binlog.HeaderLen+binlog.ChecksumLen {
			tp := patch{off: off + size - binlog.ChecksumLen, n: binlog.ChecksumLen}
			binary.LittleEndian.PutUint32(tp.b[:], trailer)
			r.patches = append(r.patches, tp)
			c = crc32.Update(c, castagnoli, ev[19:size-binlog.ChecksumLen])
			c = crc32.Update(c, castagnoli, tp.b[:binlog.ChecksumLen])
		} else {
			c = crc32.Update(c, castagnoli, ev[19:])
		}
		off += size
	}
	binary.LittleEndian.PutUint32(r.hdr[4:], c)
	return true
}
