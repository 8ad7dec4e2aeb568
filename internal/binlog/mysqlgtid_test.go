package binlog

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
)

const fixtureUUID = "d725c94e-606e-45cc-ade2-29bf1b217ca1"

func TestMySQLSetText(t *testing.T) {
	for in, want := range map[string]string{
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-5:7":                                       fixtureUUID + ":1-5:7",
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:6, D725C94E-606E-45CC-ADE2-29BF1B217CA1:1-5": fixtureUUID + ":1-6",
		"00000000-0000-0000-0000-000000000002:1-3,\n" + fixtureUUID + ":Ab_1:4:2":          "00000000-0000-0000-0000-000000000002:1-3," + fixtureUUID + ":ab_1:2:4",
		fixtureUUID + ":1:tag:1-2":                                                         fixtureUUID + ":1:tag:1-2",
		"":                                                                                 "",
	} {
		s, err := ParseMySQLSet(in)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := s.String(); got != want {
			t.Fatalf("%q printed %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"nope:1", fixtureUUID + ":0", fixtureUUID + ":5-3", fixtureUUID + ":9tag:1", fixtureUUID + ":1-x"} {
		if _, err := ParseMySQLSet(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
	s, _ := ParseMySQLSet(fixtureUUID + ":1-5:7:t:3")
	sid, _ := ParseSID(fixtureUUID)
	for gno, want := range map[int64]bool{1: true, 5: true, 6: false, 7: true, 8: false} {
		if got := s.Contains(MySQLGTID{Source{SID: sid}, gno}); got != want {
			t.Fatalf("contains %d = %v", gno, got)
		}
	}
	if !s.Contains(MySQLGTID{Source{sid, "t"}, 3}) || s.Contains(MySQLGTID{Source{sid, "t"}, 1}) {
		t.Fatal("tagged membership")
	}
}

func TestMySQLSetBinaryRoundTrip(t *testing.T) {
	s, _ := ParseMySQLSet("00000000-0000-0000-0000-000000000002:1-3:9," + fixtureUUID + ":1-232")
	b, err := s.AppendEncoded(nil)
	if err != nil {
		t.Fatal(err)
	}
	back, rest, err := DecodeMySQLSet(append(b, 0xAA))
	if err != nil || len(rest) != 1 || back.String() != s.String() {
		t.Fatalf("round trip: %v %q %v", back, rest, err)
	}
	tagged, _ := ParseMySQLSet(fixtureUUID + ":t:1")
	if b, _ := tagged.AppendEncoded(nil); b[7] != 1 {
		t.Fatal("tagged set encoded in the untagged format")
	}
	for _, bad := range [][]byte{nil, {1, 0, 0, 0, 0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}} {
		if _, _, err := DecodeMySQLSet(bad); err == nil {
			t.Fatalf("%x decoded", bad)
		}
	}
}

// TestMySQLFixture reads a real MySQL binlog file: every event's CRC32 holds, its
// PREVIOUS_GTIDS decodes to the set the server printed, and its GTID events carry
// the server's UUID and gno 233..247 in order.
func TestMySQLFixture(t *testing.T) {
	raw, err := os.ReadFile("testdata/mysql/binlog-main.000002")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:4], []byte{0xfe, 'b', 'i', 'n'}) {
		t.Fatal("no binlog magic")
	}
	var gnos []int64
	var prev string
	var grp MySQLGroup
	groups, inGroup := 0, false
	err = Split(raw[4:], func(ev []byte) error {
		if err := VerifyChecksum(ev); err != nil {
			return err
		}
		// Every transaction group (15 of them: row changes and DDL) ends where it
		// should: a GTID event only ever follows an ended group.
		if OpensMySQLGroup(ev) {
			if inGroup {
				t.Fatalf("GTID event inside an open group at log_pos %d", binary.LittleEndian.Uint32(ev[13:]))
			}
			inGroup = true
		}
		if grp.Next(ev, true) {
			groups++
			inGroup = false
		}
		switch ev[4] {
		case MySQLPreviousGTIDsEvent:
			s, rest, err := DecodeMySQLSet(ev[HeaderLen : len(ev)-ChecksumLen])
			if err != nil || len(rest) != 0 {
				t.Fatalf("PREVIOUS_GTIDS: %v, %d bytes left", err, len(rest))
			}
			prev = s.String()
		case MySQLGTIDEvent:
			g, err := ParseMySQLGTIDEvent(ev)
			if err != nil {
				return err
			}
			if g.SID.String() != fixtureUUID || g.Tag != "" {
				t.Fatalf("GTID %v from another source", g)
			}
			gnos = append(gnos, g.GNO)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if prev != fixtureUUID+":1-232" {
		t.Fatalf("PREVIOUS_GTIDS = %q", prev)
	}
	if groups != 15 || inGroup {
		t.Fatalf("%d groups ended (open at the end: %v), want 15", groups, inGroup)
	}
	if len(gnos) != 15 || gnos[0] != 233 || gnos[14] != 247 {
		t.Fatalf("gnos %v", gnos)
	}
	for i := 1; i < len(gnos); i++ {
		if gnos[i] != gnos[i-1]+1 {
			t.Fatalf("gnos %v not consecutive", gnos)
		}
	}
}

// FuzzMySQLSet: the text and binary decoders never panic, and what they accept prints
// and encodes back to itself.
func FuzzMySQLSet(f *testing.F) {
	f.Add(fixtureUUID+":1-5:7,00000000-0000-0000-0000-000000000002:t:3", []byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, text string, bin []byte) {
		if s, err := ParseMySQLSet(text); err == nil {
			again, err := ParseMySQLSet(s.String())
			if err != nil || again.String() != s.String() {
				t.Fatalf("%q printed %q, which reads back as %v %v", text, s.String(), again, err)
			}
		}
		if s, _, err := DecodeMySQLSet(bin); err == nil {
			// Set algebra against the text set: a-b holds nothing of b, and a holds
			// (a-b) and everything of b it held before.
			if o, err := ParseMySQLSet(text); err == nil {
				d := s.Subtract(o)
				if !s.ContainsSet(d) || len(d.Subtract(s)) != 0 {
					t.Fatalf("%v - %v = %v is not within the first", s, o, d)
				}
				for src, ivs := range d {
					for _, iv := range ivs {
						if o.Contains(MySQLGTID{Source: src, GNO: iv.Start}) || o.Contains(MySQLGTID{Source: src, GNO: iv.End - 1}) {
							t.Fatalf("%v - %v = %v holds a GTID of the second", s, o, d)
						}
					}
				}
				u := d.Clone()
				u.Union(s.Subtract(d))
				if u.String() != s.String() {
					t.Fatalf("(%v - %v) + the rest = %v", s, o, u)
				}
			}
			b, err := s.AppendEncoded(nil)
			if err != nil {
				t.Fatal(err)
			}
			again, _, err := DecodeMySQLSet(b)
			if err != nil || again.String() != s.String() {
				t.Fatalf("%x decoded to %v, which encodes back as %v %v", bin, s, again, err)
			}
		}
	})
}

// TestMySQLGroupEnds: the ways a MySQL group ends, and the events that do not end it.
func TestMySQLGroupEnds(t *testing.T) {
	gtid := func() []byte { return NewOpaque(MySQLGTIDEvent, 1, 25, true) }
	q := func(sql string) []byte { return NewQuery(1, "db", sql, true) }
	rows := NewOpaque(30, 1, 40, true)
	for name, c := range map[string]struct {
		evs     [][]byte
		endAtIx int // index of the event that ends the group; -1: none
	}{
		"row transaction":   {[][]byte{gtid(), q("BEGIN"), NewOpaque(TableMapEvent, 1, 20, true), rows, NewXID(1, 1, true)}, 4},
		"DDL":               {[][]byte{gtid(), q("CREATE TABLE t (a int)")}, 1},
		"non-transactional": {[][]byte{gtid(), q("BEGIN"), rows, q("COMMIT")}, 3},
		"compressed":        {[][]byte{gtid(), NewOpaque(MySQLTransactionPayloadEvent, 1, 300, true)}, 1},
		"XA prepare":        {[][]byte{gtid(), q("XA START 'x'"), rows, q("XA END 'x'"), NewOpaque(XAPrepareEvent, 1, 10, true)}, 4},
		"tagged":            {[][]byte{NewOpaque(MySQLGTIDTaggedEvent, 1, 60, true), q("BEGIN"), rows, NewXID(1, 2, true)}, 3},
		"anonymous":         {[][]byte{NewOpaque(MySQLAnonymousGTIDEvent, 1, 25, true), q("DROP TABLE t")}, 1},
		"still open":        {[][]byte{gtid(), q("BEGIN"), rows}, -1},
		"outside any group": {[][]byte{q("COMMIT"), NewXID(1, 3, true)}, -1},
	} {
		var g MySQLGroup
		for i, ev := range c.evs {
			if got := g.Next(ev, true); got != (i == c.endAtIx) {
				t.Fatalf("%s: event %d ends the group: %v", name, i, got)
			}
		}
	}
}

func TestMySQLSetAlgebra(t *testing.T) {
	a, _ := ParseMySQLSet(fixtureUUID + ":1-10:20-30,00000000-0000-0000-0000-000000000002:5")
	b, _ := ParseMySQLSet(fixtureUUID + ":3-4:10-25")
	if got := a.Subtract(b).String(); got != "00000000-0000-0000-0000-000000000002:5,"+fixtureUUID+":1-2:5-9:26-30" {
		t.Fatalf("a-b = %s", got)
	}
	if a.ContainsSet(b) || !a.ContainsSet(a.Subtract(b)) || !a.ContainsSet(MySQLSet{}) {
		t.Fatal("ContainsSet")
	}
}

// TestHeartbeatV2 checks MySQL 8.0.26+'s heartbeat body: (type, length, value)
// fields as length-encoded integers, the position in full past 4 GiB.
func TestHeartbeatV2(t *testing.T) {
	ev := NewHeartbeatV2(1, "binlog.000001", 1234, false)
	want := append(append([]byte{1, 13}, "binlog.000001"...), 2, 3, 0xfc, 0xd2, 0x04, 0)
	if h, _ := ParseHeader(ev); h.Type != MySQLHeartbeatV2Event || h.LogPos != 1234 || string(ev[HeaderLen:]) != string(want) {
		t.Fatalf("heartbeat v2 %x", ev)
	}
	ev = NewHeartbeatV2(1, "b", 5<<32+7, true)
	if h, _ := ParseHeader(ev); h.LogPos != 7 || VerifyChecksum(ev) != nil || ev[HeaderLen+3+1+1] != 0xfe {
		t.Fatalf("heartbeat v2 past 4 GiB %x", ev)
	}
}

// TestMySQLTagged: GTID_TAGGED events and the tagged set form, against MySQL's
// documented bytes and go-mysql's reading of them.
func TestMySQLTagged(t *testing.T) {
	if b := appendVarint(nil, 10); len(b) != 1 || b[0] != 0x14 { // gno 5, zig-zag
		t.Fatalf("varint(10) = %x", b)
	}
	if b := appendVarint(nil, 0x80); len(b) != 2 || b[0] != 0x01 || b[1] != 0x02 {
		t.Fatalf("varint(0x80) = %x", b)
	}
	for _, v := range []uint64{0, 1, 127, 128, 1 << 20, 1<<56 - 1, 1 << 56, 1<<64 - 1} {
		got, n, err := readVarint(appendVarint(nil, v))
		if err != nil || got != v || n != len(appendVarint(nil, v)) {
			t.Fatalf("varint %d read back as %d (%d bytes, %v)", v, got, n, err)
		}
	}
	sid, _ := ParseSID(fixtureUUID)
	g := MySQLGTID{Source: Source{SID: sid, Tag: "etl_2"}, GNO: 1 << 40}
	ev := NewMySQLGTIDTagged(10, g, true)
	if got, err := ParseMySQLGTIDEvent(ev); err != nil || got != g || VerifyChecksum(ev) != nil {
		t.Fatalf("GTID_TAGGED read back as %v, %v", got, err)
	}
	set, err := ParseMySQLSet(fixtureUUID + ":1-5:etl_2:3-9,3e11fa47-71ca-11e1-9e33-c80aa9429562:7")
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := set.AppendEncoded(nil)
	if enc[0] != 1 || enc[7] != 1 {
		t.Fatalf("a tagged set must carry the format marker: %x", enc[:8])
	}
	theirs, err := mysql.DecodeMysqlGTIDSet(enc)
	if err != nil {
		t.Fatalf("go-mysql cannot read our tagged set: %v", err)
	}
	back, err := ParseMySQLSet(theirs.String())
	if err != nil || back.String() != set.String() {
		t.Fatalf("go-mysql read %s, want %s (%v)", theirs, set, err)
	}
	ours, _, err := DecodeMySQLSet(theirs.Encode())
	if err != nil || ours.String() != set.String() {
		t.Fatalf("go-mysql's encoding reads back as %v, %v", ours, err)
	}
}

func FuzzMySQLTaggedEvent(f *testing.F) {
	sid, _ := ParseSID(fixtureUUID)
	f.Add(NewMySQLGTIDTagged(1, MySQLGTID{Source: Source{SID: sid, Tag: "t"}, GNO: 9}, true))
	f.Fuzz(func(t *testing.T, ev []byte) {
		if len(ev) > 4 {
			ev[4] = MySQLGTIDTaggedEvent
		}
		if g, err := ParseMySQLGTIDEvent(ev); err == nil {
			if again, err := ParseMySQLGTIDEvent(NewMySQLGTIDTagged(1, g, false)); err != nil || again != g {
				t.Fatalf("%v rebuilt reads as %v, %v", g, again, err)
			}
		}
	})
}
