package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// TestMySQLRepoint: the continuity checks against MySQL masters (test masters
// serving the recording): a server lacking the group's transactions is refused with
// them named; a promoted replica written to directly before its promotion is refused
// with its errant GTID named, then taken with --force; its writes since then reach
// the group.
func TestMySQLRepoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const promotedUUID = "5a0e5b8c-1111-4c5e-9d1e-000000000002"
	a := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	b := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog") // a replica of A with its own server_uuid
	b.UUID = promotedUUID
	b.Set("server_uuid", promotedUUID)
	stale := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog") // a replica that stopped early
	recorded := recordedTxns(t, a)
	fl := flotillatest.StartCluster(ctx, t, filepath.Join(t.TempDir(), "flotilla"), 1)[0]
	if out, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", a.Addr(), "--user", a.User, "--password", a.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	holds := func(want binlog.MySQLSet) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			got = getUpstream(ctx, t, fl, "mysql8").Group.ExecutedGtid
			if s, err := binlog.ParseMySQLSet(got); err == nil && s.ContainsSet(want) {
				return
			}
		}
		t.Fatalf("the group holds %q, want %s\n%s", got, want, fl.LogTail(30))
	}
	replicate := func(name string) binlog.MySQLGTID {
		t.Helper()
		g, err := a.AppendTxn(recorded[name])
		if err != nil {
			t.Fatal(err)
		}
		if err := b.ApplyTxn(recorded[name], g); err != nil {
			t.Fatal(err)
		}
		return g
	}
	g1 := replicate(mysqlmaster.FixtureUUID + ":300")
	errant, err := b.AppendTxn(recorded[mysqlmaster.FixtureUUID+":301"]) // written on B directly
	if err != nil {
		t.Fatal(err)
	}
	g2 := replicate(mysqlmaster.FixtureUUID + ":302")
	holds(a.Executed())
	// A's last transaction reached B but not Flotilla before A died: it continues
	// the group's history and is no errant.
	ahead := binlog.MySQLGTID{Source: g2.Source, GNO: g2.GNO + 1}
	if err := b.ApplyTxn(recorded[mysqlmaster.FixtureUUID+":304"], ahead); err != nil {
		t.Fatal(err)
	}
	a.Close()

	out, err := fl.CLICombined(ctx, "upstream", "repoint", "mysql8", "--source", stale.Addr())
	if missing := mysqlSet(t, g1.String()+","+g2.String()).String(); err == nil || !strings.Contains(out, "lacks GTIDs the group holds: "+missing) {
		t.Fatalf("repoint to a server without %s: %v\n%s", missing, err, out)
	}
	out, err = fl.CLICombined(ctx, "upstream", "repoint", "mysql8", "--source", b.Addr())
	if err == nil || !strings.Contains(out, "errant GTIDs the group never had: "+errant.String()+" (") || strings.Contains(out, "lacks") {
		t.Fatalf("repoint to B, written to directly (%s): %v\n%s", errant, err, out)
	}
	if out, err := fl.CLI(ctx, "upstream", "repoint", "mysql8", "--source", b.Addr(), "--force"); err != nil {
		t.Fatalf("repoint --force: %v\n%s", err, out)
	}
	own, err := b.AppendTxn(recorded[mysqlmaster.FixtureUUID+":303"]) // B's first write as the master
	if err != nil {
		t.Fatal(err)
	}
	holds(mysqlSet(t, own.String()+","+ahead.String()))
	if u := getUpstream(ctx, t, fl, "mysql8"); len(u.Upstream.Switches) != 1 || !u.Upstream.Switches[0].Forced {
		t.Fatalf("the forced switch is not recorded: %+v", u.Upstream.Switches)
	}
}
