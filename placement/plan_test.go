package placement

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestPlan runs the cases in testdata/plan. A case describes nodes and groups, then,
// after "----", the decisions expected (kind, group, node; reasons are not compared):
//
//	nodes 1 2@b 3:down 4:drain 5:shed 6:full   (id, @zone, :down, :drain, :shed or :full)
//	group 2 r=3 members=1,2,3 leader=1 behind=3
//	----
//	add_replica 2 4
func TestPlan(t *testing.T) {
	f, err := os.Open("testdata/plan")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var name string
	var view ClusterView
	var want []string
	inWant := false
	line := 0
	run := func() {
		if name == "" {
			return
		}
		var got []string
		for _, d := range Plan(view) {
			got = append(got, fmt.Sprintf("%s %d %d", d.Kind, d.Group, d.Node))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		name, view, want, inWant = "", ClusterView{}, nil, false
	}
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "# "):
			run()
			name = fmt.Sprintf("line %d: %s", line, l[2:])
		case l == "":
		case l == "----":
			inWant = true
		case inWant:
			want = append(want, l)
		case strings.HasPrefix(l, "nodes "):
			for _, f := range strings.Fields(l)[1:] {
				n := nodeSpec{NodeView: NodeView{Up: true}}
				f, n.Down = strings.CutSuffix(f, ":down")
				n.Up = !n.Down
				f, n.Draining = strings.CutSuffix(f, ":drain")
				f, n.ShedLeaders = strings.CutSuffix(f, ":shed")
				if f, n.NoNewReplicas = strings.CutSuffix(f, ":full"); n.NoNewReplicas {
					n.ShedLeaders = true // as the controller sees a node whose disk is short
				}
				f, n.Zone, _ = strings.Cut(f, "@")
				n.ID = mustUint(t, f)
				view.Nodes = append(view.Nodes, n.NodeView)
			}
		case strings.HasPrefix(l, "group "):
			fs := strings.Fields(l)
			g := GroupView{ID: mustUint(t, fs[1]), CaughtUp: map[uint64]bool{}}
			behind := map[uint64]bool{}
			for _, kv := range fs[2:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "r":
					g.Replicas = int(mustUint(t, v))
				case "members":
					for _, m := range strings.Split(v, ",") {
						g.Members = append(g.Members, mustUint(t, m))
					}
				case "leader":
					g.Leader = mustUint(t, v)
				case "behind":
					for _, m := range strings.Split(v, ",") {
						behind[mustUint(t, m)] = true
					}
				default:
					t.Fatalf("line %d: unknown group field %q", line, k)
				}
			}
			for _, m := range g.Members {
				g.CaughtUp[m] = !behind[m]
			}
			view.Groups = append(view.Groups, g)
		default:
			t.Fatalf("line %d: cannot read %q", line, l)
		}
	}
	run()
}

// nodeSpec is a NodeView with the parser's own "down" flag.
type nodeSpec struct {
	NodeView
	Down bool
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return v
}

// ledByNode1 is a cluster of nodes with groups groups of 3 replicas on nodes 1 to 3,
// all caught up and led by node 1, and the groups by id (pointers into the view).
func ledByNode1(groups int, nodes ...NodeView) (ClusterView, map[uint64]*GroupView) {
	view := ClusterView{Nodes: nodes}
	for i := range groups {
		view.Groups = append(view.Groups, GroupView{ID: uint64(i + 2), Replicas: 3, Members: []uint64{1, 2, 3}, Leader: 1,
			CaughtUp: map[uint64]bool{1: true, 2: true, 3: true}})
	}
	byID := map[uint64]*GroupView{}
	for i := range view.Groups {
		byID[view.Groups[i].ID] = &view.Groups[i]
	}
	return view, byID
}

// TestLeadersBalanceInBoundedRounds: a thousand groups all led by one node of three
// (a new cluster's, or a node's back from a restart) are balanced to within one
// leadership, MaxLeaderMoves transfers a round and never more, in as few rounds as
// that allows.
func TestLeadersBalanceInBoundedRounds(t *testing.T) {
	const groups = 1000
	view, byID := ledByNode1(groups, NodeView{ID: 1, Up: true}, NodeView{ID: 2, Up: true}, NodeView{ID: 3, Up: true})
	needed := groups - (groups+2)/3 // node 1 keeps its share
	rounds := 0
	for ; ; rounds++ {
		plan := Plan(view)
		if len(plan) == 0 {
			break
		}
		if rounds == groups {
			t.Fatalf("not balanced after %d rounds", rounds)
		}
		if len(plan) > MaxLeaderMoves {
			t.Fatalf("round %d moves %d leaderships, more than %d", rounds, len(plan), MaxLeaderMoves)
		}
		for _, d := range plan {
			if d.Kind != TransferLeader {
				t.Fatalf("round %d: %s, want only leader transfers", rounds, d)
			}
			byID[d.Group].Leader = d.Node
		}
	}
	led := map[uint64]int{}
	for _, g := range view.Groups {
		led[g.Leader]++
	}
	if lo, hi := min(led[1], led[2], led[3]), max(led[1], led[2], led[3]); hi-lo > 1 {
		t.Fatalf("after %d rounds the nodes lead %v groups: not within one", rounds, led)
	}
	if want := (needed + MaxLeaderMoves - 1) / MaxLeaderMoves; rounds != want {
		t.Fatalf("balanced in %d rounds, want %d (%d moves, %d a round)", rounds, want, needed, MaxLeaderMoves)
	}
	t.Logf("%d rounds to lead %v groups", rounds, led)
}

// TestDrainMovesLeadersInBoundedRounds: a draining node that leads many groups hands
// them over at most MaxLeaderMoves a round, as balancing does, and every group's
// leadership leaves it.
func TestDrainMovesLeadersInBoundedRounds(t *testing.T) {
	const groups = 100
	view, byID := ledByNode1(groups, NodeView{ID: 1, Up: true, Draining: true}, NodeView{ID: 2, Up: true}, NodeView{ID: 3, Up: true}, NodeView{ID: 4, Up: true})
	for round := 0; ; round++ {
		if round == groups {
			t.Fatalf("node 1 still leads groups after %d rounds", round)
		}
		moves := 0
		for _, d := range Plan(view) {
			g := byID[d.Group]
			switch d.Kind {
			case TransferLeader:
				moves++
				g.Leader = d.Node
			case AddReplica: // caught up by the next round
				g.Members = append(g.Members, d.Node)
				g.CaughtUp[d.Node] = true
			case RemoveReplica:
				g.Members = slices.DeleteFunc(g.Members, func(m uint64) bool { return m == d.Node })
			}
		}
		if moves > MaxLeaderMoves {
			t.Fatalf("round %d moves %d leaderships, more than %d", round, moves, MaxLeaderMoves)
		}
		left := 0
		for _, g := range view.Groups {
			if g.Leader == 1 {
				left++
			}
		}
		if left == 0 {
			// A round adds the replacements, then MaxLeaderMoves leave a round.
			if want := 1 + (groups+MaxLeaderMoves-1)/MaxLeaderMoves; round+1 != want {
				t.Fatalf("node 1 handed its leaderships over in %d rounds, want %d", round+1, want)
			}
			return
		}
	}
}
