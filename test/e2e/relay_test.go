// Package e2e proves replication end to end with real servers: a MariaDB master, a
// Flotilla node (a separate process), and unmodified MariaDB replicas.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

const (
	upstreamUser = "flotilla"
	upstreamPass = "up-secret"
	replicaUser  = "repl"
	replicaPass  = "repl-secret"
)

// startRelayNode starts one Flotilla node under dir with extra serve flags and
// adds master as upstream "main" with the test's replica user.
func startRelayNode(ctx context.Context, t *testing.T, dir string, master *mariadbtest.Server, args ...string) *flotillatest.Node {
	t.Helper()
	fl := flotillatest.NewNode(t, dir, 1)
	fl.Args = args
	fl.Start(ctx)
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	return fl
}

func startMaster(ctx context.Context, t *testing.T, dir string) *mariadbtest.Server {
	t.Helper()
	return startMasterWith(ctx, t, dir, mariadbtest.Options{ServerID: 1, LogBin: true})
}

// startMasterWith starts a master with opt (binlog on) and Flotilla's user on it.
func startMasterWith(ctx context.Context, t *testing.T, dir string, opt mariadbtest.Options) *mariadbtest.Server {
	t.Helper()
	opt.LogBin = true
	m, err := mariadbtest.Start(ctx, dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop() })
	if err := m.CreateReplUser(ctx, upstreamUser, upstreamPass); err != nil {
		t.Fatal(err)
	}
	return m
}

func startReplica(ctx context.Context, t *testing.T, dir string, id uint32) *mariadbtest.Server {
	t.Helper()
	r, err := mariadbtest.Start(ctx, dir, mariadbtest.Options{ServerID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	return r
}

// changeMaster points a MariaDB replica at Flotilla and starts it.
func changeMaster(ctx context.Context, t *testing.T, r *mariadbtest.Server, fl *flotillatest.Node, user, pass, extra string) {
	t.Helper()
	q := fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, %s",
		fl.MySQLPort(), user, pass, extra)
	if err := r.Exec(ctx, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if err := r.Exec(ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
}

// waitCaughtUp polls until the replica's GTID position equals the master's and fails
// with the replica's status if it does not get there.
func waitCaughtUp(ctx context.Context, t *testing.T, name string, m, r *mariadbtest.Server, timeout time.Duration) {
	t.Helper()
	want, err := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	var got string
	for time.Now().Before(deadline) {
		got, _ = r.QueryValue(ctx, "SELECT @@gtid_slave_pos")
		if got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	st, _ := r.SlaveStatus(ctx)
	t.Fatalf("%s did not catch up within %v: gtid_slave_pos=%q, master gtid_binlog_pos=%q; IO=%s SQL=%s IO error=%q SQL error=%q",
		name, timeout, got, want, st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"])
}

func checksums(ctx context.Context, t *testing.T, s *mariadbtest.Server) map[string]string {
	t.Helper()
	c, err := mariadbtest.TableChecksums(ctx, s, mariadbtest.WorkloadDB)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sameData(t *testing.T, name string, want, got map[string]string) {
	t.Helper()
	if len(want) == 0 {
		t.Fatal("master has no tables to compare")
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: table %s: %s on the replica, %s on the master", name, k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s has %d tables, master %d", name, len(got), len(want))
	}
}

// upstreamJSON is what the tests read of `flotilla upstream get NAME -o json`.
type upstreamJSON struct {
	Upstream struct {
		Flavor    string `json:"flavor"`
		Source    string `json:"source"`
		StartGtid string `json:"startGtid"`
		Switches  []struct {
			From    string `json:"from"`
			To      string `json:"to"`
			Reason  string `json:"reason"`
			Forced  bool   `json:"forced"`
			Warning string `json:"warning"`
		} `json:"switches"`
		GroupID string `json:"groupId"`
		Paused  bool   `json:"paused"`
		// SyncerServerID is a JSON number (uint32).
		SyncerServerID json.Number `json:"syncerServerId"`
		AddWarnings    []string    `json:"addWarnings"`
	} `json:"upstream"`
	Group struct {
		ExecutedGtid string `json:"executedGtid"`
		Transactions string `json:"transactions"`
		Bytes        string `json:"bytes"`
		CurrentFile  string `json:"currentFile"`
		// CompressedPlainBytes are the closed files' bytes stored compressed.
		CompressedPlainBytes string `json:"compressedPlainBytes"`
		Syncing              bool   `json:"syncing"`
		Connected            bool   `json:"connected"`
		Reconnects           string `json:"reconnects"`
		// SourceSelection says why no candidate source could take over.
		SourceSelection string   `json:"sourceSelection"`
		LeaderNode      string   `json:"leaderNode"`
		Members         []string `json:"members"`
		MemberStatus    []struct {
			Node         string `json:"node"`
			Transactions string `json:"transactions"`
			ExecutedGtid string `json:"executedGtid"`
			Leader       bool   `json:"leader"`
			Reachable    bool   `json:"reachable"`
		} `json:"memberStatus"`
		Replicas []struct {
			Mode         string `json:"mode"`
			SemiSync     bool   `json:"semiSync"`
			SemiSyncAcks string `json:"semiSyncAcks"`
		} `json:"replicas"`
	} `json:"group"`
}

// getUpstream reads an upstream's status through the CLI, as an operator would.
func getUpstream(ctx context.Context, t *testing.T, fl *flotillatest.Node, name string) upstreamJSON {
	t.Helper()
	out, err := fl.CLI(ctx, "upstream", "get", name, "-o", "json")
	if err != nil {
		table, _ := fl.CLI(ctx, "upstream", "get", name)
		t.Fatalf("%v\n%q", err, table)
	}
	var u upstreamJSON
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatalf("upstream get -o json: %v\n%s", err, out)
	}
	return u
}

// TestRelayEndToEnd: master -> Flotilla -> two replicas (GTID and file/position),
// with a SIGKILL of Flotilla in the middle of the workload.
func TestRelayEndToEnd(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	// History written before Flotilla exists must be copied too.
	total := 0
	st, err := mariadbtest.RunWorkload(ctx, master, 0)
	if err != nil {
		t.Fatal(err)
	}
	total += st.Transactions

	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s\nflotilla log:\n%s", err, out, fl.LogTail(30))
	}

	gtidReplica := startReplica(ctx, t, filepath.Join(dir, "replica-gtid"), 11)
	fileReplica := startReplica(ctx, t, filepath.Join(dir, "replica-file"), 12)
	changeMaster(ctx, t, gtidReplica, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	changeMaster(ctx, t, fileReplica, fl, replicaUser, replicaPass, "MASTER_LOG_FILE='flotilla-bin.000001', MASTER_LOG_POS=4, MASTER_USE_GTID=no")

	for step := 1; step <= 2; step++ {
		st, err := mariadbtest.RunWorkload(ctx, master, step)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Transactions
	}
	// Crash Flotilla in the middle of the workload: writes go on while it is down.
	before, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	done := make(chan error, 1)
	go func() {
		st, err := mariadbtest.RunWorkload(ctx, master, 3)
		total += st.Transactions
		done <- err
	}()
	// Kill once the step has committed a few transactions, so the crash lands mid-workload.
	for i := 0; i < 200; i++ {
		cur, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		if seqOf(cur) >= seqOf(before)+3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	fl.Kill()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fl.Start(ctx)
	st, err = mariadbtest.RunWorkload(ctx, master, 4)
	if err != nil {
		t.Fatal(err)
	}
	total += st.Transactions

	// The master goes away and comes back (same address, new binlog file): the syncer
	// reconnects with backoff and resumes from the group's committed GTID position.
	if err := master.Stop(); err != nil {
		t.Fatal(err)
	}
	master, err = mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true, Port: master.Port()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Stop() })
	st, err = mariadbtest.RunWorkload(ctx, master, 5)
	if err != nil {
		t.Fatal(err)
	}
	total += st.Transactions

	waitCaughtUp(ctx, t, "GTID replica", master, gtidReplica, 3*time.Minute)
	waitCaughtUp(ctx, t, "file/position replica", master, fileReplica, 3*time.Minute)
	want := checksums(ctx, t, master)
	sameData(t, "GTID replica", want, checksums(ctx, t, gtidReplica))
	sameData(t, "file/position replica", want, checksums(ctx, t, fileReplica))

	u := getUpstream(ctx, t, fl, "main")
	masterPos, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if u.Group.ExecutedGtid != masterPos {
		t.Errorf("Flotilla's executed GTID %q differs from the master's %q", u.Group.ExecutedGtid, masterPos)
	}
	if len(u.Group.Replicas) != 2 {
		t.Errorf("status lists %d connected replicas, want 2", len(u.Group.Replicas))
	}
	t.Logf("E2E: %s transactions, %s bytes went through Flotilla (workload committed %d transactions)", u.Group.Transactions, u.Group.Bytes, total)

	if log := fl.LogTail(100000); strings.Contains(log, "not valid UTF-8") {
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "not valid UTF-8") {
				t.Errorf("status held bytes that are not text: %s", l)
			}
		}
	}
	t.Run("heartbeats and SHOW SLAVE HOSTS", func(t *testing.T) {
		// Idle now: heartbeats at the replica's MASTER_HEARTBEAT_PERIOD=1 keep arriving.
		first, _ := gtidReplica.QueryValue(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='SLAVE_RECEIVED_HEARTBEATS'")
		deadline := time.Now().Add(15 * time.Second)
		for {
			n, _ := gtidReplica.QueryValue(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='SLAVE_RECEIVED_HEARTBEATS'")
			if seqOf("x-"+n) >= seqOf("x-"+first)+2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica received no heartbeats in 15s (count %s, was %s)", n, first)
			}
			time.Sleep(200 * time.Millisecond)
		}
		out, err := exec.CommandContext(ctx, "mariadb", "-h", "127.0.0.1", "-P", fl.MySQLPort(), "-u", replicaUser, "-p"+replicaPass,
			"-N", "-e", "SHOW SLAVE HOSTS").CombinedOutput()
		if err != nil {
			t.Fatalf("SHOW SLAVE HOSTS: %v: %s", err, out)
		}
		ids := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				ids[f[0]] = true
			}
		}
		if !ids["11"] || !ids["12"] {
			t.Fatalf("SHOW SLAVE HOSTS lists %q, want server ids 11 and 12", out)
		}
	})
	t.Run("mariadb-binlog reads every served file", func(t *testing.T) {
		checkMariadbBinlog(ctx, t, fl, gtidReplica)
	})
	t.Run("bad input", func(t *testing.T) {
		checkBadInput(ctx, t, dir, master, fl)
		// The other replicas are still served after the bad ones were refused.
		if _, err := mariadbtest.RunWorkload(ctx, master, 6); err != nil {
			t.Fatal(err)
		}
		waitCaughtUp(ctx, t, "GTID replica", master, gtidReplica, time.Minute)
		waitCaughtUp(ctx, t, "file/position replica", master, fileReplica, time.Minute)
	})
}

// checkMariadbBinlog decodes every file Flotilla lists with the stock client tool and
// checks that together they hold every transaction Flotilla received.
func checkMariadbBinlog(ctx context.Context, t *testing.T, fl *flotillatest.Node, any *mariadbtest.Server) {
	host, port := "127.0.0.1", fl.MySQLPort()
	list := exec.CommandContext(ctx, "mariadb", "-h", host, "-P", port, "-u", replicaUser, "-p"+replicaPass, "-N", "-e", "SHOW BINARY LOGS")
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("SHOW BINARY LOGS through the mariadb client: %v\n%s", err, out)
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			files = append(files, f[0])
		}
	}
	if len(files) < 3 {
		t.Fatalf("Flotilla lists %d binlog files, want several (the workload rotates): %q", len(files), out)
	}
	gtidRe := regexp.MustCompile(`(?m)^#.*\bGTID (\d+-\d+-\d+)`)
	seen := map[string]bool{}
	for _, f := range files {
		cmd := exec.CommandContext(ctx, "mariadb-binlog", "--read-from-remote-server", "--host", host, "--port", port,
			"--user", replicaUser, "--password="+replicaPass, f)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mariadb-binlog %s: %v\n%s", f, err, tail(string(out), 20))
		}
		if strings.Contains(string(out), "ERROR") {
			t.Fatalf("mariadb-binlog %s reported an error:\n%s", f, tail(string(out), 20))
		}
		for _, m := range gtidRe.FindAllStringSubmatch(string(out), -1) {
			if seen[m[1]] {
				t.Fatalf("GTID %s appears twice in the served binlog", m[1])
			}
			seen[m[1]] = true
		}
	}
	u := getUpstream(ctx, t, fl, "main")
	if fmt.Sprint(len(seen)) != u.Group.Transactions {
		t.Fatalf("mariadb-binlog decoded %d distinct GTIDs in %d files, Flotilla holds %s transactions", len(seen), len(files), u.Group.Transactions)
	}
	t.Logf("mariadb-binlog decoded %d files with %d transactions", len(files), len(seen))
}

func seqOf(pos string) int {
	var seq int
	fmt.Sscan(pos[strings.LastIndex(pos, "-")+1:], &seq)
	return seq
}

func tail(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// checkBadInput: wrong password, unknown user and a GTID that was never in the binlog
// each get a MySQL error that says what is wrong.
func checkBadInput(ctx context.Context, t *testing.T, dir string, master *mariadbtest.Server, fl *flotillatest.Node) {
	checkOddQueries(ctx, t, fl)
	host, port := "127.0.0.1", fl.MySQLPort()
	for _, c := range []struct {
		name, user, pass, want string
	}{
		{"wrong password", replicaUser, "nope", "Access denied for user 'repl'@'127.0.0.1' (using password: YES)"},
		{"unknown user", "stranger", "x", "Access denied for user 'stranger'@'127.0.0.1' (using password: YES)"},
	} {
		out, err := exec.CommandContext(ctx, "mariadb", "-h", host, "-P", port, "-u", c.user, "-p"+c.pass, "-e", "SHOW MASTER STATUS").CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s: want an error containing %q, got %v: %s", c.name, c.want, err, out)
		}
	}
	if !strings.Contains(fl.LogTail(2000), "no upstream relayed by Flotilla declares this replica user") {
		t.Error("the reason an unknown user was refused must be in the log")
	}
	cur, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	seq := cur[strings.LastIndex(cur, "-")+1:]
	bogus := "0-77-" + seq // a server id that never wrote to this binlog
	r := startReplica(ctx, t, filepath.Join(dir, "replica-bogus"), 13)
	if err := r.Exec(ctx, fmt.Sprintf("SET GLOBAL gtid_slave_pos='%s'", bogus)); err != nil {
		t.Fatal(err)
	}
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := r.SlaveStatus(ctx)
		if err == nil && st["Last_IO_Errno"] == "1236" {
			if !strings.Contains(st["Last_IO_Error"], "GTID "+bogus) || !strings.Contains(st["Last_IO_Error"], "not in this upstream's binlog") {
				t.Errorf("replica asking for %s got: %s", bogus, st["Last_IO_Error"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica asking for a GTID never in the binlog got no 1236 error: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = r.Exec(ctx, "STOP SLAVE")

	// Purge: everything before the current file goes; a replica that needs purged
	// history is told the oldest GTID still available.
	now := getUpstream(ctx, t, fl, "main")
	out, err := fl.CLI(ctx, "upstream", "purge", "main", "--to", now.Group.CurrentFile)
	if err != nil || !strings.Contains(out, "oldest file now "+now.Group.CurrentFile) {
		t.Fatalf("purge to %s: %v: %s", now.Group.CurrentFile, err, out)
	}
	fresh := startReplica(ctx, t, filepath.Join(dir, "replica-fresh"), 14)
	changeMaster(ctx, t, fresh, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	deadline = time.Now().Add(60 * time.Second)
	for {
		st, err := fresh.SlaveStatus(ctx)
		if err == nil && st["Last_IO_Errno"] == "1236" {
			if !strings.Contains(st["Last_IO_Error"], "oldest GTID still available is 0-1-") {
				t.Errorf("replica asking for purged history got: %s", st["Last_IO_Error"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica asking for purged history got no 1236 error: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = fresh.Exec(ctx, "STOP SLAVE")
}
