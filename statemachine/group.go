package statemachine

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v3/statemachine"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Result values returned by Update for each entry.
const (
	// ResultOK means the command was applied. For ClaimEpoch, Data holds the new
	// epoch (8 bytes, big endian).
	ResultOK uint64 = 1
	// ResultRejected means the command did not follow the group's tail or carried a
	// stale epoch; Data holds the reason. The proposer must re-read the state.
	ResultRejected uint64 = 2
)

// meta is the group's durable state, written with every applied batch.
//
// Invariants: Ordinal counts complete transactions; SegSize/FileSize never end inside
// a transaction and are what readers may see; PartSeg/PartServed are >= them and also
// cover the pieces of a transaction still being received (Pending).
type meta struct {
	Applied uint64 `json:"applied"`
	Epoch   uint64 `json:"epoch"`
	// Seq is how many sequenced Appends of the current epoch were applied: the Seq
	// the next one must carry.
	Seq          uint64          `json:"seq,omitempty"`
	Ordinal      uint64          `json:"ordinal"`
	FirstFile    uint64          `json:"first_file"`
	File         uint64          `json:"file"`
	FileSize     uint64          `json:"file_size"`
	SegSize      uint64          `json:"seg_size"`
	PartServed   uint64          `json:"part_served"`
	PartSeg      uint64          `json:"part_seg"`
	Pending      *pendingTxn     `json:"pending,omitempty"`
	Checksummed  bool            `json:"checksummed"`
	ServerID     uint32          `json:"server_id"`
	UpstreamFile string          `json:"upstream_file"`
	State        binlog.Position `json:"state"`
	Bytes        uint64          `json:"bytes"`
	LastTS       uint32          `json:"last_ts,omitempty"`
	// PartStarts are the segment offsets where parts 1, 2, ... of the current file's
	// segment begin (part 0 begins at 0): segments roll at the store's segment size.
	PartStarts []uint64 `json:"part_starts,omitempty"`
	// RedoFrom is the first file whose segments carry recIndex records (files an
	// older Flotilla wrote do not); 0 if none does yet.
	RedoFrom uint64 `json:"redo_from,omitempty"`
	// MySQL marks a MySQL-flavor group. Its State files each source's last gno
	// under the source's slot (binlog.MySQLGTID.Indexed); Executed is the whole GTID
	// set it holds (base and received, gaps included): what it serves replicas by.
	MySQL    bool            `json:"mysql,omitempty"`
	Executed binlog.MySQLSet `json:"executed,omitempty"`
	// SyncedFile and SyncedSeg are a place (file, segment offset) up to which every
	// segment byte was fsynced when this meta was written: Open checks the records
	// after it against their CRCs before it trusts the index (see indexAhead).
	// SyncedFile 0 means unknown (an older Flotilla): Open checks every recent part.
	SyncedFile uint64 `json:"synced_file,omitempty"`
	SyncedSeg  uint64 `json:"synced_seg,omitempty"`
	// FileRecords says the segments carry, in their recIndex records, the entry of
	// every file the index names, as a rebuild from them needs. A group started by
	// 0.50 or later has it from its first file; Open writes a record with every
	// entry where it is unset: a store of an older release (whose new epochs could
	// cut such records away) and a snapshot just installed (one taken between
	// transactions ends before its last Update's record). See restoreRedo.
	FileRecords bool `json:"file_records,omitempty"`
}

// pendingTxn is the start of a transaction whose last piece has not arrived.
type pendingTxn struct {
	GTID     binlog.GTID `json:"gtid"`
	Start    uint64      `json:"start"`
	SegStart uint64      `json:"seg_start"`
	// EventLeft is how many bytes of an event cut across pieces are still to come,
	// and EventCRC the running checksum of its placed bytes (see binlog.Placer).
	EventLeft uint64 `json:"event_left,omitempty"`
	EventCRC  uint32 `json:"event_crc,omitempty"`
	// MySQLGTID is the transaction's MySQL GTID (MySQL-flavor groups).
	MySQLGTID string `json:"mysql_gtid,omitempty"`
}

// fileInfo describes one served file.
type fileInfo struct {
	No           uint64          `json:"no"`
	UpstreamFile string          `json:"upstream_file"`
	StartState   binlog.Position `json:"start_state"`
	// Size is the served size once the file is closed (its Rotate included).
	Size    uint64 `json:"size"`
	SegSize uint64 `json:"seg_size"`
	Closed  bool   `json:"closed"`
	// LastTS is the master's timestamp of the file's last transaction.
	LastTS uint32 `json:"last_ts,omitempty"`
	// ClosedAt is when the file was closed (Unix seconds; 0 in files an older
	// Flotilla closed), by the clock of the replica that applied the closing, or of
	// the peer whose snapshot it took. Retention by age counts from the later of it
	// and LastTS, as MySQL counts from a binlog's modification time: a backlog of old
	// transactions, ingested today, is kept for the whole retention period, not purged
	// at once under the replicas catching up on it. Unlike the rest of a file's entry
	// it is not the same on every replica (nothing compares it): only the group's
	// leader judges by it, so replicas' clocks must agree (NTP) as for signed calls.
	ClosedAt int64 `json:"closed_at,omitempty"`
	// PartStarts: see meta.PartStarts.
	PartStarts []uint64 `json:"part_starts,omitempty"`
	// StartSet is the MySQL GTID set executed before the file (MySQL-flavor
	// groups): its PREVIOUS_GTIDS event.
	StartSet binlog.MySQLSet `json:"start_set,omitempty"`
}

// Tail is what readers may see of a group: everything before (File, FileSize) is a
// committed, complete part of the served binlog.
type Tail struct {
	// FirstFile is the oldest served file still held (purge moves it).
	FirstFile uint64
	File      uint64
	FileSize  uint64
	SegSize   uint64
	State     binlog.Position
	Ordinal   uint64
	Epoch     uint64
	Upstream  string
	// ServerID is the server_id of the master whose Format_description opened the
	// current file: a syncer connecting to another master (a switch) starts a new one.
	ServerID uint32
	Bytes    uint64
	// Applied is the last raft index applied.
	Applied uint64
	// PartStarts of the current file (see meta.PartStarts).
	PartStarts []uint64
	// MySQL and Executed: see meta.
	MySQL    bool
	Executed binlog.MySQLSet
}

// GTIDs is the group's executed GTIDs as its flavor prints them: MySQL's
// gtid_executed, or MariaDB's gtid_binlog_pos.
func (t Tail) GTIDs() string {
	if t.MySQL {
		return t.Executed.String()
	}
	return t.State.String()
}

// Group is the on-disk state machine of one upstream group on one node: served binlog
// files as segment files, indexed in the node's shared pebble instance.
type Group struct {
	store *Store
	id    uint64
	node  uint64
	dir   string
	log   *slog.Logger

	// Touched only by dragonboat's update goroutine (Open, Update, Sync, Close).
	m           meta
	seg         *segFile            // the current file's last part, open for appending
	dirty       map[string]*segFile // parts written since the last Sync, by path
	placed      placedRecord        // a large record being written (segplace.go)
	startStates map[uint64]binlog.Position
	startSets   map[uint64]binlog.MySQLSet

	mu      sync.Mutex // guards tail, changed, closed for readers
	tail    Tail
	changed chan struct{}
	closed  bool
	reading map[*Cursor]uint64 // file each open cursor is in; purge holds back for them
	cursors atomic.Int32       // len(reading), read without mu
	// gen names the group's files in the store's record cache: even and unique in
	// the store while the files stay, odd while a snapshot recovery replaces them
	// (see Store.newGen; a cursor that opened a part at an odd generation, or while
	// it changed, does not use the cache).
	gen atomic.Uint64
	// recovered counts snapshots installed, for status and tests.
	recovered int
	// compOrig plain bytes are stored compressed in compSize bytes.
	compOrig, compSize uint64
	// wbuf is the write buffer Update reuses, so appends do not reallocate it.
	wbuf []byte
	// newFiles is set when a segment file was created since the last Sync: the
	// directory entry must be made durable too.
	newFiles bool
	// toCompress are closed files to compress after the next segment fsync;
	// compressible those it made durable, queued once the index names them closed
	// (queueCompression).
	toCompress, compressible []uint64
	// unsyncedCloses counts the files closed since the last segment fsync (see
	// closeDue); at most maxUnsyncedCloses, so Open's check of what may be unsynced
	// spans a bounded number of files (recentParts).
	unsyncedCloses int
	// compressWaiting is len(toCompress) > 0 as of the last commit, for the shard,
	// which asks an idle group for the fsync compression waits for.
	compressWaiting atomic.Bool
	// swapMu serializes the compression worker's swap of a segment for its .zst with
	// the unlinking of purged segments.
	swapMu sync.Mutex
	// unlink are the segments of purged files, removed once the index without them
	// is durable (see unlinkPurged).
	unlink []purgedPart
}

var _ sm.IOnDiskStateMachine = (*Group)(nil)

// FileName is the served binlog file name for a file number. Replicas see these names
// in SHOW BINARY LOGS and use them as Flotilla coordinates.
func FileName(no uint64) string { return fmt.Sprintf("%s.%06d", BaseName, no) }

// BaseName is the base name of served binlog files.
const BaseName = "flotilla-bin"

// Open loads the group's state, truncates any torn or unapplied tail of the current
// segment and returns the last applied raft index. It may write one recIndex record
// at the segments' end (restoreRedo): a rebuild from them needs every file entry.
func (g *Group) Open(_ <-chan struct{}) (uint64, error) {
	// Compression bookkeeping is of the files this Open finds: it queues those
	// closed and still plain itself (scanCompressed).
	g.toCompress, g.compressible, g.unsyncedCloses = g.toCompress[:0], g.compressible[:0], 0
	g.compressWaiting.Store(false)
	if err := g.store.mkdirAll(g.dir); err != nil {
		return 0, fmt.Errorf("group %d: create %s: %w", g.id, g.dir, err)
	}
	if err := g.store.removeTruncLeftovers(g.dir); err != nil {
		return 0, fmt.Errorf("group %d: remove the copy of an interrupted truncation: %w", g.id, err)
	}
	v, closer, err := g.store.db.Get(metaKey(g.id))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		g.m = meta{State: binlog.Position{}}
	case err != nil:
		return 0, fmt.Errorf("group %d: read meta: %w", g.id, err)
	default:
		// Into a zero meta: decoding into g.m would keep the fields the stored meta
		// omits (empty PartStarts, say) from the state before a snapshot's install.
		var m meta
		err = json.Unmarshal(v, &m)
		closer.Close()
		if err != nil {
			return 0, fmt.Errorf("group %d: decode meta: %w", g.id, err)
		}
		g.m = m
	}
	if g.m.State == nil {
		g.m.State = binlog.Position{}
	}
	ended := true // a rebuild ends with the record of the Update it rebuilds to
	if g.indexAhead() {
		if err := g.rebuildIndex(); err != nil {
			return 0, err
		}
	} else if ended, err = g.redo(false); err != nil {
		return 0, err
	}
	// Segment files newer than the current one were created by an Update whose index
	// write never landed, and older ones than the first were being purged: neither is
	// part of the applied state.
	cur := len(g.m.PartStarts)
	for _, name := range g.store.list(g.dir) {
		no, part, ok := parseSegName(name)
		if ok && (no > g.m.File || no < g.m.FirstFile || no == g.m.File && part > cur) {
			if err := g.store.fs.Remove(g.store.fs.PathJoin(g.dir, name)); err != nil {
				return 0, fmt.Errorf("group %d: remove unapplied segment %s: %w", g.id, name, err)
			}
		}
	}
	if g.m.File > 0 {
		base := partStart(g.m.PartStarts, cur)
		path := g.partPath(g.m.File, cur)
		want := g.m.PartSeg - base
		f, err := g.store.openSeg(path, int64(want))
		if err != nil {
			return 0, fmt.Errorf("group %d: open current segment: %w", g.id, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, fmt.Errorf("group %d: stat segment: %w", g.id, err)
		}
		if uint64(st.Size()) < want {
			f.Close()
			return 0, fmt.Errorf("group %d: segment %s holds %d bytes but the index says %d were applied: data was lost; rebuild this replica from a peer",
				g.id, path, st.Size(), want)
		}
		if uint64(st.Size()) > want {
			g.log.Info("truncating unapplied segment tail", "group", g.id, "file", g.m.File, "part", cur, "from", st.Size(), "to", want)
			if err := g.store.truncate(f, int64(want)); err != nil {
				f.Close()
				return 0, fmt.Errorf("group %d: truncate torn tail: %w", g.id, err)
			}
		}
		g.seg = f
		if !ended || !g.m.FileRecords {
			if err := g.restoreRedo(); err != nil {
				g.closeFiles()
				return 0, err
			}
		}
	}
	if err := g.syncRecent(); err != nil {
		g.closeFiles()
		return 0, err
	}
	g.m.SyncedFile, g.m.SyncedSeg = g.m.File, g.m.PartSeg
	g.mu.Lock()
	g.scanCompressed()
	g.mu.Unlock()
	g.publish()
	return g.m.Applied, nil
}

// batch collects the writes of one Update call.
type batch struct {
	b       *pebble.Batch
	buf     []byte // records not yet written to g.seg
	indexed uint64 // last raft index whose first record has a raft-index key
	// files are the file entries written since the last commit: the redo record
	// carries them, as they cannot be derived from served records.
	files []json.RawMessage
	// durable asks for the current entry's changes to be committed with fsyncs before
	// the next entry is applied (see commit).
	durable bool
	// cmdBytes is the size of the Update's commands: what tells a bulk load's Update
	// from a trickle's (see closeDue).
	cmdBytes int
	// known is the entry being applied and its checksum, when the node's memo knows
	// it: its records' checksums are derived from it (segcrc.go).
	known knownCRC
}

// Update applies committed entries in order. Rejections are results, not errors: an
// error here would stop the replica, while a stale or out-of-order proposal is an
// expected event during leader changes.
func (g *Group) Update(entries []sm.Entry) ([]sm.Entry, error) {
	bt := &batch{b: g.store.db.NewBatch(), buf: g.wbuf[:0]}
	for i := range entries {
		bt.cmdBytes += len(entries[i].Cmd)
	}
	defer bt.b.Close()
	defer func() {
		if cap(bt.buf) <= 64<<20 {
			g.wbuf = bt.buf[:0]
		}
	}()
	for i := range entries {
		e := &entries[i]
		bt.known = know(g.store.crc, e.Cmd)
		res, err := g.apply(bt, e.Index, e.Cmd)
		if err != nil {
			return nil, fmt.Errorf("group %d: apply entry %d: %w", g.id, e.Index, err)
		}
		e.Result = res
		g.m.Applied = e.Index
		if bt.durable {
			if err := g.commit(bt); err != nil {
				return nil, err
			}
		}
	}
	if err := g.commit(bt); err != nil {
		return nil, err
	}
	g.publish()
	return entries, nil
}

// redoRecord is the payload of a recIndex record.
type redoRecord struct {
	Meta  json.RawMessage   `json:"meta"`
	Files []json.RawMessage `json:"files,omitempty"`
}

// encodeRedo returns m as the index stores it and the recIndex record carrying it
// (as of entry m.Applied) with the file entries files.
func (g *Group) encodeRedo(m *meta, files []json.RawMessage) (metaJSON, record []byte, err error) {
	mv, err := json.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("group %d: encode meta: %w", g.id, err)
	}
	rv, err := json.Marshal(redoRecord{Meta: mv, Files: files})
	if err != nil {
		return nil, nil, fmt.Errorf("group %d: encode redo record: %w", g.id, err)
	}
	return mv, appendRecord(nil, recIndex, m.Applied, rv), nil
}

// commit writes the batch's records and index changes.
//
// Invariant (what makes a segment fsync enough to make an Update durable): every
// index change is derivable from the served records in the segments and the recIndex
// record that ends them. Open rolls the index forward over recIndex records (redo),
// or rebuilds it from them if a power loss left it ahead of the segments. The index
// is also synced, after the segments, for the rare changes that rewrite or delete
// segments (ClaimEpoch dropping open pieces, purge), so that redo never has to cross
// them, and before the group has a segment to hold recIndex records. Purged segments
// are unlinked only after that synced index write: were the unlink durable first, a
// power cut could leave an index whose redo starts in a file that is gone, and Open
// would then drop every later segment as unapplied.
func (g *Group) commit(bt *batch) error {
	mv, rec, err := g.encodeRedo(&g.m, bt.files)
	if err != nil {
		return err
	}
	redo := g.seg != nil
	var recLen uint64
	if redo {
		bt.buf = append(bt.buf, rec...)
		recLen = uint64(len(rec))
	}
	if err := g.flushSegment(bt); err != nil {
		return err
	}
	if err := g.flushParts(); err != nil {
		return err
	}
	if err := bt.b.Set(metaKey(g.id), mv, nil); err != nil {
		return fmt.Errorf("group %d: index meta: %w", g.id, err)
	}
	opts := pebble.NoSync
	if !redo || bt.durable || g.closeDue(bt) {
		if err := g.syncSegments(); err != nil {
			return err
		}
		opts = pebble.Sync
	}
	if err := bt.b.Commit(opts); err != nil {
		return fmt.Errorf("group %d: commit index: %w", g.id, err)
	}
	g.queueCompression()
	// The stored meta ends before the recIndex record (it cannot count itself): an
	// Open without redo truncates that record, which loses nothing.
	g.m.PartSeg += recLen
	bt.b.Reset()
	bt.files, bt.durable = nil, false
	if len(g.unlink) > 0 && opts == pebble.Sync {
		// The index no longer names the purged segments, durably: they may go. A
		// failure loses nothing (Open removes segments below FirstFile): say so only.
		if err := g.unlinkPurged(); err != nil {
			g.log.Warn("purged segments stay on disk until the next start", "group", g.id, "err", err)
		}
	}
	g.compressWaiting.Store(len(g.toCompress) > 0)
	return nil
}

// Closed files wait for a segment fsync before they are compressed (see apply's
// newFile). A commit makes the files closed since the last one durable at once
// when its Update is small (a trickle of transactions: the fsync is cheap and
// compression follows promptly), but not in the middle of a bulk load: there the
// fsync stalls the apply loop for the writeback of everything in flight (the
// one-replica ingest's means rose 4-12% without it at 64 MiB files). A later small
// Update, a raft log snapshot (the shard takes one every 256 MiB applied, and one
// when the group goes idle with compression waiting: shard/logbound.go) or the
// maxUnsyncedCloses-th close makes them durable instead. TestPowerLoss's bulk
// lives cut the power in the middle of such loads.
const (
	// closeSyncBelow is the size of an Update's commands below which it is small.
	closeSyncBelow = 1 << 20
	// maxUnsyncedCloses bounds the files closed and not yet fsynced: Open checks
	// and fsyncs every file from the last place known synced (recentParts).
	maxUnsyncedCloses = 4
)

// closeDue reports whether this commit must fsync the segments for the files
// closed since the last fsync (see closeSyncBelow).
func (g *Group) closeDue(bt *batch) bool {
	return g.unsyncedCloses > 0 && (bt.cmdBytes < g.store.closeSyncBelow || g.unsyncedCloses >= maxUnsyncedCloses)
}

// CompressionWaiting reports whether closed files wait for the next segment fsync
// to be compressed: an idle group's shard then asks for a snapshot, which syncs.
func (g *Group) CompressionWaiting() bool { return g.compressWaiting.Load() }

// writebackChunk is how much of a large Update is written, and its writeback
// started, while the rest is still being prepared.
const writebackChunk = 256 << 10

// publish makes the applied state visible to readers and wakes them.
func (g *Group) publish() {
	g.mu.Lock()
	g.tail = Tail{PartStarts: append([]uint64(nil), g.m.PartStarts...), FirstFile: g.m.FirstFile, File: g.m.File, FileSize: g.m.FileSize, SegSize: g.m.SegSize, State: g.m.State.Clone(),
		Ordinal: g.m.Ordinal, Epoch: g.m.Epoch, Upstream: g.m.UpstreamFile, ServerID: g.m.ServerID, Bytes: g.m.Bytes, Applied: g.m.Applied, MySQL: g.m.MySQL, Executed: g.m.Executed.Clone()}
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

// Sync makes every applied record and index entry durable. Only segments are
// synced: the index is rolled forward from their recIndex records on Open (see
// commit), so one fsync per written segment file is all an Update costs.
func (g *Group) Sync() error {
	err := g.syncSegments()
	g.queueCompression()
	return err
}

// queueCompression hands the files whose closing is durable to the compression
// worker. It runs once the index holds their closed entries (compress reads the
// parts from them): after the commit that synced, or in Sync, between Updates.
func (g *Group) queueCompression() {
	for _, no := range g.compressible {
		if no >= g.m.FirstFile {
			g.compress(no)
		}
	}
	g.compressible = g.compressible[:0]
}

// syncSegments fsyncs the segment files written since the last call, and the
// directory when files were created.
func (g *Group) syncSegments() error {
	var segErr error
	for path, f := range g.dirty {
		var err error
		if !skipSegmentSync { // planted bug: tag chaosbug_nosync
			err = f.Sync()
		}
		if err != nil && segErr == nil {
			segErr = fmt.Errorf("group %d: fsync segment %s: %w", g.id, path, err)
		}
		if f != g.seg {
			f.Close()
		}
		delete(g.dirty, path)
	}
	if g.newFiles && segErr == nil {
		if err := g.store.syncDir(g.dir); err != nil {
			segErr = fmt.Errorf("group %d: fsync directory %s: %w", g.id, g.dir, err)
		} else {
			g.newFiles = false
		}
	}
	if segErr == nil {
		// Every byte up to the applied end is written (commit flushes before it
		// syncs; Sync runs between Updates) and now durable. The commit after this
		// one records it; the one in progress may still carry the older place.
		g.m.SyncedFile, g.m.SyncedSeg = g.m.File, g.m.PartSeg
		g.unsyncedCloses = 0
		g.compressible = append(g.compressible, g.toCompress...)
		g.toCompress = g.toCompress[:0]
		g.compressWaiting.Store(false)
	}
	return segErr
}

// Lookup answers StateQuery with a StateView; it is how a syncer learns where to
// resume after a (re)connect or a leader change.
func (g *Group) Lookup(q interface{}) (interface{}, error) {
	switch q.(type) {
	case StateQuery:
		g.mu.Lock()
		defer g.mu.Unlock()
		return StateView{Tail: g.tail, HasFile: g.tail.File > 0}, nil
	}
	return nil, fmt.Errorf("group %d: unknown query %T", g.id, q)
}

// StateQuery asks a group for its StateView.
type StateQuery struct{}

// StateView is the answer to StateQuery.
type StateView struct {
	Tail
	HasFile bool
}

// Close releases the group's files; the shared index stays open. It first fsyncs
// the files closed since the last fsync (a bulk load leaves up to maxUnsyncedCloses,
// see closeDue): a release before 0.49 starting on this data checks only the current
// file and the one before it for a tear. A failure is only logged: the next Open
// checks and fsyncs what it keeps.
func (g *Group) Close() error {
	if g.unsyncedCloses > 0 {
		if err := g.syncSegments(); err != nil {
			g.log.Warn("closing a group: fsync of its closed files failed; the next start checks them", "group", g.id, "err", err)
		}
	}
	g.closeFiles()
	g.mu.Lock()
	g.closed = true
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
	g.store.forget(g)
	return nil
}
