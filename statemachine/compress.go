package statemachine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/klauspost/compress/zstd"
)

// Closed segments are compressed with zstd in the background, once a newer closed file
// exists (replicas catching up read the most recent files, which stay plain). The
// compressed file replaces the plain one atomically: written as .zst.tmp, synced,
// renamed to .seg.zst, and only then is the .seg removed. Offsets in the index stay
// those of the plain segment, so compression is invisible to everything but reads.
// The compressed form is seekable: frames of compressFrame plain bytes and a seek
// table (zstdseek.go).

// segmentReader reads a segment's bytes at plain-segment offsets.
type segmentReader interface {
	ReadAt(p []byte, off int64) (int, error)
	Close() error
}

const zstSuffix = ".zst"

// plainSuffix marks a closed segment left plain because it does not compress (an
// empty file beside it; Open and purge remove it with its segment).
const plainSuffix = ".plain"

// openPart opens part k of a file's segment for reading, plain or compressed.
func (g *Group) openPart(no uint64, k int) (segmentReader, error) {
	path := g.partPath(no, k)
	fs := g.store.fs
	f, err := fs.Open(path)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("group %d: open %s: %w", g.id, path, err)
	}
	zf, err := fs.Open(path + zstSuffix)
	if err != nil {
		return nil, fmt.Errorf("group %d: open %s (plain or compressed): %w", g.id, path, err)
	}
	z, err := openCompressed(zf)
	if err != nil {
		zf.Close()
		return nil, fmt.Errorf("group %d: open compressed %s: %w", g.id, path, err)
	}
	return z, nil
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
	c := &compressor{s: s}
	defer c.release()
	idle := time.NewTimer(encoderIdle)
	defer idle.Stop()
	for {
		var job compressJob
		select {
		case j, ok := <-s.compressc:
			if !ok {
				return
			}
			job = j
		case <-idle.C:
			c.release()
			continue
		}
		orig, comp, err := c.compressSegment(job.path, &job.g.swapMu, func(orig, comp int64) { job.g.addCompressed(uint64(orig), uint64(comp)) })
		idle.Reset(encoderIdle) // from the job's end: a long one does not count as idle
		if errors.Is(err, errIncompressible) {
			job.g.log.Debug("segment left uncompressed", "file", FileName(job.file), "segment", job.path, "err", err)
			continue
		}
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) { // purged or removed meanwhile
				job.g.log.Warn("segment compression failed; the file stays uncompressed", "file", FileName(job.file), "segment", job.path, "err", err)
			}
			continue
		}
		job.g.log.Debug("segment compressed", "file", FileName(job.file), "segment", job.path, "from", orig, "to", comp)
	}
}

// encoderIdle is how long the compression worker keeps its encoder with nothing to
// compress: long enough to serve every file an ingest closes, short enough that an
// idle node does not hold the encoder's tens of MB.
const encoderIdle = 30 * time.Second

// compressor compresses segments, one at a time, with one zstd encoder that it
// reuses. An encoder's tables and history take tens of MB: a new one per segment
// (and per sample, before) allocated them afresh each time, and on a virtual machine
// memory touched anew costs more than the compression of a segment's samples.
type compressor struct {
	s   *Store
	enc *zstd.Encoder
	// sample and out are compressible's buffers, chunk and out writeFrames', kept
	// with the encoder.
	sample, out, chunk []byte
	// frame is the plain size of a compressed segment's frames (0: compressFrame;
	// tests make it smaller).
	frame int
}

// encoder returns the compressor's encoder, made on first use.
func (c *compressor) encoder() (*zstd.Encoder, error) {
	if c.enc == nil {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		c.enc = enc
	}
	return c.enc, nil
}

// release lets the encoder go (the next segment makes a new one). It is not closed:
// it is used through EncodeAll only, which leaves no stream open, and an encoder of
// one goroutine holds nothing else.
func (c *compressor) release() {
	c.enc, c.sample, c.out, c.chunk = nil, nil, nil, nil
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
// holds swapMu, which unlinkPurged also holds while deleting segments: a segment purged
// while it was being compressed must not come back as a .zst. account records the
// sizes before the plain file disappears, so nobody sees the file compressed but
// not yet counted.
func (c *compressor) compressSegment(path string, swapMu *sync.Mutex, account func(orig, comp int64)) (int64, int64, error) {
	s := c.s
	fs := s.fs
	in, err := fs.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, 0, err
	}
	if err := c.compressible(in, st.Size()); err != nil {
		if errors.Is(err, errIncompressible) {
			// Remembered, so a restart does not try again (a lost marker costs one
			// more sample only).
			if f, cerr := fs.Create(path+plainSuffix, vfs.WriteCategoryUnspecified); cerr == nil {
				f.Close()
			}
		}
		return 0, 0, err
	}
	tmp := path + zstSuffix + ".tmp"
	out, err := fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return 0, 0, err
	}
	enc, err := c.encoder()
	if err != nil {
		out.Close()
		fs.Remove(tmp)
		return 0, 0, err
	}
	frame := c.frame
	if frame == 0 {
		frame = compressFrame
	}
	orig, err := c.writeFrames(enc, io.NewSectionReader(in, 0, st.Size()), st.Size(), &fileWriter{f: out}, frame)
	if err == nil && orig != st.Size() {
		err = fmt.Errorf("compressed %d bytes of a %d-byte segment", orig, st.Size())
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
		fs.Remove(tmp)
		return 0, 0, err
	}
	swapMu.Lock()
	defer swapMu.Unlock()
	if _, err := fs.Stat(path); err != nil {
		fs.Remove(tmp)
		return 0, 0, err // purged meanwhile
	}
	err = fs.Rename(tmp, path+zstSuffix)
	if err == nil {
		err = s.syncDir(fs.PathDir(path))
	}
	if err != nil {
		fs.Remove(tmp)
		return 0, 0, err
	}
	account(orig, st.Size())
	if err := fs.Remove(path); err != nil {
		return 0, 0, err
	}
	return orig, st.Size(), nil
}

// errIncompressible: a segment whose sample would shrink too little to be worth the
// CPU of compressing it (and of decompressing it for every reader). Row images of
// compressed or encrypted columns, or already compressed binlog events, are like that.
var errIncompressible = errors.New("the segment's data does not compress")

// compressSamples pieces of compressSample bytes each, one from the middle of each
// of as many equal stretches of a segment, are what compressible tries: a segment
// whose first rows compress but whose bulk (say, compressed BLOBs) does not is judged
// by its bulk, and the judgement costs a fixed, small share of a closed file.
const (
	compressSamples = 8
	compressSample  = 32 << 10
)

// compressible compresses the samples of the segment and refuses a segment they
// would shrink by less than a tenth.
func (c *compressor) compressible(f io.ReaderAt, size int64) error {
	if c.sample == nil {
		c.sample = make([]byte, 0, compressSamples*compressSample)
	}
	buf := c.sample[:0]
	if size <= compressSamples*compressSample {
		// Small enough to try whole.
		n, err := f.ReadAt(buf[:size], 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		buf = buf[:n]
	}
	for i := int64(0); i < compressSamples && size > compressSamples*compressSample; i++ {
		n, err := f.ReadAt(buf[len(buf):len(buf)+compressSample], size*(2*i+1)/(2*compressSamples)-compressSample/2)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		buf = buf[:len(buf)+n]
	}
	enc, err := c.encoder()
	if err != nil {
		return err
	}
	out := enc.EncodeAll(buf, c.out[:0])
	c.out = out
	if len(buf) > 0 && len(out)*10 > len(buf)*9 {
		return fmt.Errorf("%w: samples of %d bytes compress to %d", errIncompressible, len(buf), len(out))
	}
	return nil
}

// scanCompressed restores the compression figures and queues closed segments that
// are still plain (the worker may have been stopped or behind). Runs in Open.
func (g *Group) scanCompressed() {
	g.compOrig, g.compSize = 0, 0
	fs := g.store.fs
	for no := g.m.FirstFile; no > 0 && no < g.m.File; no++ {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			continue
		}
		queue := false
		for k, size := range partSizes(fi) {
			path := g.partPath(no, k)
			fs.Remove(path + zstSuffix + ".tmp")
			if st, err := fs.Stat(path + zstSuffix); err == nil {
				if _, err := fs.Stat(path); err == nil {
					fs.Remove(path) // compressed copy is complete; finish the swap
				}
				g.compOrig += size
				g.compSize += uint64(st.Size())
				continue
			}
			if _, err := fs.Stat(path + plainSuffix); err == nil {
				continue // judged incompressible before
			}
			queue = true
		}
		if queue && no+1 < g.m.File {
			g.compress(no)
		}
	}
}
