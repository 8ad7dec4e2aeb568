package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// statusJSON is what the placement test reads of `flotilla status -o json`
// (protojson: 64-bit numbers are strings, zero values are left out).
type statusJSON struct {
	Nodes []struct {
		ID       string `json:"id"`
		State    string `json:"state"`
		Groups   string `json:"groups"`
		Leaders  string `json:"leaders"`
		Draining bool   `json:"draining"`
	} `json:"nodes"`
	Upstreams []struct {
		Upstream struct {
			Name string `json:"name"`
		} `json:"upstream"`
		Group struct {
			Members     []string `json:"members"`
			RaftMembers []string `json:"raftMembers"`
			LeaderNode  string   `json:"leaderNode"`
		} `json:"group"`
	} `json:"upstreams"`
	Decisions []string `json:"decisions"`
}

func num(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// waitStatus polls status on node n until ok accepts it, and fails with the last
// status and why it was not accepted.
func waitStatus(ctx context.Context, t *testing.T, n *flotillatest.Node, timeout time.Duration, what string, ok func(statusJSON) string) statusJSON {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var why, raw string
	for time.Now().Before(deadline) {
		out, err := n.CLI(ctx, "status", "-o", "json")
		if err == nil {
			var st statusJSON
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("status -o json: %v\n%s", err, out)
			}
			if why = ok(st); why == "" {
				return st
			}
			raw = out
		} else {
			why = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	table, _ := n.CLI(ctx, "status")
	t.Fatalf("%s: not reached within %v: %s\n%s\n%s", what, timeout, why, table, raw)
	return statusJSON{}
}

// spread checks that every group has want members, none on the excluded nodes, and
// that the live nodes' replica and leader counts are within one of each other.
func spread(want int, excluded ...string) func(statusJSON) string {
	return func(st statusJSON) string {
		for _, u := range st.Upstreams {
			if len(u.Group.Members) != want {
				return fmt.Sprintf("%s has members %v, want %d", u.Upstream.Name, u.Group.Members, want)
			}
			if u.Group.LeaderNode == "" {
				return fmt.Sprintf("%s has no leader", u.Upstream.Name)
			}
			// The raft voters are the assigned members: every newcomer was promoted
			// from observer and every departed member removed.
			voters := slices.Clone(u.Group.RaftMembers)
			members := slices.Clone(u.Group.Members)
			slices.Sort(voters)
			slices.Sort(members)
			if !slices.Equal(voters, members) {
				return fmt.Sprintf("%s has voters %v, members %v", u.Upstream.Name, voters, members)
			}
			for _, m := range u.Group.Members {
				for _, x := range excluded {
					if m == x {
						return fmt.Sprintf("%s still has a member on node %s", u.Upstream.Name, x)
					}
				}
			}
		}
		minG, maxG, minL, maxL := 1<<30, -1, 1<<30, -1
		for _, n := range st.Nodes {
			skip := n.State != "up" || n.Draining
			for _, x := range excluded {
				skip = skip || n.ID == x
			}
			if skip {
				continue
			}
			minG, maxG = min(minG, num(n.Groups)), max(maxG, num(n.Groups))
			minL, maxL = min(minL, num(n.Leaders)), max(maxL, num(n.Leaders))
		}
		if maxG-minG > 1 || maxL-minL > 1 {
			return fmt.Sprintf("replicas per node %d..%d, leaders per node %d..%d", minG, maxG, minL, maxL)
		}
		return ""
	}
}

// TestClusterPlacement: a fourth node joins and replicas and leaders rebalance to
// within one; a node stopped past --node-down-after has its replicas re-created on
// the others; a drained node ends empty while replicas keep streaming, and only then
// can it be removed. Replicas connected through the nodes involved lose nothing.
func TestClusterPlacement(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{"--node-down-after", "4s"}
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3, args...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("node %d log (membership lines):\n%s", n.ID, n.LogGrep("placement", "member", "group replica", "no longer assigned"))
			}
		}
	})

	var ups []*clusterUpstream
	for i := 1; i <= 3; i++ {
		m := startMasterWith(ctx, t, filepath.Join(dir, fmt.Sprintf("master%d", i)), mariadbtest.Options{ServerID: uint32(i), DomainID: uint32(i)})
		u := &clusterUpstream{name: fmt.Sprintf("up%d", i), master: m}
		if out, err := nodes[0].CLI(ctx, "upstream", "add", u.name, "--source", m.Addr(), "--user", upstreamUser, "--password", upstreamPass,
			"--replica-user", "repl"+strconv.Itoa(i), "--replica-password", replicaPass); err != nil {
			t.Fatalf("upstream add %s: %v\n%s", u.name, err, out)
		}
		// Every replica is connected to node 1, which is never stopped or drained.
		r := startReplica(ctx, t, filepath.Join(dir, u.name+"-replica"), uint32(100+i))
		changeMaster(ctx, t, r, nodes[0], "repl"+strconv.Itoa(i), replicaPass, "MASTER_USE_GTID=slave_pos")
		u.replicas, u.via = []*mariadbtest.Server{r}, []int{0}
		ups = append(ups, u)
	}
	runWorkloads(ctx, t, ups, 0)
	runWorkloads(ctx, t, ups, 1)

	// A fourth node joins: replica and leader counts rebalance to within one.
	n4 := flotillatest.NewNode(t, filepath.Join(dir, "flotilla", "node4"), 4)
	n4.Join, n4.Args = []string{nodes[1].AdminAddr}, args
	n4.Start(ctx)
	nodes = append(nodes, n4)
	done := goWorkloads(ctx, ups, 2)
	waitStatus(ctx, t, n4, 3*time.Minute, "rebalance after node 4 joined", func(st statusJSON) string {
		for _, n := range st.Nodes {
			if n.ID == "4" && num(n.Groups) == 0 {
				return "node 4 holds no replica yet"
			}
		}
		return spread(3)(st)
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Node 3 stops for longer than --node-down-after: its replicas are re-created on
	// the other three nodes.
	nodes[2].Kill()
	done = goWorkloads(ctx, ups, 3)
	waitStatus(ctx, t, nodes[0], 3*time.Minute, "re-replication after node 3 went down", spread(3, "3"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Node 2 drains: `node remove` is refused while it holds replicas; it ends empty
	// while the workload runs, and can be removed then.
	if out, err := nodes[0].CLI(ctx, "node", "remove", "2"); err == nil || !strings.Contains(err.Error(), "still holds replicas") {
		t.Fatalf("removing an undrained node must be refused naming its replicas: %v %s", err, out)
	}
	nodes[2].Start(ctx) // node 3 comes back empty and takes replicas again
	if out, err := nodes[0].CLI(ctx, "node", "drain", "2"); err != nil {
		t.Fatalf("node drain 2: %v %s", err, out)
	}
	done = goWorkloads(ctx, ups, 4)
	st := waitStatus(ctx, t, nodes[0], 3*time.Minute, "drain of node 2", func(st statusJSON) string {
		for _, n := range st.Nodes {
			if n.ID == "2" && (num(n.Groups) > 0 || num(n.Leaders) > 0) {
				return fmt.Sprintf("node 2 still holds %s replicas and leads %s groups", n.Groups, n.Leaders)
			}
		}
		return spread(3, "2")(st)
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out, err := nodes[0].CLI(ctx, "node", "remove", "2"); err != nil {
		t.Fatalf("node remove 2 after the drain: %v %s", err, out)
	}
	nodes[1].Kill()
	t.Logf("placement decisions: %d; the latest: %s", len(st.Decisions), st.Decisions[len(st.Decisions)-1])

	runWorkloads(ctx, t, ups, 5)
	for _, u := range ups {
		waitCaughtUp(ctx, t, u.name+" replica", u.master, u.replicas[0], 3*time.Minute)
		sameData(t, u.name+" replica", checksums(ctx, t, u.master), checksums(ctx, t, u.replicas[0]))
	}
	out, err := nodes[0].CLI(ctx, "node", "list", "-o", "json")
	if err != nil || strings.Contains(out, nodes[1].AdminAddr) {
		t.Fatalf("node 2 is still listed after its removal: %v\n%s", err, out)
	}
}
