package statemachine

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Redo. Update commits index changes without an fsync; the segments are the durable
// record (see commit). Every Update's records end with a recIndex record, so after a
// crash Open scans the segments from where the index's meta ends and re-derives, for
// each Update that reached its recIndex record, exactly the keys commit wrote:
//
//   - a position key for every served record, a raft-index key for each entry's first
//     record, a GTID key for each completed transaction (its GTID read from its first
//     event, which apply checks);
//   - the meta and the file entries, from the recIndex record itself.
//
// Records after the last recIndex record belong to an Update that never finished:
// Open truncates them and returns the last complete Update's index, so dragonboat
// replays the rest from its log. Redo never crosses a change that rewrites or deletes
// segments: those are committed to the index with fsyncs (commit's invariant).

// redoScan walks records forward from a position, across parts and files.
type redoScan struct {
	g           *Group
	file        uint64
	part        int
	starts      []uint64
	seg, served uint64
	afterRotate bool
	skipRaftKey bool
	pending     *pendingTxn
	// cut follows events cut across pieces: a piece that begins inside one gets no
	// position-index entry (see addRecordPlaced).
	cut binlog.Stream
	// closed are the files the scan read to their Rotate since the last recIndex
	// record: that record's closed file entries must describe them as read.
	closed []scannedFile
	// read are the plain parts read, fsynced before the result is committed.
	read    []string
	prevIdx uint64
	r       segmentReader
	size    int64 // of the part r reads, or -1 if unknown (compressed)
}

// scannedFile is where a scan found a file's parts to begin and its records to end.
type scannedFile struct {
	no     uint64
	starts []uint64
	end    uint64
}

// errScanEnd marks the clean end of the segments (no further part or file).
var errScanEnd = errors.New("end of segments")

// redo rolls g.m and the index forward over complete Updates found in the segments.
// With fresh set, g.m is the start of the oldest file and the group's index entries
// are replaced by what redo derives. It reports whether the segments end, at
// g.m.PartSeg, with the recIndex record of the Update g.m is the state after (false:
// Open must write it again, see restoreRedo).
func (g *Group) redo(fresh bool) (bool, error) {
	m := g.m
	s := &redoScan{g: g, file: m.File, part: len(m.PartStarts), starts: append([]uint64(nil), m.PartStarts...),
		seg: m.PartSeg, served: m.PartServed}
	if m.File == 0 {
		s.file, s.part, s.seg, s.served = 1, 0, 0, 4
	}
	if m.Pending != nil {
		p := *m.Pending
		s.pending = &p
		s.cut.Left = p.EventLeft
	}
	defer s.close()
	done := g.store.db.NewBatch() // keys of complete Updates
	defer done.Close()
	if fresh {
		if err := done.DeleteRange(groupPrefix(g.id), groupEnd(g.id), nil); err != nil {
			return false, fmt.Errorf("group %d: rebuild index: %w", g.id, err)
		}
		// The entry that began the oldest file began with the Rotate closing a purged
		// one: purge dropped its raft-index key, so redo must not bring it back.
		s.skipRaftKey = m.File > 1
	}
	open := g.store.db.NewBatch() // keys of records after the last recIndex
	defer open.Close()
	var last *meta
	var lastEnd uint64 // where last's record ends
	applied := m.Applied
	updates := 0
	stop := func(why string, err error) {
		if !errors.Is(err, errScanEnd) {
			g.log.Info("redo stops at an incomplete or torn tail", "file", FileName(s.file), "part", s.part, "offset", s.seg, "why", why, "err", err)
		}
	}
	for {
		h, payload, err := s.next()
		if err != nil {
			stop("read", err)
			break
		}
		recLen := uint64(recordHeaderLen) + uint64(h.Len)
		if h.Index < applied || h.Type != recIndex && h.Index == applied {
			stop("stale record", fmt.Errorf("record of raft entry %d after entry %d was applied", h.Index, applied))
			break
		}
		if h.Type == recIndex {
			var rr redoRecord
			var nm meta
			if err := json.Unmarshal(payload, &rr); err != nil {
				stop("decode redo record", err)
				break
			}
			if err := json.Unmarshal(rr.Meta, &nm); err != nil {
				stop("decode redo meta", err)
				break
			}
			if nm.Applied != h.Index || nm.File != s.file || nm.PartSeg != s.seg || nm.PartServed != s.served || !slices.Equal(nm.PartStarts, s.starts) {
				stop("redo record does not match its place", fmt.Errorf("record says file %d offset %d, parts from %v; found at file %d offset %d, parts from %v",
					nm.File, nm.PartSeg, nm.PartStarts, s.file, s.seg, s.starts))
				break
			}
			var mismatch error
			for _, v := range rr.Files {
				var fi fileInfo
				if err := json.Unmarshal(v, &fi); err != nil {
					return false, fmt.Errorf("group %d: redo: decode file info: %w", g.id, err)
				}
				// A part of a closed file can lose its tail at a record boundary
				// (a recIndex record, say) while the next part survives: the scan
				// then moves on early, and only the closed entry, in the next
				// file, tells (offsets there start over).
				for _, c := range s.closed {
					if c.no == fi.No && fi.Closed && (fi.SegSize != c.end || !slices.Equal(fi.PartStarts, c.starts)) {
						mismatch = fmt.Errorf("%s closed at segment offset %d with parts from %v; read to %d with parts from %v",
							FileName(fi.No), fi.SegSize, fi.PartStarts, c.end, c.starts)
					}
				}
				if err := open.Set(fileKey(g.id, fi.No), v, nil); err != nil {
					return false, fmt.Errorf("group %d: redo: %w", g.id, err)
				}
			}
			if mismatch != nil {
				stop("a closed file is not as the redo record says", mismatch)
				break
			}
			s.closed = s.closed[:0]
			if err := done.Apply(open, nil); err != nil {
				return false, fmt.Errorf("group %d: redo: %w", g.id, err)
			}
			open.Reset()
			s.seg += recLen
			lastEnd = s.seg // nm.PartSeg stays where the record begins, as commit stores it
			s.pending, s.cut = nil, binlog.Stream{}
			if nm.Pending != nil {
				p := *nm.Pending
				s.pending, s.cut.Left = &p, p.EventLeft
			}
			last, applied = &nm, nm.Applied
			updates++
			continue
		}
		if h.Type == recHeader && (s.seg != 0 || s.part != 0) {
			stop("header inside a file", fmt.Errorf("at offset %d", s.seg))
			break
		}
		if txn := h.Type == recPart || h.Type == recTxn; !txn || s.cut.Left == 0 {
			if err := open.Set(posKey(g.id, s.file, s.served), binary.AppendUvarint(nil, s.seg), nil); err != nil {
				return false, fmt.Errorf("group %d: redo: %w", g.id, err)
			}
		}
		if h.Type == recPart || h.Type == recTxn {
			// Applied pieces passed checkCuts: this cannot fail on an intact record.
			if err := s.cut.Feed(payload, func([]byte, bool, bool) error { return nil }); err != nil {
				stop("events of a piece do not follow on", err)
				break
			}
		}
		if h.Index != s.prevIdx && s.skipRaftKey {
			s.prevIdx, s.skipRaftKey = h.Index, false
		}
		if h.Index != s.prevIdx {
			s.prevIdx = h.Index
			loc := txnLoc{File: s.file, Start: s.served, SegStart: s.seg}
			if err := open.Set(raftKey(g.id, h.Index), loc.encode(), nil); err != nil {
				return false, fmt.Errorf("group %d: redo: %w", g.id, err)
			}
		}
		start, segStart := s.served, s.seg
		s.seg += recLen
		s.served += uint64(h.Len)
		switch h.Type {
		case recRotate:
			s.afterRotate = true
		case recPart, recTxn:
			if s.pending == nil {
				gtid, ok := TxnGTID(payload)
				if !ok {
					stop("transaction without its GTID event", fmt.Errorf("at offset %d", segStart))
					return g.finishRedo(s, done, last, lastEnd, updates, fresh)
				}
				s.pending = &pendingTxn{GTID: gtid, Start: start, SegStart: segStart}
			}
			if h.Type == recTxn {
				p := s.pending
				loc := txnLoc{File: s.file, Start: p.Start, End: s.served, SegStart: p.SegStart, SegEnd: s.seg}
				if err := open.Set(txnKey(g.id, p.GTID.Domain, p.GTID.Seq, p.GTID.Server), loc.encode(), nil); err != nil {
					return false, fmt.Errorf("group %d: redo: %w", g.id, err)
				}
				s.pending = nil
			}
		}
	}
	return g.finishRedo(s, done, last, lastEnd, updates, fresh)
}

// finishRedo commits what redo found, after fsyncing the segments it read: they may
// not have been fsynced before the crash, and the commit, though not synced itself,
// may become durable with another group's synced commit; the index must never claim
// segment bytes a power loss can take. (Open's syncRecent covers the parts redo did
// not need to read.)
//
// The meta it stores ends where last's recIndex record begins, as commit's does: the
// next Open then finds that record at the stored place (a meta stored past it would
// read as a lost record, see restoreRedo).
func (g *Group) finishRedo(s *redoScan, done *pebble.Batch, last *meta, lastEnd uint64, updates int, fresh bool) (bool, error) {
	if last == nil && fresh {
		return false, fmt.Errorf("group %d: %w in the segments from %s on: data was lost; rebuild this replica from a peer", g.id, errNoCompleteBatch, FileName(g.m.File))
	}
	if last == nil {
		return false, nil
	}
	if fresh {
		// File entries of files purged after they were written.
		if err := done.DeleteRange(fileKey(g.id, 0), fileKey(g.id, last.FirstFile), nil); err != nil {
			return false, fmt.Errorf("group %d: rebuild index: %w", g.id, err)
		}
	} else if last.Applied == g.m.Applied {
		// Only the recIndex record of the last indexed Update: keep it.
		g.m.PartSeg = lastEnd
		// A record Open wrote (restoreRedo) says so; the stored meta does only from
		// the next commit.
		g.m.FileRecords = g.m.FileRecords || last.FileRecords
		return true, nil
	}
	for _, path := range s.read {
		f, err := g.store.fs.Open(path)
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return false, fmt.Errorf("group %d: redo: fsync %s: %w", g.id, path, err)
		}
	}
	if err := g.store.syncDir(g.dir); err != nil {
		return false, fmt.Errorf("group %d: redo: fsync %s: %w", g.id, g.dir, err)
	}
	mv, err := json.Marshal(last)
	if err != nil {
		return false, fmt.Errorf("group %d: redo: encode meta: %w", g.id, err)
	}
	if err := done.Set(metaKey(g.id), mv, nil); err != nil {
		return false, fmt.Errorf("group %d: redo: %w", g.id, err)
	}
	if err := done.Commit(pebble.NoSync); err != nil {
		return false, fmt.Errorf("group %d: redo: commit index: %w", g.id, err)
	}
	g.log.Info("rolled the index forward from the segments", "from_applied", g.m.Applied, "to_applied", last.Applied, "updates", updates)
	g.m = *last
	g.m.PartSeg = lastEnd
	return true, nil
}

// next reads the record at the scan position, moving to the next part (or, after a
// Rotate, the next file) at the end of one.
func (s *redoScan) next() (recordHeader, []byte, error) {
	for {
		if s.r == nil {
			r, err := s.g.openPart(s.file, s.part)
			if errors.Is(err, os.ErrNotExist) {
				return recordHeader{}, nil, errScanEnd
			}
			if err != nil {
				return recordHeader{}, nil, err
			}
			s.r, s.size = r, -1
			if f, plain := r.(vfs.File); plain {
				s.read = append(s.read, s.g.partPath(s.file, s.part))
				if st, err := f.Stat(); err == nil {
					s.size = st.Size()
				}
			}
		}
		off := int64(s.seg - partStart(s.starts, s.part))
		var hdr [recordHeaderLen]byte
		n, err := s.r.ReadAt(hdr[:], off)
		if n == 0 && errors.Is(err, io.EOF) {
			s.close()
			if s.afterRotate {
				s.closed = append(s.closed, scannedFile{no: s.file, starts: s.starts, end: s.seg})
				s.file, s.part, s.starts, s.seg, s.served, s.afterRotate = s.file+1, 0, nil, 0, 4, false
			} else {
				s.part++
				s.starts = append(s.starts, s.seg)
			}
			continue
		}
		if n < recordHeaderLen {
			return recordHeader{}, nil, fmt.Errorf("torn record header: %w", err)
		}
		h, err := parseRecordHeader(hdr[:])
		if err != nil {
			return h, nil, err
		}
		if s.size >= 0 && off+recordHeaderLen+int64(h.Len) > s.size {
			return h, nil, fmt.Errorf("torn record: %d payload bytes claimed, the part ends first", h.Len)
		}
		payload := make([]byte, h.Len)
		if n, err := s.r.ReadAt(payload, off+recordHeaderLen); n < len(payload) {
			return h, nil, fmt.Errorf("torn record payload: %w", err)
		}
		if err := verifyRecord(hdr[:], h, payload); err != nil {
			return h, nil, err
		}
		return h, payload, nil
	}
}

func (s *redoScan) close() {
	if s.r != nil {
		s.r.Close()
		s.r = nil
	}
}
