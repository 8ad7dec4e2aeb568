package shard

import (
	"context"
	"sync"
	"time"
)

// Idle groups quiesce (GroupConfig: dragonboat's Quiesce). A group that has seen no
// read, membership change or message other than heartbeats for ten election
// timeouts (5 s) stops its heartbeats and election timers; a proposal, a read or
// any such message wakes it. The cost of a thousand idle groups is then their
// memory, not 20 heartbeats a second each to every follower.
//
// A quiesced follower cannot notice that its leader died: nothing times out. The
// leader watch closes that gap. Every leaderWatchInterval it asks each node that
// leads a group this node follows whether it is alive (one call per node, not per
// group), and wakes every such group whose leader's node does not answer, or that
// knows no leader, with a read: the follower leaves quiescence, hears no heartbeat
// and campaigns after the election timeout.
//
// Invariant: a group followed here whose leader's node stops answering is awake
// within leaderWatchInterval plus the liveness call's timeout.

// leaderWatchInterval is how often the leader watch looks.
const leaderWatchInterval = time.Second

// SetAlive installs the liveness check of another node: it reports whether the node
// answered a cheap call within a short timeout. Without one, quiesced groups are
// woken only by their own traffic.
func (m *Manager) SetAlive(f func(ctx context.Context, node uint64) bool) { m.alive = f }

// watchLeaders runs the leader watch until ctx ends.
func (m *Manager) watchLeaders(ctx context.Context) {
	t := time.NewTicker(leaderWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, gid := range m.orphans(ctx) {
			m.wake(gid)
		}
	}
}

// orphans lists the groups followed here whose leader's node does not answer, or
// that know no leader.
func (m *Manager) orphans(ctx context.Context) []uint64 {
	if m.alive == nil {
		return nil
	}
	byLeader := map[uint64][]uint64{}
	m.mu.Lock()
	for gid := range m.shards {
		if leader, _ := m.leaders.Leader(gid); leader != m.nodeID {
			byLeader[leader] = append(byLeader[leader], gid)
		}
	}
	m.mu.Unlock()
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		wake = byLeader[0]
	)
	for leader, gids := range byLeader {
		if leader == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !m.alive(ctx, leader) {
				mu.Lock()
				wake = append(wake, gids...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return wake
}

// wake makes a quiesced group leave quiescence: a read is a local request, which
// ends it (what the read answers does not matter).
func (m *Manager) wake(gid uint64) {
	rs, err := m.nh.ReadIndex(gid, 2*time.Second)
	if err != nil {
		m.log.Debug("wake a group whose leader does not answer", "group", gid, "err", err)
		return
	}
	go func() {
		<-rs.ResultC()
		rs.Release()
	}()
}
