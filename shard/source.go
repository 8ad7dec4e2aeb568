package shard

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
)

// SourceInfo is what Flotilla learns about a master before relaying it.
type SourceInfo struct {
	Flavor     string
	Version    string
	ServerID   uint32
	DomainID   uint32
	ServerUUID string
	// BinlogChecksum is CRC32 or NONE.
	BinlogChecksum string
	// StartGTID is where the group's history starts: the requested position, or the
	// GTID state at the start of the oldest binlog file still on the master.
	StartGTID string
	// BinlogBytes is the size of the master's binary logs when checked, and EndGTID
	// the master's GTID position then: what an initial copy has to reach.
	BinlogBytes uint64
	EndGTID     string
	// SemiSync is the mode asked for (auto, on or off), checked against the master.
	SemiSync string
	// Warnings name the checks that could not run, and why: a master may refuse a
	// check's query to a user that can replicate all the same, and then the dump
	// proves it. A check that ran and failed is an error instead.
	Warnings []string
}

// SourceCheck is what `upstream add` asks InspectSource to verify.
type SourceCheck struct {
	Addr, User, Password string
	// TLS, when set, is how to reach the master (see placement.SourceTLS).
	TLS *placement.SourceTLS
	// Flavor is auto (or empty), mysql or mariadb.
	Flavor string
	// StartGTID, if set, is where history starts instead of the oldest binlog.
	StartGTID string
	// ServerID is the server_id the syncer will use toward the master: no other
	// replica of the master may use it.
	ServerID uint32
	// SemiSync is auto (or empty), on or off.
	SemiSync string
}

// InspectSource connects to a master and checks everything relaying needs, so that
// `upstream add` fails at once with the reason instead of a syncer retrying forever.
func InspectSource(ctx context.Context, chk SourceCheck) (SourceInfo, error) {
	addr, user, password, flavor, startGTID := chk.Addr, chk.User, chk.Password, chk.Flavor, chk.StartGTID
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tlsCfg, err := sourceTLSConfig(addr, chk.TLS)
	if err != nil {
		return SourceInfo{}, err
	}
	c, err := connectMaster(ctx, addr, user, password, tlsCfg, 5*time.Second)
	if err != nil {
		if tlsCfg != nil {
			var ce *tls.CertificateVerificationError
			if errors.As(err, &ce) {
				return SourceInfo{}, fmt.Errorf("master %s: its TLS certificate does not verify (%v): check --source-tls-ca and --source-tls-server-name", addr, ce.Err)
			}
		}
		var me *mysql.MyError
		if errors.As(err, &me) && (me.Code == mysql.ER_ACCESS_DENIED_ERROR || me.Code == mysql.ER_DBACCESS_DENIED_ERROR) {
			return SourceInfo{}, fmt.Errorf("master %s refused user %q (%s): check --user and --password", addr, user, me.Message)
		}
		return SourceInfo{}, fmt.Errorf("cannot connect to master %s: %w", addr, err)
	}
	defer c.Close()
	q := func(sql string) (string, error) { return queryString(c, addr, sql) }
	var info SourceInfo
	// One round trip for the variables both flavors have (an add's checks took a
	// dozen in turn: most of its time, adding upstreams by the thousand).
	vars, err := queryStrings(c, addr, "SELECT @@version, @@log_bin, @@binlog_format, @@binlog_checksum, @@server_id", 5)
	if err != nil {
		return info, err
	}
	info.Version = vars[0]
	logBin, format, ck, sid := vars[1], vars[2], vars[3], vars[4]
	detected := "mysql"
	if strings.Contains(strings.ToLower(info.Version), "mariadb") {
		detected = "mariadb"
	}
	switch flavor {
	case "", "auto":
	case "mysql", "mariadb":
		if flavor != detected {
			return info, fmt.Errorf("master %s runs %s (%s) but --flavor %s was given", addr, detected, info.Version, flavor)
		}
	default:
		return info, fmt.Errorf("unknown flavor %q: use auto, mysql or mariadb", flavor)
	}
	info.Flavor = detected
	switch chk.SemiSync {
	case "", "auto":
		info.SemiSync = "auto"
	case "on", "off":
		info.SemiSync = chk.SemiSync
	default:
		return info, fmt.Errorf("unknown --semi-sync %q: use auto, on or off", chk.SemiSync)
	}
	if info.SemiSync == "on" && !semiSyncOffered(c) {
		return info, fmt.Errorf("master %s has semi-sync off (rpl_semi_sync_master_enabled, or rpl_semi_sync_source_enabled on MySQL): turn it on, or add the upstream with --semi-sync auto or off", addr)
	}
	if logBin != "1" {
		return info, fmt.Errorf("binary logging is off on master %s: start it with log_bin (and server_id) in its configuration", addr)
	}
	if detected == "mysql" {
		mv, err := queryStrings(c, addr, "SELECT @@GLOBAL.gtid_mode, @@server_uuid", 2)
		if err != nil {
			return info, err
		}
		mode := mv[0]
		info.ServerUUID = mv[1]
		if !strings.EqualFold(mode, "ON") {
			return info, fmt.Errorf("master %s has gtid_mode=%s: Flotilla needs gtid_mode=ON on a MySQL master (and enforce_gtid_consistency=ON)", addr, mode)
		}
	}
	if !strings.EqualFold(format, "ROW") {
		return info, fmt.Errorf("master %s has binlog_format=%s: Flotilla needs ROW (SET GLOBAL binlog_format=ROW and in the configuration)", addr, format)
	}
	if ck != "CRC32" && ck != "NONE" {
		return info, fmt.Errorf("master %s has binlog_checksum=%s: Flotilla supports CRC32 and NONE", addr, ck)
	}
	info.BinlogChecksum = ck
	v, _ := strconv.ParseUint(sid, 10, 32)
	if v == 0 {
		return info, fmt.Errorf("master %s has server_id=0: set a non-zero server_id", addr)
	}
	info.ServerID = uint32(v)
	if chk.ServerID == info.ServerID {
		return info, fmt.Errorf("server id %d is master %s's own server_id: choose another --server-id", chk.ServerID, addr)
	}
	// Replicas register with the master; another one already using this server id
	// would have its stream cut by Flotilla's, and cut Flotilla's in turn. Listing
	// them needs REPLICATION MASTER ADMIN: without it the check is skipped.
	// (The check is not worth a warning: the default server id is drawn from the
	// cluster's id and the upstream's name, and the usual grant lacks the privilege.)
	if hosts, err := c.Execute("SHOW SLAVE HOSTS"); err == nil {
		for i := 0; i < hosts.RowNumber(); i++ {
			id, _ := hosts.GetUint(i, 0)
			host, _ := hosts.GetString(i, 1)
			if chk.ServerID != 0 && id == uint64(chk.ServerID) {
				return info, fmt.Errorf("master %s already has a replica with server_id %d (host %q): another Flotilla cluster or replica uses it; choose another --server-id", addr, id, host)
			}
		}
	}
	if detected == "mariadb" {
		dom, err := q("SELECT @@gtid_domain_id")
		if err != nil {
			return info, err
		}
		d, _ := strconv.ParseUint(dom, 10, 32)
		info.DomainID = uint32(d)
	}
	// Some MySQL-compatible masters refuse SHOW GRANTS to a user that holds only
	// REPLICATION SLAVE: the check is then left to the dump, with a warning.
	var refused *mysql.MyError
	if grants, err := c.Execute("SHOW GRANTS"); errors.As(err, &refused) {
		info.Warnings = append(info.Warnings, fmt.Sprintf("could not check that user %q holds REPLICATION SLAVE on %s: SHOW GRANTS: %v; the binlog dump will tell (see `flotilla upstream get` if it does not start)", user, addr, err))
	} else if err != nil {
		return info, fmt.Errorf("master %s: SHOW GRANTS: %w", addr, err) // the connection failed, not the check
	} else {
		canDump := false
		for i := 0; i < grants.RowNumber(); i++ {
			g, _ := grants.GetString(i, 0)
			g = strings.ToUpper(g)
			if strings.Contains(g, "ALL PRIVILEGES ON *.*") || strings.Contains(g, "REPLICATION SLAVE") || strings.Contains(g, "REPLICATION REPLICA") {
				canDump = true
			}
		}
		if !canDump {
			return info, fmt.Errorf("user %q on master %s lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO it", user, addr)
		}
	}
	logs, err := c.Execute("SHOW BINARY LOGS")
	if err != nil {
		return info, fmt.Errorf("user %q on master %s cannot list binary logs (needs BINLOG MONITOR): %w", user, addr, err)
	}
	if detected == "mysql" {
		return inspectMySQLHistory(info, logs, q, startGTID)
	}
	// What an initial copy from the oldest binlog has to fetch, for progress displays.
	if end, err := q("SELECT @@gtid_binlog_pos"); err == nil {
		info.EndGTID = end
	}
	for i := 0; i < logs.RowNumber(); i++ {
		if n, err := logs.GetUint(i, 1); err == nil {
			info.BinlogBytes += n
		}
	}
	if startGTID != "" {
		p, err := binlog.ParsePosition(startGTID)
		if err != nil {
			return info, fmt.Errorf("--start-gtid: %w", err)
		}
		info.StartGTID = p.String()
		return info, nil
	}
	if logs.RowNumber() == 0 {
		return info, fmt.Errorf("master %s lists no binary logs", addr)
	}
	first, _ := logs.GetString(0, 0)
	r, err := c.Execute("SELECT BINLOG_GTID_POS(?, 4)", first)
	if err != nil {
		return info, fmt.Errorf("master %s: find the GTID position of its oldest binlog %s: %w", addr, first, err)
	}
	pos, _ := r.GetString(0, 0)
	p, err := binlog.ParsePosition(pos)
	if err != nil {
		return info, fmt.Errorf("master %s: GTID position %q of %s: %w", addr, pos, first, err)
	}
	info.StartGTID = p.String()
	return info, nil
}

// inspectMySQLHistory finds where a MySQL master's history starts: the requested set,
// or @@gtid_purged (everything before its oldest binlog), and where it ends now.
func inspectMySQLHistory(info SourceInfo, logs *mysql.Result, q func(string) (string, error), startGTID string) (SourceInfo, error) {
	if end, err := q("SELECT @@GLOBAL.gtid_executed"); err == nil {
		info.EndGTID = strings.ReplaceAll(end, "\n", "")
	}
	for i := 0; i < logs.RowNumber(); i++ {
		if n, err := logs.GetUint(i, 1); err == nil {
			info.BinlogBytes += n
		}
	}
	start := startGTID
	if start == "" {
		purged, err := q("SELECT @@GLOBAL.gtid_purged")
		if err != nil {
			return info, err
		}
		start = purged
	}
	set, err := binlog.ParseMySQLSet(start)
	if err != nil {
		return info, fmt.Errorf("start GTID set %q: %w", start, err)
	}
	info.StartGTID = set.String()
	return info, nil
}

// semiSyncOffered reports whether the master has semi-sync on, as MariaDB's and
// MySQL's replicas ask before announcing themselves.
func semiSyncOffered(c *client.Conn) bool {
	r, err := c.Execute("SHOW VARIABLES WHERE Variable_name IN ('rpl_semi_sync_master_enabled', 'rpl_semi_sync_source_enabled')")
	if err != nil || r.RowNumber() == 0 {
		return false
	}
	v, _ := r.GetString(0, 1)
	return strings.EqualFold(v, "ON")
}

// connectMaster opens a client connection to a master, over TLS when tlsCfg is set.
// Without TLS, a master that asks for a plugin sending the password in clear is
// refused before the password leaves (authGuard).
func connectMaster(ctx context.Context, addr, user, password string, tlsCfg *tls.Config, timeout time.Duration, opts ...client.Option) (*client.Conn, error) {
	return connectWatched(ctx, addr, user, password, tlsCfg, timeout, nil, opts...)
}

// connectWatched is connectMaster with the connection's reads reported to w (nil:
// not watched).
func connectWatched(ctx context.Context, addr, user, password string, tlsCfg *tls.Config, timeout time.Duration, w *linkWatch, opts ...client.Option) (*client.Conn, error) {
	if tlsCfg != nil {
		opts = append(opts, func(c *client.Conn) error { c.SetTLSConfig(tlsCfg); return nil })
	}
	dial, refused := masterDialer(tlsCfg, timeout, w)
	c, err := client.ConnectWithDialer(ctx, "", addr, user, password, "", dial, opts...)
	if r := refused(); err != nil && r != nil {
		return nil, r
	}
	return c, err
}
