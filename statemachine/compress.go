package statemachine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Closed segments are compressed with zstd in the background, once a newer closed file
// exists (replicas catching up read the most recent files, which stay plain). The
// compressed file replaces the plain one atomically: written as .zst.tmp, synced,
// renamed to .seg.zst, and only then is the .seg removed. Offsets in the index stay
// those of the plain segment, so compression is invisible to everything but reads.

// segmentReader reads a segment's bytes at plain-segment offsets.
type segmentReader interface {
	ReadAt(p []byte, off int64) (int, error)
	Close() error
}

const zstSuffix = ".zst"

// openPart opens part k of a file's segment for reading, plain or compressed.
func (g *Group) openPart(no uint64, k int) (segmentReader, error) {
	path := g.partPath(no, k)
	f, err := os.Open(path)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("group %d: open %s: %w", g.id, path, err)
	}
	zf, err := os.Open(path + zstSuffix)
	if err != nil {
		return nil, fmt.Errorf("group %d: open %s (plain or compressed): %w", g.id, path, err)
	}
	dec, err := zstd.NewReader(zf, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		zf.Close()
		return nil, fmt.Errorf("group %d: open compressed %s: %w", g.id, path, err)
	}
	return &zstdSegment{f: zf, dec: dec}, nil
}

// zstdSegment serves ReadAt over a compressed segment by decompressing forward; a
// read before the current offset starts over (cursors only move forward).
type zstdSegment struct {
	f   *os.File
	dec *zstd.Decoder
	pos int64
}

func (z *zstdSegment) ReadAt(p []byte, off int64) (int, error) {
	if off < z.pos {
		if _, err := z.f.Seek(0, io.SeekStart); err != nil {
			return 0, err
		}
		if err := z.dec.Reset(z.f); err != nil {
			return 0, err
		}
		z.pos = 0
	}
	if off > z.pos {
		n, err := io.CopyN(io.Discard, z.dec, off-z.pos)
		z.pos += n
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

func (z *zstdSegment) Close() error {
	z.dec.Close()
	return z.f.Close()
}

// compressJob asks the store's worker to compress one closed segment.
type compressJob struct {
	g    *Group
	path string
	file uint64
}

// compressLoop runs the store's compression worker until the channel closes.
func (s *Store) compressLoop() {
	defer close(s.compressDone)
	for job := range s.compressc {
		orig, comp, err := compressSegment(job.path, &job.g.swapMu, func(orig, comp int64) { job.g.addCompressed(uint64(orig), uint64(comp)) })
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) { // purged or removed meanwhile
				job.g.log.Warn("segment compression failed; the file stays uncompressed", "file", FileName(job.file), "segment", job.path, "err", err)
			}
			continue
		}
		job.g.log.Debug("segment compressed", "file", FileName(job.file), "segment", job.path, "from", orig, "to", comp)
	}
}

// compress queues the parts of a closed file for compression without blocking Update.
func (g *Group) compress(no uint64) {
	fi, err := g.store.fileInfo(g.id, no)
	if err != nil {
		return
	}
	for k := 0; k <= len(fi.PartStarts); k++ {
		select {
		case g.store.compressc <- compressJob{g: g, path: g.partPath(no, k), file: no}:
		default:
			// The worker is behind; Open queues leftovers again on the next start.
		}
	}
}

// partSizes returns the plain size of each part of a closed file.
func partSizes(fi fileInfo) []uint64 {
	out := make([]uint64, len(fi.PartStarts)+1)
	for k := range out {
		end := fi.SegSize
		if k < len(fi.PartStarts) {
			end = fi.PartStarts[k]
		}
		out[k] = end - partStart(fi.PartStarts, k)
	}
	return out
}

func (g *Group) addCompressed(orig, comp uint64) {
	g.mu.Lock()
	g.compOrig += orig
	g.compSize += comp
	g.mu.Unlock()
}

// Compression reports how many plain bytes are stored compressed and in how many.
func (g *Group) Compression() (plain, compressed uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.compOrig, g.compSize
}

// compressSegment replaces a closed plain segment with its compressed form. The swap
// holds swapMu, which purge also holds while deleting segments: a segment purged
// while it was being compressed must not come back as a .zst. account records the
// sizes before the plain file disappears, so nobody sees the file compressed but
// not yet counted.
func compressSegment(path string, swapMu *sync.Mutex, account func(orig, comp int64)) (int64, int64, error) {
	in, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	tmp := path + zstSuffix + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return 0, 0, err
	}
	enc, err := zstd.NewWriter(out, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		out.Close()
		os.Remove(tmp)
		return 0, 0, err
	}
	orig, err := io.Copy(enc, in)
	if err == nil {
		err = enc.Close()
	}
	if err == nil {
		err = out.Sync()
	}
	st, statErr := out.Stat()
	out.Close()
	if err == nil {
		err = statErr
	}
	if err != nil {
		os.Remove(tmp)
		return 0, 0, err
	}
	swapMu.Lock()
	defer swapMu.Unlock()
	if _, err := os.Stat(path); err != nil {
		os.Remove(tmp)
		return 0, 0, err // purged meanwhile
	}
	err = os.Rename(tmp, path+zstSuffix)
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
		return 0, 0, err
	}
	account(orig, st.Size())
	if err := os.Remove(path); err != nil {
		return 0, 0, err
	}
	return orig, st.Size(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// scanCompressed restores the compression figures and queues closed segments that
// are still plain (the worker may have been stopped or behind). Runs in Open.
func (g *Group) scanCompressed() {
	g.compOrig, g.compSize = 0, 0
	for no := g.m.FirstFile; no > 0 && no < g.m.File; no++ {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			continue
		}
		queue := false
		for k, size := range partSizes(fi) {
			path := g.partPath(no, k)
			os.Remove(path + zstSuffix + ".tmp")
			if st, err := os.Stat(path + zstSuffix); err == nil {
				if _, err := os.Stat(path); err == nil {
					os.Remove(path) // compressed copy is complete; finish the swap
				}
				g.compOrig += size
				g.compSize += uint64(st.Size())
				continue
			}
			queue = true
		}
		if queue && no+1 < g.m.File {
			g.compress(no)
		}
	}
}
