package binlog

import (
	"bytes"
	"fmt"
	"math"
	"testing"
)

func gtidEvent(g GTID, flags byte) []byte { return NewGTIDEvent(g, flags, true) }

func queryEvent(sql string) []byte { return NewQuery(1, "test", sql, true) }

func TestHeaderRoundTrip(t *testing.T) {
	ev := NewRotate(7, 0, 0, FlagArtificial, "mariadb-bin.000042", 4, true)
	h, err := ParseHeader(ev)
	if err != nil {
		t.Fatal(err)
	}
	if h.Type != RotateEvent || h.ServerID != 7 || h.Flags != FlagArtificial || int(h.EventSize) != len(ev) {
		t.Fatalf("unexpected header %+v", h)
	}
	if err := VerifyChecksum(ev); err != nil {
		t.Fatal(err)
	}
	file, pos, err := ParseRotate(ev, true)
	if err != nil || file != "mariadb-bin.000042" || pos != 4 {
		t.Fatalf("rotate = %q %d %v", file, pos, err)
	}
}

func TestSetLogPosRefreshesChecksum(t *testing.T) {
	ev := queryEvent("BEGIN")
	ev[17] = byte(FlagBinlogInUse)
	SetLogPos(ev, 12345, FlagBinlogInUse, true)
	h, _ := ParseHeader(ev)
	if h.LogPos != 12345 || h.Flags&FlagBinlogInUse != 0 {
		t.Fatalf("log_pos/flags not rewritten: %+v", h)
	}
	if err := VerifyChecksum(ev); err != nil {
		t.Fatalf("checksum not refreshed: %v", err)
	}
	ev[30] ^= 0xff
	if err := VerifyChecksum(ev); err == nil {
		t.Fatal("a flipped byte must fail the checksum")
	}
}

func TestGTIDListRoundTrip(t *testing.T) {
	p, err := ParsePosition("0-1-100,3-2-7")
	if err != nil {
		t.Fatal(err)
	}
	ev := NewGTIDList(1, 0, 0, p, true)
	got, err := ParseGTIDList(ev, true)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(p) || got.String() != "0-1-100,3-2-7" {
		t.Fatalf("got %v want %v", got, p)
	}
	enc := p.AppendBinary(nil)
	dec, rest, err := DecodePosition(enc)
	if err != nil || len(rest) != 0 || !dec.Equal(p) {
		t.Fatalf("binary round trip: %v %v %v", dec, rest, err)
	}
	if _, err := ParsePosition("0-1-1,0-2-2"); err == nil {
		t.Fatal("two GTIDs of one domain must be refused")
	}
	if !p.Contains(GTID{0, 9, 100}) || p.Contains(GTID{0, 1, 101}) || p.Contains(GTID{5, 1, 1}) {
		t.Fatal("Contains compares sequence numbers within a domain")
	}
}

func TestEndsGroup(t *testing.T) {
	g, err := ParseGTIDEvent(gtidEvent(GTID{0, 1, 5}, 0))
	if err != nil || g.GTID != (GTID{0, 1, 5}) {
		t.Fatalf("gtid = %+v, %v", g, err)
	}
	if EndsGroup(g, queryEvent("BEGIN"), true) {
		t.Fatal("BEGIN does not end a group")
	}
	if !EndsGroup(g, queryEvent("COMMIT"), true) {
		t.Fatal("COMMIT ends a group")
	}
	ddl, _ := ParseGTIDEvent(gtidEvent(GTID{0, 1, 6}, GTIDStandalone))
	if !EndsGroup(ddl, queryEvent("CREATE TABLE t (a int)"), true) {
		t.Fatal("a standalone group ends with its statement")
	}
}

func TestSplit(t *testing.T) {
	var buf []byte
	evs := [][]byte{queryEvent("BEGIN"), queryEvent("COMMIT"), NewHeartbeat(1, "f", 4, false)}
	for _, e := range evs {
		buf = append(buf, e...)
	}
	i := 0
	if err := Split(buf, func(ev []byte) error {
		if !bytes.Equal(ev, evs[i]) {
			t.Fatalf("event %d differs", i)
		}
		i++
		return nil
	}); err != nil || i != 3 {
		t.Fatalf("split: %d events, %v", i, err)
	}
	if err := Split(buf[:len(buf)-1], func([]byte) error { return nil }); err == nil {
		t.Fatal("a truncated buffer must be an error")
	}
}

// FuzzDecoders feeds arbitrary bytes to every decoder of bytes that come from the
// network or disk: none may panic, whatever they return.
func FuzzDecoders(f *testing.F) {
	f.Add(NewRotate(1, 0, 0, 0, "x.000001", 4, true), true)
	f.Add(NewGTIDList(1, 0, 0, Position{0: {0, 1, 2}}, false), false)
	f.Add(gtidEvent(GTID{1, 2, 3}, 3), true)
	f.Add(queryEvent("COMMIT"), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, b []byte, ck bool) {
		_, _ = ParseHeader(b)
		_ = VerifyChecksum(b)
		_, _, _ = ParseRotate(b, ck)
		_, _ = ParseGTIDList(b, ck)
		_, _ = ParseFDE(b)
		_, _ = QueryText(b, ck)
		_, _, _ = DecodePosition(b)
		_ = Split(b, func([]byte) error { return nil })
		if g, err := ParseGTIDEvent(b); err == nil && len(b) > 4 {
			_ = EndsGroup(g, b, ck)
		}
	})
}

// TestGTIDString: a GTID prints as MariaDB prints it, and parses back, at the
// extremes too.
func TestGTIDString(t *testing.T) {
	for _, g := range []GTID{{}, {Domain: 0, Server: 1, Seq: 2}, {Domain: math.MaxUint32, Server: math.MaxUint32, Seq: math.MaxUint64}} {
		want := fmt.Sprintf("%d-%d-%d", g.Domain, g.Server, g.Seq)
		if got := g.String(); got != want {
			t.Fatalf("%#v prints %q, want %q", g, got, want)
		}
		if back, err := ParseGTID(g.String()); err != nil || back != g {
			t.Fatalf("%q parses to %#v, %v", g.String(), back, err)
		}
	}
}
