package statemachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// ErrAtTail is returned by Cursor.Next when the cursor has read everything committed.
var ErrAtTail = errors.New("at the committed tail")

// ErrCorrupt reports a record that failed its CRC or framing check: the replica stops
// serving at that point rather than send bad data.
var ErrCorrupt = errors.New("corrupt segment")

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
	// sharing: the last large record came from the cache, read by another cursor
	// (see window).
	sharing bool
}

// cursorWindow is how much a cursor reads at once: one read serves many small
// records, and a reader catching up streams closed files in large reads.
const cursorWindow = 256 << 10

// sharedWindow is how much a cursor reads at once while it takes large records from
// the record cache (another cursor read them for it): a full window would read the
// start of the next one for nothing. Replicas reading in step (a fan-out catching up
// on a binlog of 3 MiB rows) read half as much again as the records themselves that
// way, 256 KiB each per large record.
const sharedWindow = 32 << 10

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
// It reads ahead (see window) only up to what t commits in this part: bytes past the
// tail may still be rewritten. What the window already holds of the request is kept,
// so the part is only ever read forward: a compressed part decompresses again from
// an earlier frame (from its start, without a seek table) on any read before its
// last.
func (c *Cursor) read(t Tail, off int64, n int) ([]byte, error) {
	return c.readInto(t, off, n, nil)
}

// window is how far a read that refills the window reads ahead.
func (c *Cursor) window() int64 {
	if c.sharing {
		return sharedWindow
	}
	return cursorWindow
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
	want := c.window()
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
// store's record cache: a large record that other cursors in the same file, or the
// one before, may read too is read once for all of them (see recordCache). While
// the cursor takes its large records from the cache, its windows are sharedWindow.
func (c *Cursor) record(t Tail, off int64, hdr *[recordHeaderLen]byte) (recordHeader, []byte, error) {
	c.drop() // the last record's payload is no longer the caller's
	rc := c.g.store.records
	k := recordKey{gen: c.gen, file: c.file, part: c.part, off: off}
	if c.gen != 0 && rc.max > 0 && rc.count.Load() > 0 && !c.smallInWindow(off) {
		if e := rc.lookup(k); e != nil {
			if h, payload, ok := rc.wait(e); ok {
				c.held, c.sharing = e, true
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
	if h.Len >= minCachedRecord {
		// Read by this cursor, for the cache or for itself: windows go back to
		// reading far ahead.
		c.sharing = false
	}
	if c.gen != 0 && rc.max > 0 && h.Len >= minCachedRecord && c.g.othersBehind(c) {
		e, mine := rc.claim(k)
		if !mine {
			if h, payload, ok := rc.wait(e); ok {
				c.held, c.sharing = e, true
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
	return c.inWindow(off, recordHeaderLen) && binary.LittleEndian.Uint32(c.win[off-c.winOff:]) < minCachedRecord
}

// inWindow reports whether the window holds the n bytes at off.
func (c *Cursor) inWindow(off int64, n int) bool {
	return off >= c.winOff && off+int64(n) <= c.winOff+int64(len(c.win))
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
