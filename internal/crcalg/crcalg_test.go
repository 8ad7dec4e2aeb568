package crcalg

import (
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
)

// TestCombine checks Combine against hash/crc32 for both polynomials, at every split
// of random messages, lengths around the multiplication's bit boundaries included.
func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range []*Poly{ieee, castagnoli} {
		for _, n := range []int{0, 1, 2, 3, 7, 8, 64, 255, 256, 4095, 4096, 65537, 1 << 20} {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			whole := crc32.Checksum(b, p.Table())
			splits := []int{0, n / 3, n / 2, n}
			if n > 0 {
				splits = append(splits, r.IntN(n+1), n-1)
			}
			for _, k := range splits {
				if got := p.Combine(p.Checksum(b[:k]), p.Checksum(b[k:]), n-k); got != whole {
					t.Fatalf("poly %08x, %d bytes split at %d: Combine gives %08x, want %08x", p.reflected, n, k, got, whole)
				}
			}
		}
	}
}

// TestShiftZeros checks that a changed byte's effect on a checksum is its
// zero-register CRC advanced through the bytes after it.
func TestShiftZeros(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, p := range []*Poly{ieee, castagnoli} {
		for _, n := range []int{1, 19, 1000, 300 << 10} {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			before := p.Checksum(b)
			at, delta := r.IntN(n), byte(1+r.IntN(255))
			b[at] ^= delta
			reg := ^crc32.Update(^uint32(0), p.Table(), []byte{delta})
			if got, want := before^p.ShiftZeros(reg, n-at-1), p.Checksum(b); got != want {
				t.Fatalf("poly %08x, %d bytes, byte %d changed: %08x, want %08x", p.reflected, n, at, got, want)
			}
		}
	}
}

// TestShiftBack checks that ShiftBack undoes ShiftZeros (and the reverse) for both
// polynomials, across register values and lengths.
func TestShiftBack(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, p := range []*Poly{ieee, castagnoli} {
		for _, n := range []int{0, 1, 3, 4, 19, 4096, 65535, 1<<20 + 7, 1 << 30} {
			for range 8 {
				c := r.Uint32()
				if got := p.ShiftZeros(p.ShiftBack(c, n), n); got != c {
					t.Fatalf("poly %08x, %d bytes: ShiftZeros(ShiftBack(%08x)) = %08x", p.reflected, n, c, got)
				}
				if got := p.ShiftBack(p.ShiftZeros(c, n), n); got != c {
					t.Fatalf("poly %08x, %d bytes: ShiftBack(ShiftZeros(%08x)) = %08x", p.reflected, n, c, got)
				}
			}
		}
	}
}

// TestPart checks Part against hash/crc32 for parts at the start, the end, the
// middle and the whole of random messages.
func TestPart(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, p := range []*Poly{ieee, castagnoli} {
		for _, n := range []int{1, 2, 17, 4096, 65537, 1 << 20} {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			whole := p.Checksum(b)
			parts := [][2]int{{0, n}, {0, 0}, {n, 0}, {0, n - 1}, {1, n - 1}, {n / 3, n / 2}}
			for range 6 {
				off := r.IntN(n + 1)
				parts = append(parts, [2]int{off, r.IntN(n - off + 1)})
			}
			for _, pt := range parts {
				off, k := pt[0], pt[1]
				if got, want := p.Part(whole, b, off, k), p.Checksum(b[off:off+k]); got != want {
					t.Fatalf("poly %08x, %d bytes, part [%d, %d): %08x, want %08x", p.reflected, n, off, off+k, got, want)
				}
			}
		}
	}
}

// TestMemo checks that the memo answers with the right checksum, from memory for the
// same slice only (not for another slice of the same bytes, nor for another length
// or offset of the same buffer), and that a nil memo works.
func TestMemo(t *testing.T) {
	m := NewMemo()
	buf := make([]byte, 3*MemoMin)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	a := buf[:2*MemoMin]
	if got, want := m.Checksum(a), castagnoli.Checksum(a); got != want {
		t.Fatalf("first checksum %08x, want %08x", got, want)
	}
	if got, want := m.Checksum(buf[:2*MemoMin]), castagnoli.Checksum(a); got != want {
		t.Fatalf("remembered checksum %08x, want %08x", got, want)
	}
	if h, ms := m.Stats(); h != 1 || ms != 1 {
		t.Fatalf("stats %d hits, %d misses; want 1, 1", h, ms)
	}
	for _, b := range [][]byte{buf[:2*MemoMin+1], buf[1 : 2*MemoMin+1], append([]byte(nil), a...)} {
		if got, want := m.Checksum(b), castagnoli.Checksum(b); got != want {
			t.Fatalf("checksum of another slice %08x, want %08x", got, want)
		}
	}
	if h, ms := m.Stats(); h != 1 || ms != 4 {
		t.Fatalf("stats %d hits, %d misses; want 1, 4 (no other slice is the first)", h, ms)
	}
	small := buf[:MemoMin-1]
	m.Checksum(small)
	if h, ms := m.Stats(); h != 1 || ms != 4 {
		t.Fatalf("a slice under MemoMin was remembered: stats %d, %d", h, ms)
	}
	c := buf[MemoMin : 3*MemoMin]
	m.Remember(c, 0x1234)
	if got := m.Checksum(c); got != 0x1234 {
		t.Fatalf("remembered %08x, want what Remember said", got)
	}
	h0, ms0 := m.Stats()
	if crc, ok := m.Known(a); !ok || crc != castagnoli.Checksum(a) {
		t.Fatalf("Known: %08x, %v; want the checksum taken", crc, ok)
	}
	if crc, ok := m.Known(c); !ok || crc != 0x1234 {
		t.Fatalf("Known: %08x, %v; want what Remember said", crc, ok)
	}
	if _, ok := m.Known(buf[2 : 2*MemoMin+2]); ok {
		t.Fatal("Known answered for a slice it was never told of")
	}
	if h, ms := m.Stats(); h != h0 || ms != ms0 {
		t.Fatalf("Known changed the stats: %d, %d; want %d, %d", h, ms, h0, ms0)
	}
	var nilMemo *Memo
	if got, want := nilMemo.Checksum(a), castagnoli.Checksum(a); got != want {
		t.Fatalf("nil memo %08x, want %08x", got, want)
	}
	nilMemo.Remember(a, 1)
	if _, ok := nilMemo.Known(a); ok {
		t.Fatal("a nil memo knows a checksum")
	}
}

// TestMemoForgetsTheOldest checks the memo's bound: past memoSlots slices the first
// is taken again.
func TestMemoForgetsTheOldest(t *testing.T) {
	m := NewMemo()
	bufs := make([][]byte, memoSlots+1)
	for i := range bufs {
		bufs[i] = make([]byte, MemoMin)
		bufs[i][0] = byte(i)
		m.Checksum(bufs[i])
	}
	if len(m.m) != memoSlots {
		t.Fatalf("memo holds %d checksums, want %d", len(m.m), memoSlots)
	}
	m.Checksum(bufs[0])
	if h, ms := m.Stats(); h != 0 || ms != memoSlots+2 {
		t.Fatalf("stats %d hits, %d misses; want the oldest pushed out", h, ms)
	}
	runtime.KeepAlive(bufs)
}

// TestMemoConcurrent has many goroutines ask for the checksums of the same slices at
// once, all starting on the same one: every answer is right, and each slice's
// checksum is taken once.
func TestMemoConcurrent(t *testing.T) {
	m := NewMemo()
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 4*MemoMin+i)
		for j := range bufs[i] {
			bufs[i][j] = byte(i + j)
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 16 {
		wg.Go(func() {
			<-start
			for i := range bufs {
				b := bufs[(i+g/8)%len(bufs)]
				if got, want := m.Checksum(b), castagnoli.Checksum(b); got != want {
					t.Errorf("checksum %08x, want %08x", got, want)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if _, ms := m.Stats(); ms != uint64(len(bufs)) {
		t.Fatalf("%d checksums taken for %d slices", ms, len(bufs))
	}
}

// BenchmarkMemoHit is the cost of an answer from memory.
func BenchmarkMemoHit(b *testing.B) {
	m := NewMemo()
	buf := make([]byte, 4<<20)
	m.Checksum(buf)
	for b.Loop() {
		m.Checksum(buf)
	}
}

// BenchmarkChecksum4MiB is what a hit saves.
func BenchmarkChecksum4MiB(b *testing.B) {
	buf := make([]byte, 4<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		castagnoli.Checksum(buf)
	}
}
