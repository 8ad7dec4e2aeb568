package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestIdleGroupWakesWhenItsLeaderDies: an idle group quiesces on every member (no
// heartbeats: dragonboat logs "entered quiesce"), and nothing the test does wakes
// it. Its leader's node is then killed with SIGKILL: the leader watch of the other
// nodes finds it silent and wakes the group, a new leader is elected within
// seconds, and the next write reaches the group. Without the watch the quiesced
// followers would wait for the dead leader forever (until the placement's
// node-down-after, a minute here, moved the group).
func TestIdleGroupWakesWhenItsLeaderDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	m := startMasterWith(ctx, t, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1})
	if err := m.Exec(ctx, "CREATE DATABASE q"); err != nil {
		t.Fatal(err)
	}
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "idle", "--source", m.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	holds := func(n *flotillatest.Node) bool {
		want, err := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		return err == nil && getUpstream(ctx, t, n, "idle").Group.ExecutedGtid == want
	}
	for deadline := time.Now().Add(time.Minute); !holds(nodes[1]) || !holds(nodes[2]); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the group never caught up with the master")
		}
	}
	leader, members := waitLeader(ctx, t, nodes, "idle")
	if len(members) != 3 {
		t.Fatalf("the group has members %v, want all three nodes", members)
	}
	gid, _ := strconv.Atoi(getUpstream(ctx, t, nodes[0], "idle").Upstream.GroupID)
	quiesced := fmt.Sprintf("[%05d:", gid)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		all := true
		for _, n := range nodes {
			all = all && strings.Contains(n.LogGrep("entered quiesce"), quiesced)
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle group %d did not quiesce on every member within a minute", gid)
		}
	}

	nodes[leader-1].Kill()
	killed := time.Now()
	var survivors []*flotillatest.Node
	for _, n := range nodes {
		if n.ID != leader {
			survivors = append(survivors, n)
		}
	}
	var now uint64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if now, _ = groupView(ctx, t, survivors, "idle"); now != 0 && now != leader {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after its leader (node %d) died the quiesced group has no new leader (sees %d)\n%s", leader, now, survivors[0].LogTail(20))
		}
	}
	t.Logf("a new leader (node %d) %v after the leader's node was killed", now, time.Since(killed).Round(100*time.Millisecond))
	if err := m.Exec(ctx, "CREATE TABLE q.t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); !holds(survivors[0]) || !holds(survivors[1]); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the write after the failover did not reach the group\n%s", survivors[0].LogTail(20))
		}
	}
}
