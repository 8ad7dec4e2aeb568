package raftlog

import (
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"syscall"

	"github.com/flotilla-relay/flotilla/internal/directio"
)

// Writing payloads: a group stages its records in a block-aligned buffer and writes
// them in whole blocks at block offsets (direct I/O), the last block padded at each
// sync (finish). A large payload in block-aligned memory skips the stage but for its
// tail (putInPlace).

// stageBuf is a block-aligned staging buffer of stageClassSize(class) bytes.
type stageBuf struct {
	b     []byte
	class int
}

// stageClasses staging buffer sizes, from 64 KiB up to stageSize by fours.
const stageClasses = 4

func stageClassSize(c int) int { return 64 << 10 << (2 * c) }

// stagePool hands out staging buffers; a LogDB's groups share one, so an idle group
// holds none.
type stagePool struct{ p [stageClasses]sync.Pool }

// get returns a buffer of the smallest size that holds need bytes (stageSize at most).
func (sp *stagePool) get(need int) *stageBuf {
	c := 0
	for c < stageClasses-1 && stageClassSize(c) < need {
		c++
	}
	if b, ok := sp.p[c].Get().(*stageBuf); ok {
		return b
	}
	return &stageBuf{b: directio.Aligned(stageClassSize(c)), class: c}
}

func (sp *stagePool) put(b *stageBuf) {
	if b != nil {
		sp.p[b.class].Put(b)
	}
}

// refuseDirect turns direct I/O off for the group, and says so.
func (g *groupLog) refuseDirect(path string, err error) {
	g.direct = false
	g.dio.Refused(path, err)
}

// put stages the byte slices for f, writing the stage out each time it fills.
func (g *groupLog) put(f *payFile, parts ...[]byte) error {
	need := blockSize + recordHeaderLen // room for finish's pad too
	for _, p := range parts {
		need += len(p)
	}
	if f.stage == nil {
		f.stage = g.stages.get(need)
	} else if f.staged+need > len(f.stage.b) && len(f.stage.b) < stageSize {
		// A larger record than the stage was taken for: move to a larger one.
		b := g.stages.get(f.staged + need)
		copy(b.b, f.stage.b[:f.staged])
		g.stages.put(f.stage)
		f.stage = b
	}
	for _, p := range parts {
		for len(p) > 0 {
			n := copy(f.stage.b[f.staged:], p)
			f.staged += n
			f.size += int64(n)
			p = p[n:]
			if f.staged == len(f.stage.b) {
				if err := g.writeStage(f); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// putInPlace stages hdr, which must end at a block boundary (append pads before it),
// writes the stage out, then writes payload's whole blocks straight from payload's
// memory, which must be block-aligned, and stages the rest. Copying every large
// payload into the stage was 4-5% of an ingest's CPU (a raft entry's command is a
// buffer of its own: dragonboat's copy of a proposal, or the transport's read).
// The writes go to the file in order, as the stage's do; nothing is durable before
// the sync, as before.
func (g *groupLog) putInPlace(f *payFile, hdr, payload []byte) error {
	if end := f.size + int64(len(hdr)); end%blockSize != 0 {
		// Checked before the header is staged: a header staged for bytes never
		// written would read as a record at a start.
		return fmt.Errorf("payload file %s: a payload written in place would start at %d, not at a block", f.path, end)
	}
	if err := g.put(f, hdr); err != nil {
		return err
	}
	if err := g.writeStage(f); err != nil {
		return err
	}
	whole := len(payload) &^ (blockSize - 1)
	if err := g.writeOut(f, payload[:whole]); err != nil {
		return err
	}
	f.size += int64(whole)
	return g.put(f, payload[whole:])
}

// putPad stages a record of index 0 (raft never uses it) of n bytes in all, which a
// scan passes over like any other; n is at least a header, or less than one (a
// block is added).
func (g *groupLog) putPad(f *payFile, n int) error {
	if n < recordHeaderLen {
		n += blockSize
	}
	zeros := make([]byte, n-recordHeaderLen)
	return g.put(f, f.header(0, len(zeros), crc32.Checksum(zeros, castagnoli)), zeros)
}

// finish pads f's staged records to a whole block and writes them: every write to a
// payload file is whole blocks at a block offset, as direct I/O needs.
func (g *groupLog) finish(f *payFile) error {
	if f.stage != nil {
		if pad := int(-f.size & (blockSize - 1)); pad > 0 {
			if err := g.putPad(f, pad); err != nil {
				return err
			}
		}
	}
	if err := g.writeStage(f); err != nil {
		return err // the stage stays: the file is unusable, its bytes unknown
	}
	g.stages.put(f.stage)
	f.stage = nil
	return nil
}

// writeStage writes f's staged bytes at the file's written end (writeOut).
func (g *groupLog) writeStage(f *payFile) error {
	if f.staged == 0 {
		return nil
	}
	if err := g.writeOut(f, f.stage.b[:f.staged]); err != nil {
		return err
	}
	f.staged = 0
	return nil
}

// writeOut writes b, whole blocks from a block-aligned buffer when f is written
// with direct I/O, at f's written end, and moves that end past them. A filesystem
// that took O_DIRECT at open but refuses the writes (a logical block larger than
// blockSize, some FUSE filesystems) turns direct I/O off for the group: the file is
// cut back to its written end (a short write may have left part of b) and reopened
// without it, and b is written again.
func (g *groupLog) writeOut(f *payFile, b []byte) error {
	if f.w == nil {
		return fmt.Errorf("write payload file %s: it was left closed by an earlier failure", f.path)
	}
	var err error
	if f.direct {
		_, err = f.w.WriteAt(b, f.written)
		if errors.Is(err, syscall.EINVAL) {
			f.w.Close()
			f.w, f.direct = nil, false
			g.refuseDirect(f.path, err)
			// WriteAt goes on after a short write, so part of b may be in the file:
			// cut it back to what was written before, then append b (an earlier
			// life's bytes go with the cut).
			f.phys = 0
			if err = os.Truncate(f.path, f.written); err == nil {
				if f.salt != 0 {
					if f.w, err = reopen(g.fs, f.path, f.written); err == nil {
						_, err = f.w.WriteAt(b, f.written)
					}
				} else if f.w, err = g.fs.OpenForAppend(f.path); err == nil {
					_, err = f.w.Write(b)
				}
			}
		}
	} else if f.salt != 0 {
		_, err = f.w.WriteAt(b, f.written)
	} else {
		_, err = f.w.Write(b)
	}
	if err != nil {
		return fmt.Errorf("write payload file %s: %w", f.path, err)
	}
	f.written += int64(len(b))
	return nil
}
