// Package shard runs upstream groups on one node: it starts and stops the node's
// replicas to match the placement metadata, and on the replica that leads a group it
// runs the syncer that pulls the master's binlog and proposes it to raft.
package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/config"

	"github.com/flotilla-relay/flotilla/internal/metrics"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Metadata is what the manager needs of the placement service.
type Metadata interface {
	Local() (*placement.State, error)
	// LocalVersion changes whenever the local metadata may have.
	LocalVersion() (uint64, error)
}

// LeaderTable tells who leads a group, with a channel closed at its next change; the
// node's table is fed by raft events.
type LeaderTable interface {
	Leader(gid uint64) (uint64, <-chan struct{})
	// Forget drops what is known of a group whose replica stopped here, so a later
	// replica of it never mistakes the old leader for the current one.
	Forget(gid uint64)
}

// Manager keeps this node's group replicas in line with the placement metadata.
type Manager struct {
	nh      *dragonboat.NodeHost
	store   *statemachine.Store
	meta    Metadata
	leaders LeaderTable
	nodeID  uint64
	log     *slog.Logger
	// servedFileSize: see SetServedFileSize.
	servedFileSize uint64
	// silenceProbe: see SetSilenceProbe.
	silenceProbe time.Duration
	// retention is applied by each group's leader.
	retention statemachine.Retention

	// clusterVersion is the cluster's version as of the last reconcile: syncers pick
	// their proposal format by it.
	clusterVersion atomic.Uint32

	// encBufs and pieceBufs lend the syncers their proposals' and large
	// transactions' buffers (see bufPool).
	encBufs, pieceBufs bufPool
	// streamReaders lends the syncers' dump streams their buffered readers while
	// their masters send (see dumpStream).
	streamReaders sync.Pool

	// wg counts the replicas' goroutines, so Run returns only once all have stopped.
	wg sync.WaitGroup

	mu     sync.Mutex
	shards map[uint64]*Shard
	// leaving: groups no longer assigned here whose replica keeps running until the
	// group's leader has removed it from the raft membership (since when).
	leaving map[uint64]time.Time
	// departed reports whether a group's leader no longer counts this node as a raft
	// member (nil: never assume so before the grace period).
	departed func(ctx context.Context, gid uint64) bool
	// readers returns the oldest file a replica connected anywhere reads (0: none),
	// or an error when a node that may have readers did not say (nil: this node's
	// readers only).
	readers func(ctx context.Context, gid uint64) (uint64, error)
	// caughtUp reports whether node's replica of gid holds (nearly) everything this
	// node's replica holds: an observer is promoted to voter then.
	caughtUp func(ctx context.Context, gid, node uint64) bool
	// sealer opens upstream passwords sealed in the metadata (nil: none are).
	sealer *secure.Sealer
	// metrics records ingest, proposals and purges (nil: none).
	metrics *metrics.Relay
	// reconciled is the metadata version of the last full Reconcile pass (at
	// lastFull); retry: that pass left work to do again (a start failed, a replica
	// waits to leave).
	reconciled uint64
	lastFull   time.Time
	retry      bool
	lastPass   time.Time // the last pass that read the metadata (retries wait retryEvery)
	// suspended, when not "", says why this node stores nothing now (its data
	// directory is short of space): the replicas assigned here stay stopped, their
	// data kept, until it is cleared (SetSuspended). applied is the value the last
	// pass acted on.
	suspended, applied string
	// switcher records source switches (SetSwitcher).
	switcher SourceSwitcher
}

// SetSuspended stops (why != "") or restarts (why == "") every replica assigned to
// this node, keeping their data: a node whose disk is nearly full must not take
// raft entries it could fail to store. The next Reconcile pass acts on it.
func (m *Manager) SetSuspended(why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.suspended = why
}

// SetServedFileSize sets where syncers close served files early (see
// servedFileLimit); call it before groups start.
func (m *Manager) SetServedFileSize(n uint64) { m.servedFileSize = n }

// SetSilenceProbe sets how long a master's stream may carry nothing before the
// leader asks the master whether it misses anything (0: DefaultSilenceProbe).
func (m *Manager) SetSilenceProbe(d time.Duration) { m.silenceProbe = d }

// SetMetrics installs the node's instruments.
func (m *Manager) SetMetrics(r *metrics.Relay) { m.metrics = r }

// SetSealer installs the cluster key that opens upstream passwords.
func (m *Manager) SetSealer(s secure.Sealer) { m.sealer = &s }

// sourcePassword is the master password of u: opened with the cluster key, or as
// written by metadata from before passwords were sealed.
func (m *Manager) sourcePassword(u *placement.Upstream) (string, error) {
	if !secure.IsSealed(u.Password) {
		return u.Password, nil
	}
	if m.sealer == nil {
		return "", fmt.Errorf("upstream %s: its password is sealed and this node has no cluster key", u.Name)
	}
	pw, err := m.sealer.Open(u.Password, u.Name)
	if err != nil {
		return "", fmt.Errorf("upstream %s: password: %w", u.Name, err)
	}
	return pw, nil
}

// SetCaughtUp installs the check of whether another node's replica has caught up.
func (m *Manager) SetCaughtUp(f func(ctx context.Context, gid, node uint64) bool) { m.caughtUp = f }

// leaveGrace bounds how long an unassigned replica waits for its removal from the
// raft membership (a node removed while it was down never hears of it).
const leaveGrace = 2 * time.Minute

// SetReaders installs the check of which file the replicas connected to any node of
// the cluster read in a group: purge never goes past it.
func (m *Manager) SetReaders(f func(ctx context.Context, gid uint64) (uint64, error)) { m.readers = f }

// SetDeparted installs the check of whether a group's leader has removed this node.
func (m *Manager) SetDeparted(f func(ctx context.Context, gid uint64) bool) { m.departed = f }

// NewManager creates a manager; Run starts reconciling.
func NewManager(nh *dragonboat.NodeHost, store *statemachine.Store, meta Metadata, leaders LeaderTable, nodeID uint64, retention statemachine.Retention, log *slog.Logger) *Manager {
	return &Manager{nh: nh, store: store, meta: meta, leaders: leaders, nodeID: nodeID, retention: retention, log: log, servedFileSize: servedFileLimit,
		shards: map[uint64]*Shard{}, leaving: map[uint64]time.Time{}}
}

// ElectionTicks is how many raft ticks (server.RaftTickMillis each) a follower waits
// without hearing from its leader before it campaigns, randomised by raft to between
// one and two times this: elections after 1-2 s, etcd's default. It is the smallest
// dragonboat accepts with a heartbeat every tick (it must exceed twice the heartbeat
// interval); every group, the metadata group too, uses it.
const ElectionTicks = 3

// GroupConfig is the raft configuration of an upstream group replica. Snapshots of the
// on-disk state machine only record the applied index, so frequent ones are cheap and
// keep the raft log (which holds whole transactions) short. Elections follow
// ElectionTicks without a leader and the leader sends a heartbeat every tick: three
// per election timeout.
func GroupConfig(clusterID, nodeID uint64) config.Config {
	return config.Config{
		NodeID:             nodeID,
		ClusterID:          clusterID,
		ElectionRTT:        ElectionTicks,
		HeartbeatRTT:       1,
		CheckQuorum:        true,
		SnapshotEntries:    2000,
		CompactionOverhead: 500,
	}
}

// Run reconciles every interval until ctx ends, then stops all local syncers and
// returns once every replica's goroutine (and so every syncer) has ended.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.Reconcile(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			for _, s := range m.shards {
				s.stop()
			}
			m.mu.Unlock()
			m.wg.Wait()
			return
		case <-t.C:
		}
	}
}

// Reconcile starts replicas assigned to this node and stops (and deletes) the others.
// Opening, joining and deleting a group happen outside the manager's lock, so replica
// logins and admin calls, which look groups up, never wait for them.
func (m *Manager) Reconcile(ctx context.Context) {
	// Copying the metadata costs in proportion to the upstreams: skip the pass when
	// nothing changed and nothing is pending, but make a full one at least every
	// reconcileEvery.
	m.mu.Lock()
	suspended := m.suspended
	m.mu.Unlock()
	ver, verErr := m.meta.LocalVersion()
	unchanged := verErr == nil && ver == m.reconciled && suspended == m.applied && time.Since(m.lastFull) < reconcileEvery
	if unchanged && (!m.retry || time.Since(m.lastPass) < retryEvery) {
		return
	}
	m.lastPass = time.Now()
	m.applied = suspended
	m.retry = false
	st, err := m.meta.Local()
	if err != nil {
		m.log.Debug("metadata not readable yet", "err", err)
		return
	}
	m.clusterVersion.Store(st.Version())
	want := map[uint64]*placement.Upstream{}
	for _, name := range st.UpstreamNames() {
		u := st.Upstreams[name]
		if slices.Contains(st.Assignments[u.GroupID], m.nodeID) {
			want[u.GroupID] = u
		}
	}
	var start []*placement.Upstream
	var stop, pause []*Shard
	m.mu.Lock()
	if suspended != "" {
		for gid := range want {
			if s, ok := m.shards[gid]; ok {
				pause = append(pause, s)
				delete(m.shards, gid)
			}
		}
		want = map[uint64]*placement.Upstream{}
	}
	for gid, u := range want {
		if s, ok := m.shards[gid]; ok {
			if s.rid == st.ReplicaID(gid, m.nodeID) {
				s.setUpstream(u, st)
				continue
			}
			// Assigned again after leaving: the old replica goes, a new one joins.
			stop = append(stop, s)
			delete(m.shards, gid)
		}
		start = append(start, u)
	}
	var leaving []*Shard
	for gid, s := range m.shards {
		if _, ok := want[gid]; ok {
			delete(m.leaving, gid)
			continue
		}
		if u, exists := st.ByGroup(gid); exists {
			s.setUpstream(u, st)
			// Moved elsewhere: keep voting until the leader has taken this replica out
			// of the raft membership, or the group could lose its quorum meanwhile.
			leaving = append(leaving, s)
			continue
		}
		stop = append(stop, s)
		delete(m.shards, gid)
	}
	m.mu.Unlock()
	for _, s := range leaving {
		if m.mayLeave(ctx, s) {
			m.mu.Lock()
			delete(m.shards, s.GroupID())
			delete(m.leaving, s.GroupID())
			m.mu.Unlock()
			stop = append(stop, s)
		}
	}
	for _, s := range pause {
		gid := s.GroupID()
		m.log.Warn("group replica stopped, its data kept: "+suspended, "upstream", s.Upstream().Name, "group", gid)
		s.stop()
		if err := m.nh.StopCluster(gid); err != nil {
			m.log.Warn("stop group", "group", gid, "err", err)
		}
		m.leaders.Forget(gid)
	}
	for _, s := range stop {
		gid := s.GroupID()
		m.log.Info("group no longer assigned to this node: stopping its replica and deleting its data", "upstream", s.Upstream().Name, "group", gid)
		s.stop()
		if err := m.nh.StopCluster(gid); err != nil {
			m.log.Warn("stop group", "group", gid, "err", err)
		}
		m.leaders.Forget(gid)
		if err := m.removeData(ctx, gid, s.rid); err != nil {
			m.log.Error("delete data of a group no longer assigned here", "group", gid, "err", err)
		}
	}
	slices.SortFunc(start, func(a, b *placement.Upstream) int { return int(a.GroupID) - int(b.GroupID) })
	for _, u := range start {
		s, err := m.startShard(ctx, st, u)
		if err != nil {
			m.log.Error("cannot start group replica", "upstream", u.Name, "group", u.GroupID, "err", err)
			m.retry = true
			continue
		}
		m.mu.Lock()
		m.shards[u.GroupID] = s
		m.mu.Unlock()
	}
	m.removeOrphans(ctx, st)
	if len(leaving) > 0 {
		m.retry = true // mayLeave is asked again next pass
	}
	if verErr == nil {
		m.reconciled, m.lastFull = ver, time.Now()
	}
}

// retryEvery spaces the passes that only retry (a start that failed, a replica that
// may leave): the manager checks for changes far more often than that.
const retryEvery = 300 * time.Millisecond

// reconcileEvery bounds how long Reconcile trusts an unchanged metadata version.
const reconcileEvery = 10 * time.Second

// mayLeave reports whether an unassigned replica may stop and delete its data: its
// group's leader no longer counts it as a member, or it waited leaveGrace.
func (m *Manager) mayLeave(ctx context.Context, s *Shard) bool {
	gid := s.GroupID()
	m.mu.Lock()
	since, ok := m.leaving[gid]
	if !ok {
		since = time.Now()
		m.leaving[gid] = since
		m.log.Info("group moved off this node: its replica keeps serving until the leader removes it from the raft membership", "group", gid)
	}
	m.mu.Unlock()
	if members := s.RaftMembers(); members != nil && !slices.Contains(members, m.nodeID) {
		return true
	}
	if m.departed != nil {
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if m.departed(dctx, gid) {
			return true
		}
	}
	if time.Since(since) > leaveGrace {
		m.log.Warn("group's leader never confirmed this replica's removal; deleting it after the grace period", "group", gid, "grace", leaveGrace)
		return true
	}
	return false
}

// removeOrphans deletes the data of groups this node no longer hosts and does not run:
// the node was down when the upstream was removed or when the group moved off it (its
// replica was a down voter then; the group's leader removes it from the membership).
func (m *Manager) removeOrphans(ctx context.Context, st *placement.State) {
	dir := filepath.Join(m.store.Dir(), "groups")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		gid, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || gid >= st.NextGroupID {
			continue // not a group, or metadata not caught up: never delete what may be new
		}
		if _, running := m.Shard(gid); running || slices.Contains(st.Assignments[gid], m.nodeID) {
			continue
		}
		m.log.Info("deleting data of a removed upstream group", "group", gid)
		// A group moved off this node while it was down, or whose upstream is gone
		// (then the record of the replica id is gone too: the first one is the node id).
		if err := m.removeData(ctx, gid, st.ReplicaID(gid, m.nodeID)); err != nil {
			m.log.Error("delete orphaned group data", "group", gid, "err", err)
		}
	}
}

// removeData deletes a stopped group's raft log and its segments and index. StopCluster
// returns before the replica has stopped, so this waits for dragonboat to accept the
// removal first: deleting segments under a running state machine, or leaving the raft
// log behind, are both worse than a short wait.
func (m *Manager) removeData(ctx context.Context, gid, rid uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		err := m.nh.SyncRemoveData(ctx, gid, rid)
		if err == nil {
			break
		}
		if !errors.Is(err, dragonboat.ErrClusterNotStopped) {
			return fmt.Errorf("remove raft data of group %d: %w", gid, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove raft data of group %d: its replica did not stop within 30s; data is kept and removal is retried: %w", gid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := m.store.RemoveGroupData(gid); err != nil {
		return err
	}
	m.log.Info("deleted the data of a removed group", "group", gid)
	return nil
}

// startShard starts this node's replica of a group: with the group's first members
// if this node is one of them and has never started it, by joining otherwise (the
// group's leader adds it to the raft membership; it catches up by log or snapshot).
func (m *Manager) startShard(ctx context.Context, st *placement.State, u *placement.Upstream) (*Shard, error) {
	gid := u.GroupID
	rid := st.ReplicaID(gid, m.nodeID)
	members := map[uint64]string{}
	join := false
	if !m.nh.HasNodeInfo(gid, rid) {
		if st.IsInitial(gid, m.nodeID) {
			first := st.Initial[gid]
			if len(first) == 0 { // metadata from before Initial existed
				first = st.Assignments[gid]
			}
			for _, id := range first {
				n, ok := st.Nodes[id]
				if !ok {
					return nil, fmt.Errorf("initial member %d is not registered", id)
				}
				members[st.ReplicaID(gid, id)] = n.RaftAddr
			}
		} else {
			join = true
		}
	}
	cfg := GroupConfig(gid, rid)
	// A replica that joins an existing group starts as a non-voting observer; the
	// leader promotes it once it has caught up (raft restores its voter state from
	// the membership on later starts).
	cfg.IsObserver = !st.IsInitial(gid, m.nodeID)
	if err := m.nh.StartOnDiskCluster(members, join, m.store.NewGroup, cfg); err != nil {
		return nil, fmt.Errorf("start raft group %d as replica %d: %w", gid, rid, err)
	}
	s := newShard(m, u)
	s.rid = rid
	s.setUpstream(u, st)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		s.run(ctx)
	}()
	m.log.Info("group replica started", "upstream", u.Name, "group", gid, "replica", rid, "members", st.Assignments[gid], "joining", join)
	return s, nil
}

// Shard returns the local replica of a group.
func (m *Manager) Shard(gid uint64) (*Shard, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.shards[gid]
	return s, ok
}

// Shards returns the local replicas.
func (m *Manager) Shards() []*Shard {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Shard, 0, len(m.shards))
	for _, s := range m.shards {
		out = append(out, s)
	}
	return out
}
