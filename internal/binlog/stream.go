package binlog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Stream cuts a byte stream of events into events and parts of events, where the
// stream arrives in pieces that may end inside an event: an event larger than one raft
// entry is stored, read and served in parts, and nothing may hold it whole.
//
// Invariant: a piece that begins an event holds the event's whole header (Flotilla
// cuts an event only past its header, see CutEvent), so the event's length is known
// from its first part on. Stream itself holds only the bytes still owed.
type Stream struct {
	// Left is how many bytes of the current event are still to come; 0 at an event
	// boundary.
	Left uint64
}

// Feed calls fn for every event or part of an event in buf, in order. first marks the
// part that holds the event's header, last the one that ends it; a whole event has
// both.
func (s *Stream) Feed(buf []byte, fn func(part []byte, first, last bool) error) error {
	for off := 0; off < len(buf); {
		if s.Left > 0 {
			n := int(min(s.Left, uint64(len(buf)-off)))
			s.Left -= uint64(n)
			if err := fn(buf[off:off+n], false, s.Left == 0); err != nil {
				return err
			}
			off += n
			continue
		}
		if len(buf)-off < HeaderLen {
			return fmt.Errorf("%w: an event begins at offset %d with %d bytes, fewer than its header", ErrShort, off, len(buf)-off)
		}
		size := uint64(binary.LittleEndian.Uint32(buf[off+9:]))
		if size < HeaderLen {
			return fmt.Errorf("binlog: event at offset %d claims %d bytes, less than its header", off, size)
		}
		n := int(min(size, uint64(len(buf)-off)))
		s.Left = size - uint64(n)
		if err := fn(buf[off:off+n], true, s.Left == 0); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// CutEvent returns where an event of size bytes may be cut into parts of at most limit
// bytes: each cut leaves the whole header in the first part and the whole checksum
// trailer in the last (placing a part rewrites both). limit must exceed
// HeaderLen+ChecksumLen.
func CutEvent(size, limit int) []int {
	if limit <= HeaderLen+ChecksumLen {
		panic(fmt.Sprintf("binlog: CutEvent limit %d leaves no room for a header and a checksum", limit))
	}
	var cuts []int
	for off := 0; size-off > limit; {
		next := off + limit
		if size-next < ChecksumLen {
			next = size - ChecksumLen
		}
		cuts = append(cuts, next)
		off = next
	}
	return cuts
}

// Placer rewrites events from a master for their place in a served file, as SetLogPos
// does for whole events, also when an event arrives in parts: it keeps the running
// CRC32 of the rewritten event between parts.
type Placer struct {
	Stream
	// CRC is the running checksum of the current event's bytes so far.
	CRC uint32
}

// Place rewrites, in place, the events and parts in buf, which start at served
// position start: each event's log_pos becomes its end position (modulo 2^32, as a
// master writes it past 4 GiB), clearFlags are cleared, and when checksummed the
// trailer is brought up to date: a whole event's by Relocate (its trailer must match
// its bytes, as the syncer checked; one that did not may still not), an event in
// parts's by checksumming it again as its parts pass. The trailer must be whole in an
// event's last part.
func (p *Placer) Place(buf []byte, start uint64, clearFlags uint16, checksummed bool) error {
	pos := start
	return p.Feed(buf, func(part []byte, first, last bool) error {
		if first {
			end := pos + uint64(binary.LittleEndian.Uint32(part[9:]))
			if last {
				Relocate(part, uint32(end), clearFlags, checksummed)
				pos += uint64(len(part))
				return nil
			}
			SetLogPos(part, uint32(end), clearFlags, false)
			p.CRC = 0
		}
		pos += uint64(len(part))
		if !checksummed {
			return nil
		}
		if !last {
			p.CRC = crc32.Update(p.CRC, crc32.IEEETable, part)
			return nil
		}
		if len(part) < ChecksumLen {
			return fmt.Errorf("%w: the last part of an event holds %d bytes, its checksum needs %d", ErrShort, len(part), ChecksumLen)
		}
		n := len(part) - ChecksumLen
		p.CRC = crc32.Update(p.CRC, crc32.IEEETable, part[:n])
		binary.LittleEndian.PutUint32(part[n:], p.CRC)
		return nil
	})
}
