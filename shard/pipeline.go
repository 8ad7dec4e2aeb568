package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// drain handles the events the master has already sent (the stream buffers them), at
// most drainBatch, proposing whenever a batch fills, and returns how many it took.
func (p *pipeline) drain(ctx context.Context, src eventSource) (int, error) {
	if p.ready == nil {
		p.ready = make([][]byte, 0, drainBatch)
	}
	more := src.buffered(p.ready[:0])
	defer clear(more) // the events go back to the source: hold no reference
	for _, raw := range more {
		if err := p.handle(ctx, raw); err != nil {
			return len(more), err
		}
		p.release(src, raw)
		if p.batchBytes >= p.maxBatch || p.lone {
			if err := p.flush(ctx, true); err != nil {
				return len(more), err
			}
		}
	}
	return len(more), nil
}

// drainBatch is how many events already read drain takes at once: the stream reads
// at most eventReadAhead ahead, so more would rarely be used (each connection of
// each group, idle ones included, keeps the slice).
const drainBatch = 16

// pipeline turns the master's event stream into Append proposals.
type pipeline struct {
	s            *Shard
	raft         proposer
	epoch        uint64
	fl           upstreamFlavor
	upstreamFile string
	// fileServerID is the server_id of the master that opened the current file: a
	// Format_description of another (the source was switched) starts a new file.
	fileServerID uint32
	hasFile      bool
	pendingName  string
	checksummed  bool

	// maxBatch, maxPiece and maxFile are maxBatchBytes, maxPieceBytes and
	// servedFileLimit (tests lower them).
	maxBatch, maxPiece int
	maxFile            uint64
	// fileBytes is the size of the served file being written, as proposed; fde is
	// the master's current Format_description, which opens a file rolled early.
	fileBytes uint64
	fde       []byte

	items []statemachine.Item
	// ready holds the events drain takes from the source (reused; see drain).
	ready [][]byte
	// chunk: small transactions' buffers are carved from it (see carve), and
	// chunkSize is its size.
	chunk     []byte
	chunkSize int
	// lent: the pipeline's own large buffers the items hold, back to the pool once
	// the items are proposed.
	lent        [][]byte
	batchBytes  int
	batchTxns   uint64
	batchEvents int
	// lone says the batch holds an item of loneItemBytes or more: it is proposed
	// without waiting for more (see loneItemBytes).
	lone bool
	// room is free scratch directly before the events of the batch's only item
	// (see roomBefore), nil when there is none; inPlace counts the proposals
	// written there.
	room    []byte
	inPlace int
	// proposed is the ordinal after every proposal made (committed or in flight).
	proposed uint64
	pending  []inflight
	// sequenced: the proposals carry seq, their place in the epoch, and several
	// may be in flight (inflightBytes of them); otherwise one at a time.
	sequenced     bool
	seq           uint64
	inflightBytes int
	// unsequenced and overlapped count proposals: made before the pipeline was
	// sequenced, and made with another in flight.
	unsequenced, overlapped uint64
	lastTS                  uint32

	cur *openTxn

	// semi is the stream when the syncer is the master's semi-sync replica;
	// batchAck is the master position after the last complete transaction added
	// since the last proposal, acknowledged once that proposal commits.
	semi     *dumpStream
	batchAck *ackPoint
	acked    ackPoint // the last position acknowledged

	// delivered: a transaction of this stream committed (see syncOnce).
	delivered bool
	// heartbeatGap is the longest time seen between two heartbeats with nothing
	// between them (heartbeatAt: the last one, zero after any other event): a
	// master that sends them and falls silent for three such gaps (at least
	// master_silence_probe) is behind a dead link. Until it is known, the probes judge.
	heartbeatAt  time.Time
	heartbeatGap time.Duration
}

// ackPoint is a place in the master's binlog to acknowledge, and when the transaction
// ending there was received (zero for a heartbeat's). Past 4 GiB in one master file
// log_pos wraps and such ACKs no longer release waiting commits (the master then
// times out); they never acknowledge too much.
type ackPoint struct {
	file string
	pos  uint64
	rcv  time.Time
}

// openTxn is the transaction group being received.
type openTxn struct {
	gtid binlog.GTID
	name string // the GTID as the master prints it
	// events holds room bytes of scratch, then the events received: a pooled
	// buffer keeps prefixRoom bytes before them for the proposal's prefix (see
	// encode), a carved one none.
	events []byte
	first  bool  // no piece of it proposed yet
	skip   bool  // the group already holds it
	room   uint8 // (a byte: the struct stays in its allocation class)
}

// ErrCorruptEvent marks an event whose CRC32 does not match its bytes: it was damaged
// between the master's disk and Flotilla. The syncer reconnects and fetches it again;
// nothing of it is stored (Flotilla re-signs the events it stores, so a damaged one
// would otherwise become a valid-looking one).
var ErrCorruptEvent = errors.New("corrupt event from master")

func (p *pipeline) handle(ctx context.Context, raw []byte) error {
	p.batchEvents++
	h, err := binlog.ParseHeader(raw)
	if err != nil {
		return fmt.Errorf("malformed event from master: %w", err)
	}
	if h.Type != binlog.HeartbeatEvent {
		p.heartbeatAt = time.Time{} // the next heartbeat's gap is not a silence
	}
	// Every checksummed event is verified before anything reads it; only the fake
	// Rotates a master makes up for the dump are exempt (they may lack a checksum).
	switch {
	case h.Type == binlog.RotateEvent && (h.Flags&binlog.FlagArtificial != 0 || !p.checksummed):
		// A fake Rotate may or may not carry a checksum; ParseRotate checks its shape.
	case h.Type == binlog.FormatDescription:
		if fde, err := binlog.ParseFDE(raw); err == nil && fde.Checksummed() {
			if err := binlog.VerifyChecksum(raw); err != nil {
				return fmt.Errorf("%w: %v", ErrCorruptEvent, err)
			}
		}
	case p.checksummed:
		if err := binlog.VerifyChecksum(raw); err != nil {
			return fmt.Errorf("%w (master file %s, event at log_pos %d): %v", ErrCorruptEvent, p.upstreamFile, h.LogPos, err)
		}
	}
	switch h.Type {
	case binlog.RotateEvent:
		// Rotates read from the master's file carry a checksum; fake ones may or may
		// not, depending on the server and on when it sends them. The trailer tells.
		ck := binlog.VerifyChecksum(raw) == nil
		name, _, err := binlog.ParseRotate(raw, ck)
		if err != nil {
			return fmt.Errorf("malformed Rotate from master: %w", err)
		}
		p.pendingName = name
		return nil
	case binlog.FormatDescription:
		fde, err := binlog.ParseFDE(raw)
		if err != nil {
			return fmt.Errorf("master's Format_description: %w", err)
		}
		p.checksummed = fde.Checksummed()
		p.fde = append(p.fde[:0], raw...)
		if p.pendingName != "" && (!p.hasFile || p.pendingName != p.upstreamFile || h.ServerID != p.fileServerID) {
			if p.cur != nil {
				p.s.log.Warn("master started a new file inside a transaction; dropping the partial transaction", "gtid", p.cur.name)
				p.cur = nil
			}
			nf := &statemachine.NewFile{ServerID: h.ServerID, UpstreamFile: p.pendingName, FDE: append([]byte(nil), raw...)}
			p.fl.base(nf)
			p.add(statemachine.Item{NewFile: nf}, len(raw), 0)
			p.upstreamFile, p.fileServerID, p.hasFile = p.pendingName, h.ServerID, true
			p.s.updateStatus(func(st *SyncStatus) { st.MasterFile = p.pendingName })
		}
		return nil
	case binlog.HeartbeatEvent, binlog.MariaGTIDListEvent:
		if h.Type == binlog.HeartbeatEvent {
			now := time.Now()
			if !p.heartbeatAt.IsZero() {
				p.heartbeatGap = max(p.heartbeatGap, now.Sub(p.heartbeatAt))
			}
			p.heartbeatAt = now
			if p.cur == nil {
				p.dropChunk() // the master is idle
			}
		}
		// Where the master stands, with nothing of ours in flight: what the group
		// holds goes up to here. A semi-sync master that was waiting for a
		// transaction the group committed after the previous connection broke
		// (the new dump starts after it) hears so now.
		if p.semi != nil && p.cur == nil && len(p.items) == 0 && len(p.pending) == 0 && h.LogPos > 4 &&
			(h.Type != binlog.HeartbeatEvent || bytes.HasPrefix(raw[binlog.HeaderLen:], []byte(p.upstreamFile))) {
			return p.sendAck(&ackPoint{file: p.upstreamFile, pos: uint64(h.LogPos)}, false)
		}
		return nil
	case binlog.BinlogCheckpoint, binlog.StartEncryptionEvnt, binlog.StopEvent, binlog.MySQLPreviousGTIDsEvent:
		return nil
	}
	if gtid, name, ok, err := p.fl.open(raw); ok || err != nil {
		if err != nil {
			return err
		}
		if p.cur != nil {
			return fmt.Errorf("master sent GTID %s before transaction %s ended", name, p.cur.name)
		}
		if !p.hasFile {
			return fmt.Errorf("master sent GTID %s before any Format_description", name)
		}
		held := p.fl.held()
		if !held {
			p.rollIfFull() // a file left full by a previous connection
		}
		p.cur = &openTxn{gtid: gtid, name: name, events: append(p.carve(), raw...), first: true, skip: held}
		return nil
	}
	if p.cur == nil {
		p.s.log.Debug("ignoring event outside a transaction group", "type", h.Type)
		return nil
	}
	// Whether the event ends its group is read first: a large event's parts may be
	// proposed in place, writing into the bytes before each (see addLargeEvent),
	// and a Query event's end is judged on its whole text.
	ends := p.fl.ends(raw, p.checksummed)
	if len(raw) > p.maxPiece {
		if err := p.addLargeEvent(ctx, raw); err != nil {
			return err
		}
	} else {
		p.growEvents(p.cur, len(raw))
		p.cur.events = append(p.cur.events, raw...)
	}
	p.lastTS = h.Timestamp
	if ends {
		t := p.cur
		p.cur = nil
		if p.semi != nil {
			p.batchAck = &ackPoint{file: p.upstreamFile, pos: uint64(h.LogPos), rcv: time.Now()}
		}
		if t.skip {
			p.s.m.pieceBufs.put(t.events) // nothing refers to a skipped transaction's events
			// Held already (committed before this connection): acknowledge at once
			// unless later transactions are waiting for a commit.
			if p.semi != nil && len(p.items) == 0 && len(p.pending) == 0 {
				a := p.batchAck
				p.batchAck = nil
				return p.sendAck(a, false)
			}
			return nil
		}
		events := p.seal(t.body())
		if dropCommit(t.gtid.Seq) && len(events) > len(raw) {
			events = events[:len(events)-len(raw)] // planted bug (tag chaosbug_partial)
		}
		p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Last: true, Events: events}}, len(events), 1)
		p.roomBefore(t.events[:t.room])
		p.lend(t.events)
		p.fl.done()
		p.rollIfFull()
		return nil
	}
	if len(p.cur.body()) >= p.maxPiece {
		t := p.cur
		if t.skip {
			t.events = t.events[:t.room] // held already: nothing refers to the piece
			return nil
		}
		p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Events: p.seal(t.body())}}, len(t.body()), 0)
		p.roomBefore(t.events[:t.room])
		p.lend(t.events)
		// A large transaction: its next piece gets its full size at once rather
		// than growing to it by doubling.
		t.first = false
		t.pooled(p, p.maxPiece+64<<10)
	}
	return nil
}

// rollIfFull closes the served file early once it passed maxFile (see
// servedFileLimit): at a transaction boundary, right after the transaction that took
// it there, so replicas leave the file at once.
func (p *pipeline) rollIfFull() {
	if p.fileBytes < p.maxFile || p.fde == nil || p.cur != nil {
		return
	}
	p.s.log.Info("served file passed its size limit: starting a new one inside the master's file", "bytes", p.fileBytes, "master_file", p.upstreamFile)
	fh, _ := binlog.ParseHeader(p.fde)
	fde := append([]byte(nil), p.fde...)
	binlog.ClearFDECreated(fde) // the master did not just start: replicas keep their temporary tables
	binlog.SetLogPos(fde, fh.LogPos, 0, p.checksummed)
	nf := &statemachine.NewFile{ServerID: fh.ServerID, UpstreamFile: p.upstreamFile, FDE: fde}
	p.fl.base(nf)
	p.add(statemachine.Item{NewFile: nf}, len(fde), 0)
}

// addLargeEvent adds an event larger than a piece to the open transaction in parts,
// cut where binlog.CutEvent says (the state machine places each part and carries the
// checksum across), proposing as batches fill: no piece, batch or raft entry holds
// the event whole (the stream's read buffer does, once). Parts after the first refer
// to raw rather than copy it; the event's last part is copied to the transaction's
// buffer, for the events after it.
func (p *pipeline) addLargeEvent(ctx context.Context, raw []byte) error {
	t := p.cur
	prev := 0
	for _, c := range binlog.CutEvent(len(raw), p.maxPiece) {
		var events, room []byte
		if prev == 0 {
			p.growEvents(t, c)
			t.events = append(t.events, raw[:c]...) // after the events before it (the GTID event at least)
			events, room = t.body(), t.events[:t.room]
			if t.skip {
				p.s.m.pieceBufs.put(t.events) // nothing refers to it
			} else {
				p.lend(t.events)
				events = p.seal(events)
			}
		} else {
			events = raw[prev:c:c] // raw is the pipeline's until lent back (see eventSource)
			if prev >= partRoomMin {
				// The bytes before this part are the previous part's, proposed (and
				// so copied by raft) before this one was added, or copied to the
				// transaction's buffer (the first part); nothing reads them after
				// this (handle judged the event's end before adding it), and the
				// prefix stays clear of the event's header all the same.
				room = raw[:prev]
			}
		}
		prev = c
		if !t.skip {
			p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Events: events}}, len(events), 0)
			p.roomBefore(room)
			t.first = false
		}
		t.events, t.room = nil, 0
		if p.batchBytes >= p.maxBatch || p.lone {
			if err := p.flush(ctx, true); err != nil {
				return err
			}
		}
	}
	t.pooled(p, len(raw)-prev+4096)
	t.events = append(t.events, raw[prev:]...)
	// Every part is an item now (or none is, skipping): free once they are
	// proposed. Not before: the items refer to it.
	p.lend(raw)
	return nil
}

// roomBefore records room, the bytes of a buffer directly before the events of the
// item just added (its capacity reaching through them), as free to overwrite until
// the batch is proposed, when that item is the batch's only one: encode writes the
// command's prefix there. A room shorter than a prefix says nothing.
func (p *pipeline) roomBefore(room []byte) {
	if len(p.items) == 1 && len(room) >= statemachine.MaxPrefixLen {
		p.room = room
	}
}

// Small transactions' buffers are carved from chunks: the first of minTxnChunk
// bytes, each next one twice the size of the last, up to maxTxnChunk.
const (
	minTxnChunk = 4 << 10
	maxTxnChunk = 64 << 10
)

// carve returns an empty buffer for a new transaction: the free room of the current
// chunk, which the transaction keeps if it stays within it (see keep). A small
// transaction took a 4 KiB buffer of its own before: at a hundred thousand
// transactions a second, allocating and clearing those was most of the syncer's CPU.
// A chunk is garbage once the items in it are proposed; the pipeline lets its chunk
// go whenever it has nothing left to commit (see dropChunk), so that an idle group
// keeps none, and a lone transaction costs one small chunk, as before.
func (p *pipeline) carve() []byte {
	if cap(p.chunk)-len(p.chunk) < minTxnChunk/4 {
		p.chunkSize = min(max(2*p.chunkSize, minTxnChunk), maxTxnChunk)
		p.chunk = make([]byte, 0, p.chunkSize)
	}
	return p.chunk[len(p.chunk):len(p.chunk):cap(p.chunk)]
}

// dropChunk lets the chunk go; the next one starts small again.
func (p *pipeline) dropChunk() { p.chunk, p.chunkSize = nil, 0 }

// seal ends the open transaction's claim on its buffer's free room: events go into an
// item as they are (an append to them cannot reach past them), and what follows them
// in the chunk serves the next transaction (see keep). Every item made of the open
// transaction's buffer is sealed: a piece too, should one fit in a chunk.
func (p *pipeline) seal(events []byte) []byte {
	p.keep(events)
	return events[:len(events):len(events)]
}

// keep takes a transaction's bytes out of the chunk's free room when they are still
// in it (an append past the chunk's end moved them out).
func (p *pipeline) keep(events []byte) {
	room := p.chunk[len(p.chunk):cap(p.chunk)]
	if len(events) > 0 && len(room) >= len(events) && &room[0] == &events[0] {
		p.chunk = p.chunk[:len(p.chunk)+len(events)]
	}
}

// growEvents makes room for n more bytes in a transaction's buffer. Past pooledMin
// the transaction is a large one: its buffer becomes a pooled piece's, of a piece's
// full size, rather than doubling on (each doubling a fresh allocation, most of the
// syncer's garbage in a bulk load, and memory touched anew). The buffer is lent with
// the transaction, and goes back to the pool once proposed.
func (p *pipeline) growEvents(t *openTxn, n int) {
	body := t.body()
	need := len(body) + n
	if len(t.events)+n <= cap(t.events) || need < pooledMin {
		return
	}
	old := t.events
	t.pooled(p, max(need, p.maxPiece+64<<10))
	t.events = append(t.events, body...)
	p.s.m.pieceBufs.put(old) // the open transaction's alone: nothing else refers to it
}

// body returns the transaction's events received so far.
func (t *openTxn) body() []byte { return t.events[t.room:] }

// pooled gives the transaction an empty pooled buffer for n bytes of events, with
// prefixRoom bytes before them.
func (t *openTxn) pooled(p *pipeline, n int) {
	t.events, t.room = p.s.m.pieceBufs.get(prefixRoom + n)[:prefixRoom], prefixRoom
}

// prefixRoom is the scratch a pooled transaction buffer keeps before its events:
// enough for the prefix of a command of one transaction item (the constant below
// fails to compile otherwise).
const prefixRoom = 128

const _ = uint(prefixRoom-statemachine.MaxPrefixLen) + uint(255-prefixRoom) // and fits openTxn.room

// partRoomMin is how far into a large event a part must start for the bytes before
// it to serve as its room: well past the event's header.
const partRoomMin = 64 << 10

// release gives a handled event's bytes back to src unless the open transaction
// refers to them: handle copies every event but one larger than a piece, whose parts
// are proposed by reference (see addLargeEvent).
func (p *pipeline) release(src eventSource, raw []byte) {
	if len(raw) <= p.maxPiece {
		src.release(raw)
	}
}

// lend records that buf, a buffer of the pipeline's own, is an item's until the
// next proposal is made, and may go back to the pool then.
func (p *pipeline) lend(buf []byte) {
	if cap(buf) >= pooledMin {
		p.lent = append(p.lent, buf)
	}
}

func (p *pipeline) add(it statemachine.Item, bytes int, txns uint64) {
	p.room = nil // (re)set by roomBefore: it concerns a batch of one item
	if it.NewFile != nil {
		p.fileBytes = 4 + uint64(bytes)
	} else {
		p.fileBytes += uint64(bytes)
	}
	if len(p.items) == 0 {
		// Something to commit: until it is, the group trails the master (lag).
		p.s.updateStatus(func(st *SyncStatus) { st.Busy = true })
	}
	p.items = append(p.items, it)
	p.batchBytes += bytes
	p.batchTxns += txns
	p.lone = p.lone || it.Txn != nil && bytes >= loneItemBytes
}

// loneItemBytes is the size from which a transaction (or a piece of one) ends its
// batch: the proposal is sent without waiting for more items after it, so that its
// events are most of their raft entry and each replica derives their records'
// checksums from the entry's rather than take them (statemachine/segcrc.go, which
// does so only when the entry's other bytes are few). Best effort: the items already
// in the batch stay with it (a batch of small transactions before a large one may
// still be most of the entry; proposing them first was tried in 0.54 and not kept,
// see README). Smaller items are batched as before: batching is what
// makes small transactions cheap. The proposals are smaller, so more of them may be
// in flight (loneInflightBytes): with maxInflight alone, a stream of 1 MiB
// transactions would keep about 4 MiB in flight where 4 MiB batches kept 16, and it
// ingested slower than without this rule (FLOTILLA_BENCH_TXN_BYTES in test/bench).
const loneItemBytes = 1 << 20
