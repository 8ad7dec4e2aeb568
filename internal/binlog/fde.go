package binlog

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Checksum algorithm codes carried in a Format_description event.
const (
	ChecksumNone  byte = 0
	ChecksumCRC32 byte = 1
)

// FDE is what Flotilla needs from a Format_description event.
type FDE struct {
	BinlogVersion uint16
	ServerVersion string
	// ChecksumAlg says whether every event of the file carries a CRC32 trailer.
	ChecksumAlg byte
}

// Checksummed reports whether events described by this FDE end with a CRC32.
func (f FDE) Checksummed() bool { return f.ChecksumAlg == ChecksumCRC32 }

// ParseFDE decodes a Format_description event (binlog v4, server 5.6+/MariaDB 5.3+,
// which always carry the checksum algorithm byte before the 4-byte trailer).
func ParseFDE(ev []byte) (FDE, error) {
	const minBody = 2 + 50 + 4 + 1 + 1 + 4
	if len(ev) < HeaderLen+minBody {
		return FDE{}, fmt.Errorf("%w: Format_description of %d bytes", ErrShort, len(ev))
	}
	if ev[4] != FormatDescription {
		return FDE{}, fmt.Errorf("binlog: event type %d is not a Format_description", ev[4])
	}
	b := ev[HeaderLen:]
	f := FDE{
		BinlogVersion: binary.LittleEndian.Uint16(b),
		ServerVersion: strings.TrimRight(string(b[2:52]), "\x00"),
		ChecksumAlg:   ev[len(ev)-ChecksumLen-1],
	}
	if f.BinlogVersion != 4 {
		return f, fmt.Errorf("binlog: binlog version %d is not supported (need 4)", f.BinlogVersion)
	}
	if f.ChecksumAlg != ChecksumNone && f.ChecksumAlg != ChecksumCRC32 {
		return f, fmt.Errorf("binlog: unknown checksum algorithm %d in Format_description", f.ChecksumAlg)
	}
	if f.Checksummed() {
		if err := VerifyChecksum(ev); err != nil {
			return f, err
		}
	}
	return f, nil
}

// ClearFDECreated zeroes the "created" timestamp of a Format_description in place. A
// non-zero value tells a replica the master just started (and to drop temporary
// tables); a relay resuming mid-file must not say that. Callers refresh the checksum.
func ClearFDECreated(ev []byte) {
	if len(ev) >= HeaderLen+56 {
		binary.LittleEndian.PutUint32(ev[HeaderLen+52:], 0)
	}
}

// QueryText returns the SQL text of a Query event; Flotilla reads it only to find the
// COMMIT or ROLLBACK that ends a transaction group on non-transactional engines.
func QueryText(ev []byte, checksummed bool) (string, error) {
	b, err := body(ev, checksummed)
	if err != nil {
		return "", err
	}
	const post = 13 // thread id, exec time, db len, error code, status vars len
	if len(b) < post {
		return "", fmt.Errorf("%w: Query event body of %d bytes", ErrShort, len(b))
	}
	dbLen := int(b[8])
	varsLen := int(binary.LittleEndian.Uint16(b[11:]))
	start := post + varsLen + dbLen + 1
	if start > len(b) {
		return "", fmt.Errorf("%w: Query event status/db fields exceed body", ErrShort)
	}
	return string(b[start:]), nil
}

// NewFDE builds a MariaDB-style Format_description event. Flotilla serves the master's
// own FDE; this exists for tests and tools that need a valid file without a master.
func NewFDE(serverID uint32, serverVersion string, checksummed bool) []byte {
	body := make([]byte, 0, 2+50+4+1+40+1)
	body = binary.LittleEndian.AppendUint16(body, 4)
	var ver [50]byte
	copy(ver[:], serverVersion)
	body = append(body, ver[:]...)
	body = binary.LittleEndian.AppendUint32(body, 0)
	body = append(body, HeaderLen)
	// Post-header lengths of event types 1..N (values as MariaDB 10.11 writes them for
	// the types Flotilla parses; the rest are zero, which readers accept for skipping).
	post := make([]byte, 168)
	post[QueryEvent-1] = 13
	post[RotateEvent-1] = 8
	post[FormatDescription-1] = 84
	post[XIDEvent-1] = 0
	post[TableMapEvent-1] = 8
	post[AnnotateRowsEvent-1] = 0
	post[BinlogCheckpoint-1] = 4
	post[MariaGTIDEvent-1] = 19
	post[MariaGTIDListEvent-1] = 4
	body = append(body, post...)
	alg := ChecksumNone
	if checksummed {
		alg = ChecksumCRC32
	}
	body = append(body, alg)
	ev := build(FormatDescription, serverID, 0, 0, 0, body, true)
	if !checksummed {
		// The trailer is present but not a checksum when the algorithm is NONE.
		copy(ev[len(ev)-ChecksumLen:], []byte{0, 0, 0, 0})
	}
	return ev
}
