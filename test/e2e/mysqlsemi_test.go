package e2e

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// TestMySQLSemiSyncAcksAfterQuorumCommit: toward a MySQL master (the test master,
// semi-sync on), Flotilla acknowledges a transaction only once the group's quorum has
// committed it: with both followers killed the ACK does not come, with them back it
// does.
func TestMySQLSemiSyncAcksAfterQuorumCommit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	master.EnableSemiSync()
	recorded := recordedTxns(t, master)
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(t.TempDir(), "flotilla"), 3)
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--semi-sync", "on"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes, "mysql8")
	acked := func() bool {
		f, p := master.Acked()
		ef, ep := master.End()
		return f == ef && p >= ep
	}
	waitAcked := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !acked(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				f, p := master.Acked()
				t.Fatalf("%s: no ACK (acked %s:%d)\n%s", what, f, p, nodes[leader-1].LogTail(20))
			}
		}
	}
	if _, err := master.AppendTxn(recorded[mysqlmaster.FixtureUUID+":300"]); err != nil {
		t.Fatal(err)
	}
	waitAcked("with quorum")

	for _, n := range nodes {
		if n.ID != leader {
			n.Kill()
		}
	}
	if _, err := master.AppendTxn(recorded[mysqlmaster.FixtureUUID+":301"]); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if acked() {
			t.Fatal("a transaction was acknowledged while the group had no quorum: Flotilla acknowledged before the raft commit")
		}
	}
	for _, n := range nodes {
		if n.ID != leader {
			n.Start(ctx)
		}
	}
	waitAcked("after quorum came back")
}

// TestMySQLSemiSyncReplicaOfFlotilla: a MySQL-protocol semi-sync replica (go-mysql's
// BinlogSyncer with semi-sync on) of a MySQL group gets every transaction with the
// semi-sync header, acknowledges each one, and status shows its ACKs.
func TestMySQLSemiSyncReplicaOfFlotilla(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	fl := flotillatest.StartCluster(ctx, t, filepath.Join(t.TempDir(), "flotilla"), 1)[0]
	if out, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	all := mysqlSet(t, mysqlmaster.FixtureUUID+":1-309")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if set, err := binlog.ParseMySQLSet(getUpstream(ctx, t, fl, "mysql8").Group.ExecutedGtid); err == nil && set.ContainsSet(all) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group never held the recording\n%s", fl.LogTail(20))
		}
	}
	r := startMySQLReplica(t, fl, mysqlSet(t, ""), func(c *replication.BinlogSyncerConfig) { c.SemiSyncEnabled = true })
	r.until(ctx, all)
	var acks int
	for deadline := time.Now().Add(30 * time.Second); acks < 309; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status shows %d ACKs of the semi-sync replica, want one per transaction (309)", acks)
		}
		for _, rep := range getUpstream(ctx, t, fl, "mysql8").Group.Replicas {
			if n, _ := strconv.Atoi(rep.SemiSyncAcks); rep.SemiSync {
				acks = n
			}
		}
	}
}
