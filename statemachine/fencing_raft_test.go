package statemachine

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/lni/dragonboat/v3"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestOverlappingSyncersNeverDuplicate: during a leader change two syncers may both
// be pulling from the master and proposing. Here two proposers on different nodes of a
// real 3-replica group race: each claims an epoch, reads the tail, and proposes the
// same transaction sequence from there, re-reading and reclaiming whenever it is
// rejected. Whatever interleaving raft picks, every replica must end up with each
// transaction exactly once, in order.
func TestOverlappingSyncersNeverDuplicate(t *testing.T) {
	dir := t.TempDir()
	nodes := startGroup3(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const total = 300
	// The "master": transaction n always has the same bytes, whoever proposes it.
	master := func(seq uint64) Item { return txn(gt(seq), 500+int(seq%7)*300) }

	propose := func(nh *dragonboat.NodeHost, cmd []byte) ([]byte, bool, error) {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		res, err := nh.SyncPropose(pctx, nh.GetNoOPSession(9), cmd)
		if err != nil {
			return nil, false, err
		}
		return res.Data, res.Value == ResultOK, nil
	}
	syncer := func(nh *dragonboat.NodeHost, name string, rejections *int) error {
		for ctx.Err() == nil {
			data, ok, err := propose(nh, EncodeClaimEpoch())
			if err != nil || !ok {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			epoch := binary.BigEndian.Uint64(data)
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			v, err := nh.SyncRead(rctx, 9, StateQuery{})
			rcancel()
			if err != nil {
				continue
			}
			view := v.(StateView)
			next := view.Ordinal
			if next >= total {
				return nil
			}
			for next < total {
				items := []Item{}
				if !view.HasFile && next == 0 {
					items = append(items, newFile("m.1", binlog.Position{0: gt(0)}))
				}
				n := uint64(1 + next%4)
				for i := uint64(0); i < n && next+i < total; i++ {
					items = append(items, master(next+i+1))
				}
				_, ok, err := propose(nh, (&Append{Epoch: epoch, PrevOrdinal: next, Items: items}).Encode())
				if err != nil || !ok {
					*rejections++
					break // fenced off or timed out: claim again and re-read
				}
				next += uint64(len(items))
				if items[0].NewFile != nil {
					next--
				}
				view.HasFile = true
			}
		}
		return ctx.Err()
	}
	var wg sync.WaitGroup
	var rejA, rejB int
	errs := make([]error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs[0] = syncer(nodes[0].nh, "A", &rejA) }()
	go func() { defer wg.Done(); errs[1] = syncer(nodes[1].nh, "B", &rejB) }()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range nodes {
		var g *Group
		for {
			if gg, ok := n.store.Group(9); ok {
				if tl, _ := gg.Tail(); tl.Ordinal >= total {
					g = gg
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("replica %d did not reach %d transactions", i+1, total)
			}
			time.Sleep(20 * time.Millisecond)
		}
		var seq uint64
		for _, r := range readAll(t, g, Start{File: 1, Served: 4}) {
			if r.Type != recTxn {
				continue
			}
			id, _ := TxnGTID(r.Payload)
			if id.Seq != seq+1 {
				t.Fatalf("replica %d: after transaction %d comes %d: duplicated or reordered", i+1, seq, id.Seq)
			}
			seq = id.Seq
		}
		if seq != total {
			t.Fatalf("replica %d holds %d transactions, want %d", i+1, seq, total)
		}
	}
	if rejA+rejB == 0 {
		t.Fatal("the two syncers never overlapped: the test proved nothing")
	}
	t.Logf("two overlapping syncers; %d and %d proposals fenced off; every replica holds transactions 1..%d once, in order", rejA, rejB, total)
}
