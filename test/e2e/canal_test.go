package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/canal"
	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-mysql-org/go-mysql/schema"

	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// canalTable builds canal's schema of a recorded table from its CREATE TABLE
// (expected/<db>.<table>.sql): neither the test master nor Flotilla holds tables, so
// canal is given the schemas instead of asking SHOW FULL COLUMNS.
func canalTable(t *testing.T, db, table string) *schema.Table {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../fixtures/mysql-binlog/expected", db+"."+table+".sql"))
	if err != nil {
		t.Fatal(err)
	}
	tb := &schema.Table{Schema: db, Name: table}
	col := regexp.MustCompile("^\\s*`(\\w+)` (\\w+(?:\\([^)]*\\))?)") // backquotes: not a raw string
	pkRe := regexp.MustCompile(`PRIMARY KEY \((.*)\)`)
	for _, l := range strings.Split(string(b), "\n") {
		if m := col.FindStringSubmatch(l); m != nil {
			tb.AddColumn(m[1], m[2], "", "")
		}
		if pk := pkRe.FindStringSubmatch(l); pk != nil {
			for _, c := range strings.Split(strings.ReplaceAll(pk[1], "`", ""), ",") {
				tb.PKColumns = append(tb.PKColumns, tb.FindColumn(c))
			}
		}
	}
	return tb
}

// rowLog is a canal event handler that records row events as text until the
// transaction done.
type rowLog struct {
	canal.DummyEventHandler
	t      *testing.T
	c      *canal.Canal
	tables map[string]*schema.Table
	done   string // the last GTID to process
	last   string
	// at runs a function once the transaction of a GTID is processed (in canal's
	// goroutine: canal waits for it).
	at map[string]func()

	mu       sync.Mutex
	rows     []string
	finished chan struct{}
	once     sync.Once
}

func (h *rowLog) OnTableChanged(_ *replication.EventHeader, db, table string) error {
	if tb, ok := h.tables[db+"."+table]; ok {
		h.c.SetTableCache([]byte(db), []byte(table), tb)
	}
	return nil
}

func (h *rowLog) OnRow(e *canal.RowsEvent) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rows = append(h.rows, fmt.Sprintf("%s %s.%s %v", e.Action, e.Table.Schema, e.Table.Name, e.Rows))
	return nil
}

func (h *rowLog) OnGTID(_ *replication.EventHeader, e mysql.BinlogGTIDEvent) error {
	next, err := e.GTIDNext()
	if err == nil {
		h.last = next.String()
	}
	return nil
}

func (h *rowLog) OnXID(*replication.EventHeader, mysql.Position) error {
	if f := h.at[h.last]; f != nil {
		delete(h.at, h.last)
		f()
	}
	if h.last == h.done {
		h.once.Do(func() { close(h.finished) })
	}
	return nil
}

func (h *rowLog) String() string { return "rowLog" }

// canalRows runs go-mysql's canal against addr as user from the GTID set from (canal
// reads by file and position from the first file when it is empty) and returns the
// row events of fx2 it produced up to the recording's last GTID. flavor "" leaves
// canal's default.
func canalRows(ctx context.Context, t *testing.T, addr, user, password, flavor, from string) []string {
	t.Helper()
	return canalRowsUntil(ctx, t, addr, user, password, flavor, from, mysqlmaster.FixtureUUID+":309", nil)
}

// canalRowsUntil is canalRows up to GTID done, running at[g] once canal has
// processed the transaction g.
func canalRowsUntil(ctx context.Context, t *testing.T, addr, user, password, flavor, from, done string, at map[string]func()) []string {
	t.Helper()
	cfg := canal.NewDefaultConfig()
	cfg.Addr, cfg.User, cfg.Password, cfg.ServerID = addr, user, password, 6001
	if flavor != "" {
		cfg.Flavor = flavor
	}
	cfg.Dump.ExecutionPath = "" // binlog only, no mysqldump
	cfg.IncludeTableRegex = []string{`fx2\..*`}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := canal.NewCanal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := &rowLog{t: t, c: c, done: done, at: at, finished: make(chan struct{}),
		tables: map[string]*schema.Table{"fx2.orders": canalTable(t, "fx2", "orders"), "fx2.order_items": canalTable(t, "fx2", "order_items")}}
	c.SetEventHandler(h)
	set, err := mysql.ParseMysqlGTIDSet(from)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.StartFromGTID(set) }()
	select {
	case <-h.finished:
	case err := <-errc:
		t.Fatalf("canal on %s stopped: %v", addr, err)
	case <-ctx.Done():
		t.Fatalf("canal on %s: %v", addr, ctx.Err())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.rows...)
}

// TestCanalThroughFlotilla: go-mysql's canal pointed at Flotilla produces the same
// row events as pointed at the master itself.
func TestCanalThroughFlotilla(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The node has a MySQL-flavored port: canal (and go-mysql's BinlogSyncer under
	// it) cannot tell flavors apart and defaults to MySQL, which that port matches.
	master, fl, mysqlAddr := startMySQLGroup(ctx, t)
	const after262 = mysqlmaster.FixtureUUID + ":1-262" // fx2 is all after it
	direct := canalRows(ctx, t, master.Addr(), master.User, master.Password, mysql.MySQLFlavor, "")
	if gtid := canalRows(ctx, t, master.Addr(), master.User, master.Password, mysql.MySQLFlavor, after262); strings.Join(gtid, "\n") != strings.Join(direct, "\n") {
		t.Fatal("canal on the master by GTID and by position disagree")
	}
	// 30 single-row inserts, then 7 row events in 4 transactions (workload steps 19-21).
	if len(direct) != 37 {
		t.Fatalf("canal on the master produced %d row events of fx2, want 37", len(direct))
	}

	for _, from := range []string{"", after262} {
		relayed := canalRows(ctx, t, mysqlAddr, replicaUser, replicaPass, mysql.MySQLFlavor, from)
		sameRows(t, from, direct, relayed)
	}
	// Flavor left unset, as most canal users leave it.
	sameRows(t, "", direct, canalRows(ctx, t, mysqlAddr, replicaUser, replicaPass, "", ""))
	// go-mysql's BinlogSyncer at its default flavor: TestGoMySQLWithoutFlavor.

	// A SIGKILL of the serving node while canal streams (it has all there is and
	// waits); the master writes two more fx2 transactions meanwhile; canal
	// reconnects by itself to the restarted node and resumes from its GTID set.
	uuid := mysqlmaster.FixtureUUID
	recorded := recordedTxns(t, master)
	relayed := canalRowsUntil(ctx, t, mysqlAddr, replicaUser, replicaPass, "", after262, uuid+":311", map[string]func(){
		uuid + ":309": func() { // in canal's goroutine: t.Error, not t.Fatal
			fl.Kill()
			for _, id := range []string{":266", ":267"} {
				if _, err := master.AppendTxn(recorded[uuid+id]); err != nil {
					t.Error(err)
				}
			}
			if err := fl.TryStart(ctx); err != nil {
				t.Error(err)
			}
		},
	})
	sameRows(t, "after a SIGKILL", canalRowsUntil(ctx, t, master.Addr(), master.User, master.Password, mysql.MySQLFlavor, "", uuid+":311", nil), relayed)
	// A MySQL upstream's replica on the MariaDB-flavored port is told the right one.
	_, err := client.Connect("127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, "")
	if err == nil || !strings.Contains(err.Error(), mysqlAddr) {
		t.Fatalf("a login on the MariaDB port for a MySQL upstream must name the MySQL port %s: %v", mysqlAddr, err)
	}
	t.Logf("%d row events of fx2, equal", len(direct))
}

// sameRows compares canal's row events from the master and through Flotilla.
func sameRows(t *testing.T, from string, direct, relayed []string) {
	t.Helper()
	if strings.Join(relayed, "\n") != strings.Join(direct, "\n") {
		for i := range min(len(direct), len(relayed)) {
			if direct[i] != relayed[i] {
				t.Fatalf("from %q: row event %d differs:\n master:   %s\n flotilla: %s", from, i, direct[i], relayed[i])
			}
		}
		t.Fatalf("from %q: %d row events through Flotilla, %d from the master", from, len(relayed), len(direct))
	}
}
