package mysqlfront

import (
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
)

// flavor is what the front end answers differently for MySQL and MariaDB upstreams
// (DESIGN.md "Seams"): the variables only one flavor has, and its dump.
type flavor interface {
	// variable answers a system variable whose value depends on the flavor; ok false
	// means the flavor leaves it to the common answers, and err is the error a
	// master of this flavor sends for it.
	variable(u *placement.Upstream, name string) (v string, ok bool, err error)
	// heartbeat builds a heartbeat for a replica whose dump asked with flags.
	heartbeat(u *placement.Upstream, flags uint16, file string, pos uint64, checksummed bool) []byte
	// annotate reports whether a dump with flags asks for MariaDB's Annotate_rows.
	annotate(flags uint16) bool
	// statusGTIDs reports whether SHOW MASTER STATUS ends with Executed_Gtid_Set.
	statusGTIDs() bool
	// heartbeatPastSkipped reports whether heartbeats carry the position after the
	// transactions a GTID dump skipped (MySQL's sender does), rather than after the
	// last event sent.
	heartbeatPastSkipped() bool
}

func flavorOf(u *placement.Upstream) flavor {
	if u.Flavor == "mysql" {
		return mysqlFront{}
	}
	return mariadbFront{}
}

// mariadbFront is a MariaDB master's face.
type mariadbFront struct{}

func (mariadbFront) variable(_ *placement.Upstream, name string) (string, bool, error) {
	switch name {
	case "gtid_mode", "enforce_gtid_consistency", "gtid_executed", "gtid_purged", "binlog_transaction_compression",
		"rpl_semi_sync_source_enabled":
		return "", true, errUnknownVar(name) // MySQL's
	}
	return "", false, nil
}

func (mariadbFront) heartbeat(u *placement.Upstream, _ uint16, file string, pos uint64, ck bool) []byte {
	return binlog.NewHeartbeat(u.ServerID, file, pos, ck)
}

func (mariadbFront) annotate(flags uint16) bool { return flags&dumpAnnotateEvents != 0 }

func (mariadbFront) statusGTIDs() bool { return false }

func (mariadbFront) heartbeatPastSkipped() bool { return false }

// mysqlFront is a MySQL 8.0 source's face: GTID mode on, its own server_uuid,
// semi-sync offered, heartbeat v2 on request.
type mysqlFront struct{}

// dumpHeartbeatV2 is MySQL's dump flag asking for 64-bit heartbeats (8.0.26+).
const dumpHeartbeatV2 = 0x02

func (mysqlFront) variable(u *placement.Upstream, name string) (string, bool, error) {
	switch name {
	case "gtid_mode", "enforce_gtid_consistency":
		return "ON", true, nil
	case "server_uuid":
		return GroupUUID(u), true, nil
	case "rpl_semi_sync_master_enabled", "rpl_semi_sync_source_enabled":
		// The semi-sync plugin's probe: a replica with it on then announces itself
		// and gets ACK requests (semisync.go).
		return "ON", true, nil
	case "rpl_semi_sync_slave_enabled", "rpl_semi_sync_replica_enabled":
		return "", true, errUnknownVar(name)
	case "gtid_domain_id", "gtid_strict_mode", "gtid_binlog_pos", "gtid_current_pos", "gtid_binlog_state", "gtid_slave_pos":
		return "", true, errUnknownVar(name)
	case "binlog_transaction_compression":
		return "OFF", true, nil
	}
	return "", false, nil
}

func (mysqlFront) heartbeat(u *placement.Upstream, flags uint16, file string, pos uint64, ck bool) []byte {
	if flags&dumpHeartbeatV2 != 0 {
		return binlog.NewHeartbeatV2(u.ServerID, file, pos, ck)
	}
	return binlog.NewHeartbeat(u.ServerID, file, pos, ck)
}

func (mysqlFront) annotate(uint16) bool { return false }

func (mysqlFront) statusGTIDs() bool { return true }

func (mysqlFront) heartbeatPastSkipped() bool { return true }

// GroupUUID is the server_uuid Flotilla answers for a MySQL-flavor upstream: stable
// for the upstream's group, and never the master's or a replica's (a MySQL replica
// refuses a source whose uuid equals its own, and records the source's uuid).
func GroupUUID(u *placement.Upstream) string {
	h := sha1.Sum([]byte(fmt.Sprintf("flotilla-group:%s:%d", u.Name, u.GroupID)))
	h[6] = h[6]&0x0f | 0x50 // version 5 (name-based)
	h[8] = h[8]&0x3f | 0x80 // RFC 4122 variant
	var id binlog.SID
	copy(id[:], h[:16])
	return id.String()
}

// mysqlDumpRequest is a decoded COM_BINLOG_DUMP_GTID: flags u16, server_id u32,
// name size u32, name, position u64, set size u32, the replica's executed GTID set in
// binary form. MySQL reads the set whatever the flags say.
type mysqlDumpRequest struct {
	Flags    uint16
	ServerID uint32
	File     string
	Pos      uint64
	Set      binlog.MySQLSet
}

func parseDumpGTID(data []byte) (mysqlDumpRequest, error) {
	if len(data) < 10 {
		return mysqlDumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP_GTID of %d bytes is too short", len(data))
	}
	r := mysqlDumpRequest{Flags: binary.LittleEndian.Uint16(data), ServerID: binary.LittleEndian.Uint32(data[2:])}
	n := uint64(binary.LittleEndian.Uint32(data[6:]))
	rest := data[10:]
	if n+8 > uint64(len(rest)) {
		return mysqlDumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP_GTID names a file of %d bytes in %d", n, len(rest))
	}
	// MySQL 5.7 replicas send the name's length in NUL bytes.
	r.File = strings.TrimRight(string(rest[:n]), "\x00")
	r.Pos = binary.LittleEndian.Uint64(rest[n:])
	rest = rest[n+8:]
	r.Set = binlog.MySQLSet{}
	if len(rest) == 0 {
		return r, nil
	}
	if len(rest) < 4 || uint64(binary.LittleEndian.Uint32(rest)) != uint64(len(rest)-4) {
		return mysqlDumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP_GTID: the GTID set's size does not match the %d bytes after it", len(rest)-4)
	}
	set, tail, err := binlog.DecodeMySQLSet(rest[4:])
	if err != nil {
		return mysqlDumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP_GTID: GTID set: %w", err)
	}
	if len(tail) != 0 {
		return mysqlDumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP_GTID: %d bytes after the GTID set", len(tail))
	}
	r.Set = set
	return r, nil
}
