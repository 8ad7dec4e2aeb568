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
	// Errant are GTIDs the master has that the group never had and that are not its
	// own writes since its promotion: written on it directly before it took over, or
	// replicated from elsewhere.
	Errant []string
	// Own counts the master's own transactions after the group's last one: its
	// writes since its promotion, which the group fetches after the switch.
	Own int
}

// Problem says what makes the master an invalid continuation ("" when none).
func (c Continuity) Problem() string {
	var p []string
	if len(c.Missing) > 0 {
		p = append(p, fmt.Sprintf("%s lacks GTIDs the group holds: %s (promote a replica that has every transaction Flotilla relayed)", c.Source, listGTIDs(c.Missing)))
	}
	if len(c.Errant) > 0 {
		p = append(p, fmt.Sprintf("%s has errant GTIDs the group never had: %s (written on it directly before its promotion, or replicated from another master)", c.Source, listGTIDs(c.Errant)))
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
	readOnly   bool
	// state is MariaDB's gtid_binlog_state (the last GTID of each domain and
	// server); executed MySQL's gtid_executed.
	state    []binlog.GTID
	executed binlog.MySQLSet
}

// queryString runs a query returning one value on a master.
func queryString(c *client.Conn, addr, sql string) (string, error) {
	r, err := c.Execute(sql)
	if err != nil {
		return "", fmt.Errorf("master %s: %s: %w", addr, sql, err)
	}
	if r.Resultset == nil || r.RowNumber() == 0 {
		return "", nil
	}
	return r.GetString(0, 0)
}

// readSourceView reads what checkContinuity needs from a master of flavor mysql or
// mariadb.
func readSourceView(c *client.Conn, addr, flavor string) (sourceView, error) {
	var v sourceView
	ro, err := queryString(c, addr, "SELECT @@GLOBAL.read_only")
	if err != nil {
		return v, err
	}
	v.readOnly = ro != "0" && !strings.EqualFold(ro, "OFF")
	sid, err := queryString(c, addr, "SELECT @@server_id")
	if err != nil {
		return v, err
	}
	id, _ := strconv.ParseUint(sid, 10, 32)
	v.serverID = uint32(id)
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
		return v, nil
	}
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

// seenTxn is one transaction of a master's binary log, in the log's order.
type seenTxn struct {
	gtid string
	// held: the group has it; own: the master wrote it itself (its server id or uuid).
	held, own bool
}

// classify finds the errant transactions of a master's binary log: the ones the group
// lacks that come before one it holds (the master had them before it caught up with
// the group, so before its promotion) or that the master did not write itself. The
// others the group lacks are the master's own writes since its promotion.
func classify(txns []seenTxn) (errant []string, own int) {
	last := -1
	for i, t := range txns {
		if t.held {
			last = i
		}
	}
	for i, t := range txns {
		switch {
		case t.held:
		case i < last || !t.own:
			errant = append(errant, t.gtid)
		default:
			own++
		}
	}
	return errant, own
}

// checkContinuity checks master addr, read as v, as the continuation of group g: it
// holds everything the group holds, and the group everything it has but its own
// writes since its promotion (which takes reading its binary logs, newest first, as
// far back as the transactions the group lacks go).
func checkContinuity(ctx context.Context, c *client.Conn, addr string, v sourceView, g *statemachine.Group) (Continuity, error) {
	out := Continuity{Source: addr, ReadOnly: v.readOnly}
	t, _ := g.Tail()
	if t.MySQL {
		if miss := t.Executed.Subtract(v.executed); len(miss) > 0 {
			out.Missing = []string{miss.String()}
		}
		cand := v.executed.Subtract(t.Executed)
		if len(cand) == 0 {
			return out, nil
		}
		txns, err := scanBinlogs(ctx, c, addr, func(start string) bool {
			set, err := binlog.ParseMySQLSet(strings.ReplaceAll(start, "\n", ""))
			return err == nil && cand.Subtract(set).ContainsSet(cand) // none of cand before this file
		})
		if err != nil {
			return out, err
		}
		seen := binlog.MySQLSet{}
		var list []seenTxn
		for _, name := range txns {
			set, err := binlog.ParseMySQLSet(name)
			if err != nil || len(set) != 1 {
				return out, fmt.Errorf("master %s: GTID %q in its binary log: %v", addr, name, err)
			}
			seen.Union(set)
			var src binlog.Source
			for s := range set {
				src = s
			}
			list = append(list, seenTxn{gtid: name, held: t.Executed.ContainsSet(set), own: strings.EqualFold(src.SID.String(), v.serverUUID)})
		}
		out.Errant, out.Own = classify(list)
		if gone := cand.Subtract(seen); len(gone) > 0 {
			// Purged from the master's binary logs: nothing proves they are its
			// own writes since its promotion.
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
	txns, err := scanBinlogs(ctx, c, addr, func(start string) bool {
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
	list := make([]seenTxn, 0, len(txns))
	for _, name := range txns {
		gt, err := binlog.ParseGTID(name)
		if err != nil {
			return out, fmt.Errorf("master %s: GTID %q in its binary log: %w", addr, name, err)
		}
		ok, err := held(gt)
		if err != nil {
			return out, err
		}
		list = append(list, seenTxn{gtid: name, held: ok, own: gt.Server == v.serverID})
	}
	out.Errant, out.Own = classify(list)
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
func scanBinlogs(ctx context.Context, c *client.Conn, addr string, stop func(start string) bool) ([]string, error) {
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
			r, err := c.Execute(fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d LIMIT %d", quoteName.Replace(name), pos, binlogEventsPage))
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
			if r.RowNumber() < binlogEventsPage {
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
