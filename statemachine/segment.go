package statemachine

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// A segment file holds one served binlog file as a sequence of records:
//
//	[u32 payload length][u32 CRC32C of index, type and payload][u64 raft index][u8 type][payload]
//
// Payloads are served bytes: concatenated binlog events whose log_pos already is their
// end position in the served file, so serving never re-encodes anything. The served
// position of a record's first byte is 4 (the binlog magic) plus the payload sizes of
// the records before it.
const recordHeaderLen = 17

// Record types.
const (
	// recHeader holds the FDE and Gtid_list that open a served file.
	recHeader byte = 1
	// recTxn holds a complete transaction group, or the last piece of a split one.
	recTxn byte = 2
	// recPart holds a non-final piece of a transaction group.
	recPart byte = 3
	// recRotate holds the Rotate that closes a served file.
	recRotate byte = 4
	// recIndex ends the records of one Update: its payload (JSON, see redoRecord)
	// holds the index changes that cannot be derived from the served records before
	// it. It serves no bytes (readers skip it). With it the segment fsync alone makes
	// an Update durable: Open rolls the index forward from these records.
	recIndex byte = 5
)

// maxRecordPayload bounds what a record header may claim, so a corrupt length is
// reported instead of triggering a huge allocation.
const maxRecordPayload = 1 << 30

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func recordCRC(hdr []byte, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[8:recordHeaderLen])
	return crc32.Update(c, castagnoli, payload)
}

// appendRecord frames payload as a record and appends it to dst.
func appendRecord(dst []byte, typ byte, index uint64, payload []byte) []byte {
	at := len(dst)
	var hdr [recordHeaderLen]byte
	dst = append(dst, hdr[:]...)
	dst = append(dst, payload...)
	sealRecord(dst[at:], typ, index)
	return dst
}

// sealRecord fills in the header of rec, a record whose payload is already in place
// after its header, so a payload can be built (and rewritten) where it will be written.
func sealRecord(rec []byte, typ byte, index uint64) {
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)-recordHeaderLen))
	binary.LittleEndian.PutUint64(rec[8:], index)
	rec[16] = typ
	binary.LittleEndian.PutUint32(rec[4:], recordCRC(rec[:recordHeaderLen], rec[recordHeaderLen:]))
}

// sealRecordCRC is sealRecord for a payload whose CRC32C is payloadCRC (derived, see
// segcrc.go).
func sealRecordCRC(rec []byte, typ byte, index uint64, payloadCRC uint32) {
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)-recordHeaderLen))
	binary.LittleEndian.PutUint64(rec[8:], index)
	rec[16] = typ
	binary.LittleEndian.PutUint32(rec[4:], recordCRCOf(rec, payloadCRC, len(rec)-recordHeaderLen))
}

// recordHeader is a decoded record header.
type recordHeader struct {
	Len   uint32
	CRC   uint32
	Index uint64
	Type  byte
}

func parseRecordHeader(b []byte) (recordHeader, error) {
	if len(b) < recordHeaderLen {
		return recordHeader{}, fmt.Errorf("record header truncated: %d bytes", len(b))
	}
	h := recordHeader{
		Len:   binary.LittleEndian.Uint32(b[0:]),
		CRC:   binary.LittleEndian.Uint32(b[4:]),
		Index: binary.LittleEndian.Uint64(b[8:]),
		Type:  b[16],
	}
	if h.Type < recHeader || h.Type > recIndex {
		return h, fmt.Errorf("unknown record type %d", h.Type)
	}
	if h.Len > maxRecordPayload {
		return h, fmt.Errorf("record length %d exceeds the limit %d", h.Len, maxRecordPayload)
	}
	return h, nil
}

// verifyRecord checks the CRC of a record whose header hdr and payload were read.
func verifyRecord(hdr []byte, h recordHeader, payload []byte) error {
	if got := recordCRC(hdr, payload); got != h.CRC {
		return fmt.Errorf("record CRC32C mismatch (stored %08x, computed %08x)", h.CRC, got)
	}
	return nil
}
