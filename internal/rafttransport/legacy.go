package rafttransport

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"time"

	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
)

// Dragonboat's TCP frame (its internal/transport/tcp.go, v3.3), which releases
// before cluster version WireVersion read and write:
//
//	magic 0xAE 0x7D | method u16 | size u64 | header CRC u32 | payload CRC u32 | payload
//
// big-endian; the header CRC is CRC-32 (IEEE) of the 18 header bytes with its own
// field zero, the payload CRC that of the payload, or zero under TLS. The payload
// is a marshalled MessageBatch (method 100) or Chunk (200).
var (
	legacyMagic = [2]byte{0xAE, 0x7D}
	poison      = [2]byte{0, 0}
)

const (
	legacyHeaderLen        = 18
	raftMethod      uint16 = 100
	snapshotMethod  uint16 = 200
)

// legacyMessage is what a dragonboat frame carries.
type legacyMessage interface {
	MarshalTo([]byte) (int, error)
}

// legacy returns m as dragonboat's frame.
func (e *encoder) legacy(method uint16, m legacyMessage, encrypted bool) (net.Buffers, error) {
	size := 0
	switch v := m.(type) {
	case *pb.MessageBatch:
		size = v.SizeUpperLimit()
	case *pb.Chunk:
		size = v.Size()
	}
	payload, err := marshalInto(&e.skel, size, m.MarshalTo)
	if err != nil {
		return nil, fmt.Errorf("raft transport: marshal: %w", err)
	}
	h := e.lhdr[:]
	copy(h, legacyMagic[:])
	binary.BigEndian.PutUint16(h[2:], method)
	binary.BigEndian.PutUint64(h[4:], uint64(len(payload)))
	binary.BigEndian.PutUint32(h[12:], 0)
	crc := uint32(0)
	if !encrypted {
		crc = crc32.ChecksumIEEE(payload)
	}
	binary.BigEndian.PutUint32(h[16:], crc)
	binary.BigEndian.PutUint32(h[12:], crc32.ChecksumIEEE(h[2:]))
	return net.Buffers{h, payload}, nil
}

// legacy reads dragonboat's frame after its magic and hands it to dragonboat.
func (d *decoder) legacy(br *bufio.Reader, c net.Conn, encrypted bool, onBatch raftio.MessageHandler, onChunk raftio.ChunkHandler) error {
	var h [legacyHeaderLen]byte
	c.SetReadDeadline(time.Now().Add(frameDeadline(0)))
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return fmt.Errorf("read dragonboat header: %w", err)
	}
	got := binary.BigEndian.Uint32(h[10:])
	binary.BigEndian.PutUint32(h[10:], 0)
	if crc32.ChecksumIEEE(h[:]) != got {
		return fmt.Errorf("%w: dragonboat header CRC mismatch", errBadFrame)
	}
	method, size, want := binary.BigEndian.Uint16(h[:]), binary.BigEndian.Uint64(h[2:]), binary.BigEndian.Uint32(h[14:])
	if method != raftMethod && method != snapshotMethod || size == 0 || size > maxFrame {
		return fmt.Errorf("%w: dragonboat method %d, %d bytes", errBadFrame, method, size)
	}
	c.SetReadDeadline(time.Now().Add(frameDeadline(int(size))))
	buf := grow(&d.buf, int(size))
	if _, err := io.ReadFull(br, buf); err != nil {
		return fmt.Errorf("read dragonboat payload: %w", err)
	}
	if !encrypted && crc32.ChecksumIEEE(buf) != want {
		return fmt.Errorf("%w: dragonboat payload CRC mismatch", errBadFrame)
	}
	if method == snapshotMethod {
		return deliverChunk(buf, onChunk)
	}
	var b pb.MessageBatch
	if err := b.Unmarshal(buf); err != nil { // copies the entries' Cmds
		return fmt.Errorf("%w: batch: %w", errBadFrame, err)
	}
	onBatch(b)
	return nil
}
