package shard

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// mysqlEvents returns the events of a recorded MySQL binlog file and its groups'
// bytes, whole, in order.
func mysqlEvents(t *testing.T, path string) (evs [][]byte, groups [][]byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var grp binlog.MySQLGroup
	var cur []byte
	err = binlog.Split(data[4:], func(ev []byte) error {
		evs = append(evs, ev)
		if binlog.OpensMySQLGroup(ev) {
			cur = nil
		}
		cur = append(cur, ev...)
		if grp.Next(ev, true) {
			groups = append(groups, cur)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return evs, groups
}

// The MySQL pipeline proposes each recorded group whole, with the MySQL base set in
// the first file; a compressed transaction (GTID + TRANSACTION_PAYLOAD) is one
// group, carried untouched; a resumed connection skips what the group holds.
func TestMySQLPipeline(t *testing.T) {
	const uuid = "d725c94e-606e-45cc-ade2-29bf1b217ca1"
	evs, groups := mysqlEvents(t, "../internal/binlog/testdata/mysql/binlog-main.000002")
	base, _ := binlog.ParseMySQLSet(uuid + ":1-232")
	p := newPipeline(nil, false, "")
	p.fl = &mysqlFlavor{baseSet: base, executed: base.Clone()}
	feed(t, p, fakeRotate("binlog-main.000002"))
	feed(t, p, evs...)
	// A compressed transaction: its GTID event, then one TRANSACTION_PAYLOAD.
	gtid := append([]byte(nil), groups[0][:48]...)
	binary.LittleEndian.PutUint64(gtid[binlog.HeaderLen+17:], 248)
	binlog.SetLogPos(gtid, 1, 0, true)
	payload := binlog.NewOpaque(binlog.MySQLTransactionPayloadEvent, 10, 300, true)
	feed(t, p, gtid, payload)

	if len(p.items) != 1+15+1 || p.items[0].NewFile == nil || !p.items[0].NewFile.MySQL || p.items[0].NewFile.BaseSet.String() != base.String() {
		t.Fatalf("want a MySQL NewFile on base %s and 16 transactions, got %d items", base, len(p.items))
	}
	for i, g := range groups {
		tx := p.items[i+1].Txn
		mg, _ := binlog.ParseMySQLGTIDEvent(g)
		if tx == nil || !tx.First || !tx.Last || tx.GTID != mg.Indexed() || !bytes.Equal(tx.Events, g) {
			t.Fatalf("transaction %d (%s) not proposed whole", i, mg)
		}
	}
	if tx := p.items[16].Txn; !tx.Last || !bytes.Equal(tx.Events, append(gtid, payload...)) {
		t.Fatal("the compressed transaction is not one group")
	}
	if got := p.fl.(*mysqlFlavor).executed.String(); got != uuid+":1-248" {
		t.Fatalf("executed %s", got)
	}

	// Reconnected after 240: those before are skipped, the rest proposed.
	held, _ := binlog.ParseMySQLSet(uuid + ":1-240")
	p = newPipeline(nil, true, "binlog-main.000002")
	p.fl = &mysqlFlavor{baseSet: base, executed: held}
	for _, ev := range evs {
		if ev[4] == binlog.FormatDescription {
			h, _ := binlog.ParseHeader(ev)
			p.fileServerID = h.ServerID // the same master as before the reconnect
			break
		}
	}
	feed(t, p, fakeRotate("binlog-main.000002"))
	feed(t, p, evs...)
	if len(p.items) != 7 {
		t.Fatalf("resumed after 240: %d items, want 7 transactions", len(p.items))
	}
	if mg, _ := binlog.ParseMySQLGTIDEvent(p.items[0].Txn.Events); mg.GNO != 241 {
		t.Fatalf("first proposed after resuming: %s", mg)
	}

	// A tagged transaction (8.3+) is one group like any other.
	sid, _ := binlog.ParseSID(uuid)
	tg := binlog.MySQLGTID{Source: binlog.Source{SID: sid, Tag: "batch"}, GNO: 7}
	tagged := binlog.NewMySQLGTIDTagged(10, tg, true)
	n := len(p.items)
	feed(t, p, tagged, binlog.NewQuery(10, "fx", "CREATE TABLE t (a int)", true))
	if len(p.items) != n+1 || p.items[n].Txn.GTID != tg.Indexed() {
		t.Fatalf("tagged transaction not proposed: %d items", len(p.items))
	}
	if got := p.fl.(*mysqlFlavor).executed.String(); got != uuid+":1-247:batch:7" {
		t.Fatalf("executed %s", got)
	}
	// Anonymous transactions are refused with the reason.
	if err := p.handle(t.Context(), binlog.NewOpaque(binlog.MySQLAnonymousGTIDEvent, 10, 40, true)); err == nil || !strings.Contains(err.Error(), "gtid_mode=ON") {
		t.Fatalf("an anonymous transaction: %v", err)
	}
}
