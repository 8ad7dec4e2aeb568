package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	_ "unsafe" // go:linkname

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
	_ "github.com/lni/dragonboat/v3" // links internal/logdb, newDefaultLogDB's home
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
	gvfs "github.com/lni/goutils/vfs"
)

// Defaults: entries of at least MinPayload bytes leave the LSM (a batch of binlog
// events usually; small transactions one at a time stay), into files of FileSize.
const (
	MinPayload = 64 << 10
	FileSize   = 64 << 20
)

// RecycleVersion is the cluster version from which a node salts its new payload
// files and takes them from its spares: a release before it does not know a salted
// file's name, so every reference into one would read as a missing file.
const RecycleVersion uint32 = 5

// PayloadFilesVersion is the cluster version from which a node keeps payloads in
// files: its raft log then holds references a release before it cannot read, and the
// node's recorded cluster version is what refuses such a release at start. Until the
// cluster reaches it, every entry is saved whole, as before.
const PayloadFilesVersion uint32 = 4

// refEntry is the entry type of a reference in the LSM: never one raft uses, so an
// entry cannot be taken for a reference or the other way round (and a release that
// does not know references fails on them rather than applying them).
const refEntry = pb.EntryType(0x464c)

// newDefaultLogDB is dragonboat's own LogDB constructor, which its DefaultFactory
// calls; it lives in an internal package, hence the link name. A link name checks
// no types: a missing function fails the link, a changed signature would not, which
// is why go.mod pins dragonboat v3.3.8 and this package's tests open a LogDB
// through it.
//
//go:linkname newDefaultLogDB github.com/lni/dragonboat/v3/internal/logdb.NewDefaultLogDB
func newDefaultLogDB(cfg config.NodeHostConfig, cb config.LogDBCallback, dirs []string, lldirs []string, fs config.IFS) (raftio.ILogDB, error)

// Factory makes a node host's LogDB: dragonboat's, with large payloads kept apart
// (see the package doc).
type Factory struct {
	// MinPayload is the size from which a payload leaves the LSM; zero means
	// MinPayload (tests lower it, to send every entry through the files).
	MinPayload int
	// On says whether payloads go to files now (see PayloadFilesVersion); nil means
	// never. Entries saved either way are read either way.
	On *atomic.Bool
	// DirectIO writes payload files with direct I/O (O_DIRECT) where the filesystem
	// allows it: a payload is then copied to the disk once, not into the page cache
	// on its way (a large share of ingest CPU on the VM it was measured on). Only for the real
	// filesystem: a wrapped one (fault injection) must see every write.
	DirectIO bool
	// DirectState, if set, says whether payload files are written with direct I/O:
	// set at Create, cleared as soon as a filesystem refuses it, so that the node can
	// report it (a regression once left it off unseen).
	DirectState *atomic.Bool
	// Log, if set, is where a refusal of direct I/O is reported (once).
	Log *slog.Logger
	// NoFlushAtClose makes Close leave the commit indexes it holds back unwritten,
	// as a crash would (see commitStates): for tests of a restart after one.
	NoFlushAtClose bool
	// Reserve is the most disk, in bytes, the spare payload files hold (see
	// spare.go): files cut from the log, kept to be overwritten by new payload files
	// instead of new blocks. Zero: no spares, every file is new.
	Reserve int64
	// Recycle says whether new payload files are salted, and so may be spares (see
	// RecycleVersion); nil means never.
	Recycle *atomic.Bool
	// Room, if set, says whether the disk can spare n more bytes: a cut file is
	// kept as a spare only when it can, and spares are removed when it cannot
	// spare any.
	Room func(n int64) bool
	// Spares, if set, is kept at the number of spare files ready, Recycled counts
	// the new payload files that were spares, and InPlace the payloads written from
	// their own memory (putInPlace; metrics).
	Spares, Recycled, InPlace *atomic.Int64
	// CRC, if set, is the node's checksum memo, shared with its raft transport
	// (crcalg): a payload's CRC32C is taken once on its way through the node.
	CRC *crcalg.Memo
}

// Name is dragonboat's default LogDB's: dragonboat records it in the node host
// directory and refuses a different one, and the LSM's format is unchanged (an
// existing node keeps its log; entries saved before hold their payloads inline).
func (Factory) Name() string { return "sharded-pebble" }

// Create opens the LogDB in dirs[0] (payloads under dirs[0]/payloads).
func (f Factory) Create(cfg config.NodeHostConfig, cb config.LogDBCallback, dirs []string, lldirs []string) (raftio.ILogDB, error) {
	fs := cfg.Expert.FS
	if fs == nil {
		fs = gvfs.Default
	}
	inner, err := newDefaultLogDB(cfg, cb, dirs, lldirs, fs)
	if err != nil {
		return nil, err
	}
	// The check dragonboat runs on its own LogDB only (by its concrete type).
	if sc, ok := inner.(interface{ SelfCheckFailed() (bool, error) }); ok {
		if failed, err := sc.SelfCheckFailed(); err != nil || failed {
			inner.Close()
			if err == nil {
				err = errors.New("dragonboat's LogDB failed its self check: its shard count changed, or it is damaged")
			}
			return nil, fmt.Errorf("raft log in %s: %w", dirs[0], err)
		}
	}
	minPayload := f.MinPayload
	if minPayload <= 0 {
		minPayload = MinPayload
	}
	on := f.On
	if on == nil {
		on = new(atomic.Bool)
	}
	l, err := wrap(inner, fs, fs.PathJoin(dirs[0], "payloads"), minPayload, FileSize, on)
	if err != nil {
		inner.Close()
		return nil, err
	}
	// Direct I/O bypasses the FS the node host was given, so it is used only where
	// that is the operating system's. dragonboat sets Expert.FS to its default (the
	// operating system's) before it calls the factory: nil is never seen here from
	// a node host. (Testing for nil alone left direct I/O off in every node.)
	l.direct = f.DirectIO && osFS(cfg.Expert.FS) && directio.Available()
	if f.DirectState != nil {
		l.dio.On = f.DirectState
	}
	l.dio.On.Store(l.direct)
	l.dio.Log = f.Log
	l.noFlushAtClose = f.NoFlushAtClose
	l.crc = f.CRC
	if f.InPlace != nil {
		l.inPlace = f.InPlace
	}
	if f.Recycle != nil {
		l.recycle = f.Recycle
	}
	if f.Reserve > 0 {
		log := f.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		if l.pool, err = openSpares(fs, l.root, l.fileSize, f.Reserve, l.recycle, f.Room, log, f.Spares, f.Recycled); err != nil {
			inner.Close()
			return nil, err
		}
		l.pool.start()
	} else if err := removeSpares(fs, l.root, f.Log); err != nil {
		inner.Close()
		return nil, err
	}
	return l, nil
}

// removeSpares removes the spares a node kept before its reserve was set to zero:
// that setting gives their disk back.
func removeSpares(fs gvfs.FS, root string, log *slog.Logger) error {
	dir := fs.PathJoin(root, spareDir)
	names, err := fs.List(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list spare payload directory %s: %w", dir, err)
	}
	if err := fs.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove spare payload directory %s (raft_payload_reserve is 0): %w", dir, err)
	}
	if err := syncDir(fs, root); err != nil {
		return err
	}
	if log != nil && len(names) > 0 {
		log.Info("spare payload files removed: the reserve is 0", "dir", dir, "files", len(names))
	}
	return nil
}

// osFS reports whether fs writes to the operating system's files directly (no fault
// injection, no in-memory filesystem between).
func osFS(fs config.IFS) bool { return fs == nil || fs == gvfs.Default }

// LogDB is dragonboat's LogDB with large payloads in files of their own. The
// methods it does not define are the inner LogDB's.
type LogDB struct {
	raftio.ILogDB
	fs         gvfs.FS
	root       string
	minPayload int
	fileSize   int64
	on         *atomic.Bool
	direct     bool
	// recycle and pool: see Factory.Recycle and Factory.Reserve (pool is nil
	// without a reserve).
	recycle *atomic.Bool
	pool    *spares
	// dio is the direct I/O state its groups report refusals to.
	dio    directio.Switch
	stages stagePool
	states commitStates
	// noFlushAtClose: Close leaves held commit indexes unwritten, as a crash
	// would (Factory.NoFlushAtClose).
	noFlushAtClose bool
	// crc is Factory.CRC.
	crc *crcalg.Memo
	// inPlace is Factory.InPlace (a counter of its own without one).
	inPlace *atomic.Int64

	mu     sync.Mutex
	groups map[groupKey]*groupSlot
}

// groupSlot is a replica's payload files, opened once, outside the LogDB's lock:
// opening scans the files' record headers, and a node starting with many groups
// must not have every group's save wait behind each scan.
type groupSlot struct {
	once sync.Once
	g    *groupLog
	err  error
}

type groupKey struct{ cluster, node uint64 }

func wrap(inner raftio.ILogDB, fs gvfs.FS, root string, minPayload int, fileSize int64, on *atomic.Bool) (*LogDB, error) {
	if err := fs.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create payload directory %s: %w", root, err)
	}
	if err := syncDir(fs, fs.PathDir(root)); err != nil {
		return nil, err
	}
	if err := removeOrphans(inner, fs, root); err != nil {
		return nil, err
	}
	return &LogDB{ILogDB: inner, fs: fs, root: root, minPayload: minPayload, fileSize: fileSize, on: on, recycle: new(atomic.Bool), inPlace: new(atomic.Int64), groups: map[groupKey]*groupSlot{},
		dio: directio.Switch{On: new(atomic.Bool), What: "raft payload files"}, states: commitStates{groups: map[groupKey]*groupState{}}}, nil
}

func (l *LogDB) group(cluster, node uint64) (*groupLog, error) {
	return l.lookup(cluster, node, true)
}

// lookup returns a replica's payload files; unless create, nil when it has none (no
// directory): removing a log that never had payloads touches no file.
func (l *LogDB) lookup(cluster, node uint64, create bool) (*groupLog, error) {
	k := groupKey{cluster, node}
	dir := l.fs.PathJoin(l.root, fmt.Sprintf("%d-%d", cluster, node))
	l.mu.Lock()
	s := l.groups[k]
	if s == nil {
		if !create {
			if _, err := l.fs.Stat(dir); errors.Is(err, os.ErrNotExist) {
				l.mu.Unlock()
				return nil, nil
			}
		}
		s = &groupSlot{}
		l.groups[k] = s
	}
	l.mu.Unlock()
	s.once.Do(func() {
		s.g, s.err = openGroupLog(l.fs, l.root, dir, l.fileSize, l.direct, &l.dio, &l.stages, l.recycle, l.pool)
		if s.g != nil {
			s.g.crc, s.g.inPlace = l.crc, l.inPlace
		}
	})
	if s.err != nil {
		l.mu.Lock()
		if l.groups[k] == s {
			delete(l.groups, k) // the next call tries again
		}
		l.mu.Unlock()
		return nil, s.err
	}
	return s.g, nil
}

// SaveRaftState writes the large payloads of updates to their groups' files, syncs
// them, and only then has the inner LogDB save the updates with references in their
// place (updates itself is left as it was).
func (l *LogDB) SaveRaftState(updates []pb.Update, shardID uint64) error {
	if !l.on.Load() {
		return l.saveInner(updates, shardID)
	}
	var out []pb.Update // a copy, once an update has a large entry
	var touched []*groupLog
	for i := range updates {
		u := &updates[i]
		var ents []pb.Entry
		for j, e := range u.EntriesToSave {
			if e.Type != pb.ApplicationEntry && e.Type != pb.EncodedEntry || len(e.Cmd) < l.minPayload {
				if ents != nil {
					ents = append(ents, e)
				}
				continue
			}
			if ents == nil {
				ents = append(make([]pb.Entry, 0, len(u.EntriesToSave)), u.EntriesToSave[:j]...)
			}
			g, err := l.group(u.ClusterID, u.NodeID)
			if err != nil {
				return err
			}
			r, err := g.append(e.Index, e.Cmd)
			if err != nil {
				return err
			}
			r.typ = uint32(e.Type)
			l.rememberCommand(e.Type, e.Cmd, r.crc)
			if len(touched) == 0 || touched[len(touched)-1] != g {
				touched = append(touched, g)
			}
			e.Type, e.Cmd = refEntry, r.encode()
			ents = append(ents, e)
		}
		if ents != nil {
			if out == nil {
				out = append([]pb.Update(nil), updates...)
			}
			out[i].EntriesToSave = ents
		}
	}
	if out == nil {
		return l.saveInner(updates, shardID)
	}
	for _, g := range touched {
		if err := g.sync(); err != nil {
			return err
		}
	}
	return l.saveInner(out, shardID)
}

// saveInner has the inner LogDB save batch, less the commit indexes that need no
// write of their own (see commitStates).
func (l *LogDB) saveInner(batch []pb.Update, shardID uint64) error {
	out, record := l.states.settle(batch)
	if out == nil {
		return nil
	}
	if err := l.ILogDB.SaveRaftState(out, shardID); err != nil {
		return err
	}
	record()
	return nil
}

// IterateEntries returns the entries the inner LogDB holds with their payloads
// restored, cut at maxSize as the inner LogDB cuts them (the entry that passes it is
// the last one returned).
func (l *LogDB) IterateEntries(ents []pb.Entry, size uint64, clusterID uint64, nodeID uint64, low uint64, high uint64,
	maxSize uint64) ([]pb.Entry, uint64, error) {
	n := len(ents)
	got, gotSize, err := l.ILogDB.IterateEntries(ents, size, clusterID, nodeID, low, high, maxSize)
	if err != nil {
		return got, gotSize, err
	}
	var g *groupLog
	for i := n; i < len(got); i++ {
		e := &got[i]
		if e.Type == refEntry {
			if g == nil {
				if g, err = l.group(clusterID, nodeID); err != nil {
					return nil, 0, err
				}
			}
			r, err := decodeRef(e.Cmd)
			if err != nil {
				return nil, 0, fmt.Errorf("raft log of group %d (replica %d), entry %d: %w", clusterID, nodeID, e.Index, err)
			}
			if e.Cmd, err = g.read(r); err != nil {
				return nil, 0, fmt.Errorf("raft log of group %d (replica %d), entry %d: %w", clusterID, nodeID, e.Index, err)
			}
			e.Type = pb.EntryType(r.typ)
			l.rememberCommand(e.Type, e.Cmd, r.crc)
		}
		size += uint64(e.SizeUpperLimit())
		if size > maxSize {
			return got[:i+1], size, nil
		}
	}
	return got, size, nil
}

// rememberCommand tells the node's memo the CRC-32C of what the state machine is
// handed of an entry whose payload's checksum is crc: dragonboat gives it an encoded
// entry's payload past its one-byte header (0: version 0, uncompressed, no session),
// a slice of the same bytes. The state machine derives its records' checksums from
// it (crcalg.Poly.Part) rather than take them again (statemachine/segcrc.go).
func (l *LogDB) rememberCommand(typ pb.EntryType, payload []byte, crc uint32) {
	if l.crc == nil || typ != pb.EncodedEntry || len(payload) < 2 || payload[0] != 0 {
		return
	}
	c := crcalg.Castagnoli()
	l.crc.Remember(payload[1:], crc^c.ShiftZeros(c.Checksum(payload[:1]), len(payload)-1))
}

// RemoveEntriesTo removes entries up to index, then the payload files that hold
// nothing above it.
func (l *LogDB) RemoveEntriesTo(clusterID uint64, nodeID uint64, index uint64) error {
	if err := l.ILogDB.RemoveEntriesTo(clusterID, nodeID, index); err != nil {
		return err
	}
	g, err := l.lookup(clusterID, nodeID, false)
	if err != nil || g == nil {
		return err
	}
	return g.removeTo(index)
}

// RemoveNodeData removes a replica's log, payloads included.
func (l *LogDB) RemoveNodeData(clusterID uint64, nodeID uint64) error {
	if err := l.ILogDB.RemoveNodeData(clusterID, nodeID); err != nil {
		return err
	}
	l.states.forget(clusterID, nodeID)
	g, err := l.lookup(clusterID, nodeID, false)
	if err != nil || g == nil {
		return err
	}
	l.mu.Lock()
	delete(l.groups, groupKey{clusterID, nodeID})
	l.mu.Unlock()
	return g.removeAll()
}

// removeOrphans removes the payload directories of replicas the inner LogDB no
// longer has: RemoveNodeData removes the inner log first, so a crash before the
// directory went leaves it behind, which nothing would ever read or remove. A
// directory goes only if the inner LogDB neither lists its replica nor holds a raft
// state for it.
func removeOrphans(inner raftio.ILogDB, fs gvfs.FS, root string) error {
	names, err := fs.List(root)
	if err != nil {
		return fmt.Errorf("list payload directory %s: %w", root, err)
	}
	nodes, err := inner.ListNodeInfo()
	if err != nil {
		return fmt.Errorf("list the raft log's replicas: %w", err)
	}
	listed := map[groupKey]bool{}
	for _, ni := range nodes {
		listed[groupKey{ni.ClusterID, ni.NodeID}] = true
	}
	removed := false
	for _, name := range names {
		var k groupKey
		if n, err := fmt.Sscanf(name, "%d-%d", &k.cluster, &k.node); err != nil || n != 2 || fmt.Sprintf("%d-%d", k.cluster, k.node) != name {
			continue // not a group's directory: not ours to remove
		}
		if listed[k] {
			continue
		}
		if _, err := inner.ReadRaftState(k.cluster, k.node, 0); !errors.Is(err, raftio.ErrNoSavedLog) {
			continue // it has a log (or the question failed): keep
		}
		if err := fs.RemoveAll(fs.PathJoin(root, name)); err != nil {
			return fmt.Errorf("remove payloads %s of a removed replica: %w", fs.PathJoin(root, name), err)
		}
		removed = true
	}
	if removed {
		return syncDir(fs, root)
	}
	return nil
}

// Close writes the commit indexes held back (see commitStates), then closes the
// payload files and the inner LogDB. dragonboat closes its LogDB after its workers
// stopped.
func (l *LogDB) Close() error {
	var flushErr error
	if !l.noFlushAtClose {
		flushErr = l.states.flush(func(u pb.Update) error { return l.ILogDB.SaveRaftState([]pb.Update{u}, 1) })
	}
	if l.pool != nil {
		l.pool.close()
	}
	l.mu.Lock()
	for _, s := range l.groups {
		s.once.Do(func() {}) // waits for an open under way (and ends any to come)
		if s.g != nil {
			s.g.close()
		}
	}
	l.groups = map[groupKey]*groupSlot{}
	l.mu.Unlock()
	return errors.Join(flushErr, l.ILogDB.Close())
}
