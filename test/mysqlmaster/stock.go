package mysqlmaster

import (
	"encoding/binary"
	"strings"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Rows events (v2) and their flag that ends a statement.
const (
	writeRowsV2  = 30
	updateRowsV2 = 31
	deleteRowsV2 = 32
	stmtEndFlag  = 0x0001
)

// ForMariaDB rewrites a recorded transaction the way a MariaDB replica can apply it,
// or reports false when nothing of it is left. The recording's server never sets
// STMT_END_F (stock MySQL sets it on a statement's last rows event, and MariaDB
// requires it) and writes MySQL 8's utf8mb4_0900_bin collation (unknown to MariaDB
// 10.11): the last rows event gets the flag, DDL gets utf8mb4_bin. Events of the
// tables in skip ("db.table"; MySQL's binary JSON columns, which MariaDB cannot
// apply) are dropped, and so are DDL transactions naming them.
func ForMariaDB(txn []byte, skip map[string]bool) ([]byte, bool) {
	var evs [][]byte
	tables := map[uint64]string{}
	lastRows := -1
	keep := true
	_ = binlog.Split(txn, func(ev []byte) error {
		switch ev[4] {
		case binlog.TableMapEvent:
			id, name := tableMap(ev)
			tables[id] = name
			if skip[name] {
				return nil
			}
		case writeRowsV2, updateRowsV2, deleteRowsV2:
			if skip[tables[tableID(ev)]] {
				return nil
			}
			lastRows = len(evs)
		case binlog.QueryEvent:
			q, _ := binlog.QueryText(ev, true)
			for name := range skip {
				if strings.Contains(q, "`"+name[strings.IndexByte(name, '.')+1:]+"`") {
					keep = false
				}
			}
			ev = replaceQuery(ev, strings.ReplaceAll(q, "utf8mb4_0900_bin", "utf8mb4_bin"))
		}
		evs = append(evs, append([]byte(nil), ev...))
		return nil
	})
	if !keep || (lastRows < 0 && len(evs) > 2) {
		return nil, false // a DDL on a dropped table, or a row transaction left empty
	}
	if lastRows >= 0 {
		f := binary.LittleEndian.Uint16(evs[lastRows][binlog.HeaderLen+6:])
		binary.LittleEndian.PutUint16(evs[lastRows][binlog.HeaderLen+6:], f|stmtEndFlag)
	}
	var out []byte
	for _, ev := range evs {
		out = append(out, ev...)
	}
	return out, true
}

// tableMap returns a TABLE_MAP event's table id and "db.table".
func tableMap(ev []byte) (uint64, string) {
	b := ev[binlog.HeaderLen+8:]
	db := string(b[1 : 1+b[0]])
	b = b[1+int(b[0])+1:]
	return tableID(ev), db + "." + string(b[1:1+b[0]])
}

func tableID(ev []byte) uint64 {
	var id [8]byte
	copy(id[:], ev[binlog.HeaderLen:binlog.HeaderLen+6])
	return binary.LittleEndian.Uint64(id[:])
}

// replaceQuery returns a checksummed Query event with its statement replaced (the
// checksum is left for appendEvents to recompute).
func replaceQuery(ev []byte, sql string) []byte {
	b := ev[binlog.HeaderLen:]
	start := 13 + int(binary.LittleEndian.Uint16(b[11:])) + int(b[8]) + 1
	out := append([]byte(nil), ev[:binlog.HeaderLen+start]...)
	out = append(out, sql...)
	out = append(out, 0, 0, 0, 0) // checksum
	binary.LittleEndian.PutUint32(out[9:], uint32(len(out)))
	return out
}
