package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// startChained starts a MariaDB replica with its own binary log (log_slave_updates),
// as a promotion candidate is: its binary log holds only what it replicates.
func startChained(ctx context.Context, t *testing.T, dir string, id uint32) *mariadbtest.Server {
	t.Helper()
	r, err := mariadbtest.Start(ctx, dir, mariadbtest.Options{ServerID: id, LogBin: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	// The harness's own setup (root over TCP) is local history: a replica set up
	// from a backup has none.
	if err := r.Exec(ctx, "RESET MASTER"); err != nil {
		t.Fatal(err)
	}
	return r
}

// execAll runs statements on a server, failing the test on the first error.
func execAll(ctx context.Context, t *testing.T, s *mariadbtest.Server, qs ...string) {
	t.Helper()
	for _, q := range qs {
		if err := s.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// waitValue polls a one-value query until it returns want.
func waitValue(ctx context.Context, t *testing.T, s *mariadbtest.Server, what, query string, want func() string) {
	t.Helper()
	var got, w string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got, _ = s.QueryValue(ctx, query)
		if w = want(); got == w {
			return
		}
	}
	st, _ := s.SlaveStatus(ctx)
	t.Fatalf("%s: %s is %q, want %q; slave status %v", what, query, got, w, st)
}

// ids returns the ids of fo.t written by a given server ('a' or 'b').
func ids(ctx context.Context, t *testing.T, s *mariadbtest.Server, by string) map[int]bool {
	t.Helper()
	rows, err := s.Query(ctx, "SELECT id FROM fo.t WHERE v = ?", by)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]bool{}
	for _, r := range rows {
		n, _ := strconv.Atoi(r[0])
		out[n] = true
	}
	return out
}

// TestLosslessFailover: master A acknowledges through Flotilla (semi-sync,
// AFTER_SYNC) while replicas B, C and D follow Flotilla; A is killed mid-write, B
// promoted, and Flotilla switched to B, by `upstream repoint` or by the automatic
// selection among candidates A and B (which waits while B is still read-only). Every
// commit A acknowledged is on B, C and D; C and D, never reconfigured, end equal to
// B, including B's writes as the new master.
func TestLosslessFailover(t *testing.T) {
	mariadbtest.RequireTools(t)
	for _, auto := range []bool{false, true} {
		name := "repoint"
		if auto {
			name = "automatic"
		}
		t.Run(name, func(t *testing.T) { losslessFailover(t, auto) })
	}
}

func losslessFailover(t *testing.T, auto bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	a := startMaster(ctx, t, filepath.Join(dir, "a"))
	execAll(ctx, t, a, "CREATE DATABASE fo", "CREATE TABLE fo.t (id INT PRIMARY KEY, v CHAR(1))",
		"SET GLOBAL rpl_semi_sync_master_wait_point=AFTER_SYNC, rpl_semi_sync_master_timeout=600000, rpl_semi_sync_master_enabled=ON")
	b := startChained(ctx, t, filepath.Join(dir, "b"), 2)
	if auto {
		execAll(ctx, t, b, "SET GLOBAL read_only=ON")
	}
	c := startReplica(ctx, t, filepath.Join(dir, "c"), 3)
	d := startReplica(ctx, t, filepath.Join(dir, "d"), 4)
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	add := []string{"upstream", "add", "main", "--source", a.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass}
	if auto {
		// D, listed before B, can never take over (no binary log): the selection
		// goes on to B.
		add = append(add, "--candidate", a.Addr(), "--candidate", d.Addr(), "--candidate", b.Addr(), "--source-down-after", "2s")
	}
	if out, err := nodes[0].CLI(ctx, add...); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes, "main")
	for deadline := time.Now().Add(time.Minute); semiStatus(ctx, t, a, "clients") != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Flotilla never connected as a semi-sync replica\n%s", nodes[leader-1].LogTail(20))
		}
	}
	// C is a semi-sync replica of Flotilla (its ACKs show in status); D follows
	// Flotilla's own file and position coordinates.
	execAll(ctx, t, c, "SET GLOBAL rpl_semi_sync_slave_enabled=ON")
	changeMaster(ctx, t, b, nodes[0], replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	changeMaster(ctx, t, c, nodes[1], replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	changeMaster(ctx, t, d, nodes[2], replicaUser, replicaPass, "MASTER_USE_GTID=no, MASTER_LOG_FILE='flotilla-bin.000001', MASTER_LOG_POS=4")

	// Write continuously; a commit that returns was acknowledged through Flotilla.
	var mu sync.Mutex
	var acked []int
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for i := 1; ; i++ {
			if err := a.Exec(ctx, "INSERT INTO fo.t VALUES (?, 'a')", i); err != nil {
				return
			}
			mu.Lock()
			acked = append(acked, i)
			mu.Unlock()
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	for deadline := time.Now().Add(time.Minute); count() < 300; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d commits in a minute", count())
		}
	}
	if no := semiStatus(ctx, t, a, "no_tx"); no != 0 {
		t.Fatalf("the master committed %d transactions without a semi-sync ACK", no)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	<-writing
	t.Logf("master A killed after %d acknowledged commits", count())

	// B catches up with what the group holds (as an orchestrator waits before it
	// promotes), then is promoted.
	waitValue(ctx, t, b, "B catches up with the group", "SELECT @@gtid_slave_pos", func() string {
		return getUpstream(ctx, t, nodes[0], "main").Group.ExecutedGtid
	})
	before := getUpstream(ctx, t, nodes[0], "main").Group.CurrentFile
	execAll(ctx, t, b, "STOP SLAVE", "RESET SLAVE ALL")
	if auto {
		// B is not writable yet: the selection refuses it and says so.
		var sel string
		for deadline := time.Now().Add(time.Minute); !strings.Contains(sel, "read_only=ON") || !strings.Contains(sel, d.Addr()+" has binary logging off"); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("status never said why B cannot take over yet (selection %q)", sel)
			}
			sel = getUpstream(ctx, t, nodes[0], "main").Group.SourceSelection
		}
		t.Logf("selection while B is read-only: %s", sel)
		execAll(ctx, t, b, "SET GLOBAL read_only=OFF")
		for deadline := time.Now().Add(time.Minute); getUpstream(ctx, t, nodes[0], "main").Upstream.Source != b.Addr(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the automatic selection never switched to B\n%s", nodes[leader-1].LogGrep("source", "candidate"))
			}
		}
	} else if out, err := nodes[2].CLI(ctx, "upstream", "repoint", "main", "--source", b.Addr()); err != nil {
		t.Fatalf("repoint to B: %v\n%s", err, out)
	}

	// B is the master now; its writes reach C and D through Flotilla.
	for i := 1; i <= 20; i++ {
		if err := b.Exec(ctx, "INSERT INTO fo.t VALUES (?, 'b')", 100000+i); err != nil {
			t.Fatal(err)
		}
	}
	final, err := b.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*mariadbtest.Server{c, d} {
		waitValue(ctx, t, r, "replica follows B through Flotilla", "SELECT @@gtid_slave_pos", func() string { return final })
	}

	mu.Lock()
	defer mu.Unlock()
	want, err := mariadbtest.TableChecksums(ctx, b, "fo")
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*mariadbtest.Server{"B": b, "C": c, "D": d} {
		got := ids(ctx, t, s, "a")
		for _, id := range acked {
			if !got[id] {
				t.Fatalf("%s lacks acknowledged commit %d (of %d)", name, id, len(acked))
			}
		}
		if n := len(ids(ctx, t, s, "b")); n != 20 {
			t.Fatalf("%s has %d of B's 20 writes as the new master", name, n)
		}
		sums, err := mariadbtest.TableChecksums(ctx, s, "fo")
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(sums) != fmt.Sprint(want) {
			t.Fatalf("%s differs from B: %v vs %v", name, sums, want)
		}
	}
	for i, r := range []*mariadbtest.Server{c, d} {
		st, err := r.SlaveStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && (st["Using_Gtid"] != "No" || st["Master_Log_File"] == "flotilla-bin.000001") {
			t.Fatalf("D did not follow file and position across the switch: %s at %s:%s", st["Using_Gtid"], st["Master_Log_File"], st["Read_Master_Log_Pos"])
		}
		if st["Master_Port"] != nodes[i+1].MySQLPort() || st["Slave_SQL_Running"] != "Yes" || st["Last_SQL_Error"] != "" {
			t.Fatalf("replica %d was reconfigured or stopped: port %s (Flotilla's %s), SQL %s %q", i, st["Master_Port"], nodes[i+1].MySQLPort(), st["Slave_SQL_Running"], st["Last_SQL_Error"])
		}
	}
	if on, _ := c.QueryValue(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_SLAVE_STATUS'"); on != "ON" {
		t.Fatalf("C is not a semi-sync replica of Flotilla (Rpl_semi_sync_slave_status %q)", on)
	}
	u := getUpstream(ctx, t, nodes[0], "main")
	semi := 0
	for _, r := range u.Group.Replicas {
		if n, _ := strconv.Atoi(r.SemiSyncAcks); r.SemiSync && n > 0 {
			semi++
		}
	}
	if semi != 1 {
		t.Fatalf("status shows %d semi-sync replicas with ACKs, want 1 (C): %+v", semi, u.Group.Replicas)
	}
	if u.Upstream.Source != b.Addr() || len(u.Upstream.Switches) != 1 || u.Upstream.Switches[0].From != a.Addr() {
		t.Fatalf("status does not record the switch: source %s, switches %+v", u.Upstream.Source, u.Upstream.Switches)
	}
	if wantReason := map[bool]string{false: "repoint", true: "automatic"}[auto]; !strings.Contains(u.Upstream.Switches[0].Reason, wantReason) {
		t.Fatalf("switch reason %q, want it to say %s", u.Upstream.Switches[0].Reason, wantReason)
	}
	if u.Group.CurrentFile == before {
		t.Fatalf("no new served file started at the switch (still %s)", before)
	}
}

// TestRepointRefusesErrantAndMissing: a repoint to a server lacking the group's
// transactions is refused naming them; one to a promoted replica that was written
// to directly before its promotion is refused naming the errant GTID, and goes
// ahead with --force, recorded with a warning in status.
func TestRepointRefusesErrantAndMissing(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	a := startMaster(ctx, t, filepath.Join(dir, "a"))
	b := startChained(ctx, t, filepath.Join(dir, "b"), 2)
	empty := startChained(ctx, t, filepath.Join(dir, "empty"), 3)
	if err := empty.CreateReplUser(ctx, upstreamUser, upstreamPass); err != nil {
		t.Fatal(err)
	}
	fl := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 1)[0]
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", a.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	changeMaster(ctx, t, b, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	execAll(ctx, t, a, "CREATE DATABASE fo", "CREATE TABLE fo.t (id INT PRIMARY KEY, v CHAR(1))", "INSERT INTO fo.t VALUES (1, 'a')")
	groupAt := func() string { return getUpstream(ctx, t, fl, "main").Group.ExecutedGtid }
	waitGroupHolds(ctx, t, fl, a)
	waitValue(ctx, t, b, "B follows", "SELECT @@gtid_slave_pos", groupAt)
	// A write on B itself, before its promotion; A's next transactions follow it.
	execAll(ctx, t, b, "INSERT INTO fo.t VALUES (500, 'x')")
	var errant string
	state, _ := b.QueryValue(ctx, "SELECT @@gtid_binlog_state")
	for _, g := range strings.Split(state, ",") {
		if strings.HasPrefix(g, "0-2-") {
			errant = g
		}
	}
	if errant == "" {
		t.Fatalf("B's direct write has no GTID of its own: %s", state)
	}
	execAll(ctx, t, a, "INSERT INTO fo.t VALUES (2, 'a')", "INSERT INTO fo.t VALUES (3, 'a')")
	waitGroupHolds(ctx, t, fl, a)
	waitValue(ctx, t, b, "B follows", "SELECT @@gtid_slave_pos", groupAt)
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	execAll(ctx, t, b, "STOP SLAVE", "RESET SLAVE ALL")

	last := groupAt()
	out, err := fl.CLICombined(ctx, "upstream", "repoint", "main", "--source", empty.Addr())
	if err == nil || !strings.Contains(out, "lacks GTIDs the group holds: "+last) {
		t.Fatalf("repoint to a server without the group's history: %v\n%s", err, out)
	}
	out, err = fl.CLICombined(ctx, "upstream", "repoint", "main", "--source", b.Addr())
	if err == nil || !strings.Contains(out, "errant GTIDs the group never had: "+errant) || strings.Contains(out, "lacks") {
		t.Fatalf("repoint to B, written to directly (%s): %v\n%s", errant, err, out)
	}
	if u := getUpstream(ctx, t, fl, "main"); u.Upstream.Source != a.Addr() {
		t.Fatalf("a refused repoint changed the source to %s", u.Upstream.Source)
	}
	if out, err := fl.CLI(ctx, "upstream", "repoint", "main", "--source", b.Addr(), "--force"); err != nil {
		t.Fatalf("repoint --force: %v\n%s", err, out)
	}
	execAll(ctx, t, b, "INSERT INTO fo.t VALUES (4, 'b')")
	waitGroupHolds(ctx, t, fl, b)
	u := getUpstream(ctx, t, fl, "main")
	if len(u.Upstream.Switches) != 1 || !u.Upstream.Switches[0].Forced || !strings.Contains(u.Upstream.Switches[0].Warning, errant) {
		t.Fatalf("the forced switch is not recorded with its warning: %+v", u.Upstream.Switches)
	}
	if !strings.Contains(fl.LogGrep("despite"), errant) {
		t.Fatalf("the log does not warn about the forced switch:\n%s", fl.LogTail(20))
	}
}
