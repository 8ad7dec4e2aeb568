package shard

import (
	"context"
	"fmt"
	"time"

	"github.com/flotilla-relay/flotilla/statemachine"
)

// retentionInterval is how often the leader checks the retention policy.
const retentionInterval = 30 * time.Second

// runRetention purges what the retention policy no longer keeps, on the leader only
// (it runs beside the syncer), so one replica decides and raft makes all agree.
func (s *Shard) runRetention(ctx context.Context) {
	r := s.m.retention
	if r.MaxAge == 0 && r.MaxBytes == 0 {
		return
	}
	t := time.NewTicker(retentionInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g, ok := s.Group()
		if !ok {
			continue
		}
		keep, reason, err := g.PurgeTarget(r, time.Now())
		if err != nil {
			s.log.Warn("retention check failed", "err", err)
			continue
		}
		if tail, _ := g.Tail(); keep <= tail.FirstFile {
			continue // nothing to purge: no need to ask the cluster who reads what
		}
		if held, err := s.clusterReading(ctx); err != nil {
			s.log.Info("retention purge waits", "reason", err)
			continue
		} else if held != 0 && held < keep {
			keep, reason = held, reason+"; held back for a connected replica"
		}
		if tail, _ := g.Tail(); keep > tail.FirstFile {
			if err := s.purgeBefore(ctx, keep); err != nil {
				s.log.Warn("retention purge failed", "err", err)
				continue
			}
			s.log.Info("retention purged old binlog", "kept_from", statemachine.FileName(keep), "reason", reason)
		}
	}
}

// Purge removes the served files before file `to` (as PURGE BINARY LOGS TO does),
// but never a file a connected replica is reading; it returns the first file kept.
func (s *Shard) Purge(ctx context.Context, to string) (uint64, error) {
	if !s.IsLeader() {
		lead, _ := s.Leader()
		return 0, fmt.Errorf("node %d leads this upstream's group; run the purge against it", lead)
	}
	g, ok := s.Group()
	if !ok {
		return 0, fmt.Errorf("group %d is not open on this node", s.gid)
	}
	no, ok := statemachine.ParseFileName(to)
	tail, _ := g.Tail()
	if !ok || no > tail.File {
		return 0, fmt.Errorf("%q is not a served binlog file (see SHOW BINARY LOGS; the newest is %s)", to, statemachine.FileName(tail.File))
	}
	held, err := s.clusterReading(ctx)
	if err != nil {
		return 0, err
	}
	if held != 0 && held < no {
		no = held
	}
	if no <= tail.FirstFile {
		return tail.FirstFile, nil
	}
	if err := s.purgeBefore(ctx, no); err != nil {
		return 0, err
	}
	return no, nil
}

// clusterReading returns the oldest file a replica connected to any node reads in
// the group (0: none).
func (s *Shard) clusterReading(ctx context.Context) (uint64, error) {
	var oldest uint64
	if g, ok := s.Group(); ok {
		oldest, _ = g.OldestReading()
	}
	if s.m.readers == nil {
		return oldest, nil
	}
	held, err := s.m.readers(ctx, s.gid)
	if err != nil {
		return 0, err
	}
	if held != 0 && (oldest == 0 || held < oldest) {
		oldest = held
	}
	return oldest, nil
}

func (s *Shard) purgeBefore(ctx context.Context, before uint64) error {
	var first uint64
	if g, ok := s.m.store.Group(s.gid); ok {
		t, _ := g.Tail()
		first = t.FirstFile
	}
	res, err := s.propose(ctx, statemachine.EncodePurge(before))
	if err != nil {
		return err
	}
	if res.Value != statemachine.ResultOK {
		return fmt.Errorf("purge refused: %s", res.Data)
	}
	if first > 0 && before > first {
		s.m.metrics.Purged(s.Upstream().Name, int(before-first))
	}
	return nil
}
