package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// clusterUpstream is one master of the cluster test with its replicas and the nodes
// they are connected to.
type clusterUpstream struct {
	name     string
	master   *mariadbtest.Server
	replicas []*mariadbtest.Server
	via      []int // index into the cluster's nodes, per replica
}

// groupView reads an upstream's group as the nodes that host it report it: the
// leader (0 if none agrees yet) and the members.
func groupView(ctx context.Context, t *testing.T, nodes []*flotillatest.Node, name string) (leader uint64, members []uint64) {
	t.Helper()
	for _, n := range nodes {
		if !n.Running() {
			continue
		}
		u := getUpstream(ctx, t, n, name)
		members = members[:0]
		for _, m := range u.Group.Members {
			id, _ := strconv.ParseUint(m, 10, 64)
			members = append(members, id)
		}
		if id, _ := strconv.ParseUint(u.Group.LeaderNode, 10, 64); id != 0 {
			leader = id
		}
	}
	return leader, members
}

// runWorkloads runs one workload step on every master at once and fails the test
// if any fails. Call it from the test's goroutine; use goWorkloads in the background.
func runWorkloads(ctx context.Context, t *testing.T, ups []*clusterUpstream, step int) {
	t.Helper()
	if err := <-goWorkloads(ctx, ups, step); err != nil {
		t.Fatal(err)
	}
}

// goWorkloads runs one workload step on every master at once in the background; the
// channel yields the first error (or nil) once all are done.
func goWorkloads(ctx context.Context, ups []*clusterUpstream, step int) <-chan error {
	done := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		errs := make(chan error, len(ups))
		for _, u := range ups {
			wg.Add(1)
			go func(u *clusterUpstream) {
				defer wg.Done()
				if _, err := mariadbtest.RunWorkload(ctx, u.master, step); err != nil {
					errs <- fmt.Errorf("%s step %d: %w", u.name, step, err)
				}
			}(u)
		}
		wg.Wait()
		close(errs)
		done <- <-errs
	}()
	return done
}

// waitLeader polls until the nodes agree on a leader of the upstream's group and
// fails the test if none emerges within a minute.
func waitLeader(ctx context.Context, t *testing.T, nodes []*flotillatest.Node, name string) (leader uint64, members []uint64) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if leader, members = groupView(ctx, t, nodes, name); leader != 0 {
			return leader, members
		}
	}
	t.Fatalf("upstream %s's group has no leader after a minute", name)
	return 0, nil
}

// TestClusterEndToEnd: three Flotilla nodes relay four MariaDB masters to two
// replicas each, connected to different nodes: to the group's leader, to followers,
// and to a node that holds no replica of the group (its dump is relayed). The node
// leading the most groups is killed with SIGKILL in the middle of the workload: the
// groups elect new leaders and every replica not connected to the dead node keeps
// replicating; after the node restarts, it catches up and its replicas resume. In the
// end every replica holds exactly the master's data and GTID position.
func TestClusterEndToEnd(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir := t.TempDir()
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	out, err := nodes[2].CLI(ctx, "node", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if !containsAll(out, n.AdminAddr) {
			t.Fatalf("node list on node 3 misses node %d (%s): %s", n.ID, n.AdminAddr, out)
		}
	}

	var ups []*clusterUpstream
	for i := 1; i <= 4; i++ {
		m := startMasterWith(ctx, t, filepath.Join(dir, fmt.Sprintf("master%d", i)), mariadbtest.Options{ServerID: uint32(i), DomainID: uint32(i)})
		ups = append(ups, &clusterUpstream{name: fmt.Sprintf("up%d", i), master: m})
	}
	runWorkloads(ctx, t, ups, 0)
	for i, u := range ups {
		args := []string{"upstream", "add", u.name, "--source", u.master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
			"--replica-user", "repl" + strconv.Itoa(i+1), "--replica-password", replicaPass}
		switch i {
		case 1:
			args = append(args, "--serve-from", "any") // followers serve their own replica
		case 2:
			args = append(args, "--replicas", "2") // one node holds no replica: it relays
		}
		if out, err := nodes[i%3].CLI(ctx, args...); err != nil {
			t.Fatalf("upstream add %s on node %d: %v\n%s", u.name, i%3+1, err, out)
		}
	}
	// Connect each upstream's two replicas to two different nodes; for the upstream
	// with two group members, one replica goes to the node without a member.
	for i, u := range ups {
		u.via = []int{i % 3, (i + 1) % 3}
		if i == 2 {
			_, members := waitLeader(ctx, t, nodes, u.name)
			if len(members) != 2 {
				t.Fatalf("%s was added with 2 replicas but has members %v", u.name, members)
			}
			for k, n := range nodes {
				if !slices.Contains(members, n.ID) {
					u.via[0] = k
				}
			}
			if u.via[1] == u.via[0] {
				u.via[1] = (u.via[0] + 1) % 3
			}
		}
		for k, via := range u.via {
			r := startReplica(ctx, t, filepath.Join(dir, fmt.Sprintf("%s-replica%d", u.name, k)), uint32(100+10*i+k))
			mode := "MASTER_USE_GTID=slave_pos"
			if i == 0 && k == 1 {
				// Flotilla's own coordinates are the same on every node.
				mode = "MASTER_LOG_FILE='flotilla-bin.000001', MASTER_LOG_POS=4, MASTER_USE_GTID=no"
			}
			changeMaster(ctx, t, r, nodes[via], "repl"+strconv.Itoa(i+1), replicaPass, mode)
			u.replicas = append(u.replicas, r)
		}
	}
	runWorkloads(ctx, t, ups, 1)
	// The replica on the node without a member of up3's group is served by a relay.
	relayNode := nodes[ups[2].via[0]]
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(relayNode.LogTail(100000), `msg="relaying a binlog dump" node=`+strconv.Itoa(int(relayNode.ID))+` component=relay upstream=up3`) {
		if time.Now().After(deadline) {
			t.Fatalf("node %d, which holds no replica of up3, never relayed its dump; log:\n%s", relayNode.ID, relayNode.LogTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Kill the node that leads the most groups while every master is writing.
	leads := map[uint64]int{}
	for _, u := range ups {
		l, _ := waitLeader(ctx, t, nodes, u.name)
		leads[l]++
	}
	victim := 0
	for k, n := range nodes {
		if leads[n.ID] > leads[nodes[victim].ID] {
			victim = k
		}
	}
	t.Logf("groups led per node: %v; killing node %d", leads, nodes[victim].ID)
	done := goWorkloads(ctx, ups, 2)
	waitTransactions(ctx, t, ups[0].master, 3)
	nodes[victim].Kill()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	runWorkloads(ctx, t, ups, 3)

	// While the node is down, every replica connected elsewhere catches up, for each
	// group that kept a quorum (a 2-member group that lost one has none).
	for _, u := range ups {
		_, members := groupView(ctx, t, nodes, u.name)
		if slices.Contains(members, nodes[victim].ID) && len(members) < 3 {
			t.Logf("%s: group %v lost its quorum with node %d; checked after the restart", u.name, members, nodes[victim].ID)
			continue
		}
		for k, r := range u.replicas {
			if u.via[k] != victim {
				waitCaughtUp(ctx, t, fmt.Sprintf("%s replica %d (via node %d)", u.name, k, nodes[u.via[k]].ID), u.master, r, 3*time.Minute)
			}
		}
	}
	nodes[victim].Start(ctx)
	runWorkloads(ctx, t, ups, 4)
	for _, u := range ups {
		want := checksums(ctx, t, u.master)
		for k, r := range u.replicas {
			name := fmt.Sprintf("%s replica %d (via node %d)", u.name, k, nodes[u.via[k]].ID)
			waitCaughtUp(ctx, t, name, u.master, r, 3*time.Minute)
			sameData(t, name, want, checksums(ctx, t, r))
		}
	}
	// The restarted node caught up: its replica of every group it hosts holds the
	// master's whole GTID state.
	for _, u := range ups {
		pos, _ := u.master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		_, members := groupView(ctx, t, nodes, u.name)
		if !slices.Contains(members, nodes[victim].ID) {
			continue
		}
		deadline := time.Now().Add(time.Minute)
		for {
			var got string
			for _, m := range getUpstream(ctx, t, nodes[victim], u.name).Group.MemberStatus {
				if m.Node == strconv.FormatUint(nodes[victim].ID, 10) {
					got = m.ExecutedGtid
				}
			}
			if got == pos {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restarted node %d holds %s of %s, the master %s", nodes[victim].ID, got, u.name, pos)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// waitTransactions waits until the master has committed n more transactions than
// when called, so a fault lands in the middle of a workload.
func waitTransactions(ctx context.Context, t *testing.T, m *mariadbtest.Server, n int) {
	t.Helper()
	before, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		cur, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		if seqOf(cur) >= seqOf(before)+n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the master did not commit %d transactions within a minute: the fault would not land mid-workload", n)
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
