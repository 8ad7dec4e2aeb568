package cluster

import (
	"sync"

	"github.com/lni/dragonboat/v3/raftio"

	"github.com/flotilla-relay/flotilla/placement"
)

// Leaders is the node's table of who leads each raft group it hosts, fed by
// dragonboat's raft event listener: the syncer and the front end react to changes
// instead of polling every group.
type Leaders struct {
	mu      sync.Mutex
	leaders map[uint64]raftio.LeaderInfo
	changed map[uint64]chan struct{}
	changes map[uint64]uint64 // leader changes seen per group, for metrics
}

// NewLeaders returns an empty table.
func NewLeaders() *Leaders {
	return &Leaders{leaders: map[uint64]raftio.LeaderInfo{}, changed: map[uint64]chan struct{}{}, changes: map[uint64]uint64{}}
}

// LeaderUpdated implements raftio.IRaftEventListener. It runs on dragonboat's own
// goroutines and only records and signals. The table holds node ids, not raft
// replica ids.
func (l *Leaders) LeaderUpdated(info raftio.LeaderInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	info.LeaderID = placement.NodeOfReplica(info.LeaderID)
	if prev := l.leaders[info.ClusterID]; info.LeaderID != 0 && prev.LeaderID != info.LeaderID {
		l.changes[info.ClusterID]++
	}
	l.leaders[info.ClusterID] = info
	if c, ok := l.changed[info.ClusterID]; ok {
		close(c)
		delete(l.changed, info.ClusterID)
	}
}

// Changes returns how many times this node saw group gid get a new leader.
func (l *Leaders) Changes(gid uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changes[gid]
}

// Leader returns the known leader of a group (0 while there is none) and a channel
// closed at the group's next leadership change.
func (l *Leaders) Leader(gid uint64) (uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.changed[gid]
	if !ok {
		c = make(chan struct{})
		l.changed[gid] = c
	}
	return l.leaders[gid].LeaderID, c
}

// Forget drops a group's entry, waking its watchers.
func (l *Leaders) Forget(gid uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.leaders, gid)
	if c, ok := l.changed[gid]; ok {
		close(c)
		delete(l.changed, gid)
	}
}
