package statemachine

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestRaftKeepsItsOwnCopyOfAProposal: the syncer hands a proposal's buffer back to
// its pool as soon as Propose returns (shard/bufpool.go), which is safe only because
// dragonboat copies the command in Propose. Overwrite the buffer right after
// Propose, and the group must still apply the transaction as proposed. Overwrite it
// just before Propose (what a dragonboat that kept a reference would apply) and the
// group rejects the bytes.
func TestRaftKeepsItsOwnCopyOfAProposal(t *testing.T) {
	addr := freeAddr(t)
	n := startRaftNode(t, t.TempDir(), addr)
	if err := n.nh.StartOnDiskCluster(map[uint64]string{1: addr}, false, n.store.NewGroup, groupConfig(1)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	epoch := binary.BigEndian.Uint64(proposeOK(ctx, t, n.nh, EncodeClaimEpoch()))
	a := &Append{Epoch: epoch, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 3000)}}
	cmd := a.AppendEncoded(make([]byte, 0, 64<<10))
	rs, err := n.nh.Propose(n.nh.GetNoOPSession(9), cmd, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cmd {
		cmd[i] = 0xff
	}
	r := <-rs.ResultC()
	rs.Release()
	if !r.Completed() {
		t.Fatalf("the proposal did not commit (timeout %v, dropped %v)", r.Timeout(), r.Dropped())
	}
	if res := r.GetResult(); res.Value != ResultOK {
		t.Fatalf("the group rejected a proposal whose buffer was overwritten after Propose returned: %s", res.Data)
	}
	waitOrdinal(ctx, t, n.store, 1, "the transaction proposed never reached the group")
}
