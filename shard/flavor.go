package shard

import (
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// upstreamFlavor is everything pulling a master's binlog does differently for MySQL
// and MariaDB (DESIGN.md "Seams"): where to resume, which events open and close a
// transaction group, and what the group holds. The pipeline owns one for the life of
// a connection.
type upstreamFlavor interface {
	// dumpSet is the set to ask the master for everything after, in go-mysql's form.
	dumpSet() (mysql.GTIDSet, string, error)
	// open reads ev, if it is the event that opens a group, and makes it the open
	// one: its GTID as the group indexes it (see statemachine.TxnGTID) and as the
	// master prints it.
	open(ev []byte) (gtid binlog.GTID, name string, ok bool, err error)
	// held reports whether the group holds the open transaction already.
	held() bool
	// ends reports whether ev, an event of the open group, is its last.
	ends(ev []byte, checksummed bool) bool
	// done records the open transaction as held.
	done()
	// base fills in the base of the group's first file.
	base(nf *statemachine.NewFile)
	// executedQuery asks a master for the GTIDs it has written; missing returns
	// those of the answer the group lacks, "" when it holds them all (a silent
	// stream then misses nothing).
	executedQuery() string
	missing(executed string) (string, error)
}

// newUpstreamFlavor returns the flavor of u, resuming from the group's state v.
func newUpstreamFlavor(u placement.Upstream, v statemachine.StateView) (upstreamFlavor, error) {
	if u.Flavor == "mysql" {
		base, err := binlog.ParseMySQLSet(u.StartGTID)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: bad start GTID set %q: %w", u.Name, u.StartGTID, err)
		}
		f := &mysqlFlavor{baseSet: base, executed: base.Clone()}
		if v.HasFile {
			f.executed = v.Executed.Clone()
		}
		return f, nil
	}
	base, err := binlog.ParsePosition(u.StartGTID)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: bad start GTID %q: %w", u.Name, u.StartGTID, err)
	}
	f := &mariadbFlavor{basePos: base, state: base.Clone()}
	if v.HasFile {
		f.state = v.State.Clone()
	}
	return f, nil
}

// mariadbFlavor: domain-server-seq GTIDs, a GTID position per domain, GTID events
// that say whether the group is a single statement.
type mariadbFlavor struct {
	basePos, state binlog.Position
	cur            binlog.GTIDEvent
}

func (f *mariadbFlavor) dumpSet() (mysql.GTIDSet, string, error) {
	s := f.state.String()
	set, err := mysql.ParseMariadbGTIDSet(s)
	return set, s, err
}

func (f *mariadbFlavor) open(ev []byte) (binlog.GTID, string, bool, error) {
	if ev[4] != binlog.MariaGTIDEvent {
		return binlog.GTID{}, "", false, nil
	}
	g, err := binlog.ParseGTIDEvent(ev)
	if err != nil {
		return binlog.GTID{}, "", true, fmt.Errorf("malformed GTID event from master: %w", err)
	}
	f.cur = g
	return g.GTID, g.GTID.String(), true, nil
}

func (f *mariadbFlavor) held() bool { return f.state.Contains(f.cur.GTID) }

func (f *mariadbFlavor) ends(ev []byte, checksummed bool) bool {
	return binlog.EndsGroup(f.cur, ev, checksummed)
}

func (f *mariadbFlavor) done() { f.state[f.cur.GTID.Domain] = f.cur.GTID }

func (f *mariadbFlavor) base(nf *statemachine.NewFile) { nf.BaseState = f.basePos }

func (f *mariadbFlavor) executedQuery() string { return "SELECT @@GLOBAL.gtid_binlog_pos" }

func (f *mariadbFlavor) missing(executed string) (string, error) {
	pos, err := binlog.ParsePosition(executed)
	if err != nil {
		return "", err
	}
	var out []string
	for _, d := range pos.Domains() {
		if g := pos[d]; !f.state.Contains(g) {
			out = append(out, g.String())
		}
	}
	return strings.Join(out, ","), nil
}

// mysqlFlavor: server_uuid:N GTIDs, an executed set with gaps, groups whose end
// depends on the event after the GTID event (binlog.MySQLGroup).
type mysqlFlavor struct {
	baseSet, executed binlog.MySQLSet
	cur               binlog.MySQLGTID
	grp               binlog.MySQLGroup
}

func (f *mysqlFlavor) dumpSet() (mysql.GTIDSet, string, error) {
	s := f.executed.String()
	set, err := mysql.ParseMysqlGTIDSet(s)
	return set, s, err
}

func (f *mysqlFlavor) open(ev []byte) (binlog.GTID, string, bool, error) {
	switch ev[4] {
	case binlog.MySQLGTIDEvent, binlog.MySQLGTIDTaggedEvent:
	case binlog.MySQLAnonymousGTIDEvent:
		return binlog.GTID{}, "", true, fmt.Errorf("master sent an anonymous transaction (no GTID): Flotilla needs gtid_mode=ON on a MySQL master")
	default:
		return binlog.GTID{}, "", false, nil
	}
	g, err := binlog.ParseMySQLGTIDEvent(ev)
	if err != nil {
		return binlog.GTID{}, "", true, fmt.Errorf("malformed GTID event from master: %w", err)
	}
	f.cur = g
	f.grp.Next(ev, false)
	return g.Indexed(), g.String(), true, nil
}

func (f *mysqlFlavor) held() bool { return f.executed.Contains(f.cur) }

func (f *mysqlFlavor) ends(ev []byte, checksummed bool) bool { return f.grp.Next(ev, checksummed) }

func (f *mysqlFlavor) done() { f.executed.Add(f.cur) }

func (f *mysqlFlavor) base(nf *statemachine.NewFile) { nf.MySQL, nf.BaseSet = true, f.baseSet }

func (f *mysqlFlavor) executedQuery() string { return "SELECT @@GLOBAL.gtid_executed" }

func (f *mysqlFlavor) missing(executed string) (string, error) {
	set, err := binlog.ParseMySQLSet(strings.ReplaceAll(executed, "\n", ""))
	if err != nil {
		return "", err
	}
	return set.Subtract(f.executed).String(), nil
}
