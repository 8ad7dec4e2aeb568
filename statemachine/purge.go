package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// purge deletes the served files before file before, their index entries and their
// segments. It is a raft command, so every replica purges exactly the same files.
// The current file is never purged. Readers that still have a purged segment open
// keep reading it (the file is unlinked, not truncated).
func (g *Group) purge(bt *batch, before uint64) (sm.Result, error) {
	if before > g.m.File {
		return rejected("cannot purge up to file %d: the current file is %d", before, g.m.File), nil
	}
	if before <= g.m.FirstFile {
		return sm.Result{Value: ResultOK}, nil // already purged
	}
	keep, err := g.store.fileInfo(g.id, before)
	if err != nil {
		return sm.Result{}, err
	}
	// GTIDs of one domain grow through the files, so the purged ones are exactly those
	// up to the kept file's start state in each domain.
	for _, d := range keep.StartState.Domains() {
		last := keep.StartState[d]
		if err := bt.b.DeleteRange(txnKey(g.id, d, 0, 0), txnKey(g.id, d, last.Seq+1, 0), nil); err != nil {
			return sm.Result{}, fmt.Errorf("group %d: unindex purged GTIDs: %w", g.id, err)
		}
	}
	// Raft entries up to the kept file's first record go with the purged files (its
	// records may still sit in this batch's buffer: write them first).
	if err := g.flushSegment(bt); err != nil {
		return sm.Result{}, err
	}
	if first, err := g.firstIndexOf(before); err == nil {
		if err := bt.b.DeleteRange(raftKey(g.id, 0), raftKey(g.id, first), nil); err != nil {
			return sm.Result{}, fmt.Errorf("group %d: unindex purged raft entries: %w", g.id, err)
		}
		// The entry that started the kept file began with the Rotate closing the file
		// before it; if so its first record is purged too.
		if s, ok, err := g.PositionOfIndex(first); err == nil && ok && s.File < before {
			if err := bt.b.Delete(raftKey(g.id, first), nil); err != nil {
				return sm.Result{}, fmt.Errorf("group %d: unindex purged raft entry: %w", g.id, err)
			}
		}
	}
	if err := bt.b.DeleteRange(posKey(g.id, g.m.FirstFile, 0), posKey(g.id, before, 0), nil); err != nil {
		return sm.Result{}, fmt.Errorf("group %d: unindex purged positions: %w", g.id, err)
	}
	if err := bt.b.DeleteRange(fileKey(g.id, g.m.FirstFile), fileKey(g.id, before), nil); err != nil {
		return sm.Result{}, fmt.Errorf("group %d: unindex purged files: %w", g.id, err)
	}
	for no := g.m.FirstFile; no < before; no++ {
		delete(g.startStates, no)
		delete(g.startSets, no)
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			return sm.Result{}, err
		}
		// The segments go only once the index no longer needs them (unlinkPurged,
		// after commit's synced index write): a power cut must never find them gone
		// while the durable index still points redo at them.
		for k, size := range partSizes(fi) {
			path := g.partPath(no, k)
			if f, ok := g.dirty[path]; ok {
				f.Close()
				delete(g.dirty, path)
			}
			g.unlink = append(g.unlink, purgedPart{path: path, size: size})
		}
	}
	g.log.Info("purged served files", "from", FileName(g.m.FirstFile), "before", FileName(before))
	g.m.FirstFile = before
	return sm.Result{Value: ResultOK}, nil
}

// purgedPart is a segment part purge removed from the index, to be unlinked.
type purgedPart struct {
	path string
	size uint64 // its plain size, for the compression figures
}

// unlinkPurged removes the segments of purged files. commit calls it once the index
// that no longer names them is durable. Should the process die first, Open removes
// them (segments below FirstFile never come back into use).
func (g *Group) unlinkPurged() error {
	g.swapMu.Lock()
	defer g.swapMu.Unlock()
	for len(g.unlink) > 0 {
		p := g.unlink[0]
		if st, err := g.store.fs.Stat(p.path + zstSuffix); err == nil {
			g.mu.Lock()
			g.compOrig -= min(g.compOrig, p.size)
			g.compSize -= min(g.compSize, uint64(st.Size()))
			g.mu.Unlock()
		}
		for _, f := range []string{p.path, p.path + zstSuffix, p.path + plainSuffix} {
			if err := g.store.fs.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("group %d: remove purged segment %s: %w", g.id, f, err)
			}
		}
		g.unlink = g.unlink[1:]
		g.newFiles = true // the next Sync makes the removals durable
	}
	return nil
}

// firstIndexOf reads the raft index of a file's first record from its header.
func (g *Group) firstIndexOf(no uint64) (uint64, error) {
	r, err := g.openPart(no, 0)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var hdr [recordHeaderLen]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return 0, fmt.Errorf("group %d: read first record of %s: %w", g.id, FileName(no), err)
	}
	h, err := parseRecordHeader(hdr[:])
	if err != nil {
		return 0, err
	}
	return h.Index, nil
}

// PositionOfIndex returns where the first record written by raft entry index starts:
// the link from the raft log to the served binlog.
func (g *Group) PositionOfIndex(index uint64) (Start, bool, error) {
	loc, found, err := g.readLoc(raftKey(g.id, index), fmt.Sprintf("raft entry %d", index))
	if err != nil || !found {
		return Start{}, false, err
	}
	return Start{File: loc.File, Served: loc.Start, Seg: loc.SegStart}, true, nil
}

// Retention is how long and how much binlog a group keeps.
type Retention struct {
	// MaxAge purges files closed longer ago, and whose last transaction is older,
	// than this (see fileInfo.ClosedAt); 0 keeps them.
	MaxAge time.Duration
	// MaxBytes purges the oldest files while the group holds more; 0 means no limit.
	MaxBytes uint64
}

// PurgeTarget returns the first file to keep under the retention policy (and the
// reason), never going past a file a local reader still needs. A result equal to the
// tail's FirstFile means nothing to purge.
func (g *Group) PurgeTarget(r Retention, now time.Time) (uint64, string, error) {
	t, _ := g.Tail()
	if t.File == 0 {
		return 0, "", nil
	}
	var files []fileInfo
	var total uint64
	for no := t.FirstFile; no < t.File; no++ {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			return 0, "", err
		}
		files = append(files, fi)
		total += fi.Size
	}
	total += t.FileSize
	keep, reason := t.FirstFile, ""
	for _, fi := range files {
		// A file closed before any transaction (an idle master's rotation) has no
		// LastTS: its closing dates it.
		ts := max(int64(fi.LastTS), fi.ClosedAt)
		old := r.MaxAge > 0 && ts > 0 && now.Sub(time.Unix(ts, 0)) > r.MaxAge
		big := r.MaxBytes > 0 && total > r.MaxBytes
		if !old && !big {
			break
		}
		if old {
			reason = fmt.Sprintf("older than %v", r.MaxAge)
		} else {
			reason = fmt.Sprintf("group holds more than %d bytes", r.MaxBytes)
		}
		total -= fi.Size
		keep = fi.No + 1
	}
	if min, ok := g.OldestReading(); ok && min < keep {
		keep, reason = min, reason+fmt.Sprintf("; held back at %s by a connected replica", FileName(min))
	}
	return keep, reason, nil
}

// OldestReading returns the oldest file an open cursor (a connected replica) is in.
func (g *Group) OldestReading() (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var min uint64
	for _, f := range g.reading {
		if min == 0 || f < min {
			min = f
		}
	}
	return min, min != 0
}

func (g *Group) setReading(c *Cursor, file uint64) {
	g.mu.Lock()
	if file == 0 {
		delete(g.reading, c)
	} else {
		g.reading[c] = file
	}
	g.cursors.Store(int32(len(g.reading)))
	g.mu.Unlock()
}

// othersBehind reports whether other open cursors than c read its file or the one
// before: they will want its records soon, so c reads its large ones for the record
// cache. Replicas catching up at once drift apart by more than a served file:
// counting only those in the same file, a fan-out to 8 read up to a quarter of its
// large records once per replica (release 0.43). One further back would likely
// find them gone from the cache.
func (g *Group) othersBehind(c *Cursor) bool {
	if g.cursors.Load() < 2 {
		return false // a lone replica (one following the tail) takes no lock
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for o, f := range g.reading {
		if o != c && (f == c.file || f+1 == c.file) {
			return true
		}
	}
	return false
}

// OldestAvailable names the first transaction still held in each domain, for the
// error a replica gets when it asks for purged history.
func (g *Group) OldestAvailable() (binlog.Position, error) {
	t, _ := g.Tail()
	out := binlog.Position{}
	if t.File == 0 {
		return out, nil
	}
	fi, err := g.store.fileInfo(g.id, t.FirstFile)
	if err != nil {
		return nil, err
	}
	for d := range t.State {
		from := uint64(0)
		if s, ok := fi.StartState[d]; ok {
			from = s.Seq + 1
		}
		it, err := g.store.db.NewIter(&pebble.IterOptions{LowerBound: txnKey(g.id, d, from, 0), UpperBound: txnKey(g.id, d+1, 0, 0)})
		if err != nil {
			return nil, fmt.Errorf("group %d: read GTID index: %w", g.id, err)
		}
		if it.First() {
			k := it.Key()
			out[d] = binlog.GTID{Domain: d, Seq: binary.BigEndian.Uint64(k[len(k)-12:]), Server: binary.BigEndian.Uint32(k[len(k)-4:])}
		}
		it.Close()
	}
	return out, nil
}
