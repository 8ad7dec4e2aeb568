package statemachine

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/hugepage"
)

// largeRow makes every transaction a record the cache keeps.
const largeRow = minCachedRecord + 1000

// appendLarge appends a served file with n large transactions in domain dom.
func appendLarge(h *harness, dom uint32, n int) {
	h.t.Helper()
	ep := h.claim()
	items := []Item{newFile("m.1", binlog.Position{})}
	for i := 1; i <= n; i++ {
		items = append(items, txn(binlog.GTID{Domain: dom, Server: testServer, Seq: uint64(i)}, largeRow))
	}
	h.mustAppend(&Append{Epoch: ep, Items: items})
	if err := h.g.Sync(); err != nil {
		h.t.Fatal(err)
	}
}

// readTogether opens n cursors at the start of file 1 and reads them to the tail at
// once; it returns each cursor's payloads (copied) or its error.
func readTogether(t *testing.T, g *Group, n int) ([][][]byte, []error) {
	t.Helper()
	curs := make([]*Cursor, n)
	for i := range curs {
		c, err := g.NewCursor(Start{File: 1, Served: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		curs[i] = c
	}
	tail, _ := g.Tail()
	got := make([][][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range curs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := c.Next(tail)
				if errors.Is(err, ErrAtTail) {
					return
				}
				if err != nil {
					errs[i] = err
					return
				}
				got[i] = append(got[i], bytes.Clone(r.Payload))
			}
		}()
	}
	wg.Wait()
	return got, errs
}

// TestSharedRecordsAreReadOnce: cursors reading the same file at once each get every
// record whole and in order, and each large record is read from its segment once.
func TestSharedRecordsAreReadOnce(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	const txns = 6
	appendLarge(h, 0, txns)
	want := readAll(t, h.g, Start{File: 1, Served: 4}) // alone: nothing shared
	if hits, misses := h.store.RecordCacheStats(); hits+misses != 0 {
		t.Fatalf("a lone cursor used the cache: %d hits, %d misses", hits, misses)
	}
	const readers = 4
	got, errs := readTogether(t, h.g, readers)
	for i := range readers {
		if errs[i] != nil {
			t.Fatalf("cursor %d: %v", i, errs[i])
		}
		if len(got[i]) != len(want) {
			t.Fatalf("cursor %d read %d records, want %d", i, len(got[i]), len(want))
		}
		for k := range want {
			if !bytes.Equal(got[i][k], want[k].Payload) {
				t.Fatalf("cursor %d, record %d differs from a lone cursor's", i, k)
			}
		}
	}
	hits, misses := h.store.RecordCacheStats()
	if misses != txns || hits != (readers-1)*txns {
		t.Fatalf("record cache: %d hits and %d misses, want %d and %d (each large record read once)", hits, misses, (readers-1)*txns, txns)
	}
}

// TestSharedCorruptRecordFailsEachReader: a record that fails its check is not
// shared; every cursor reports the corruption itself.
func TestSharedCorruptRecordFailsEachReader(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	appendLarge(h, 0, 3)
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	// A byte inside the second transaction's row event.
	off := int64(len(recs[0].Payload)+len(recs[1].Payload)) + 3*recordHeaderLen + 1000
	f, err := os.OpenFile(h.g.segPath(1), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, errs := readTogether(t, h.g, 3)
	for i, err := range errs {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cursor %d: want a corruption error, got %v", i, err)
		}
		if len(got[i]) != 2 { // the header and the first transaction
			t.Fatalf("cursor %d read %d records before the damaged one, want 2", i, len(got[i]))
		}
	}
}

// TestRecoveryRenewsCachedRecords: after a snapshot recovery replaces a group's
// files, cursors read the new files, never the old bytes still cached at the same
// places.
func TestRecoveryRenewsCachedRecords(t *testing.T) {
	dst := newHarness(t, t.TempDir())
	defer dst.close()
	appendLarge(dst, 0, 3)
	if _, errs := readTogether(t, dst.g, 2); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	src := newHarness(t, t.TempDir())
	defer src.close()
	appendLarge(src, 7, 3) // the same sizes and places, another domain
	before := dst.g.gen.Load()
	snapshotInto(t, src, dst)
	if g := dst.g.gen.Load(); g == before || g%2 != 0 {
		t.Fatalf("generation %d after recovery (was %d): want a new, even one", g, before)
	}
	got, errs := readTogether(t, dst.g, 2)
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("cursor %d: %v", i, errs[i])
		}
		n := 0
		for _, p := range got[i] {
			if id, ok := TxnGTID(p); ok {
				n++
				if id.Domain != 7 {
					t.Fatalf("cursor %d read transaction %v of the replaced files", i, id)
				}
			}
		}
		if n != 3 {
			t.Fatalf("cursor %d read %d transactions, want 3", i, n)
		}
	}
}

// TestRecordCacheBound: the bytes held stay within the bound, the least recently
// used go first, and a record larger than the bound is not kept.
func TestRecordCacheBound(t *testing.T) {
	rc := newRecordCache(1000)
	put := func(off int64, n int) {
		e, mine := rc.claim(recordKey{gen: 2, file: 1, off: off})
		if !mine {
			t.Fatalf("record at %d claimed twice", off)
		}
		rc.fill(e, recordHeader{Len: uint32(n)}, make([]byte, n), nil)
	}
	has := func(off int64) bool { return rc.lookup(recordKey{gen: 2, file: 1, off: off}) != nil }
	put(0, 400)
	put(400, 400)
	has(0) // used: 400 is now the least recent
	put(800, 400)
	if rc.size > rc.max || !has(0) || has(400) || !has(800) {
		t.Fatalf("after 3 records of 400 in 1000: size %d, has 0 %v, 400 %v, 800 %v; want 800, true, false, true", rc.size, has(0), has(400), has(800))
	}
	put(1200, 1001)
	if has(1200) || rc.size != 800 {
		t.Fatalf("a record over the bound was kept (size %d)", rc.size)
	}
	e, _ := rc.claim(recordKey{gen: 2, file: 1, off: 5000})
	rc.fill(e, recordHeader{}, nil, nil)
	if has(5000) {
		t.Fatal("a failed read was kept")
	}
	if _, _, ok := rc.wait(e); ok {
		t.Fatal("a waiter on a failed read was given a record")
	}
}

// TestHeldRecordIsNotReused: a record a cursor holds keeps its bytes while other
// cursors push it out of the cache and read on (reusing the buffers of records nobody
// holds); once released, its buffer serves a later record.
func TestHeldRecordIsNotReused(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	h.store.SetRecordCache(8 * largeRow) // a few records (in rounded buffers); one recycled buffer
	appendLarge(h, 0, 12)
	tail, _ := h.g.Tail()
	open := func() *Cursor {
		c, err := h.g.NewCursor(Start{File: 1, Served: 4})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := open(), open()
	defer c1.Close()
	defer c2.Close()
	var held []byte
	for held == nil {
		r, err := c1.Next(tail)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Payload) >= minCachedRecord {
			held = r.Payload
		}
	}
	want := bytes.Clone(held)
	for {
		if _, err := c2.Next(tail); errors.Is(err, ErrAtTail) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(held, want) {
		t.Fatal("a record held by a cursor was overwritten by another record's read")
	}
	for {
		if _, err := c1.Next(tail); errors.Is(err, ErrAtTail) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if c1.held != nil {
		t.Fatal("a cursor waiting at the tail still holds a cached record")
	}
	rc := h.store.records
	rc.mu.Lock()
	free := len(rc.free)
	rc.mu.Unlock()
	if free == 0 {
		t.Fatal("no buffer was recycled although records nobody held left the cache")
	}
}

// TestRecordCacheRecyclesReleasedBuffers: an evicted record's buffer is reused only
// after its last holder released it, and within the bound on recycled bytes.
func TestRecordCacheRecyclesReleasedBuffers(t *testing.T) {
	rc := newRecordCache(1000) // holds four records of 240; recycles one buffer
	defer rc.stop()
	put := func(off int64) *cachedRecord {
		e, _ := rc.claim(recordKey{gen: 2, file: 1, off: off})
		rc.fill(e, recordHeader{Len: 240}, rc.buffer(240), nil)
		return e
	}
	first := put(0) // held by its reader
	for off := int64(1); off <= 4; off++ {
		rc.release(put(off)) // evicts the first at the fifth
	}
	if rc.lookup(recordKey{gen: 2, file: 1, off: 0}) != nil {
		t.Fatal("the first record is still cached after four more")
	}
	if b := rc.buffer(240); &b[0] == &first.payload[0] {
		t.Fatal("the buffer of a record still held was handed out again")
	}
	rc.release(first)
	if b := rc.buffer(240); &b[0] != &first.payload[0] {
		t.Fatal("a released, evicted record's buffer was not reused")
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.recycle(make([]byte, 240))
	rc.recycle(make([]byte, 240))
	if rc.freeBytes > rc.max/maxFreeShare {
		t.Fatalf("%d recycled bytes kept, over the bound %d", rc.freeBytes, rc.max/maxFreeShare)
	}
}

// TestSmallCacheRecyclesOneLargeBuffer: a buffer larger than a quarter of the cache
// (the bound on recycled bytes) but not half of it is still kept when no other is:
// a small cache's claims take it, where they allocated a buffer each before.
func TestSmallCacheRecyclesOneLargeBuffer(t *testing.T) {
	rc := newRecordCache(1000) // recycles up to 250 bytes, or one buffer up to 500
	defer rc.stop()
	put := func(off int64) *cachedRecord {
		e, _ := rc.claim(recordKey{gen: 2, file: 1, off: off})
		rc.fill(e, recordHeader{Len: 300}, rc.buffer(300), nil)
		return e
	}
	first := put(0)
	rc.release(first)
	for off := int64(1); off <= 3; off++ {
		rc.release(put(off)) // the fourth evicts the first
	}
	if b := rc.buffer(300); &b[0] != &first.payload[0] {
		t.Fatal("the evicted record's buffer, above a quarter of the cache, was not kept for the next claim")
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.recycle(make([]byte, 300))
	newest := make([]byte, 320)
	rc.recycle(newest)
	if len(rc.free) != 1 || &rc.free[0][:1][0] != &newest[:1][0] {
		t.Fatalf("%d buffers above the bound kept, want one, the newest", len(rc.free))
	}
	rc.recycle(make([]byte, 600))
	if len(rc.free) != 1 || cap(rc.free[0]) != 320 {
		t.Fatal("a buffer above half the cache was kept")
	}
	rc.recycle(make([]byte, 200)) // within the bound: takes the lone large one's place
	rc.recycle(make([]byte, 300)) // above it: never at the cost of one within
	if len(rc.free) != 1 || cap(rc.free[0]) != 200 {
		t.Fatalf("free buffers of %d bytes, want one of 200", cap(rc.free[0]))
	}
}

// TestRecordCacheDropsIdleRecords: records nobody used for maxIdle are dropped, so a
// fan-out that ended does not keep its memory.
func TestRecordCacheDropsIdleRecords(t *testing.T) {
	rc := newRecordCache(1 << 20)
	rc.maxIdle = 20 * time.Millisecond
	defer rc.stop()
	for off := range int64(3) {
		e, _ := rc.claim(recordKey{gen: 2, file: 1, off: off})
		rc.fill(e, recordHeader{}, make([]byte, 100), nil)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		rc.mu.Lock()
		size, n, armed := rc.size, len(rc.m), rc.sweep != nil
		rc.mu.Unlock()
		if size == 0 && n == 0 && !armed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s, %d records (%d bytes) are still cached (timer armed: %v)", n, size, armed)
		}
	}
}

// panicAfter is a segment reader whose reads after the first n panic.
type panicAfter struct {
	segmentReader
	n int
}

func (p *panicAfter) ReadAt(b []byte, off int64) (int, error) {
	if p.n--; p.n < 0 {
		panic("injected read panic")
	}
	return p.segmentReader.ReadAt(b, off)
}

// TestClaimerPanicFreesWaiters: a cursor that panics while reading a record it
// claimed (a bug, recovered per connection by the MySQL front end) leaves no entry
// behind that another cursor would wait on forever.
func TestClaimerPanicFreesWaiters(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	appendLarge(h, 0, 2)
	c1, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c1.f = &panicAfter{segmentReader: c1.f, n: 1} // the window's read, then the payload's panics
	tail, _ := h.g.Tail()
	if _, err := c1.Next(tail); err != nil { // the file's header record
		t.Fatal(err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the injected panic did not happen")
			}
		}()
		_, _ = c1.Next(tail) // claims the large record, panics reading it
	}()
	done := make(chan error, 1)
	go func() {
		for {
			r, err := c2.Next(tail)
			if errors.Is(err, ErrAtTail) {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
			_ = r
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cursor still waits for a record whose reader panicked")
	}
}

// thpMode returns the kernel's transparent huge page setting, with GODEBUG cleared for
// the test (an advisor made after it gives advice wherever the kernel takes it); a
// kernel without one skips the test outside CI and fails it in CI (which runs on
// Linux with it).
func thpMode(t *testing.T) string {
	t.Helper()
	mode := hugepage.Mode()
	if mode == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("cannot read the kernel's transparent huge page setting (/sys/kernel/mm/transparent_hugepage/enabled): CI runs on Linux with it")
		}
		t.Skip("this kernel has no transparent huge pages: nothing to advise")
	}
	t.Setenv("GODEBUG", "")
	return mode
}

// TestLargeRecordBuffersAreAdvisedHuge: a new buffer for a large record is advised as
// transparent huge pages where the kernel takes advice: so filling the cache faults
// its memory in 2 MiB at a time.
func TestLargeRecordBuffersAreAdvisedHuge(t *testing.T) {
	mode := thpMode(t)
	rc := newRecordCache(64 << 20)
	defer rc.stop()
	large := rc.buffer(4 << 20)
	got, err := hugepage.Advised(large)
	if err != nil {
		t.Fatal(err)
	}
	if want := mode == "madvise"; got != want {
		t.Fatalf("transparent_hugepage %q: a 4 MiB record buffer's mapping advised = %v, want %v", mode, got, want)
	}
	runtime.KeepAlive(large)
}

// recordingAdviser records the buffers it is asked to advise.
type recordingAdviser struct {
	mu   sync.Mutex
	bufs [][]byte
}

func (r *recordingAdviser) Advise(bufs ...[]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bufs = append(r.bufs, bufs...)
	return nil
}

// TestLoneCursorBufferIsAdvisedHuge: a cursor reading a large record alone (no other
// reader in its file, so not through the cache) reads it into a buffer it had
// advised as huge pages, as the cache's own are; the buffer of a 1.5 MiB record
// before it, under hugeBufferMin, is not advised.
func TestLoneCursorBufferIsAdvisedHuge(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	rec := &recordingAdviser{}
	h.store.records.advisor = rec // before any cursor reads
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(binlog.GTID{Server: testServer, Seq: 1}, 3<<19),
		txn(binlog.GTID{Server: testServer, Seq: 2}, 3<<20)}})
	c, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tail, _ := h.g.Tail()
	for {
		r, err := c.Next(tail)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Payload) >= 3<<20 {
			break
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.bufs) != 1 || cap(rec.bufs[0]) != cap(c.big) || &rec.bufs[0][:1][0] != &c.big[:1][0] {
		caps := make([]int, len(rec.bufs))
		for i, b := range rec.bufs {
			caps[i] = cap(b)
		}
		t.Fatalf("after a 1.5 MiB and a 3 MiB record the cursor reads into a %d-byte buffer; advised buffers of %v bytes, want exactly that one", cap(c.big), caps)
	}
}

// countingReader is a segment reader that counts the bytes read through it.
type countingReader struct {
	segmentReader
	n *int64
}

func (r countingReader) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.segmentReader.ReadAt(b, off)
	*r.n += int64(n)
	return n, err
}

// TestCursorsInStepReadLargeRecordsOnce: two cursors reading a file in step, small
// and large transactions in turn, read the large ones once between them: the one that
// takes them from the cache reads little of the next one ahead (sharedWindow) once it
// has taken one, not a whole window each time (once half as much again as the
// records on a fan-out to 8).
func TestCursorsInStepReadLargeRecordsOnce(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	const large, pairs = 1 << 20, 4
	ep := h.claim()
	items := []Item{newFile("m.1", binlog.Position{})}
	for i := 1; i <= pairs; i++ {
		items = append(items,
			txn(binlog.GTID{Server: testServer, Seq: uint64(2*i - 1)}, 100),
			txn(binlog.GTID{Server: testServer, Seq: uint64(2 * i)}, large))
	}
	h.mustAppend(&Append{Epoch: ep, Items: items})
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	tail, _ := h.g.Tail()
	var curs [2]*Cursor
	var read [2]int64
	for i := range curs {
		c, err := h.g.NewCursor(Start{File: 1, Served: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.f = countingReader{c.f, &read[i]}
		curs[i] = c
	}
	for done := 0; done < len(curs); {
		done = 0
		for _, c := range curs {
			if _, err := c.Next(tail); errors.Is(err, ErrAtTail) {
				done++
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(tail.PartStarts) > 0 {
		t.Fatalf("the file has %d parts; the test counts one", len(tail.PartStarts))
	}
	// The first large record is read past with a whole window: the cursor learns
	// it shares only when it takes one from the cache.
	extra, most := read[0]+read[1]-int64(tail.SegSize), int64(cursorWindow+pairs*sharedWindow)
	if extra < 0 || extra > most {
		t.Fatalf("the cursors read %d and %d bytes of a %d-byte segment: %d more than it, want at most %d (a whole window, then a shared one per large record)",
			read[0], read[1], tail.SegSize, extra, most)
	}
	t.Logf("the cursors read %d and %d bytes of a %d-byte segment", read[0], read[1], tail.SegSize)
}

// TestCursorBehindSharesLargeRecords: a cursor a file ahead of another reads the large
// records of its file for the record cache, so the one behind takes them from it:
// replicas catching up drift more than a served file apart.
func TestCursorBehindSharesLargeRecords(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	gt := func(i int) binlog.GTID { return binlog.GTID{Server: testServer, Seq: uint64(i)} }
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), largeRow), txn(gt(2), largeRow),
		newFile("m.2", nil), txn(gt(3), largeRow), txn(gt(4), largeRow)}})
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	behind, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer behind.Close()
	want := readAll(t, h.g, Start{File: 1, Served: 4}) // ahead of behind all the way
	got := readAll(t, h.g, Start{File: 1, Served: 4})  // as behind would, later
	if len(got) != len(want) {
		t.Fatalf("read %d records, then %d", len(want), len(got))
	}
	if hits, misses := h.store.RecordCacheStats(); misses != 4 || hits != 4 {
		t.Fatalf("record cache: %d hits and %d misses, want 4 and 4 (the first reader read every large record for the cursor behind it, in file 1 and in file 2)", hits, misses)
	}
}
