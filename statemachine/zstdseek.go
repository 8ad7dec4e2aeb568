package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/klauspost/compress/zstd"
)

// A compressed segment (.seg.zst) is a sequence of independent zstd frames, each of
// at most compressFrame plain bytes (8 MiB), followed by a seek table in zstd's seekable
// format (contrib/seekable_format in the zstd sources): a skippable frame holding each
// frame's compressed and plain size and a footer that names the format.
//
// Why: a reader of a single-frame file could only decompress forward from the
// start: a replica starting in the middle of a closed file (up to a served file's
// size in) decompressed everything before its position. With the table a reader
// starts decoding at the frame that holds the offset it wants and decodes at most
// one frame it does not need.
//
// Invariants:
//   - The file is a valid zstd stream whatever its table: decoders skip the
//     skippable frame, so a release that decodes forward only (0.45 and before)
//     reads it too, and a table that does not check only costs the seeking: the
//     segment is then read forward, as the files of those releases are. A table
//     checks if its footer does, its compressed sizes fill the file up to it, and a
//     frame header that states the table's plain size begins where the table places
//     each frame up to the one a read seeks to (see seek): a damaged table is
//     dropped at the first seek that shows it, before any byte is read through it.
//   - Frames hold plain bytes in order with no gap: frame i starts at the sum of the
//     plain sizes of the frames before it.

// compressFrame is how many plain bytes a frame of a compressed segment holds: the
// most a seek decodes that it does not need. It is the encoder's window (8 MiB at
// zstd.SpeedDefault), so a frame finds what one stream found except across its
// start: with frames of 1 MiB a closed file of the relay bench compressed 1.0:1
// where one stream made 1.3:1, its redundancy lying further apart than a frame.
const compressFrame = 8 << 20

// Zstd's seekable format: the seek table's skippable frame magic, the footer's
// magic, and the sizes of the footer and of a table entry without checksums.
const (
	seekTableMagic    = 0x184D2A5E
	seekableMagic     = 0x8F92EAB1
	seekFooterLen     = 9
	seekEntryLen      = 8
	skippableFrameHdr = 8
)

// seekFrame is one frame of a compressed segment: where its plain bytes start, how
// many there are, and where its compressed bytes start in the file.
type seekFrame struct {
	plain, size, comp int64
}

// frameSizes is a frame's compressed and plain size, as the seek table lists it.
type frameSizes struct {
	comp, plain uint32
}

// appendSeekTable appends the seek table of frames to dst.
func appendSeekTable(dst []byte, sizes []frameSizes) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, seekTableMagic)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(sizes)*seekEntryLen+seekFooterLen))
	for _, s := range sizes {
		dst = binary.LittleEndian.AppendUint32(dst, s.comp)
		dst = binary.LittleEndian.AppendUint32(dst, s.plain)
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(sizes)))
	dst = append(dst, 0) // descriptor: no per-frame checksums
	return binary.LittleEndian.AppendUint32(dst, seekableMagic)
}

// readSeekTable reads the seek table of a compressed segment of size bytes. It
// returns where the frames end (the table's skippable frame starts), or -1 if the
// file has no table whose footer and frame header check (one written before tables:
// a single frame); and the frames, or none if their sizes do not check either. An
// error is the file's (a read that failed), not the table's.
func readSeekTable(f io.ReaderAt, size int64) ([]seekFrame, int64, error) {
	if size < skippableFrameHdr+seekFooterLen {
		return nil, -1, nil
	}
	var foot [seekFooterLen]byte
	if err := readFull(f, foot[:], size-seekFooterLen); err != nil {
		return nil, -1, err
	}
	n := int64(binary.LittleEndian.Uint32(foot[0:]))
	if binary.LittleEndian.Uint32(foot[5:]) != seekableMagic || foot[4] != 0 {
		return nil, -1, nil
	}
	tableLen := n*seekEntryLen + seekFooterLen
	start := size - tableLen - skippableFrameHdr
	if start < 0 {
		return nil, -1, nil
	}
	// The skippable frame's header first: a damaged count is found before it costs a
	// read (and a buffer) of its size.
	var hdr [skippableFrameHdr]byte
	if err := readFull(f, hdr[:], start); err != nil {
		return nil, -1, err
	}
	if binary.LittleEndian.Uint32(hdr[0:]) != seekTableMagic || int64(binary.LittleEndian.Uint32(hdr[4:])) != tableLen {
		return nil, -1, nil
	}
	if n == 0 {
		return nil, start, nil // an empty segment: a table and no frames
	}
	table := make([]byte, n*seekEntryLen)
	if err := readFull(f, table, start+skippableFrameHdr); err != nil {
		return nil, -1, err
	}
	frames := make([]seekFrame, n)
	var plain, comp int64
	for i := range frames {
		e := table[int64(i)*seekEntryLen:]
		c, p := int64(binary.LittleEndian.Uint32(e[0:])), int64(binary.LittleEndian.Uint32(e[4:]))
		if c == 0 || p == 0 || p > compressFrame {
			return nil, start, nil
		}
		frames[i] = seekFrame{plain: plain, size: p, comp: comp}
		comp += c
		plain += p
	}
	if comp != start {
		return nil, start, nil // the frames do not fill the file up to the table
	}
	return frames, start, nil
}

// readFull reads len(b) bytes at off; a read that ends at the file's end may say
// io.EOF with all of them.
func readFull(f io.ReaderAt, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// openCompressed serves reads of the compressed segment zf at plain offsets.
func openCompressed(zf vfs.File) (*zstdSegment, error) {
	st, err := zf.Stat()
	if err != nil {
		return nil, err
	}
	z := &zstdSegment{f: zf}
	z.frames, z.framesEnd, err = readSeekTable(zf, st.Size())
	if err != nil {
		return nil, fmt.Errorf("read the seek table: %w", err)
	}
	if z.framesEnd < 0 {
		z.framesEnd = math.MaxInt64 // no table: read the whole file forward
	}
	z.dec, err = zstd.NewReader(z.section(0), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	return z, nil
}

// zstdSegment serves ReadAt over a compressed segment by decompressing forward from
// the frame that holds the offset asked for (from the file's start if it has no seek
// table).
type zstdSegment struct {
	f   vfs.File
	dec *zstd.Decoder
	pos int64
	// frames is the seek table (nil: none), framesEnd where the frames end; the
	// first checked frames were checked against their headers (see seek).
	frames    []seekFrame
	framesEnd int64
	checked   int
	// restarts counts reads behind the decoder's position, which decode again from
	// an earlier frame: cursors read forward, so it stays 0 (a test checks).
	restarts int
	// decoded counts the plain bytes decoded only to be skipped (a test checks that
	// seeks decode little).
	decoded int64
}

// section is the file's frames from compressed offset off.
func (z *zstdSegment) section(off int64) io.Reader {
	return io.NewSectionReader(z.f, off, z.framesEnd-off)
}

// dropTable makes z read forward from the file's start: its table did not check.
// The frames still end where the table starts (the decoder never reaches the table,
// whose skipping zstd reports on stderr).
func (z *zstdSegment) dropTable() {
	z.frames, z.checked = nil, 0
}

// frameOf returns the index of the frame holding plain offset off (off >= 0), the
// last frame for an offset past them all.
func (z *zstdSegment) frameOf(off int64) int {
	return sort.Search(len(z.frames), func(i int) bool { return z.frames[i].plain > off }) - 1
}

// seek positions the decoder at the start of the frame holding plain offset off, or
// at the file's start without a table (see checkThrough).
func (z *zstdSegment) seek(off int64) error {
	fr := seekFrame{}
	if len(z.frames) > 0 {
		i := max(z.frameOf(off), 0)
		if err := z.checkThrough(i); err != nil {
			return err
		}
		if len(z.frames) > 0 {
			fr = z.frames[i]
		}
	}
	if err := z.dec.Reset(z.section(fr.comp)); err != nil {
		return fmt.Errorf("decode from compressed offset %d: %w", fr.comp, err)
	}
	z.pos = fr.plain
	return nil
}

// checkThrough checks frames up to frame i before the first seek to or past them:
// each must begin with a frame header, at the place the table gives, that states
// the plain size the table does (the plain offset of a frame is the sum of those
// sizes before it). A table that fails is dropped.
func (z *zstdSegment) checkThrough(i int) error {
	for ; z.checked <= i; z.checked++ {
		ok, err := z.frameChecks(z.frames[z.checked])
		if err != nil {
			return err
		}
		if !ok {
			z.dropTable()
			return nil
		}
	}
	return nil
}

// frameChecks reports whether a zstd frame header begins at fr's place and does not
// state a plain size other than fr's (the encoder leaves it out of the smallest
// frames).
func (z *zstdSegment) frameChecks(fr seekFrame) (bool, error) {
	h, err := z.frameHeader(fr)
	if err != nil {
		return false, err
	}
	return h != nil && (!h.HasFCS || int64(h.FrameContentSize) == fr.size), nil
}

// frameHeader decodes the header of the frame at fr's place; nil if there is none.
func (z *zstdSegment) frameHeader(fr seekFrame) (*zstd.Header, error) {
	var hdr [zstd.HeaderMaxSize]byte
	n, err := z.f.ReadAt(hdr[:], fr.comp)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read the frame header at %d: %w", fr.comp, err)
	}
	var h zstd.Header
	if h.Decode(hdr[:n]) != nil || h.Skippable {
		return nil, nil
	}
	return &h, nil
}

// ReadAt implements segmentReader.
func (z *zstdSegment) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d of a compressed segment", off)
	}
	if len(z.frames) > 0 {
		if last := z.frames[len(z.frames)-1]; off >= last.plain+last.size {
			// Past the frames: once the table checks through its last frame, and
			// that frame's header states its size, the answer needs no decoding.
			if err := z.checkThrough(len(z.frames) - 1); err != nil {
				return 0, err
			}
			if len(z.frames) > 0 {
				h, err := z.frameHeader(last)
				if err != nil {
					return 0, err
				}
				if h != nil && h.HasFCS {
					return 0, io.EOF
				}
			}
		}
	}
	if off < z.pos {
		z.restarts++
		if err := z.seek(off); err != nil {
			return 0, err
		}
	} else if off > z.pos && len(z.frames) > 0 && z.frames[z.frameOf(off)].plain > z.pos {
		// The frame holding off starts after pos: start there rather than decode
		// everything between.
		if err := z.seek(off); err != nil {
			return 0, err
		}
	}
	if off > z.pos {
		n, err := io.CopyN(io.Discard, z.dec, off-z.pos)
		z.pos += n
		z.decoded += n
		if err != nil {
			return 0, err
		}
	}
	n, err := io.ReadFull(z.dec, p)
	z.pos += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

// Close implements segmentReader.
func (z *zstdSegment) Close() error {
	z.dec.Close()
	return z.f.Close()
}

// writeFrames compresses the plain segment in, of size bytes, into out as frames of
// at most frame bytes followed by their seek table, and returns the plain size.
func (c *compressor) writeFrames(enc *zstd.Encoder, in io.Reader, size int64, out io.Writer, frame int) (int64, error) {
	frame = int(min(int64(frame), max(size, 1)))
	if cap(c.chunk) < frame {
		c.chunk = make([]byte, frame)
	}
	var sizes []frameSizes
	var orig int64
	for {
		n, err := io.ReadFull(in, c.chunk[:frame])
		if n > 0 {
			c.out = enc.EncodeAll(c.chunk[:n], c.out[:0])
			if _, werr := out.Write(c.out); werr != nil {
				return 0, fmt.Errorf("write compressed segment: %w", werr)
			}
			sizes = append(sizes, frameSizes{comp: uint32(len(c.out)), plain: uint32(n)})
			orig += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read segment: %w", err)
		}
	}
	if _, err := out.Write(appendSeekTable(nil, sizes)); err != nil {
		return 0, fmt.Errorf("write compressed segment's seek table: %w", err)
	}
	return orig, nil
}
