package binlog

import "strings"

// EndsGroup reports whether ev is the last event of the MariaDB transaction group
// opened by the GTID event g. MariaDB ends a group with an XID (transactional engines), a
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
		return commitQuery(ev, checksummed)
	}
	return false
}

// commitQuery reports whether a Query event ends a transaction: COMMIT or ROLLBACK
// (non-transactional engines), XA COMMIT or XA ROLLBACK.
func commitQuery(ev []byte, checksummed bool) bool {
	q, err := QueryText(ev, checksummed)
	if err != nil {
		return false
	}
	q = strings.ToUpper(strings.TrimSpace(q))
	return q == "COMMIT" || q == "ROLLBACK" ||
		strings.HasPrefix(q, "XA COMMIT") || strings.HasPrefix(q, "XA ROLLBACK")
}

// MySQL events that only a MySQL-flavor group holds.
const (
	// MySQLTransactionPayloadEvent is a whole transaction, compressed
	// (binlog_transaction_compression): Flotilla carries it untouched.
	MySQLTransactionPayloadEvent byte = 40
)

// MySQLGroup finds the end of MySQL transaction groups. A group opens with a GTID,
// GTID_TAGGED or ANONYMOUS_GTID event; then either BEGIN (or XA START) opens a
// transaction that an XID, a COMMIT/ROLLBACK query, XA PREPARE or XA COMMIT/ROLLBACK
// ends, or a single statement (DDL) or TRANSACTION_PAYLOAD is the whole group. MySQL
// has no standalone flag in its GTID event: the event after it tells.
type MySQLGroup struct {
	open, begun bool
}

// OpensMySQLGroup reports whether ev opens a MySQL transaction group.
func OpensMySQLGroup(ev []byte) bool {
	switch ev[4] {
	case MySQLGTIDEvent, MySQLGTIDTaggedEvent, MySQLAnonymousGTIDEvent:
		return true
	}
	return false
}

// Next follows ev, an event of the stream, and reports whether it ends the open
// group (the GTID event opens one).
func (g *MySQLGroup) Next(ev []byte, checksummed bool) bool {
	if OpensMySQLGroup(ev) {
		g.open, g.begun = true, false
		return false
	}
	if !g.open {
		return false
	}
	end := false
	switch ev[4] {
	case XIDEvent, XAPrepareEvent, MySQLTransactionPayloadEvent:
		end = true
	case QueryEvent:
		if g.begun {
			end = commitQuery(ev, checksummed)
			break
		}
		q, _ := QueryText(ev, checksummed)
		q = strings.ToUpper(strings.TrimSpace(q))
		if q == "BEGIN" || strings.HasPrefix(q, "XA START") || strings.HasPrefix(q, "XA BEGIN") {
			g.begun = true
		} else {
			end = true // a DDL statement is its own group
		}
	}
	if end {
		g.open = false
	}
	return end
}
