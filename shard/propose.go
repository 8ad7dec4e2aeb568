package shard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"

	"github.com/flotilla-relay/flotilla/statemachine"
)

// inflight is a proposed batch waiting for its commit. Ordinals move only with
// complete transactions, so with the ordinal alone in the fence a proposal behind a
// piece of a large transaction could commit even if that piece were dropped: a syncer
// has several proposals in flight only when they are sequenced (each names its place
// in the epoch, and the group rejects every one after a gap), and one otherwise. The
// syncer reads on while they commit: the next batch grows meanwhile (group commit).
type inflight struct {
	began         time.Time
	txns          uint64
	events, bytes int
	lastTS        uint32
	// ack is acknowledged to a semi-sync master once this proposal commits.
	ack *ackPoint
	// wake ends once the result is in result (it also ends with the connection's
	// context: committed tells which); the syncer's read of the master's next event
	// waits on it.
	wake   context.Context
	result chan dragonboat.RequestResult
}

// committed reports whether the proposal's result has arrived.
func (f *inflight) committed() bool { return len(f.result) > 0 }

// flush proposes the batch when raft has room for it (see roomInRaft). Without room,
// full (the batch reached maxBatch) waits for the oldest proposal's commit first;
// otherwise the batch is left to grow, and syncOnce proposes it when that commit
// arrives. A proposal names the ordinal the previous one ends at (and, sequenced, its
// place in the epoch), so if raft drops one, the group rejects those after it (the
// fence): nothing is ever applied out of order or twice. Any failure ends the
// connection: the next attempt claims a new epoch and resumes from what the group
// committed.
func (p *pipeline) flush(ctx context.Context, full bool) error {
	if !p.sequenced && len(p.pending) == 0 && p.s.m.clusterVersion.Load() >= statemachine.SequencedAppendVersion {
		// Every replica checks the sequence now (the cluster version says so). The
		// group's sequence counts sequenced proposals only, so it is at 0 for this
		// epoch; and nothing unsequenced is in flight whose loss the first sequenced
		// proposal could hide.
		p.sequenced = true
	}
	for len(p.items) > 0 && !p.roomInRaft() {
		if !full {
			return nil
		}
		if err := p.complete(ctx); err != nil {
			return err
		}
	}
	if len(p.items) > 0 {
		cmd, inPlace := p.encode()
		p.s.updateStatus(func(st *SyncStatus) { st.PendingBytes += uint64(p.batchBytes) })
		rs, err := p.propose(ctx, cmd)
		if err != nil {
			return err
		}
		// raft holds a copy of cmd now, and cmd holds the items' bytes.
		if inPlace {
			p.inPlace++
			p.s.m.metrics.InPlace(p.s.Upstream().Name)
		} else {
			p.s.m.encBufs.put(cmd)
		}
		for _, b := range p.lent {
			p.s.m.pieceBufs.put(b)
		}
		clear(p.lent)
		p.lent = p.lent[:0]
		wake, woken := context.WithCancel(ctx)
		f := inflight{began: time.Now(), txns: p.batchTxns, events: p.batchEvents, bytes: p.batchBytes, lastTS: p.lastTS, ack: p.batchAck,
			wake: wake, result: make(chan dragonboat.RequestResult, 1)}
		go func() {
			// dragonboat always delivers a result (at the latest at proposeTimeout);
			// only then may the request state go back to its pool.
			r := <-rs.ResultC()
			rs.Release()
			f.result <- r
			woken()
		}()
		if len(p.pending) > 0 {
			p.overlapped++
			p.s.m.metrics.Overlapped(p.s.Upstream().Name)
		}
		if p.sequenced {
			p.seq++
		} else {
			p.unsequenced++
		}
		p.pending = append(p.pending, f)
		p.batchAck = nil
		p.proposed += p.batchTxns
		p.inflightBytes += p.batchBytes
		p.items, p.batchBytes, p.batchTxns, p.batchEvents, p.lone, p.room = nil, 0, 0, 0, false, nil
		return nil
	}
	if p.cur == nil {
		p.batchEvents = 0 // heartbeats and the like: nothing to count as ingested
	}
	if len(p.pending) == 0 && p.batchAck != nil {
		// Only transactions the group held already: they are committed.
		a := p.batchAck
		p.batchAck = nil
		if err := p.sendAck(a, false); err != nil {
			return err
		}
	}
	return nil
}

// encode returns the batch's command. A batch of one transaction item whose events
// have room before them (roomBefore) is written in place: the command's prefix goes
// into that room, and the prefix and the events are proposed as one slice. Raft
// copies every proposal (dragonboat's Propose), so encoding the events into a
// buffer of their own first was a pass over every byte for nothing: 4-6% of a
// one-replica ingest's CPU, where most bytes are large transactions, each its own
// batch (loneItemBytes). Any other batch is encoded into a pooled buffer.
func (p *pipeline) encode() (cmd []byte, inPlace bool) {
	a := statemachine.Append{Epoch: p.epoch, PrevOrdinal: p.proposed, Sequenced: p.sequenced, Seq: p.seq, Items: p.items}
	if len(p.items) == 1 && p.items[0].Txn != nil && len(p.room) >= statemachine.MaxPrefixLen {
		var scratch [statemachine.MaxPrefixLen]byte
		prefix, err := a.AppendPrefix(scratch[:0])
		events, at := p.items[0].Txn.Events, len(p.room)
		if err == nil && len(events) > 0 && len(prefix) <= at && cap(p.room) >= at+len(events) {
			cmd = p.room[at-len(prefix) : at+len(events)]
			// The room must end where the events begin: checked before a byte is
			// written, so a room that does not (a bug) costs the copy, not the bytes.
			if &cmd[len(prefix)] == &events[0] {
				copy(cmd, prefix)
				return cmd, true
			}
		}
	}
	return a.AppendEncoded(p.s.m.encBufs.get(p.batchBytes)), false
}

// proposer is what a pipeline proposes through: the node host (a pipeline test, a
// recorder of the commands).
type proposer interface {
	Propose(session *client.Session, cmd []byte, timeout time.Duration) (*dragonboat.RequestState, error)
	GetNoOPSession(clusterID uint64) *client.Session
}

// propose hands cmd to raft. While its LogDB stalls writes, dragonboat refuses
// proposals (ErrSystemBusy) until the LogDB catches up: that is backpressure, not a
// failure worth a reconnection (which would also start a large transaction over). The
// syncer waits for its oldest proposal in flight, or a moment with none, and tries
// again, for up to proposeTimeout.
func (p *pipeline) propose(ctx context.Context, cmd []byte) (*dragonboat.RequestState, error) {
	deadline := time.Now().Add(proposeTimeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		rs, err := p.raft.Propose(p.raft.GetNoOPSession(p.s.gid), cmd, proposeTimeout)
		if err == nil {
			return rs, nil
		}
		if !errors.Is(err, dragonboat.ErrSystemBusy) || time.Now().After(deadline) {
			p.s.m.metrics.Proposed(p.s.Upstream().Name, 0, err)
			return nil, fmt.Errorf("propose to group %d: %w", p.s.gid, err)
		}
		if len(p.pending) > 0 {
			// complete records its own outcome, failure included.
			if err := p.complete(ctx); err != nil {
				return nil, err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// roomInRaft reports whether a proposal may go to raft now: always when none is in
// flight; sequenced, while fewer than maxInflight and maxInflightBytes are, and for
// a batch its large item ended (see loneItemBytes) while fewer than
// loneInflightBytes are, however many proposals hold them. The
// pieces of a transaction larger than a batch pipeline too (a bulk load is mostly
// such pieces): in flight, a batch is held a few times over (the syncer's encoding,
// raft's entry), so the byte bound is what keeps a transaction of any size ingesting
// in bounded memory (with dragonboat's in-memory log sized in cmd/flotilla so that
// applied entries do not linger).
func (p *pipeline) roomInRaft() bool {
	if len(p.pending) == 0 {
		return true
	}
	if !p.sequenced || p.inflightBytes >= maxInflightBytes {
		return false
	}
	return len(p.pending) < maxInflight || p.lone && p.inflightBytes < loneInflightBytes
}

// sendAck acknowledges a to the semi-sync master. committed says the ACK follows
// its proposal's commit: only then is its time from receipt recorded (status and
// metric), for transactions the group held already are acknowledged at once.
func (p *pipeline) sendAck(a *ackPoint, committed bool) error {
	if a == nil || p.semi == nil || a.file == p.acked.file && a.pos <= p.acked.pos {
		return nil
	}
	p.acked = *a
	if err := p.semi.ack(a.file, a.pos); err != nil {
		return fmt.Errorf("semi-sync ACK to master: %w", err)
	}
	var took time.Duration
	if committed && !a.rcv.IsZero() { // a transaction's, not a heartbeat's
		took = time.Since(a.rcv)
		p.s.m.metrics.SemiSyncAcked(p.s.Upstream().Name, took)
	}
	p.s.updateStatus(func(st *SyncStatus) {
		st.Acks++
		if took > 0 {
			st.LastAckLatency = took
		}
	})
	return nil
}

// complete waits for the oldest proposal in flight.
func (p *pipeline) complete(ctx context.Context) error {
	f := p.pending[0]
	p.pending = p.pending[1:]
	p.inflightBytes -= f.bytes
	name := p.s.Upstream().Name
	var r dragonboat.RequestResult
	select {
	case r = <-f.result:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !r.Completed() {
		err := fmt.Errorf("proposal to group %d did not commit (timeout %v, dropped %v, terminated %v, aborted %v)", p.s.gid, r.Timeout(), r.Dropped(), r.Terminated(), r.Aborted())
		p.s.m.metrics.Proposed(name, time.Since(f.began), err)
		return err
	}
	if res := r.GetResult(); res.Value != statemachine.ResultOK {
		err := fmt.Errorf("group %d rejected a proposal: %s", p.s.gid, res.Data)
		p.s.m.metrics.Proposed(name, time.Since(f.began), err)
		return err
	}
	// Only now, with the batch committed by the group's quorum, may a semi-sync
	// master hear that its transactions are safe.
	if f.ack != nil {
		if err := p.sendAck(f.ack, true); err != nil {
			return err
		}
	}
	// The time until the result was collected: with proposals in flight, at most one
	// batch's reading later than the commit itself.
	p.s.m.metrics.Proposed(name, time.Since(f.began), nil)
	p.s.m.metrics.Ingested(name, f.events, f.bytes, int(f.txns))
	p.delivered = p.delivered || f.txns > 0
	idle := p.cur == nil && len(p.items) == 0 && len(p.pending) == 0
	if idle {
		p.dropChunk() // nothing left to commit: an idle group keeps no chunk
	}
	p.s.updateStatus(func(st *SyncStatus) {
		st.LastEventAt, st.LastEventRcv = time.Unix(int64(f.lastTS), 0), time.Now()
		st.PendingBytes -= min(st.PendingBytes, uint64(f.bytes))
		st.Busy = !idle
	})
	return nil
}
