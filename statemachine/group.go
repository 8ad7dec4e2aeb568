package statemachine

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	sm "github.com/lni/dragonboat/v3/statemachine"

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
// Invariants: Ordinal counts complete transactions; SegSize/FileSize cover complete
// records only and are what readers may see; PartSeg/PartServed are >= them and also
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
	// LastTS is the master's timestamp of the file's last transaction: retention by
	// age uses it, so every replica judges a file's age alike.
	LastTS uint32 `json:"last_ts,omitempty"`
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
	startStates map[uint64]binlog.Position
	startSets   map[uint64]binlog.MySQLSet

	mu      sync.Mutex // guards tail, changed, closed for readers
	tail    Tail
	changed chan struct{}
	closed  bool
	reading map[*Cursor]uint64 // file each open cursor is in; purge holds back for them
	// recovered counts snapshots installed, for status and tests.
	recovered int
	// compOrig plain bytes are stored compressed in compSize bytes.
	compOrig, compSize uint64
	// wbuf is the write buffer Update reuses, so appends do not reallocate it.
	wbuf []byte
	// newFiles is set when a segment file was created since the last Sync: the
	// directory entry must be made durable too.
	newFiles bool
	// toCompress are closed files to compress after the next segment fsync.
	toCompress []uint64
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

// Open loads the group's state, truncates any torn or unapplied tail of the current
// segment and returns the last applied raft index.
func (g *Group) Open(_ <-chan struct{}) (uint64, error) {
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
	if g.indexAhead() {
		if err := g.rebuildIndex(); err != nil {
			return 0, err
		}
	} else if err := g.redo(false); err != nil {
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
	}
	if err := g.syncRecent(); err != nil {
		g.closeFiles()
		return 0, err
	}
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
}

// Update applies committed entries in order. Rejections are results, not errors: an
// error here would stop the replica, while a stale or out-of-order proposal is an
// expected event during leader changes.
func (g *Group) Update(entries []sm.Entry) ([]sm.Entry, error) {
	bt := &batch{b: g.store.db.NewBatch(), buf: g.wbuf[:0]}
	defer bt.b.Close()
	defer func() {
		if cap(bt.buf) <= 64<<20 {
			g.wbuf = bt.buf[:0]
		}
	}()
	for i := range entries {
		e := &entries[i]
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
	if err := bt.b.Set(metaKey(g.id), mv, nil); err != nil {
		return fmt.Errorf("group %d: index meta: %w", g.id, err)
	}
	opts := pebble.NoSync
	// A closed file waiting for compression: make its closing durable now (once per
	// file), so compression does not wait for dragonboat's next Sync.
	if !redo || bt.durable || len(g.toCompress) > 0 {
		if err := g.syncSegments(); err != nil {
			return err
		}
		opts = pebble.Sync
	}
	if err := bt.b.Commit(opts); err != nil {
		return fmt.Errorf("group %d: commit index: %w", g.id, err)
	}
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
	return nil
}

func rejected(format string, args ...any) sm.Result {
	return sm.Result{Value: ResultRejected, Data: []byte(fmt.Sprintf(format, args...))}
}

func (g *Group) apply(bt *batch, index uint64, cmd []byte) (sm.Result, error) {
	kind, a, err := DecodeCommand(cmd)
	if err != nil {
		// A malformed entry can only come from a buggy proposer; reject it on every
		// replica alike rather than stop the group.
		g.log.Error("rejecting malformed command", "group", g.id, "index", index, "err", err)
		return rejected("malformed command: %v", err), nil
	}
	if kind == KindPurge {
		before, _ := DecodePurge(cmd)
		// Purge reads file entries from the index: earlier entries of this batch
		// (a new file) must be committed first.
		if err := g.commit(bt); err != nil {
			return sm.Result{}, err
		}
		bt.durable = true // segments are deleted: redo must never cross a purge
		return g.purge(bt, before)
	}
	if kind == KindClaimEpoch {
		if err := g.dropPending(bt, index); err != nil {
			return sm.Result{}, err
		}
		// Redo must not cross the truncation of dropped pieces, and the epoch is
		// not in any record.
		bt.durable = true
		g.m.Epoch++
		g.m.Seq = 0
		return sm.Result{Value: ResultOK, Data: binary.BigEndian.AppendUint64(nil, g.m.Epoch)}, nil
	}
	if a.Epoch != g.m.Epoch && !skipFence {
		return rejected("stale epoch %d (current %d)", a.Epoch, g.m.Epoch), nil
	}
	if a.Sequenced && a.Seq != g.m.Seq && !skipFence {
		return rejected("proposal %d of epoch %d, but the group applied %d of it: one before it was dropped or rejected", a.Seq, a.Epoch, g.m.Seq), nil
	}
	if a.PrevOrdinal != g.m.Ordinal && !skipFence {
		return rejected("proposal follows transaction %d but the group holds %d", a.PrevOrdinal, g.m.Ordinal), nil
	}
	// Validate the whole command before changing anything, so a rejection leaves no trace.
	pending := g.m.Pending != nil
	hasFile := g.m.File > 0
	checksummed := g.m.Checksummed
	mysqlGroup := g.m.MySQL
	seen := map[binlog.MySQLGTID]bool{} // MySQL transactions earlier in this command
	var cut binlog.Stream               // an event cut across pieces, as place will see it
	if pending {
		cut.Left = g.m.Pending.EventLeft
	}
	for _, it := range a.Items {
		switch {
		case it.NewFile != nil:
			if pending {
				return rejected("new file while a transaction is incomplete"), nil
			}
			fde, err := binlog.ParseFDE(it.NewFile.FDE)
			if err != nil {
				return rejected("bad Format_description: %v", err), nil
			}
			if hasFile && it.NewFile.MySQL != mysqlGroup {
				return rejected("new file of another flavor than the group's"), nil
			}
			mysqlGroup = mysqlGroup || it.NewFile.MySQL
			hasFile, checksummed = true, fde.Checksummed()
		case it.Txn != nil:
			if !hasFile {
				return rejected("transaction before any file was started"), nil
			}
			if pending == it.Txn.First {
				// A first piece while one is open, or a continuation with none open
				// (e.g. after a snapshot dropped the open pieces): start over.
				return rejected("piece of %v does not continue the open transaction", it.Txn.GTID), nil
			}
			// Redo reads a transaction's GTID from its first event.
			if it.Txn.First {
				if g, ok := TxnGTID(it.Txn.Events); !ok || g != it.Txn.GTID || mysqlGroup == (it.Txn.Events[4] == binlog.MariaGTIDEvent) {
					return rejected("transaction %v does not begin with its GTID event", it.Txn.GTID), nil
				}
				if mysqlGroup {
					mg, _ := TxnMySQLGTID(it.Txn.Events)
					if g.m.Executed.Contains(mg) || seen[mg] {
						return rejected("transaction %s is already held", mg), nil
					}
					seen[mg] = true
				}
			}
			if err := checkCuts(&cut, it.Txn, checksummed); err != nil {
				return rejected("piece of %v: %v", it.Txn.GTID, err), nil
			}
			pending = !it.Txn.Last
		}
	}
	for _, it := range a.Items {
		if it.NewFile != nil {
			if err := g.newFile(bt, index, it.NewFile); err != nil {
				return sm.Result{}, err
			}
			continue
		}
		if err := g.appendTxn(bt, index, it.Txn); err != nil {
			return sm.Result{}, err
		}
	}
	if a.Sequenced {
		g.m.Seq++
	}
	return sm.Result{Value: ResultOK}, nil
}

// checkCuts checks that place can place a transaction's piece: its events, and the
// parts of an event cut across pieces, follow on from the pieces before it (cut), and a
// transaction's last piece ends at an event boundary.
func checkCuts(cut *binlog.Stream, t *Txn, checksummed bool) error {
	err := cut.Feed(t.Events, func(part []byte, _, last bool) error {
		if last && checksummed && len(part) < binlog.ChecksumLen {
			return fmt.Errorf("an event's last part holds %d bytes, fewer than its checksum", len(part))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if t.Last && cut.Left > 0 {
		return fmt.Errorf("the transaction ends %d bytes before the end of its last event", cut.Left)
	}
	return nil
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
	before := len(bt.buf)
	var hdr [recordHeaderLen]byte
	bt.buf = append(bt.buf, hdr[:]...)
	bt.buf = append(bt.buf, payload...)
	if place {
		if err := g.place(bt.buf[before+recordHeaderLen:], g.m.PartServed); err != nil {
			bt.buf = bt.buf[:before]
			return err
		}
	}
	sealRecord(bt.buf[before:], typ, index)
	g.m.PartSeg += uint64(len(bt.buf) - before)
	g.m.PartServed += uint64(len(payload))
	if len(bt.buf) >= writebackChunk {
		if err := g.flushSegment(bt); err != nil {
			return err
		}
		startWriteback(g.seg.File)
	}
	return nil
}

// writebackChunk is how much of a large Update is written, and its writeback
// started, while the rest is still being prepared.
const writebackChunk = 256 << 10

// rollPart starts a new part of the current file's segment at a record boundary.
func (g *Group) rollPart(bt *batch) error {
	if err := g.flushSegment(bt); err != nil {
		return err
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

func (g *Group) newFile(bt *batch, index uint64, nf *NewFile) error {
	fde, _ := binlog.ParseFDE(nf.FDE) // validated in apply
	state := g.m.State
	if g.m.File == 0 {
		state = nf.BaseState.Clone()
		g.m.FirstFile = 1
		if nf.MySQL {
			g.m.MySQL, g.m.Executed = true, nf.BaseSet.Clone()
			state = binlog.Position{}
			for src, ivs := range nf.BaseSet {
				last := binlog.MySQLGTID{Source: src, GNO: ivs[len(ivs)-1].End - 1}.Indexed()
				state[last.Domain] = last
			}
		}
		g.m.State = state.Clone()
	} else {
		// Close the current file with a Rotate to the next one.
		rot := binlog.NewRotate(g.m.ServerID, 0, 0, 0, FileName(g.m.File+1), 4, g.m.Checksummed)
		binlog.SetLogPos(rot, uint32(g.m.PartServed+uint64(len(rot))), 0, g.m.Checksummed)
		if err := g.addRecord(bt, recRotate, index, rot); err != nil {
			return err
		}
		if err := g.flushSegment(bt); err != nil {
			return err
		}
		fi := fileInfo{No: g.m.File, UpstreamFile: g.m.UpstreamFile, StartState: g.fileStart(g.m.File),
			Size: g.m.PartServed, SegSize: g.m.PartSeg, Closed: true, LastTS: g.m.LastTS, PartStarts: g.m.PartStarts}
		if g.m.MySQL {
			set, err := g.fileStartSet(g.m.File)
			if err != nil {
				return err
			}
			fi.StartSet = set
		}
		if err := g.putFile(bt, fi); err != nil {
			return err
		}
		g.dirty[g.seg.Name()] = g.seg
		g.seg = nil
		if prev := g.m.File - 1; prev >= g.m.FirstFile && prev > 0 {
			// Compressed only once the segments closing it are durable: redo may have
			// to read this file's plain form until then.
			g.toCompress = append(g.toCompress, prev)
		}
	}
	g.m.File++
	if g.m.RedoFrom == 0 {
		g.m.RedoFrom = g.m.File
	}
	g.m.FileSize, g.m.SegSize, g.m.PartServed, g.m.PartSeg = 4, 0, 4, 0
	g.m.PartStarts = nil
	g.m.Checksummed = fde.Checksummed()
	g.m.ServerID = nf.ServerID
	g.m.UpstreamFile = nf.UpstreamFile
	f, err := g.store.createSeg(g.segPath(g.m.File))
	if err != nil {
		return fmt.Errorf("group %d: create segment: %w", g.id, err)
	}
	g.seg = f
	g.newFiles = true
	g.startStates[g.m.File] = state.Clone()
	fi := fileInfo{No: g.m.File, UpstreamFile: nf.UpstreamFile, StartState: state}
	if g.m.MySQL {
		fi.StartSet = g.m.Executed.Clone()
		g.startSets[g.m.File] = fi.StartSet
	}
	if err := g.putFile(bt, fi); err != nil {
		return err
	}
	hdr := make([]byte, 0, len(nf.FDE)+64)
	fdeEv := append([]byte(nil), nf.FDE...)
	binlog.SetLogPos(fdeEv, uint32(4+len(fdeEv)), binlog.FlagBinlogInUse, fde.Checksummed())
	hdr = append(hdr, fdeEv...)
	gl := binlog.NewGTIDList(nf.ServerID, 0, 0, state, fde.Checksummed())
	if g.m.MySQL {
		// A MySQL file opens with PREVIOUS_GTIDS.
		gl, err = binlog.NewPreviousGTIDs(nf.ServerID, 0, 0, fi.StartSet, fde.Checksummed())
		if err != nil {
			return fmt.Errorf("group %d: PREVIOUS_GTIDS: %w", g.id, err)
		}
	}
	binlog.SetLogPos(gl, uint32(4+len(fdeEv)+len(gl)), 0, fde.Checksummed())
	hdr = append(hdr, gl...)
	if err := g.addRecord(bt, recHeader, index, hdr); err != nil {
		return err
	}
	g.m.SegSize, g.m.FileSize = g.m.PartSeg, g.m.PartServed
	return nil
}

func (g *Group) appendTxn(bt *batch, index uint64, t *Txn) error {
	if g.m.Pending == nil {
		g.m.Pending = &pendingTxn{GTID: t.GTID, Start: g.m.PartServed, SegStart: g.m.PartSeg}
		if g.m.MySQL {
			mg, _ := TxnMySQLGTID(t.Events) // checked in apply
			g.m.Pending.MySQLGTID = mg.String()
		}
	}
	typ := recPart
	if t.Last {
		typ = recTxn
	}
	if err := g.addRecordPlaced(bt, typ, index, t.Events, true); err != nil {
		return fmt.Errorf("group %d: place %v: %w", g.id, t.GTID, err)
	}
	g.m.Bytes += uint64(len(t.Events))
	if !t.Last {
		return nil
	}
	p := g.m.Pending
	loc := txnLoc{File: g.m.File, Start: p.Start, End: g.m.PartServed, SegStart: p.SegStart, SegEnd: g.m.PartSeg}
	if err := bt.b.Set(txnKey(g.id, t.GTID.Domain, t.GTID.Seq, t.GTID.Server), loc.encode(), nil); err != nil {
		return fmt.Errorf("group %d: index %v: %w", g.id, t.GTID, err)
	}
	if g.m.MySQL {
		if err := g.m.addMySQL(p.MySQLGTID); err != nil {
			return fmt.Errorf("group %d: %w", g.id, err)
		}
	}
	g.m.Pending = nil
	g.m.State[t.GTID.Domain] = t.GTID
	if len(t.Events) >= binlog.HeaderLen {
		g.m.LastTS = binary.LittleEndian.Uint32(t.Events)
	}
	g.m.Ordinal++
	g.m.SegSize, g.m.FileSize = g.m.PartSeg, g.m.PartServed
	return nil
}

// dropPending discards the pieces of an incomplete transaction (a new syncer epoch
// starts the transaction over from the master), as entry index.
//
// The cut must never leave the segments without a recIndex record describing the
// last complete transaction (the one after it may have been removed with the
// pieces), or a rebuild could go back before a Sync. So a recIndex record for the
// state after the drop, as of entry index-1, is written over the first dropped byte
// and fsynced before anything is removed: replaying entry index from that state
// gives the same result.
func (g *Group) dropPending(bt *batch, index uint64) error {
	if g.m.Pending == nil {
		return nil
	}
	if err := g.flushSegment(bt); err != nil {
		return err
	}
	cut := g.m.SegSize
	keepParts := 0 // parts beginning before the cut; later ones hold only pieces
	for _, st := range g.m.PartStarts {
		if st < cut {
			keepParts++
		}
	}
	after := g.m
	after.Applied, after.Pending = index-1, nil
	after.PartSeg, after.PartServed = cut, g.m.FileSize
	after.PartStarts = append([]uint64(nil), g.m.PartStarts[:keepParts]...)
	_, rec, err := g.encodeRedo(&after, bt.files)
	if err != nil {
		return err
	}
	path := g.partPath(g.m.File, keepParts)
	f := g.seg
	if f.Name() != path {
		if h, ok := g.dirty[path]; ok {
			f = h
		} else if f, err = g.store.openSeg(path, 0); err != nil {
			return fmt.Errorf("group %d: reopen segment part: %w", g.id, err)
		}
	}
	off := int64(cut - partStart(after.PartStarts, keepParts))
	_, err = f.WriteAt(rec, off)
	end := off + int64(len(rec))
	if err == nil {
		// truncate syncs: the record is durable before any later part goes.
		err = g.store.truncate(f, end)
	}
	if err != nil {
		if f != g.seg {
			if _, dirty := g.dirty[path]; !dirty {
				f.Close()
			}
		}
		return fmt.Errorf("group %d: drop incomplete transaction in %s: %w", g.id, path, err)
	}
	for k := len(g.m.PartStarts); k > keepParts; k-- {
		p := g.partPath(g.m.File, k)
		if h, ok := g.dirty[p]; ok {
			h.Close()
			delete(g.dirty, p)
		} else if g.seg.Name() == p {
			g.seg.Close()
		}
		if err := g.store.fs.Remove(p); err != nil {
			return fmt.Errorf("group %d: drop segment part: %w", g.id, err)
		}
	}
	g.seg = f
	delete(g.dirty, path)
	g.newFiles = true // part removals: the commit that follows fsyncs the directory
	if err := bt.b.DeleteRange(posKey(g.id, g.m.File, g.m.FileSize), posKey(g.id, g.m.File+1, 0), nil); err != nil {
		return fmt.Errorf("group %d: unindex incomplete transaction: %w", g.id, err)
	}
	g.m.PartStarts = after.PartStarts
	g.m.PartSeg, g.m.PartServed, g.m.Pending = uint64(end)+partStart(after.PartStarts, keepParts), g.m.FileSize, nil
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

// fileStart returns the GTID state at the start of a file, cached from the index.
func (g *Group) fileStart(no uint64) binlog.Position {
	if p, ok := g.startStates[no]; ok {
		return p
	}
	fi, err := g.store.fileInfo(g.id, no)
	if err != nil {
		return binlog.Position{}
	}
	g.startStates[no] = fi.StartState
	return fi.StartState
}

// fileStartSet returns the MySQL GTID set at the start of a file, cached from the index.
func (g *Group) fileStartSet(no uint64) (binlog.MySQLSet, error) {
	if s, ok := g.startSets[no]; ok {
		return s, nil
	}
	fi, err := g.store.fileInfo(g.id, no)
	if err != nil {
		return nil, fmt.Errorf("group %d: start GTID set of %s: %w", g.id, FileName(no), err)
	}
	g.startSets[no] = fi.StartSet
	return fi.StartSet, nil
}

// addMySQL records a complete MySQL transaction in the executed set. The GTID was
// printed from a parsed GTID event (gno 1 to 2^63-2), so it parses back.
func (m *meta) addMySQL(gtid string) error {
	set, err := binlog.ParseMySQLSet(gtid)
	if err != nil {
		return fmt.Errorf("pending transaction's MySQL GTID %q: %w", gtid, err)
	}
	if len(set) != 1 {
		return fmt.Errorf("pending transaction's MySQL GTID %q is not one GTID", gtid)
	}
	if m.Executed == nil {
		m.Executed = binlog.MySQLSet{}
	}
	m.Executed.Union(set)
	return nil
}

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
func (g *Group) Sync() error { return g.syncSegments() }

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
		for _, no := range g.toCompress {
			if no >= g.m.FirstFile {
				g.compress(no)
			}
		}
		g.toCompress = g.toCompress[:0]
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

// Close releases the group's files; the shared index stays open.
func (g *Group) Close() error {
	g.closeFiles()
	g.mu.Lock()
	g.closed = true
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
	g.store.forget(g)
	return nil
}
