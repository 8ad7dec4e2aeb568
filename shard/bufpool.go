package shard

import "sync"

// bufPool lends the syncers' large buffers (a proposal's encoding, a large
// transaction's pieces, a large event as its stream reads it) across the node's
// groups. Each is free again once its proposal is in raft: dragonboat copies a
// proposal in Propose, and the pieces and events are read by the pipeline and the
// encoding only, but for the proposal's prefix the pipeline may write into a lent
// buffer before an item's events (pipeline.encode). At hundreds of MB/s a fresh 4
// MiB buffer per piece and per proposal was most of the syncer's allocation;
// pooled, and shared, an idle group keeps none after a burst (sync.Pool lets the
// collector take them).
type bufPool struct{ p sync.Pool }

// pooledMin is the least capacity worth pooling: smaller buffers are a small
// transaction's, cheap to allocate.
const pooledMin = 1 << 20

// get returns an empty buffer of at least size bytes of capacity.
func (b *bufPool) get(size int) []byte {
	if v, ok := b.p.Get().(*[]byte); ok && cap(*v) >= size {
		return (*v)[:0]
	}
	if size >= pooledMin {
		// Rounded up, so that a buffer serves the next request of nearly the same
		// size (a large event's, a piece's remainder) instead of failing it.
		size = (size + poolStep - 1) / poolStep * poolStep
	}
	return make([]byte, 0, size)
}

// poolStep rounds the capacity of the pooled buffers the pools allocate.
const poolStep = 256 << 10

// pooledMax is the largest capacity pooled: a buffer that held an event of several
// packets (tens of MiB, up to 1 GiB) would otherwise circulate as a piece's.
const pooledMax = 16 << 20

// put gives buf back; nothing may use it after.
func (b *bufPool) put(buf []byte) {
	if cap(buf) < pooledMin || cap(buf) > pooledMax {
		return
	}
	buf = buf[:0]
	b.p.Put(&buf)
}
