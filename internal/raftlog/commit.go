package raftlog

import (
	"errors"
	"fmt"
	"sync"

	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
)

// Commit-only saves are not synced on their own.
//
// Raft's commit index is volatile state (the Raft paper, figure 2): a replica that
// restarts with an older one learns the current one from its leader, or, alone,
// by committing an entry of its new term. Only the term, the vote and the entries
// must be durable before a replica acts on them. dragonboat saves every change of
// the commit index, though, and its LogDB syncs every save: once per commit round,
// every replica paid a WAL fsync for the new commit index alone, which held its step
// worker (the next round's entries waited behind it) and competed for the disk with
// the next round's saves and, on a shared machine, with the master's own commits.
// Traced on a 3-node group serving a semi-sync master, those fsyncs were half of
// every replica's fsyncs.
//
// So a batch whose updates change nothing but commit indexes (same term and vote
// as last saved, no entries, no snapshot) is not written: each group keeps its
// newest commit index pending, and the next batch that writes anyway (entries, a
// snapshot, a term or vote) carries it. Invariants:
//   - A term or vote is never held back: a batch with one is written, and synced,
//     as before; so is a group's first state since the LogDB opened (its saved term
//     and vote are not known until then).
//   - A pending commit index only ever rides with a later synced write of its own
//     group; what the disk holds is some commit index the group had, never one it
//     did not reach.
//   - dragonboat checks at a restart that the saved commit index is at least the
//     latest snapshot's index (a snapshot is of applied, so committed, entries):
//     ReadRaftState raises a lower one to that index, which is as true and which
//     dragonboat passes in, and holds the raised one to be saved.
//   - Close writes every held commit index (see flush): only a crash leaves one
//     unsaved. An on-disk state machine that applied past the saved
//     commit index was already possible (dragonboat applies before it saves the
//     commit that allowed it) and is handled by dragonboat: entries at or below the
//     state machine's own index are skipped.
type commitStates struct {
	mu     sync.Mutex
	groups map[groupKey]*groupState
}

// groupState is what the inner LogDB holds of a group's raft state, and the newer
// commit index not yet saved (pending; empty when there is none).
type groupState struct {
	saved, pending pb.State
}

// settle returns what of batch the inner LogDB is to write (nil: nothing; batch
// itself, or a copy with pending commit indexes added) and record, to call once
// that write succeeded.
func (c *commitStates) settle(batch []pb.Update) (out []pb.Update, record func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.commitsOnly(batch) {
		for _, u := range batch {
			if !pb.IsEmptyState(u.State) {
				c.groups[groupKey{u.ClusterID, u.NodeID}].pending = u.State
			}
		}
		return nil, func() {}
	}
	out = batch
	copied := false
	for i, u := range batch {
		if g := c.groups[groupKey{u.ClusterID, u.NodeID}]; g != nil && pb.IsEmptyState(u.State) && !pb.IsEmptyState(g.pending) {
			if !copied {
				out, copied = append([]pb.Update(nil), batch...), true // dragonboat's batch is left as it was
			}
			out[i].State = g.pending
		}
	}
	return out, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, u := range out {
			if pb.IsEmptyState(u.State) {
				continue
			}
			k := groupKey{u.ClusterID, u.NodeID}
			g := c.groups[k]
			if g == nil {
				g = &groupState{}
				c.groups[k] = g
			}
			g.saved, g.pending = u.State, pb.State{}
		}
	}
}

// commitsOnly reports whether batch changes nothing but commit indexes of groups
// whose saved state is known. The caller holds c.mu.
func (c *commitStates) commitsOnly(batch []pb.Update) bool {
	for _, u := range batch {
		if len(u.EntriesToSave) > 0 || !pb.IsEmptySnapshot(u.Snapshot) {
			return false
		}
		if pb.IsEmptyState(u.State) {
			continue
		}
		g := c.groups[groupKey{u.ClusterID, u.NodeID}]
		if g == nil || u.State.Term != g.saved.Term || u.State.Vote != g.saved.Vote || u.State.Commit < g.saved.Commit {
			return false
		}
	}
	return true
}

// read records the state a group starts from (what the inner LogDB holds: any
// pending commit index of an earlier start of the group is dropped), and raises the
// returned commit index to snapshotIndex, the index of the group's latest snapshot.
func (c *commitStates) read(cluster, node, snapshotIndex uint64, rs raftio.RaftState) raftio.RaftState {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := groupKey{cluster, node}
	delete(c.groups, k)
	if pb.IsEmptyState(rs.State) {
		return rs
	}
	g := &groupState{saved: rs.State}
	c.groups[k] = g
	if rs.State.Commit < snapshotIndex {
		rs.State.Commit = snapshotIndex
		g.pending = rs.State // saved with the next write, or at Close
	}
	return rs
}

// flush writes every held commit index through save, one group per call
// (dragonboat's LogDB writes a batch to the partition of its first update's group).
// Close calls it once dragonboat's workers stopped: a node stopped cleanly leaves
// every commit index it knew, so a release that does not raise a saved commit index
// to its snapshot's (0.33 and earlier) can start on its data directory.
func (c *commitStates) flush(save func(pb.Update) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for k, g := range c.groups {
		if pb.IsEmptyState(g.pending) {
			continue
		}
		if err := save(pb.Update{ClusterID: k.cluster, NodeID: k.node, State: g.pending}); err != nil {
			errs = append(errs, fmt.Errorf("save the commit index of group %d (replica %d): %w", k.cluster, k.node, err))
			continue
		}
		g.saved, g.pending = g.pending, pb.State{}
	}
	return errors.Join(errs...)
}

// forget drops a removed group's state.
func (c *commitStates) forget(cluster, node uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.groups, groupKey{cluster, node})
}

// ReadRaftState is the inner LogDB's, with the commit index raised to the latest
// snapshot's index (lastIndex, as dragonboat passes it) where it is below it: see
// commitStates.
func (l *LogDB) ReadRaftState(clusterID uint64, nodeID uint64, lastIndex uint64) (raftio.RaftState, error) {
	rs, err := l.ILogDB.ReadRaftState(clusterID, nodeID, lastIndex)
	if err != nil {
		l.states.forget(clusterID, nodeID)
		return rs, err
	}
	return l.states.read(clusterID, nodeID, lastIndex, rs), nil
}
