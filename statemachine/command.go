package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Command kinds carried in raft entries of an upstream group.
const (
	// KindClaimEpoch starts a new syncer epoch: proposals of older epochs are
	// rejected from then on, and a half-received transaction is dropped.
	KindClaimEpoch byte = 1
	// KindAppend appends transactions (and file boundaries) to the group's binlog.
	KindAppend byte = 2
	// KindPurge deletes the served files before a given one on every replica alike.
	KindPurge byte = 3
	// KindAppendSeq is an Append that also carries its place in its epoch's
	// sequence of proposals (Append.Seq), so that a syncer may have several in flight
	// (cluster version 3).
	KindAppendSeq byte = 4
)

const commandVersion byte = 1

// SequencedAppendVersion is the cluster version from which a syncer may propose
// KindAppendSeq: a replica on an older binary would not check the sequence, and
// would accept what the others reject.
const SequencedAppendVersion uint32 = 3

// Item kinds inside an Append command.
const (
	itemNewFile byte = 1
	itemTxn     byte = 2
	// itemNewFileMySQL is a NewFile of a MySQL-flavor group: its base is a MySQL
	// GTID set (text form) instead of a MariaDB position.
	itemNewFileMySQL byte = 3
)

// Append is the proposal a syncer makes: a batch of items that must follow the
// group's tail exactly. Epoch is the fencing token returned by ClaimEpoch; PrevOrdinal
// is the number of complete transactions the proposer believes the group holds.
//
// A Sequenced append also names its place in the epoch (Seq: 0 for the first
// Append after the ClaimEpoch, then 1, 2, ...). Ordinals move only with complete
// transactions, so they cannot tell the pieces of one large transaction apart: with
// several proposals in flight, a piece raft dropped would go unnoticed if the next one
// committed. The sequence notices: once one proposal is dropped or rejected, every
// later one of the epoch is rejected too.
type Append struct {
	Epoch       uint64
	PrevOrdinal uint64
	Sequenced   bool
	Seq         uint64
	Items       []Item
}

// Item is one element of an Append: either a new served file (NewFile set) or a piece
// of a transaction.
type Item struct {
	NewFile *NewFile
	Txn     *Txn
}

// NewFile closes the current served file (if any) with a Rotate and starts the next
// one, because the master started a new binlog file. FDE is the master's
// Format_description for that file; BaseState is the GTID position the very first
// file of the group starts from (ignored afterwards: later files start from the
// group's own state).
type NewFile struct {
	ServerID     uint32
	UpstreamFile string
	FDE          []byte
	BaseState    binlog.Position
	// MySQL marks a MySQL-flavor group (fixed by its first file); BaseSet is then
	// its base instead of BaseState: the GTID set executed before its history.
	MySQL   bool
	BaseSet binlog.MySQLSet
}

// Txn is a whole transaction group, or one piece of it (First and Last tell which):
// groups larger than one proposal come in pieces, and an event larger than a piece is
// cut across pieces past its header and before its checksum (see binlog.CutEvent).
// Events are the master's raw bytes, concatenated.
type Txn struct {
	GTID   binlog.GTID
	First  bool
	Last   bool
	Events []byte
}

const (
	txnFirst byte = 1
	txnLast  byte = 2
)

// EncodeClaimEpoch returns the ClaimEpoch command.
func EncodeClaimEpoch() []byte { return []byte{commandVersion, KindClaimEpoch} }

// EncodePurge returns the command that purges every served file before file before.
func EncodePurge(before uint64) []byte {
	return binary.AppendUvarint([]byte{commandVersion, KindPurge}, before)
}

// DecodePurge returns the file a purge command keeps (everything before it goes).
func DecodePurge(cmd []byte) (uint64, error) {
	if len(cmd) < 3 || cmd[0] != commandVersion || cmd[1] != KindPurge {
		return 0, fmt.Errorf("%w: not a purge command", errBadCommand)
	}
	d := &decoder{b: cmd[2:]}
	v := d.uvarint()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errBadCommand, len(d.b))
	}
	return v, d.err
}

// Encode serialises an Append command.
func (a *Append) Encode() []byte { return a.AppendEncoded(nil) }

// AppendEncoded appends the command's encoding to dst and returns the result, so a
// proposer can encode into a buffer of its own (dragonboat copies each proposal, so
// the buffer is free again once Propose returned).
func (a *Append) AppendEncoded(dst []byte) []byte {
	size := 32
	for _, it := range a.Items {
		if it.Txn != nil {
			size += len(it.Txn.Events) + 32
		} else if it.NewFile != nil {
			size += len(it.NewFile.FDE) + len(it.NewFile.UpstreamFile) + 64
		}
	}
	return a.appendEncoded(slices.Grow(dst, size), false)
}

// MaxPrefixLen bounds what AppendPrefix writes for an Append of one transaction
// item: the command's header and the item's, every number a varint of at most 10
// bytes.
const MaxPrefixLen = 2 + 3*10 + 1 + 1 + 3*10 + 1 + 10

// AppendPrefix appends the encoding of a, a command whose last item is a transaction,
// without that item's events: the prefix followed by those events is exactly what
// AppendEncoded writes. A proposer whose events already sit in a buffer with room
// before them writes the prefix there and proposes the two as one slice, without
// copying the events (dragonboat copies the proposal anyway). For an Append of one
// item the prefix is at most MaxPrefixLen bytes.
func (a *Append) AppendPrefix(dst []byte) ([]byte, error) {
	if len(a.Items) == 0 || a.Items[len(a.Items)-1].Txn == nil {
		return dst, errors.New("statemachine: a command's prefix needs a transaction as its last item")
	}
	return a.appendEncoded(dst, true), nil
}

// appendEncoded writes the encoding to b, without the last item's events when
// prefixOnly (that item is a transaction: see AppendPrefix).
func (a *Append) appendEncoded(b []byte, prefixOnly bool) []byte {
	if a.Sequenced {
		b = append(b, commandVersion, KindAppendSeq)
	} else {
		b = append(b, commandVersion, KindAppend)
	}
	b = binary.AppendUvarint(b, a.Epoch)
	b = binary.AppendUvarint(b, a.PrevOrdinal)
	if a.Sequenced {
		b = binary.AppendUvarint(b, a.Seq)
	}
	b = binary.AppendUvarint(b, uint64(len(a.Items)))
	for i, it := range a.Items {
		switch {
		case it.NewFile != nil && it.NewFile.MySQL:
			nf := it.NewFile
			b = append(b, itemNewFileMySQL)
			b = binary.AppendUvarint(b, uint64(nf.ServerID))
			b = appendBytes(b, []byte(nf.UpstreamFile))
			b = appendBytes(b, nf.FDE)
			b = appendBytes(b, []byte(nf.BaseSet.String()))
		case it.NewFile != nil:
			nf := it.NewFile
			b = append(b, itemNewFile)
			b = binary.AppendUvarint(b, uint64(nf.ServerID))
			b = appendBytes(b, []byte(nf.UpstreamFile))
			b = appendBytes(b, nf.FDE)
			b = nf.BaseState.AppendBinary(b)
		case it.Txn != nil:
			t := it.Txn
			b = append(b, itemTxn)
			b = binary.AppendUvarint(b, uint64(t.GTID.Domain))
			b = binary.AppendUvarint(b, uint64(t.GTID.Server))
			b = binary.AppendUvarint(b, t.GTID.Seq)
			var flags byte
			if t.First {
				flags |= txnFirst
			}
			if t.Last {
				flags |= txnLast
			}
			b = append(b, flags)
			if prefixOnly && i == len(a.Items)-1 {
				return binary.AppendUvarint(b, uint64(len(t.Events)))
			}
			b = appendBytes(b, t.Events)
		}
	}
	return b
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

var errBadCommand = errors.New("statemachine: malformed command")

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: bad varint", errBadCommand)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = fmt.Errorf("%w: truncated", errBadCommand)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: field of %d bytes, %d left", errBadCommand, n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 0xffffffff && d.err == nil {
		d.err = fmt.Errorf("%w: value %d exceeds 32 bits", errBadCommand, v)
	}
	return uint32(v)
}

// DecodeCommand returns the command kind and, for KindAppend, the decoded command
// (KindAppendSeq decodes as KindAppend with Sequenced set).
// Events inside the result alias cmd.
func DecodeCommand(cmd []byte) (byte, *Append, error) {
	if len(cmd) < 2 || cmd[0] != commandVersion {
		return 0, nil, fmt.Errorf("%w: unknown version", errBadCommand)
	}
	switch cmd[1] {
	case KindClaimEpoch:
		return KindClaimEpoch, nil, nil
	case KindPurge:
		if _, err := DecodePurge(cmd); err != nil {
			return 0, nil, err
		}
		return KindPurge, nil, nil
	case KindAppend, KindAppendSeq:
	default:
		return 0, nil, fmt.Errorf("%w: unknown kind %d", errBadCommand, cmd[1])
	}
	d := &decoder{b: cmd[2:]}
	a := &Append{Epoch: d.uvarint(), PrevOrdinal: d.uvarint(), Sequenced: cmd[1] == KindAppendSeq}
	if a.Sequenced {
		a.Seq = d.uvarint()
	}
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		return 0, nil, fmt.Errorf("%w: %d items in %d bytes", errBadCommand, n, len(d.b))
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		switch d.byte1() {
		case itemNewFile:
			nf := &NewFile{ServerID: d.uint32(), UpstreamFile: string(d.bytes()), FDE: d.bytes()}
			if d.err == nil {
				p, rest, err := binlog.DecodePosition(d.b)
				if err != nil {
					d.err = fmt.Errorf("%w: %v", errBadCommand, err)
					break
				}
				nf.BaseState, d.b = p, rest
			}
			a.Items = append(a.Items, Item{NewFile: nf})
		case itemNewFileMySQL:
			nf := &NewFile{MySQL: true, ServerID: d.uint32(), UpstreamFile: string(d.bytes()), FDE: d.bytes()}
			text := d.bytes()
			if d.err == nil {
				set, err := binlog.ParseMySQLSet(string(text))
				if err != nil {
					d.err = fmt.Errorf("%w: %v", errBadCommand, err)
					break
				}
				nf.BaseSet = set
			}
			a.Items = append(a.Items, Item{NewFile: nf})
		case itemTxn:
			t := &Txn{GTID: binlog.GTID{Domain: d.uint32(), Server: d.uint32(), Seq: d.uvarint()}}
			flags := d.byte1()
			t.First, t.Last = flags&txnFirst != 0, flags&txnLast != 0
			t.Events = d.bytes()
			a.Items = append(a.Items, Item{Txn: t})
		default:
			if d.err == nil {
				d.err = fmt.Errorf("%w: unknown item kind", errBadCommand)
			}
		}
	}
	if d.err != nil {
		return 0, nil, d.err
	}
	if len(d.b) != 0 {
		return 0, nil, fmt.Errorf("%w: %d trailing bytes", errBadCommand, len(d.b))
	}
	return KindAppend, a, nil
}
