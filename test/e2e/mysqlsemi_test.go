package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

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
