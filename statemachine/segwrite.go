package statemachine

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Segment parts: their names, and the records apply writes into them (served bytes
// placed at their served positions, index keys beside them, parts rolled at the
// store's segment size).

// segPath is the path of a file's first segment part.
func (g *Group) segPath(no uint64) string { return g.partPath(no, 0) }

// partPath is the path of part k of a file's segment.
func (g *Group) partPath(no uint64, k int) string {
	return g.store.fs.PathJoin(g.dir, partName(no, k))
}

// partName is the name of part k of a file's segment.
func partName(no uint64, k int) string {
	if k == 0 {
		return fmt.Sprintf("%06d.seg", no)
	}
	return fmt.Sprintf("%06d.%04d.seg", no, k)
}

// parseSegName reads the file number and part of a segment file name (plain,
// compressed or a compression temp file).
func parseSegName(name string) (no uint64, part int, ok bool) {
	base, _, _ := strings.Cut(name, ".seg")
	if !strings.Contains(name, ".seg") || strings.HasSuffix(name, truncSuffix) {
		return 0, 0, false
	}
	a, b, two := strings.Cut(base, ".")
	n, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if two {
		k, err := strconv.Atoi(b)
		if err != nil || k <= 0 {
			return 0, 0, false
		}
		return n, k, true
	}
	return n, 0, true
}

// partOf returns the index of the part holding segment offset off, given part starts.
func partOf(starts []uint64, off uint64) int {
	k := 0
	for i, st := range starts {
		if off >= st {
			k = i + 1
		}
	}
	return k
}

func partStart(starts []uint64, k int) uint64 {
	if k == 0 {
		return 0
	}
	return starts[k-1]
}

// addRecord frames payload at the current partial tail and records its boundary.
func (g *Group) addRecord(bt *batch, typ byte, index uint64, payload []byte) error {
	return g.addRecordPlaced(bt, typ, index, payload, false)
}

// addRecordPlaced is addRecord; with place set, payload holds master events whose
// log_pos and checksum are rewritten, in the write buffer, for their served position.
func (g *Group) addRecordPlaced(bt *batch, typ byte, index uint64, payload []byte, place bool) error {
	if lim := g.store.segmentSize; lim > 0 {
		start := partStart(g.m.PartStarts, len(g.m.PartStarts))
		if g.m.PartSeg > start && g.m.PartSeg-start+recordHeaderLen+uint64(len(payload)) > lim {
			if err := g.rollPart(bt); err != nil {
				return err
			}
		}
	}
	// The position index names only records that begin at an event boundary: a piece
	// beginning inside an event cut across pieces is no place to start reading (a
	// file/position start past it skips forward from the record before).
	if p := g.m.Pending; !place || p == nil || p.EventLeft == 0 {
		if err := bt.b.Set(posKey(g.id, g.m.File, g.m.PartServed), binary.AppendUvarint(nil, g.m.PartSeg), nil); err != nil {
			return fmt.Errorf("group %d: index position: %w", g.id, err)
		}
	}
	if bt.indexed != index {
		bt.indexed = index
		loc := txnLoc{File: g.m.File, Start: g.m.PartServed, SegStart: g.m.PartSeg}
		if err := bt.b.Set(raftKey(g.id, index), loc.encode(), nil); err != nil {
			return fmt.Errorf("group %d: index raft entry %d: %w", g.id, index, err)
		}
	}
	if place && len(payload) >= placedMin && g.m.Pending.EventLeft == 0 && g.seg.staged(recordHeaderLen+len(payload)) &&
		g.placeRecord(&g.placed, payload, g.m.PartServed, typ, index, &bt.known) {
		if g.placed.derived {
			g.store.derivedBytes.Add(int64(len(payload)))
		}
		return g.writePlaced(bt, len(payload))
	}
	before := len(bt.buf)
	var hdr [recordHeaderLen]byte
	bt.buf = append(bt.buf, hdr[:]...)
	bt.buf = append(bt.buf, payload...)
	var left uint64 // where in an event the payload starts
	if place {
		left = g.m.Pending.EventLeft
		if err := g.place(bt.buf[before+recordHeaderLen:], g.m.PartServed); err != nil {
			bt.buf = bt.buf[:before]
			return err
		}
	}
	rec := bt.buf[before:]
	if crc, ok := placedPartCRC(&bt.known, payload, rec[recordHeaderLen:], left); ok {
		sealRecordCRC(rec, typ, index, crc)
		g.store.derivedBytes.Add(int64(len(payload)))
	} else {
		sealRecord(rec, typ, index)
	}
	g.m.PartSeg += uint64(len(bt.buf) - before)
	g.m.PartServed += uint64(len(payload))
	if len(bt.buf) >= writebackChunk {
		if err := g.flushSegment(bt); err != nil {
			return err
		}
		if !g.seg.d.staging() { // staged bytes go to the disk directly
			startWriteback(g.seg.File)
		}
	}
	return nil
}

// writePlaced writes the record g.placed holds (see segplace.go) after the records
// the Update's buffer holds.
func (g *Group) writePlaced(bt *batch, n int) error {
	defer func() {
		g.placed.src = nil // the entry is raft's
		if cap(g.placed.patches) > 4096 {
			g.placed.patches = nil // an idle group keeps no large list
		}
	}()
	if err := g.flushSegment(bt); err != nil {
		return err
	}
	if _, err := g.seg.writeStaged(&g.placed); err != nil {
		return fmt.Errorf("group %d: write segment %s: %w", g.id, g.seg.Name(), err)
	}
	g.dirty[g.seg.Name()] = g.seg
	g.m.PartSeg += uint64(recordHeaderLen + n)
	g.m.PartServed += uint64(n)
	return nil
}

// rollPart starts a new part of the current file's segment at a record boundary.
func (g *Group) rollPart(bt *batch) error {
	if err := g.flushSegment(bt); err != nil {
		return err
	}
	if err := g.seg.Flush(); err != nil { // never appended to again: its stage can go
		return fmt.Errorf("group %d: %w", g.id, err)
	}
	k := len(g.m.PartStarts) + 1
	f, err := g.store.createSeg(g.partPath(g.m.File, k))
	if err != nil {
		return fmt.Errorf("group %d: create segment part: %w", g.id, err)
	}
	g.dirty[g.seg.Name()] = g.seg
	g.seg = f
	g.newFiles = true
	g.m.PartStarts = append(g.m.PartStarts, g.m.PartSeg)
	return nil
}

// place rewrites, in place, each event's log_pos to its end position in the served
// file (the events start at served position start) and refreshes its checksum. The
// events of a transaction's piece may begin or end inside an event cut across pieces:
// the pending transaction carries that event's state from piece to piece.
func (g *Group) place(events []byte, start uint64) error {
	p := g.m.Pending
	pl := binlog.Placer{Stream: binlog.Stream{Left: p.EventLeft}, CRC: p.EventCRC}
	if err := pl.Place(events, start, binlog.FlagBinlogInUse, g.m.Checksummed); err != nil {
		return err
	}
	p.EventLeft, p.EventCRC = pl.Left, pl.CRC
	return nil
}

func (g *Group) flushSegment(bt *batch) error {
	if len(bt.buf) == 0 {
		return nil
	}
	if _, err := g.seg.Write(bt.buf); err != nil {
		return fmt.Errorf("group %d: write segment %s: %w", g.id, g.seg.Name(), err)
	}
	bt.buf = bt.buf[:0]
	g.dirty[g.seg.Name()] = g.seg
	return nil
}

// flushParts puts every record written so far in the files (see segFile.Flush), as
// readers must find them there once the Update is published.
func (g *Group) flushParts() error {
	if g.seg != nil {
		if err := g.seg.Flush(); err != nil {
			return fmt.Errorf("group %d: %w", g.id, err)
		}
	}
	for _, f := range g.dirty {
		if err := f.Flush(); err != nil {
			return fmt.Errorf("group %d: %w", g.id, err)
		}
	}
	return nil
}

func (g *Group) putFile(bt *batch, fi fileInfo) error {
	v, err := json.Marshal(fi)
	if err != nil {
		return fmt.Errorf("group %d: encode file info: %w", g.id, err)
	}
	if err := bt.b.Set(fileKey(g.id, fi.No), v, nil); err != nil {
		return fmt.Errorf("group %d: index file info: %w", g.id, err)
	}
	bt.files = append(bt.files, v)
	return nil
}
