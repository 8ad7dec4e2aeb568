package statemachine

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/raftlog"
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
	// The replicas stop as they would crash: a clean stop writes the commit
	// indexes held back.
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	members := map[uint64]string{1: freeAddr(t), 2: freeAddr(t), 3: freeAddr(t)}
	var nodes []*raftNode
	for i := uint64(1); i <= 3; i++ {
		n, err := openRaftNodeWith(filepath.Join(dir, fmt.Sprint(i)), members[i], raftlog.Factory{MinPayload: 256, On: payloadFilesOn(), NoFlushAtClose: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.stop)
		if err := n.nh.StartOnDiskCluster(members, false, n.store.NewGroup, groupConfig(i)); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	var epoch uint64
	for i := 0; i < 5; i++ {
		epoch = binary.BigEndian.Uint64(proposeOK(ctx, t, nodes[0].nh, EncodeClaimEpoch()))
	}
	// The leader's last commit index (learnt from the followers' answers) is an
	// update of its own, not written; every replica snapshots what it applied.
	compactLogs(ctx, t, nodes)
	for _, n := range nodes {
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
