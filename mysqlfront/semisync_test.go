package mysqlfront

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/packet"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
)

// A semi-sync replica's events carry the header (0xEF, flag) and only the last
// event of each transaction asks for an ACK; the packet sequence restarts at 1 after
// it, as the replica expects (its packet reader fails on any other sequence id); the
// ACKs it sends back are recorded for status.
func TestSemiSyncReplicaFraming(t *testing.T) {
	w, client := newPipeWriter(t)
	ss, reg := w.ss, w.reg
	w.txnEnd = txnEnds(&placement.Upstream{Flavor: "mariadb", BinlogChecksum: "CRC32"})
	events := [][]byte{
		binlog.NewGTIDEvent(binlog.GTID{Domain: 0, Server: 1, Seq: 1}, 0, true),
		binlog.NewQuery(1, "db", "BEGIN", true),
		binlog.NewOpaque(30, 1, 100, true),
		binlog.NewOpaque(30, 1, 300<<10, true), // sent in parts, as an event cut across stored pieces
		binlog.NewXID(1, 9, true),
		binlog.NewGTIDEvent(binlog.GTID{Domain: 0, Server: 1, Seq: 2}, binlog.GTIDStandalone, true),
		binlog.NewQuery(1, "db", "CREATE TABLE t (id INT)", true),
		binlog.NewGTIDEvent(binlog.GTID{Domain: 0, Server: 1, Seq: 3}, 0, true),
		binlog.NewQuery(1, "db", "BEGIN", true),
		binlog.NewQuery(1, "db", "COMMIT", true),
	}
	wantAck := []bool{false, false, false, false, true, false, true, false, false, true}
	go func() {
		for _, ev := range events {
			if len(ev) > 64<<10 {
				for len(ev) > 0 {
					n := min(len(ev), 100<<10)
					if err := w.EventPart(ev[:n]); err != nil {
						return
					}
					ev = ev[n:]
				}
				continue
			}
			if err := w.Event(ev); err != nil {
				return
			}
			w.Position(1, 4)
		}
	}()
	r := packet.NewConn(client)
	for i, ev := range events {
		got, err := r.ReadPacket()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if len(got) != len(ev)+3 || got[0] != 0 || got[1] != semiMagic || (got[2] == 1) != wantAck[i] || !bytes.Equal(got[3:], ev) {
			t.Fatalf("event %d (type %d): header % x, want an ACK request %v", i, ev[4], got[:3], wantAck[i])
		}
		if wantAck[i] {
			r.Sequence = 1
		}
	}

	// ACKs, and a stray packet that is not one, from the replica.
	done := make(chan struct{})
	go func() {
		defer close(done)
		ss.readAcks(reg)
	}()
	ack := func(file string, pos uint64) []byte {
		b := []byte{semiMagic}
		b = binary.LittleEndian.AppendUint64(b, pos)
		return append(b, file...)
	}
	for _, body := range [][]byte{ack("flotilla-bin.000001", 400), {1, 2, 3}, ack("flotilla-bin.000001", 812)} {
		hdr := []byte{byte(len(body)), byte(len(body) >> 8), 0, 0}
		if _, err := client.Write(append(hdr, body...)); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); reg.acks.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ACKs recorded: %d", reg.acks.Load())
		}
	}
	if a := reg.acked.Load(); a == nil || *a != "flotilla-bin.000001:812" {
		t.Fatalf("last ACK recorded as %v", a)
	}
	// A packet too large for an ACK ends the reader.
	if _, err := client.Write([]byte{0xff, 0xff, 0, 0}); err != nil {
		t.Fatal(err)
	}
	<-done
}

// A MySQL group's transactions end at XID, COMMIT, a lone DDL statement: only those
// events ask a semi-sync replica for an ACK.
func TestSemiSyncMySQLTransactionEnds(t *testing.T) {
	ends := txnEnds(&placement.Upstream{Flavor: "mysql", BinlogChecksum: "CRC32"})
	gtid := func(n int64) []byte {
		sid, _ := binlog.ParseSID("d725c94e-606e-45cc-ade2-29bf1b217ca1")
		return binlog.NewMySQLGTIDTagged(1, binlog.MySQLGTID{Source: binlog.Source{SID: sid, Tag: "t"}, GNO: n}, true)
	}
	evs := [][]byte{
		binlog.NewFDE(1, "8.0.36", true),
		gtid(1), binlog.NewQuery(1, "db", "BEGIN", true), binlog.NewOpaque(30, 1, 50, true), binlog.NewXID(1, 1, true),
		gtid(2), binlog.NewQuery(1, "db", "CREATE TABLE t (id INT)", true),
		gtid(3), binlog.NewQuery(1, "db", "BEGIN", true), binlog.NewQuery(1, "db", "COMMIT", true),
	}
	want := []bool{false, false, false, false, true, false, true, false, false, true}
	for i, ev := range evs {
		if got := ends(ev); got != want[i] {
			t.Fatalf("event %d (type %d): ends a transaction %v, want %v", i, ev[4], got, want[i])
		}
	}
}
