package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// versionStatus is what the version test reads of `flotilla status -o json`.
type versionStatus struct {
	MetaLeader     string `json:"metaLeader"`
	ClusterVersion int    `json:"clusterVersion"`
	Nodes          []struct {
		ID                string `json:"id"`
		Version           string `json:"version"`
		Commit            string `json:"commit"`
		MaxClusterVersion int    `json:"maxClusterVersion"`
		Leaders           string `json:"leaders"`
		SheddingLeaders   bool   `json:"sheddingLeaders"`
	} `json:"nodes"`
	Upstreams []struct {
		Group struct {
			Members    []string `json:"members"`
			LeaderNode string   `json:"leaderNode"`
		} `json:"group"`
	} `json:"upstreams"`
}

func pollVersionStatus(ctx context.Context, t *testing.T, n *flotillatest.Node, what string, ok func(versionStatus) string) versionStatus {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	why := ""
	for time.Now().Before(deadline) {
		out, err := n.CLI(ctx, "status", "-o", "json")
		if err == nil {
			var st versionStatus
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("status -o json: %v\n%s", err, out)
			}
			if why = ok(st); why == "" {
				return st
			}
		} else {
			why = err.Error()
		}
		time.Sleep(300 * time.Millisecond)
	}
	table, _ := n.CLI(ctx, "status")
	t.Fatalf("%s: not reached within a minute: %s\n%s", what, why, table)
	return versionStatus{}
}

// Every node reports its release; a new cluster moves to the binary's cluster
// version once, and its nodes then send raft messages in the transport's own frames; `upstream update` (a command of cluster version 2) is idempotent and
// its changes take effect; `node drain --leaders-only` (asked of another node) moves
// every leadership off a node, the metadata's included, and keeps it off while the
// controller runs.
func TestVersionsUpdateAndLeadersOnlyDrain(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var bin struct {
		Version        string `json:"version"`
		Commit         string `json:"commit"`
		ClusterVersion int    `json:"cluster_version"`
	}
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	out, err := nodes[0].CLI(ctx, "version", "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &bin) != nil || bin.Version == "" || bin.ClusterVersion < 2 {
		t.Fatalf("flotilla version -o json: %v\n%s", err, out)
	}
	if line, err := nodes[0].CLI(ctx, "--version"); err != nil || !strings.Contains(line, "flotilla "+bin.Version+" (commit ") {
		t.Fatalf("flotilla --version: %v %q", err, line)
	}
	pollVersionStatus(ctx, t, nodes[0], "every node reports its version and the cluster version moves to the binary's", func(st versionStatus) string {
		if st.ClusterVersion != bin.ClusterVersion || len(st.Nodes) != 3 {
			return fmt.Sprintf("cluster version %d with %d nodes", st.ClusterVersion, len(st.Nodes))
		}
		for _, n := range st.Nodes {
			if n.Version != bin.Version || n.Commit != bin.Commit || n.MaxClusterVersion != bin.ClusterVersion {
				return fmt.Sprintf("node %s reports %s %s %d", n.ID, n.Version, n.Commit, n.MaxClusterVersion)
			}
		}
		return ""
	})
	// From cluster version 6 the nodes send raft messages in Flotilla's own frames;
	// all that follows (an upstream's group, its updates, the drain) rides on them.
	for _, n := range nodes {
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(n.LogGrep("own frames"), "raft messages now sent in Flotilla's own frames"); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("node %d did not switch to the raft transport's own frames at cluster version %d\n%s", n.ID, bin.ClusterVersion, n.LogTail(20))
			}
		}
	}
	defer func() {
		for _, n := range nodes {
			if bad := n.LogGrep("bad raft frame"); bad != "" {
				t.Errorf("node %d rejected raft frames:\n%s", n.ID, bad)
			}
		}
	}()
	if table, _ := nodes[1].CLI(ctx, "status"); !strings.Contains(table, fmt.Sprintf("cluster version %d; every node runs %s", bin.ClusterVersion, bin.Version)) {
		t.Fatalf("status does not show the cluster version and the one release:\n%s", table)
	}
	var dec struct {
		Decisions []string `json:"decisions"`
	}
	if out, err := nodes[0].CLI(ctx, "status", "-o", "json"); err != nil || json.Unmarshal([]byte(out), &dec) != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	moves := 0
	for _, d := range dec.Decisions {
		if strings.Contains(d, fmt.Sprintf("cluster version 1 -> %d", bin.ClusterVersion)) {
			moves++
		}
	}
	if moves != 1 {
		t.Fatalf("the cluster version moved %d times, want once: %v", moves, dec.Decisions)
	}

	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	update := func(args ...string) (changed bool, changes []string) {
		t.Helper()
		out, err := nodes[1].CLI(ctx, append([]string{"upstream", "update", "main", "-o", "json"}, args...)...)
		var r struct {
			Changed bool     `json:"changed"`
			Changes []string `json:"changes"`
		}
		if err != nil || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("upstream update %v: %v\n%s", args, err, out)
		}
		return r.Changed, r.Changes
	}
	if ch, what := update("--replica-user", replicaUser, "--replica-password", replicaPass, "--replicas", "3"); ch {
		t.Fatalf("an update equal to the upstream reported changes: %v", what)
	}
	if ch, what := update("--replica-user", replicaUser, "--replica-password", "new-secret", "--replicas", "2"); !ch || len(what) != 2 {
		t.Fatalf("new password and replica count: changed=%v %v", ch, what)
	}
	if ch, what := update("--replica-user", replicaUser, "--replica-password", "new-secret", "--replicas", "2"); ch {
		t.Fatalf("the same update again reported changes: %v", what)
	}
	if c, err := client.ConnectWithTimeout(nodes[2].MySQLAddr, replicaUser, replicaPass, "", 10*time.Second); err == nil {
		c.Close()
		t.Fatal("the replaced password still logs in")
	}
	c, err := client.ConnectWithTimeout(nodes[2].MySQLAddr, replicaUser, "new-secret", "", 10*time.Second)
	if err != nil {
		t.Fatalf("the new password does not log in: %v", err)
	}
	c.Close()
	pollVersionStatus(ctx, t, nodes[0], "the group shrinks to 2 members", func(st versionStatus) string {
		if len(st.Upstreams) != 1 || len(st.Upstreams[0].Group.Members) != 2 || st.Upstreams[0].Group.LeaderNode == "" {
			return fmt.Sprintf("upstreams %+v", st.Upstreams)
		}
		return ""
	})
	if ch, _ := update("--replicas", "3"); !ch {
		t.Fatal("--replicas 3 changed nothing")
	}
	st := pollVersionStatus(ctx, t, nodes[0], "the group grows back to 3 members with a leader", func(st versionStatus) string {
		if len(st.Upstreams[0].Group.Members) != 3 || st.Upstreams[0].Group.LeaderNode == "" || st.MetaLeader == "" {
			return fmt.Sprintf("members %v, leader %q", st.Upstreams[0].Group.Members, st.Upstreams[0].Group.LeaderNode)
		}
		return ""
	})

	// Shed the metadata leader's leaderships (the metadata group's and the upstream
	// group's if it leads it too), asked of another node, which forwards the call.
	victim := st.MetaLeader
	var via *flotillatest.Node
	for _, n := range nodes {
		if fmt.Sprint(n.ID) != victim {
			via = n
		}
	}
	out, err = via.CLI(ctx, "node", "drain", victim, "--leaders-only", "--for", "60s", "-o", "json")
	if err != nil {
		t.Fatalf("node drain %s --leaders-only: %v\n%s", victim, err, out)
	}
	var shed struct {
		Leaders         string `json:"leaders"`
		SheddingLeaders bool   `json:"sheddingLeaders"`
		Groups          string `json:"groups"`
	}
	if err := json.Unmarshal([]byte(out), &shed); err != nil || shed.Leaders != "0" || !shed.SheddingLeaders || shed.Groups != "1" {
		t.Fatalf("after a leaders-only drain node %s: %v %s", victim, err, out)
	}
	// The controller runs every 2 s: over 5 rounds, nothing is moved back.
	until := time.Now().Add(10 * time.Second)
	for time.Now().Before(until) {
		st := pollVersionStatus(ctx, t, via, "status answers", func(versionStatus) string { return "" })
		if st.MetaLeader == victim || st.Upstreams[0].Group.LeaderNode == victim {
			t.Fatalf("node %s leads again while shedding: metadata leader %s, group leader %s", victim, st.MetaLeader, st.Upstreams[0].Group.LeaderNode)
		}
		time.Sleep(time.Second)
	}
	if out, err := via.CLI(ctx, "node", "drain", victim, "--leaders-only", "--cancel"); err != nil || !strings.Contains(out, "may lead again") {
		t.Fatalf("--cancel: %v %s", err, out)
	}
	if out, _ := via.CLI(ctx, "node", "list"); strings.Contains(out, "shedding") {
		t.Fatalf("node list still shows shedding after --cancel:\n%s", out)
	}
}
