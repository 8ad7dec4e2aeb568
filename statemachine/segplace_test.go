package statemachine

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestPlacedRecordFills: a placed record, filled in chunks of any size (so patches
// straddle chunk ends), is byte for byte the record the Update's buffer builds:
// events placed by the Placer, header sealed over them. Checksummed or not, events
// of every size around binlog's algebraic threshold; events that do not split into
// whole ones are refused.
func TestPlacedRecordFills(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		checksummed := round%4 != 0
		var events []byte
		for n := 1 + rnd.IntN(6); n > 0; n-- {
			size := rnd.IntN(300)
			if rnd.IntN(3) == 0 {
				size = 5000 + rnd.IntN(20000)
			}
			e := binlog.NewOpaque(byte(20+n), testServer, size, checksummed)
			binlog.SetLogPos(e, rnd.Uint32(), 0, checksummed)
			e[17] |= byte(binlog.FlagBinlogInUse)
			events = append(events, e...)
		}
		start := uint64(rnd.IntN(1 << 20))
		orig := bytes.Clone(events)
		g := &Group{}
		g.m.Checksummed = checksummed
		var r placedRecord
		if !g.placeRecord(&r, events, start, recTxn, 77, nil) {
			t.Fatalf("round %d: whole events refused", round)
		}
		placed := bytes.Clone(events)
		var pl binlog.Placer
		if err := pl.Place(placed, start, binlog.FlagBinlogInUse, checksummed); err != nil {
			t.Fatal(err)
		}
		want := appendRecord(nil, recTxn, 77, placed)
		got := make([]byte, r.size())
		for off := 0; off < len(got); {
			c := min(1+rnd.IntN(40), len(got)-off)
			if rnd.IntN(4) == 0 {
				c = min(1+rnd.IntN(9000), len(got)-off)
			}
			r.fill(got[off:off+c], off)
			off += c
		}
		if !bytes.Equal(got, want) {
			at := 0
			for at < len(got) && got[at] == want[at] {
				at++
			}
			t.Fatalf("round %d (checksummed %v): placed record differs from the built one at byte %d of %d", round, checksummed, at, len(got))
		}
		if !bytes.Equal(events, orig) {
			t.Fatalf("round %d: the entry's events were modified", round)
		}
		if g.placeRecord(&r, events[:len(events)-1], start, recTxn, 77, nil) {
			t.Fatalf("round %d: a cut event was taken as whole", round)
		}
	}
}
