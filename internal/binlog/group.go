package binlog

import "strings"

// EndsGroup reports whether ev is the last event of the transaction group opened by
// the GTID event g. MariaDB ends a group with an XID (transactional engines), a
// COMMIT/ROLLBACK query (non-transactional engines), an XA PREPARE, or, for standalone
// groups (DDL), with its single statement.
func EndsGroup(g GTIDEvent, ev []byte, checksummed bool) bool {
	switch ev[4] {
	case XIDEvent, XAPrepareEvent:
		return true
	case QueryEvent:
		if g.Standalone() {
			return true
		}
		q, err := QueryText(ev, checksummed)
		if err != nil {
			return false
		}
		q = strings.ToUpper(strings.TrimSpace(q))
		return q == "COMMIT" || q == "ROLLBACK" ||
			strings.HasPrefix(q, "XA COMMIT") || strings.HasPrefix(q, "XA ROLLBACK")
	}
	return false
}
