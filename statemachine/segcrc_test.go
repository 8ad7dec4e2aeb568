package statemachine

import (
	"bytes"
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// testCommand returns events inside a command of random bytes around them (the
// command's header and other items), as DecodeCommand returns them, and the
// command's checksum known.
func testCommand(rnd *rand.Rand, events []byte, around int) ([]byte, knownCRC) {
	before, after := rnd.IntN(around+1), rnd.IntN(around+1)
	cmd := make([]byte, before, before+len(events)+after)
	for i := range cmd {
		cmd[i] = byte(rnd.Uint32())
	}
	cmd = append(cmd, events...)
	for range after {
		cmd = append(cmd, byte(rnd.Uint32()))
	}
	return cmd[before : before+len(events)], knownCRC{cmd: cmd, crc: crc32.Checksum(cmd, castagnoli), ok: true}
}

// TestPlacedRecordDerivesItsChecksum: a placed record of large events whose entry's
// checksum is known carries the checksum a pass over its bytes gives, derived
// (checksummed events or not, one event or several, the command's other bytes before
// and after them); small events, a command whose other bytes are many, events that
// are not the command's, and an unknown checksum take the pass.
func TestPlacedRecordDerivesItsChecksum(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	derived := 0
	for round := range 60 {
		checksummed := round%3 != 0
		var events []byte
		n := 1 + rnd.IntN(3)
		for i := range n {
			size := derivedMinEvent + rnd.IntN(300<<10)
			if round%5 == 4 && i == 0 {
				size = rnd.IntN(300) // one small event among large ones
			}
			e := binlog.NewOpaque(byte(20+i), testServer, size, checksummed)
			binlog.SetLogPos(e, rnd.Uint32(), 0, checksummed)
			e[17] |= byte(binlog.FlagBinlogInUse)
			events = append(events, e...)
		}
		events, known := testCommand(rnd, events, 64)
		start := uint64(rnd.IntN(1 << 20))
		g := &Group{}
		g.m.Checksummed = checksummed
		var want, got placedRecord
		if !g.placeRecord(&want, events, start, recTxn, 77, nil) || !g.placeRecord(&got, events, start, recTxn, 77, &known) {
			t.Fatalf("round %d: whole events refused", round)
		}
		if got.hdr != want.hdr {
			t.Fatalf("round %d (checksummed %v, %d events): derived header %x, want %x", round, checksummed, n, got.hdr, want.hdr)
		}
		if _, ok := known.part(events, n); ok {
			derived++
		}
	}
	if derived < 30 {
		t.Fatalf("only %d of 60 rounds derived their checksum: the test does not exercise the algebra", derived)
	}
	// When the pass is cheaper, or the only way.
	small := binlog.NewOpaque(30, testServer, 100, true)
	var few []byte
	for len(few) < 2*derivedMinEvent {
		few = append(few, small...)
	}
	few, k := testCommand(rnd, few, 0)
	if _, ok := k.part(few, len(few)/len(small)); ok {
		t.Fatal("events of 100 bytes derived their checksum")
	}
	big := binlog.NewOpaque(30, testServer, 2*derivedMinEvent, true)
	inBig, k := testCommand(rnd, big, 0)
	for name, c := range map[string]knownCRC{
		"unknown checksum":  {cmd: k.cmd},
		"many other bytes":  {cmd: append(bytes.Clone(k.cmd), make([]byte, len(big))...), ok: true},
		"not the command's": {cmd: bytes.Clone(k.cmd), crc: k.crc, ok: true},
	} {
		if _, ok := c.part(inBig, 1); ok {
			t.Fatalf("%s: derived a checksum", name)
		}
	}
}

// TestPlacedPartDerivesItsChecksum: a piece of a transaction whose events are cut
// across pieces (binlog.CutEvent), placed by the Placer piece after piece, gets the
// checksum of its placed bytes derived from its entry's, whatever event it begins or
// ends inside of.
func TestPlacedPartDerivesItsChecksum(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	derived := 0
	for round := range 40 {
		checksummed := round%4 != 0
		var stream []byte
		for i := range 1 + rnd.IntN(4) {
			size := rnd.IntN(200)
			if rnd.IntN(3) != 0 {
				size = 100<<10 + rnd.IntN(900<<10)
			}
			stream = append(stream, binlog.NewOpaque(byte(20+i), testServer, size, checksummed)...)
		}
		limit := 64<<10 + rnd.IntN(256<<10)
		var pl binlog.Placer
		pos := uint64(4 + rnd.IntN(1<<20))
		for off := 0; off < len(stream); {
			end := min(off+limit, len(stream))
			// A piece may end inside an event, but not inside a header or trailer.
			var s binlog.Stream
			_ = s.Feed(stream[:end], func([]byte, bool, bool) error { return nil })
			if left := int(s.Left); left > 0 && left < binlog.ChecksumLen {
				end -= binlog.ChecksumLen - left
			}
			for h := 0; h < end; {
				size := int(uint32(stream[h+9]) | uint32(stream[h+10])<<8 | uint32(stream[h+11])<<16)
				if end > h && end < h+binlog.HeaderLen {
					end = h
				}
				h += size
			}
			if end <= off {
				end = min(off+limit, len(stream))
			}
			payload, known := testCommand(rnd, stream[off:end], 32)
			left := pl.Left
			placed := bytes.Clone(payload)
			if err := pl.Place(placed, pos, binlog.FlagBinlogInUse, checksummed); err != nil {
				t.Fatalf("round %d: place: %v", round, err)
			}
			want := crc32.Checksum(placed, castagnoli)
			if got, ok := placedPartCRC(&known, payload, placed, left); ok {
				derived++
				if got != want {
					t.Fatalf("round %d (checksummed %v), piece at %d of %d (%d bytes into an event): derived %08x, want %08x", round, checksummed, off, len(stream), left, got, want)
				}
			}
			pos += uint64(end - off)
			off = end
		}
	}
	if derived < 40 {
		t.Fatalf("only %d pieces derived their checksum: the test does not exercise the algebra", derived)
	}
}
