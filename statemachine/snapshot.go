package statemachine

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v3/statemachine"
)

// Snapshot stream layout:
//
//	"FLSN" u32 version
//	u64 len + meta JSON
//	u64 count, then count x (u64 klen, key without group prefix, u64 vlen, value)   index entries
//	u64 count, then count x (u64 file no, u64 part, u64 size, bytes)                segment parts
//
// A snapshot taken between transactions holds complete records only, up to the last
// one. One taken while a transaction's pieces are open holds them too, with the meta
// that says so (Pending, PartSeg, PartServed): the next pieces are accepted by every
// replica alike, so a replica restored from it must hold what its peers hold. (Before
// release 0.30 the pieces were left out, and a replica that joined by snapshot in the
// middle of a large transaction rejected its next pieces while its peers accepted
// them, and fell behind for good.)
const snapMagic = "FLSN"
const snapVersion uint32 = 2

type snapCtx struct {
	m    meta
	snap *pebble.Snapshot
	segs []segExtent
}

type segExtent struct {
	No   uint64
	Part int
	Size uint64
}

// PrepareSnapshot captures a consistent view; it runs on the update goroutine, so the
// meta and the segment sizes it records agree with the index snapshot.
func (g *Group) PrepareSnapshot() (interface{}, error) {
	m := g.m
	m.State = g.m.State.Clone()
	// SaveSnapshot runs beside Update, which keeps changing the live maps.
	m.Executed = g.m.Executed.Clone()
	m.PartStarts = slices.Clone(g.m.PartStarts)
	end := m.PartSeg // open pieces, and the redo record after them, included
	if m.Pending == nil {
		// Between transactions: up to the last complete record. Parts that begin
		// at or after it hold nothing else.
		m.PartSeg, m.PartServed, end = m.SegSize, m.FileSize, m.SegSize
		m.PartStarts = nil
		for _, st := range g.m.PartStarts {
			if st < m.SegSize {
				m.PartStarts = append(m.PartStarts, st)
			}
		}
	} else {
		p := *g.m.Pending
		m.Pending = &p
	}
	ctx := &snapCtx{m: m, snap: g.store.db.NewSnapshot()}
	for no := g.firstFile(); no > 0 && no <= m.File; no++ {
		fi := fileInfo{SegSize: end, PartStarts: m.PartStarts}
		if no < m.File {
			var err error
			if fi, err = g.store.fileInfo(g.id, no); err != nil {
				ctx.snap.Close()
				return nil, err
			}
		}
		for k, size := range partSizes(fi) {
			ctx.segs = append(ctx.segs, segExtent{No: no, Part: k, Size: size})
		}
	}
	return ctx, nil
}

// errSnapshotStopped is dragonboat's own: it treats a snapshot ended by it as
// aborted (the node is stopping), where any other error stops the process.
var errSnapshotStopped = sm.ErrSnapshotStopped

func stopped(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// SaveSnapshot streams the files and index entries captured by PrepareSnapshot.
func (g *Group) SaveSnapshot(c interface{}, w io.Writer, done <-chan struct{}) error {
	ctx, ok := c.(*snapCtx)
	if !ok {
		return fmt.Errorf("group %d: unexpected snapshot context %T", g.id, c)
	}
	defer ctx.snap.Close()
	bw := bufio.NewWriterSize(w, 1<<20)
	u64 := func(v uint64) { _ = binary.Write(bw, binary.LittleEndian, v) }
	bw.WriteString(snapMagic)
	_ = binary.Write(bw, binary.LittleEndian, snapVersion)
	mv, err := json.Marshal(&ctx.m)
	if err != nil {
		return fmt.Errorf("group %d: encode snapshot meta: %w", g.id, err)
	}
	u64(uint64(len(mv)))
	bw.Write(mv)

	prefix := groupPrefix(g.id)
	it, err := ctx.snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: groupEnd(g.id)})
	if err != nil {
		return fmt.Errorf("group %d: snapshot index: %w", g.id, err)
	}
	type kv struct{ k, v []byte }
	var kvs []kv
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefix):]
		if len(k) == 1 && k[0] == 'm' {
			continue // the meta is written above, as PrepareSnapshot captured it
		}
		kvs = append(kvs, kv{append([]byte(nil), k...), append([]byte(nil), it.Value()...)})
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("group %d: snapshot index: %w", g.id, err)
	}
	u64(uint64(len(kvs)))
	for _, e := range kvs {
		u64(uint64(len(e.k)))
		bw.Write(e.k)
		u64(uint64(len(e.v)))
		bw.Write(e.v)
	}
	u64(uint64(len(ctx.segs)))
	for _, s := range ctx.segs {
		if stopped(done) {
			return errSnapshotStopped
		}
		u64(s.No)
		u64(uint64(s.Part))
		u64(s.Size)
		// A stream runs beside Update: a new syncer's ClaimEpoch may truncate the
		// open pieces (or remove the parts they began) while they are copied. The
		// copy then comes up short, and the stream is aborted (dragonboat sends it
		// again later) rather than handing the follower a snapshot it cannot open,
		// or stopping this node: any other error from a stream stops the process.
		f, err := g.openPart(s.No, s.Part)
		if err == nil {
			_, err = io.CopyN(bw, io.NewSectionReader(f, 0, int64(s.Size)), int64(s.Size))
			f.Close()
		}
		if err != nil {
			g.log.Warn("snapshot stream aborted; it is sent again later", "group", g.id, "file", s.No, "part", s.Part, "err", err)
			return sm.ErrSnapshotAborted
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("group %d: write snapshot: %w", g.id, err)
	}
	return nil
}

// RecoverFromSnapshot replaces the group's state with a snapshot: segments are written
// beside the current ones and swapped in with renames, then the index is replaced in
// one synced batch.
func (g *Group) RecoverFromSnapshot(r io.Reader, done <-chan struct{}) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var magic [4]byte
	var ver uint32
	if _, err := io.ReadFull(br, magic[:]); err != nil || string(magic[:]) != snapMagic {
		return fmt.Errorf("group %d: not a Flotilla snapshot", g.id)
	}
	if err := binary.Read(br, binary.LittleEndian, &ver); err != nil || ver != snapVersion {
		return fmt.Errorf("group %d: unsupported snapshot version %d", g.id, ver)
	}
	u64 := func() (uint64, error) {
		var v uint64
		err := binary.Read(br, binary.LittleEndian, &v)
		return v, err
	}
	readN := func(n uint64) ([]byte, error) {
		if n > maxRecordPayload {
			return nil, fmt.Errorf("snapshot field of %d bytes", n)
		}
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		return b, err
	}
	n, err := u64()
	if err != nil {
		return fmt.Errorf("group %d: read snapshot: %w", g.id, err)
	}
	mv, err := readN(n)
	if err != nil {
		return fmt.Errorf("group %d: read snapshot meta: %w", g.id, err)
	}
	var m meta
	if err := json.Unmarshal(mv, &m); err != nil {
		return fmt.Errorf("group %d: decode snapshot meta: %w", g.id, err)
	}
	b := g.store.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(groupPrefix(g.id), groupEnd(g.id), nil); err != nil {
		return fmt.Errorf("group %d: clear index: %w", g.id, err)
	}
	if n, err = u64(); err != nil {
		return fmt.Errorf("group %d: read snapshot: %w", g.id, err)
	}
	prefix := groupPrefix(g.id)
	for i := uint64(0); i < n; i++ {
		kl, err := u64()
		if err != nil {
			return fmt.Errorf("group %d: read snapshot index: %w", g.id, err)
		}
		k, err := readN(kl)
		if err != nil {
			return fmt.Errorf("group %d: read snapshot index: %w", g.id, err)
		}
		vl, err := u64()
		if err != nil {
			return fmt.Errorf("group %d: read snapshot index: %w", g.id, err)
		}
		v, err := readN(vl)
		if err != nil {
			return fmt.Errorf("group %d: read snapshot index: %w", g.id, err)
		}
		if err := b.Set(append(append([]byte(nil), prefix...), k...), v, nil); err != nil {
			return fmt.Errorf("group %d: restore index: %w", g.id, err)
		}
	}
	tmp := g.dir + ".recover"
	fs := g.store.fs
	if err := fs.RemoveAll(tmp); err != nil {
		return fmt.Errorf("group %d: clear %s: %w", g.id, tmp, err)
	}
	if err := fs.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("group %d: create %s: %w", g.id, tmp, err)
	}
	if n, err = u64(); err != nil {
		return fmt.Errorf("group %d: read snapshot: %w", g.id, err)
	}
	for i := uint64(0); i < n; i++ {
		if stopped(done) {
			return errSnapshotStopped
		}
		no, err1 := u64()
		part, err2 := u64()
		size, err3 := u64()
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("group %d: read snapshot segment header: %w", g.id, err)
		}
		if part > 1<<20 {
			return fmt.Errorf("group %d: snapshot names segment part %d", g.id, part)
		}
		f, err := fs.Create(fs.PathJoin(tmp, partName(no, int(part))), vfs.WriteCategoryUnspecified)
		if err != nil {
			return fmt.Errorf("group %d: restore segment: %w", g.id, err)
		}
		_, err = io.CopyN(&fileWriter{f: f}, br, int64(size))
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("group %d: restore segment %d: %w", g.id, no, err)
		}
	}
	// The restored files' directory entries are durable before they are installed.
	if err := g.store.syncDir(tmp); err != nil {
		return fmt.Errorf("group %d: sync restored segments: %w", g.id, err)
	}
	// Swap: close our files, move the new directory in, then commit the index. The
	// record cache knows the new files by a new generation (odd meanwhile: a cursor
	// opening a part now may get either file).
	g.closeFiles()
	g.gen.Store(g.store.newGen(true))
	defer func() { g.gen.Store(g.store.newGen(false)) }()
	old := g.dir + ".old"
	_ = fs.RemoveAll(old)
	if err := fs.Rename(g.dir, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("group %d: move old segments aside: %w", g.id, err)
	}
	if err := fs.Rename(tmp, g.dir); err != nil {
		return fmt.Errorf("group %d: install snapshot segments: %w", g.id, err)
	}
	// The renames are durable before the index that describes the new segments is
	// committed: after a power loss the index never names segments still in tmp.
	if err := g.store.syncDir(fs.PathDir(g.dir)); err != nil {
		return fmt.Errorf("group %d: sync installed snapshot: %w", g.id, err)
	}
	// Position keys past what the snapshot's meta covers (the open pieces a snapshot
	// of an older release left out): the pieces that come again may not begin at the
	// same places (nor all get keys), so none may be left.
	if err := b.DeleteRange(posKey(g.id, m.File, max(m.FileSize, m.PartServed)), posKey(g.id, m.File+1, 0), nil); err != nil {
		return fmt.Errorf("group %d: drop positions of open pieces: %w", g.id, err)
	}
	// The snapshot's current file may end before its last Update's redo record, the
	// only carrier of the entries that Update changed: Open writes one with every
	// file's entry.
	m.FileRecords = false
	mv, _ = json.Marshal(&m)
	if err := b.Set(metaKey(g.id), mv, nil); err != nil {
		return fmt.Errorf("group %d: restore meta: %w", g.id, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("group %d: commit restored index: %w", g.id, err)
	}
	_ = fs.RemoveAll(old)
	clear(g.startStates)
	clear(g.startSets)
	// Counted before Open publishes the installed state: whoever sees that state
	// (under g.mu) sees the install counted too. A failed Open stops the node.
	g.mu.Lock()
	g.recovered++
	g.mu.Unlock()
	applied, err := g.Open(done)
	if err != nil {
		return err
	}
	if applied != m.Applied {
		// Never apply on from another state than the snapshot's: the replica would
		// reject what its peers accept and silently fall behind for good. The error
		// stops the node (dragonboat panics on a failed recovery), and it fails the
		// same way at every start: fail-stop, with the group named, rather than a
		// diverged replica that serves stale data.
		return fmt.Errorf("group %d: the installed snapshot opened at entry %d, not its own %d: rebuild this replica from a peer", g.id, applied, m.Applied)
	}
	g.log.Info("installed snapshot", "applied", m.Applied, "files", n)
	return nil
}

// closeFiles closes every open segment handle.
func (g *Group) closeFiles() {
	for no, f := range g.dirty {
		if f != g.seg {
			f.Close()
		}
		delete(g.dirty, no)
	}
	if g.seg != nil {
		g.seg.Close()
		g.seg = nil
	}
}
