package adminrpc

import (
	"context"
	"slices"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// Peers gathers the other nodes' reports, so any node answers for the whole cluster.
type Peers interface {
	Reports(ctx context.Context, nodes map[uint64]*placement.Node, timeout time.Duration) map[uint64]*clusterv1.NodeReport
}

// reportTimeout bounds how long status waits for a node: a dead node shows as down
// instead of stalling the answer.
const reportTimeout = 2 * time.Second

// LocalGroups describes this node's view of every group it hosts or relays dumps of;
// the node's Cluster service reports it to the others.
func (s *Server) LocalGroups() []*adminv1.GroupStatus {
	st, err := s.Local()
	if err != nil {
		return nil
	}
	var out []*adminv1.GroupStatus
	members := s.Shards.RaftMembers()
	for _, name := range st.UpstreamNames() {
		u := st.Upstreams[name]
		gs := s.upstreamStatus(st, u, members).Group
		if _, hosted := s.Shards.Shard(u.GroupID); hosted || len(gs.Replicas) > 0 {
			out = append(out, gs)
		}
	}
	return out
}

// clusterView is the metadata with every node's report.
type clusterView struct {
	st      *placement.State
	reports map[uint64]*clusterv1.NodeReport
}

func (s *Server) view(ctx context.Context) (*clusterView, error) {
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, metaErr(err)
	}
	return &clusterView{st: st, reports: s.reports(ctx, st)}, nil
}

// group merges the nodes' reports of a group: the leader's view (or, without one,
// a member's) with every member's progress and the replicas connected on every node.
func (v *clusterView) group(u *placement.Upstream, self uint64) *adminv1.GroupStatus {
	members := v.st.Assignments[u.GroupID]
	var base *adminv1.GroupStatus
	var replicas []*adminv1.ConnectedReplica
	var ms []*adminv1.MemberStatus
	for _, id := range members {
		m := &adminv1.MemberStatus{Node: id}
		if rep, ok := v.reports[id]; ok {
			m.Reachable = true
			if g := cluster.GroupOf(rep, u.GroupID); g != nil {
				m.Transactions, m.ExecutedGtid, m.Leader = g.Transactions, g.ExecutedGtid, g.LeaderNode == id
				if m.Leader || base == nil {
					base = g
				}
			}
		}
		ms = append(ms, m)
	}
	ids := make([]uint64, 0, len(v.reports))
	for id := range v.reports {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if g := cluster.GroupOf(v.reports[id], u.GroupID); g != nil {
			replicas = append(replicas, g.Replicas...)
		}
	}
	out := &adminv1.GroupStatus{GroupId: u.GroupID}
	if base != nil {
		out = proto.Clone(base).(*adminv1.GroupStatus)
	}
	out.Members, out.MemberStatus, out.Replicas, out.ReportedBy = members, ms, replicas, self
	sort.Slice(out.Replicas, func(i, j int) bool {
		if out.Replicas[i].Node != out.Replicas[j].Node {
			return out.Replicas[i].Node < out.Replicas[j].Node
		}
		return out.Replicas[i].Addr < out.Replicas[j].Addr
	})
	return out
}

// nodes lists the cluster's nodes with their replica and leader counts and whether
// they answered.
func (v *clusterView) nodes() []*adminv1.Node {
	groups := map[uint64]uint64{}
	for _, nodes := range v.st.Assignments {
		for _, n := range nodes {
			groups[n]++
		}
	}
	leaders := map[uint64]uint64{}
	for id, rep := range v.reports {
		for _, g := range rep.Groups {
			if g.LeaderNode == id {
				leaders[id]++
			}
		}
	}
	var out []*adminv1.Node
	for _, n := range v.st.Nodes {
		state := "down"
		rep, ok := v.reports[n.ID]
		if ok {
			state = "up"
		}
		out = append(out, &adminv1.Node{Id: n.ID, RaftAddr: n.RaftAddr, MysqlAddr: n.MySQLAddr, AdminAddr: n.AdminAddr, Labels: n.Labels,
			Groups: groups[n.ID], Leaders: leaders[n.ID], Draining: n.Draining, State: state,
			Version: n.Version, Commit: n.Commit, MaxClusterVersion: n.Understands(), SheddingLeaders: rep.GetSheddingLeaders(), StorageProblem: rep.GetStorageProblem()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// DrainNode starts moving every replica off a node; `node list` shows the progress.
func (s *Server) DrainNode(ctx context.Context, r *adminv1.NodeRef) (*adminv1.Node, error) {
	if err := s.Meta.SetDraining(ctx, r.Id, true, placement.Note("operator: drain node %d", r.Id)); err != nil {
		return nil, metaErr(err)
	}
	s.Log.Info("node draining", "node", r.Id)
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range v.nodes() {
		if n.Id == r.Id {
			return n, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "node %d vanished from the metadata", r.Id)
}

// RemoveNode forgets a drained node and takes it out of the metadata group.
func (s *Server) RemoveNode(ctx context.Context, r *adminv1.NodeRef) (*adminv1.RemoveNodeResponse, error) {
	if r.Id == s.NodeID {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d cannot remove itself: ask another node (--admin)", r.Id)
	}
	if err := s.Meta.RemoveNode(ctx, r.Id, placement.Note("operator: remove node %d", r.Id)); err != nil {
		return nil, metaErr(err)
	}
	if s.RemoveMetaMember != nil {
		if err := s.RemoveMetaMember(ctx, r.Id); err != nil {
			return nil, status.Errorf(codes.Unavailable, "node %d left the metadata but is still a member of the metadata raft group: %v (retry `flotilla node remove %d`)", r.Id, err, r.Id)
		}
	}
	s.Log.Info("node removed", "node", r.Id)
	return &adminv1.RemoveNodeResponse{}, nil
}

// RotateSecret gives every member a new node key and retires the old ones.
func (s *Server) RotateSecret(ctx context.Context, _ *adminv1.RotateSecretRequest) (*adminv1.RotateSecretResponse, error) {
	if s.Rotate == nil {
		return nil, status.Error(codes.Unimplemented, "this node cannot rotate the cluster's keys")
	}
	gen, nodes, err := s.Rotate(ctx)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "rotate the node key: %v", err)
	}
	s.Log.Info("node key rotated by an operator", "generation", gen, "nodes", nodes)
	return &adminv1.RotateSecretResponse{Generation: gen, Nodes: nodes}, nil
}
