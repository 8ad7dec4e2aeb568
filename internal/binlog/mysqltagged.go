package binlog

import (
	"encoding/binary"
	"fmt"
	"math"
)

// MySQL 8.3+ tagged GTIDs: GTID_TAGGED events and the tagged binary form of GTID
// sets. Both use MySQL's serialization varints: an unsigned value takes n bytes, n
// being one more than the count of trailing 1-bits in the first byte (up to 9); the
// first n bits are that marker and the value follows, little-endian. Signed values
// are zig-zag encoded.

// appendVarint appends v as a MySQL serialization varint.
func appendVarint(b []byte, v uint64) []byte {
	for n := uint(1); n <= 8; n++ {
		if v < 1<<(7*n) {
			enc := v<<n | (1<<(n-1) - 1)
			for i := uint(0); i < n; i++ {
				b = append(b, byte(enc>>(8*i)))
			}
			return b
		}
	}
	return binary.LittleEndian.AppendUint64(append(b, 0xff), v)
}

// readVarint reads a MySQL serialization varint and returns it with the bytes read.
func readVarint(b []byte) (uint64, int, error) {
	if len(b) == 0 {
		return 0, 0, fmt.Errorf("%w: varint", ErrShort)
	}
	n := 1
	for n < 9 && b[0]&(1<<(n-1)) != 0 {
		n++
	}
	if len(b) < n {
		return 0, 0, fmt.Errorf("%w: varint of %d bytes in %d", ErrShort, n, len(b))
	}
	if n == 9 {
		return binary.LittleEndian.Uint64(b[1:9]), 9, nil
	}
	var v uint64
	for i := n - 1; i >= 1; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v<<(8-n) | uint64(b[0])>>n, n, nil
}

// Fields of a GTID_TAGGED event (in ascending order, each a varint id then its value).
const (
	taggedFieldFlags = 0
	taggedFieldUUID  = 1
	taggedFieldGNO   = 2
	taggedFieldTag   = 3
)

// ParseMySQLGTIDTaggedEvent reads the GTID of a GTID_TAGGED event (type 42): after the
// header, the serialization format's version, total size and last non-ignorable field
// id, then fields flags (0), uuid (1: 16 varints), gno (2: signed varint) and tag (3:
// length and bytes); the fields after the tag are not needed here.
func ParseMySQLGTIDTaggedEvent(ev []byte) (MySQLGTID, error) {
	if len(ev) < HeaderLen || ev[4] != MySQLGTIDTaggedEvent {
		return MySQLGTID{}, fmt.Errorf("binlog: not a GTID_TAGGED event")
	}
	b := ev[HeaderLen:]
	read := func() (uint64, error) {
		v, n, err := readVarint(b)
		b = b[min(n, len(b)):]
		return v, err
	}
	var g MySQLGTID
	if _, err := read(); err != nil { // format version
		return g, err
	}
	size, err := read()
	if err != nil {
		return g, err
	}
	if size > uint64(len(ev)-HeaderLen) {
		return g, fmt.Errorf("%w: GTID_TAGGED claims %d bytes in %d", ErrShort, size, len(ev)-HeaderLen)
	}
	if _, err := read(); err != nil { // last non-ignorable field
		return g, err
	}
	seen := 0
	for seen < 4 {
		id, err := read()
		if err != nil {
			return g, err
		}
		switch id {
		case taggedFieldFlags:
			_, err = read()
		case taggedFieldUUID:
			for i := range g.SID {
				var v uint64
				if v, err = read(); err != nil || v > 0xff {
					return g, fmt.Errorf("binlog: GTID_TAGGED uuid byte %d: %d, %v", i, v, err)
				}
				g.SID[i] = byte(v)
			}
		case taggedFieldGNO:
			var u uint64
			u, err = read()
			g.GNO = int64(u>>1) ^ -int64(u&1)
		case taggedFieldTag:
			var n uint64
			if n, err = read(); err == nil {
				if n > uint64(len(b)) {
					return g, fmt.Errorf("%w: GTID_TAGGED tag of %d bytes", ErrShort, n)
				}
				g.Tag, err = parseTag(string(b[:n]))
				b = b[n:]
			}
		default:
			return g, fmt.Errorf("binlog: GTID_TAGGED field %d before the tag", id)
		}
		if err != nil {
			return g, fmt.Errorf("binlog: GTID_TAGGED field %d: %w", id, err)
		}
		seen++
	}
	if g.GNO < 1 || g.GNO == math.MaxInt64 || g.Tag == "" {
		return MySQLGTID{}, fmt.Errorf("binlog: GTID_TAGGED event with gno %d and tag %q", g.GNO, g.Tag)
	}
	return g, nil
}

// NewMySQLGTIDTagged builds a GTID_TAGGED event holding the fields up to the tag, as
// a MySQL 8.3+ server writes them (its later, optional fields omitted).
func NewMySQLGTIDTagged(serverID uint32, g MySQLGTID, checksummed bool) []byte {
	var f []byte
	f = appendVarint(f, 3) // last non-ignorable field: the tag
	f = appendVarint(f, taggedFieldFlags)
	f = appendVarint(f, 1)
	f = appendVarint(f, taggedFieldUUID)
	for _, c := range g.SID {
		f = appendVarint(f, uint64(c))
	}
	f = appendVarint(f, taggedFieldGNO)
	f = appendVarint(f, uint64(g.GNO<<1)^uint64(g.GNO>>63))
	f = appendVarint(f, taggedFieldTag)
	f = appendVarint(f, uint64(len(g.Tag)))
	f = append(f, g.Tag...)
	ver := appendVarint(nil, 1)
	size := uint64(len(ver) + len(f))
	for len(appendVarint(nil, size))+len(ver)+len(f) != int(size) {
		size = uint64(len(appendVarint(nil, size)) + len(ver) + len(f))
	}
	body := append(appendVarint(ver, size), f...)
	return build(MySQLGTIDTaggedEvent, serverID, 0, 0, 0, body, checksummed)
}
