package binlog

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// relocated returns a copy of ev placed at logPos by Relocate and by SetLogPos.
func relocated(ev []byte, logPos uint32, clear uint16) (alg, full []byte) {
	alg, full = append([]byte(nil), ev...), append([]byte(nil), ev...)
	Relocate(alg, logPos, clear, true)
	SetLogPos(full, logPos, clear, true)
	return alg, full
}

// TestRelocateMatchesChecksumming: for events whose trailer matches, Relocate writes
// the bytes SetLogPos does, at every size around the algebraic path's threshold and
// far past it (up to 16 MiB).
func TestRelocateMatchesChecksumming(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 8))
	for _, body := range []int{0, 1, 100, relocateMin - HeaderLen - ChecksumLen - 1, relocateMin - HeaderLen - ChecksumLen, relocateMin, 4093, 65536, 3 << 20, 16 << 20} {
		ev := NewOpaque(30, 1, body, true)
		for i := HeaderLen; i < len(ev)-ChecksumLen; i++ {
			ev[i] = byte(rnd.Uint32())
		}
		binary.LittleEndian.PutUint16(ev[17:], 0x0001|0x0040)
		SetLogPos(ev, rnd.Uint32(), 0, true)
		for _, pos := range []uint32{0, 1, binary.LittleEndian.Uint32(ev[13:]), rnd.Uint32(), 0xFFFFFFFF} {
			for _, clear := range []uint16{0, FlagBinlogInUse, 0xFFFF} {
				alg, full := relocated(ev, pos, clear)
				if string(alg) != string(full) {
					t.Fatalf("event of %d bytes to log_pos %d clearing %#x: Relocate's trailer %08x, checksummed again %08x",
						len(ev), pos, clear, binary.LittleEndian.Uint32(alg[len(alg)-4:]), binary.LittleEndian.Uint32(full[len(full)-4:]))
				}
				if err := VerifyChecksum(alg); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestRelocateKeepsDamage: an event damaged after its trailer was written (one bit
// flipped in its body) still fails its check once relocated, where checksumming it
// again would have sealed the damage.
func TestRelocateKeepsDamage(t *testing.T) {
	ev := NewOpaque(30, 1, relocateMin+12345, true)
	SetLogPos(ev, 1000, 0, true)
	ev[HeaderLen+5000] ^= 0x10
	alg, full := relocated(ev, 70000, FlagBinlogInUse)
	if VerifyChecksum(alg) == nil {
		t.Fatal("a damaged event passes its check after Relocate")
	}
	if VerifyChecksum(full) != nil {
		t.Fatal("reference: SetLogPos should have sealed the damage")
	}
}

// FuzzRelocate: for any event with a matching trailer, Relocate equals SetLogPos; for
// any with a mismatching one of relocateMin bytes or more, the mismatch stays.
func FuzzRelocate(f *testing.F) {
	f.Add([]byte("some body bytes"), uint32(4096), uint32(123456), uint16(1), false)
	f.Add(make([]byte, 9000), uint32(0), uint32(0xFFFFFFFF), uint16(0xFFFF), true)
	f.Add(make([]byte, relocateMin), uint32(77), uint32(1<<31), uint16(1), true)
	f.Fuzz(func(t *testing.T, body []byte, oldPos, newPos uint32, clear uint16, damage bool) {
		ev := NewOpaque(30, 1, len(body), true)
		copy(ev[HeaderLen:], body)
		SetLogPos(ev, oldPos, 0, true)
		if damage && len(body) > 0 {
			ev[HeaderLen] ^= 1
		}
		alg, full := relocated(ev, newPos, clear)
		if string(alg[:len(alg)-4]) != string(full[:len(full)-4]) {
			t.Fatal("Relocate and SetLogPos wrote different headers")
		}
		switch {
		case !damage || len(body) == 0:
			if string(alg) != string(full) {
				t.Fatalf("%d-byte event: trailers differ", len(ev))
			}
		case len(ev) >= relocateMin:
			if VerifyChecksum(alg) == nil {
				t.Fatal("damage sealed")
			}
		}
	})
}

// BenchmarkRelocate compares Relocate with checksumming again, by event body size
// (the event is 23 bytes more): the crossover sets relocateMin.
func BenchmarkRelocate(b *testing.B) {
	// Sizes with many ones in their length take the most multiplications.
	for _, n := range []int{256, 4 << 10, 8<<10 - 1, 64<<10 - 1, 256<<10 - 1, 1<<20 - 1, 3<<20 - 1} {
		ev := NewOpaque(30, 1, n, true)
		SetLogPos(ev, 1, 0, true)
		b.Run(fmt.Sprintf("algebra/%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(ev)))
			for i := 0; b.Loop(); i++ {
				Relocate(ev, uint32(i)*2654435761, 0, true) // every byte of log_pos changes
			}
		})
		b.Run(fmt.Sprintf("checksum/%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(ev)))
			for i := 0; b.Loop(); i++ {
				SetLogPos(ev, uint32(i)*2654435761, 0, true)
			}
		})
	}
}
