package statemachine

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"
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
//   - The payload bytes held stay within max; an entry is evicted least recently used
//     first, and one larger than max is never kept.
//   - At most one cursor reads a missing record; the others wait for it. A failed read
//     is not cached: each waiter then reads for itself and reports its own error.
//   - An entry unused for maxIdle is dropped (by a timer armed while entries are
//     held): a fan-out that ended does not keep its records.
type recordCache struct {
	max     int64
	maxIdle time.Duration

	mu    sync.Mutex
	size  int64
	m     map[recordKey]*cachedRecord
	lru   list.List   // of *cachedRecord, the most recently used first; ready ones only
	sweep *time.Timer // armed while lru holds entries

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
}

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
	return &recordCache{max: max, maxIdle: recordIdle, m: map[recordKey]*cachedRecord{}}
}

// lookup returns the entry for k, if any.
func (rc *recordCache) lookup(k recordKey) *cachedRecord {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	e := rc.m[k]
	if e != nil && e.elem != nil {
		rc.lru.MoveToFront(e.elem)
		e.used = time.Now()
	}
	return e
}

// claim returns the entry for k and whether the caller must read it (then it must
// call fill, whatever happens).
func (rc *recordCache) claim(k recordKey) (*cachedRecord, bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if e := rc.m[k]; e != nil {
		return e, false
	}
	e := &cachedRecord{key: k, ready: make(chan struct{})}
	rc.m[k] = e
	rc.count.Add(1)
	rc.misses.Add(1)
	return e, true
}

// fill completes a claimed entry: with its checked payload, or with nil if the read
// failed (the entry is dropped).
func (rc *recordCache) fill(e *cachedRecord, h recordHeader, payload []byte) {
	rc.mu.Lock()
	e.h, e.payload = h, payload
	if payload == nil || int64(len(payload)) > rc.max {
		delete(rc.m, e.key)
		rc.count.Add(-1)
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
}

// stop ends the idle timer (the store is closing).
func (rc *recordCache) stop() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.sweep != nil {
		rc.sweep.Stop()
		rc.sweep = nil
	}
}

// wait returns the entry's record once it is read, or false if its read failed.
func (rc *recordCache) wait(e *cachedRecord) (recordHeader, []byte, bool) {
	<-e.ready
	if e.payload == nil {
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
