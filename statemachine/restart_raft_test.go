package statemachine

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
)

// TestRestartAfterASnapshotPastTheSavedCommit: the node's LogDB does not write a
// commit index on its own (raftlog's commitStates), so a replica that learnt its
// last commit index from the leader's next message, and then took a snapshot, stops
// with a saved commit index below that snapshot's index. Every replica must start
// again (dragonboat refuses a saved commit index below the latest snapshot's) and the
// group go on from where it was: the next epoch claimed follows the last one. Read
// the saved commit index unraised (commitStates.read) and a restart panics in
// dragonboat's loadState.
func TestRestartAfterASnapshotPastTheSavedCommit(t *testing.T) {
	dir, nodes, ctx, _, epoch := claimedGroup(t)
	for i := 0; i < 5; i++ {
		epoch = binary.BigEndian.Uint64(proposeOK(ctx, t, nodes[0].nh, EncodeClaimEpoch()))
	}
	// The leader's last commit index (learnt from the followers' answers) is an
	// update of its own, not written; every replica snapshots what it applied.
	compactLogs(ctx, t, nodes)
	members := map[uint64]string{}
	for i, n := range nodes {
		members[uint64(i+1)] = n.addr
		n.stop()
	}
	var restarted []*raftNode
	for i := uint64(1); i <= 3; i++ {
		n := startRaftNode(t, filepath.Join(dir, fmt.Sprint(i)), members[i])
		if err := n.nh.StartOnDiskCluster(nil, false, n.store.NewGroup, groupConfig(i)); err != nil {
			t.Fatal(err)
		}
		restarted = append(restarted, n)
	}
	if got := binary.BigEndian.Uint64(proposeOK(ctx, t, restarted[0].nh, EncodeClaimEpoch())); got != epoch+1 {
		t.Fatalf("after the restart the next epoch claimed is %d, want %d", got, epoch+1)
	}
}
