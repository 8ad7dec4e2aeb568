package shard

import (
	"context"
	"time"

	"github.com/lni/dragonboat/v3"
)

// The raft log's size. Dragonboat removes a group's log entries only after a
// snapshot, which it takes every SnapshotEntries (2,000) applied entries, and keeps
// CompactionOverhead (500) entries behind it for followers that lag. Entries are
// batches of up to 4 MiB (pieces of a huge transaction up to 12): under a bulk load
// the log would grow to gigabytes per group before the first snapshot, in the LogDB,
// beside the segments that hold the same bytes. So every replica also asks for a
// snapshot (of an on-disk state machine that is an fsync of its segments and a
// marker: no data is copied) once logSnapshotBytes were applied since its last one,
// keeping some entries behind it: a follower further behind is sent a snapshot stream
// instead, which costs far more than replaying the log. The leader's log is the one
// laggards replay from, so it keeps leaderKeepBytes; a follower (or a group without
// followers) keeps logKeepBytes.
const (
	logSnapshotBytes = 256 << 20
	logKeepBytes     = 128 << 20
	leaderKeepBytes  = 512 << 20
	// minKeepEntries and maxKeepEntries bound the entries kept: as many as small
	// batches need, never more than dragonboat's own setting.
	minKeepEntries = 16
	maxKeepEntries = 500
)

// logMark is where a replica last compacted its raft log: the applied index and the
// group's ingested bytes then.
type logMark struct {
	index, bytes uint64
}

// boundLog asks for a snapshot once the log holds logSnapshotBytes since the last
// one (see above), or once the group stopped applying with closed files waiting for
// compression: a bulk load closes files without the segment fsync compression waits
// for, which its next small Update or snapshot makes (statemachine's closeDue), and
// an idle group has neither. It runs on the shard's loop, at most a second apart
// while the group applies; the snapshot runs beside it.
func (s *Shard) boundLog(ctx context.Context) {
	g, ok := s.m.store.Group(s.gid)
	if !ok {
		return
	}
	t, _ := g.Tail()
	idle := t.Applied == s.lookedAt
	s.lookedAt = t.Applied
	s.mu.Lock()
	mark := s.logMark
	if mark.index == 0 || t.Applied < mark.index || t.Bytes < mark.bytes {
		// First look since the replica started (or it was rebuilt): count from here.
		s.logMark = logMark{index: t.Applied, bytes: t.Bytes}
	}
	s.mu.Unlock()
	grown := mark.index != 0 && t.Applied > mark.index && t.Bytes-mark.bytes >= logSnapshotBytes
	if !grown && !(idle && g.CompressionWaiting()) {
		return
	}
	if !s.compacting.CompareAndSwap(false, true) {
		return
	}
	avg := uint64(0) // unknown: the mark was set after the group's last entries
	if t.Applied > mark.index && t.Bytes >= mark.bytes {
		avg = (t.Bytes - mark.bytes) / (t.Applied - mark.index)
	}
	budget := uint64(logKeepBytes)
	s.mu.Lock()
	if s.leaderID == s.m.nodeID && s.upstream.Replicas > 1 {
		budget = leaderKeepBytes
	}
	s.mu.Unlock()
	keep := min(max(budget/max(avg, 1), minKeepEntries), maxKeepEntries)
	go func() {
		defer s.compacting.Store(false)
		rs, err := s.m.nh.RequestSnapshot(s.gid, dragonboat.SnapshotOption{OverrideCompactionOverhead: true, CompactionOverhead: keep}, time.Minute)
		if err != nil {
			// ErrSystemBusy: a snapshot request is under way already.
			s.log.Debug("raft log snapshot not requested", "err", err)
			return
		}
		var r dragonboat.RequestResult
		select {
		case r = <-rs.ResultC():
		case <-ctx.Done():
			return // the request state goes with the stopped node
		}
		rs.Release()
		if !r.Completed() {
			s.log.Debug("raft log snapshot did not complete", "rejected", r.Rejected(), "timeout", r.Timeout())
			return
		}
		// The mark is a consistent pair, read now: the bytes at the snapshot's own
		// index are not known, and pairing them with another moment's would skew
		// the next average.
		now, _ := g.Tail()
		s.mu.Lock()
		s.logMark = logMark{index: now.Applied, bytes: now.Bytes}
		s.mu.Unlock()
		s.log.Debug("raft log compacted", "snapshot_index", r.SnapshotIndex(), "kept_entries", keep)
	}()
}
