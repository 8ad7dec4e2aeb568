package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/cluster"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// reportAs calls node n's Report as a node holding keys would.
func reportAs(ctx context.Context, t *testing.T, n *flotillatest.Node, keys []cluster.NodeKey, active uint64) error {
	t.Helper()
	c, err := grpc.NewClient(n.AdminAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := &clusterv1.ReportRequest{}
	sctx, err := cluster.NewKeyring(keys, active, nil).Sign(ctx, n.ID, clusterv1.Cluster_Report_FullMethodName, req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = clusterv1.NewClusterClient(c).Report(sctx, req)
	return err
}

// TestRotateSecretLocksOutRemovedNode: after a node is removed, its credentials
// still work (it holds the cluster's key) until `flotilla cluster rotate-secret`;
// the rotation goes through the metadata group, which the removed node no longer
// follows, so from then on its signed calls are refused, while the members relay a
// replica's dump with the new key, also after a member restarts (the key is
// persisted).
func TestRotateSecretLocksOutRemovedNode(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "cluster"), 3)
	for _, args := range [][]string{{"node", "drain", "3"}, {"node", "remove", "3"}} {
		if out, err := nodes[0].CLI(ctx, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	nodes[2].Kill()
	removed, err := cluster.LoadIdentity(filepath.Join(nodes[2].Dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := reportAs(ctx, t, nodes[0], removed.Keys(), removed.ActiveNodeKey); err != nil {
		t.Fatalf("before the rotation the removed node's key still works (else this test proves nothing): %v", err)
	}

	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--replicas", "2"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes[:2], "main")
	via := nodes[0]
	if leader == 1 {
		via = nodes[1] // the replica connects to the follower, which relays from the leader
	}
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, r, via, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)

	out, err := nodes[0].CLI(ctx, "cluster", "rotate-secret", "-o", "json")
	if err != nil {
		t.Fatalf("rotate-secret: %v\n%s", err, out)
	}
	var rot struct {
		Generation string   `json:"generation"`
		Nodes      []string `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &rot); err != nil || rot.Generation != "1" || len(rot.Nodes) != 2 {
		t.Fatalf("rotate-secret must give generation 1 to nodes 1 and 2: %v\n%s", err, out)
	}
	err = reportAs(ctx, t, nodes[0], removed.Keys(), removed.ActiveNodeKey)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("after the rotation the removed node's key must be refused, got %v", err)
	}
	for _, n := range nodes[:2] {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			id, err := cluster.LoadIdentity(filepath.Join(n.Dir, "data"))
			if err == nil && len(id.NodeKeys) == 1 && id.NodeKeys[0].Gen == 1 && id.ActiveNodeKey == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d must persist generation 1 alone, active: %+v %v", n.ID, id.NodeKeys, err)
			}
		}
	}

	// The members go on relaying with the new key: a new dump through the follower,
	// then after the follower restarts from its disk.
	if err := r.Exec(ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	if err := r.Exec(ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	if _, err := mariadbtest.RunWorkload(ctx, master, 1); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	via.Kill()
	via.Start(ctx)
	if _, err := mariadbtest.RunWorkload(ctx, master, 2); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	sameData(t, "replica", checksums(ctx, t, master), checksums(ctx, t, r))
}
