package shard

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Continuity is what checking a master as the continuation of a group's history
// found (a repoint or an automatic switch to it). A switch goes ahead only when
// Problem is empty, or with --force.
type Continuity struct {
	Source string
	// ReadOnly: the master has read_only on (not promoted yet).
	ReadOnly bool
	// Missing are GTIDs the group holds that the master lacks: switching would
	// leave replicas with transactions the new master never had.
	Missing []string
	// Errant are GTIDs the master has that the group never had and that do not
	// continue its history: written on it directly before it took over, replicated
	// from elsewhere, or purged from its binary logs (nothing then tells).
	Errant []string
	// Ahead counts the transactions after the group's last one that continue its
	// history, which the group fetches after the switch: the master's own writes
	// since its promotion, and the old master's last transactions that reached the
	// new one but not the group.
	Ahead int
	// NoReplicaUpdates: the master does not write what it replicates to its binary
	// log (log_slave_updates off), which explains GTIDs missing from it.
	NoReplicaUpdates bool
	// Replicating: a replication thread of the master still runs;
	// ReplicationUnknown: the master would not say (no SLAVE MONITOR).
	Replicating, ReplicationUnknown bool
	// view is what was read of the master (its identity, for the switch).
	view sourceView
}

// Problem says what makes the master an invalid continuation ("" when none).
func (c Continuity) Problem() string {
	var p []string
	if len(c.Missing) > 0 {
		hint := "promote a replica that has every transaction Flotilla relayed"
		if c.NoReplicaUpdates {
			hint = "it has log_slave_updates off, so what it replicated is not in its binary log: turn it on, or promote a replica that has it on"
		}
		p = append(p, fmt.Sprintf("%s lacks GTIDs the group holds: %s (%s)", c.Source, listGTIDs(c.Missing), hint))
	}
	if len(c.Errant) > 0 {
		p = append(p, fmt.Sprintf("%s has errant GTIDs the group never had: %s (written on it directly before its promotion, replicated from another master, or purged from its binary logs)", c.Source, listGTIDs(c.Errant)))
	}
	return strings.Join(p, "; ")
}

// listGTIDs prints at most the first 10 GTIDs of a list.
func listGTIDs(l []string) string {
	if len(l) > 10 {
		return strings.Join(l[:10], ", ") + fmt.Sprintf(" and %d more", len(l)-10)
	}
	return strings.Join(l, ", ")
}

// sourceView is what a master holds, read before switching to it.
type sourceView struct {
	serverID   uint32
	serverUUID string
	version    string
	checksum   string // binlog_checksum
	readOnly   bool
	// replicating: a replication thread of the master still runs (not promoted);
	// replicationUnknown: its replication status could not be read.
	replicating, replicationUnknown bool
	domainID                        uint32
	// replicaUpdates: log_slave_updates (log_replica_updates) is on.
	replicaUpdates bool
	// state is MariaDB's gtid_binlog_state (the last GTID of each domain and
	// server); executed MySQL's gtid_executed.
	state    []binlog.GTID
	executed binlog.MySQLSet
	purged   binlog.MySQLSet // MySQL's gtid_purged
}

// queryString runs a query returning one value on a master.
func queryString(c *client.Conn, addr, sql string) (string, error) {
	v, err := queryStrings(c, addr, sql, 1)
	if err != nil {
		return "", err
	}
	return v[0], nil
}

// queryStrings runs sql on c and returns the first n columns of its first row as
// strings (empty ones when it returns no row): one round trip for several of the
// master's variables.
func queryStrings(c *client.Conn, addr, sql string, n int) ([]string, error) {
	r, err := c.Execute(sql)
	if err != nil {
		return nil, fmt.Errorf("master %s: %s: %w", addr, sql, err)
	}
	out := make([]string, n)
	if r.Resultset == nil || r.RowNumber() == 0 {
		return out, nil
	}
	for i := range out {
		if out[i], err = r.GetString(0, i); err != nil {
			return nil, fmt.Errorf("master %s: %s: column %d: %w", addr, sql, i+1, err)
		}
	}
	return out, nil
}

// readSourceView reads what checkContinuity needs from a master of flavor mysql or
// mariadb.
func readSourceView(c *client.Conn, addr, flavor string) (sourceView, error) {
	var v sourceView
	ro, err := queryString(c, addr, "SELECT @@GLOBAL.read_only")
	if err != nil {
		return v, err
	}
	v.readOnly = !isOff(ro)
	sid, err := queryString(c, addr, "SELECT @@server_id")
	if err != nil {
		return v, err
	}
	id, _ := strconv.ParseUint(sid, 10, 32)
	v.serverID = uint32(id)
	if v.version, err = queryString(c, addr, "SELECT @@version"); err != nil {
		return v, err
	}
	if v.checksum, err = queryString(c, addr, "SELECT @@binlog_checksum"); err != nil {
		return v, err
	}
	if lsu, err := queryString(c, addr, "SELECT @@log_slave_updates"); err == nil {
		v.replicaUpdates = !isOff(lsu)
	}
	// Replication still running means the server was not promoted (yet); a server
	// that never replicated, or whose replication was reset, lists nothing.
	v.replicationUnknown = true
	for _, q := range replicaStatusQueries {
		if q.flavor != "" && q.flavor != flavor {
			continue
		}
		r, err := c.Execute(q.stmt)
		if err != nil {
			continue
		}
		v.replicationUnknown = false
		for i := 0; i < r.RowNumber(); i++ {
			a, errA := r.GetStringByName(i, q.io)
			b, errB := r.GetStringByName(i, q.sql)
			if errA != nil || errB != nil {
				v.replicationUnknown = true
				continue
			}
			// Yes, Connecting, Preparing: anything but No is a thread that runs.
			v.replicating = v.replicating || !isNo(a) || !isNo(b)
		}
		break
	}
	if flavor == "mysql" {
		if v.serverUUID, err = queryString(c, addr, "SELECT @@server_uuid"); err != nil {
			return v, err
		}
		ex, err := queryString(c, addr, "SELECT @@GLOBAL.gtid_executed")
		if err != nil {
			return v, err
		}
		if v.executed, err = binlog.ParseMySQLSet(strings.ReplaceAll(ex, "\n", "")); err != nil {
			return v, fmt.Errorf("master %s: gtid_executed %q: %w", addr, ex, err)
		}
		pg, err := queryString(c, addr, "SELECT @@GLOBAL.gtid_purged")
		if err != nil {
			return v, err
		}
		if v.purged, err = binlog.ParseMySQLSet(strings.ReplaceAll(pg, "\n", "")); err != nil {
			return v, fmt.Errorf("master %s: gtid_purged %q: %w", addr, pg, err)
		}
		return v, nil
	}
	dom, err := queryString(c, addr, "SELECT @@gtid_domain_id")
	if err != nil {
		return v, err
	}
	d, _ := strconv.ParseUint(dom, 10, 32)
	v.domainID = uint32(d)
	st, err := queryString(c, addr, "SELECT @@GLOBAL.gtid_binlog_state")
	if err != nil {
		return v, err
	}
	for _, s := range strings.Split(st, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		g, err := binlog.ParseGTID(s)
		if err != nil {
			return v, fmt.Errorf("master %s: gtid_binlog_state %q: %w", addr, st, err)
		}
		v.state = append(v.state, g)
	}
	return v, nil
}

// replicaStatusQueries read whether a server's replication threads run: MySQL
// 8.0.22+ names, then the older ones (MariaDB, MySQL 5.7).
var replicaStatusQueries = []struct {
	flavor        string // "": any
	stmt, io, sql string
}{
	{"mysql", "SHOW REPLICA STATUS", "Replica_IO_Running", "Replica_SQL_Running"},
	{"mariadb", "SHOW ALL SLAVES STATUS", "Slave_IO_Running", "Slave_SQL_Running"}, // every named connection
	{"", "SHOW SLAVE STATUS", "Slave_IO_Running", "Slave_SQL_Running"},
}

// isNo reads a replication thread's state.
func isNo(v string) bool { return strings.EqualFold(v, "No") }

// isOff reads a boolean system variable.
func isOff(v string) bool { return v == "0" || strings.EqualFold(v, "OFF") }

// seenTxn is one transaction of a master's binary log, in the log's order.
type seenTxn struct {
	gtid string
	// held: the group has it; cont: it may continue the group's history, being
	// the master's own (its server id or uuid) or of a server whose transactions
	// the group relays (the old master).
	held, cont bool
}

// classify finds the errant transactions of a master's binary log: the ones the group
// lacks that come before one it holds (the master had them before it caught up with
// the group, so before its promotion) or that come from a server that is neither the
// master nor one the group relays. The others the group lacks continue its history
// (the master's writes since its promotion, the old master's last transactions).
func classify(txns []seenTxn) (errant []string, ahead int) {
	last := -1
	for i, t := range txns {
		if t.held {
			last = i
		}
	}
	for i, t := range txns {
		switch {
		case t.held:
		case i < last || !t.cont:
			errant = append(errant, t.gtid)
		default:
			ahead++
		}
	}
	return errant, ahead
}

// checkContinuity checks master addr, read as v, as the continuation of group g: it
// holds everything the group holds, and the group everything it has but its own
// writes since its promotion (which takes reading its binary logs, newest first, as
// far back as the transactions the group lacks go).
func checkContinuity(ctx context.Context, c *client.Conn, addr string, v sourceView, g *statemachine.Group) (Continuity, error) {
	out := Continuity{Source: addr, ReadOnly: v.readOnly, NoReplicaUpdates: !v.replicaUpdates}
	t, _ := g.Tail()
	if t.MySQL {
		if miss := t.Executed.Subtract(v.executed); len(miss) > 0 {
			out.Missing = []string{miss.String()}
		}
		cand := v.executed.Subtract(t.Executed)
		if len(cand) == 0 {
			return out, nil
		}
		// What the master purged cannot be read: the scan looks for the rest.
		inLogs := cand.Subtract(v.purged)
		txns, err := scanBinlogs(ctx, c, addr, binlogEventsPage, func(start string) bool {
			set, err := binlog.ParseMySQLSet(strings.ReplaceAll(start, "\n", ""))
			return err == nil && inLogs.Subtract(set).ContainsSet(inLogs) // none of them before this file
		})
		if err != nil {
			return out, err
		}
		seen := binlog.MySQLSet{}
		var list []seenTxn
		for _, name := range txns {
			set, err := binlog.ParseMySQLSet(name)
			if err != nil {
				return out, fmt.Errorf("master %s: GTID %q in its binary log: %w", addr, name, err)
			}
			if len(set) != 1 {
				return out, fmt.Errorf("master %s: %q in its binary log is not one GTID", addr, name)
			}
			seen.Union(set)
			var src binlog.Source
			for s := range set {
				src = s
			}
			_, relayed := t.Executed[src]
			list = append(list, seenTxn{gtid: name, held: t.Executed.ContainsSet(set), cont: relayed || strings.EqualFold(src.SID.String(), v.serverUUID)})
		}
		out.Errant, out.Ahead = classify(list)
		if gone := cand.Subtract(seen); len(gone) > 0 {
			// Purged from the master's binary logs: nothing tells where they were.
			out.Errant = append(out.Errant, gone.String())
		}
		return out, nil
	}
	has := map[[2]uint32]uint64{}
	for _, e := range v.state {
		has[[2]uint32{e.Domain, e.Server}] = e.Seq
	}
	for _, d := range t.State.Domains() {
		last := t.State[d]
		if seq, ok := has[[2]uint32{d, last.Server}]; !ok || seq < last.Seq {
			out.Missing = append(out.Missing, last.String())
		}
	}
	held := func(gt binlog.GTID) (bool, error) { return g.HasGTID(gt) }
	var cand []binlog.GTID
	for _, e := range v.state {
		ok, err := held(e)
		if err != nil {
			return out, err
		}
		if !ok {
			cand = append(cand, e)
		}
	}
	if len(cand) == 0 {
		return out, nil
	}
	txns, err := scanBinlogs(ctx, c, addr, binlogEventsPage, func(start string) bool {
		// The file's Gtid_list: the last GTID of each domain and server before it.
		for _, s := range strings.Split(strings.Trim(start, "[] "), ",") {
			e, err := binlog.ParseGTID(strings.TrimSpace(s))
			if err != nil {
				continue
			}
			for _, k := range cand {
				if k.Domain == e.Domain && k.Server == e.Server {
					if ok, err := held(e); err != nil || !ok {
						return false
					}
				}
			}
		}
		return true
	})
	if err != nil {
		return out, err
	}
	// The servers whose transactions the group relays: the last of each domain's,
	// and those of every held transaction read.
	relayed := map[uint32]bool{}
	for _, d := range t.State.Domains() {
		relayed[t.State[d].Server] = true
	}
	list := make([]seenTxn, 0, len(txns))
	seen := map[binlog.GTID]bool{}
	for _, name := range txns {
		gt, err := binlog.ParseGTID(name)
		if err != nil {
			return out, fmt.Errorf("master %s: GTID %q in its binary log: %w", addr, name, err)
		}
		ok, err := held(gt)
		if err != nil {
			return out, err
		}
		if ok {
			relayed[gt.Server] = true
		}
		seen[gt] = true
		list = append(list, seenTxn{gtid: name, held: ok})
	}
	for i, name := range txns {
		gt, _ := binlog.ParseGTID(name)
		list[i].cont = gt.Server == v.serverID || relayed[gt.Server]
	}
	out.Errant, out.Ahead = classify(list)
	for _, k := range cand {
		if !seen[k] {
			// Purged from the master's binary logs: nothing tells where it was.
			out.Errant = append(out.Errant, k.String())
		}
	}
	return out, nil
}

// binlogEventsPage bounds the rows one SHOW BINLOG EVENTS returns.
const binlogEventsPage = 5000

var (
	// quoteName escapes a file name for a quoted SQL string.
	quoteName       = strings.NewReplacer(`\`, `\\`, `'`, `''`)
	mysqlGTIDInfo   = regexp.MustCompile(`GTID_NEXT\s*=\s*'([^']+)'`)
	mariadbGTIDInfo = regexp.MustCompile(`GTID (\d+-\d+-\d+)`)
)

// scanBinlogs returns the GTIDs of a master's binary logs in order, reading files
// newest first until stop, given the file's opening GTID state (the Info of its
// Gtid_list or Previous_gtids event), says older files do not matter.
func scanBinlogs(ctx context.Context, c *client.Conn, addr string, page int, stop func(start string) bool) ([]string, error) {
	logs, err := c.Execute("SHOW BINARY LOGS")
	if err != nil {
		return nil, fmt.Errorf("master %s: SHOW BINARY LOGS: %w", addr, err)
	}
	var files [][]string // per file, newest first
	for i := logs.RowNumber() - 1; i >= 0; i-- {
		name, _ := logs.GetString(i, 0)
		var gtids []string
		start, startSeen := "", false
		for pos := uint64(4); ; {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			r, err := c.Execute(fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d LIMIT %d", quoteName.Replace(name), pos, page))
			if err != nil {
				return nil, fmt.Errorf("master %s: read binary log %s: %w", addr, name, err)
			}
			for j := 0; j < r.RowNumber(); j++ {
				typ, _ := r.GetString(j, 2)
				info, _ := r.GetString(j, 5)
				switch {
				case typ == "Gtid_list" || typ == "Previous_gtids":
					if !startSeen {
						start, startSeen = info, true
					}
				case strings.HasPrefix(typ, "Gtid"):
					if m := mysqlGTIDInfo.FindStringSubmatch(info); m != nil {
						gtids = append(gtids, m[1])
					} else if m := mariadbGTIDInfo.FindStringSubmatch(info); m != nil {
						gtids = append(gtids, m[1])
					}
				}
			}
			if r.RowNumber() < page {
				break
			}
			next, err := r.GetUint(r.RowNumber()-1, 4)
			if err != nil || next <= pos {
				return nil, fmt.Errorf("master %s: binary log %s: cannot page past position %d", addr, name, pos)
			}
			pos = next
		}
		files = append(files, gtids)
		if startSeen && stop(start) {
			break
		}
	}
	var out []string
	for i := len(files) - 1; i >= 0; i-- {
		out = append(out, files[i]...)
	}
	return out, nil
}
