package statemachine

import "encoding/binary"

// Index keys live in one pebble instance per node, all under a per-group prefix
// ('g' + group id, big endian) so groups never see each other's keys and a group's
// data can be dropped with one range deletion:
//
//	g<gid>m                          -> meta (JSON)
//	g<gid>f<file u64>                -> fileInfo (JSON) of a served file
//	g<gid>x<domain u32><seq u64><server u32> -> txnLoc of a transaction
//	g<gid>p<file u64><served pos u64> -> segment offset of the record starting there
//	g<gid>r<raft index u64>           -> txnLoc-style (file, served pos, seg offset) of
//	                                     the first record an entry wrote
func groupPrefix(gid uint64) []byte {
	b := make([]byte, 9, 40)
	b[0] = 'g'
	binary.BigEndian.PutUint64(b[1:], gid)
	return b
}

func groupEnd(gid uint64) []byte {
	p := groupPrefix(gid)
	p[0] = 'g'
	binary.BigEndian.PutUint64(p[1:], gid+1)
	return p
}

func metaKey(gid uint64) []byte { return append(groupPrefix(gid), 'm') }

func fileKey(gid, file uint64) []byte {
	return binary.BigEndian.AppendUint64(append(groupPrefix(gid), 'f'), file)
}

func txnKey(gid uint64, domain uint32, seq uint64, server uint32) []byte {
	b := append(groupPrefix(gid), 'x')
	b = binary.BigEndian.AppendUint32(b, domain)
	b = binary.BigEndian.AppendUint64(b, seq)
	return binary.BigEndian.AppendUint32(b, server)
}

func posKey(gid, file, pos uint64) []byte {
	b := binary.BigEndian.AppendUint64(append(groupPrefix(gid), 'p'), file)
	return binary.BigEndian.AppendUint64(b, pos)
}

func raftKey(gid, index uint64) []byte {
	return binary.BigEndian.AppendUint64(append(groupPrefix(gid), 'r'), index)
}

// txnLoc is where a transaction sits: its served file, served start and end positions,
// and the segment offsets of its first record and of the record after it.
type txnLoc struct {
	File             uint64
	Start, End       uint64
	SegStart, SegEnd uint64
}

func (l txnLoc) encode() []byte {
	b := make([]byte, 0, 40)
	for _, v := range []uint64{l.File, l.Start, l.End, l.SegStart, l.SegEnd} {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

func decodeTxnLoc(b []byte) (txnLoc, bool) {
	var v [5]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return txnLoc{}, false
		}
		v[i], b = x, b[n:]
	}
	return txnLoc{File: v[0], Start: v[1], End: v[2], SegStart: v[3], SegEnd: v[4]}, true
}
