package vitess

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"vitess.io/vitess/go/mysql"
	"vitess.io/vitess/go/mysql/replication"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// The accounts of test/e2e: Flotilla's on the MariaDB master, the replicas' on
// Flotilla.
const (
	upstreamUser = "flotilla"
	upstreamPass = "up-secret"
	replicaUser  = "repl"
	replicaPass  = "repl-secret"
)

// fixtures is the MySQL recording, from this package's directory.
const fixtures = "../../fixtures/mysql-binlog/binlog"

// xaPrepareEvent is XA_PREPARE_LOG_EVENT (MySQL and MariaDB alike), which ends the
// first half of an XA transaction; Vitess has no IsXAPrepare.
const xaPrepareEvent = 38

// txn is one whole transaction as Vitess's client delivered it.
type txn struct {
	// GTID is the transaction's GTID as Vitess prints it: MariaDB "0-1-42",
	// MySQL "d725c94e-606e-45cc-ade2-29bf1b217ca1:42".
	GTID string
	// Events are the transaction's events as received (header to checksum), from
	// its GTID event through its XID, COMMIT, DDL statement, XA PREPARE or
	// TRANSACTION_PAYLOAD.
	Events [][]byte
}

// Bytes is the transaction's events one after the other, as a binlog file holds them.
func (t txn) Bytes() []byte {
	var b []byte
	for _, ev := range t.Events {
		b = append(b, ev...)
	}
	return b
}

// connectVitess logs in with Vitess's client. ConnParams.Flavor stays empty, so
// the flavor comes from the greeting (mysql.GetFlavor, go/mysql/flavor.go).
func connectVitess(ctx context.Context, addr, user, password string) (*mysql.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("port of %s: %w", addr, err)
	}
	params := &mysql.ConnParams{Host: host, Port: port, Uname: user, Pass: password, ConnectTimeoutMs: 10000}
	return mysql.Connect(ctx, params)
}

// greet logs in and returns the server version as Vitess keeps it (MariaDB's
// "5.5.5-" prefix removed) and whether Vitess took the server for MariaDB.
func greet(ctx context.Context, addr, user, password string) (version string, mariadb bool, err error) {
	c, err := connectVitess(ctx, addr, user, password)
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	return c.ServerVersion, c.IsMariaDB(), nil
}

// readVitess reads a binlog dump with Vitess's client and returns the first want
// whole transactions. With start set it dumps by GTID: start is a MariaDB GTID
// position ("0-1-100": send what follows it) or a MySQL GTID set ("uuid:1-5": send
// what it lacks), parsed in the flavor Vitess chose from the greeting. Otherwise it
// dumps from file at pos. after, if set, is called with the count of transactions
// received after each one (a test kills the server mid-stream there).
func readVitess(ctx context.Context, addr, user, password string, serverID uint32, start string, file string, pos uint64, want int, after ...func(int)) ([]txn, error) {
	c, err := connectVitess(ctx, addr, user, password)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	// ReadBinlogEvent takes no context: closing the connection ends a blocked read.
	stop := context.AfterFunc(ctx, c.Close)
	defer stop()

	// What Vitess's BinlogConnection sends after connecting (connectForReplication,
	// go/vt/binlog/binlog_connection.go); go/mysql alone never says it, and a
	// master refuses a replica that does not understand its checksums.
	if _, err := c.ExecuteFetch("SET @source_binlog_checksum = @@global.binlog_checksum, @master_binlog_checksum=@@global.binlog_checksum", 0, false); err != nil {
		return nil, fmt.Errorf("declare checksum support: %w", err)
	}
	if start != "" {
		flavor := replication.Mysql56FlavorID
		if c.IsMariaDB() {
			flavor = replication.MariadbFlavorID
		}
		startPos, err := replication.ParsePosition(flavor, start)
		if err != nil {
			return nil, fmt.Errorf("parse %q as a %s position: %w", start, flavor, err)
		}
		// MariaDB: SET @mariadb_slave_capability=4, SET @slave_connect_state='start',
		// SET @slave_gtid_strict_mode=1, then COM_BINLOG_DUMP("", 0). MySQL:
		// COM_BINLOG_DUMP_GTID with the set, the file name and position given here (as
		// BinlogConnection sends them: "", 4) and flags 0.
		if err := c.SendBinlogDumpGTIDCommand(serverID, "", 4, startPos, 0); err != nil {
			return nil, fmt.Errorf("dump from GTID %s: %w", startPos, err)
		}
	} else {
		if c.IsMariaDB() {
			// Vitess says it only for a GTID dump. A MariaDB master sends a replica
			// that does not say it BEGIN queries instead of GTID events, as to replicas
			// older than 10.0; a MariaDB replica always says it.
			if _, err := c.ExecuteFetch("SET @mariadb_slave_capability=4", 0, false); err != nil {
				return nil, fmt.Errorf("declare GTID capability: %w", err)
			}
		}
		if pos > math.MaxUint32 {
			return nil, fmt.Errorf("position %d does not fit COM_BINLOG_DUMP", pos)
		}
		if err := c.SendBinlogDumpCommand(serverID, file, uint32(pos)); err != nil {
			return nil, fmt.Errorf("dump from %s:%d: %w", file, pos, err)
		}
	}
	txns, err := collectTxns(c, want, after...)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return txns, err
}

// collectTxns reads events until want transactions are whole. Events outside a
// transaction (rotations, format descriptions, PREVIOUS_GTIDS, Gtid_list, binlog
// checkpoints, heartbeats) are read and left out.
func collectTxns(c *mysql.Conn, want int, after ...func(int)) ([]txn, error) {
	var (
		format mysql.BinlogFormat
		out    []txn
		cur    *txn
		begun  bool // cur has a BEGIN, so it ends at XID or COMMIT
	)
	for len(out) < want {
		ev, err := c.ReadBinlogEvent()
		if err != nil {
			return out, fmt.Errorf("after %d transactions: %w", len(out), err)
		}
		if !ev.IsValid() {
			return out, fmt.Errorf("after %d transactions: an invalid event of %d bytes", len(out), len(ev.Bytes()))
		}
		raw := ev.Bytes()
		// Format before StripChecksum: the Format_description says how events end.
		if ev.IsFormatDescription() {
			if cur != nil {
				return out, fmt.Errorf("a format description inside transaction %s", cur.GTID)
			}
			if format, err = ev.Format(); err != nil {
				return out, fmt.Errorf("format description: %w", err)
			}
			continue
		}
		if format.IsZero() {
			if ev.IsRotate() {
				continue // the artificial Rotate that opens a dump
			}
			return out, fmt.Errorf("event type %d before the format description", raw[4])
		}
		if format.ChecksumAlgorithm == mysql.BinlogChecksumAlgCRC32 {
			n := len(raw) - mysql.BinlogCRC32ChecksumLen
			if got, sum := binary.LittleEndian.Uint32(raw[n:]), crc32.ChecksumIEEE(raw[:n]); got != sum {
				return out, fmt.Errorf("event type %d ending at %d: CRC32 %08x, computed %08x", raw[4], ev.NextPosition(), got, sum)
			}
		}
		// Query() reads to the end of the buffer: it needs the checksum gone.
		sev, _, err := ev.StripChecksum(format)
		if err != nil {
			return out, err
		}
		if sev.IsHeartbeat() || sev.IsRotate() {
			continue
		}
		if sev.IsGTID() {
			if cur != nil {
				return out, fmt.Errorf("a GTID event inside transaction %s", cur.GTID)
			}
			gtid, hasBegin, _, _, err := sev.GTID(format)
			if err != nil {
				return out, err
			}
			// MariaDB: hasBegin unless FL_STANDALONE (DDL). MySQL: always false, a
			// BEGIN query follows.
			cur, begun = &txn{GTID: gtid.String(), Events: [][]byte{bytes.Clone(raw)}}, hasBegin
			continue
		}
		if cur == nil {
			continue
		}
		cur.Events = append(cur.Events, bytes.Clone(raw))
		end := false
		switch {
		case sev.IsXID(), sev.IsTransactionPayload(), raw[4] == xaPrepareEvent:
			end = true
		case sev.IsQuery():
			q, err := sev.Query(format)
			if err != nil {
				return out, fmt.Errorf("transaction %s: %w", cur.GTID, err)
			}
			sql := strings.TrimSpace(q.SQL)
			switch {
			case strings.EqualFold(sql, "BEGIN") || hasPrefixFold(sql, "XA START"):
				begun = true
			case strings.EqualFold(sql, "COMMIT") || strings.EqualFold(sql, "ROLLBACK"),
				hasPrefixFold(sql, "XA COMMIT"), hasPrefixFold(sql, "XA ROLLBACK"):
				end = true
			case !begun:
				end = true // a DDL statement is its own transaction
			}
		}
		if end {
			out = append(out, *cur)
			cur, begun = nil, false
			for _, f := range after {
				f(len(out))
			}
		}
	}
	return out, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// sameEvents reports whether two copies of an event agree but for log_pos and the
// checksum, which are the served file's in Flotilla's copy.
func sameEvents(a, b []byte) bool {
	if len(a) != len(b) || len(a) < 19+4 {
		return bytes.Equal(a, b)
	}
	a, b = bytes.Clone(a), bytes.Clone(b)
	for _, ev := range [][]byte{a, b} {
		clear(ev[13:17])
		clear(ev[len(ev)-4:])
	}
	return bytes.Equal(a, b)
}

// sameTxns requires relayed to hold direct's transactions, in order, event for event.
func sameTxns(t *testing.T, what string, direct, relayed []txn) {
	t.Helper()
	if len(relayed) != len(direct) {
		t.Fatalf("%s: %d transactions through Flotilla, %d from the master", what, len(relayed), len(direct))
	}
	for i := range direct {
		d, r := direct[i], relayed[i]
		if d.GTID != r.GTID {
			t.Fatalf("%s: transaction %d is %s through Flotilla, %s from the master", what, i, r.GTID, d.GTID)
		}
		if len(d.Events) != len(r.Events) {
			t.Fatalf("%s: transaction %s has %d events through Flotilla, %d from the master", what, d.GTID, len(r.Events), len(d.Events))
		}
		for j := range d.Events {
			if !sameEvents(d.Events[j], r.Events[j]) {
				t.Fatalf("%s: transaction %s: event %d (type %d) differs", what, d.GTID, j, d.Events[j][4])
			}
		}
	}
}

// upstreamGTIDs is the group's executed GTIDs, from `flotilla upstream get -o json`.
func upstreamGTIDs(ctx context.Context, t *testing.T, fl *flotillatest.Node, name string) string {
	t.Helper()
	out, err := fl.CLI(ctx, "upstream", "get", name, "-o", "json")
	if err != nil {
		t.Fatalf("upstream get %s: %v", name, err)
	}
	var u struct {
		Group struct {
			ExecutedGtid string `json:"executedGtid"`
		} `json:"group"`
	}
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatalf("upstream get -o json: %v\n%s", err, out)
	}
	return u.Group.ExecutedGtid
}

func waitExecuted(ctx context.Context, t *testing.T, fl *flotillatest.Node, name, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = upstreamGTIDs(ctx, t, fl, name); got == want {
			return
		}
	}
	t.Fatalf("upstream %s holds %q, want %q\n%s", name, got, want, fl.LogTail(30))
}

// recordedTxns returns the MySQL recording's transactions by GTID, as Vitess's
// decoder names them.
func recordedTxns(t *testing.T, master *mysqlmaster.Master) map[string][]byte {
	t.Helper()
	recorded := map[string][]byte{}
	for _, f := range []string{"binlog-main.000001", "binlog-main.000002", "binlog-main.000003", "binlog-main.000004"} {
		txns, err := master.TxnsOf(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range txns {
			// GTID reads fixed offsets after the header: 19 bytes in every v4 binlog.
			g, _, _, _, err := mysql.NewMysql56BinlogEvent(tx).GTID(mysql.BinlogFormat{HeaderLength: 19})
			if err != nil {
				t.Fatal(err)
			}
			recorded[g.String()] = tx
		}
	}
	if len(recorded) != 309 {
		t.Fatalf("the recording has %d transactions", len(recorded))
	}
	return recorded
}

// checkRecorded requires txns to be the recording's from GTID number from+1 on, in
// order and byte for byte (log_pos included: a MySQL group's served files line up
// with the master's).
func checkRecorded(t *testing.T, what string, txns []txn, recorded map[string][]byte, from int) {
	t.Helper()
	for i, tx := range txns {
		if want := mysqlmaster.FixtureUUID + ":" + strconv.Itoa(from+i+1); tx.GTID != want {
			t.Fatalf("%s: transaction %d is %s, want %s", what, i, tx.GTID, want)
		}
		if !bytes.Equal(tx.Bytes(), recorded[tx.GTID]) {
			t.Fatalf("%s: transaction %s differs from the recording", what, tx.GTID)
		}
	}
}

// TestVitessMySQLPort: Vitess's client on a port started with
// --mysql-addr mysql=HOST:PORT,version=8.4.3 takes Flotilla for MySQL 8.4 and reads
// a MySQL group (the recording, served by the test master) by GTID set
// (COM_BINLOG_DUMP_GTID) and by file and position (COM_BINLOG_DUMP), byte for byte.
// On the default port, which greets as MariaDB, its login is refused naming the
// MySQL port.
func TestVitessMySQLPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, fixtures)
	uuid := mysqlmaster.FixtureUUID
	recorded := recordedTxns(t, master)

	fl := flotillatest.NewNode(t, filepath.Join(t.TempDir(), "flotilla"), 1)
	mysqlAddr := fl.AddMySQLFlavorPort("8.4.3")
	fl.Start(ctx)
	if out, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	waitExecuted(ctx, t, fl, "mysql8", uuid+":1-309")

	version, mariadb, err := greet(ctx, mysqlAddr, replicaUser, replicaPass)
	if err != nil {
		t.Fatal(err)
	}
	if mariadb || version != "8.4.3-flotilla" {
		t.Fatalf("Vitess sees %q (MariaDB %v) on the MySQL port, want 8.4.3-flotilla as MySQL", version, mariadb)
	}
	if _, _, err := greet(ctx, fl.MySQLAddr, replicaUser, replicaPass); err == nil || !strings.Contains(err.Error(), mysqlAddr) {
		t.Fatalf("a login for a MySQL upstream on the MariaDB port must be refused naming %s: %v", mysqlAddr, err)
	}

	// By GTID set: what uuid:1-250 lacks.
	byGTID, err := readVitess(ctx, mysqlAddr, replicaUser, replicaPass, 9101, uuid+":1-250", "", 0, 59)
	if err != nil {
		t.Fatal(err)
	}
	checkRecorded(t, "by GTID", byGTID, recorded, 250)

	// By file and position: everything from the first served file.
	byFile, err := readVitess(ctx, mysqlAddr, replicaUser, replicaPass, 9102, "", "flotilla-bin.000001", 4, 309)
	if err != nil {
		t.Fatal(err)
	}
	checkRecorded(t, "by file and position", byFile, recorded, 0)

	// A SIGKILL of the serving node mid-stream (the client has everything and waits
	// for more); the master goes on meanwhile, and the client resumes by the GTID set
	// of what it received, getting exactly the rest.
	got, err := readVitess(ctx, mysqlAddr, replicaUser, replicaPass, 9105, "", "flotilla-bin.000001", 4, 312, func(n int) {
		if n == 309 {
			fl.Kill()
		}
	})
	if err == nil || len(got) != 309 {
		t.Fatalf("the stream outlived the node: %d transactions, %v", len(got), err)
	}
	checkRecorded(t, "before the SIGKILL", got, recorded, 0)
	var appended []string
	for _, id := range []string{":300", ":301", ":302"} {
		g, err := master.AppendTxn(recorded[uuid+id])
		if err != nil {
			t.Fatal(err)
		}
		appended = append(appended, g.String())
	}
	fl.Start(ctx)
	rest, err := readVitess(ctx, mysqlAddr, replicaUser, replicaPass, 9106, uuid+":1-309", "", 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, tx := range rest {
		if tx.GTID != appended[i] {
			t.Fatalf("after the SIGKILL transaction %d is %s, want %s", i, tx.GTID, appended[i])
		}
	}

	// The same reads from the test master itself agree (the helper is not what
	// makes Flotilla pass).
	direct, err := readVitess(ctx, master.Addr(), master.User, master.Password, 9103, uuid+":1-250", "", 0, 59)
	if err != nil {
		t.Fatal(err)
	}
	checkRecorded(t, "the master by GTID", direct, recorded, 250)
	direct, err = readVitess(ctx, master.Addr(), master.User, master.Password, 9104, "", "binlog-main.000001", 4, 309)
	if err != nil {
		t.Fatal(err)
	}
	checkRecorded(t, "the master by file and position", direct, recorded, 0)
}

// TestVitessMariaDBPort: Vitess's client on the default port, which greets as
// 5.5.5-10.11.6-MariaDB-flotilla, takes Flotilla for MariaDB and reads a MariaDB
// group by GTID (@slave_connect_state) and by file and position, getting the
// master's transactions as it gets them from the master itself.
func TestVitessMariaDBPort(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master, err := mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Stop() })
	if err := master.CreateReplUser(ctx, upstreamUser, upstreamPass); err != nil {
		t.Fatal(err)
	}
	for step := 0; step <= 1; step++ { // DDL, DML, blobs, a rotation in each step
		if _, err := mariadbtest.RunWorkload(ctx, master, step); err != nil {
			t.Fatal(err)
		}
	}
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	binlogPos, err := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if err != nil {
		t.Fatal(err)
	}
	waitExecuted(ctx, t, fl, "main", binlogPos)
	// One domain, one server, nothing purged: the sequence number counts the
	// transactions (CREATE USER and GRANT included).
	parts := strings.Split(binlogPos, "-")
	if len(parts) != 3 || strings.Contains(binlogPos, ",") {
		t.Fatalf("gtid_binlog_pos %q: want one domain", binlogPos)
	}
	total, err := strconv.Atoi(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	first, err := master.QueryValue(ctx, "SHOW BINARY LOGS")
	if err != nil {
		t.Fatal(err)
	}

	version, mariadb, err := greet(ctx, fl.MySQLAddr, replicaUser, replicaPass)
	if err != nil {
		t.Fatal(err)
	}
	if !mariadb || version != "10.11.6-MariaDB-flotilla" {
		t.Fatalf("Vitess sees %q (MariaDB %v) on the default port, want 10.11.6-MariaDB-flotilla as MariaDB", version, mariadb)
	}

	// By file and position, everything.
	direct, err := readVitess(ctx, master.Addr(), upstreamUser, upstreamPass, 9201, "", first, 4, total)
	if err != nil {
		t.Fatal(err)
	}
	relayed, err := readVitess(ctx, fl.MySQLAddr, replicaUser, replicaPass, 9202, "", "flotilla-bin.000001", 4, total)
	if err != nil {
		t.Fatal(err)
	}
	sameTxns(t, "by file and position", direct, relayed)

	// By GTID, after the middle transaction.
	k := total / 2
	from := direct[k-1].GTID
	directGTID, err := readVitess(ctx, master.Addr(), upstreamUser, upstreamPass, 9203, from, "", 0, total-k)
	if err != nil {
		t.Fatal(err)
	}
	if directGTID[0].GTID != direct[k].GTID {
		t.Fatalf("the master sent %s first after %s, want %s", directGTID[0].GTID, from, direct[k].GTID)
	}
	relayedGTID, err := readVitess(ctx, fl.MySQLAddr, replicaUser, replicaPass, 9204, from, "", 0, total-k)
	if err != nil {
		t.Fatal(err)
	}
	sameTxns(t, "by GTID after "+from, directGTID, relayedGTID)

	// A SIGKILL of the serving node mid-stream (the client has everything and waits
	// for more); the master goes on meanwhile, and the client resumes by the GTID of
	// the last transaction it received, getting exactly the rest.
	got, err := readVitess(ctx, fl.MySQLAddr, replicaUser, replicaPass, 9205, from, "", 0, total-k+3, func(n int) {
		if n == total-k {
			fl.Kill()
		}
	})
	if err == nil || len(got) != total-k {
		t.Fatalf("the stream outlived the node: %d transactions, %v", len(got), err)
	}
	sameTxns(t, "before the SIGKILL", directGTID, got)
	for _, q := range []string{"CREATE DATABASE vitess_after_kill", "CREATE TABLE vitess_after_kill.t (id INT PRIMARY KEY)", "INSERT INTO vitess_after_kill.t VALUES (1), (2)"} {
		if err := master.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	fl.Start(ctx)
	last := got[len(got)-1].GTID
	directRest, err := readVitess(ctx, master.Addr(), upstreamUser, upstreamPass, 9206, last, "", 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	rest, err := readVitess(ctx, fl.MySQLAddr, replicaUser, replicaPass, 9207, last, "", 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	sameTxns(t, "after the SIGKILL", directRest, rest)
	t.Logf("%d transactions by file and position, %d by GTID, equal; %d more after a SIGKILL", total, total-k, len(rest))
}
