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

// recentPart is a segment part that may have been written since its last fsync, and
// the plain size the index says it has.
type recentPart struct {
	no    uint64
	k     int
	start uint64 // segment offset of its first byte
	size  uint64
}

// recentParts lists every part that may have been written since its last fsync:
// those of the current file and of every file back to the one of the last place
// known synced (meta's SyncedFile), or to the file before the current one when that
// place is unknown (an older Flotilla, which fsynced the segments at each file's
// close after the first). A bulk load closes files without an fsync until
// maxUnsyncedCloses are (closeDue: checked at each commit, so one Update closing
// more, with served files smaller than it, is fsynced at its end), and the stored
// synced place lags its own commit by one fsync: the list spans a few files,
// bounded by what an Update and those closes write. An error means the index names
// a file it cannot describe.
func (g *Group) recentParts() ([]recentPart, error) {
	if g.m.File == 0 {
		return nil, nil
	}
	var out []recentPart
	cur := len(g.m.PartStarts)
	for k := 0; k <= cur; k++ {
		end := g.m.PartSeg
		if k < cur {
			end = g.m.PartStarts[k]
		}
		start := partStart(g.m.PartStarts, k)
		out = append(out, recentPart{no: g.m.File, k: k, start: start, size: end - start})
	}
	from := g.m.File - 1
	if g.m.SyncedFile > 0 && g.m.SyncedFile < from {
		from = g.m.SyncedFile
	}
	for no := max(from, g.m.FirstFile, 1); no < g.m.File; no++ {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			return nil, err
		}
		for k, size := range partSizes(fi) {
			out = append(out, recentPart{no: no, k: k, start: partStart(fi.PartStarts, k), size: size})
		}
	}
	return out, nil
}

// indexAhead reports whether the index claims segment bytes that are not there, or
// not whole: a power loss wrote back the index's WAL (other groups' synced commits
// carry it) but not all the segment pages it describes. Pages are written back in
// any order, so a part can keep its full size with a hole of zeros inside: every
// record the index claims past the last place known fsynced (meta's Synced*) is read
// and its CRC checked. That costs, at each Open, one read of what was written since
// the place the stored meta records (it lags its own commit by one segment fsync);
// at the first Open after an upgrade from a release that recorded none, of the
// current and previous files whole.
func (g *Group) indexAhead() bool {
	parts, err := g.recentParts()
	if err != nil {
		return true
	}
	for _, p := range parts {
		path := g.partPath(p.no, p.k)
		st, err := g.store.fs.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			if _, zerr := g.store.fs.Stat(path + zstSuffix); zerr != nil { // compressed copies are fsynced before the swap
				return true
			}
			continue
		}
		if err != nil || uint64(st.Size()) < p.size {
			return true
		}
		from := uint64(0) // offset in the part from which nothing is known durable
		switch {
		case g.m.SyncedFile > p.no:
			continue
		case g.m.SyncedFile == p.no && g.m.SyncedSeg >= p.start+p.size:
			continue
		case g.m.SyncedFile == p.no && g.m.SyncedSeg > p.start:
			from = g.m.SyncedSeg - p.start
		}
		if err := g.checkRecords(path, from, p.size); err != nil {
			g.log.Warn("a segment part the index claims is torn", "part", path, "from", from, "to", p.size, "err", err)
			return true
		}
	}
	return false
}

// checkRecords reads the records of a plain part from offset from, a record boundary,
// to offset to, checking each against its CRC and that they end exactly at to.
func (g *Group) checkRecords(path string, from, to uint64) error {
	f, err := g.store.fs.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var hdr [recordHeaderLen]byte
	var payload []byte
	for off := from; off < to; {
		if to-off < recordHeaderLen {
			return fmt.Errorf("offset %d: %d bytes left, less than a record header", off, to-off)
		}
		if _, err := f.ReadAt(hdr[:], int64(off)); err != nil {
			return fmt.Errorf("offset %d: read record header: %w", off, err)
		}
		h, err := parseRecordHeader(hdr[:])
		if err != nil {
			return fmt.Errorf("offset %d: %w", off, err)
		}
		end := off + recordHeaderLen + uint64(h.Len)
		if end > to {
			return fmt.Errorf("offset %d: a record of %d bytes runs past the claimed end %d", off, h.Len, to)
		}
		if cap(payload) < int(h.Len) {
			payload = make([]byte, h.Len)
		}
		payload = payload[:h.Len]
		if _, err := f.ReadAt(payload, int64(off+recordHeaderLen)); err != nil {
			return fmt.Errorf("offset %d: read record payload: %w", off, err)
		}
		if err := verifyRecord(hdr[:], h, payload); err != nil {
			return fmt.Errorf("offset %d: %w", off, err)
		}
		off = end
	}
	return nil
}

// syncRecent fsyncs the recent parts and the group's directory. Open calls it: the
// state it reports to dragonboat must survive a power loss, yet after a process crash
// the segments it found may be in the page cache only, and nothing else would ever
// fsync a part closed before the crash.
func (g *Group) syncRecent() error {
	parts, err := g.recentParts()
	if err != nil {
		return fmt.Errorf("group %d: list recent segments: %w", g.id, err)
	}
	for _, p := range parts {
		path := g.partPath(p.no, p.k)
		f, err := g.store.fs.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // compressed: fsynced before the swap
		}
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return fmt.Errorf("group %d: fsync %s: %w", g.id, path, err)
		}
	}
	if err := g.store.syncDir(g.dir); err != nil {
		return fmt.Errorf("group %d: fsync %s: %w", g.id, g.dir, err)
	}
	return nil
}

// rebuildIndex replaces the group's index with one derived from all its segments,
// from the oldest file held. The last recIndex record found is at least the last
// Sync and the last fsynced index commit (both fsync the segments first), so the
// result is never older than anything dragonboat may have compacted.
func (g *Group) rebuildIndex() error {
	// Purges commit the index with fsyncs, so its first file is exact; older segment
	// files are leftovers of a purge that was interrupted.
	var first uint64
	for _, name := range g.store.list(g.dir) {
		if no, _, ok := parseSegName(name); ok && no >= g.m.FirstFile && (first == 0 || no < first) {
			first = no
		}
	}
	g.log.Warn("the index is ahead of the segments (a power loss before a Sync?): rebuilding it from the segments",
		"applied", g.m.Applied, "file", FileName(g.m.File), "oldest_segment", first)
	// A group whose files start at its very first (none purged) and whose first holds
	// no complete Update has never had its segments synced: a Sync (which dragonboat
	// makes before it compacts its log), a new epoch, a file closed by a small Update
	// or a purge would have made an Update durable. Raft still holds every entry
	// (it compacts its log only after a snapshot, which syncs): start over empty.
	fromStart := g.m.FirstFile <= 1 && g.m.RedoFrom == 1
	if fromStart && first != 1 {
		// No file 1, or not its part 0 (the scan then finds no complete Update),
		// means no fsync since it was created: one would have made its directory
		// entry and its bytes durable.
		return g.startOver()
	}
	if g.m.RedoFrom == 0 || first < g.m.RedoFrom {
		return fmt.Errorf("group %d: the index is ahead of the segments and files before %s were written without redo records (by an older Flotilla), so it cannot be rebuilt from them: rebuild this replica from a peer",
			g.id, FileName(g.m.RedoFrom))
	}
	if first == 0 {
		return fmt.Errorf("group %d: the index says %s was being written but no segment file is left in %s: data was lost; rebuild this replica from a peer",
			g.id, FileName(g.m.File), g.dir)
	}
	g.m = meta{File: first, FirstFile: first, PartServed: 4, State: binlog.Position{}, RedoFrom: g.m.RedoFrom}
	_, err := g.redo(true)
	if errors.Is(err, errNoCompleteBatch) && fromStart {
		return g.startOver()
	}
	if err == nil && g.m.FirstFile < first {
		// A purge's fsynced commit makes its own redo record durable: the oldest
		// file left is never older than the rebuilt index's first.
		return fmt.Errorf("group %d: rebuilt from the segments, the index begins at %s, but the oldest segment left is %s: data was lost; rebuild this replica from a peer",
			g.id, FileName(g.m.FirstFile), FileName(first))
	}
	return err
}

// restoreRedo writes again the recIndex record of the Update the index is the state
// after, when the segments lost it: a power cut kept the index's unsynced commit
// (another group's synced commit carried the WAL they share) and the records before
// that record, but not the record itself, and Open cut the segment to where the
// stored meta ends. The index needs nothing from it, but a later rebuild from the
// segments does: it is the only place that Update's file entries (a file opened or
// closed) are written in the segments, and without them the rebuilt index has no
// entry for the file, or an open one for a closed file, and serves nothing from it.
//
// The lost record's file entries are not known, only that they are among the files
// from the last place known synced (every Update's record before it is durable) to
// the current one: the record written again carries all of those, from the index,
// which is correct at this state whether that Update changed them or not. g.seg must
// be the current part, at g.m.PartSeg; Open fsyncs it after (syncRecent).
func (g *Group) restoreRedo() error {
	from := max(g.m.FirstFile, g.m.SyncedFile, 1)
	var files []json.RawMessage
	for no := from; no <= g.m.File; no++ {
		v, closer, err := g.store.db.Get(fileKey(g.id, no))
		if err != nil {
			return fmt.Errorf("group %d: restore the redo record of entry %d: read the entry of %s: %w", g.id, g.m.Applied, FileName(no), err)
		}
		files = append(files, append(json.RawMessage(nil), v...))
		closer.Close()
	}
	_, rec, err := g.encodeRedo(&g.m, files)
	if err != nil {
		return err
	}
	if _, err := g.seg.Write(rec); err != nil {
		return fmt.Errorf("group %d: restore the redo record of entry %d: %w", g.id, g.m.Applied, err)
	}
	if err := g.seg.Flush(); err != nil {
		return fmt.Errorf("group %d: restore the redo record of entry %d: %w", g.id, g.m.Applied, err)
	}
	g.m.PartSeg += uint64(len(rec))
	g.log.Info("the segments lost the redo record of the last applied entry (a power cut): wrote it again", "group", g.id, "applied", g.m.Applied, "files", len(files))
	return nil
}

// errNoCompleteBatch: a rebuild found no complete Update in the group's segments.
var errNoCompleteBatch = errors.New("no complete batch found")

// startOver empties the group (index and segments, durably) so that it opens at entry
// 0 and dragonboat applies its whole log again; see rebuildIndex for when that is
// right.
func (g *Group) startOver() error {
	g.log.Warn("no Update of this group reached its segments before the power loss: starting it over from the raft log", "group", g.id)
	b := g.store.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(groupPrefix(g.id), groupEnd(g.id), nil); err != nil {
		return fmt.Errorf("group %d: start over: %w", g.id, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("group %d: start over: %w", g.id, err)
	}
	g.m = meta{State: binlog.Position{}} // Open then removes every segment (all are past file 0)
	return nil
}

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
			nm.PartSeg = s.seg
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
					return g.finishRedo(s, done, last, updates, fresh)
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
	return g.finishRedo(s, done, last, updates, fresh)
}

// finishRedo commits what redo found, after fsyncing the segments it read: they may
// not have been fsynced before the crash, and the commit, though not synced itself,
// may become durable with another group's synced commit; the index must never claim
// segment bytes a power loss can take. (Open's syncRecent covers the parts redo did
// not need to read.)
func (g *Group) finishRedo(s *redoScan, done *pebble.Batch, last *meta, updates int, fresh bool) (bool, error) {
	if last == nil && fresh {
		return false, fmt.Errorf("group %d: %w in the segments from %s on: data was lost; rebuild this replica from a peer", g.id, errNoCompleteBatch, FileName(g.m.File))
	}
	if last == nil {
		return false, nil
	}
	if fresh {
		// File entries of files purged after they were written.
		if err := done.DeleteRange(fileKey(g.id, 0), fileKey(g.id, last.FirstFile), nil); err != nil {
			return true, fmt.Errorf("group %d: rebuild index: %w", g.id, err)
		}
	} else if last.Applied == g.m.Applied {
		// Only the recIndex record of the last indexed Update: keep it.
		g.m.PartSeg = last.PartSeg
		return true, nil
	}
	for _, path := range s.read {
		f, err := g.store.fs.Open(path)
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return true, fmt.Errorf("group %d: redo: fsync %s: %w", g.id, path, err)
		}
	}
	if err := g.store.syncDir(g.dir); err != nil {
		return true, fmt.Errorf("group %d: redo: fsync %s: %w", g.id, g.dir, err)
	}
	mv, err := json.Marshal(last)
	if err != nil {
		return true, fmt.Errorf("group %d: redo: encode meta: %w", g.id, err)
	}
	if err := done.Set(metaKey(g.id), mv, nil); err != nil {
		return true, fmt.Errorf("group %d: redo: %w", g.id, err)
	}
	if err := done.Commit(pebble.NoSync); err != nil {
		return true, fmt.Errorf("group %d: redo: commit index: %w", g.id, err)
	}
	g.log.Info("rolled the index forward from the segments", "from_applied", g.m.Applied, "to_applied", last.Applied, "updates", updates)
	g.m = *last
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
