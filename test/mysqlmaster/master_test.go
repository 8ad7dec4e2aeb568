package mysqlmaster

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/mysqlreplica"
)

// Syncer returns a go-mysql BinlogSyncer in MySQL flavor, raw mode, for addr.
func syncer(t *testing.T, addr, user, password string) *replication.BinlogSyncer {
	t.Helper()
	cfg, err := mysqlreplica.Config(addr, user, password, 4242)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HeartbeatPeriod = 200 * time.Millisecond
	bs := replication.NewBinlogSyncer(cfg)
	t.Cleanup(bs.Close)
	return bs
}

// Restart drops every stream, refuses connections while down, and comes back at
// the same address with a new file; a replica resumes there by auto-position.
func TestRestartDropsAndReturns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := Start(t, Fixtures)
	cfg, err := mysqlreplica.Config(m.Addr(), m.User, m.Password, 4243)
	if err != nil {
		t.Fatal(err)
	}
	r, err := mysqlreplica.Start(cfg, binlog.MySQLSet{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Until(ctx, m.Executed()); err != nil {
		t.Fatal(err)
	}
	files := len(m.FileNames())
	done := make(chan error, 1)
	go func() { done <- m.Restart(ctx, time.Second) }()
	if _, _, err := r.Next(ctx); err == nil {
		t.Fatal("the stream went on across a restart")
	}
	if c, err := net.DialTimeout("tcp", m.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("a connection was accepted while the master was down")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(m.FileNames()); n != files+1 {
		t.Fatalf("%d files after the restart, want %d", n, files+1)
	}
	txns, err := m.TxnsOf(m.FileNames()[0])
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.AppendTxn(txns[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reconnect(""); err != nil {
		t.Fatal(err)
	}
	if err := r.Until(ctx, m.Executed()); err != nil {
		t.Fatal(err)
	}
	if last := r.Order[len(r.Order)-1]; last != g.String() {
		t.Fatalf("the replica's last transaction is %s, want %s", last, g)
	}
}

// The test master streams the recording as a MySQL source: every event byte for byte
// after the fake Rotate, from the first transaction the replica lacks, then what is
// appended and the next file after a rotation, with heartbeats in between.
func TestMasterServesRecording(t *testing.T) {
	m := Start(t, Fixtures)
	if got := m.Executed().String(); got != FixtureUUID+":1-309" {
		t.Fatalf("executed %s", got)
	}
	files := map[string][]byte{}
	for _, f := range m.files {
		files[f.name] = append([]byte(nil), f.data...)
	}
	bs := syncer(t, m.Addr(), m.User, m.Password)
	empty, _ := mysql.ParseMysqlGTIDSet("")
	s, err := bs.StartSyncGTID(empty)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var file string
	var gtids []int64
	events := 0
	byType := map[byte]int{}
	for events < 1523 {
		e, err := s.GetEvent(ctx)
		if err != nil {
			t.Fatalf("after %d GTIDs: %v", len(gtids), err)
		}
		raw := e.RawData
		h, _ := binlog.ParseHeader(raw)
		switch {
		case h.Type == binlog.RotateEvent && h.Flags&binlog.FlagArtificial != 0:
			file, _, _ = binlog.ParseRotate(raw, false)
			continue
		case h.Type == binlog.HeartbeatEvent:
			continue
		}
		events++
		byType[h.Type]++
		want := files[file][int(h.LogPos)-len(raw) : h.LogPos]
		if !bytes.Equal(raw, want) {
			t.Fatalf("%s at %d: event differs from the recording", file, h.LogPos)
		}
		if h.Type == binlog.RotateEvent {
			name, _, _ := binlog.ParseRotate(raw, true)
			file = name
		}
		if h.Type == binlog.MySQLGTIDEvent {
			g, _ := binlog.ParseMySQLGTIDEvent(raw)
			gtids = append(gtids, g.GNO)
		}
	}
	if events != 1523 || gtids[308] != 309 {
		t.Fatalf("%d events (%v), last GTID %d; want the recording's 1523 and 309", events, byType, gtids[308])
	}

	// Resume after 250, then an appended transaction in a rotated file.
	bs2 := syncer(t, m.Addr(), m.User, m.Password)
	set, _ := mysql.ParseMysqlGTIDSet(FixtureUUID + ":1-250")
	s2, err := bs2.StartSyncGTID(set)
	if err != nil {
		t.Fatal(err)
	}
	txns, err := m.TxnsOf("binlog-main.000004")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Rotate(); err != nil {
		t.Fatal(err)
	}
	g, err := m.AppendTxn(txns[len(txns)-1])
	if err != nil || g.GNO != 310 {
		t.Fatalf("appended %v, %v", g, err)
	}
	var got []int64
	heartbeats := 0
	for heartbeats < 2 {
		e, err := s2.GetEvent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch e.RawData[4] {
		case binlog.MySQLGTIDEvent:
			g, _ := binlog.ParseMySQLGTIDEvent(e.RawData)
			got = append(got, g.GNO)
		case binlog.HeartbeatEvent:
			if len(got) > 0 && got[len(got)-1] == 310 {
				heartbeats++
			}
		case binlog.XIDEvent:
			if binary.LittleEndian.Uint32(e.RawData[13:]) != uint32(len(m.files[4].data)) && got[len(got)-1] == 310 {
				t.Fatalf("appended XID has log_pos %d, file size %d", binary.LittleEndian.Uint32(e.RawData[13:]), len(m.files[4].data))
			}
		}
	}
	if got[0] != 251 || got[len(got)-1] != 310 || len(got) != 60 {
		t.Fatalf("resumed GTIDs %d..%d (%d), want 251..310", got[0], got[len(got)-1], len(got))
	}
}
