package statemachine

import (
	"bytes"
	"encoding/binary"
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
		if want.derived {
			t.Fatalf("round %d: derived without a known checksum", round)
		}
		if got.derived {
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
	if _, ok := k.part(inBig, 1); !ok {
		t.Fatal("a large event that is its whole command did not derive its checksum")
	}
	// The same event with more than a quarter of its size around it in its command.
	crowded := append(make([]byte, 0, len(big)+len(big)/3), big...)
	crowded = append(crowded, make([]byte, len(big)/3)...)
	inCrowded := crowded[:len(big)]
	for name, c := range map[string]struct {
		known  knownCRC
		events []byte
	}{
		"unknown checksum":  {knownCRC{cmd: k.cmd}, inBig},
		"many other bytes":  {knownCRC{cmd: crowded, crc: crc32.Checksum(crowded, castagnoli), ok: true}, inCrowded},
		"not the command's": {knownCRC{cmd: bytes.Clone(k.cmd), crc: k.crc, ok: true}, inBig},
	} {
		if _, ok := c.known.part(c.events, 1); ok {
			t.Fatalf("%s: derived a checksum", name)
		}
	}
}

// testPieces cuts a stream of events into pieces as the syncer does: whole events
// until a piece holds limit bytes or more, an event larger than limit cut where
// binlog.CutEvent says (its first part ends the piece before it).
func testPieces(stream []byte, limit int) [][]byte {
	var out [][]byte
	start := 0
	for off := 0; off < len(stream); {
		size := int(binary.LittleEndian.Uint32(stream[off+9:]))
		if size > limit {
			for _, c := range binlog.CutEvent(size, limit) {
				out = append(out, stream[start:off+c])
				start = off + c
			}
		}
		off += size
		if off-start >= limit {
			out = append(out, stream[start:off])
			start = off
		}
	}
	if start < len(stream) {
		out = append(out, stream[start:])
	}
	return out
}

// checkPieces places the pieces of a stream one after the other, as apply does, and
// fails if a checksum derived from a piece's entry differs from the pass's: on the
// Placer's path (placedPartCRC) and, for pieces of whole events, on the placed path
// (placeRecord). It returns how many were derived.
func checkPieces(t *testing.T, rnd *rand.Rand, pieces [][]byte, checksummed bool) (derived int) {
	t.Helper()
	var pl binlog.Placer
	pos := uint64(4 + rnd.IntN(1<<20))
	for i, piece := range pieces {
		payload, known := testCommand(rnd, piece, 32)
		left := pl.Left
		if left == 0 {
			g := &Group{}
			g.m.Checksummed = checksummed
			var want, got placedRecord
			if g.placeRecord(&want, payload, pos, recPart, 9, nil) {
				if !g.placeRecord(&got, payload, pos, recPart, 9, &known) || got.hdr != want.hdr {
					t.Fatalf("piece %d of %d (checksummed %v): placed record header %x (derived %v), want %x", i, len(pieces), checksummed, got.hdr, got.derived, want.hdr)
				}
			}
		}
		placed := bytes.Clone(payload)
		if err := pl.Place(placed, pos, binlog.FlagBinlogInUse, checksummed); err != nil {
			t.Fatalf("piece %d: place: %v", i, err)
		}
		if got, ok := placedPartCRC(&known, payload, placed, left); ok {
			derived++
			if want := crc32.Checksum(placed, castagnoli); got != want {
				t.Fatalf("piece %d of %d (checksummed %v, %d bytes, %d bytes into an event): derived %08x, want %08x", i, len(pieces), checksummed, len(piece), left, got, want)
			}
		}
		pos += uint64(len(piece))
	}
	return derived
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
		derived += checkPieces(t, rnd, testPieces(stream, 64<<10+rnd.IntN(256<<10)), checksummed)
	}
	if derived < 40 {
		t.Fatalf("only %d pieces derived their checksum: the test does not exercise the algebra", derived)
	}
}

// FuzzDerivedChecksum: for any stream of events (sizes from the input, small and
// large, around derivedMinEvent) cut into pieces of 64 KiB to 576 KiB, a derived
// checksum equals the pass's.
func FuzzDerivedChecksum(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 7, 9}, uint16(100), true, uint64(1))
	f.Add([]byte{255, 255, 0, 1}, uint16(0), false, uint64(2))
	f.Add([]byte{255, 255, 1, 201}, uint16(0), true, uint64(3)) // checksummed, derived
	f.Fuzz(func(t *testing.T, sizes []byte, limit uint16, checksummed bool, seed uint64) {
		if len(sizes) > 16 {
			sizes = sizes[:16]
		}
		var stream []byte
		for i, v := range sizes {
			size := int(v)
			if v&1 == 1 {
				size = derivedMinEvent/2 + int(v)*1024
			}
			stream = append(stream, binlog.NewOpaque(byte(20+i), testServer, size, checksummed)...)
		}
		if len(stream) == 0 {
			return
		}
		// Pieces of 64 KiB and more, as derivation asks (a piece ends past the limit).
		checkPieces(t, rand.New(rand.NewPCG(seed, 1)), testPieces(stream, derivedMinEvent+int(limit)*8), checksummed)
	})
}
