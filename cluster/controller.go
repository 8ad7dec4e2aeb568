package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// DefaultNodeDownAfter is how long a node may not answer before its replicas are
// re-created elsewhere.
const DefaultNodeDownAfter = 60 * time.Second

// CatchUpSlack is how many transactions a member may trail its leader by and still
// count as caught up: reports are taken at slightly different moments, and a replica
// under a steady workload is always a little behind.
const CatchUpSlack = 256

// ControllerMeta is the part of the placement service the controller uses.
type ControllerMeta interface {
	Read(ctx context.Context) (*placement.State, error)
	// LocalVersion is the metadata's version on this node, cheap to ask.
	LocalVersion() (uint64, error)
	SetMembers(ctx context.Context, gid uint64, expect, members []uint64, note string) error
	SetClusterVersion(ctx context.Context, v uint32, running map[uint64]uint32, note string) error
	Note(ctx context.Context, note string) error
}

// Controller runs the placement controller while this node leads the metadata
// group: each round it gathers the nodes' reports, asks placement.Plan what to change
// and applies it (assignment changes through the metadata, which the groups' leaders
// turn into raft membership changes; leadership transfers through the leader's node).
type Controller struct {
	NodeID       uint64
	IsMetaLeader func() bool
	Meta         ControllerMeta
	// Members changes the metadata group's own raft membership.
	Members   Membership
	Relay     *Relay
	DownAfter time.Duration
	Log       *slog.Logger

	leading  bool
	lastSeen map[uint64]time.Time
	nodes    map[uint64]*placement.Node // the nodes of the last round's metadata
}

// settledRounds: while the cluster is settled (the last round changed nothing,
// heard every node and saw no group in motion) and the metadata stays as it was, only every settledRounds-th
// round runs in full; the others only ask each node who it is (Relay.Alive), which
// keeps the nodes' last-seen times as exact as a full round does, and run in full
// as soon as a node does not answer. A full round reads the metadata and every
// node's report of all its groups: every 2 s, a tenth of an idle node's CPU with a
// thousand groups.
const settledRounds = 3

// Run runs a round every interval until ctx ends (see settledRounds).
func (c *Controller) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var skipped int
	var settled bool
	var ver uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v, err := c.Meta.LocalVersion()
		if settled && err == nil && v == ver && skipped < settledRounds-1 && c.IsMetaLeader() && c.allAlive(ctx) {
			skipped++
			continue
		}
		skipped, ver = 0, v
		settled = c.round(ctx) && err == nil
	}
}

// allAlive asks the last round's nodes whether they are up, records when they were
// seen, and reports whether every one of them answered.
func (c *Controller) allAlive(ctx context.Context) bool {
	alive := c.Relay.Alive(ctx, c.nodes, 2*time.Second)
	now := time.Now()
	for id := range alive {
		c.lastSeen[id] = now
	}
	return len(alive) == len(c.nodes)
}

// round gathers the reports and applies the plan; it reports whether the cluster is
// settled: every node answered and the plan changed nothing.
func (c *Controller) round(ctx context.Context) bool {
	if !c.IsMetaLeader() {
		c.leading = false
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Meta.Read(rctx)
	if err != nil {
		c.Log.Debug("placement: metadata not readable", "err", err)
		return false
	}
	now := time.Now()
	if !c.leading {
		// A new controller knows nothing of past silences: every node gets a full
		// node-down-after period from now.
		c.leading, c.lastSeen = true, map[uint64]time.Time{}
	}
	for id := range st.Nodes {
		if _, ok := c.lastSeen[id]; !ok {
			c.lastSeen[id] = now
		}
	}
	c.nodes = st.Nodes
	reports := c.Relay.Reports(rctx, st.Nodes, 2*time.Second)
	for id := range reports {
		c.lastSeen[id] = now
	}
	promoting := c.promoteMetaVoter(rctx, reports)
	c.finalizeVersion(rctx, st, reports)
	view := BuildView(st, reports, c.lastSeen, now, c.DownAfter)
	plan := placement.Plan(view)
	var moved []placement.Decision
	for _, d := range plan {
		if c.apply(rctx, st, d) && d.Kind == placement.TransferLeader {
			moved = append(moved, d)
		}
	}
	c.noteTransfers(rctx, moved)
	return len(plan) == 0 && len(reports) == len(st.Nodes) && !promoting && steady(view)
}

// steady reports whether no group is in motion: each has a leader, all its replicas
// and every member caught up. A plan is empty too while a new member catches up
// (each step of a move waits for that), and the next step must not wait for a
// settled cluster's slower rounds.
func steady(v placement.ClusterView) bool {
	for _, g := range v.Groups {
		if g.Leader == 0 || len(g.Members) != g.Replicas {
			return false
		}
		for _, m := range g.Members {
			if !g.CaughtUp[m] {
				return false
			}
		}
	}
	return true
}

// promoteMetaVoter gives the metadata group a voter more, while it has fewer than
// MaxMetaVoters, from the non-voting members that answered this round: joined nodes
// start as observers so that joining never raises the quorum before they can vote.
// It reports whether a promotion may still be due (an observer waits, or the
// membership could not be read).
func (c *Controller) promoteMetaVoter(ctx context.Context, reports map[uint64]*clusterv1.NodeReport) bool {
	if c.Members == nil {
		return false
	}
	m, err := c.Members.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return true
	}
	if len(m.Nodes) >= MaxMetaVoters {
		return false
	}
	ids := make([]uint64, 0, len(m.Observers))
	for id := range m.Observers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if _, up := reports[id]; !up {
			continue
		}
		if err := c.Members.SyncRequestAddNode(ctx, placement.MetaGroupID, id, m.Observers[id], m.ConfigChangeID); err != nil {
			c.Log.Warn("promote a metadata observer to voter", "node", id, "err", err)
			return true
		}
		c.Log.Info("placement decision: metadata voter added", "node", id, "voters", len(m.Nodes)+1)
		_ = c.Meta.Note(ctx, placement.Note("metadata group: node %d promoted to voter (%d voters)", id, len(m.Nodes)+1))
		return true
	}
	return len(m.Observers) > 0
}

// BuildView describes the cluster for placement.Plan from the metadata and the
// nodes' reports.
func BuildView(st *placement.State, reports map[uint64]*clusterv1.NodeReport, lastSeen map[uint64]time.Time, now time.Time, downAfter time.Duration) placement.ClusterView {
	var v placement.ClusterView
	for id, n := range st.Nodes {
		seen, ok := lastSeen[id]
		v.Nodes = append(v.Nodes, placement.NodeView{ID: id, Zone: n.Labels["zone"], Draining: n.Draining,
			Up: ok && now.Sub(seen) < downAfter, ShedLeaders: reports[id].GetSheddingLeaders() || reports[id].GetStorageProblem() != "",
			NoNewReplicas: reports[id].GetStorageProblem() != ""})
	}
	for _, name := range st.UpstreamNames() {
		u := st.Upstreams[name]
		g := placement.GroupView{ID: u.GroupID, Replicas: u.Replicas, Members: slices.Clone(st.Assignments[u.GroupID]), CaughtUp: map[uint64]bool{}}
		var lead *adminv1.GroupStatus
		for _, m := range g.Members {
			if rep, ok := reports[m]; ok {
				if gs := GroupOf(rep, u.GroupID); gs != nil && gs.LeaderNode == m {
					g.Leader, lead = m, gs
				}
			}
		}
		for _, m := range g.Members {
			rep, ok := reports[m]
			if !ok || lead == nil {
				continue
			}
			// Caught up: a voter (the leader's view; an observer still waits for its
			// promotion) that trails the leader by at most CatchUpSlack transactions.
			gs := GroupOf(rep, u.GroupID)
			g.CaughtUp[m] = gs != nil && gs.LeaderNode == g.Leader && gs.Transactions+CatchUpSlack >= lead.Transactions &&
				(lead.CurrentFile == "" || gs.CurrentFile != "") && (len(lead.RaftMembers) == 0 || slices.Contains(lead.RaftMembers, m))
		}
		v.Groups = append(v.Groups, g)
	}
	return v
}

// GroupOf returns a node report's view of group gid, or nil.
func GroupOf(rep *clusterv1.NodeReport, gid uint64) *adminv1.GroupStatus {
	for _, g := range rep.Groups {
		if g.GroupId == gid {
			return g
		}
	}
	return nil
}

// apply makes decision d and reports whether it was made.
func (c *Controller) apply(ctx context.Context, st *placement.State, d placement.Decision) bool {
	c.Log.Info("placement decision", "kind", d.Kind, "group", d.Group, "node", d.Node, "reason", d.Reason)
	cur := st.Assignments[d.Group]
	var err error
	switch d.Kind {
	case placement.AddReplica:
		err = c.Meta.SetMembers(ctx, d.Group, cur, append(slices.Clone(cur), d.Node), placement.Note("%s", d))
	case placement.RemoveReplica:
		next := slices.DeleteFunc(slices.Clone(cur), func(n uint64) bool { return n == d.Node })
		err = c.Meta.SetMembers(ctx, d.Group, cur, next, placement.Note("%s", d))
	case placement.TransferLeader:
		n, ok := st.Nodes[d.From]
		if !ok {
			return false
		}
		err = c.Relay.TransferLeader(ctx, n, d.Group, d.Node)
	}
	if err != nil {
		c.Log.Warn("placement decision not applied; the next round decides again", "decision", d.String(), "err", err)
	}
	return err == nil
}

// noteTransfers records the round's leader transfers in the metadata's decisions, in
// one note: each metadata change has every node take a fresh copy of the metadata,
// and a round moves up to placement.MaxLeaderMoves leaderships.
func (c *Controller) noteTransfers(ctx context.Context, moved []placement.Decision) {
	if len(moved) == 0 {
		return
	}
	note := placement.Note("%s", moved[0])
	if len(moved) > 1 {
		var to []string
		for _, d := range moved[:min(len(moved), placement.MaxLeaderMoves)] {
			to = append(to, fmt.Sprintf("group %d to node %d", d.Group, d.Node))
		}
		if more := len(moved) - len(to); more > 0 {
			to = append(to, fmt.Sprintf("and %d more (each in the log)", more))
		}
		note = placement.Note("%s of %d groups (the first: %s): %s", placement.TransferLeader, len(moved), moved[0].Reason, strings.Join(to, ", "))
	}
	if err := c.Meta.Note(ctx, note); err != nil {
		c.Log.Warn("leader transfers made but not recorded in the metadata's decisions", "transfers", len(moved), "err", err)
	}
}

// finalizeVersion moves the cluster version forward once every registered node
// answers and reports that its running binary understands a newer one (what nodes
// registered at their last start is not enough: a node may run another binary now,
// or be down). From then on, commands of that version are accepted, and binaries
// that cannot read them may no longer register.
func (c *Controller) finalizeVersion(ctx context.Context, st *placement.State, reports map[uint64]*clusterv1.NodeReport) {
	running := map[uint64]uint32{}
	to := uint32(0)
	for id := range st.Nodes {
		rep, ok := reports[id]
		if !ok {
			return
		}
		v := max(rep.MaxClusterVersion, placement.BaseClusterVersion)
		running[id] = v
		if to == 0 || v < to {
			to = v
		}
	}
	if to <= st.Version() {
		return
	}
	if err := c.Meta.SetClusterVersion(ctx, to, running, placement.Note("cluster version %d -> %d: every node understands it", st.Version(), to)); err != nil {
		c.Log.Warn("cluster version not moved forward; the next round tries again", "from", st.Version(), "to", to, "err", err)
		return
	}
	c.Log.Info("cluster version moved forward", "from", st.Version(), "to", to)
}
