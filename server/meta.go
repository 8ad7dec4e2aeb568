package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lni/dragonboat/v3/config"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/shard"
)

// The node's side of the metadata group and of placement: joining it, and what the
// placement controller asks of this node (leader transfers, readers, catch-up).

// startMeta starts (or bootstraps) the metadata group and registers this node.
func (n *Node) startMeta(ctx context.Context) error {
	members := map[uint64]string{}
	join := false
	if !n.nh.HasNodeInfo(placement.MetaGroupID, n.cfg.NodeID) {
		if n.ident.Joined {
			join = true // the members admitted this node through Join
		} else {
			members[n.cfg.NodeID] = n.cfg.RaftAddr
		}
	}
	cfg := config.Config{NodeID: n.cfg.NodeID, ClusterID: placement.MetaGroupID, ElectionRTT: shard.ElectionTicks, HeartbeatRTT: 1,
		CheckQuorum: true, SnapshotEntries: 1000, CompactionOverhead: 100, IsObserver: n.ident.MetaObserver}
	if err := n.nh.StartCluster(members, join, placement.CreateStateMachine, cfg); err != nil {
		return fmt.Errorf("start metadata group: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	self := n.self()
	for {
		st, err := n.meta.Read(ctx)
		if err == nil {
			if v := st.Version(); v > self.MaxClusterVersion {
				return fmt.Errorf("the cluster is at version %d, and this binary (flotilla %s) understands versions up to %d: install the release the cluster runs, or a newer one", v, self.Version, self.MaxClusterVersion)
			}
			if cur, ok := st.Nodes[self.ID]; ok && sameNode(*cur, self) {
				return n.noteClusterVersion(st.Version())
			}
			if err = n.meta.RegisterNode(ctx, self); err == nil {
				return n.noteClusterVersion(st.Version())
			}
			if errors.Is(err, placement.ErrRefused) {
				return fmt.Errorf("register node %d: %w", self.ID, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("metadata group did not become available: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sameNode(a, b placement.Node) bool {
	if a.RaftAddr != b.RaftAddr || a.MySQLAddr != b.MySQLAddr || a.AdminAddr != b.AdminAddr || len(a.Labels) != len(b.Labels) ||
		a.Version != b.Version || a.Commit != b.Commit || a.MaxClusterVersion != b.MaxClusterVersion {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return true
}

// transferLeader asks raft to hand group gid's leadership to node target's replica.
func (n *Node) transferLeader(gid, target uint64) error {
	st, err := n.meta.Local()
	if err != nil {
		return err
	}
	return n.nh.RequestLeaderTransfer(gid, st.ReplicaID(gid, target))
}

// clusterReaders returns the oldest file of group gid that a replica connected to any
// node reads (0: none). A purge waits while a node that may have readers is silent,
// up to purgeWaitsForSilent.
func (n *Node) clusterReaders(ctx context.Context, gid uint64) (uint64, error) {
	st, err := n.meta.Local()
	if err != nil {
		return 0, err
	}
	reps := n.relay.Reports(ctx, st.Nodes, 2*time.Second)
	var oldest uint64
	var silent []string
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.silentSince == nil {
		n.silentSince = map[uint64]time.Time{}
	}
	for id := range st.Nodes {
		rep, ok := reps[id]
		if !ok {
			since, seen := n.silentSince[id]
			if !seen {
				since = now
				n.silentSince[id] = now
			}
			if now.Sub(since) < purgeWaitsForSilent {
				silent = append(silent, fmt.Sprint(id))
			}
			continue
		}
		delete(n.silentSince, id)
		if g := cluster.GroupOf(rep, gid); g != nil && g.OldestReadingFile != 0 && (oldest == 0 || g.OldestReadingFile < oldest) {
			oldest = g.OldestReadingFile
		}
	}
	if len(silent) > 0 {
		slices.Sort(silent)
		return 0, fmt.Errorf("nodes %s did not say which files their replicas read: the purge waits for them (at most %v for a node that stays silent)",
			strings.Join(silent, ", "), purgeWaitsForSilent)
	}
	return oldest, nil
}

// reportOf asks one node for its report.
func (n *Node) reportOf(ctx context.Context, id uint64) (*clusterv1.NodeReport, bool) {
	st, err := n.meta.Local()
	if err != nil {
		return nil, false
	}
	nd, ok := st.Nodes[id]
	if !ok {
		return nil, false
	}
	rep, ok := n.relay.Reports(ctx, map[uint64]*placement.Node{id: nd}, 2*time.Second)[id]
	return rep, ok
}

// caughtUp reports whether node's replica of gid has (nearly) everything this node's
// replica has, by the node's own report: it heard from this node as leader, holds a
// file if this replica does, and trails by at most cluster.CatchUpSlack transactions.
func (n *Node) caughtUp(ctx context.Context, gid, node uint64) bool {
	g, ok := n.store.Group(gid)
	if !ok {
		return false
	}
	rep, ok := n.reportOf(ctx, node)
	if !ok {
		return false
	}
	gs := cluster.GroupOf(rep, gid)
	t, _ := g.Tail()
	return gs != nil && gs.LeaderNode == n.cfg.NodeID && gs.Transactions+cluster.CatchUpSlack >= t.Ordinal && (t.File == 0 || gs.CurrentFile != "")
}

// changedMeta returns the local metadata if its version moved since *seen (0: read
// it anyway), recording the new version: loops that follow the metadata skip
// copying it (with a thousand upstreams, most of an idle node's work) while
// nothing changed.
func (n *Node) changedMeta(seen *uint64) (*placement.State, bool) {
	v, err := n.meta.LocalVersion()
	if err == nil && v != 0 && v == *seen {
		return nil, false
	}
	st, err := n.meta.Local()
	if err != nil {
		return nil, false
	}
	*seen = v
	return st, true
}

// departed reports whether the leader of group gid no longer counts this node among
// the group's raft members.
func (n *Node) departed(ctx context.Context, gid uint64) bool {
	leader, _ := n.leaders.Leader(gid)
	if leader == 0 || leader == n.cfg.NodeID {
		return false
	}
	rep, ok := n.reportOf(ctx, leader)
	if !ok {
		return false
	}
	gs := cluster.GroupOf(rep, gid)
	return gs != nil && gs.LeaderNode == leader && len(gs.RaftMembers) > 0 && !slices.Contains(gs.RaftMembers, n.cfg.NodeID)
}

// metaVoters lists the metadata group's voting members (nil if unknown right now).
func (n *Node) metaVoters(ctx context.Context) []uint64 {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return nil
	}
	out := make([]uint64, 0, len(m.Nodes))
	for id := range m.Nodes {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// metaMembers lists every member of the metadata raft group, voting or not.
func (n *Node) metaMembers(ctx context.Context) ([]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for id := range m.Nodes {
		out = append(out, id)
	}
	for id := range m.Observers {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}

// removeMetaMember takes a removed node out of the metadata raft group.
func (n *Node) removeMetaMember(ctx context.Context, id uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.nh.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return fmt.Errorf("read metadata membership: %w", err)
	}
	_, voter := m.Nodes[id]
	_, observer := m.Observers[id]
	if !voter && !observer {
		return nil
	}
	return n.nh.SyncRequestDeleteNode(ctx, placement.MetaGroupID, id, m.ConfigChangeID)
}
