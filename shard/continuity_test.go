package shard

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// TestClassify: what a new master has and the group lacks is errant when the master
// had it before it caught up with the group (a transaction the group holds follows
// it) or when neither it nor a server the group relays wrote it; the rest, after the
// group's last transaction, continues the group's history (the master's writes since
// its promotion, the old master's last transactions).
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		txns   []seenTxn
		errant []string
		ahead  int
	}{
		{"caught up, then promoted", []seenTxn{{gtid: "1", held: true}, {gtid: "2", held: true}, {gtid: "3", cont: true}, {gtid: "4", cont: true}}, nil, 2},
		{"direct write before promotion", []seenTxn{{gtid: "1", held: true}, {gtid: "x", cont: true}, {gtid: "2", held: true}, {gtid: "3", cont: true}}, []string{"x"}, 1},
		{"another master's transaction at the end", []seenTxn{{gtid: "1", held: true}, {gtid: "y"}, {gtid: "3", cont: true}}, []string{"y"}, 1},
		{"the old master's last transactions, then the new master's", []seenTxn{{gtid: "1", held: true}, {gtid: "2", cont: true}, {gtid: "3", cont: true}}, nil, 2},
		{"nothing held", []seenTxn{{gtid: "a", cont: true}}, nil, 1},
		{"empty", nil, nil, 0},
	} {
		errant, ahead := classify(tc.txns)
		if !slices.Equal(errant, tc.errant) || ahead != tc.ahead {
			t.Errorf("%s: errant %v ahead %d, want %v %d", tc.name, errant, ahead, tc.errant, tc.ahead)
		}
	}
}

// scanBinlogs reads a master's binary logs newest file first, page by page, and
// returns their GTIDs in order, stopping at the file its caller says is old enough.
func TestScanBinlogs(t *testing.T) {
	m := mysqlmaster.Start(t, "../test/fixtures/mysql-binlog/binlog")
	ctx := context.Background()
	c, err := client.ConnectWithContext(ctx, m.Addr(), m.User, m.Password, "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	all, err := scanBinlogs(ctx, c, m.Addr(), 7, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 309 {
		t.Fatalf("%d GTIDs read, want the recording's 309", len(all))
	}
	for i, g := range all {
		if want := fmt.Sprintf("%s:%d", mysqlmaster.FixtureUUID, i+1); g != want {
			t.Fatalf("GTID %d is %s, want %s (in order)", i, g, want)
		}
	}
	// Stop at the first file whose Previous_gtids holds transaction 200: only the
	// files from there on are read.
	var starts []string
	tail, err := scanBinlogs(ctx, c, m.Addr(), 5000, func(start string) bool {
		starts = append(starts, start)
		set, err := binlog.ParseMySQLSet(strings.ReplaceAll(start, "\n", ""))
		return err == nil && set.Contains(binlog.MySQLGTID{Source: mustSource(t, mysqlmaster.FixtureUUID), GNO: 200})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tail) == 0 || len(tail) >= 309 || tail[len(tail)-1] != all[308] || len(starts) >= 4 {
		t.Fatalf("stopping early read %d GTIDs over %d files", len(tail), len(starts))
	}
	if !slices.Equal(tail, all[309-len(tail):]) {
		t.Fatal("the files read early are not the newest ones, in order")
	}
}

func mustSource(t *testing.T, uuid string) binlog.Source {
	t.Helper()
	sid, err := binlog.ParseSID(uuid)
	if err != nil {
		t.Fatal(err)
	}
	return binlog.Source{SID: sid}
}

// TestRefuseSwitch: missing GTIDs refuse even with --force; errant GTIDs, a master
// that still replicates, and one that would not say, refuse unless forced.
func TestRefuseSwitch(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cont         Continuity
		plain, force bool // refused without and with --force
	}{
		{"valid", Continuity{Source: "b:1", Ahead: 3}, false, false},
		{"missing", Continuity{Source: "b:1", Missing: []string{"0-1-9"}}, true, true},
		{"errant", Continuity{Source: "b:1", Errant: []string{"0-2-8"}}, true, false},
		{"replicating", Continuity{Source: "b:1", Replicating: true}, true, false},
		{"unknown", Continuity{Source: "b:1", ReplicationUnknown: true}, true, false},
	} {
		if got := refuseSwitch(tc.cont, false) != nil; got != tc.plain {
			t.Errorf("%s: refused %v without --force, want %v", tc.name, got, tc.plain)
		}
		if got := refuseSwitch(tc.cont, true) != nil; got != tc.force {
			t.Errorf("%s: refused %v with --force, want %v", tc.name, got, tc.force)
		}
	}
}
