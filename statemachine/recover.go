package statemachine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Recovery at Open, around redo (redo.go): what it checks before trusting the index
// (indexAhead: every record the index claims past the last place known fsynced),
// what it does when the index is ahead of the segments (rebuildIndex from the
// oldest file, or startOver when no Update ever reached them durably), what it
// writes back when the segments lost only the last Update's recIndex record
// (restoreRedo), and the fsyncs that make what it found durable (syncRecent).
//
// Invariant: after Open the segments hold, for every Update the index reflects, the
// recIndex record that carries its file entries, so that a later rebuild from them
// gives back the same index (rebuild_test.go pins the ways this failed).

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

// restoreRedo writes a recIndex record for the state g.m, carrying file entries from
// the index, at the end of the segments (g.seg, at g.m.PartSeg; Open fsyncs it
// after, in syncRecent). Open calls it in two cases.
//
// The segments lost the record of the Update the index is the state after (ended
// false): a power cut kept the index's unsynced commit (another group's synced
// commit carried the WAL they share) and the records before that record, but not
// the record itself, and Open cut the segment where the stored meta ends. The index
// needs nothing from it, but a later rebuild from the segments does: it is the
// only place that Update's file entries (a file opened or closed) are written in
// the segments. Which entries it held is not known, only that they are among the
// files from the last place known synced (every record before it is durable) to
// the current one: the record written again carries all of those, correct at this
// state whether that Update changed them or not.
//
// The segments may lack older file entries (meta.FileRecords unset): the record then
// carries every file's entry, once.
func (g *Group) restoreRedo() error {
	from := max(g.m.FirstFile, 1)
	why := "wrote a redo record with every file's entry (the first start on a store of a release before 0.50, or a snapshot just installed)"
	if g.m.FileRecords {
		from = max(from, g.m.SyncedFile)
		why = "the segments lost the redo record of the last applied entry (a power cut): wrote it again"
	}
	files, err := g.fileEntries(from, true)
	if err != nil {
		return err
	}
	g.m.FileRecords = true // stored with the next commit; until then, each Open writes the record again
	_, rec, err := g.encodeRedo(&g.m, files)
	if err != nil {
		return err
	}
	if _, err := g.seg.Write(rec); err != nil {
		return fmt.Errorf("group %d: write a redo record for entry %d: %w", g.id, g.m.Applied, err)
	}
	if err := g.seg.Flush(); err != nil {
		return fmt.Errorf("group %d: write a redo record for entry %d: %w", g.id, g.m.Applied, err)
	}
	g.m.PartSeg += uint64(len(rec))
	g.log.Info(why, "group", g.id, "applied", g.m.Applied, "files", len(files))
	return nil
}

// fileEntries returns the index's file entries from file from to the current one.
// With all set, each must be there: a missing one means the index was rebuilt from
// segments that had lost it (an older release's, see FileRecords). Without, missing
// ones are left out (a caller holding newer entries adds them).
func (g *Group) fileEntries(from uint64, all bool) ([]json.RawMessage, error) {
	var files []json.RawMessage
	for no := from; no <= g.m.File; no++ {
		v, closer, err := g.store.db.Get(fileKey(g.id, no))
		if errors.Is(err, pebble.ErrNotFound) && !all {
			continue
		}
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, fmt.Errorf("group %d: the index has no entry for %s, which its segments should describe: data was lost; rebuild this replica from a peer", g.id, FileName(no))
		}
		if err != nil {
			return nil, fmt.Errorf("group %d: read the entry of %s: %w", g.id, FileName(no), err)
		}
		files = append(files, append(json.RawMessage(nil), v...))
		closer.Close()
	}
	return files, nil
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
