package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// servedFiles fetches every binlog file a node serves from its own replica (the
// upstream serves from any replica) with mariadb-binlog --raw, and returns their
// SHA-256 by name.
func servedFiles(ctx context.Context, t *testing.T, n *flotillatest.Node, user, dir string) map[string]string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "mariadb", "-h", "127.0.0.1", "-P", n.MySQLPort(), "-u", user, "-p"+replicaPass, "-N", "-e", "SHOW BINARY LOGS").CombinedOutput()
	if err != nil {
		t.Fatalf("SHOW BINARY LOGS on node %d: %v\n%s", n.ID, err, out)
	}
	sums := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		dst := filepath.Join(dir, fmt.Sprintf("node%d-", n.ID))
		cmd := exec.CommandContext(ctx, "mariadb-binlog", "--read-from-remote-server", "--raw", "--result-file="+dst,
			"--host", "127.0.0.1", "--port", n.MySQLPort(), "--user", user, "--password="+replicaPass, f[0])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mariadb-binlog --raw %s from node %d: %v\n%s", f[0], n.ID, err, out)
		}
		b, err := os.ReadFile(dst + f[0])
		if err != nil {
			t.Fatal(err)
		}
		sums[f[0]] = fmt.Sprintf("%x (%d bytes)", sha256.Sum256(b), len(b))
	}
	return sums
}

// TestSplitBrain: the process leading a group is frozen (SIGSTOP) for longer than
// the election timeout while its master keeps writing. The others elect a new leader
// whose syncer carries on; when the old leader thaws, fencing rejects whatever its
// syncer still proposes. No replica sees a duplicate, the group holds each master
// transaction exactly once, and every member's served binlog is byte for byte the
// same.
func TestSplitBrain(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	m := startMaster(ctx, t, filepath.Join(dir, "master"))
	u := &clusterUpstream{name: "main", master: m}
	runWorkloads(ctx, t, []*clusterUpstream{u}, 0)
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", m.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--serve-from", "any"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes, "main")
	var frozen *flotillatest.Node
	for _, n := range nodes {
		if n.ID == leader {
			frozen = n
		}
	}
	// The replicas read from the two other nodes, which keep serving their own
	// replicas throughout.
	for k, n := range nodes {
		if n == frozen {
			continue
		}
		r := startReplica(ctx, t, filepath.Join(dir, fmt.Sprintf("replica%d", k)), uint32(100+k))
		changeMaster(ctx, t, r, n, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
		u.replicas = append(u.replicas, r)
	}
	ups := []*clusterUpstream{u}
	runWorkloads(ctx, t, ups, 1)

	// Freeze the leader while the master writes; it stays frozen well past the
	// election timeout (1-2 s: 3 to 5 ticks of 333 ms).
	done := goWorkloads(ctx, ups, 2)
	waitTransactions(ctx, t, m, 2)
	frozen.Signal(syscall.SIGSTOP)
	t.Logf("froze node %d, the group's leader", frozen.ID)
	var newLeader uint64
	others := []*flotillatest.Node{}
	for _, n := range nodes {
		if n != frozen {
			others = append(others, n)
		}
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if l, _ := groupView(ctx, t, others, "main"); l != 0 && l != frozen.ID {
			newLeader = l
			break
		}
	}
	if newLeader == 0 {
		t.Fatal("no new leader while the old one was frozen")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	runWorkloads(ctx, t, ups, 3)
	for k, r := range u.replicas {
		waitCaughtUp(ctx, t, fmt.Sprintf("replica %d while node %d is frozen", k, frozen.ID), m, r, 3*time.Minute)
	}
	frozen.Signal(syscall.SIGCONT)
	runWorkloads(ctx, t, ups, 4)

	want := checksums(ctx, t, m)
	for k, r := range u.replicas {
		waitCaughtUp(ctx, t, fmt.Sprintf("replica %d", k), m, r, 3*time.Minute)
		sameData(t, fmt.Sprintf("replica %d", k), want, checksums(ctx, t, r))
	}
	// Every member holds each master transaction exactly once: its transaction count
	// equals the master's GTID sequence (one domain, one server).
	pos, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	wantTxns := strconv.Itoa(seqOf(pos))
	deadline := time.Now().Add(time.Minute)
	for {
		st := getUpstream(ctx, t, nodes[0], "main").Group
		agree := len(st.MemberStatus) == 3
		for _, ms := range st.MemberStatus {
			agree = agree && ms.Reachable && ms.ExecutedGtid == pos && ms.Transactions == wantTxns
		}
		if agree {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members do not all hold exactly the master's %s transactions (%s): %+v", wantTxns, pos, st.MemberStatus)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// ... and serves byte-identical binlog files.
	var ref map[string]string
	for _, n := range nodes {
		sums := servedFiles(ctx, t, n, replicaUser, dir)
		if ref == nil {
			ref = sums
			continue
		}
		if fmt.Sprint(sums) != fmt.Sprint(ref) {
			t.Fatalf("node %d serves different binlog files than node %d:\n%v\n%v", n.ID, nodes[0].ID, sums, ref)
		}
	}
	if rejected := strings.Count(frozen.LogTail(1_000_000), "rejected"); rejected > 0 {
		t.Logf("the thawed leader's stale proposals rejected by fencing: %d log lines", rejected)
	}
	t.Logf("%d members agree on %d files and %s transactions", len(nodes), len(ref), wantTxns)
}
