package adminrpc

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// DefaultShedFor is how long a node takes no leadership after `node drain
// --leaders-only`: long enough for a restart, short enough that a forgotten one
// does not unbalance the cluster for good.
const DefaultShedFor = 120 * time.Second

// UpdateUpstream changes an upstream's replica users or replica count; a request
// that matches the upstream proposes nothing and answers changed = false.
func (s *Server) UpdateUpstream(ctx context.Context, r *adminv1.UpdateUpstreamRequest) (*adminv1.UpdateUpstreamResponse, error) {
	st, u, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	var ch placement.UpstreamChange
	var changes []string
	if r.Replicas < 0 || int(r.Replicas) > len(st.Nodes) {
		return nil, status.Errorf(codes.InvalidArgument, "--replicas %d: the cluster has %d nodes", r.Replicas, len(st.Nodes))
	}
	if r.Replicas > 0 && int(r.Replicas) != u.Replicas {
		ch.Replicas = int(r.Replicas)
		changes = append(changes, fmt.Sprintf("replicas %d -> %d", u.Replicas, r.Replicas))
	}
	if r.SetReplicaUsers {
		if len(r.ReplicaUsers) == 0 {
			return nil, status.Error(codes.InvalidArgument, "keep at least one replica user: replicas could not log in otherwise")
		}
		users, diff, err := mergeReplicaUsers(u.ReplicaUsers, r.ReplicaUsers)
		if err != nil {
			return nil, err
		}
		if len(diff) > 0 {
			ch.ReplicaUsers, changes = users, append(changes, diff...)
		}
	}
	if len(changes) > 0 {
		if err := s.Meta.UpdateUpstream(ctx, r.Name, ch, placement.Note("operator: upstream %s: %v", r.Name, changes)); err != nil {
			return nil, metaErr(err)
		}
		s.Log.Info("upstream updated", "upstream", r.Name, "changes", changes)
		if st, err = s.Meta.Read(ctx); err != nil {
			return nil, metaErr(err)
		}
		u = st.Upstreams[r.Name]
		if u == nil {
			return nil, status.Errorf(codes.NotFound, "upstream %q was removed meanwhile", r.Name)
		}
	}
	return &adminv1.UpdateUpstreamResponse{Upstream: toProto(u), Changed: len(changes) > 0, Changes: changes}, nil
}

// mergeReplicaUsers is the replica users want asks for, keeping the stored entry
// (and its hash) of a user whose password, plugin and TLS requirement are unchanged,
// with a line per difference.
func mergeReplicaUsers(cur []placement.ReplicaUser, want []*adminv1.ReplicaUser) ([]placement.ReplicaUser, []string, error) {
	var out []placement.ReplicaUser
	var diff []string
	for _, w := range want {
		i := slices.IndexFunc(cur, func(c placement.ReplicaUser) bool { return c.User == w.User })
		if i >= 0 {
			plugin, hash := cur[i].Credential()
			wp := w.AuthPlugin
			if wp == "" {
				wp = mysqlauth.Native
			}
			if plugin == wp && cur[i].RequireTLS == w.RequireTls && mysqlauth.CheckClear(plugin, hash, w.Password) {
				out = append(out, cur[i])
				continue
			}
		}
		ru, err := replicaUser(w)
		if err != nil {
			return nil, nil, err
		}
		if slices.ContainsFunc(out, func(o placement.ReplicaUser) bool { return o.User == ru.User }) {
			return nil, nil, status.Errorf(codes.InvalidArgument, "replica user %q is given twice", ru.User)
		}
		out = append(out, ru)
		if i >= 0 {
			diff = append(diff, fmt.Sprintf("replica user %s: new password, plugin or TLS requirement", w.User))
		} else {
			diff = append(diff, fmt.Sprintf("replica user %s added", w.User))
		}
	}
	for _, c := range cur {
		if !slices.ContainsFunc(want, func(w *adminv1.ReplicaUser) bool { return w.User == c.User }) {
			diff = append(diff, fmt.Sprintf("replica user %s removed", c.User))
		}
	}
	return out, diff, nil
}

// ShedLeaders makes node r.Id hand its leaderships away and take none for a while.
// Another node forwards the call to it; a node of a release without ShedLeaders has
// its leaderships moved by transfers asked from here, once (its controller may not
// know to keep them away).
func (s *Server) ShedLeaders(ctx context.Context, r *adminv1.ShedLeadersRequest) (*adminv1.Node, error) {
	id := r.Id
	if id == 0 {
		id = s.NodeID
	}
	d := DefaultShedFor
	if r.Seconds > 0 {
		d = time.Duration(r.Seconds) * time.Second
	}
	if id == s.NodeID {
		if s.Shed == nil {
			return nil, status.Error(codes.Unimplemented, "this node cannot shed its leaderships")
		}
		if err := s.Shed(ctx, d, r.Cancel); err != nil {
			code := codes.FailedPrecondition
			if ctx.Err() != nil {
				code = codes.DeadlineExceeded
			}
			return nil, status.Errorf(code, "node %d could not hand all its leaderships away: %v", id, err)
		}
		return s.nodeNow(ctx, id)
	}
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedHeader)) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d was forwarded a leaders-only drain of node %d", s.NodeID, id)
	}
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, metaErr(err)
	}
	n, ok := st.Nodes[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown node %d (see `flotilla node list`)", id)
	}
	c, err := Dial(n.AdminAddr, s.Auth.Token, s.PeerTLS)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reach node %d: %v", id, err)
	}
	defer c.Close()
	out, err := c.ShedLeaders(metadata.AppendToOutgoingContext(ctx, forwardedHeader, fmt.Sprint(s.NodeID)), r)
	if status.Code(err) != codes.Unimplemented || r.Cancel {
		return out, err
	}
	s.Log.Info("node runs a release without leaders-only drain: moving its leaderships from here", "node", id)
	if err := s.transferAway(ctx, st, id); err != nil {
		return nil, err
	}
	return s.nodeNow(ctx, id)
}

// transferAway moves node id's leaderships (of upstream groups and of the metadata
// group) to caught-up members by asking their leader, until it leads none or ctx
// ends.
func (s *Server) transferAway(ctx context.Context, st *placement.State, id uint64) error {
	if s.Transfer == nil || s.Peers == nil {
		return status.Error(codes.Unimplemented, "this node cannot move leaderships")
	}
	n := st.Nodes[id]
	for {
		reports := s.Peers.Reports(ctx, st.Nodes, reportTimeout)
		view := cluster.BuildView(st, reports, nil, time.Now(), time.Hour)
		led := 0
		for _, g := range view.Groups {
			if g.Leader != id {
				continue
			}
			led++
			for _, m := range g.Members {
				if m != id && g.CaughtUp[m] {
					if err := s.Transfer(ctx, n, g.ID, m); err != nil {
						s.Log.Warn("leadership transfer", "group", g.ID, "from", id, "to", m, "err", err)
					}
					break
				}
			}
		}
		if s.MetaLeader != nil && s.MetaLeader() == id {
			led++
			voters := st.NodeIDs()
			if s.MetaVoters != nil {
				voters = s.MetaVoters(ctx)
			}
			for _, other := range voters {
				if _, up := reports[other]; up && other != id {
					if err := s.Transfer(ctx, n, placement.MetaGroupID, other); err != nil {
						s.Log.Warn("metadata leadership transfer", "from", id, "to", other, "err", err)
					}
					break
				}
			}
		}
		if led == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.Errorf(codes.DeadlineExceeded, "node %d still leads %d groups: %v", id, led, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// nodeNow is node id as `node list` shows it.
func (s *Server) nodeNow(ctx context.Context, id uint64) (*adminv1.Node, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range v.nodes() {
		if n.Id == id {
			return n, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "node %d vanished from the metadata", id)
}
