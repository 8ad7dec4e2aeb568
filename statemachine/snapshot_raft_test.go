package statemachine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/config"
	dblog "github.com/lni/dragonboat/v3/logger"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/raftlog"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

type raftNode struct {
	nh    *dragonboat.NodeHost
	store *Store
	addr  string
	once  sync.Once
}

// stop stops the replica once (tests stop some before their cleanup does).
func (n *raftNode) stop() {
	n.once.Do(func() { n.nh.Stop(); n.store.Close() })
}

// freeAddr is a loopback address on a port reserved for this test process (see
// mariadbtest.FreePort: a port 0 listener's port is one the kernel may give the next
// outgoing connection of any process, before the raft node binds it).
func freeAddr(t *testing.T) string {
	p, err := mariadbtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

func startRaftNode(t *testing.T, dir string, addr string) *raftNode {
	t.Helper()
	n, err := openRaftNode(dir, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.stop)
	return n
}

// payloadFilesOn is a raftlog switch that is on (a cluster at version 4 or later).
func payloadFilesOn() *atomic.Bool {
	on := new(atomic.Bool)
	on.Store(true)
	return on
}

// openRaftNode starts a NodeHost and store under dir; the caller stops them.
func openRaftNode(dir string, addr string) (*raftNode, error) {
	return openRaftNodeWith(dir, addr, raftlog.Factory{MinPayload: 256, On: payloadFilesOn()})
}

// openRaftNodeWith is openRaftNode with the LogDB made by logs.
func openRaftNodeWith(dir string, addr string, logs raftlog.Factory) (*raftNode, error) {
	st, err := Open(filepath.Join(dir, "storage"), discardLog())
	if err != nil {
		return nil, err
	}
	st.SetSegmentSize(16 << 10) // snapshots must carry multi-part segments
	nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
		DeploymentID: 7, NodeHostDir: filepath.Join(dir, "raft"), RTTMillisecond: 20, RaftAddress: addr,
		// Every entry but the smallest goes through the node's own LogDB's payload files.
		Expert: config.ExpertConfig{LogDB: config.GetTinyMemLogDBConfig(), LogDBFactory: logs},
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	return &raftNode{nh: nh, store: st, addr: addr}, nil
}

// startGroup3 starts group 9 on three in-process replicas.
func startGroup3(t *testing.T, dir string) []*raftNode {
	t.Helper()
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "raftpb", "config", "settings"} {
		dblog.GetLogger(name).SetLevel(dblog.ERROR)
	}
	members := map[uint64]string{}
	var nodes []*raftNode
	for i := uint64(1); i <= 3; i++ {
		members[i] = freeAddr(t)
	}
	for i := uint64(1); i <= 3; i++ {
		n := startRaftNode(t, filepath.Join(dir, fmt.Sprint(i)), members[i])
		if err := n.nh.StartOnDiskCluster(members, false, n.store.NewGroup, groupConfig(i)); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

func groupConfig(node uint64) config.Config {
	// Frequent snapshots and no spare entries: the log is compacted almost at once.
	return config.Config{NodeID: node, ClusterID: 9, ElectionRTT: 10, HeartbeatRTT: 1, CheckQuorum: true,
		SnapshotEntries: 5, CompactionOverhead: 1}
}

// TestJoinByStreamedSnapshot: a 3-replica group compacts its raft log; a 4th replica
// can then only catch up through SaveSnapshot/RecoverFromSnapshot, and must end up
// serving exactly the same binlog bytes. Then a replica with a corrupt segment refuses
// to serve it and is rebuilt from its peers the same way.
func TestJoinByStreamedSnapshot(t *testing.T) {
	dir, nodes, ctx, propose, epoch := claimedGroup(t)
	var seq uint64
	for b := 0; b < 40; b++ {
		var items []Item
		if b%10 == 0 {
			items = append(items, newFile(fmt.Sprintf("m.%d", b), binlog.Position{0: gt(0)}))
		}
		for i := 0; i < 5; i++ {
			seq++
			items = append(items, txn(gt(seq), 3000+int(seq)*100))
		}
		propose((&Append{Epoch: epoch, PrevOrdinal: seq - 5, Items: items}).Encode())
	}
	// Node 4 joins: the entries it needs are gone from the log.
	n4 := joinBySnapshot(ctx, t, dir, nodes)
	g1, _ := nodes[0].store.Group(9)
	want, _ := g1.Tail()
	g4 := waitOrdinal(ctx, t, n4.store, want.Ordinal, "node 4 did not catch up")
	n := sameAsBySnapshot(t, g1, g4)
	if _, err := g4.Locate(binlog.Position{0: gt(seq / 2)}); err != nil {
		t.Fatalf("index on node 4: %v", err)
	}
	t.Logf("node 4 joined by snapshot and serves %d identical records (%d transactions)", n, seq)

	// Bit rot on node 2: reading past the flipped byte fails with the place named.
	g2, _ := nodes[1].store.Group(9)
	tail2, _ := g2.Tail()
	last := len(tail2.PartStarts)
	path := g2.partPath(tail2.File, last)
	mid := int64(tail2.SegSize-partStart(tail2.PartStarts, last)) / 2
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := []byte{0}
	f.ReadAt(one, mid)
	one[0] ^= 0x10
	f.WriteAt(one, mid)
	f.Close()
	if err := readAllErr(g2, tail2.File); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName(tail2.File)) || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("reading the damaged segment: want a corruption error naming file and offset, got %v", err)
	}
	// The group keeps committing and the healthy replicas keep serving: more
	// transactions reach nodes 1, 3 and 4, which read them back identically.
	for b := 0; b < 10; b++ {
		var items []Item
		for i := 0; i < 5; i++ {
			seq++
			items = append(items, txn(gt(seq), 2000))
		}
		propose((&Append{Epoch: epoch, PrevOrdinal: seq - 5, Items: items}).Encode())
	}
	want, _ = g1.Tail()
	a := readAll(t, g1, Start{File: 1, Served: 4})
	for _, n := range []*raftNode{nodes[2], n4} {
		g := waitOrdinal(ctx, t, n.store, want.Ordinal, "a healthy replica stopped applying while another was damaged")
		if got := readAll(t, g, Start{File: 1, Served: 4}); len(got) != len(a) || !bytes.Equal(got[len(got)-1].Payload, a[len(a)-1].Payload) {
			t.Fatal("a healthy replica does not serve the same binlog as the leader")
		}
	}
	if err := readAllErr(g2, tail2.File); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("the damaged replica must go on refusing to serve, got %v", err)
	}

	// Rebuild node 2 from its peers: drop the damaged replica, wipe it, and add the
	// same process back under a new replica id; it returns through a snapshot.
	changeMembership(ctx, t, nodes[0].nh, 2, "")
	// The removed replica stops itself once it applies its removal.
	if err := nodes[1].nh.StopCluster(9); err != nil && !errors.Is(err, dragonboat.ErrClusterNotFound) {
		t.Fatal(err)
	}
	for nodes[1].nh.HasNodeInfo(9, 2) {
		err := nodes[1].nh.SyncRemoveData(ctx, 9, 2)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("remove raft data of the damaged replica: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the replica is still stopping
	}
	if err := nodes[1].store.RemoveGroupData(9); err != nil {
		t.Fatal(err)
	}
	changeMembership(ctx, t, nodes[0].nh, 5, nodes[1].addr)
	if err := nodes[1].nh.StartOnDiskCluster(nil, true, nodes[1].store.NewGroup, groupConfig(5)); err != nil {
		t.Fatal(err)
	}
	g5 := waitOrdinal(ctx, t, nodes[1].store, want.Ordinal, "the rebuilt replica did not catch up")
	g5.mu.Lock()
	viaSnapshot := g5.recovered > 0
	g5.mu.Unlock()
	if !viaSnapshot {
		t.Fatal("the rebuilt replica did not come back through a snapshot")
	}
	rebuilt := readAll(t, g5, Start{File: 1, Served: 4})
	if len(rebuilt) != len(a) || !bytes.Equal(rebuilt[len(a)-1].Payload, a[len(a)-1].Payload) {
		t.Fatal("the rebuilt replica does not serve the same binlog")
	}
}

// waitOrdinal polls until the store's replica of group 9 holds ordinal transactions
// and returns it; failure names what did not happen.
func waitOrdinal(ctx context.Context, t *testing.T, st *Store, ordinal uint64, failure string) *Group {
	t.Helper()
	for {
		if g, ok := st.Group(9); ok {
			if tl, _ := g.Tail(); tl.Ordinal == ordinal {
				return g
			}
		}
		if ctx.Err() != nil {
			t.Fatal(failure)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// changeMembership adds replica id at addr (or removes it when addr is empty) and
// retries until the membership shows it: a request made while the group elects a
// leader (e.g. after removing the leader) can be dropped.
func changeMembership(ctx context.Context, t *testing.T, nh *dragonboat.NodeHost, id uint64, addr string) {
	t.Helper()
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		if addr != "" {
			err = nh.SyncRequestAddNode(actx, 9, id, addr, 0)
		} else {
			err = nh.SyncRequestDeleteNode(actx, 9, id, 0)
		}
		cancel()
		mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
		m, merr := nh.SyncGetClusterMembership(mctx, 9)
		mcancel()
		if merr == nil {
			_, present := m.Nodes[id]
			if present == (addr != "") {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("membership change for replica %d did not take effect: %v", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readAllErr reads a file to the tail and returns the first error.
func readAllErr(g *Group, file uint64) error {
	c, err := g.NewCursor(Start{File: file, Served: 4})
	if err != nil {
		return err
	}
	defer c.Close()
	t, _ := g.Tail()
	for {
		if _, err := c.Next(t); err != nil {
			if errors.Is(err, ErrAtTail) {
				return nil
			}
			return err
		}
	}
}

// TestJoinByStreamedSnapshotMidTransaction: a replica that joins by snapshot while
// a large transaction is half proposed must end up with exactly what its peers hold.
// The transaction's remaining pieces follow the snapshot; a replica restored without
// the first pieces would reject them while its peers accept them, and silently fall
// behind for good.
func TestJoinByStreamedSnapshotMidTransaction(t *testing.T) {
	dir, nodes, ctx, propose, epoch := claimedGroup(t)
	propose((&Append{Epoch: epoch, Sequenced: true, Seq: 0, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 3000)}}).Encode())
	// Transaction 2 in three pieces: the first two go in before node 4 joins.
	whole := txnEvents(gt(2), 20000)
	head := len(gtidEv(gt(2))) + len(ev(binlog.TableMapEvent, 30))
	tail := len(whole) - len(binlog.NewXID(testServer, 2, true))
	propose((&Append{Epoch: epoch, PrevOrdinal: 1, Sequenced: true, Seq: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: whole[:head]}}}}).Encode())
	propose((&Append{Epoch: epoch, PrevOrdinal: 1, Sequenced: true, Seq: 2, Items: []Item{{Txn: &Txn{GTID: gt(2), Events: whole[head:tail]}}}}).Encode())
	n4 := joinBySnapshot(ctx, t, dir, nodes)
	// Node 4 installs the snapshot before the last piece is proposed.
	for {
		if g, ok := n4.store.Group(9); ok {
			g.mu.Lock()
			done := g.recovered > 0
			g.mu.Unlock()
			if done {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("node 4 installed no snapshot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The last piece, then one more transaction.
	propose((&Append{Epoch: epoch, PrevOrdinal: 1, Sequenced: true, Seq: 3, Items: []Item{{Txn: &Txn{GTID: gt(2), Last: true, Events: whole[tail:]}}}}).Encode())
	propose((&Append{Epoch: epoch, PrevOrdinal: 2, Sequenced: true, Seq: 4, Items: []Item{txn(gt(3), 3000)}}).Encode())
	g1, _ := nodes[0].store.Group(9)
	g4 := waitOrdinal(ctx, t, n4.store, 3, "node 4 did not reach the 3 transactions its peers hold: it diverged")
	sameAsBySnapshot(t, g1, g4)
}

// proposeOK proposes cmd to group 9 through nh until raft takes it (an election may
// be under way) and fails the test if the group rejects it.
func proposeOK(ctx context.Context, t *testing.T, nh *dragonboat.NodeHost, cmd []byte) []byte {
	t.Helper()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := nh.SyncPropose(pctx, nh.GetNoOPSession(9), cmd)
		pcancel()
		if err == nil {
			if res.Value != ResultOK {
				t.Fatalf("proposal rejected: %s", res.Data)
			}
			return res.Data
		}
		if ctx.Err() != nil {
			t.Fatalf("propose: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // election in progress: retry
	}
}

// compactLogs snapshots every replica of group 9 and compacts its whole raft log, so
// a replica added next can only catch up by a snapshot stream.
func compactLogs(ctx context.Context, t *testing.T, nodes []*raftNode) {
	t.Helper()
	for _, n := range nodes {
		// A request is rejected while an automatic snapshot runs; those compact too.
		for try := 0; try < 20; try++ {
			_, err := n.nh.SyncRequestSnapshot(ctx, 9, dragonboat.SnapshotOption{OverrideCompactionOverhead: true, CompactionOverhead: 0})
			if err == nil {
				break
			}
			if !errors.Is(err, dragonboat.ErrRejected) {
				t.Fatalf("request snapshot: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// sameAsBySnapshot checks that joined, a replica that joined by a snapshot stream,
// serves exactly the records of g, and returns how many.
func sameAsBySnapshot(t *testing.T, g, joined *Group) int {
	t.Helper()
	joined.mu.Lock()
	recovered := joined.recovered
	joined.mu.Unlock()
	if recovered == 0 {
		t.Fatal("the new replica caught up without a snapshot: the log was not compacted, so this test proved nothing")
	}
	a, b := readAll(t, g, Start{File: 1, Served: 4}), readAll(t, joined, Start{File: 1, Served: 4})
	if len(a) != len(b) {
		t.Fatalf("the replica that joined by snapshot serves %d records, its peer %d", len(b), len(a))
	}
	for i := range a {
		if a[i].File != b[i].File || a[i].Pos != b[i].Pos || !bytes.Equal(a[i].Payload, b[i].Payload) {
			t.Fatalf("record %d differs between the peer and the replica that joined by snapshot", i)
		}
	}
	return len(a)
}

// claimedGroup starts group 9 on three replicas in dir and claims an epoch through
// replica 1; propose proposes through it, within ctx (2 minutes).
func claimedGroup(t *testing.T) (dir string, nodes []*raftNode, ctx context.Context, propose func([]byte) []byte, epoch uint64) {
	t.Helper()
	dir = t.TempDir()
	nodes = startGroup3(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	propose = func(cmd []byte) []byte { return proposeOK(ctx, t, nodes[0].nh, cmd) }
	return dir, nodes, ctx, propose, binary.BigEndian.Uint64(propose(EncodeClaimEpoch()))
}

// joinBySnapshot compacts every replica's raft log and adds replica 4 (under dir),
// which can then only catch up by a snapshot stream.
func joinBySnapshot(ctx context.Context, t *testing.T, dir string, nodes []*raftNode) *raftNode {
	t.Helper()
	compactLogs(ctx, t, nodes)
	addr4 := freeAddr(t)
	changeMembership(ctx, t, nodes[0].nh, 4, addr4)
	n4 := startRaftNode(t, filepath.Join(dir, "4"), addr4)
	if err := n4.nh.StartOnDiskCluster(nil, true, n4.store.NewGroup, groupConfig(4)); err != nil {
		t.Fatal(err)
	}
	return n4
}
