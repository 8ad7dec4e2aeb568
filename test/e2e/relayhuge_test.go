package e2e

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestRelayedLargeEvents: events larger than a stored piece reach a replica connected
// to a node that holds no member of the group, so every part crosses the node-to-node
// relay (DumpChunk.event_part): a 40 MiB row, and a transaction of 6 MiB rows, end
// equal on the replica.
// nodeWithoutMember returns a node that holds no member of upstream name's group,
// once the group has a leader: replicas connected there are served by the relay.
func nodeWithoutMember(ctx context.Context, t *testing.T, nodes []*flotillatest.Node, name string) *flotillatest.Node {
	t.Helper()
	_, members := waitLeader(ctx, t, nodes, name)
	for _, n := range nodes {
		if !slices.Contains(members, n.ID) {
			return n
		}
	}
	t.Fatalf("group %s has members %v: every node holds one", name, members)
	return nil
}

func TestRelayedLargeEvents(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	big := []string{mariadbtest.MaxPacketArg}
	master := startMasterWith(ctx, t, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, ExtraArgs: big})
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--replicas", "2"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	relay := nodeWithoutMember(ctx, t, nodes, "main")
	r, err := mariadbtest.Start(ctx, filepath.Join(dir, "replica"), mariadbtest.Options{ServerID: 11, ExtraArgs: big})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	changeMaster(ctx, t, r, relay, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	if err := mariadbtest.CreateBlobTable(ctx, master); err != nil {
		t.Fatal(err)
	}
	if err := mariadbtest.InsertBlobRow(ctx, master, 1, 40<<20); err != nil {
		t.Fatal(err)
	}
	if err := mariadbtest.InsertBlobRows(ctx, master, 2, 6, 6<<20); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "the relayed replica", master, r, 3*time.Minute)
	sameData(t, "the relayed replica", checksumsOf(ctx, t, master), checksumsOf(ctx, t, r))
	want := `msg="relaying a binlog dump" node=` + strconv.Itoa(int(relay.ID))
	if !strings.Contains(relay.LogTail(100000), want) {
		t.Fatalf("node %d holds no member, yet never relayed the dump; log:\n%s", relay.ID, relay.LogTail(30))
	}
}
