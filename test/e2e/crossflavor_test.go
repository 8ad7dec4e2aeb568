package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// tsvRow formats a row as `mariadb -B -N` prints it (the expected/ files).
func tsvRow(row []string) string {
	esc := strings.NewReplacer("\\", `\\`, "\x00", `\0`, "\t", `\t`, "\n", `\n`)
	out := make([]string, len(row))
	for i, v := range row {
		out[i] = esc.Replace(v)
	}
	return strings.Join(out, "\t")
}

// TestMariaDBReplicaOfMySQLGroup: a real MariaDB replica replicates a MySQL-flavor
// group by file and position, as MariaDB replicates from MySQL masters, and ends with
// the recorded tables' expected contents. The master appends the recording's
// transactions, as a stock MySQL server would have written them for such a replica
// (mysqlmaster.ForMariaDB: STMT_END_F set, a collation MariaDB knows, no tables with
// MySQL's binary JSON); Flotilla relays them untouched.
func TestMariaDBReplicaOfMySQLGroup(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	dir := t.TempDir()
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	recorded := master.Executed().String()
	if _, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--start-gtid", recorded); err != nil {
		t.Fatal(err)
	}
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 21)
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_LOG_FILE='flotilla-bin.000001', MASTER_LOG_POS=4, MASTER_USE_GTID=no")

	skip := map[string]bool{"fx.type_zoo": true, "fx.events_log": true}
	// The recording first: appending goes to its last file.
	var batches [][][]byte
	for _, f := range []string{"binlog-main.000001", "binlog-main.000002", "binlog-main.000003", "binlog-main.000004"} {
		txns, err := master.TxnsOf(f)
		if err != nil {
			t.Fatal(err)
		}
		batches = append(batches, txns)
	}
	appended := 0
	for i, txns := range batches {
		for _, tx := range txns {
			if tx, ok := mysqlmaster.ForMariaDB(tx, skip); ok {
				if _, err := master.AppendTxn(tx); err != nil {
					t.Fatal(err)
				}
				appended++
			}
		}
		if i < 3 {
			if err := master.Rotate(); err != nil { // served files change with the master's
				t.Fatal(err)
			}
		}
	}
	t.Logf("appended %d transactions", appended)

	tables := map[string]string{"fx.accounts": "id", "fx.blobs": "id", "fx.scratch_trunc": "id", "fx2.orders": "order_id", "fx2.order_items": "order_id, line_no"}
	want := map[string]string{}
	for tbl := range tables {
		b, err := os.ReadFile(filepath.Join("../fixtures/mysql-binlog/expected", tbl+".tsv"))
		if err != nil {
			t.Fatal(err)
		}
		want[tbl] = strings.TrimSuffix(string(b), "\n")
	}
	got := map[string]string{}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := r.SlaveStatus(ctx)
		if err == nil && (st["Last_SQL_Errno"] != "0" || st["Last_IO_Errno"] != "0") {
			t.Fatalf("replica stopped: IO %s %s; SQL %s %s", st["Last_IO_Errno"], st["Last_IO_Error"], st["Last_SQL_Errno"], st["Last_SQL_Error"])
		}
		same := true
		for tbl, pk := range tables {
			rows, err := r.Query(ctx, "SELECT * FROM "+tbl+" ORDER BY "+pk)
			if err != nil {
				same = false
				continue
			}
			var lines []string
			for _, row := range rows {
				lines = append(lines, tsvRow(row))
			}
			got[tbl] = strings.Join(lines, "\n")
			same = same && got[tbl] == want[tbl]
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			for tbl := range tables {
				if got[tbl] != want[tbl] {
					g, w := got[tbl], want[tbl]
					n := 0
					for n < len(g) && n < len(w) && g[n] == w[n] {
						n++
					}
					t.Errorf("%s differs from the expected contents at byte %d: got %.200q, want %.200q", tbl, n, g[n:], w[n:])
				}
			}
			st, _ := r.SlaveStatus(ctx)
			t.Logf("replica: %v\nflotilla: %+v\n%s", st, getUpstream(ctx, t, fl, "mysql8").Group, fl.LogTail(20))
			t.FailNow()
		}
		time.Sleep(200 * time.Millisecond)
	}
	// And it applied the whole served binlog without an error.
	for {
		st, err := r.SlaveStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st["Last_SQL_Errno"] != "0" || st["Slave_SQL_Running"] != "Yes" {
			t.Fatalf("replica SQL thread: %s %s", st["Last_SQL_Errno"], st["Last_SQL_Error"])
		}
		if st["Relay_Master_Log_File"] == "flotilla-bin.000004" && st["Exec_Master_Log_Pos"] == st["Read_Master_Log_Pos"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica did not reach the end of the served binlog: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
