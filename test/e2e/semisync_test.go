package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// semiStatus reads one of the master's Rpl_semi_sync_master_* counters.
func semiStatus(ctx context.Context, t *testing.T, m *mariadbtest.Server, name string) int {
	t.Helper()
	rows, err := m.Query(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_"+name+"'")
	if err != nil || len(rows) != 1 {
		t.Fatalf("Rpl_semi_sync_master_%s: %v %v", name, rows, err)
	}
	n, _ := strconv.Atoi(rows[0][1])
	return n
}

// TestSemiSyncAcksAfterQuorumCommit: Flotilla is a semi-sync replica of a MariaDB
// master (AFTER_SYNC) and acknowledges a transaction only once the group's raft
// quorum has committed it: with two of three nodes stopped a commit on the master
// waits; once they are back it completes, counted as a semi-sync transaction.
func TestSemiSyncAcksAfterQuorumCommit(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	// Semi-sync on only now: with no semi-sync replica yet, every commit (the users
	// made above too) would wait for the timeout.
	if err := master.Exec(ctx, "SET GLOBAL rpl_semi_sync_master_wait_point=AFTER_SYNC, rpl_semi_sync_master_timeout=600000, rpl_semi_sync_master_enabled=ON"); err != nil {
		t.Fatal(err)
	}
	var metricsAddrs []string
	nodes := flotillatest.StartClusterWith(ctx, t, filepath.Join(dir, "flotilla"), 3, func(n *flotillatest.Node) {
		metricsAddrs = append(metricsAddrs, n.AddMetrics())
	})
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--semi-sync", "on"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes, "main")
	for deadline := time.Now().Add(time.Minute); semiStatus(ctx, t, master, "clients") != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Flotilla never connected as a semi-sync replica\n%s", nodes[leader-1].LogTail(20))
		}
	}
	if err := master.Exec(ctx, "CREATE DATABASE semi"); err != nil {
		t.Fatal(err)
	}
	if err := master.Exec(ctx, "CREATE TABLE semi.t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	yes, no := semiStatus(ctx, t, master, "yes_tx"), semiStatus(ctx, t, master, "no_tx")
	if yes < 2 || no != 0 {
		t.Fatalf("with quorum: yes_tx %d, no_tx %d; want both commits acknowledged", yes, no)
	}

	// No quorum: the two followers stop; the leader's syncer still reads the master.
	var stopped []*flotillatest.Node
	for _, n := range nodes {
		if n.ID != leader {
			n.Kill()
			stopped = append(stopped, n)
		}
	}
	done := make(chan error, 1)
	go func() { done <- master.Exec(ctx, "INSERT INTO semi.t VALUES (2)") }()
	select {
	case err := <-done:
		t.Fatalf("a commit returned (%v) while the group had no quorum: Flotilla acknowledged it before the raft commit", err)
	case <-time.After(5 * time.Second):
	}
	if w := semiStatus(ctx, t, master, "wait_sessions"); w < 1 {
		t.Fatalf("the blocked commit is not waiting for a semi-sync ACK (wait_sessions %d)", w)
	}
	for _, n := range stopped {
		n.Start(ctx)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		rows, _ := master.Query(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
		pos, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		evs, _ := master.Query(ctx, "SHOW BINLOG EVENTS")
		pl, _ := master.Query(ctx, "SELECT id, command, state, info FROM information_schema.processlist")
		t.Logf("binlog: %v\nprocesslist: %v", evs[max(0, len(evs)-8):], pl)
		u := getUpstream(ctx, t, nodes[0], "main")
		el, _ := os.ReadFile(filepath.Join(master.Dir(), "error.log"))
		var logs string
		for _, n := range nodes {
			logs += n.LogGrep("syncer", "semi", "master", "error") + "\n"
		}
		t.Fatalf("the commit never completed after quorum came back: master %v at %s; group %+v\nmaster log:\n%s\nnodes:\n%s", rows, pos, u.Group, el[max(0, len(el)-3000):], logs)
	}
	if y, n := semiStatus(ctx, t, master, "yes_tx"), semiStatus(ctx, t, master, "no_tx"); y != yes+1 || n != 0 {
		t.Fatalf("after quorum: yes_tx %d (was %d), no_tx %d; want the waiting commit acknowledged", y, yes, n)
	}
	waitGroupHolds(ctx, t, nodes[0], master)
	out, err := nodes[0].CLI(ctx, "upstream", "get", "main", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Group struct {
			SemiSync     bool   `json:"semiSync"`
			SemiSyncAcks string `json:"semiSyncAcks"`
		} `json:"group"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if acks, _ := strconv.Atoi(st.Group.SemiSyncAcks); !st.Group.SemiSync || acks < 1 {
		t.Fatalf("status does not show the semi-sync ACKs:\n%s", out)
	}
	// Each acknowledged transaction's time to its ACK is in the leader's histogram
	// (whichever node led when it was sent).
	var count, sum float64
	for _, addr := range metricsAddrs {
		code, body, err := httpGet("http://" + addr + "/metrics")
		if err != nil || code != http.StatusOK {
			t.Fatalf("/metrics of %s: %d %v", addr, code, err)
		}
		c, _ := metricValue(body, "flotilla_semi_sync_ack_seconds_count", `upstream="main"`)
		v, _ := metricValue(body, "flotilla_semi_sync_ack_seconds_sum", `upstream="main"`)
		count, sum = count+c, sum+v
	}
	if count < 1 || sum <= 0 {
		t.Fatalf("flotilla_semi_sync_ack_seconds: %v ACKs timed (sum %v s) on the nodes, want the acknowledged transactions'", count, sum)
	}
}
