package placement

import (
	"context"
	"fmt"
	"slices"
	"strings"

	sm "github.com/lni/dragonboat/v3/statemachine"
)

// Cluster versions: a node of a newer release may write a command an older node
// cannot read only once every registered node understands it. Each node registers
// the newest cluster version its binary understands (Node.MaxClusterVersion); the
// placement controller moves State.ClusterVersion forward, once, when every node
// reports more; commands of a newer version are refused by the metadata group until
// then. Nodes from before cluster versions existed register none: they count as 1,
// and an unknown command is refused by them too, so a refusal is the same on every
// node and the metadata never diverges.

// BaseClusterVersion is the cluster version of metadata (and nodes) that predate
// cluster versions.
const BaseClusterVersion uint32 = 1

// Understands is the newest cluster version node n's binary understands.
func (n *Node) Understands() uint32 { return max(n.MaxClusterVersion, BaseClusterVersion) }

// Version is the cluster's version: every member understands it, and commands that
// need it are accepted.
func (s *State) Version() uint32 { return max(s.ClusterVersion, BaseClusterVersion) }

// Reachable is the version the cluster can move to now: the newest every registered
// node understands (never below the current one).
func (s *State) Reachable() uint32 {
	v := uint32(0)
	for _, n := range s.Nodes {
		if v == 0 || n.Understands() < v {
			v = n.Understands()
		}
	}
	return max(v, s.Version())
}

// Behind lists the nodes that do not understand version v, for error messages.
func (s *State) Behind(v uint32) string {
	var out []string
	for _, id := range s.NodeIDs() {
		if n := s.Nodes[id]; n.Understands() < v {
			out = append(out, fmt.Sprintf("node %d (%s, understands %d)", id, n.VersionOrUnknown(), n.Understands()))
		}
	}
	return strings.Join(out, ", ")
}

// VersionOrUnknown is the node's release, or what nodes that predate reporting it
// are shown as.
func (n *Node) VersionOrUnknown() string {
	if n.Version == "" {
		return "unknown (before 0.29)"
	}
	return n.Version
}

// NodeIDs returns the registered node ids in order.
func (s *State) NodeIDs() []uint64 {
	ids := make([]uint64, 0, len(s.Nodes))
	for id := range s.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// needs is the cluster version each command kind needs (1 for those every release
// reads).
func needs(op string) uint32 {
	switch op {
	case opUpdateUpstream:
		return 2
	}
	return BaseClusterVersion
}

// gate refuses a command the cluster's version does not allow yet.
func (s *State) gate(op string) (sm.Result, bool) {
	need := needs(op)
	if need <= s.Version() {
		return sm.Result{}, true
	}
	return refuse("%s needs cluster version %d and the cluster is at %d: it moves forward once every node runs a release that understands %d (still behind: %s; see `flotilla status`)",
		op, need, s.Version(), need, s.Behind(need)), false
}

// register adds or updates a node; a binary that cannot read the cluster's version
// is refused (it would misread the metadata).
func (s *State) register(n *Node) sm.Result {
	if n == nil || n.ID == 0 || n.ID > MaxNodeID {
		return refuse("node id must be between 1 and %d", MaxNodeID)
	}
	if n.Understands() < s.Version() {
		return refuse("node %d runs %s, which understands cluster versions up to %d, and the cluster is at %d: install a release that understands %d (downgrades below the cluster version are not possible)",
			n.ID, n.VersionOrUnknown(), n.Understands(), s.Version(), s.Version())
	}
	if cur, ok := s.Nodes[n.ID]; ok {
		n.Draining = cur.Draining // a restart with new addresses or labels keeps draining
	}
	s.Nodes[n.ID] = n
	return sm.Result{Value: resultOK}
}

// setClusterVersion moves the cluster version forward to c.ClusterVersion. The
// command carries what each node's running binary understands, as the proposer saw
// it in the nodes' reports, and the decision depends on nothing else: a node's own
// record of the others may lack what a snapshot from an older release dropped, and
// every member must decide alike. The carried figures replace the recorded ones.
func (s *State) setClusterVersion(c command) sm.Result {
	v := c.ClusterVersion
	if v <= s.Version() {
		return refuse("the cluster is already at version %d (asked for %d)", s.Version(), v)
	}
	if len(c.Versions) != len(s.Nodes) {
		return refuse("cluster version %d was proposed seeing %d nodes; the cluster has %d", v, len(c.Versions), len(s.Nodes))
	}
	for id := range s.Nodes {
		got, ok := c.Versions[id]
		if !ok {
			return refuse("cluster version %d was proposed without node %d's report", v, id)
		}
		if got < v {
			return refuse("cluster version %d is not understood by node %d (it understands %d): upgrade it first", v, id, got)
		}
	}
	for id, n := range s.Nodes {
		n.MaxClusterVersion = c.Versions[id]
	}
	s.ClusterVersion = v
	s.note(c.Note) // the proposer's (apply must not read the clock)
	return sm.Result{Value: resultOK}
}

// UpstreamChange is what `upstream update` may change on an existing upstream.
type UpstreamChange struct {
	// ReplicaUsers, when not nil, replaces the replica logins.
	ReplicaUsers []ReplicaUser `json:"replica_users,omitempty"`
	// Replicas, when not 0, is the group's new replica count; the placement
	// controller adds or removes members to match.
	Replicas int `json:"replicas,omitempty"`
}

// updateUpstream applies an UpstreamChange (cluster version 2).
func (s *State) updateUpstream(c command) sm.Result {
	u, ok := s.Upstreams[c.Name]
	if !ok {
		return notFound("unknown upstream %q (see `flotilla upstream list`)", c.Name)
	}
	ch := c.Change
	if ch == nil {
		return refuse("no change given for upstream %q", c.Name)
	}
	if ch.Replicas < 0 || ch.Replicas > len(s.Nodes) {
		return refuse("upstream %q: %d replicas asked, the cluster has %d nodes", c.Name, ch.Replicas, len(s.Nodes))
	}
	if ch.ReplicaUsers != nil {
		seen := map[string]bool{}
		for _, r := range ch.ReplicaUsers {
			if r.User == "" || seen[r.User] {
				return refuse("upstream %q: replica user %q is empty or given twice", c.Name, r.User)
			}
			seen[r.User] = true
		}
		u.ReplicaUsers = slices.Clone(ch.ReplicaUsers)
	}
	if ch.Replicas > 0 {
		u.Replicas = ch.Replicas
	}
	s.note(c.Note)
	return sm.Result{Value: resultOK}
}

// SetClusterVersion moves the cluster version forward to v (the controller does,
// once every node reports that its running binary understands v; running holds
// those reports).
func (s *Service) SetClusterVersion(ctx context.Context, v uint32, running map[uint64]uint32, note string) error {
	_, err := s.propose(ctx, command{Op: opSetClusterVersion, ClusterVersion: v, Versions: running, Note: note})
	return err
}

// UpdateUpstream changes an existing upstream's replica users or replica count.
func (s *Service) UpdateUpstream(ctx context.Context, name string, ch UpstreamChange, note string) error {
	_, err := s.propose(ctx, command{Op: opUpdateUpstream, Name: name, Change: &ch, Note: note})
	return err
}
