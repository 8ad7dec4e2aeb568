package statemachine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// mysqlFixture is a real MySQL binlog file (GTIDs 233-247 of the shared fixtures).
const mysqlFixture = "../internal/binlog/testdata/mysql/binlog-main.000002"

// mysqlItems reads a MySQL binlog file into the NewFile and whole transactions a
// syncer would propose, and returns the file's bytes and its PREVIOUS_GTIDS set.
func mysqlItems(t *testing.T, path string) (file []byte, base binlog.MySQLSet, items []Item) {
	t.Helper()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cur *Txn
	var grp binlog.MySQLGroup
	err = binlog.Split(file[4:], func(e []byte) error {
		switch e[4] {
		case binlog.FormatDescription:
			items = append(items, Item{NewFile: &NewFile{MySQL: true, ServerID: 10, UpstreamFile: "binlog-main.000002", FDE: e}})
			return nil
		case binlog.MySQLPreviousGTIDsEvent:
			base, err = binlog.ParsePreviousGTIDs(e, true)
			items[0].NewFile.BaseSet = base
			return err
		case binlog.RotateEvent:
			return nil
		}
		if binlog.OpensMySQLGroup(e) {
			g, err := binlog.ParseMySQLGTIDEvent(e)
			if err != nil {
				return err
			}
			cur = &Txn{GTID: g.Indexed(), First: true, Last: true}
		}
		cur.Events = append(cur.Events, e...)
		if grp.Next(e, true) {
			items = append(items, Item{Txn: cur})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return file, base, items
}

// A MySQL-flavor group serves the master's file as it was recorded: PREVIOUS_GTIDS
// from its base set, every transaction byte for byte at its original position, and
// it keeps its executed GTID set across a restart.
func TestMySQLGroupServesTheRecordedFile(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer func() { h.close() }()
	file, base, items := mysqlItems(t, mysqlFixture)
	if got := base.String(); got != "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-232" {
		t.Fatalf("fixture base set %s", got)
	}
	epoch := h.claim()
	h.mustAppend(&Append{Epoch: epoch, Items: items})

	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	var served []byte
	for _, r := range recs {
		if !r.IsRotate() {
			served = append(served, r.Payload...)
		}
	}
	// The recorded file ends with the master's Rotate, which a group writes only
	// when the next file starts. The FDE is the master's; PREVIOUS_GTIDS is the
	// group's own (its timestamp differs), holding the same set; every transaction
	// is byte-identical at its original position.
	hdr := recs[0].Payload
	fdeLen := int(binary.LittleEndian.Uint32(hdr[9:]))
	if !bytes.Equal(hdr[:fdeLen-4], file[4:4+fdeLen-4]) {
		t.Fatal("served FDE differs from the master's")
	}
	if set, err := binlog.ParsePreviousGTIDs(hdr[fdeLen:], true); err != nil || !set.ContainsSet(base) || !base.ContainsSet(set) {
		t.Fatalf("served PREVIOUS_GTIDS %v, %v", set, err)
	}
	rotate := len(file) - 4 - len(served)
	if !bytes.Equal(served[len(hdr):], file[4+len(hdr):len(file)-rotate]) {
		t.Fatal("served transactions differ from the recording")
	}
	check := func(h *harness) {
		t.Helper()
		tail, _ := h.g.Tail()
		if !tail.MySQL || tail.Executed.String() != "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-247" {
			t.Fatalf("executed set %s (mysql %v)", tail.Executed, tail.MySQL)
		}
		s, err := h.g.LocateMySQL(mustSet(t, "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-240"))
		if err != nil || s.File != 1 || s.Served != 4 {
			t.Fatalf("locate 1-240: %+v, %v", s, err)
		}
		// The replica's own writes and other channels' GTIDs do not matter.
		s, err = h.g.LocateMySQL(mustSet(t, "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-240,3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9"))
		if err != nil || s.File != 1 {
			t.Fatalf("locate with another source: %+v, %v", s, err)
		}
		for _, bad := range []string{
			"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-100",     // needs 101-232, never served
			"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-250",     // ahead of the group
			"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-240:300", // errant, under the group's source
		} {
			if _, err := h.g.LocateMySQL(mustSet(t, bad)); !errors.Is(err, ErrPosition) {
				t.Fatalf("locate %s: %v, want ErrPosition", bad, err)
			}
		}
	}
	check(h)
	h.close()
	h = newHarness(t, h.dir)
	check(h)

	// A transaction already held, and a MariaDB transaction, are refused.
	epoch = h.claim()
	tail, _ := h.g.Tail()
	if r := h.apply((&Append{Epoch: epoch, PrevOrdinal: tail.Ordinal, Items: items[1:2]}).Encode()); r.Value == ResultOK {
		t.Fatal("a transaction the group holds was appended again")
	}
	if r := h.apply((&Append{Epoch: epoch, PrevOrdinal: tail.Ordinal, Items: []Item{txn(gt(1), 10)}}).Encode()); r.Value == ResultOK {
		t.Fatal("a MariaDB transaction was appended to a MySQL group")
	}
}

func mustSet(t *testing.T, s string) binlog.MySQLSet {
	t.Helper()
	set, err := binlog.ParseMySQLSet(s)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// A replica's set with gaps starts at the newest file whose PREVIOUS_GTIDS it holds;
// a second file's header carries the first's transactions.
func TestLocateMySQLAcrossFiles(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	_, _, items := mysqlItems(t, mysqlFixture)
	_, _, more := mysqlItems(t, "../test/fixtures/mysql-binlog/binlog/binlog-main.000003")
	more[0].NewFile.UpstreamFile = "binlog-main.000003"
	epoch := h.claim()
	h.mustAppend(&Append{Epoch: epoch, Items: items})
	h.mustAppend(&Append{Epoch: epoch, PrevOrdinal: 15, Items: more})
	recs := readAll(t, h.g, Start{File: 2, Served: 4})
	fdeLen := int(binary.LittleEndian.Uint32(recs[0].Payload[9:]))
	if set, err := binlog.ParsePreviousGTIDs(recs[0].Payload[fdeLen:], true); err != nil || set.String() != "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-247" {
		t.Fatalf("second file's PREVIOUS_GTIDS %v, %v", set, err)
	}
	for want, file := range map[string]uint64{
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-240:250":     1, // a gap before file 2
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-247":         2,
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-247:249-262": 2, // 248 missing: served, the rest skipped
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-262":         2, // nothing to send: the tail of file 2
	} {
		s, err := h.g.LocateMySQL(mustSet(t, want))
		if err != nil || s.File != file || s.Served != 4 {
			t.Errorf("locate %s: %+v, %v; want file %d", want, s, err, file)
		}
	}
}

// A snapshot holds the executed set as of PrepareSnapshot, however far Update has
// gone by the time SaveSnapshot writes it (they run concurrently).
func TestMySQLSnapshotIsConsistent(t *testing.T) {
	src := newHarness(t, t.TempDir())
	defer src.close()
	_, _, items := mysqlItems(t, mysqlFixture)
	epoch := src.claim()
	src.mustAppend(&Append{Epoch: epoch, Items: items[:8]})
	ctx, err := src.g.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	src.mustAppend(&Append{Epoch: epoch, PrevOrdinal: 7, Items: items[8:]})
	var buf bytes.Buffer
	if err := src.g.SaveSnapshot(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	dst := newHarness(t, t.TempDir())
	defer dst.close()
	if err := dst.g.RecoverFromSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	tail, _ := dst.g.Tail()
	if !tail.MySQL || tail.Executed.String() != "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-239" || tail.Ordinal != 7 {
		t.Fatalf("restored executed set %s (%d transactions), want 1-239 (7)", tail.Executed, tail.Ordinal)
	}
	if s, err := dst.g.LocateMySQL(mustSet(t, "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-235")); err != nil || s.File != 1 {
		t.Fatalf("restored group locates %+v, %v", s, err)
	}
}
