package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// ErrAtTail is returned by Cursor.Next when the cursor has read everything committed.
var ErrAtTail = errors.New("at the committed tail")

// ErrCorrupt reports a record that failed its CRC or framing check: the replica stops
// serving at that point rather than send bad data.
var ErrCorrupt = errors.New("corrupt segment")

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

// Record is one unit a cursor returns: a file header, a transaction or a piece of
// one, or the closing Rotate, as served bytes starting at served position Pos of file
// File. A transaction proposed in pieces is read in those pieces (so no reader holds a
// large transaction whole), and a piece may begin or end inside an event cut across
// pieces (see binlog.Stream). Readers still never see an incomplete transaction: the
// tail covers a transaction's pieces only once its last piece is applied.
type Record struct {
	File    uint64
	Pos     uint64
	Type    byte
	Payload []byte
	// Continued is set on the pieces after a transaction's first; Continues on all
	// but its last.
	Continued, Continues bool
}

// IsHeader reports whether the record is the FDE + Gtid_list that opens a file.
func (r Record) IsHeader() bool { return r.Type == recHeader }

// IsRotate reports whether the record is the Rotate that closes a file.
func (r Record) IsRotate() bool { return r.Type == recRotate }

// Cursor reads a group's served binlog forward from a Start. Only the goroutine that
// owns it may use it.
type Cursor struct {
	g      *Group
	file   uint64
	seg    uint64
	served uint64
	f      segmentReader
	starts []uint64 // part starts of the file being read
	part   int      // the part f reads
	final  bool     // starts are the closed file's complete list
	inTxn  bool     // the last record read was a piece the transaction continues after
	// win holds bytes of part `part` from offset winOff, all below the committed tail
	// when they were read (bytes below it never change); big holds a record larger
	// than the window. A record's payload aliases one of them until the next Next.
	win    []byte
	winOff int64
	big    []byte
	// gen is the group's generation when the part was opened, 0 if the part may not
	// use the store's record cache (opened while a recovery replaced the files).
	gen uint64
	// held is the record cache's entry whose payload the last Next returned, held
	// until the next Next or Close (its buffer is not reused while held).
	held *cachedRecord
}

// cursorWindow is how much a cursor reads at once: one read serves many small
// records, and a reader catching up streams closed files in large reads.
const cursorWindow = 256 << 10

// minWindow is the smallest window a cursor allocates (a replica at the tail reads
// only what was just committed).
const minWindow = 16 << 10

// maxKeptPayload bounds the buffer a cursor keeps for records larger than its window.
// Stored records are at most a piece (under 8 MiB), so a reader catching up reuses
// one buffer for all of them instead of allocating (and zeroing) one per record; the
// buffer goes at the tail, where a reader waits with little.
const maxKeptPayload = 8 << 20

// NewCursor opens a cursor at s.
func (g *Group) NewCursor(s Start) (*Cursor, error) {
	c := &Cursor{g: g, file: s.File, seg: s.Seg, served: s.Served}
	t, _ := g.Tail()
	if err := c.open(t); err != nil {
		return nil, err
	}
	g.setReading(c, c.file)
	return c, nil
}

// Position returns the served file and position of the next record.
func (c *Cursor) Position() (uint64, uint64) { return c.file, c.served }

// open opens the part of the cursor's file that holds its offset.
func (c *Cursor) open(t Tail) error {
	if err := c.loadStarts(t); err != nil {
		return err
	}
	c.part = partOf(c.starts, c.seg)
	gen := c.g.gen.Load()
	f, err := c.g.openPart(c.file, c.part)
	if err != nil {
		return fmt.Errorf("%s: %w", FileName(c.file), err)
	}
	c.f, c.gen = f, 0
	if gen%2 == 0 && c.g.gen.Load() == gen {
		c.gen = gen
	}
	return nil
}

// loadStarts refreshes the part list of the cursor's file: the tail's while the file
// is current (it may still gain parts), the index's once it is closed.
func (c *Cursor) loadStarts(t Tail) error {
	if c.file == t.File {
		c.starts, c.final = t.PartStarts, false
		return nil
	}
	if c.final {
		return nil
	}
	fi, err := c.g.store.fileInfo(c.g.id, c.file)
	if err != nil {
		return err
	}
	c.starts, c.final = fi.PartStarts, true
	return nil
}

// ensurePart moves to the next part once the offset has reached it; the file may
// have gained parts (and been closed) since the cursor opened it.
func (c *Cursor) ensurePart(t Tail) error {
	if err := c.loadStarts(t); err != nil {
		return err
	}
	if k := partOf(c.starts, c.seg); k != c.part {
		c.closeFile()
		return c.open(t)
	}
	return nil
}

// Close releases the cursor's file.
func (c *Cursor) Close() {
	c.closeFile()
	c.drop()
	c.g.setReading(c, 0)
}

// drop releases the record cache's entry the cursor holds, if any.
func (c *Cursor) drop() {
	if c.held != nil {
		c.g.store.records.release(c.held)
		c.held = nil
	}
}

func (c *Cursor) closeFile() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
	c.win = c.win[:0]
}

// read returns n bytes of the current part at off, from the window when it holds them.
// It reads ahead only up to what t commits in this part: bytes past the tail may
// still be rewritten. What the window already holds of the request is kept, so the
// part is only ever read forward: a compressed part decompresses again from its start
// on any read before its last.
func (c *Cursor) read(t Tail, off int64, n int) ([]byte, error) {
	return c.readInto(t, off, n, nil)
}

// readInto is read; with dst, a record larger than the window is read into dst (of at
// least n bytes), which the cursor does not keep.
func (c *Cursor) readInto(t Tail, off int64, n int, dst []byte) ([]byte, error) {
	end := c.winOff + int64(len(c.win))
	if off >= c.winOff && off+int64(n) <= end {
		return c.win[off-c.winOff : off-c.winOff+int64(n)], nil
	}
	var have []byte // the start of the request, already read
	if off >= c.winOff && off < end {
		have = c.win[off-c.winOff:]
	}
	if n > cursorWindow {
		var b []byte
		if dst != nil {
			b = dst[:n]
		} else {
			if cap(c.big) < n {
				c.big = c.g.store.records.newBuffer(n)
			}
			b = c.big[:n]
			if n > maxKeptPayload {
				c.big = nil
			}
		}
		k := copy(b, have)
		c.win, c.winOff = c.win[:0], off+int64(n)
		if _, err := c.f.ReadAt(b[k:], off+int64(k)); err != nil {
			return nil, err
		}
		return b, nil
	}
	want := int64(cursorWindow)
	if c.file == t.File && c.part == len(c.starts) {
		// The part being written: only its committed bytes.
		want = min(want, int64(t.SegSize-partStart(c.starts, c.part))-off)
	}
	want = max(want, int64(n))
	buf := c.win[:0]
	if int64(cap(buf)) < want {
		buf = make([]byte, 0, max(want, minWindow))
	}
	k := copy(buf[:want], have)
	m, err := c.f.ReadAt(buf[k:want], off+int64(k))
	if k+m < n {
		c.win = buf[:0]
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	c.win, c.winOff = buf[:k+m], off
	return c.win[:n], nil
}

// atTail releases a large window: a replica that follows the tail reads a few records
// at a time, and thousands of them should not each hold a catching-up reader's buffer.
func (c *Cursor) atTail() error {
	if cap(c.win) > minWindow {
		c.win, c.winOff = nil, 0
	}
	c.big = nil
	c.drop() // nor the record cache's last entry, which may wait long for a successor
	return ErrAtTail
}

// Next returns the next committed record, or ErrAtTail. Reads never buffer past the
// committed tail: bytes beyond it may still be rewritten. The record's payload is
// valid until the next call (it aliases the cursor's buffers) and read-only (it may
// be shared with other cursors): copy what is kept or changed.
func (c *Cursor) Next(t Tail) (Record, error) {
	if c.file == t.File && c.seg >= t.SegSize {
		return Record{}, c.atTail()
	}
	if c.file > t.File {
		return Record{}, c.atTail()
	}
	rec := Record{File: c.file, Pos: c.served}
	var hdr [recordHeaderLen]byte
	for {
		if c.file == t.File && c.seg >= t.SegSize {
			return Record{}, c.atTail()
		}
		if err := c.ensurePart(t); err != nil {
			return Record{}, err
		}
		off := int64(c.seg - partStart(c.starts, c.part))
		h, payload, err := c.record(t, off, &hdr)
		if err != nil {
			return Record{}, err
		}
		if h.Type == recIndex {
			// Serves nothing, but damage in it is damage to this replica's copy.
			c.seg += uint64(recordHeaderLen) + uint64(h.Len)
			continue
		}
		c.seg += uint64(recordHeaderLen) + uint64(h.Len)
		c.served += uint64(h.Len)
		rec.Payload, rec.Type = payload, h.Type
		rec.Continued, rec.Continues = c.inTxn, h.Type == recPart
		c.inTxn = rec.Continues
		break
	}
	if rec.Type == recRotate {
		c.closeFile()
		c.file++
		c.final = false
		c.g.setReading(c, c.file)
		c.seg, c.served = 0, 4
		if c.file <= t.File {
			if err := c.open(t); err != nil {
				return Record{}, err
			}
		}
	}
	return rec, nil
}

// record reads and checks the record at off of the current part, or takes it from the
// store's record cache: a large record that other cursors in the same file may read
// too is read once for all of them (see recordCache).
func (c *Cursor) record(t Tail, off int64, hdr *[recordHeaderLen]byte) (recordHeader, []byte, error) {
	c.drop() // the last record's payload is no longer the caller's
	rc := c.g.store.records
	k := recordKey{gen: c.gen, file: c.file, part: c.part, off: off}
	if c.gen != 0 && rc.max > 0 && rc.count.Load() > 0 && !c.smallInWindow(off) {
		if e := rc.lookup(k); e != nil {
			if h, payload, ok := rc.wait(e); ok {
				c.held = e
				return h, payload, nil
			}
		}
	}
	b, err := c.read(t, off, recordHeaderLen)
	if err != nil {
		return recordHeader{}, nil, c.corrupt("read record header", err)
	}
	copy(hdr[:], b) // the payload's read may move the window
	h, err := parseRecordHeader(hdr[:])
	if err != nil {
		return recordHeader{}, nil, c.corrupt("parse record header", err)
	}
	if c.gen != 0 && rc.max > 0 && h.Len >= minCachedRecord && c.g.readersIn(c.file) > 1 {
		e, mine := rc.claim(k)
		if !mine {
			if h, payload, ok := rc.wait(e); ok {
				c.held = e
				return h, payload, nil
			}
		} else {
			return c.fillRecord(t, off, hdr, h, e)
		}
	}
	payload, err := c.read(t, off+recordHeaderLen, int(h.Len))
	if err != nil {
		return recordHeader{}, nil, c.corrupt("read record payload", err)
	}
	if err := verifyRecord(hdr[:], h, payload); err != nil {
		return recordHeader{}, nil, c.corrupt("verify record", err)
	}
	return h, payload, nil
}

// fillRecord reads and checks the record the cursor claimed in the record cache, and
// fills the entry whatever happens (a panic included: its waiters read for
// themselves then), so that no waiter waits forever.
func (c *Cursor) fillRecord(t Tail, off int64, hdr *[recordHeaderLen]byte, h recordHeader, e *cachedRecord) (_ recordHeader, payload []byte, err error) {
	rc := c.g.store.records
	filled := false
	var buf []byte
	defer func() {
		if !filled {
			rc.fill(e, h, nil, buf)
			rc.release(e)
		}
	}()
	buf = rc.buffer(int(h.Len))
	payload, err = c.readInto(t, off+recordHeaderLen, int(h.Len), buf)
	if err == nil {
		err = verifyRecord(hdr[:], h, payload)
	}
	if err != nil {
		return recordHeader{}, nil, c.corrupt("read and verify record payload", err)
	}
	rc.fill(e, h, payload, nil)
	filled = true
	c.held = e
	return h, payload, nil
}

// smallInWindow reports whether the window already holds the header at off and it
// names a record too small for the record cache: such a record is read as before,
// without the cache's lock.
func (c *Cursor) smallInWindow(off int64) bool {
	if off < c.winOff || off+recordHeaderLen > c.winOff+int64(len(c.win)) {
		return false
	}
	return binary.LittleEndian.Uint32(c.win[off-c.winOff:]) < minCachedRecord
}

func (c *Cursor) corrupt(what string, err error) error {
	path := c.g.partPath(c.file, c.part)
	off := c.seg - partStart(c.starts, c.part)
	c.g.log.Error("corrupt segment record", "file", path, "offset", off, "what", what, "err", err)
	return fmt.Errorf("%w: group %d, file %s (segment %s) at offset %d: %s: %v; this replica must be rebuilt from a peer",
		ErrCorrupt, c.g.id, FileName(c.file), path, off, what, err)
}

// TxnGTID returns the GTID of a transaction record (its first event); a MySQL
// transaction's is the GTID the group indexes it under (binlog.MySQLGTID.Indexed).
func TxnGTID(payload []byte) (binlog.GTID, bool) {
	if mg, ok := TxnMySQLGTID(payload); ok {
		return mg.Indexed(), true
	}
	if len(payload) < binlog.HeaderLen || payload[4] != binlog.MariaGTIDEvent {
		return binlog.GTID{}, false
	}
	size := int(binary.LittleEndian.Uint32(payload[9:]))
	if size > len(payload) {
		return binlog.GTID{}, false
	}
	e, err := binlog.ParseGTIDEvent(payload[:size])
	if err != nil {
		return binlog.GTID{}, false
	}
	return e.GTID, true
}

// TxnMySQLGTID returns the MySQL GTID of a transaction record of a MySQL-flavor
// group (its first event).
func TxnMySQLGTID(payload []byte) (binlog.MySQLGTID, bool) {
	if len(payload) < binlog.HeaderLen || payload[4] != binlog.MySQLGTIDEvent && payload[4] != binlog.MySQLGTIDTaggedEvent {
		return binlog.MySQLGTID{}, false
	}
	size := int(binary.LittleEndian.Uint32(payload[9:]))
	if size > len(payload) {
		return binlog.MySQLGTID{}, false
	}
	g, err := binlog.ParseMySQLGTIDEvent(payload[:size])
	return g, err == nil
}

// Closed reports whether the group has been closed (stopped or removed on this node).
func (g *Group) Closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}
