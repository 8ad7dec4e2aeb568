package rafttransport

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"time"

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
)

// This transport's frame:
//
//	magic 'F' 'L' | kind u8 | skeleton length u32 | payloads u32 | payload bytes u64 |
//	CRC-32C u32 | skeleton | each payload's length, u32 | the payloads
//
// all big-endian. The skeleton is the MessageBatch marshalled with every entry's
// Cmd left out (kind 1), or a marshalled Chunk (kind 2, no payloads); the payloads
// are the entries' Cmds, in the order the skeleton lists the entries. The CRC
// covers the header before it (kind and lengths), the skeleton, the lengths and the
// payloads.
var frameMagic = [2]byte{'F', 'L'}

const (
	kindBatch = 1
	kindChunk = 2
	// frameHeaderLen is the header after the magic.
	frameHeaderLen = 1 + 4 + 4 + 8 + 4
	// Bounds a frame's header must respect before anything is allocated for it:
	// dragonboat's batches stay under 64 MiB (its MaxMessageBatchSize), an entry
	// under that too.
	maxSkeleton = 64 << 20
	maxPayloads = 1 << 20
	maxFrame    = 256 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encoder builds a connection's frames, reusing its buffers from one to the next.
type encoder struct {
	hdr  [2 + frameHeaderLen]byte
	skel []byte
	lens []byte
	cmds [][]byte
	msgs []pb.Message
	ents []pb.Entry
	lhdr [2 + legacyHeaderLen]byte
}

// batch returns b as this transport's frame. The entries' payloads are in the
// result as they are (not copied); b is not modified. Their checksums come from
// memo (see payloadCRC).
func (e *encoder) batch(b pb.MessageBatch, memo *crcalg.Memo) (net.Buffers, error) {
	n := 0
	for i := range b.Requests {
		n += len(b.Requests[i].Entries)
	}
	e.cmds, e.msgs, e.lens = e.cmds[:0], e.msgs[:0], e.lens[:0]
	if cap(e.ents) < n {
		e.ents = make([]pb.Entry, 0, n)
	}
	e.ents = e.ents[:0]
	total := 0
	for _, m := range b.Requests {
		if len(m.Entries) > 0 {
			from := len(e.ents)
			for _, en := range m.Entries {
				e.cmds = append(e.cmds, en.Cmd)
				e.lens = binary.BigEndian.AppendUint32(e.lens, uint32(len(en.Cmd)))
				total += len(en.Cmd)
				en.Cmd = nil
				e.ents = append(e.ents, en)
			}
			m.Entries = e.ents[from:len(e.ents):len(e.ents)]
		}
		e.msgs = append(e.msgs, m)
	}
	sk := b
	sk.Requests = e.msgs
	skel, err := marshalInto(&e.skel, sk.SizeUpperLimit(), sk.MarshalTo)
	if err != nil {
		return nil, fmt.Errorf("raft transport: marshal batch: %w", err)
	}
	h := e.header(kindBatch, len(skel), len(e.cmds), total)
	crc := crc32.Update(crc32.Update(crc32.Update(0, castagnoli, h[2:2+frameHeaderLen-4]), castagnoli, skel), castagnoli, e.lens)
	bufs := net.Buffers{h, skel, e.lens}
	for _, c := range e.cmds {
		if len(c) > 0 {
			crc = payloadCRC(crc, c, memo)
			bufs = append(bufs, c)
		}
	}
	binary.BigEndian.PutUint32(h[2+frameHeaderLen-4:], crc)
	return bufs, nil
}

// payloadCRC continues a frame's CRC32C crc over payload p: a large payload's
// checksum is taken on its own, through memo, and combined in (crcalg), so that the
// node takes it once whether its raft log, a send to another follower or this
// frame is first; a small one's is taken in line.
func payloadCRC(crc uint32, p []byte, memo *crcalg.Memo) uint32 {
	if len(p) < crcalg.MemoMin || memo == nil {
		return crc32.Update(crc, castagnoli, p)
	}
	return crcalg.Castagnoli().Combine(crc, memo.Checksum(p), len(p))
}

// release drops what the encoder holds of the last frame: the payloads (dragonboat
// frees a sent batch's entries) and a skeleton buffer grown past keepBuf.
func (e *encoder) release() {
	clear(e.cmds[:cap(e.cmds)])
	clear(e.ents[:cap(e.ents)])
	clear(e.msgs[:cap(e.msgs)])
	if cap(e.skel) > keepBuf {
		e.skel = nil
	}
}

// chunk returns ch as this transport's frame.
func (e *encoder) chunk(ch *pb.Chunk) (net.Buffers, error) {
	body, err := marshalInto(&e.skel, ch.Size(), ch.MarshalTo)
	if err != nil {
		return nil, fmt.Errorf("raft transport: marshal chunk: %w", err)
	}
	h := e.header(kindChunk, len(body), 0, 0)
	binary.BigEndian.PutUint32(h[2+frameHeaderLen-4:], crc32.Update(crc32.Update(0, castagnoli, h[2:2+frameHeaderLen-4]), castagnoli, body))
	return net.Buffers{h, body}, nil
}

// header fills the frame's header but its CRC.
func (e *encoder) header(kind byte, skel, payloads, total int) []byte {
	h := e.hdr[:]
	copy(h, frameMagic[:])
	h[2] = kind
	binary.BigEndian.PutUint32(h[3:], uint32(skel))
	binary.BigEndian.PutUint32(h[7:], uint32(payloads))
	binary.BigEndian.PutUint64(h[11:], uint64(total))
	return h
}

// marshalInto marshals into *buf, grown to size if needed, and returns the bytes.
func marshalInto(buf *[]byte, size int, marshal func([]byte) (int, error)) ([]byte, error) {
	if cap(*buf) < size {
		*buf = make([]byte, size)
	}
	n, err := marshal((*buf)[:size])
	if err != nil {
		return nil, err
	}
	return (*buf)[:n], nil
}

// decoder reads an accepted connection's frames, reusing its buffers for what it
// does not hand on.
type decoder struct {
	skel, lens, buf []byte
	// crc is the node's checksum memo (Factory.CRC), nil for none.
	crc *crcalg.Memo
}

// keepBuf bounds the buffer a decoder keeps between frames.
const keepBuf = 4 << 20

// grow returns (*b)[:n], reallocated if too small; kept for the next frame only
// up to keepBuf.
func grow(b *[]byte, n int) []byte {
	if cap(*b) >= n {
		return (*b)[:n]
	}
	nb := make([]byte, n)
	if n <= keepBuf {
		*b = nb
	}
	return nb
}

// frame reads this transport's frame after its magic and hands it to dragonboat.
// Each message's payloads go to a buffer of its own: dragonboat keeps a group's
// entries until it applies them, and one group's must not pin another's. A payload
// of directio.InPlaceMin bytes or more gets a block-aligned buffer of its own, from which
// the raft log writes it to the disk without copying it first (raftlog's
// putInPlace).
func (d *decoder) frame(br *bufio.Reader, c net.Conn, onBatch raftio.MessageHandler, onChunk raftio.ChunkHandler) error {
	var h [frameHeaderLen]byte
	c.SetReadDeadline(time.Now().Add(frameDeadline(0)))
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return fmt.Errorf("read frame header: %w", err)
	}
	kind := h[0]
	skelLen, n := binary.BigEndian.Uint32(h[1:]), binary.BigEndian.Uint32(h[5:])
	total, want := binary.BigEndian.Uint64(h[9:]), binary.BigEndian.Uint32(h[17:])
	switch {
	case kind != kindBatch && kind != kindChunk:
		return fmt.Errorf("%w: kind %d", errBadFrame, kind)
	case skelLen == 0 || skelLen > maxSkeleton || n > maxPayloads || total > maxFrame:
		return fmt.Errorf("%w: %d skeleton bytes, %d payloads of %d bytes", errBadFrame, skelLen, n, total)
	case kind == kindChunk && (n != 0 || total != 0):
		return fmt.Errorf("%w: a chunk with payloads", errBadFrame)
	}
	c.SetReadDeadline(time.Now().Add(frameDeadline(int(skelLen) + 4*int(n) + int(total))))
	skel := grow(&d.skel, int(skelLen))
	if _, err := io.ReadFull(br, skel); err != nil {
		return fmt.Errorf("read frame skeleton: %w", err)
	}
	crc := crc32.Update(crc32.Update(0, castagnoli, h[:frameHeaderLen-4]), castagnoli, skel)
	if kind == kindChunk {
		if crc != want {
			return fmt.Errorf("%w: chunk CRC mismatch", errBadFrame)
		}
		return deliverChunk(skel, onChunk)
	}
	lens := grow(&d.lens, 4*int(n))
	if _, err := io.ReadFull(br, lens); err != nil {
		return fmt.Errorf("read frame payload lengths: %w", err)
	}
	crc = crc32.Update(crc, castagnoli, lens)
	sum := uint64(0)
	for i := 0; i < int(n); i++ {
		sum += uint64(binary.BigEndian.Uint32(lens[4*i:]))
	}
	if sum != total {
		return fmt.Errorf("%w: payload lengths add to %d, the header says %d", errBadFrame, sum, total)
	}
	// Unmarshalled before the CRC is checked, to size each message's buffer: nothing
	// of it is handed on unless the CRC then matches.
	var b pb.MessageBatch
	if err := b.Unmarshal(skel); err != nil {
		return fmt.Errorf("%w: batch: %w", errBadFrame, err)
	}
	entries := 0
	for i := range b.Requests {
		entries += len(b.Requests[i].Entries)
	}
	if entries != int(n) {
		return fmt.Errorf("%w: %d payloads for %d entries", errBadFrame, n, entries)
	}
	k := 0
	for i := range b.Requests {
		es := b.Requests[i].Entries
		small := 0
		for j := range es {
			if l := int(binary.BigEndian.Uint32(lens[4*(k+j):])); l < directio.InPlaceMin {
				small += l
			}
		}
		var data []byte
		if small > 0 {
			data = make([]byte, small)
		}
		off := 0
		for j := range es {
			if l := int(binary.BigEndian.Uint32(lens[4*k:])); l > 0 {
				if l >= directio.InPlaceMin {
					cmd := directio.Aligned(l)
					sum, err := readChecksummed(br, cmd)
					if err != nil {
						return fmt.Errorf("read frame payloads: %w", err)
					}
					d.crc.Remember(cmd, sum) // for the raft log (the frame is checked below)
					crc = crcalg.Castagnoli().Combine(crc, sum, l)
					es[j].Cmd = cmd
				} else {
					cmd := data[off : off+l : off+l]
					off += l
					if _, err := io.ReadFull(br, cmd); err != nil {
						return fmt.Errorf("read frame payloads: %w", err)
					}
					crc = payloadCRC(crc, cmd, d.crc)
					es[j].Cmd = cmd
				}
			}
			k++
		}
	}
	if crc != want {
		return fmt.Errorf("%w: batch CRC mismatch", errBadFrame)
	}
	onBatch(b)
	return nil
}

// readChecksummed fills b from r and returns its CRC32C, taken a slice at a time as
// each arrives, while it is in the cache: a pass over the whole payload afterwards
// read it from memory again (on the two followers of a three-replica ingest, 3% of
// the nodes' CPU).
func readChecksummed(r io.Reader, b []byte) (uint32, error) {
	const slice = 256 << 10
	var c uint32
	for off := 0; off < len(b); {
		n := min(slice, len(b)-off)
		if _, err := io.ReadFull(r, b[off:off+n]); err != nil {
			return 0, err
		}
		c = crc32.Update(c, castagnoli, b[off:off+n])
		off += n
	}
	return c, nil
}

// deliverChunk hands a marshalled snapshot chunk to dragonboat (Unmarshal copies
// its data: the buffer may be reused).
func deliverChunk(b []byte, onChunk raftio.ChunkHandler) error {
	var ch pb.Chunk
	if err := ch.Unmarshal(b); err != nil {
		return fmt.Errorf("%w: chunk: %w", errBadFrame, err)
	}
	if !onChunk(ch) {
		return errChunkRejected
	}
	return nil
}
