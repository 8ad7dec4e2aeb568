package binlog

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// events builds a stream of checksummed events of the given body sizes.
func events(sizes ...int) []byte {
	var out []byte
	for i, n := range sizes {
		out = append(out, NewOpaque(byte(20+i%10), 1, n, true)...)
	}
	return out
}

// placeWhole is the reference: SetLogPos on each whole event.
func placeWhole(t testing.TB, buf []byte, start uint64) []byte {
	out := append([]byte(nil), buf...)
	pos := start
	if err := Split(out, func(ev []byte) error {
		pos += uint64(len(ev))
		SetLogPos(ev, uint32(pos), FlagBinlogInUse, true)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// pieces cuts buf at the given offsets.
func pieces(buf []byte, cuts []int) [][]byte {
	var out [][]byte
	prev := 0
	for _, c := range cuts {
		out = append(out, buf[prev:c])
		prev = c
	}
	return append(out, buf[prev:])
}

// placeInPieces places buf as the state machine does: piece by piece, carrying the
// Placer between pieces as a pending transaction does.
func placeInPieces(buf []byte, cuts []int, start uint64) ([]byte, error) {
	out := append([]byte(nil), buf...)
	var p Placer
	pos := start
	for _, pc := range pieces(out, cuts) {
		if err := p.Place(pc, pos, FlagBinlogInUse, true); err != nil {
			return nil, err
		}
		pos += uint64(len(pc))
	}
	return out, nil
}

// TestPlaceAcrossPieces: an event cut anywhere CutEvent allows (right after its header,
// just before its checksum, many times over) is placed exactly as if it were whole,
// also past 4 GiB, where log_pos wraps as a master writes it.
func TestPlaceAcrossPieces(t *testing.T) {
	buf := events(10, 300000, 5, 70000, 0)
	big := HeaderLen + 300000 + ChecksumLen // the second event
	first := HeaderLen + 10 + ChecksumLen
	cases := map[string][]int{
		"whole":               nil,
		"at event boundaries": {first, first + big},
		"right after header":  {first + HeaderLen},
		"before checksum":     {first + big - ChecksumLen},
		"header and checksum": {first + HeaderLen, first + big - ChecksumLen},
	}
	var cut []int
	for _, c := range CutEvent(big, 4096) {
		cut = append(cut, first+c)
	}
	cases["CutEvent 4 KiB"] = cut
	for name, cuts := range cases {
		for _, start := range []uint64{4, 1<<32 - 100000} {
			got, err := placeInPieces(buf, cuts, start)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if want := placeWhole(t, buf, start); !bytes.Equal(got, want) {
				t.Fatalf("%s at %d: placed in pieces differs from placed whole", name, start)
			}
			if err := Split(got, func(ev []byte) error { return VerifyChecksum(ev) }); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
}

func TestPlaceRefusesBadCuts(t *testing.T) {
	buf := events(100, 100)
	second := HeaderLen + 100 + ChecksumLen
	for name, cuts := range map[string][]int{
		"inside a header":   {second + 5},
		"inside a checksum": {second + HeaderLen + 100 + 2},
	} {
		if _, err := placeInPieces(buf, cuts, 4); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
	var s Stream
	bad := NewOpaque(20, 1, 10, true)
	bad[9] = 5 // size below the header
	if err := s.Feed(bad, func([]byte, bool, bool) error { return nil }); err == nil {
		t.Fatal("an event claiming 5 bytes was accepted")
	}
}

func TestCutEvent(t *testing.T) {
	for i := 0; i < 2000; i++ {
		max := HeaderLen + ChecksumLen + 1 + rand.IntN(5000)
		size := HeaderLen + rand.IntN(40000)
		prev := 0
		for _, c := range append(CutEvent(size, max), size) {
			if c-prev > max || c <= prev {
				t.Fatalf("size %d max %d: part [%d,%d)", size, max, prev, c)
			}
			prev = c
		}
		cuts := CutEvent(size, max)
		if len(cuts) > 0 && (cuts[0] < HeaderLen || size-cuts[len(cuts)-1] < ChecksumLen) {
			t.Fatalf("size %d max %d: cuts %v split the header or the checksum", size, max, cuts)
		}
	}
}

// FuzzPlace feeds arbitrary bytes, cut at arbitrary points, to the Placer: it must
// never panic, and whenever it accepts the pieces and the bytes are whole events, the
// result must equal placing them whole.
func FuzzPlace(f *testing.F) {
	f.Add(events(10, 300, 0), uint16(40), uint16(330))
	f.Add(events(5), uint16(19), uint16(0))
	f.Fuzz(func(t *testing.T, buf []byte, a, b uint16) {
		cuts := []int{int(a) % (len(buf) + 1), int(b) % (len(buf) + 1)}
		if cuts[0] > cuts[1] {
			cuts[0], cuts[1] = cuts[1], cuts[0]
		}
		whole := true
		if Split(buf, func(ev []byte) error {
			if len(ev) < HeaderLen+ChecksumLen {
				whole = false
			} else {
				SetLogPos(ev, binary.LittleEndian.Uint32(ev[13:]), 0, true) // trailers match, as the syncer checks
			}
			return nil
		}) != nil || !whole {
			_, _ = placeInPieces(buf, cuts, 4) // must not panic
			return
		}
		got, err := placeInPieces(buf, cuts, 4)
		if err != nil {
			return
		}
		if want := placeWhole(t, buf, 4); !bytes.Equal(got, want) {
			t.Fatalf("cuts %v: placed in pieces differs from placed whole", cuts)
		}
	})
}

// TestHeartbeatPast4GiB: a heartbeat position past 4 GiB goes in MariaDB's 8-byte
// sub-header, with log_pos 0; below it, in log_pos as before.
func TestHeartbeatPast4GiB(t *testing.T) {
	low := NewHeartbeat(1, "flotilla-bin.000002", 1234, true)
	if h, _ := ParseHeader(low); h.LogPos != 1234 || int(h.EventSize) != len(low) {
		t.Fatalf("heartbeat below 4 GiB: %+v", h)
	}
	ev := NewHeartbeat(1, "flotilla-bin.000002", 1<<32+77, true)
	h, err := ParseHeader(ev)
	if err != nil || h.LogPos != 0 || int(h.EventSize) != len(ev) {
		t.Fatalf("heartbeat past 4 GiB: %+v %v", h, err)
	}
	if err := VerifyChecksum(ev); err != nil {
		t.Fatal(err)
	}
	if pos := binary.LittleEndian.Uint64(ev[HeaderLen:]); pos != 1<<32+77 {
		t.Fatalf("sub-header position %d", pos)
	}
	if name := string(ev[HeaderLen+8 : len(ev)-ChecksumLen]); name != "flotilla-bin.000002" {
		t.Fatalf("file name %q", name)
	}
}
