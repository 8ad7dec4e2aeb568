package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
	"github.com/flotilla-relay/flotilla/test/mysqlreplica"
)

// mysqlReplica is go-mysql's BinlogSyncer in MySQL flavor reading Flotilla as a MySQL
// replica does (test/mysqlreplica), failing the test on any error.
type mysqlReplica struct {
	t *testing.T
	*mysqlreplica.Replica
}

func startMySQLReplica(t *testing.T, fl *flotillatest.Node, from binlog.MySQLSet, opts ...func(*replication.BinlogSyncerConfig)) *mysqlReplica {
	t.Helper()
	cfg, err := mysqlreplica.Config("127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, 7001)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := mysqlreplica.Start(cfg, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return &mysqlReplica{t: t, Replica: r}
}

// until reads events until the replica's executed set holds want.
func (r *mysqlReplica) until(ctx context.Context, want binlog.MySQLSet) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := r.Until(ctx, want); err != nil {
		r.t.Fatal(err)
	}
}

func mysqlSet(t *testing.T, s string) binlog.MySQLSet {
	t.Helper()
	set, err := binlog.ParseMySQLSet(s)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// recordedTxns returns the test master's recorded transactions by GTID.
func recordedTxns(t *testing.T, master *mysqlmaster.Master) map[string][]byte {
	t.Helper()
	recorded := map[string][]byte{}
	for _, f := range []string{"binlog-main.000001", "binlog-main.000002", "binlog-main.000003", "binlog-main.000004"} {
		txns, err := master.TxnsOf(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range txns {
			g, _ := binlog.ParseMySQLGTIDEvent(tx)
			recorded[g.String()] = tx
		}
	}
	if len(recorded) != 309 {
		t.Fatalf("the recording has %d transactions", len(recorded))
	}
	return recorded
}

// checkRecorded requires a replica's transactions to be the recording's, in order and
// byte for byte, starting after GTID number from.
func checkRecorded(t *testing.T, r *mysqlReplica, recorded map[string][]byte, from int) {
	t.Helper()
	for i, id := range r.Order {
		if want := mysqlmaster.FixtureUUID + ":" + strconv.Itoa(from+i+1); id != want {
			t.Fatalf("transaction %d is %s, want %s", i, id, want)
		}
		if !bytes.Equal(r.Txns[id], recorded[id]) {
			t.Fatalf("transaction %s differs from the recording", id)
		}
	}
}

// TestMySQLFlavor relays a MySQL master (the test master serving the recorded MySQL
// binlogs) to MySQL-flavor replicas: `upstream add` detects the flavor, the group
// pulls with COM_BINLOG_DUMP_GTID, and go-mysql's BinlogSyncer in MySQL flavor gets
// every recorded transaction byte for byte, resumes exactly from its GTID set, and
// resumes exactly after Flotilla is killed with SIGKILL.
func TestMySQLFlavor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	uuid := mysqlmaster.FixtureUUID
	recorded := recordedTxns(t, master)

	dir := t.TempDir()
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	// Refused while the master is not in GTID mode, naming the setting.
	master.Set("gtid_mode", "OFF_PERMISSIVE")
	add := func() error {
		_, err := fl.CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
			"--replica-user", replicaUser, "--replica-password", replicaPass)
		return err
	}
	if err := add(); err == nil || !strings.Contains(err.Error(), "gtid_mode=OFF_PERMISSIVE") {
		t.Fatalf("a master without gtid_mode=ON must be refused naming it: %v", err)
	}
	master.Set("gtid_mode", "ON")
	master.Set("binlog_format", "MIXED")
	if err := add(); err == nil || !strings.Contains(err.Error(), "binlog_format=MIXED") {
		t.Fatalf("a master without binlog_format=ROW must be refused naming it: %v", err)
	}
	master.Set("binlog_format", "ROW")
	if err := add(); err != nil {
		t.Fatal(err)
	}
	u := getUpstream(ctx, t, fl, "mysql8")
	if u.Upstream.Flavor != "mysql" {
		t.Fatalf("flavor %q, want mysql detected", u.Upstream.Flavor)
	}
	all := mysqlSet(t, uuid+":1-309")
	waitExecuted := func(want binlog.MySQLSet) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			got = getUpstream(ctx, t, fl, "mysql8").Group.ExecutedGtid
			if s, err := binlog.ParseMySQLSet(got); err == nil && s.ContainsSet(want) {
				return
			}
		}
		t.Fatalf("the group holds %q, want %s\n%s", got, want, fl.LogTail(30))
	}
	waitExecuted(all)

	// Every transaction, byte for byte (log_pos included: the served files line up
	// with the master's), in the master's order.
	r := startMySQLReplica(t, fl, binlog.MySQLSet{})
	r.until(ctx, all)
	checkRecorded(t, r, recorded, 0)

	// A replica resuming from its GTID set gets exactly the rest, then what the
	// master commits next, across a master rotation.
	r2 := startMySQLReplica(t, fl, mysqlSet(t, uuid+":1-250"))
	r2.until(ctx, all)
	if len(r2.Order) != 59 || r2.Order[0] != uuid+":251" {
		t.Fatalf("resumed replica got %d transactions from %s", len(r2.Order), r2.Order[0])
	}
	if err := master.Rotate(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{":300", ":301"} {
		if _, err := master.AppendTxn(recorded[uuid+id]); err != nil {
			t.Fatal(err)
		}
	}
	// A tagged transaction (MySQL 8.3+): stored, served, and then part of the
	// replica's set, which go-mysql sends in MySQL's tagged form.
	if _, err := master.AppendTaggedTxn(recorded[uuid+":303"], "etl"); err != nil {
		t.Fatal(err)
	}
	// A compressed transaction: GTID then one TRANSACTION_PAYLOAD, carried whole.
	payload := binlog.NewOpaque(binlog.MySQLTransactionPayloadEvent, master.ServerID, 500, true)
	compressed := append(append([]byte(nil), recorded[uuid+":304"][:48]...), payload...)
	if _, err := master.AppendTxn(compressed); err != nil {
		t.Fatal(err)
	}
	more := mysqlSet(t, uuid+":1-312:etl:1")
	r2.until(ctx, more)
	if tx := r2.Txns[uuid+":312"]; len(tx) != 48+len(payload) || tx[48+4] != binlog.MySQLTransactionPayloadEvent {
		t.Fatalf("the compressed transaction arrived as %d bytes", len(tx))
	}

	// SIGKILL: the replica resumes from what it has, nothing lost or repeated.
	fl.Kill()
	fl.Start(ctx)
	if _, err := master.AppendTxn(recorded[uuid+":302"]); err != nil {
		t.Fatal(err)
	}
	waitExecuted(mysqlSet(t, uuid+":1-313:etl:1"))
	r3 := startMySQLReplica(t, fl, r2.Executed)
	r3.until(ctx, mysqlSet(t, uuid+":1-313:etl:1"))
	if len(r3.Order) != 1 || r3.Order[0] != uuid+":313" {
		t.Fatalf("after SIGKILL the replica got %v, want only :313", r3.Order)
	}

	// An 8.0.26+ replica asks for heartbeat v2 (dump flag 2): at the tail it gets
	// type 41 with the file name and the full position.
	checkHeartbeatV2(t, fl, r3.Executed)
}

// checkHeartbeatV2 dumps with the heartbeat-v2 flag from have (everything the group
// holds) and reads until a heartbeat v2 naming the current file arrives.
func checkHeartbeatV2(t *testing.T, fl *flotillatest.Node, have binlog.MySQLSet) {
	t.Helper()
	c, err := client.Connect("127.0.0.1:"+fl.MySQLPort(), replicaUser, replicaPass, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Execute("SET @master_heartbeat_period = 200000000, @source_heartbeat_period = 200000000"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute("SET @master_binlog_checksum = @@global.binlog_checksum, @source_binlog_checksum = @@global.binlog_checksum"); err != nil {
		t.Fatal(err)
	}
	st, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	file, _ := st.GetString(0, 0)
	pos, _ := st.GetUint(0, 1)
	set, _ := have.AppendEncoded(nil)
	pkt := []byte{0, 0, 0, 0, 0x1e, 2, 0} // header, COM_BINLOG_DUMP_GTID, flags 2
	pkt = binary.LittleEndian.AppendUint32(pkt, 7002)
	pkt = binary.LittleEndian.AppendUint32(pkt, 0)
	pkt = binary.LittleEndian.AppendUint64(pkt, 4)
	pkt = binary.LittleEndian.AppendUint32(pkt, uint32(len(set)))
	pkt = append(pkt, set...)
	c.ResetSequence()
	if err := c.WritePacket(pkt); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	for {
		p, err := c.ReadPacket()
		if err != nil {
			t.Fatalf("no heartbeat v2: %v", err)
		}
		ev := p[1:]
		if p[0] != 0 || len(ev) < binlog.HeaderLen || ev[4] != binlog.MySQLHeartbeatV2Event {
			continue
		}
		// go-mysql's decoder, not Flotilla's own builder, says what it holds.
		hb := &replication.HeartbeatEvent{Version: 2}
		if err := binlog.VerifyChecksum(ev); err != nil {
			t.Fatal(err)
		}
		if err := hb.Decode(ev[binlog.HeaderLen : len(ev)-binlog.ChecksumLen]); err != nil {
			t.Fatal(err)
		}
		if hb.Filename != file || hb.Offset != pos || binary.LittleEndian.Uint32(ev[13:]) != uint32(pos) {
			t.Fatalf("heartbeat v2 says %s:%d (log_pos %d), want %s:%d", hb.Filename, hb.Offset, binary.LittleEndian.Uint32(ev[13:]), file, pos)
		}
		return
	}
}

// TestMySQLFlavorRelayed: a MySQL replica connected to a node that holds no member of
// the MySQL group is served through the node-to-node relay, byte for byte, and the
// relaying node answers SHOW MASTER STATUS with the group's GTID set.
func TestMySQLFlavorRelayed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	recorded := recordedTxns(t, master)
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(t.TempDir(), "flotilla"), 3)
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "mysql8", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--replicas", "2"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	relay := nodeWithoutMember(ctx, t, nodes, "mysql8")
	all := mysqlSet(t, mysqlmaster.FixtureUUID+":1-309")
	r := startMySQLReplica(t, relay, mysqlSet(t, mysqlmaster.FixtureUUID+":1-100"))
	r.until(ctx, all)
	checkRecorded(t, r, recorded, 100)
	want := `msg="relaying a binlog dump" node=` + strconv.Itoa(int(relay.ID))
	if !strings.Contains(relay.LogTail(100000), want) {
		t.Fatalf("node %d holds no member, yet never relayed the dump; log:\n%s", relay.ID, relay.LogTail(30))
	}
	c, err := client.Connect("127.0.0.1:"+relay.MySQLPort(), replicaUser, replicaPass, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Execute("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := res.GetStringByName(0, "Executed_Gtid_Set"); got != all.String() {
		t.Fatalf("SHOW MASTER STATUS through the relay: Executed_Gtid_Set %q, want %s", got, all)
	}
}
