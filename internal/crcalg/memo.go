package crcalg

import (
	"sync"
	"sync/atomic"
	"weak"
)

// MemoMin is the smallest slice the memo keeps a checksum for: below it, taking the
// checksum again costs about what remembering it does (a weak pointer, a map entry).
const MemoMin = 64 << 10

// memoSlots is how many checksums the memo keeps, the oldest going first: two per
// large raft entry (its payload's, and the command's the raft log adds for the
// state machine). A checksum is wanted again within moments (the raft log and the transport of one node take
// the same entry within one step of raft), so a few hundred serve every group of a
// busy node; one pushed out early is only taken again.
const memoSlots = 512

// Memo remembers the CRC-32C of large byte slices, so that the raft log and the
// transport of one node take each raft payload's checksum once (see the package
// doc). Safe for concurrent use; a nil *Memo remembers nothing.
type Memo struct {
	mu   sync.Mutex
	m    map[memoKey]*memoEntry
	ring [memoSlots]memoKey
	next int
	// hits counts answers from memory (including waits for a checksum being
	// taken), misses the checksums taken.
	hits, misses atomic.Uint64
}

// memoKey names a slice: its first byte, as a weak pointer, and its length.
type memoKey struct {
	p weak.Pointer[byte]
	n int
}

// memoEntry is a checksum, known once done is closed and ok is set (a computation
// that did not finish leaves ok unset, and its waiters take the checksum themselves).
type memoEntry struct {
	done chan struct{}
	crc  uint32
	ok   bool
}

// NewMemo returns an empty memo.
func NewMemo() *Memo { return &Memo{m: make(map[memoKey]*memoEntry, memoSlots)} }

// Checksum returns the CRC-32C of b, which must not change while it is alive (see
// the package doc): from memory when b was seen before, otherwise taken now and
// remembered. While another caller takes the checksum of the same slice, it waits
// for that caller's result rather than take it a second time.
//
// b must be Go memory (allocated by the Go runtime, or a Go global) when it is
// MemoMin bytes or more: the runtime stops the process, unrecoverably, when asked
// for a weak pointer into memory it does not own (a buffer from mmap or C).
func (m *Memo) Checksum(b []byte) uint32 {
	if m == nil || len(b) < MemoMin {
		return castagnoli.Checksum(b)
	}
	k := memoKey{p: weak.Make(&b[0]), n: len(b)}
	m.mu.Lock()
	if e, ok := m.m[k]; ok {
		m.mu.Unlock()
		<-e.done
		if e.ok {
			m.hits.Add(1)
			return e.crc
		}
		m.misses.Add(1)
		return castagnoli.Checksum(b)
	}
	e := &memoEntry{done: make(chan struct{})}
	m.put(k, e)
	m.mu.Unlock()
	m.misses.Add(1)
	defer func() {
		if !e.ok { // the checksum panicked: forget the entry, release the waiters
			m.forget(k, e)
		}
		close(e.done)
	}()
	e.crc = castagnoli.Checksum(b)
	e.ok = true
	return e.crc
}

// Known returns the CRC-32C of b when the memo holds it, without taking it: for a
// caller that derives what it needs from it (Poly.Part), and would otherwise take a
// checksum of other bytes than b. It waits for a checksum being taken.
func (m *Memo) Known(b []byte) (uint32, bool) {
	if m == nil || len(b) < MemoMin {
		return 0, false
	}
	k := memoKey{p: weak.Make(&b[0]), n: len(b)}
	m.mu.Lock()
	e, ok := m.m[k]
	m.mu.Unlock()
	if !ok {
		return 0, false
	}
	<-e.done // not counted in Stats: those are the checksums the memo's users needed
	return e.crc, e.ok
}

// Remember records crc as the CRC-32C of b, which the caller has just taken or
// checked (the raft transport, reading a payload; the raft log, reading one back).
// b must be Go memory, as for Checksum, and crc must be b's: a wrong one would be
// handed on as b's.
func (m *Memo) Remember(b []byte, crc uint32) {
	if m == nil || len(b) < MemoMin {
		return
	}
	k := memoKey{p: weak.Make(&b[0]), n: len(b)}
	e := &memoEntry{done: make(chan struct{}), crc: crc, ok: true}
	close(e.done)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.m[k]; !ok {
		m.put(k, e)
	}
}

// put adds k, pushing the oldest key out of a full ring. Called with mu held.
func (m *Memo) put(k memoKey, e *memoEntry) {
	if old := m.ring[m.next]; old != (memoKey{}) {
		delete(m.m, old)
	}
	m.ring[m.next] = k
	m.next = (m.next + 1) % memoSlots
	m.m[k] = e
}

// forget removes k if it still names e (the ring keeps the key until its slot is
// reused). Called without mu held.
func (m *Memo) forget(k memoKey, e *memoEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m[k] == e {
		delete(m.m, k)
	}
}

// Stats returns how many checksums the memo answered from memory and how many it
// took.
func (m *Memo) Stats() (hits, misses uint64) {
	if m == nil {
		return 0, 0
	}
	return m.hits.Load(), m.misses.Load()
}
