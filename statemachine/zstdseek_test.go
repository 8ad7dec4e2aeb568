package statemachine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// compressedFixture writes rows (compressible, never repeating) as a plain segment,
// compresses it with frames of frame bytes, and returns the plain bytes and the
// compressed file's path.
func compressedFixture(t *testing.T, h *harness, frame int) ([]byte, string) {
	t.Helper()
	var plain []byte
	for i := 0; len(plain) < 48*frame+frame/3; i++ {
		plain = fmt.Appendf(plain, "INSERT INTO t VALUES (%d, 'row %d');", i, i*7)
	}
	return plain, compressPlain(t, h, plain, frame)
}

// compressedFile is compressedFixture in a harness of its own, with the compressed
// file's bytes.
func compressedFile(t *testing.T, frame int) (h *harness, plain []byte, path string, comp []byte) {
	t.Helper()
	h = newHarness(t, t.TempDir())
	t.Cleanup(h.close)
	plain, path = compressedFixture(t, h, frame)
	comp, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return h, plain, path, comp
}

// compressPlain writes plain as a segment and compresses it with frames of frame
// bytes; it returns the compressed file's path.
func compressPlain(t *testing.T, h *harness, plain []byte, frame int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.seg")
	if err := os.WriteFile(path, plain, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &compressor{s: h.store, frame: frame}
	defer c.release()
	var mu sync.Mutex
	if _, _, err := c.compressSegment(path, &mu, func(int64, int64) {}); err != nil {
		t.Fatal(err)
	}
	return path + zstSuffix
}

// openFixture opens the compressed segment at path, closed when the test ends.
func openFixture(t *testing.T, h *harness, path string) *zstdSegment {
	t.Helper()
	zf, err := h.store.fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	z, err := openCompressed(zf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

// readAtMatches reads n bytes at off from z and compares them with plain.
func readAtMatches(t *testing.T, z *zstdSegment, plain []byte, off int64, n int) {
	t.Helper()
	buf := make([]byte, n)
	got, err := z.ReadAt(buf, off)
	want := plain[min(int64(len(plain)), off):min(int64(len(plain)), off+int64(n))]
	if got != len(want) || (err == nil) != (got == n) || (err != nil && err != io.EOF) || !bytes.Equal(buf[:got], want) {
		t.Fatalf("ReadAt(%d bytes at %d): %d bytes, err %v; want the plain segment's %d bytes", n, off, got, err, len(want))
	}
}

// TestCompressedSegmentSeeks: a reader of a compressed segment starts decoding at the
// frame that holds the offset it asks for, forward or back, and decodes at most
// that frame's bytes before it; the bytes are the plain segment's.
func TestCompressedSegmentSeeks(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	const frame = 4 << 10
	plain, path := compressedFixture(t, h, frame)
	z := openFixture(t, h, path)
	if want := (len(plain) + frame - 1) / frame; len(z.frames) != want {
		t.Fatalf("the seek table lists %d frames, want %d", len(z.frames), want)
	}
	// Forward, near the end: a replica starting deep in a closed file.
	far := int64(len(plain) - frame - 100)
	readAtMatches(t, z, plain, far, 300)
	if z.decoded >= frame {
		t.Fatalf("a read at %d decoded %d bytes to skip, want less than a frame (%d)", far, z.decoded, frame)
	}
	// Back to the start, then forward across many frames.
	z.decoded = 0
	readAtMatches(t, z, plain, 10, 100)
	readAtMatches(t, z, plain, int64(len(plain)/2), 100)
	if z.restarts != 1 || z.decoded >= 2*frame {
		t.Fatalf("after one read back and one far ahead: %d restarts, %d bytes decoded to skip; want 1 and less than two frames", z.restarts, z.decoded)
	}
	// Reads of every size at every place, in any order, span frames as needed.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		off := rng.Int64N(int64(len(plain)))
		readAtMatches(t, z, plain, off, 1+rng.IntN(3*frame))
	}
	readAtMatches(t, z, plain, int64(len(plain)-5), 100) // past the end: the tail and EOF
	z.decoded = 0
	readAtMatches(t, z, plain, int64(len(plain)), 100)
	readAtMatches(t, z, plain, int64(len(plain)+frame), 100)
	if z.decoded != 0 {
		t.Fatalf("reads past the end decoded %d bytes, want none", z.decoded)
	}
}

// TestCompressedSegmentEdges: an empty segment, and one of a whole number of frames,
// read back as written.
func TestCompressedSegmentEdges(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	const frame = 4 << 10
	z := openFixture(t, h, compressPlain(t, h, nil, frame))
	readAtMatches(t, z, nil, 0, 10)
	whole := bytes.Repeat([]byte("0123456789abcdef"), 3*frame/16)
	z = openFixture(t, h, compressPlain(t, h, whole, frame))
	if len(z.frames) != 3 {
		t.Fatalf("%d frames for 3 frames' bytes", len(z.frames))
	}
	readAtMatches(t, z, whole, int64(2*frame), frame)
	readAtMatches(t, z, whole, int64(frame-8), 16)
	readAtMatches(t, z, whole, int64(3*frame-1), 16)
}

// TestCompressedSegmentWrongPlainSizes: a seek table whose footer and compressed sizes
// check but whose plain sizes are wrong is dropped at the first seek, before a byte
// is read through it: reads are right, from the file's start.
func TestCompressedSegmentWrongPlainSizes(t *testing.T) {
	const frame = 4 << 10
	h, plain, path, comp := compressedFile(t, frame)
	// The first frame's plain size, 4096, as 4000: every later frame seems to start
	// 96 bytes early.
	n := (len(plain) + frame - 1) / frame
	first := len(comp) - seekFooterLen - n*seekEntryLen + 4
	binary.LittleEndian.PutUint32(comp[first:], 4000)
	if err := os.WriteFile(path, comp, 0o600); err != nil {
		t.Fatal(err)
	}
	z := openFixture(t, h, path)
	if len(z.frames) != n {
		t.Fatalf("the table was not taken (%d frames): the test needs it to check", len(z.frames))
	}
	readAtMatches(t, z, plain, int64(len(plain)/2), 300)
	readAtMatches(t, z, plain, 100, 300)
	if z.frames != nil {
		t.Fatal("the table with wrong plain sizes is still used after a seek")
	}
}

// TestCompressedSegmentDamagedLater: a table whose damage lies past the frames read
// so far is used up to there, and dropped at the first seek that reaches it.
func TestCompressedSegmentDamagedLater(t *testing.T) {
	const frame = 4 << 10
	h, plain, path, comp := compressedFile(t, frame)
	// Frame 30 listed 96 bytes short and frame 31 96 bytes long: the sizes still add
	// up, but frames 31 on seem to start 96 bytes early.
	n := (len(plain) + frame - 1) / frame
	entry := func(i int) int { return len(comp) - seekFooterLen - (n-i)*seekEntryLen + 4 }
	binary.LittleEndian.PutUint32(comp[entry(30):], frame-96)
	binary.LittleEndian.PutUint32(comp[entry(31):], frame+96)
	if err := os.WriteFile(path, comp, 0o600); err != nil {
		t.Fatal(err)
	}
	z := openFixture(t, h, path)
	readAtMatches(t, z, plain, int64(20*frame+100), 200)
	readAtMatches(t, z, plain, int64(5*frame), 200)
	if len(z.frames) != n || z.checked != 21 {
		t.Fatalf("after seeks within the first 21 frames: table of %d frames, %d checked; want all %d kept, 21 checked", len(z.frames), z.checked, n)
	}
	readAtMatches(t, z, plain, int64(40*frame), 200)
	if z.frames != nil {
		t.Fatal("the table is still used after a seek past its damaged entries")
	}
}

// TestCompressedSegmentWithoutTable: a compressed segment is a plain zstd stream to a
// decoder that knows nothing of seek tables (releases before them decode forward),
// and a segment whose table does not check, or that has none (written by those
// releases), is read forward from its start, correctly.
func TestCompressedSegmentWithoutTable(t *testing.T) {
	const frame = 4 << 10
	h, plain, _, comp := compressedFile(t, frame)
	// As 0.45 reads a compressed segment: one goroutine, low memory, forward.
	dec, err := zstd.NewReader(bytes.NewReader(comp), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(dec)
	dec.Close()
	if err != nil || !bytes.Equal(all, plain) {
		t.Fatalf("decoding the whole compressed segment as one stream: %d bytes, err %v; want the %d plain bytes", len(all), err, len(plain))
	}

	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	damaged := func(at int) []byte { b := bytes.Clone(comp); b[len(b)+at] ^= 0x40; return b }
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"one stream, no table", buf.Bytes()},
		{"footer magic damaged", damaged(-1)},
		{"frame count damaged", damaged(-seekFooterLen)},
		{"a frame's size damaged", damaged(-seekFooterLen - seekEntryLen)},
	} {
		p := filepath.Join(t.TempDir(), "f.seg.zst")
		if err := os.WriteFile(p, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		z := openFixture(t, h, p)
		if len(z.frames) != 0 {
			t.Fatalf("%s: a seek table of %d frames was taken", c.name, len(z.frames))
		}
		readAtMatches(t, z, plain, int64(len(plain)/2), 500)
		readAtMatches(t, z, plain, 3, 500)
		readAtMatches(t, z, plain, int64(len(plain)-200), 500)
	}
}

// FuzzReadSeekTable: whatever the bytes at a compressed segment's end, readSeekTable
// returns no table or one whose frames start in order and fill the file up to it.
func FuzzReadSeekTable(f *testing.F) {
	f.Add(appendSeekTable([]byte("frames.."), []frameSizes{{4, 100}, {4, 100}}))
	f.Add(appendSeekTable(nil, nil))
	f.Add([]byte("not a table at all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		frames, end, err := readSeekTable(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("reading from memory failed: %v", err)
		}
		if end != -1 && (end < 0 || end+skippableFrameHdr+seekFooterLen > int64(len(b))) {
			t.Fatalf("frames end at %d in %d bytes", end, len(b))
		}
		if len(frames) == 0 {
			return
		}
		if end <= 0 || end > int64(len(b)) || frames[0].plain != 0 || frames[0].comp != 0 {
			t.Fatalf("table of %d frames ending at %d in %d bytes, first %+v", len(frames), end, len(b), frames[0])
		}
		for i := 1; i < len(frames); i++ {
			if frames[i].plain != frames[i-1].plain+frames[i-1].size || frames[i].size <= 0 || frames[i].comp <= frames[i-1].comp || frames[i].comp >= end {
				t.Fatalf("frame %d %+v after %+v (frames end at %d)", i, frames[i], frames[i-1], end)
			}
		}
	})
}

// BenchmarkCompressedSegmentRead: opening a compressed segment of 32 MiB and reading
// 4 KiB in the middle of its last frame (a replica resuming there: half a frame, on
// average, is decoded to reach it), with the seek table and as one stream (files
// compressed before tables).
func BenchmarkCompressedSegmentRead(b *testing.B) {
	h := newHarness(b, b.TempDir())
	defer h.close()
	var plain []byte
	for i := 0; len(plain) < 32<<20; i++ {
		plain = fmt.Appendf(plain, "INSERT INTO t VALUES (%d, 'row %d');", i, i*7)
	}
	dir := b.TempDir()
	path := filepath.Join(dir, "f.seg")
	if err := os.WriteFile(path, plain, 0o600); err != nil {
		b.Fatal(err)
	}
	c := &compressor{s: h.store}
	defer c.release()
	var mu sync.Mutex
	if _, _, err := c.compressSegment(path, &mu, func(int64, int64) {}); err != nil {
		b.Fatal(err)
	}
	var stream bytes.Buffer
	enc, _ := zstd.NewWriter(&stream)
	enc.Write(plain)
	enc.Close()
	streamPath := filepath.Join(dir, "stream.seg.zst")
	if err := os.WriteFile(streamPath, stream.Bytes(), 0o600); err != nil {
		b.Fatal(err)
	}
	if st, err := os.Stat(path + zstSuffix); err == nil {
		b.Logf("32 MiB of rows: %d bytes in frames with their table, %d as one stream", st.Size(), stream.Len())
	}
	buf := make([]byte, 4<<10)
	for _, bc := range []struct{ name, path string }{{"table", path + zstSuffix}, {"one-stream", streamPath}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				zf, err := h.store.fs.Open(bc.path)
				if err != nil {
					b.Fatal(err)
				}
				z, err := openCompressed(zf)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := z.ReadAt(buf, 32<<20-compressFrame/2); err != nil {
					b.Fatal(err)
				}
				z.Close()
			}
		})
	}
}
