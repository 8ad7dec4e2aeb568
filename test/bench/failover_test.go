package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

const (
	benchUser = "flotilla"
	benchPass = "bench-secret"
	replUser  = "repl"
)

// resumeTime commits a marker on the master and returns how long until every replica
// has applied it.
func resumeTime(ctx context.Context, b *testing.B, m *mariadbtest.Server, replicas []*mariadbtest.Server, start time.Time, nodes ...*flotillatest.Node) time.Duration {
	b.Helper()
	if err := m.Exec(ctx, "INSERT INTO bench.marker VALUES (NULL)"); err != nil {
		b.Fatal(err)
	}
	want, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	deadline := time.Now().Add(2 * time.Minute)
	for _, r := range replicas {
		for {
			got, _ := r.QueryValue(ctx, "SELECT @@gtid_slave_pos")
			if got == want {
				break
			}
			if time.Now().After(deadline) {
				for _, n := range nodes {
					b.Logf("node %d:\n%s", n.ID, n.LogGrep("syncer", "leader", "member", "placement", "relay", "dump", "ERROR", "WARN"))
				}
				b.Fatalf("a replica did not resume within 2 minutes (at %s, master %s)", got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(start)
}

func startReplicaOf(ctx context.Context, b *testing.B, dir string, id uint32, port string, user string, args ...string) *mariadbtest.Server {
	b.Helper()
	r, err := mariadbtest.Start(ctx, dir, mariadbtest.Options{ServerID: id, ExtraArgs: args})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Stop() })
	q := fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, MASTER_USE_GTID=slave_pos",
		port, user, benchPass)
	if err := r.Exec(ctx, q); err != nil {
		b.Fatal(err)
	}
	if err := r.Exec(ctx, "START SLAVE"); err != nil {
		b.Fatal(err)
	}
	return r
}

// clusterStatus is what the benches read of `status -o json`.
type clusterStatus struct {
	Decisions []string `json:"decisions"`
	Nodes     []struct {
		Leaders string `json:"leaders"`
	} `json:"nodes"`
	Upstreams []struct {
		Group struct {
			Members     []string `json:"members"`
			RaftMembers []string `json:"raftMembers"`
		} `json:"group"`
	} `json:"upstreams"`
}

// readStatus reads the cluster's status through node n's CLI.
func readStatus(ctx context.Context, n *flotillatest.Node) (clusterStatus, error) {
	var st clusterStatus
	out, err := n.CLI(ctx, "status", "-o", "json")
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status -o json: %w", err)
	}
	return st, nil
}

// complete counts the groups whose replicas (members assigned and raft members) number
// want.
func (st clusterStatus) complete(want int) int {
	n := 0
	for _, u := range st.Upstreams {
		if len(u.Group.Members) == want && len(u.Group.RaftMembers) == want {
			n++
		}
	}
	return n
}

// settle waits until every group has 3 voting members (its assigned ones) and no
// node leads more than one more group than another, so a measurement starts from a
// healthy cluster.
func settle(ctx context.Context, b *testing.B, n *flotillatest.Node, groups int) {
	b.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, err := readStatus(ctx, n)
		if err != nil {
			continue
		}
		healthy := len(st.Upstreams) == groups && st.complete(3) == groups
		total, lo, hi := 0, 1<<30, 0
		for _, x := range st.Nodes {
			l, _ := strconv.Atoi(x.Leaders)
			total, lo, hi = total+l, min(lo, l), max(hi, l)
		}
		if healthy && total == groups && hi-lo <= 1 {
			return
		}
	}
	b.Fatal("the cluster did not settle within 2 minutes")
}

func leaderOf(ctx context.Context, b *testing.B, nodes []*flotillatest.Node, name string) *flotillatest.Node {
	b.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, n := range nodes {
			if !n.Running() {
				continue
			}
			out, err := n.CLI(ctx, "upstream", "get", name)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "Leader:") {
					id, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(l, "Leader:")), 10, 64)
					for _, x := range nodes {
						if x.ID == id && id != 0 {
							return x
						}
					}
				}
			}
		}
	}
	b.Fatal("no leader")
	return nil
}

// BenchmarkFailover measures, on a 3-node cluster, the time from a SIGKILL of a
// group's leader until every replica (connected to the surviving nodes) has applied
// a transaction committed after the kill, for both serving modes. The baseline is the
// same measurement for a replica of the master itself when the master is killed and
// restarted at once: the fastest a plain replica recovers from losing its master's
// process. It also measures how long a replica re-created on a new node takes to
// catch up (from the placement decision until it holds everything), against copying
// the same binlog from the master with mariadb-binlog --raw.
func BenchmarkFailover(b *testing.B) {
	mariadbtest.RequireTools(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := b.TempDir()
	m, err := mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Stop() })
	if err := m.CreateReplUser(ctx, benchUser, benchPass); err != nil {
		b.Fatal(err)
	}
	if err := m.Exec(ctx, "CREATE DATABASE bench"); err != nil {
		b.Fatal(err)
	}
	if err := m.Exec(ctx, "CREATE TABLE bench.marker (id INT AUTO_INCREMENT PRIMARY KEY)"); err != nil {
		b.Fatal(err)
	}
	if _, err := mariadbtest.RunWorkload(ctx, m, 0); err != nil {
		b.Fatal(err)
	}

	// Baseline: a direct replica of the master, master killed and restarted.
	direct := startReplicaOf(ctx, b, filepath.Join(dir, "direct"), 50, strconv.Itoa(m.Port()), benchUser)
	resumeTime(ctx, b, m, []*mariadbtest.Server{direct}, time.Now())
	start := time.Now()
	if err := m.Kill(); err != nil {
		b.Fatal(err)
	}
	m, err = mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true, Port: m.Port()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Stop() })
	baseline := resumeTime(ctx, b, m, []*mariadbtest.Server{direct}, start)
	_ = direct.Exec(ctx, "STOP SLAVE")

	nodes := flotillatest.StartClusterWith(ctx, b, filepath.Join(dir, "flotilla"), 3, func(n *flotillatest.Node) { n.ServeDefaults = true })
	results := map[string]time.Duration{}
	for i, mode := range []string{"leader", "any"} {
		name := "up-" + mode
		user := fmt.Sprintf("%s%d", replUser, i)
		if out, err := nodes[0].CLI(ctx, "upstream", "add", name, "--source", m.Addr(), "--user", benchUser, "--password", benchPass,
			"--replica-user", user, "--replica-password", benchPass, "--serve-from", mode, "--server-id", strconv.Itoa(3000+i)); err != nil {
			b.Fatalf("upstream add: %v\n%s", err, out)
		}
	}
	// Let the controller settle leaderships (one per node at most), then put each
	// upstream's replicas on the nodes that do not lead it.
	settle(ctx, b, nodes[0], 2)
	for i, mode := range []string{"leader", "any"} {
		name := "up-" + mode
		settle(ctx, b, nodes[0], 2) // the previous round's node is back and voting
		lead := leaderOf(ctx, b, nodes, name)
		var replicas []*mariadbtest.Server
		for k, n := range nodes {
			if n != lead {
				replicas = append(replicas, startReplicaOf(ctx, b, filepath.Join(dir, fmt.Sprintf("%s-r%d", name, k)), uint32(100+10*i+k), n.MySQLPort(), fmt.Sprintf("%s%d", replUser, i)))
			}
		}
		resumeTime(ctx, b, m, replicas, time.Now())
		lead = leaderOf(ctx, b, nodes, name)
		start := time.Now()
		lead.Kill()
		results[mode] = resumeTime(ctx, b, m, replicas, start, nodes...)
		lead.Start(ctx)
		for _, r := range replicas {
			_ = r.Exec(ctx, "STOP SLAVE")
		}
	}
	b.ReportMetric(results["leader"].Seconds(), "failover-leader-s")
	b.ReportMetric(results["any"].Seconds(), "failover-any-s")
	fmt.Printf("failover (SIGKILL of the group leader until every replica applied a new transaction):\n")
	fmt.Printf("  serve-from leader: %6.2f s   serve-from any: %6.2f s   baseline (direct replica, master killed and restarted): %6.2f s\n",
		results["leader"].Seconds(), results["any"].Seconds(), baseline.Seconds())
	fmt.Printf("  ratio to baseline: leader %.2fx, any %.2fx\n", results["leader"].Seconds()/baseline.Seconds(), results["any"].Seconds()/baseline.Seconds())

	// Catch-up of a re-created replica: a fourth node joins and the placement
	// controller moves a replica of each group there (rebalancing); the new member
	// catches up by raft snapshot and log.
	for step := 1; step <= 4; step++ {
		if _, err := mariadbtest.RunWorkload(ctx, m, step); err != nil {
			b.Fatal(err)
		}
	}
	want, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	n4 := flotillatest.NewNode(b, filepath.Join(dir, "flotilla", "node4"), 4)
	n4.ServeDefaults = true
	n4.Join = []string{nodes[0].AdminAddr}
	n4.Start(ctx)
	// Wait until node 4 holds a caught-up replica of up-leader (placement moves one
	// there), timing from the moment it is assigned.
	var assigned time.Time
	var caughtUp time.Duration
	for deadline := time.Now().Add(5 * time.Minute); caughtUp == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("node 4 never caught up a replica")
		}
		out, err := nodes[0].CLI(ctx, "upstream", "get", "up-leader")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "node 4") {
				continue
			}
			if assigned.IsZero() {
				assigned = time.Now()
			}
			if strings.Contains(l, want) {
				caughtUp = time.Since(assigned)
			}
		}
	}
	var bytes string
	if out, err := nodes[0].CLI(ctx, "upstream", "get", "up-leader"); err == nil {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "Bytes:") {
				bytes = strings.TrimSpace(strings.TrimPrefix(l, "Bytes:"))
			}
		}
	}
	raw := filepath.Join(dir, "rawcopy") + string(filepath.Separator)
	if err := os.MkdirAll(raw, 0o755); err != nil {
		b.Fatal(err)
	}
	copyStart := time.Now()
	cmd := exec.CommandContext(ctx, "mariadb-binlog", "--read-from-remote-server", "--raw", "--to-last-log", "--result-file="+raw,
		"--host", "127.0.0.1", "--port", strconv.Itoa(m.Port()), "--user", benchUser, "--password="+benchPass, "mariadb-bin.000001")
	rawOut, rawErr := cmd.CombinedOutput()
	copyTime := time.Since(copyStart)
	if rawErr != nil {
		fmt.Printf("  (raw copy baseline failed: %v: %s)\n", rawErr, rawOut)
	}
	b.ReportMetric(caughtUp.Seconds(), "catchup-s")
	fmt.Printf("catch-up of a replica re-created on a new node (%s bytes): %.2f s; baseline mariadb-binlog --raw copy from the master: %.2f s; ratio %.2fx\n",
		bytes, caughtUp.Seconds(), copyTime.Seconds(), caughtUp.Seconds()/copyTime.Seconds())
}
