package mysqlfront

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
)

// Semi-sync toward Flotilla's own replicas. A replica whose semi-sync is on asks
// whether its master offers it (Flotilla says yes) and announces itself with
// SET @rpl_semi_sync_slave=1 (MariaDB, MySQL before 8.0.26) or
// @rpl_semi_sync_replica=1. Its dump then carries a two-byte header before each
// event, 0xEF and a flag asking for an ACK, set on the last event of each
// transaction; the replica answers with 0xEF, the position (u64) and the file name,
// in Flotilla's coordinates. Flotilla records the ACKs for status and never waits
// for them: its own durability is the raft quorum.

// semiMagic opens the semi-sync header and each ACK.
const semiMagic = 0xEF

// maxAckBytes bounds an ACK packet: the magic, a position and a file name.
const maxAckBytes = 1 + 8 + 512

// isSemiSyncReplica reports whether the session announced itself as a semi-sync
// replica.
func isSemiSyncReplica(vars map[string]*string) bool {
	for _, name := range []string{"rpl_semi_sync_slave", "rpl_semi_sync_replica"} {
		if v := vars[name]; v != nil && *v == "1" {
			return true
		}
	}
	return false
}

// semiHeader is the packet start of an event to a semi-sync replica: the OK byte,
// the magic and the ACK-request flag.
func semiHeader(ack bool) []byte {
	if ack {
		return []byte{0x00, semiMagic, 0x01}
	}
	return []byte{0x00, semiMagic, 0x00}
}

// txnEnds returns a function that follows the events of a dump of upstream u and
// tells the last event of each transaction.
// Whether events carry a checksum is read from each Format_description (a switch
// to another master may change it).
func txnEnds(u *placement.Upstream) func(ev []byte) bool {
	ck := u.BinlogChecksum != "NONE"
	checksum := func(ev []byte) {
		if ev[4] == binlog.FormatDescription {
			if fde, err := binlog.ParseFDE(ev); err == nil {
				ck = fde.Checksummed()
			}
		}
	}
	if u.Flavor == "mysql" {
		var g binlog.MySQLGroup
		return func(ev []byte) bool {
			if len(ev) < binlog.HeaderLen {
				return false
			}
			checksum(ev)
			return g.Next(ev, ck)
		}
	}
	var cur binlog.GTIDEvent
	open := false
	return func(ev []byte) bool {
		if len(ev) < binlog.HeaderLen {
			return false
		}
		checksum(ev)
		if ev[4] == binlog.MariaGTIDEvent {
			g, err := binlog.ParseGTIDEvent(ev)
			cur, open = g, err == nil
			return false
		}
		if open && binlog.EndsGroup(cur, ev, ck) {
			open = false
			return true
		}
		return false
	}
}

// readAcks reads a semi-sync replica's ACKs until the connection fails, recording
// them in reg. Anything else the replica sends is logged and skipped; a packet too
// large to be an ACK ends the connection.
func (ss *session) readAcks(reg *replicaInfo) {
	var hdr [4]byte
	body := make([]byte, maxAckBytes)
	for {
		if _, err := io.ReadFull(ss.c.client, hdr[:]); err != nil {
			return
		}
		n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
		if n > maxAckBytes {
			ss.log.Warn("semi-sync replica sent a packet too large for an ACK; closing", "bytes", n)
			return
		}
		if _, err := io.ReadFull(ss.c.client, body[:n]); err != nil {
			return
		}
		if n == 1 && body[0] == mysql.COM_QUIT {
			return // STOP SLAVE
		}
		if n < 9 || body[0] != semiMagic {
			ss.log.Warn("semi-sync replica sent something other than an ACK; ignored", "bytes", n)
			continue
		}
		pos := fmt.Sprintf("%s:%d", strings.ToValidUTF8(string(body[9:n]), "?"), binary.LittleEndian.Uint64(body[1:9]))
		reg.acked.Store(&pos)
		reg.acks.Add(1)
	}
}
