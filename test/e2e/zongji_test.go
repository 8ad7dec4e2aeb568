package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// zongjiDir holds read.js and its pinned npm packages (scripts/ensure-node.sh
// installs them; make test runs it).
const zongjiDir = "../interop/zongji"

// requireZongJi finds Node.js and zongji's packages: outside CI the test is skipped
// with a clear line when they are absent; in CI it fails.
func requireZongJi(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		// read.js needs util.parseArgs: Node.js 18 or later.
		out, verr := exec.Command(node, "-e", "process.exit(+process.versions.node.split('.')[0] >= 18 ? 0 : 1)").CombinedOutput()
		if verr != nil {
			err = fmt.Errorf("Node.js 18 or later is needed (%v %s)", verr, out)
		}
	}
	if err == nil {
		if _, err = os.Stat(filepath.Join(zongjiDir, "node_modules/@vlasky/zongji/package.json")); err != nil {
			err = fmt.Errorf("zongji's npm packages are not installed (%w)", err)
		}
	}
	if err != nil {
		msg := fmt.Sprintf("the zongji interop test needs Node.js and its npm packages: run scripts/ensure-node.sh (%v)", err)
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (required because CI is set)", msg)
		}
		t.Skip(msg)
	}
	return node
}

// zongjiRow is one row event as read.js prints it.
type zongjiRow struct {
	Table string          `json:"table"`
	Type  string          `json:"type"`
	Rows  json.RawMessage `json:"rows"`
	GTID  string          `json:"gtid"`
}

func (r zongjiRow) String() string { return r.Type + " " + r.Table + " " + string(r.Rows) }

// zongji runs read.js against addr; each row event it prints is sent on the
// returned channel, which is closed when read.js exits (wait then says how).
type zongjiRun struct {
	rows chan zongjiRow
	wait func() error
}

func startZongJi(ctx context.Context, t *testing.T, node, addr, user, password string, count int, from ...string) *zongjiRun {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	args := append([]string{"read.js", "--host", host, "--port", port, "--user", user, "--password", password,
		"--server-id", "9101", "--count", strconv.Itoa(count), "--include-schema", "zj", "--timeout", "90", "--date-strings"}, from...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = zongjiDir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	run := &zongjiRun{rows: make(chan zongjiRow, count)}
	var once sync.Once
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(run.rows)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var r zongjiRow
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				werr = fmt.Errorf("read.js printed %q: %w", sc.Text(), err)
				continue
			}
			run.rows <- r
		}
		if err := cmd.Wait(); err != nil && werr == nil {
			werr = fmt.Errorf("read.js %v: %w\n%s", from, err, stderr.String())
		}
		close(done)
	}()
	run.wait = func() error {
		once.Do(func() { <-done })
		return werr
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = run.wait() })
	return run
}

// collect takes n rows from run.
func (run *zongjiRun) collect(ctx context.Context, t *testing.T, n int) []zongjiRow {
	t.Helper()
	var got []zongjiRow
	for len(got) < n {
		select {
		case r, ok := <-run.rows:
			if !ok {
				t.Fatalf("read.js ended after %d of %d row events: %v", len(got), n, run.wait())
			}
			got = append(got, r)
		case <-ctx.Done():
			t.Fatalf("read.js: %d of %d row events: %v", len(got), n, ctx.Err())
		}
	}
	return got
}

// sameZongJiRows requires the row events read through Flotilla to be the master's.
func sameZongJiRows(t *testing.T, want, got []zongjiRow) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d row events through Flotilla, %d from the master", len(got), len(want))
	}
	for i := range want {
		if got[i].String() != want[i].String() || got[i].GTID != want[i].GTID {
			t.Fatalf("row event %d differs:\n master:   %s %s\n flotilla: %s %s", i, want[i].GTID, want[i], got[i].GTID, got[i])
		}
	}
	t.Logf("%d row events through Flotilla equal to the master's, across a SIGKILL", len(want))
}

// zongjiWrites writes rows from..to-1 into zj.t, one transaction each: an insert,
// every third row updated, every fifth deleted. It returns the row events it made.
func zongjiWrites(ctx context.Context, t *testing.T, m *mariadbtest.Server, from, to int) int {
	t.Helper()
	events := 0
	for i := from; i < to; i++ {
		q := fmt.Sprintf("INSERT INTO zj.t VALUES (%d, 'row %d', '2026-12-04 10:%02d:%02d.123456', x'%02x00ff', %d.%02d, NULL, %d)", i, i, i%60, i%60, i%256, i, i%100, int64(i)<<40)
		if i%7 == 0 {
			q = fmt.Sprintf("INSERT INTO zj.t VALUES (%d, NULL, NULL, NULL, NULL, 'note', NULL)", i)
		}
		if err := m.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
		events++
		if i%3 == 0 {
			if err := m.Exec(ctx, fmt.Sprintf("UPDATE zj.t SET name = CONCAT(IFNULL(name, ''), ' updated') WHERE id = %d", i)); err != nil {
				t.Fatal(err)
			}
			events++
		}
		if i%5 == 0 {
			if err := m.Exec(ctx, fmt.Sprintf("DELETE FROM zj.t WHERE id = %d", i)); err != nil {
				t.Fatal(err)
			}
			events++
		}
	}
	return events
}

// TestZongJiThroughFlotilla: @vlasky/zongji (Node.js CDC) reads the same row events
// through Flotilla as from a MariaDB master: by file and position from Flotilla's
// first file, and after a SIGKILL of the serving node mid-stream by the GTID of the
// last transaction it saw, losing and repeating nothing. The master logs full row
// metadata (binlog_row_metadata=FULL), so zongji needs no INFORMATION_SCHEMA, which
// only the master has.
func TestZongJiThroughFlotilla(t *testing.T) {
	mariadbtest.RequireTools(t)
	node := requireZongJi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMasterWith(ctx, t, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, ExtraArgs: []string{"--binlog-row-metadata=FULL"}})
	for _, q := range []string{
		"CREATE DATABASE zj",
		"CREATE TABLE zj.t (id INT PRIMARY KEY, name VARCHAR(64), at DATETIME(6), data BLOB, amount DECIMAL(12,2), note TEXT, big BIGINT UNSIGNED)",
		"GRANT SELECT ON *.* TO '" + upstreamUser + "'@'%'",
	} {
		if err := master.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	first := zongjiWrites(ctx, t, master, 1, 41)
	fl := startRelayNode(ctx, t, filepath.Join(dir, "flotilla"), master)
	waitGroupHolds(ctx, t, fl, master)

	// Through Flotilla by file and position while the master writes nothing more.
	relay := startZongJi(ctx, t, node, "127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, 1000,
		"--filename", "flotilla-bin.000001", "--position", "4")
	got := relay.collect(ctx, t, first)
	// SIGKILL of the node serving it while zongji streams (it has read all there
	// is and waits for more); the master goes on meanwhile.
	killed := time.Now()
	fl.Kill()
	var exit *exec.ExitError
	if err := relay.wait(); !errors.As(err, &exit) || exit.ExitCode() != 1 || time.Since(killed) > 30*time.Second {
		t.Fatalf("read.js must fail at once with status 1 (its error exit, not its timeout) when the node dies: %v after %v", err, time.Since(killed))
	}
	second := zongjiWrites(ctx, t, master, 41, 81)
	fl.Start(ctx)
	waitGroupHolds(ctx, t, fl, master)
	resume := startZongJi(ctx, t, node, "127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, second, "--gtid", got[len(got)-1].GTID)
	got = append(got, resume.collect(ctx, t, second)...)
	if err := resume.wait(); err != nil {
		t.Fatal(err)
	}

	direct := startZongJi(ctx, t, node, master.Addr(), upstreamUser, upstreamPass, first+second)
	want := direct.collect(ctx, t, first+second)
	if err := direct.wait(); err != nil {
		t.Fatal(err)
	}
	sameZongJiRows(t, want, got)
}

// TestZongJiMySQLGroup: zongji reads a MySQL group (the test master serving the
// recording) through a MySQL-flavored port the same row events as from the master,
// by file and position and, after a SIGKILL of the serving node mid-stream, by GTID
// set. The recording logs minimal row metadata, so zongji asks for column names
// (INFORMATION_SCHEMA.COLUMNS, prepared), which only the master can answer: its
// query connection goes to the master (read.js --ctrl-*), its dump to Flotilla.
func TestZongJiMySQLGroup(t *testing.T) {
	node := requireZongJi(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	master, fl, mysqlAddr := startMySQLGroup(ctx, t)
	uuid := mysqlmaster.FixtureUUID
	recorded := recordedTxns(t, master)
	host, port, _ := strings.Cut(master.Addr(), ":")
	ctrl := []string{"--include-schema", "fx2", "--ctrl-host", host, "--ctrl-port", port, "--ctrl-user", master.User, "--ctrl-password", master.Password}
	const fx2 = 37 // 30 single-row inserts, then 7 row events in 4 transactions

	relay := startZongJi(ctx, t, node, mysqlAddr, replicaUser, replicaPass, 1000, append(ctrl, "--filename", "flotilla-bin.000001", "--position", "4")...)
	got := relay.collect(ctx, t, fx2)
	killed := time.Now()
	fl.Kill()
	var exit *exec.ExitError
	if err := relay.wait(); !errors.As(err, &exit) || exit.ExitCode() != 1 || time.Since(killed) > 30*time.Second {
		t.Fatalf("read.js must fail at once with status 1 when the node dies: %v after %v", err, time.Since(killed))
	}
	// The master goes on: two more fx2 transactions (new GTIDs :310, :311).
	for _, id := range []string{":266", ":267"} {
		if _, err := master.AppendTxn(recorded[uuid+id]); err != nil {
			t.Fatal(err)
		}
	}
	fl.Start(ctx)
	resume := startZongJi(ctx, t, node, mysqlAddr, replicaUser, replicaPass, 2, append(ctrl, "--gtid", uuid+":1-309")...)
	got = append(got, resume.collect(ctx, t, 2)...)
	if err := resume.wait(); err != nil {
		t.Fatal(err)
	}

	direct := startZongJi(ctx, t, node, master.Addr(), master.User, master.Password, fx2+2, "--include-schema", "fx2", "--filename", "binlog-main.000001", "--position", "4")
	want := direct.collect(ctx, t, fx2+2)
	if err := direct.wait(); err != nil {
		t.Fatal(err)
	}
	sameZongJiRows(t, want, got)
}
