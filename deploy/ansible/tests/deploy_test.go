//go:build deploy

// Package tests proves deploy/ansible on this machine (run by run-local.sh, which
// `make test` and `make deploy-test` call): three inventory hosts with their own
// loopback addresses and directories, the script service manager, a real MariaDB
// master and replica.
package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

var hosts = []struct {
	name  string
	id    int
	admin string
}{{"node1", 1, "127.0.2.1:7070"}, {"node2", 2, "127.0.2.2:7070"}, {"node3", 3, "127.0.2.3:7070"}}

const token = "local-test-admin-token-0123456789abcdef" // inventories/local-test

// deployment runs the playbooks against inventories/local-test.
type deployment struct {
	t        *testing.T
	ansible  string // deploy/ansible
	root     string
	master   string
	binary   string
	checksum string
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var recapLine = regexp.MustCompile(`^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)`)

// play runs a playbook and returns each host's recap line and the run's length.
func (d *deployment) play(ctx context.Context, playbook string, args ...string) (map[string]string, string, time.Duration, error) {
	start := time.Now()
	cmd := exec.CommandContext(ctx, "ansible-playbook", append([]string{"-i", "inventories/local-test", "--vault-password-file", "tests/vault-password",
		"playbooks/" + playbook}, args...)...)
	cmd.Dir = d.ansible
	cmd.Env = append(os.Environ(), "ANSIBLE_CONFIG="+filepath.Join(d.ansible, "ansible.cfg"), "ANSIBLE_NOCOLOR=1",
		"FLOTILLA_DEPLOY_ROOT="+d.root, "FLOTILLA_DEPLOY_BINARY="+d.binary, "FLOTILLA_DEPLOY_SHA256="+d.checksum, "FLOTILLA_DEPLOY_MASTER="+d.master)
	out, err := cmd.CombinedOutput()
	recap := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := recapLine.FindStringSubmatch(sc.Text()); m != nil {
			recap[m[1]] = strings.Join(strings.Fields(sc.Text()), " ")
		}
	}
	took := time.Since(start)
	os.WriteFile(filepath.Join(d.root, fmt.Sprintf("%s-%d.log", playbook, start.UnixNano())), out, 0o600)
	return recap, string(out), took, err
}

// mustPlay runs a playbook that must succeed, logging its recap.
func (d *deployment) mustPlay(ctx context.Context, playbook string, args ...string) map[string]string {
	d.t.Helper()
	recap, out, took, err := d.play(ctx, playbook, args...)
	if err != nil {
		d.t.Fatalf("%s %v: %v\n%s", playbook, args, err, tail(out, 60))
	}
	lines := make([]string, 0, len(recap))
	for _, l := range recap {
		lines = append(lines, l)
	}
	sort.Strings(lines)
	d.t.Logf("DEPLOY %s %v took %.1fs:\n  %s", playbook, args, took.Seconds(), strings.Join(lines, "\n  "))
	return recap
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// cli runs a flotilla binary against a node's admin API.
func cli(ctx context.Context, bin, admin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, append([]string{"--admin", admin, "--token", token}, args...)...).CombinedOutput()
	return string(out), err
}

type nodeList struct {
	Nodes []struct {
		ID                string `json:"id"`
		Version           string `json:"version"`
		State             string `json:"state"`
		MaxClusterVersion int    `json:"maxClusterVersion"`
		Groups            string `json:"groups"`
	} `json:"nodes"`
}

type statusOut struct {
	MetaLeader     string   `json:"metaLeader"`
	ClusterVersion int      `json:"clusterVersion"`
	Decisions      []string `json:"decisions"`
}

func buildOld(ctx context.Context, t *testing.T, repo, commit, out string) {
	t.Helper()
	src := filepath.Join(filepath.Dir(out), "old-src")
	run := func(dir string, name string, args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, b)
		}
	}
	// The upgrade starts from an earlier commit of this repository: a shallow clone
	// lacks it; fetch the rest of the history once, or say what is missing.
	if exec.CommandContext(ctx, "git", "-C", repo, "cat-file", "-e", commit+"^{commit}").Run() != nil {
		if b, err := exec.CommandContext(ctx, "git", "-C", repo, "fetch", "--unshallow").CombinedOutput(); err != nil {
			t.Fatalf("the upgrade test builds commit %s (tests/upgrade-from), which this clone lacks, and fetching the history failed: %v\n%s\nclone without --depth", commit, err, b)
		}
	}
	run(repo, "git", "worktree", "add", "--detach", src, commit)
	defer run(repo, "git", "worktree", "remove", "--force", src)
	run(src, "go", "build", "-o", out, "./cmd/flotilla")
}

// TestDeployAndRollingUpgrade deploys a release from before this work, adds an
// upstream declared in group_vars, replicates a real MariaDB replica through it while
// a writer runs, upgrades to HEAD with rolling-upgrade.yml (one node first, to show
// a version-2 command waiting for the others), and checks the upgrade's proofs and
// the idempotence of the playbooks.
func TestDeployAndRollingUpgrade(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	newBin := os.Getenv("FLOTILLA_BIN")
	if newBin == "" {
		t.Fatal("FLOTILLA_BIN must name the binary under test (run-local.sh builds it)")
	}
	wd, _ := os.Getwd()
	ansible := filepath.Dir(wd)
	repo := filepath.Dir(filepath.Dir(ansible))
	root := t.TempDir()
	commitB, err := os.ReadFile(filepath.Join(wd, "upgrade-from"))
	if err != nil {
		t.Fatal(err)
	}
	oldBin := filepath.Join(root, "flotilla-old")
	buildOld(ctx, t, repo, strings.TrimSpace(string(commitB)), oldBin)

	master, err := mariadbtest.Start(ctx, filepath.Join(root, "master"), mariadbtest.Options{ServerID: 1, LogBin: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Stop() })
	if err := master.CreateReplUser(ctx, "flotilla", "up-secret"); err != nil {
		t.Fatal(err)
	}
	nodesRoot := filepath.Join(root, "nodes")
	d := &deployment{t: t, ansible: ansible, root: nodesRoot, master: master.Addr(), binary: newBin, checksum: sha(t, oldBin)}
	os.MkdirAll(nodesRoot, 0o700)
	t.Cleanup(func() {
		for _, name := range []string{"node1", "node2", "node3", "node4"} {
			exec.Command(filepath.Join(nodesRoot, name, "opt", "flotilla-"+name+"ctl"), "stop").Run()
		}
	})

	// A checksum that is not the binary's fails before anything changes.
	if _, out, _, err := d.play(ctx, "site.yml"); err == nil || !strings.Contains(out, "not flotilla_binary_sha256") {
		t.Fatalf("site.yml with a wrong checksum: %v\n%s", err, tail(out, 30))
	}
	if ents, _ := os.ReadDir(nodesRoot); len(ents) != 1 { // the run's own log only
		t.Fatalf("a failed checksum changed the hosts: %v", ents)
	}

	// The old release, deployed and given the upstream.
	d.binary, d.checksum = oldBin, sha(t, oldBin)
	d.mustPlay(ctx, "site.yml")
	recap := d.mustPlay(ctx, "upstreams.yml")
	if !strings.Contains(recap["node1"], "changed=1") {
		t.Fatalf("upstreams.yml did not add the upstream: %v", recap)
	}
	replica, err := mariadbtest.Start(ctx, filepath.Join(root, "replica"), mariadbtest.Options{ServerID: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { replica.Stop() })
	if err := replica.Exec(ctx, "CHANGE MASTER TO MASTER_HOST='127.0.2.2', MASTER_PORT=3307, MASTER_USER='repl', MASTER_PASSWORD='repl-secret', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1"); err != nil {
		t.Fatal(err)
	}
	if err := replica.Exec(ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	if err := master.Exec(ctx, "CREATE DATABASE deploy"); err != nil {
		t.Fatal(err)
	}
	if err := master.Exec(ctx, "CREATE TABLE deploy.t (id INT PRIMARY KEY, at VARCHAR(40))"); err != nil {
		t.Fatal(err)
	}

	// The writer commits a row every 20 ms; the sampler records the replica's lag in
	// rows (what the master acknowledged and the replica does not hold yet).
	wctx, stopWriter := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked, maxLag := 0, 0
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 1; wctx.Err() == nil; i++ {
			if err := master.Exec(wctx, "INSERT INTO deploy.t VALUES (?, ?)", i, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
				if wctx.Err() == nil {
					t.Errorf("write %d: %v", i, err)
				}
				return
			}
			mu.Lock()
			acked = i
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for wctx.Err() == nil {
			mu.Lock()
			a := acked
			mu.Unlock()
			if v, err := replica.QueryValue(wctx, "SELECT COUNT(*) FROM deploy.t"); err == nil {
				n, _ := strconv.Atoi(v)
				mu.Lock()
				maxLag = max(maxLag, a-n)
				mu.Unlock()
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
	if err := replica.WaitFor(ctx, "SELECT COUNT(*) > 10 FROM deploy.t", "1"); err != nil {
		t.Fatalf("the replica does not replicate through the deployed cluster: %v", err)
	}

	// Upgrade one node that does not lead the metadata: the cluster is mixed, and a
	// command of cluster version 2 waits.
	out, err := cli(ctx, newBin, hosts[0].admin, "status", "-o", "json")
	var st statusOut
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	first := hosts[0]
	for _, h := range hosts {
		if strconv.Itoa(h.id) != st.MetaLeader {
			first = h
			break
		}
	}
	upgradeStart := time.Now()
	d.binary, d.checksum = newBin, sha(t, newBin)
	d.mustPlay(ctx, "rolling-upgrade.yml", "--limit", first.name)
	table, _ := cli(ctx, newBin, first.admin, "status")
	if !strings.Contains(table, "MIXED versions") || !strings.Contains(table, "cluster version 1;") {
		t.Fatalf("after upgrading node %d alone, status does not show a mixed cluster at version 1:\n%s", first.id, table)
	}
	if out, err := cli(ctx, newBin, first.admin, "upstream", "update", "main", "--replicas", "2"); err == nil || !strings.Contains(out, "needs cluster version 2") {
		t.Fatalf("upstream update in a mixed cluster: %v\n%s", err, out)
	}
	upRecap, upOut, took, err := d.play(ctx, "rolling-upgrade.yml")
	if err != nil {
		t.Fatalf("rolling-upgrade.yml: %v\n%s", err, tail(upOut, 60))
	}
	t.Logf("DEPLOY rolling-upgrade.yml (the other two nodes) took %.1fs: %v", took.Seconds(), upRecap)
	upgradeEnd := time.Now()
	// The first node found no node able to move its leaderships (all ran the old
	// release); the next ones were moved by the upgraded node(s).
	if n := strings.Count(upOut, "leads no group and keeps"); n != 2 {
		t.Errorf("leaderships moved before %d of the 2 nodes upgraded after the first:\n%s", n, tail(upOut, 80))
	}

	// Every node runs the new release, and the cluster version moved once.
	out, err = cli(ctx, newBin, hosts[1].admin, "node", "list", "-o", "json")
	var nl nodeList
	if err != nil || json.Unmarshal([]byte(out), &nl) != nil {
		t.Fatalf("node list: %v\n%s", err, out)
	}
	ver, _ := exec.Command(newBin, "version", "-o", "json").Output()
	var bi struct {
		Version        string `json:"version"`
		ClusterVersion int    `json:"cluster_version"`
	}
	json.Unmarshal(ver, &bi)
	for _, n := range nl.Nodes {
		if n.Version != bi.Version || n.State != "up" {
			t.Errorf("node %s: version %q state %s, want %s up", n.ID, n.Version, n.State, bi.Version)
		}
	}
	out, _ = cli(ctx, newBin, hosts[2].admin, "status", "-o", "json")
	json.Unmarshal([]byte(out), &st)
	moves := 0
	for _, dec := range st.Decisions {
		if strings.Contains(dec, fmt.Sprintf("cluster version 1 -> %d", bi.ClusterVersion)) {
			moves++
		}
	}
	if st.ClusterVersion != bi.ClusterVersion || moves != 1 {
		t.Fatalf("cluster version %d (moved %d times), want %d once:\n%s", st.ClusterVersion, moves, bi.ClusterVersion, out)
	}
	checkOneDownAtATime(t, filepath.Join(nodesRoot, "supervisor-events.log"), upgradeStart, upgradeEnd)

	// The replica holds exactly what the master acknowledged, with no gap.
	stopWriter()
	wg.Wait()
	want, err := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	if err := replica.WaitFor(ctx, "SELECT @@gtid_slave_pos", want); err != nil {
		t.Fatalf("replica did not reach the master's GTID %s: %v", want, err)
	}
	mrows, _ := master.Query(ctx, "SELECT id, at FROM deploy.t ORDER BY id")
	rrows, _ := replica.Query(ctx, "SELECT id, at FROM deploy.t ORDER BY id")
	// The write cut short by the writer's stop may have committed unacknowledged.
	if len(mrows) < acked || len(mrows) > acked+1 || len(rrows) != len(mrows) {
		t.Fatalf("master holds %d rows (%d acknowledged), replica %d", len(mrows), acked, len(rrows))
	}
	for i := range mrows {
		if strings.Join(mrows[i], ",") != strings.Join(rrows[i], ",") || mrows[i][0] != strconv.Itoa(i+1) {
			t.Fatalf("row %d: master %v, replica %v", i, mrows[i], rrows[i])
		}
	}
	t.Logf("DEPLOY upgrade: %d transactions written during the run, replica lag at most %d rows (%.1f s of writes)", acked, maxLag, float64(maxLag)*0.02)

	// Idempotence: nothing changes on a second run of each playbook.
	for _, p := range []string{"site.yml", "upstreams.yml"} {
		recap := d.mustPlay(ctx, p)
		if len(recap) != len(hosts) {
			t.Errorf("%s: recap of %d hosts, want %d: %v", p, len(recap), len(hosts), recap)
		}
		for h, line := range recap {
			if !strings.Contains(line, "changed=0") || !strings.Contains(line, "failed=0") {
				t.Errorf("%s on an unchanged cluster changed %s: %s", p, h, line)
			}
		}
	}

	// A fourth host joins with add-node.yml, and placement gives it replicas (the
	// two upstreams' six replicas were two per node).
	extra := filepath.Join(root, "node4.yml")
	os.WriteFile(extra, []byte("all:\n  children:\n    flotilla:\n      hosts:\n        node4:\n          flotilla_node_id: 4\n          flotilla_advertise_host: 127.0.2.4\n"), 0o600)
	d.mustPlay(ctx, "add-node.yml", "-i", extra, "--limit", "node4")
	out, err = cli(ctx, newBin, hosts[0].admin, "node", "list", "-o", "json")
	nl = nodeList{}
	if err != nil || json.Unmarshal([]byte(out), &nl) != nil || len(nl.Nodes) != 4 {
		t.Fatalf("node list after add-node.yml: %v\n%s", err, out)
	}
	for _, n := range nl.Nodes {
		if n.ID == "4" && (n.State != "up" || n.Groups == "" || n.Groups == "0") {
			t.Fatalf("node 4 after add-node.yml: %+v", n)
		}
	}
}

var eventLine = regexp.MustCompile(`^(\S+) node=(\d+) (started|stopping|stopped) pid=\d+$`)

// checkOneDownAtATime reads the supervisors' start/stop log: between from and to,
// each node went down (stopping) and up (started) exactly once, and no two were down
// at the same time.
func checkOneDownAtATime(t *testing.T, path string, from, to time.Time) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	down := map[string]time.Time{}
	downs := map[string]int{}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := eventLine.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("%s: unreadable line %q", path, sc.Text())
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || at.Before(from) || at.After(to) {
			continue
		}
		lines = append(lines, sc.Text())
		switch m[3] {
		case "stopping":
			for other, since := range down {
				t.Errorf("node %s went down at %s while node %s was down since %s", m[2], at.Format(time.RFC3339Nano), other, since.Format(time.RFC3339Nano))
			}
			down[m[2]] = at
			downs[m[2]]++
		case "started":
			if since, ok := down[m[2]]; ok {
				t.Logf("DEPLOY node %s down for %.2fs during the upgrade", m[2], at.Sub(since).Seconds())
				delete(down, m[2])
			}
		}
	}
	if len(downs) != 3 || downs["1"] != 1 || downs["2"] != 1 || downs["3"] != 1 || len(down) != 0 {
		t.Fatalf("each node must restart exactly once during the upgrade; events:\n%s", strings.Join(lines, "\n"))
	}
}
