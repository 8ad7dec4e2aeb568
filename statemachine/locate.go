package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// ErrPosition reports that a replica asked for a position this group cannot serve;
// the error is a *PositionError (errors.As) carrying the reason for the replica.
// Its message is written for the replica's DBA and is sent as MySQL error 1236.
var ErrPosition = errors.New("cannot serve the requested position")

// PositionError is why a requested position cannot be served, in words meant for the
// replica's operator. It matches ErrPosition with errors.Is.
type PositionError struct {
	Reason string
	// Gone: the position will never be served here (its file was purged, or the
	// name is no file of this group), so waiting for the group to catch up is
	// pointless and the replica is told at once.
	Gone bool
}

func (e *PositionError) Error() string { return ErrPosition.Error() + ": " + e.Reason }

// Is makes errors.Is(err, ErrPosition) hold.
func (e *PositionError) Is(target error) bool { return target == ErrPosition }

func positionErr(format string, args ...any) error {
	return &PositionError{Reason: fmt.Sprintf(format, args...)}
}

func goneErr(format string, args ...any) error {
	return &PositionError{Reason: fmt.Sprintf(format, args...), Gone: true}
}

// Start is a place in the served binlog: a file, the served position and segment
// offset of a record, and how many bytes of that record to skip (a file/position
// replica may resume after any event, even inside a transaction).
type Start struct {
	File   uint64
	Served uint64
	Seg    uint64
	Skip   uint64
}

// Pos is the served position the start stands for.
func (s Start) Pos() uint64 { return s.Served + s.Skip }

// Tail returns what is committed now and a channel closed at the next change.
func (g *Group) Tail() (Tail, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tail, g.changed
}

// ID is the group's raft cluster id.
func (g *Group) ID() uint64 { return g.id }

// FileStatus is one line of SHOW BINARY LOGS.
type FileStatus struct {
	Name string
	Size uint64
}

// Files lists the served files, oldest first, with their committed sizes.
func (g *Group) Files() ([]FileStatus, error) {
	t, _ := g.Tail()
	var out []FileStatus
	it, err := g.store.db.NewIter(&pebble.IterOptions{LowerBound: fileKey(g.id, 0), UpperBound: fileKey(g.id, t.File+1)})
	if err != nil {
		return nil, fmt.Errorf("group %d: list files: %w", g.id, err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		no := binary.BigEndian.Uint64(it.Key()[10:])
		size := t.FileSize
		if no < t.File {
			fi, err := g.store.fileInfo(g.id, no)
			if err != nil {
				return nil, err
			}
			size = fi.Size
		}
		out = append(out, FileStatus{Name: FileName(no), Size: size})
	}
	return out, it.Error()
}

// ParseFileName returns the file number of a served file name.
func ParseFileName(name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(name, BaseName+".")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil && n > 0
}

// LocateFile resolves a file/position dump request: the record holding the position,
// or (when the position lies in pieces after an event cut across them) the last
// record before it that begins at an event boundary, and how many bytes to skip. The
// position must be an event boundary; the dump checks that as it skips.
func (g *Group) LocateFile(name string, pos uint64) (Start, error) {
	t, _ := g.Tail()
	no, ok := ParseFileName(name)
	if name == "" {
		no, ok = g.firstFile(), true
	}
	if !ok || no == 0 || no < g.firstFile() {
		return Start{}, goneErr("binlog file %q is not held by Flotilla for this upstream (it holds %s to %s; see SHOW BINARY LOGS)", name, FileName(g.firstFile()), FileName(t.File))
	}
	if no > t.File {
		return Start{}, positionErr("binlog file %q is not held by Flotilla for this upstream (it holds %s to %s; see SHOW BINARY LOGS)", name, FileName(g.firstFile()), FileName(t.File))
	}
	if pos < 4 {
		pos = 4
	}
	if pos == 4 {
		return Start{File: no, Served: 4, Seg: 0}, nil
	}
	if no == t.File && pos == t.FileSize {
		return Start{File: no, Served: pos, Seg: t.SegSize}, nil
	}
	if no == t.File && pos > t.FileSize {
		return Start{}, positionErr("position %d in %s is beyond its committed end %d", pos, name, t.FileSize)
	}
	size := t.FileSize
	if no != t.File {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			return Start{}, err
		}
		size = fi.Size
	}
	if pos > size {
		return Start{}, positionErr("position %d in %s is beyond its end %d", pos, name, size)
	}
	if size >= 1<<32 {
		// Only the tail, as a replica that read it all reports it (modulo 2^32), is
		// unambiguous in such a file.
		if no == t.File && pos == t.FileSize&0xffffffff {
			return Start{File: no, Served: t.FileSize, Seg: t.SegSize}, nil
		}
		return Start{}, positionErr("%s is larger than 4 GiB (one transaction took it there), so a 32-bit position inside it is ambiguous: start at its beginning (position 4) or at the next file, or replicate by GTID", name)
	}
	// The record holding pos: the last record boundary at or before it.
	it, err := g.store.db.NewIter(&pebble.IterOptions{LowerBound: posKey(g.id, no, 0), UpperBound: posKey(g.id, no, pos+1)})
	if err != nil {
		return Start{}, fmt.Errorf("group %d: read position index: %w", g.id, err)
	}
	defer it.Close()
	if !it.Last() {
		return Start{}, positionErr("position %d is not in %s", pos, name)
	}
	recStart := binary.BigEndian.Uint64(it.Key()[len(it.Key())-8:])
	seg, n := binary.Uvarint(it.Value())
	if n <= 0 {
		return Start{}, fmt.Errorf("%w: group %d: bad position index entry", ErrCorrupt, g.id)
	}
	if no == t.File && seg >= t.SegSize {
		return Start{}, positionErr("position %d in %s is beyond the committed end %d", pos, name, t.FileSize)
	}
	return Start{File: no, Served: recStart, Seg: seg, Skip: pos - recStart}, nil
}

func (g *Group) firstFile() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tail.FirstFile
}

// Locate finds where to start serving a replica whose GTID position is want: the
// earliest point after the replica's last transaction over all domains, found with
// one index seek per domain. The dump skips any transaction the replica already has
// from there on. Requests the group cannot serve exactly get an ErrPosition that
// names the cause.
func (g *Group) Locate(want binlog.Position) (Start, error) {
	t, _ := g.Tail()
	if t.File == 0 {
		return Start{}, positionErr("Flotilla has not received any binlog from this upstream yet")
	}
	if t.MySQL {
		return Start{}, positionErr("this upstream is a MySQL master, which has no MariaDB GTIDs: a MariaDB replica follows it by file and position (MASTER_USE_GTID=no)")
	}
	first := g.firstFile()
	fi, err := g.store.fileInfo(g.id, first)
	if err != nil {
		return Start{}, err
	}
	oldest := fi.StartState
	best := Start{File: t.File, Served: t.FileSize, Seg: t.SegSize}
	fromStart := false
	// available names what a replica can still be served from in domain d.
	available := func(d uint32) string {
		first := oldest[d]
		if av, err := g.OldestAvailable(); err == nil {
			if a, ok := av[d]; ok {
				first = a
			}
		}
		return fmt.Sprintf("the oldest GTID still available is %s (a replica at %s or later can be served)", first, oldest[d])
	}
	for _, d := range oldest.Domains() {
		if _, ok := want[d]; !ok {
			return Start{}, positionErr("the replica has no GTID for domain %d, so it needs that domain from its beginning, but Flotilla's history of it starts after %s; %s. Set the replica's gtid_slave_pos, or re-add the upstream with an earlier --start-gtid", d, oldest[d], available(d))
		}
	}
	for _, d := range t.State.Domains() {
		if _, ok := want[d]; !ok {
			// The replica has nothing of this domain and Flotilla holds it from its
			// very first transaction (checked above): serve it from the start.
			fromStart = true
		}
	}
	for _, d := range want.Domains() {
		w := want[d]
		cur, ok := t.State[d]
		if !ok {
			// Flotilla holds nothing of this domain yet: nothing to skip or serve.
			continue
		}
		if o, ok := oldest[d]; ok {
			if w.Seq < o.Seq {
				return Start{}, positionErr("the replica asks to continue after GTID %s, but Flotilla's history of domain %d starts after %s; %s", w, d, o, available(d))
			}
			if w == o {
				fromStart = true
				continue
			}
		}
		if w.Seq > cur.Seq {
			return Start{}, positionErr("the replica is ahead of this upstream: it asks for GTID %s but the latest GTID of domain %d is %s", w, d, cur)
		}
		loc, found, err := g.lookupTxn(w)
		if err != nil {
			return Start{}, err
		}
		if !found {
			return Start{}, positionErr("GTID %s requested by the replica is not in this upstream's binlog (the replica may have diverged or been written to directly); the latest GTID of domain %d is %s", w, d, cur)
		}
		s := Start{File: loc.File, Served: loc.End, Seg: loc.SegEnd}
		if s.File < best.File || (s.File == best.File && s.Served < best.Served) {
			best = s
		}
	}
	if fromStart {
		return Start{File: first, Served: 4, Seg: 0}, nil
	}
	// A transaction that ends its file is followed by the Rotate: start there.
	return best, nil
}

// LocateMySQL finds where to start serving a MySQL replica whose executed GTID set is
// want, as a MySQL master does: from the newest served file whose PREVIOUS_GTIDS the
// replica holds in full; the dump skips every transaction the replica has from there
// on. A replica holding transactions of the group's sources that the group never had,
// or missing some the group no longer serves, gets an ErrPosition naming those GTIDs.
// GTIDs of other sources (the replica's own writes, other channels of a multi-source
// replica) are none of the group's business, as MySQL checks only its own uuid.
func (g *Group) LocateMySQL(want binlog.MySQLSet) (Start, error) {
	t, _ := g.Tail()
	if t.File == 0 {
		return Start{}, positionErr("Flotilla has not received any binlog from this upstream yet")
	}
	if !t.MySQL {
		return Start{}, positionErr("this upstream is MariaDB: its replicas connect with MASTER_USE_GTID, not MySQL's auto-position")
	}
	if extra := want.Subtract(t.Executed).Only(t.Executed); len(extra) > 0 {
		return Start{}, positionErr("the replica has GTIDs this upstream never had: %s (the replica was written to directly or follows another master); the upstream holds %s", extra, t.Executed)
	}
	first := g.firstFile()
	for no := t.File; no >= first; no-- {
		fi, err := g.store.fileInfo(g.id, no)
		if err != nil {
			return Start{}, err
		}
		if want.ContainsSet(fi.StartSet) {
			return Start{File: no, Served: 4, Seg: 0}, nil
		}
		if no == first {
			break
		}
	}
	fi, err := g.store.fileInfo(g.id, first)
	if err != nil {
		return Start{}, err
	}
	return Start{}, positionErr("the replica needs GTIDs %s, which Flotilla no longer serves (its oldest file %s starts after %s): provision the replica from a backup with a later gtid_purged", fi.StartSet.Subtract(want), FileName(first), fi.StartSet)
}

// PurgedMySQL is, for a MySQL-flavor group, the GTID set before its oldest served
// file: what a replica must already hold to be served (MySQL's gtid_purged).
func (g *Group) PurgedMySQL() (binlog.MySQLSet, error) {
	fi, err := g.store.fileInfo(g.id, g.firstFile())
	if err != nil {
		return nil, err
	}
	return fi.StartSet.Clone(), nil
}

// HasGTID reports whether the group holds MariaDB GTID w itself, not only a GTID of
// its domain with a sequence number as high: a transaction another server wrote with
// the same sequence number (a direct write on a replica, MariaDB's non-strict mode)
// is not held. GTIDs older than the group's history count as held: nothing tells
// them apart any more.
func (g *Group) HasGTID(w binlog.GTID) (bool, error) {
	t, _ := g.Tail()
	if t.File == 0 || !t.State.Contains(w) {
		return false, nil
	}
	fi, err := g.store.fileInfo(g.id, g.firstFile())
	if err != nil {
		return false, err
	}
	if fi.StartState.Contains(w) {
		return true, nil
	}
	_, found, err := g.lookupTxn(w)
	return found, err
}

func (g *Group) lookupTxn(w binlog.GTID) (txnLoc, bool, error) {
	return g.readLoc(txnKey(g.id, w.Domain, w.Seq, w.Server), "GTID "+w.String())
}

// readLoc reads a location entry of the index; what names it in errors.
func (g *Group) readLoc(key []byte, what string) (txnLoc, bool, error) {
	v, closer, err := g.store.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return txnLoc{}, false, nil
	}
	if err != nil {
		return txnLoc{}, false, fmt.Errorf("group %d: read index entry of %s: %w", g.id, what, err)
	}
	defer closer.Close()
	loc, ok := decodeTxnLoc(v)
	if !ok {
		return txnLoc{}, false, fmt.Errorf("%w: group %d: bad index entry for %s", ErrCorrupt, g.id, what)
	}
	return loc, true, nil
}
