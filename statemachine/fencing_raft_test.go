package statemachine

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
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
			view, err := readView(ctx, nh)
			if err != nil {
				continue
			}
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
		checkOnceInOrder(t, fmt.Sprintf("replica %d", i+1), g, total, nil)
	}
	if rejA+rejB == 0 {
		t.Fatal("the two syncers never overlapped: the test proved nothing")
	}
	t.Logf("two overlapping syncers; %d and %d proposals fenced off; every replica holds transactions 1..%d once, in order", rejA, rejB, total)
}

// TestPipelinedProposalsThroughLeaderChanges: a syncer keeps several sequenced
// proposals in flight, some of them pieces of one transaction, while the group's
// leadership moves every few hundred milliseconds and one replica is stopped and
// started again. Whatever raft drops on the way, every replica must end up with each
// transaction exactly once, whole, in order. (Raft here drops a proposal together
// with those after it, so this test passes even without the sequence check;
// TestSequencedFenceCatchesADroppedPiece is the one that needs it.)
func TestPipelinedProposalsThroughLeaderChanges(t *testing.T) {
	dir := t.TempDir()
	nodes := startGroup3(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const total, inflight = 400, 4
	// Transaction n always has the same bytes; every third is proposed in three
	// pieces (cut at event boundaries, so only the fence can tell one is missing).
	rows := func(n uint64) int { return 200 + int(n%5)*400 }
	proposal := func(n uint64) [][]Item {
		g := gt(n)
		whole := txnEvents(g, rows(n))
		if n%3 != 0 {
			return [][]Item{{{Txn: &Txn{GTID: g, First: true, Last: true, Events: whole}}}}
		}
		head := len(gtidEv(g)) + len(ev(binlog.TableMapEvent, 30))
		tail := len(whole) - len(binlog.NewXID(testServer, n, true))
		return [][]Item{
			{{Txn: &Txn{GTID: g, First: true, Events: whole[:head]}}},
			{{Txn: &Txn{GTID: g, Events: whole[head:tail]}}},
			{{Txn: &Txn{GTID: g, Last: true, Events: whole[tail:]}}},
		}
	}

	// The disruptor moves the leadership around, and stops replica 3 and starts it
	// again (its store and raft log stay) while the proposals go on: twelve rounds,
	// and more while no proposal has failed yet and the proposer goes on (on a loaded
	// machine a transfer can take longer than a round, and the test needs a failure).
	disrupted, proposing := make(chan error, 1), make(chan struct{})
	var failedOnce atomic.Bool
	go func() {
		var err error
		defer func() { disrupted <- err }()
		members := map[uint64]string{1: nodes[0].addr, 2: nodes[1].addr, 3: nodes[2].addr}
		for i := 0; ctx.Err() == nil; i++ {
			if i >= 12 && failedOnce.Load() {
				return
			}
			select {
			case <-proposing:
				if i >= 12 {
					return
				}
			default:
			}
			time.Sleep(150 * time.Millisecond)
			switch i {
			case 4:
				nodes[2].stop()
			case 7:
				var n3 *raftNode
				if n3, err = openRaftNode(filepath.Join(dir, "3"), members[3]); err != nil {
					return
				}
				t.Cleanup(n3.stop)
				if err = n3.nh.StartOnDiskCluster(members, false, n3.store.NewGroup, groupConfig(3)); err != nil {
					return
				}
				nodes[2] = n3
			}
			for _, n := range nodes[:2] {
				_ = n.nh.RequestLeaderTransfer(9, uint64(1+i%3))
			}
		}
	}()

	began := time.Now()
	var next uint64 // transactions the group holds, as last read
	proposals, rejected, overlapped := 0, 0, 0
	for next < total && ctx.Err() == nil {
		nh := nodes[int(next/50)%2].nh // the proposer moves between nodes 1 and 2
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		res, err := nh.SyncPropose(pctx, nh.GetNoOPSession(9), EncodeClaimEpoch())
		pcancel()
		if err != nil || res.Value != ResultOK {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		epoch := binary.BigEndian.Uint64(res.Data)
		view, err := readView(ctx, nh)
		if err != nil {
			continue
		}
		next = view.Ordinal
		// Propose from next on, keeping up to inflight proposals in raft; stop at the
		// first that does not commit, then claim again and re-read.
		var queue []*dragonboat.RequestState
		seq, prev, n := uint64(0), next, next
		failed := false
		collect := func() {
			rs := queue[0]
			queue = queue[1:]
			r := <-rs.ResultC()
			rs.Release()
			if !r.Completed() || r.GetResult().Value != ResultOK {
				failed = true
				rejected++
				failedOnce.Store(true)
			}
		}
		for !failed && n < total {
			n++
			for _, items := range proposal(n) {
				if !view.HasFile {
					items = append([]Item{newFile("m.1", binlog.Position{0: gt(0)})}, items...)
					view.HasFile = true
				}
				for len(queue) >= inflight && !failed {
					collect()
				}
				if failed {
					break
				}
				last := items[len(items)-1].Txn.Last
				rs, err := nh.Propose(nh.GetNoOPSession(9), (&Append{Epoch: epoch, PrevOrdinal: prev, Sequenced: true, Seq: seq, Items: items}).Encode(), 3*time.Second)
				if err != nil {
					failed = true
					break
				}
				if len(queue) > 0 {
					overlapped++
				}
				queue = append(queue, rs)
				proposals++
				seq++
				if last {
					prev++
				}
			}
		}
		for len(queue) > 0 {
			collect()
		}
		if !failed {
			next = n
		}
	}
	wrote := time.Since(began)
	close(proposing)
	if err := <-disrupted; err != nil {
		t.Fatalf("restart replica 3: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the proposer did not get %d transactions in: %v", total, ctx.Err())
	}
	for i, n := range nodes {
		g := waitOrdinal(ctx, t, n.store, total, fmt.Sprintf("replica %d did not reach %d transactions", i+1, total))
		checkOnceInOrder(t, fmt.Sprintf("replica %d", i+1), g, total, func(id binlog.GTID) int { return len(txnEvents(id, rows(id.Seq))) })
	}
	if overlapped == 0 || rejected == 0 {
		t.Fatalf("%d proposals overlapped, %d failed: the test needs both to prove anything", overlapped, rejected)
	}
	t.Logf("writes took %v, the disruption %v", wrote, time.Since(began))
	t.Logf("%d proposals, %d made with others in flight, %d dropped or fenced off; every replica holds transactions 1..%d once, whole, in order", proposals, overlapped, rejected, total)
}

// checkOnceInOrder checks that g holds transactions 1..total, each once, in order,
// and (size not nil) each of the size size gives: whole, no piece missing or repeated.
func checkOnceInOrder(t *testing.T, name string, g *Group, total uint64, size func(binlog.GTID) int) {
	t.Helper()
	var seq uint64
	for _, r := range readAll(t, g, Start{File: 1, Served: 4}) {
		if r.Type != recTxn {
			continue
		}
		id, _ := TxnGTID(r.Payload)
		if id.Seq != seq+1 {
			t.Fatalf("%s: after transaction %d comes %d: lost, duplicated or reordered", name, seq, id.Seq)
		}
		seq = id.Seq
		if size != nil && len(r.Payload) != size(id) {
			t.Fatalf("%s: transaction %d holds %d bytes, want %d: a piece is missing or repeated", name, seq, len(r.Payload), size(id))
		}
	}
	if seq != total {
		t.Fatalf("%s holds %d transactions, want %d", name, seq, total)
	}
}

// readView is a linearizable read of group 9's state through nh.
func readView(ctx context.Context, nh *dragonboat.NodeHost) (StateView, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	v, err := nh.SyncRead(rctx, 9, StateQuery{})
	if err != nil {
		return StateView{}, err
	}
	return v.(StateView), nil
}
