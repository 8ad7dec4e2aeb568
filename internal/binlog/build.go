package binlog

import "encoding/binary"

// The builders below make well-formed events for tests and tools (a fake master, a
// fixture writer). Production code serves the master's own bytes.

// NewGTIDEvent builds a MariaDB GTID event opening a group.
func NewGTIDEvent(g GTID, flags byte, checksummed bool) []byte {
	body := make([]byte, 13)
	binary.LittleEndian.PutUint64(body, g.Seq)
	binary.LittleEndian.PutUint32(body[8:], g.Domain)
	body[12] = flags
	return build(MariaGTIDEvent, g.Server, 1700000000, 0, 0, body, checksummed)
}

// NewQuery builds a Query event running sql in database db.
func NewQuery(serverID uint32, db, sql string, checksummed bool) []byte {
	body := make([]byte, 13, 13+len(db)+1+len(sql))
	body[8] = byte(len(db))
	body = append(body, db...)
	body = append(body, 0)
	body = append(body, sql...)
	return build(QueryEvent, serverID, 1700000000, 0, 0, body, checksummed)
}

// NewXID builds the XID event that commits a transactional group.
func NewXID(serverID uint32, xid uint64, checksummed bool) []byte {
	return build(XIDEvent, serverID, 1700000000, 0, 0, binary.LittleEndian.AppendUint64(nil, xid), checksummed)
}

// NewOpaque builds an event of type typ whose body is n filler bytes: a stand-in for
// the table-map and row events Flotilla carries without decoding.
func NewOpaque(typ byte, serverID uint32, n int, checksummed bool) []byte {
	body := make([]byte, n)
	for i := range body {
		body[i] = byte(i)
	}
	return build(typ, serverID, 1700000000, 0, 0, body, checksummed)
}
