// Package binlog reads and writes the few binlog events Flotilla must understand
// itself: the common header, checksums, and the MariaDB GTID, Gtid_list, Rotate,
// Format_description and Heartbeat events. Everything else inside a transaction is
// carried byte for byte and never decoded.
//
// Invariants: an event is always handled as the full byte slice the master sent
// (header, body and, when the format says so, the 4-byte CRC32 trailer); functions
// that change an event change it in place and refresh its checksum.
package binlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// HeaderLen is the length of the v4 common event header.
const HeaderLen = 19

// ChecksumLen is the length of the CRC32 trailer of a checksummed event.
const ChecksumLen = 4

// Magic starts every binlog file; positions in a file count it.
var Magic = []byte{0xfe, 'b', 'i', 'n'}

// Event type codes used by Flotilla (MySQL and MariaDB share the low ones).
const (
	QueryEvent          byte = 2
	StopEvent           byte = 3
	RotateEvent         byte = 4
	FormatDescription   byte = 15
	XIDEvent            byte = 16
	TableMapEvent       byte = 19
	HeartbeatEvent      byte = 27
	XAPrepareEvent      byte = 38
	AnnotateRowsEvent   byte = 160
	BinlogCheckpoint    byte = 161
	MariaGTIDEvent      byte = 162
	MariaGTIDListEvent  byte = 163
	StartEncryptionEvnt byte = 164
)

// Header flags.
const (
	// FlagBinlogInUse marks the FDE of a file the master has not closed yet.
	FlagBinlogInUse uint16 = 0x1
	// FlagArtificial marks events a master makes up for the dump (fake Rotate).
	FlagArtificial uint16 = 0x20
)

// ErrShort is returned for byte slices too short to hold what they claim.
var ErrShort = errors.New("binlog: event truncated")

// Header is the v4 common event header.
type Header struct {
	Timestamp uint32
	Type      byte
	ServerID  uint32
	EventSize uint32
	LogPos    uint32
	Flags     uint16
}

// ParseHeader decodes the common header and checks that ev holds the whole event.
func ParseHeader(ev []byte) (Header, error) {
	if len(ev) < HeaderLen {
		return Header{}, fmt.Errorf("%w: %d bytes, header needs %d", ErrShort, len(ev), HeaderLen)
	}
	h := Header{
		Timestamp: binary.LittleEndian.Uint32(ev[0:]),
		Type:      ev[4],
		ServerID:  binary.LittleEndian.Uint32(ev[5:]),
		EventSize: binary.LittleEndian.Uint32(ev[9:]),
		LogPos:    binary.LittleEndian.Uint32(ev[13:]),
		Flags:     binary.LittleEndian.Uint16(ev[17:]),
	}
	if h.EventSize < HeaderLen {
		return h, fmt.Errorf("binlog: event size %d smaller than its header", h.EventSize)
	}
	if int(h.EventSize) != len(ev) {
		return h, fmt.Errorf("binlog: event type %d says %d bytes but %d were given", h.Type, h.EventSize, len(ev))
	}
	return h, nil
}

// PutHeader encodes h into the first HeaderLen bytes of dst.
func PutHeader(dst []byte, h Header) {
	binary.LittleEndian.PutUint32(dst[0:], h.Timestamp)
	dst[4] = h.Type
	binary.LittleEndian.PutUint32(dst[5:], h.ServerID)
	binary.LittleEndian.PutUint32(dst[9:], h.EventSize)
	binary.LittleEndian.PutUint32(dst[13:], h.LogPos)
	binary.LittleEndian.PutUint16(dst[17:], h.Flags)
}

// Checksum computes the binlog CRC32 (zlib polynomial) of an event without its trailer.
func Checksum(evWithoutTrailer []byte) uint32 {
	return crc32.ChecksumIEEE(evWithoutTrailer)
}

// VerifyChecksum reports whether the trailer of a checksummed event matches its bytes.
func VerifyChecksum(ev []byte) error {
	if len(ev) < HeaderLen+ChecksumLen {
		return fmt.Errorf("%w: no room for a checksum", ErrShort)
	}
	n := len(ev) - ChecksumLen
	want := binary.LittleEndian.Uint32(ev[n:])
	if got := Checksum(ev[:n]); got != want {
		return fmt.Errorf("binlog: checksum mismatch for event type %d: stored %08x, computed %08x", ev[4], want, got)
	}
	return nil
}

// SetLogPos rewrites the log_pos (end position) of an event in place, optionally clears
// header flags, and refreshes the CRC32 trailer when checksummed is true. It is how an
// event from the master is placed at Flotilla's own position in a served file.
func SetLogPos(ev []byte, logPos uint32, clearFlags uint16, checksummed bool) {
	binary.LittleEndian.PutUint32(ev[13:], logPos)
	if clearFlags != 0 {
		f := binary.LittleEndian.Uint16(ev[17:]) &^ clearFlags
		binary.LittleEndian.PutUint16(ev[17:], f)
	}
	if checksummed && len(ev) >= HeaderLen+ChecksumLen {
		n := len(ev) - ChecksumLen
		binary.LittleEndian.PutUint32(ev[n:], Checksum(ev[:n]))
	}
}

// Split calls fn for every event in buf, a concatenation of whole events: events carry
// their own length. (Stored transactions may cut an event across pieces: readers of
// those use Stream.)
func Split(buf []byte, fn func(ev []byte) error) error {
	for off := 0; off < len(buf); {
		if len(buf)-off < HeaderLen {
			return fmt.Errorf("%w: %d trailing bytes at offset %d", ErrShort, len(buf)-off, off)
		}
		size := int(binary.LittleEndian.Uint32(buf[off+9:]))
		if size < HeaderLen || size > len(buf)-off {
			return fmt.Errorf("binlog: event at offset %d claims %d bytes, %d remain", off, size, len(buf)-off)
		}
		if err := fn(buf[off : off+size]); err != nil {
			return err
		}
		off += size
	}
	return nil
}

// build assembles an event from header fields and body, appending a checksum when asked.
func build(typ byte, serverID, timestamp, logPos uint32, flags uint16, body []byte, checksummed bool) []byte {
	size := HeaderLen + len(body)
	if checksummed {
		size += ChecksumLen
	}
	ev := make([]byte, size)
	PutHeader(ev, Header{Timestamp: timestamp, Type: typ, ServerID: serverID, EventSize: uint32(size), LogPos: logPos, Flags: flags})
	copy(ev[HeaderLen:], body)
	if checksummed {
		binary.LittleEndian.PutUint32(ev[size-ChecksumLen:], Checksum(ev[:size-ChecksumLen]))
	}
	return ev
}

// NewRotate builds a Rotate event pointing at file/pos. Fake rotates that open a dump
// have timestamp 0, log_pos 0 and the artificial flag; the Rotate that closes a served
// file has its real end position.
func NewRotate(serverID, timestamp, logPos uint32, flags uint16, file string, pos uint64, checksummed bool) []byte {
	body := make([]byte, 8+len(file))
	binary.LittleEndian.PutUint64(body, pos)
	copy(body[8:], file)
	return build(RotateEvent, serverID, timestamp, logPos, flags, body, checksummed)
}

// ParseRotate returns the file and position a Rotate event points at.
func ParseRotate(ev []byte, checksummed bool) (string, uint64, error) {
	body, err := body(ev, checksummed)
	if err != nil {
		return "", 0, err
	}
	if len(body) < 8 {
		return "", 0, fmt.Errorf("%w: rotate body of %d bytes", ErrShort, len(body))
	}
	return string(body[8:]), binary.LittleEndian.Uint64(body), nil
}

// NewHeartbeat builds a heartbeat carrying the current served file name and the
// position the replica has been sent up to (MariaDB/MySQL format, type 27). A position
// past 4 GiB does not fit log_pos: as MariaDB does, log_pos is then 0 and the position
// follows the header as an 8-byte sub-header, before the file name.
func NewHeartbeat(serverID uint32, file string, pos uint64, checksummed bool) []byte {
	if pos <= 0xffffffff {
		return build(HeartbeatEvent, serverID, 0, uint32(pos), 0, []byte(file), checksummed)
	}
	return build(HeartbeatEvent, serverID, 0, 0, 0, append(binary.LittleEndian.AppendUint64(nil, pos), file...), checksummed)
}

// body returns the event body without header and checksum trailer.
func body(ev []byte, checksummed bool) ([]byte, error) {
	end := len(ev)
	if checksummed {
		end -= ChecksumLen
	}
	if end < HeaderLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrShort, len(ev))
	}
	return ev[HeaderLen:end], nil
}
