package statemachine

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-relay/flotilla/internal/hugepage"
)

// recordCache holds the checked payloads of large records that cursors read lately,
// shared by every cursor of a store: replicas reading the same stretch of a group's
// binlog (many catching up at once, or following its tail) read each large record
// from its segment and check its CRC once, not once each. Reading and checking were
// two fifths of a node's CPU serving 32 replicas.
//
// Invariants:
//   - An entry holds a whole record, read below the committed tail (where bytes never
//     change) and checked against its CRC. Its key names the group's generation,
//     which a snapshot recovery renews (see Group.gen), so files a recovery installs
//     never answer with their predecessors' bytes.
//   - Payloads are never written once published: cursors hand them out read-only.
//   - The payload bytes held stay within max (a buffer is at most its payload
//     rounded up to bufferStep); an entry is evicted least recently used first,
//     and one larger than max is never kept.
//   - At most one cursor reads a missing record; the others wait for it. A failed read
//     is not cached: each waiter then reads for itself and reports its own error.
//   - An entry unused for maxIdle is dropped (by a timer armed while entries are
//     held): a fan-out that ended does not keep its records.
//   - A payload's buffer is reused for another record only once its entry has left
//     the cache and no cursor holds it (refs, counted under mu: a cursor holds the
//     record it returned until its next Next or Close). Reusing them keeps a
//     fan-out's reads in memory the process already has: on a VM whose fresh pages
//     are slow to fault in, reading every record into a new buffer cost more than
//     sending it.
//   - A new buffer of hugeBufferMin or more is advised as transparent huge pages
//     right after it is made (see package hugepage): memory fresh from the OS is
//     then faulted in 2 MiB at a time. On the test VM a fan-out to 8 replicas took
//     1,900-14,700 page faults in 4 KiB pages, most of them in its reads (a fifth
//     of the node's CPU in a profile of the worst); 60-1,800 with the advice.
type recordCache struct {
	max     int64
	maxIdle time.Duration
	advisor adviser

	mu    sync.Mutex
	size  int64
	m     map[recordKey]*cachedRecord
	lru   list.List   // of *cachedRecord, the most recently used first; ready ones only
	sweep *time.Timer // armed while lru holds entries
	// free holds buffers of evicted records that no cursor holds, for the next
	// reads; freeBytes is their capacity in all, at most max/maxFreeShare, or one
	// buffer of up to half the cache (see recycle).
	free      [][]byte
	freeBytes int64

	hits, misses atomic.Uint64
	// count is how many entries m holds (read without the lock: an empty cache
	// costs a cursor no lock).
	count atomic.Int64
}

// recordKey names a record: the group's generation, served file, part and offset.
type recordKey struct {
	gen, file uint64
	part      int
	off       int64
}

// cachedRecord is a record being read (ready open) or read (ready closed; payload nil
// if the read failed).
type cachedRecord struct {
	key     recordKey
	ready   chan struct{}
	h       recordHeader
	payload []byte
	elem    *list.Element
	used    time.Time // when last handed out
	// refs counts the cursors that hold the entry (its reader included), out
	// whether it has left the cache; the last release of an entry out recycles its
	// buffer. Both under recordCache.mu.
	refs int
	out  bool
}

// maxFreeShare bounds the recycled buffers a cache keeps: a fraction of its size.
const maxFreeShare = 4

// DefaultRecordCache is the default bound of a store's record cache (record_cache).
// Replicas catching up at once drift apart: with 8 or 32 of them reading a binlog of
// 4 MiB pieces, 32 MiB served half of the reads, 128 MiB nine in ten.
const DefaultRecordCache = 128 << 20

// recordIdle is how long an unused record stays cached.
const recordIdle = 10 * time.Second

// minCachedRecord is the smallest record cached: a smaller one shares its read with
// its neighbours already (a cursor reads cursorWindow at once), and its CRC costs
// less than a lookup would save.
const minCachedRecord = cursorWindow + 1

func newRecordCache(max int64) *recordCache {
	return &recordCache{max: max, maxIdle: recordIdle, advisor: hugepage.NewAdvisor(), m: map[recordKey]*cachedRecord{}}
}

// lookup returns the entry for k, if any, held for the caller (see release).
func (rc *recordCache) lookup(k recordKey) *cachedRecord {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	e := rc.m[k]
	if e != nil {
		e.refs++
		if e.elem != nil {
			rc.lru.MoveToFront(e.elem)
			e.used = time.Now()
		}
	}
	return e
}

// claim returns the entry for k, held for the caller, and whether the caller must
// read it (then it must call fill, whatever happens).
func (rc *recordCache) claim(k recordKey) (*cachedRecord, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if e := rc.m[k]; e != nil {
		e.refs++
		return e, false
	}
	e := &cachedRecord{key: k, ready: make(chan struct{}), refs: 1}
	rc.m[k] = e
	rc.count.Add(1)
	rc.misses.Add(1)
	return e, true
}

// buffer returns a buffer of n bytes for a claimed record's payload: the smallest
// recycled one that fits, unless it is larger than n rounds to (the bound on the
// cache counts payload bytes, so a buffer may exceed its payload by little).
func (rc *recordCache) buffer(n int) []byte {
	rc.mu.Lock()
	best := -1
	for i, b := range rc.free {
		if cap(b) >= n && cap(b) <= roundBuffer(n) && (best < 0 || cap(b) < cap(rc.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		b := rc.free[best]
		last := len(rc.free) - 1
		rc.free[best], rc.free[last] = rc.free[last], nil
		rc.free = rc.free[:last]
		rc.freeBytes -= int64(cap(b))
		rc.mu.Unlock()
		return b[:n]
	}
	rc.mu.Unlock()
	return rc.newBuffer(n)
}

// newBuffer makes a read buffer of n bytes, its capacity rounded (see roundBuffer),
// advised as huge pages from hugeBufferMin on (see the type's invariants). Cursors
// take their own large buffers from it too.
func (rc *recordCache) newBuffer(n int) []byte {
	b := make([]byte, n, roundBuffer(n))
	if cap(b) >= hugeBufferMin {
		// A hint: where the kernel refuses it the buffer serves the same, in small
		// pages (a node logs the kernel's answer to its pretouch's advice at start).
		_ = rc.advisor.Advise(b)
	}
	return b
}

// hugeBufferMin is the smallest buffer advised as huge pages: advice is never taken
// back (see package hugepage), and a range rounded out to huge pages covers up to
// twice what such a buffer holds (a large heap object is aligned to 8 KiB only), so
// only buffers of at least a huge page get it.
const hugeBufferMin = hugepage.Size

// adviser gives memory advice (hugepage.Advisor; tests record what it is asked).
type adviser interface {
	Advise(bufs ...[]byte) error
}

// bufferStep rounds the capacity of large read buffers: records of nearly the same
// size (a large transaction's pieces differ by an event's cut) then fit each
// other's buffers, which an exact size would refuse half the time.
const bufferStep = 256 << 10

// roundBuffer is n rounded up to a multiple of bufferStep, if above it.
func roundBuffer(n int) int {
	if n <= bufferStep {
		return n
	}
	return (n + bufferStep - 1) / bufferStep * bufferStep
}

// recycle keeps b for a later record, within the bound on recycled bytes (the
// smallest buffers go first). A buffer above that bound but not above half the cache
// is kept only alone: when nothing else is kept, or in place of another such lone
// buffer (the newest is likeliest the next claim's size), never at the cost of a
// buffer within the bound. That lone buffer is what a small cache's claims live on:
// a claim takes its buffer before its fill evicts the oldest record, whose buffer
// comes back then (or at its last reader's release) for a later claim of its size.
// With a 16 MiB cache and records of a little over 4 MiB (a large transaction's
// pieces), no buffer was ever kept, and three replicas reading an 800 MiB
// transaction allocated 1.6 GiB. rc.mu is held.
func (rc *recordCache) recycle(b []byte) {
	if b == nil || rc.sweep == nil || int64(cap(b)) > rc.max/2 {
		return // nothing to keep, the cache is idle (or stopped), or b is too large
	}
	share := rc.max / maxFreeShare
	if len(rc.free) == 1 && int64(cap(rc.free[0])) > share {
		rc.free[0], rc.free, rc.freeBytes = nil, rc.free[:0], 0 // the lone large one gives way
	}
	if int64(cap(b)) > share {
		if len(rc.free) == 0 {
			rc.free = append(rc.free, b[:0])
			rc.freeBytes = int64(cap(b))
		}
		return
	}
	if rc.freeBytes+int64(cap(b)) > share && len(rc.free) > 0 {
		small := 0
		for i, f := range rc.free {
			if cap(f) < cap(rc.free[small]) {
				small = i
			}
		}
		if cap(rc.free[small]) < cap(b) {
			rc.freeBytes -= int64(cap(rc.free[small]))
			rc.free[small] = rc.free[len(rc.free)-1]
			rc.free[len(rc.free)-1] = nil
			rc.free = rc.free[:len(rc.free)-1]
		}
	}
	if rc.freeBytes+int64(cap(b)) <= share {
		rc.free = append(rc.free, b[:0])
		rc.freeBytes += int64(cap(b))
	}
}

// release gives up the caller's hold on e, taken by lookup or claim.
func (rc *recordCache) release(e *cachedRecord) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	e.refs--
	if e.refs == 0 && e.out {
		rc.recycle(e.payload)
	}
}

// fill completes a claimed entry: with its checked payload, or with nil if the read
// failed (the entry is dropped, and buf, the buffer the read used, recycled).
func (rc *recordCache) fill(e *cachedRecord, h recordHeader, payload, buf []byte) {
	rc.mu.Lock()
	e.h, e.payload = h, payload
	if payload == nil {
		delete(rc.m, e.key)
		rc.count.Add(-1)
		rc.recycle(buf)
	} else if int64(len(payload)) > rc.max {
		delete(rc.m, e.key)
		rc.count.Add(-1)
		e.out = true
	} else {
		e.elem, e.used = rc.lru.PushFront(e), time.Now()
		rc.size += int64(len(payload))
		for rc.size > rc.max {
			rc.evict(rc.lru.Back())
		}
		if rc.sweep == nil {
			rc.sweep = time.AfterFunc(rc.maxIdle, rc.dropIdle)
		}
	}
	rc.mu.Unlock()
	close(e.ready)
}

// evict drops the ready entry at el. rc.mu is held.
func (rc *recordCache) evict(el *list.Element) {
	e := rc.lru.Remove(el).(*cachedRecord)
	delete(rc.m, e.key)
	rc.count.Add(-1)
	rc.size -= int64(len(e.payload))
	e.out = true
	if e.refs == 0 {
		rc.recycle(e.payload)
	}
}

// dropIdle drops the entries unused for maxIdle, and runs again while any are left.
func (rc *recordCache) dropIdle() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.sweep == nil {
		return // stopped
	}
	now := time.Now()
	for el := rc.lru.Back(); el != nil && now.Sub(el.Value.(*cachedRecord).used) >= rc.maxIdle; el = rc.lru.Back() {
		rc.evict(el)
	}
	if el := rc.lru.Back(); el != nil {
		rc.sweep.Reset(rc.maxIdle - now.Sub(el.Value.(*cachedRecord).used))
		return
	}
	rc.sweep = nil
	rc.free, rc.freeBytes = nil, 0 // idle: keep no buffers either
}

// stop ends the idle timer (the store is closing).
func (rc *recordCache) stop() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.sweep != nil {
		rc.sweep.Stop()
		rc.sweep = nil
	}
	rc.free, rc.freeBytes = nil, 0
}

// wait returns the entry's record once it is read, or false if its read failed (the
// hold on e is then released).
func (rc *recordCache) wait(e *cachedRecord) (recordHeader, []byte, bool) {
	<-e.ready
	if e.payload == nil {
		rc.release(e)
		return recordHeader{}, nil, false
	}
	rc.hits.Add(1)
	return e.h, e.payload, true
}

// RecordCacheStats reports how many large records cursors took from the shared cache
// (hits) and read themselves for it (misses), for tests and benchmarks.
func (s *Store) RecordCacheStats() (hits, misses uint64) {
	return s.records.hits.Load(), s.records.misses.Load()
}
