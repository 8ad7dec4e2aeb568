package placement

import (
	"bufio"
	"fmt"
	"os"
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
