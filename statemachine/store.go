package statemachine

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/flotilla-relay/flotilla/internal/directio"
)

// Store is a node's storage for all of its upstream groups: one pebble instance for
// every group's index (so hundreds of groups cost one set of memtables and one WAL)
// and a directory of segment files per group.
type Store struct {
	db  *pebble.DB
	fs  vfs.FS
	dir string
	log *slog.Logger

	mu     sync.Mutex
	groups map[uint64]*Group

	compressc    chan compressJob
	compressDone chan struct{}
	// segmentSize is where segment parts roll (0: never).
	segmentSize uint64
	// closeSyncBelow is the Update size below which a commit fsyncs the files
	// closed since the last fsync (see closeDue). Tests set 0 to make every Update a
	// bulk load's, math.MaxInt to fsync every close with its Update (as before 0.50).
	closeSyncBelow int
	// direct says whether segments are written with direct I/O (SetDirectIO); stages
	// are the aligned buffers they are staged in, each held only between a part's
	// first write of an Update and its Flush.
	direct directio.Switch
	stages sync.Pool
	// directWrites counts the direct writes of segments (the tests check that the
	// direct path ran).
	directWrites atomic.Int64
	// records is shared by every cursor (see recordCache); gens numbers the groups'
	// generations in it.
	records *recordCache
	gens    atomic.Uint64
	// crc is the node's checksum memo (SetChecksums), nil for none; derivedBytes
	// counts the record payload bytes whose checksums were derived from it.
	crc          *crcalg.Memo
	derivedBytes atomic.Int64
	// now is the clock that dates a file's closing (fileInfo.ClosedAt), the one
	// thing apply takes from the replica rather than the log: tests that compare two
	// stores' segments byte for byte fix it.
	now func() time.Time
}

// DefaultSegmentSize is the size at which segment parts roll by default.
const DefaultSegmentSize = 256 << 20

// SetRecordCache bounds the payload bytes of the record cache that cursors share
// (see recordCache; 0 turns it off). Call it before groups are started.
func (s *Store) SetRecordCache(n int64) { s.records.max = n }

// SetChecksums gives the store the node's checksum memo, which its raft log fills:
// records of large events then take their checksums from their raft entries'
// (segcrc.go). Call it before groups are started.
func (s *Store) SetChecksums(m *crcalg.Memo) { s.crc = m }

// DerivedChecksumBytes returns how many bytes of records had their checksums derived
// from their raft entries' (SetChecksums) rather than taken by a pass over them.
func (s *Store) DerivedChecksumBytes() int64 { return s.derivedBytes.Load() }

// SetSegmentSize sets where segment parts roll; call it before groups are started.
// Small parts make compression and purge finer-grained; 0 keeps one part per file.
func (s *Store) SetSegmentSize(n uint64) { s.segmentSize = n }

// Open opens (creating if needed) the store under dir on the operating system's
// filesystem.
func Open(dir string, log *slog.Logger) (*Store, error) { return OpenFS(vfs.Default, dir, log) }

// OpenFS is Open on the filesystem fs, which holds both the index and the segments
// (tests pass pebble's crashable in-memory filesystem).
func OpenFS(fs vfs.FS, dir string, log *slog.Logger) (*Store, error) {
	s := &Store{fs: fs, dir: dir, log: log, groups: map[uint64]*Group{}, direct: directio.Switch{On: new(atomic.Bool), Log: log, What: "segment files"},
		compressc: make(chan compressJob, 1024), compressDone: make(chan struct{}), segmentSize: DefaultSegmentSize, closeSyncBelow: closeSyncBelow,
		records: newRecordCache(DefaultRecordCache), now: time.Now}
	if err := s.mkdirAll(fs.PathJoin(dir, "groups")); err != nil {
		return nil, fmt.Errorf("storage: create %s: %w", dir, err)
	}
	db, err := pebble.Open(fs.PathJoin(dir, "index"), &pebble.Options{FS: fs, Logger: quietLogger{log}})
	if err != nil {
		return nil, fmt.Errorf("storage: open index in %s: %w", dir, err)
	}
	s.db = db
	go s.compressLoop()
	return s, nil
}

// Dir is the store's root directory.
func (s *Store) Dir() string { return s.dir }

// Close closes the shared index. Groups must have been closed by dragonboat first.
func (s *Store) Close() error {
	s.records.stop()
	close(s.compressc)
	<-s.compressDone
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("storage: close index: %w", err)
	}
	return nil
}

// NewGroup is the dragonboat CreateOnDiskStateMachineFunc for upstream groups.
func (s *Store) NewGroup(clusterID, nodeID uint64) sm.IOnDiskStateMachine {
	g := &Group{
		store:       s,
		id:          clusterID,
		node:        nodeID,
		dir:         s.fs.PathJoin(s.dir, "groups", strconv.FormatUint(clusterID, 10)),
		log:         s.log.With("group", clusterID),
		dirty:       map[string]*segFile{},
		startStates: map[uint64]binlog.Position{},
		startSets:   map[uint64]binlog.MySQLSet{},
		changed:     make(chan struct{}),
		reading:     map[*Cursor]uint64{},
	}
	g.gen.Store(s.newGen(false))
	s.mu.Lock()
	s.groups[clusterID] = g
	s.mu.Unlock()
	return g
}

// Group returns the live state machine of a group on this node, for readers.
func (s *Store) Group(id uint64) (*Group, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[id]
	return g, ok
}

func (s *Store) forget(g *Group) {
	s.mu.Lock()
	if s.groups[g.id] == g {
		delete(s.groups, g.id)
	}
	s.mu.Unlock()
}

// RemoveGroupData deletes a removed upstream's segments and index entries. The group
// must be stopped on this node.
func (s *Store) RemoveGroupData(id uint64) error {
	if err := s.db.DeleteRange(groupPrefix(id), groupEnd(id), pebble.Sync); err != nil {
		return fmt.Errorf("storage: drop index of group %d: %w", id, err)
	}
	if err := s.fs.RemoveAll(s.fs.PathJoin(s.dir, "groups", strconv.FormatUint(id, 10))); err != nil {
		return fmt.Errorf("storage: remove segments of group %d: %w", id, err)
	}
	return nil
}

// newGen returns a generation for a group's files in the record cache, unique in
// the store: even for files that stay, odd for files being replaced.
func (s *Store) newGen(replacing bool) uint64 {
	n := 2 * s.gens.Add(1)
	if replacing {
		n++
	}
	return n
}

func (s *Store) fileInfo(gid, no uint64) (fileInfo, error) {
	v, closer, err := s.db.Get(fileKey(gid, no))
	if err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			return fileInfo{}, fmt.Errorf("group %d has no served file %d", gid, no)
		}
		return fileInfo{}, fmt.Errorf("group %d: read file %d: %w", gid, no, err)
	}
	defer closer.Close()
	var fi fileInfo
	if err := json.Unmarshal(v, &fi); err != nil {
		return fileInfo{}, fmt.Errorf("group %d: decode file %d: %w", gid, no, err)
	}
	return fi, nil
}

// quietLogger sends pebble's informational chatter to debug level.
type quietLogger struct{ log *slog.Logger }

func (q quietLogger) Infof(format string, args ...interface{}) {
	q.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (q quietLogger) Errorf(format string, args ...interface{}) {
	q.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (q quietLogger) Fatalf(format string, args ...interface{}) {
	q.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}
