package statemachine

import (
	"encoding/binary"
	"hash/crc32"
	"iter"

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
	// derived says the header's checksum was derived from the entry's (segcrc.go).
	derived bool
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
// written, derived from the entry's (known) where that is cheaper (segcrc.go). It
// reports false, leaving the work to the Placer, when events does not split into
// whole events (an event cut across pieces, or damage apply's checks let through),
// and r then holds nothing of events.
func (g *Group) placeRecord(r *placedRecord, events []byte, start uint64, typ byte, index uint64, known *knownCRC) bool {
	// Whole events only: a piece that ends inside an event (the first of every event
	// larger than a piece) is found by its headers alone, before any other work.
	count := 0
	for off := 0; off < len(events); count++ {
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
		if checksummed && size >= binlog.HeaderLen+binlog.ChecksumLen {
			tp := patch{off: off + size - binlog.ChecksumLen, n: binlog.ChecksumLen}
			binary.LittleEndian.PutUint32(tp.b[:], trailer)
			r.patches = append(r.patches, tp)
		}
		off += size
	}
	var c uint32
	if crc, ok := known.part(events, count); ok {
		c = recordCRCOf(r.hdr[:], patchedCRC(crc, len(events), r.changes()), len(events))
		r.derived = true
	} else {
		c, r.derived = r.checksum(), false
	}
	binary.LittleEndian.PutUint32(r.hdr[4:], c)
	return true
}

// checksum takes the record's CRC32C in one pass: its header, then its source with
// the patches in their place.
func (r *placedRecord) checksum() uint32 {
	c := crc32.Update(0, castagnoli, r.hdr[8:recordHeaderLen])
	at := 0
	for i := range r.patches {
		p := &r.patches[i]
		c = crc32.Update(c, castagnoli, r.src[at:p.off])
		c = crc32.Update(c, castagnoli, p.b[:p.n])
		at = p.off + int(p.n)
	}
	return crc32.Update(c, castagnoli, r.src[at:])
}

// changes yields the record's patches as changes to its source: offset, and the
// source's bytes XOR the patch's.
func (r *placedRecord) changes() iter.Seq2[int, []byte] {
	return func(yield func(int, []byte) bool) {
		var d [6]byte
		for i := range r.patches {
			p := &r.patches[i]
			for j := range int(p.n) {
				d[j] = r.src[p.off+j] ^ p.b[j]
			}
			if !yield(p.off, d[:p.n]) {
				return
			}
		}
	}
}
