package placement

import (
	"fmt"
	"slices"
	"sort"
)

// The placement controller's decisions are pure functions of a Cluster description,
// so they are tested as tables and every replica of the metadata group would reach
// the same ones. The controller loop (package cluster) builds the description from
// the metadata and the nodes' reports and applies the decisions.
//
// Invariants of a plan:
//   - one change per group per round: a group gains a replica, and loses one only
//     after the newcomer has caught up (add, catch up, remove);
//   - a group changes only while a quorum of its members is up, and a replica is
//     removed only if the members left that are up and caught up still form a
//     quorum of the group's new size;
//   - no node holds two replicas of one group; a group never has more replicas than
//     there are live nodes;
//   - a leader moves only to an up, caught-up member, and at most MaxLeaderMoves
//     leaderships move in a round: off draining nodes first, then off shedding
//     nodes, then to balance them.

// NodeView is the controller's view of one node.
type NodeView struct {
	ID   uint64
	Zone string
	// Up: the node answered within the node-down-after period.
	Up bool
	// Draining: the operator asked to move everything off the node.
	Draining bool
	// ShedLeaders: the node hands its leaderships away before a restart (`node drain
	// --leaders-only`) and takes none; its replicas stay.
	ShedLeaders bool
	// NoNewReplicas: the node cannot store more now (its disk is short of space);
	// its replicas stay where they are.
	NoNewReplicas bool
}

// GroupView is the controller's view of one upstream group.
type GroupView struct {
	ID uint64
	// Replicas is the desired replica count.
	Replicas int
	// Members are the nodes assigned to the group (the desired raft membership).
	Members []uint64
	// Leader is the member leading the group (0: none known).
	Leader uint64
	// CaughtUp holds the members whose replica has everything the leader has.
	CaughtUp map[uint64]bool
}

// ClusterView is everything the controller decides from.
type ClusterView struct {
	Nodes  []NodeView
	Groups []GroupView
}

// DecisionKind says what a decision changes.
type DecisionKind string

// Decision kinds.
const (
	AddReplica     DecisionKind = "add_replica"
	RemoveReplica  DecisionKind = "remove_replica"
	TransferLeader DecisionKind = "transfer_leader"
)

// Decision is one change the controller makes, with the reason it is logged with.
type Decision struct {
	Kind  DecisionKind
	Group uint64
	Node  uint64
	// From is the group's leader a TransferLeader moves the leadership from.
	From   uint64
	Reason string
}

func (d Decision) String() string {
	return fmt.Sprintf("%s group %d node %d: %s", d.Kind, d.Group, d.Node, d.Reason)
}

// planner holds the derived state of one Plan call.
type planner struct {
	nodes   map[uint64]NodeView
	live    []uint64 // up and not draining, ascending
	load    map[uint64]int
	leaders map[uint64]int
	touched map[uint64]bool // groups with a decision this round
	moves   int             // leader transfers decided this round
	out     []Decision
}

// Plan returns the changes to make now.
func Plan(c ClusterView) []Decision {
	p := &planner{nodes: map[uint64]NodeView{}, load: map[uint64]int{}, leaders: map[uint64]int{}, touched: map[uint64]bool{}}
	for _, n := range c.Nodes {
		p.nodes[n.ID] = n
		if n.Up && !n.Draining {
			p.live = append(p.live, n.ID)
		}
	}
	sort.Slice(p.live, func(i, j int) bool { return p.live[i] < p.live[j] })
	groups := slices.Clone(c.Groups)
	sort.Slice(groups, func(i, j int) bool { return groups[i].ID < groups[j].ID })
	for _, g := range groups {
		for _, m := range g.Members {
			p.load[m]++
		}
		if g.Leader != 0 {
			p.leaders[g.Leader]++
		}
	}
	for _, g := range groups {
		p.repair(g)
	}
	if len(p.out) == 0 {
		p.balanceReplicas(groups)
	}
	p.balanceLeaders(groups)
	return p.out
}

func (p *planner) decide(d Decision) {
	p.out = append(p.out, d)
	p.touched[d.Group] = true
	switch d.Kind {
	case AddReplica:
		p.load[d.Node]++
	case RemoveReplica:
		p.load[d.Node]--
	case TransferLeader:
		// Later decisions of the round see the move: a drain's transfers spread,
		// and balancing does not pile onto the node they went to.
		p.leaders[d.From]--
		p.leaders[d.Node]++
		p.moves++
	}
}

// healthy reports whether member m of g may count towards its replicas.
func (p *planner) healthy(m uint64) bool {
	n, ok := p.nodes[m]
	return ok && n.Up && !n.Draining
}

// target is the replica count a group should have now.
func (p *planner) target(g GroupView) int {
	return max(1, min(g.Replicas, len(p.live)))
}

// repair adds missing replicas, replaces those on down or draining nodes and trims
// extra ones.
func (p *planner) repair(g GroupView) {
	var healthy, bad []uint64
	for _, m := range g.Members {
		if p.healthy(m) {
			healthy = append(healthy, m)
		} else {
			bad = append(bad, m)
		}
	}
	// Membership changes commit through the group's current quorum: without one up,
	// nothing can be changed (the group waits for its nodes to come back).
	up := 0
	for _, m := range g.Members {
		if p.nodes[m].Up {
			up++
		}
	}
	if up < len(g.Members)/2+1 {
		return
	}
	// A healthy member still catching up is an add in progress: wait for it.
	for _, m := range healthy {
		if !g.CaughtUp[m] {
			return
		}
	}
	target := p.target(g)
	if len(healthy) < target {
		if n, ok := p.pick(g); ok {
			why := fmt.Sprintf("group has %d healthy replicas of %d", len(healthy), target)
			if len(bad) > 0 {
				why = fmt.Sprintf("replacing the replica on node %d (%s)", bad[0], p.state(bad[0]))
			}
			p.decide(Decision{Kind: AddReplica, Group: g.ID, Node: n, Reason: why})
		}
		return
	}
	// Enough healthy, caught-up members: drop replicas on down or draining nodes
	// (a draining leader hands its leadership over first), then extra ones.
	if len(bad) > 0 {
		b := bad[0]
		if b == g.Leader && p.nodes[b].Up {
			if p.moves == MaxLeaderMoves {
				return // the next round's
			}
			if to, ok := p.leaderTarget(g, false, 0); ok {
				p.decide(Decision{Kind: TransferLeader, Group: g.ID, Node: to, From: b, Reason: fmt.Sprintf("node %d is %s", b, p.state(b))})
			}
			return
		}
		if p.quorumWithout(g, b) {
			p.decide(Decision{Kind: RemoveReplica, Group: g.ID, Node: b, Reason: fmt.Sprintf("node %d is %s and the group has %d healthy replicas", b, p.state(b), len(healthy))})
		}
		return
	}
	if len(g.Members) > target {
		// Trim from the most loaded node; never the leader while another will do.
		cands := slices.Clone(g.Members)
		sort.Slice(cands, func(i, j int) bool {
			if (cands[i] == g.Leader) != (cands[j] == g.Leader) {
				return cands[j] == g.Leader
			}
			if p.load[cands[i]] != p.load[cands[j]] {
				return p.load[cands[i]] > p.load[cands[j]]
			}
			return cands[i] > cands[j]
		})
		if m := cands[0]; m != g.Leader && p.quorumWithout(g, m) {
			p.decide(Decision{Kind: RemoveReplica, Group: g.ID, Node: m, Reason: fmt.Sprintf("group has %d replicas, wants %d", len(g.Members), target)})
		}
	}
}

func (p *planner) state(id uint64) string {
	n, ok := p.nodes[id]
	switch {
	case !ok:
		return "not registered"
	case !n.Up:
		return "down"
	case n.Draining:
		return "draining"
	}
	return "up"
}

// quorumWithout reports whether g keeps a quorum of up, caught-up members once m is
// removed.
func (p *planner) quorumWithout(g GroupView, m uint64) bool {
	size := len(g.Members) - 1
	if size < 1 {
		return false
	}
	good := 0
	for _, x := range g.Members {
		if x != m && p.nodes[x].Up && g.CaughtUp[x] {
			good++
		}
	}
	return good >= size/2+1
}

// pick chooses a live node for a new replica of g: not already a member, in a zone
// the group's members do not cover if possible, then the least loaded, then the
// lowest id.
func (p *planner) pick(g GroupView) (uint64, bool) {
	zones := map[string]bool{}
	for _, m := range g.Members {
		if p.healthy(m) {
			zones[p.nodes[m].Zone] = true
		}
	}
	best, found := uint64(0), false
	better := func(a, b uint64) bool {
		za, zb := !zones[p.nodes[a].Zone], !zones[p.nodes[b].Zone]
		if za != zb {
			return za
		}
		if p.load[a] != p.load[b] {
			return p.load[a] < p.load[b]
		}
		return a < b
	}
	for _, n := range p.live {
		if slices.Contains(g.Members, n) || p.nodes[n].NoNewReplicas {
			continue
		}
		if !found || better(n, best) {
			best, found = n, true
		}
	}
	return best, found
}

// balanceReplicas moves one replica from the most to the least loaded live node when
// they differ by more than one: it adds the replica on the light node; the trim rule
// removes the surplus from the heavy node once the newcomer has caught up.
func (p *planner) balanceReplicas(groups []GroupView) {
	if len(p.live) < 2 {
		return
	}
	heavy, light := p.live[0], uint64(0)
	for _, n := range p.live {
		if p.load[n] > p.load[heavy] {
			heavy = n
		}
		if !p.nodes[n].NoNewReplicas && (light == 0 || p.load[n] < p.load[light]) {
			light = n
		}
	}
	if light == 0 {
		return
	}
	if p.load[heavy]-p.load[light] <= 1 {
		return
	}
	for _, g := range groups {
		if !slices.Contains(g.Members, heavy) || slices.Contains(g.Members, light) || len(g.Members) != p.target(g) {
			continue
		}
		all := true
		for _, m := range g.Members {
			all = all && g.CaughtUp[m] && p.healthy(m)
		}
		if !all {
			continue
		}
		p.decide(Decision{Kind: AddReplica, Group: g.ID, Node: light,
			Reason: fmt.Sprintf("rebalancing: node %d holds %d replicas, node %d holds %d", heavy, p.load[heavy], light, p.load[light])})
		return
	}
}

// MaxLeaderMoves bounds the leaderships a round moves: off draining nodes, off nodes
// that shed them, and to balance them. One per round (every 2 s) took minutes to spread the leaders of a
// thousand new groups, and as long to give a restarted node its share back after a
// rolling upgrade; each move restarts one group's syncer (one reconnection to its
// own master), so a bounded batch keeps the cluster calm.
const MaxLeaderMoves = 16

// balanceLeaders moves leaderships off nodes that shed theirs, then from nodes
// leading more groups to members leading fewer while they differ by more than one:
// up to MaxLeaderMoves a round, and none of a group that changes otherwise this round.
func (p *planner) balanceLeaders(groups []GroupView) {
	for _, shedding := range []bool{true, false} {
		for _, g := range groups {
			if p.moves == MaxLeaderMoves {
				return
			}
			if g.Leader == 0 || p.touched[g.ID] || !p.healthy(g.Leader) || p.nodes[g.Leader].ShedLeaders != shedding {
				continue
			}
			var to uint64
			var ok bool
			var why string
			if shedding {
				to, ok = p.leaderTarget(g, false, 0)
				why = fmt.Sprintf("node %d sheds its leaderships", g.Leader)
			} else {
				to, ok = p.leaderTarget(g, true, p.leaders[g.Leader]-1)
				why = fmt.Sprintf("balancing leaders: node %d leads %d groups, node %d leads %d", g.Leader, p.leaders[g.Leader], to, p.leaders[to])
			}
			if ok {
				p.decide(Decision{Kind: TransferLeader, Group: g.ID, Node: to, From: g.Leader, Reason: why})
			}
		}
	}
}

// leaderTarget picks an up, caught-up, healthy member of g other than its leader,
// leading the fewest groups; with limit, only one leading fewer than below groups.
func (p *planner) leaderTarget(g GroupView, limit bool, below int) (uint64, bool) {
	best, found := uint64(0), false
	for _, m := range g.Members {
		if m == g.Leader || !p.healthy(m) || p.nodes[m].ShedLeaders || !g.CaughtUp[m] || limit && p.leaders[m] >= below {
			continue
		}
		if !found || p.leaders[m] < p.leaders[best] || p.leaders[m] == p.leaders[best] && m < best {
			best, found = m, true
		}
	}
	return best, found
}
