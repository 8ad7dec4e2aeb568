package e2e

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// lockedBuffer collects a client library's log lines from its goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMySQLGroup starts the test master on the recorded MySQL binlogs and a node with
// a MySQL-flavored port (announcing the master's own version), adds the master as
// upstream mysql8 and waits until the group holds all of it. It returns the port's
// address.
func startMySQLGroup(ctx context.Context, t *testing.T) (*mysqlmaster.Master, *flotillatest.Node, string) {
	t.Helper()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	fl := flotillatest.NewNode(t, filepath.Join(t.TempDir(), "flotilla"), 1)
	mysqlAddr := fl.AddMySQLFlavorPort("")
	fl.Start(ctx)
	if _, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatal(err)
	}
	waitMySQLHolds(ctx, t, fl, "mysql8", mysqlSet(t, mysqlmaster.FixtureUUID+":1-309"))
	return master, fl, mysqlAddr
}

// waitMySQLHolds polls until upstream name's group holds want.
func waitMySQLHolds(ctx context.Context, t *testing.T, fl *flotillatest.Node, name string, want binlog.MySQLSet) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		got := getUpstream(ctx, t, fl, name).Group.ExecutedGtid
		if s, err := binlog.ParseMySQLSet(got); err == nil && s.ContainsSet(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group holds %q, want %s\n%s", got, want, fl.LogTail(30))
		}
	}
}

// TestGoMySQLWithoutFlavor: go-mysql's BinlogSyncer left at its default flavor on a
// node's MySQL-flavored port. The greeting is MySQL's (go-mysql checks it and would
// log "misconfigured flavor" for a MariaDB one), every transaction arrives byte for
// byte, and a SIGKILL of the serving node mid-stream followed by a resume from the
// replica's GTID set loses and repeats nothing.
func TestGoMySQLWithoutFlavor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	master, fl, mysqlAddr := startMySQLGroup(ctx, t)
	recorded := recordedTxns(t, master)
	uuid := mysqlmaster.FixtureUUID

	c, err := client.Connect(mysqlAddr, replicaUser, replicaPass, "")
	if err != nil {
		t.Fatal(err)
	}
	// The greeting precedes the login that names the upstream: it says the port's
	// default MySQL version; after the login the master's own version answers.
	if v := c.GetServerVersion(); strings.Contains(v, "MariaDB") || !strings.HasPrefix(v, "8.") {
		t.Fatalf("the MySQL port greets with %q, want a MySQL 8 version", v)
	}
	r, err := c.Execute("SELECT VERSION(), @@version_comment")
	if err != nil {
		t.Fatal(err)
	}
	version, _ := r.GetString(0, 0)
	comment, _ := r.GetString(0, 1)
	if want := "8.0.36"; version != want || !strings.Contains(comment, "MySQL") {
		t.Fatalf("on the MySQL port VERSION() is %q (the master's: %q), @@version_comment %q", version, want, comment)
	}
	c.Close()

	var logs lockedBuffer
	_, portStr, _ := strings.Cut(mysqlAddr, ":")
	port, _ := strconv.Atoi(portStr)
	defaults := func(cfg *replication.BinlogSyncerConfig) {
		cfg.Flavor, cfg.Port = "", uint16(port)
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}
	r1 := startMySQLReplica(t, fl, binlog.MySQLSet{}, defaults)
	r1.until(ctx, mysqlSet(t, uuid+":1-200"))
	fl.Kill()
	fl.Start(ctx)
	// Whatever r1 had read when the node died is its state; it resumes from there.
	r2 := startMySQLReplica(t, fl, r1.Executed, defaults)
	all := mysqlSet(t, uuid+":1-309")
	r2.until(ctx, all) // fails on a transaction r1 had (received twice)
	for id, tx := range r2.Txns {
		r1.Txns[id] = tx
	}
	r1.Order = append(r1.Order, r2.Order...)
	r1.Executed = r2.Executed
	checkRecorded(t, r1, recorded, 0)
	if strings.Contains(logs.String(), "misconfigured flavor") {
		t.Fatalf("go-mysql took the MySQL port for MariaDB:\n%s", logs.String())
	}
}

// mariaTxns reads with go-mysql's BinlogSyncer in the MariaDB flavor (as configured
// by its user) from addr by GTID position from, and returns want whole transactions
// keyed in order by GTID, their events with log_pos and checksum masked (a served
// file's own).
func mariaTxns(ctx context.Context, t *testing.T, addr, user, password, from string, want int) (ids []string, txns [][]byte) {
	t.Helper()
	host, portStr, _ := strings.Cut(addr, ":")
	port, _ := strconv.Atoi(portStr)
	bs := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 7301, Flavor: "mariadb", Host: host, Port: uint16(port), User: user, Password: password,
		RawModeEnabled: true, HeartbeatPeriod: 300 * time.Millisecond, DisableRetrySync: true,
		Logger: slog.New(slog.DiscardHandler),
	})
	defer bs.Close()
	set, err := gomysql.ParseMariadbGTIDSet(from)
	if err != nil {
		t.Fatal(err)
	}
	s, err := bs.StartSyncGTID(set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var cur *binlog.GTIDEvent
	var buf []byte
	for len(ids) < want {
		e, err := s.GetEvent(ctx)
		if err != nil {
			t.Fatalf("%s: after %d transactions: %v", addr, len(ids), err)
		}
		ev := bytes.Clone(e.RawData)
		if ev[4] == binlog.MariaGTIDEvent {
			g, err := binlog.ParseGTIDEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			cur, buf = &g, nil
		}
		if cur == nil {
			continue
		}
		end := binlog.EndsGroup(*cur, ev, true)
		clear(ev[13:17])
		clear(ev[len(ev)-4:])
		buf = append(buf, ev...)
		if end {
			ids, txns = append(ids, cur.GTID.String()), append(txns, buf)
			cur = nil
		}
	}
	return ids, txns
}

// TestGoMySQLMariaDBFlavor: go-mysql's BinlogSyncer configured for MariaDB reads a
// MariaDB group through the default port exactly as from the master: the same
// transactions by GTID, event for event.
func TestGoMySQLMariaDBFlavor(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	fl := startRelayNode(ctx, t, filepath.Join(dir, "flotilla"), master)
	waitGroupHolds(ctx, t, fl, master)
	pos, err := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(pos, "-")
	total, err := strconv.Atoi(parts[len(parts)-1])
	if err != nil || len(parts) != 3 || strings.Contains(pos, ",") {
		t.Fatalf("gtid_binlog_pos %q: want one domain (%v)", pos, err)
	}
	wantIDs, want := mariaTxns(ctx, t, master.Addr(), upstreamUser, upstreamPass, "", total)
	gotIDs, got := mariaTxns(ctx, t, "127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, "", total)
	for i := range want {
		if gotIDs[i] != wantIDs[i] || !bytes.Equal(got[i], want[i]) {
			t.Fatalf("transaction %d: %s through Flotilla, %s from the master (equal bytes: %v)", i, gotIDs[i], wantIDs[i], bytes.Equal(got[i], want[i]))
		}
	}
	t.Logf("%d transactions equal", total)
}
