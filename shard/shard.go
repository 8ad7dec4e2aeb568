package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v3"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/raftprop"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Shard is this node's replica of one upstream group.
type Shard struct {
	m   *Manager
	gid uint64
	// rid is this replica's raft id in the group (placement.State.ReplicaID).
	rid   uint64
	log   *slog.Logger
	stopc chan struct{}
	once  sync.Once
	// kick wakes run when the upstream's settings change (pause, resume).
	kick chan struct{}
	// reconciling: a membership change is under way.
	reconciling atomic.Bool
	// compacting: a snapshot that bounds the raft log is under way (see boundLog).
	compacting atomic.Bool
	// lookedAt is the applied index boundLog last saw; only the shard's loop
	// touches it.
	lookedAt uint64
	// stalledOn and unserved are the silence probes' memory across connections
	// (the syncer goroutine's alone): the GTIDs the last stall verdict was about,
	// and those found to be in the master's executed set but not in its binary log.
	stalledOn, unserved string
	silenceSource       string // the source they are about

	mu sync.Mutex
	// logMark: where this replica last compacted its raft log (see boundLog).
	logMark  logMark
	upstream placement.Upstream
	// members are the nodes assigned to the group, with their raft addresses and
	// replica ids: the leader makes the raft membership match them.
	members []uint64
	addrs   map[uint64]string
	rids    map[uint64]uint64
	known   map[uint64]uint64 // every replica id the metadata records: id -> node
	// settledAt is when the leader last found the raft membership matching the
	// assignment (zero: not since the assignment or the leadership changed). A
	// settled group is not checked again before membershipRecheck: the check is a
	// linearizable read, a round trip to the followers for every group every second.
	// memberGen counts the resets, so a check that began before one never records
	// its stale verdict.
	settledAt time.Time
	memberGen uint64
	status    SyncStatus
	leaderID  uint64
	hasLead   bool
	// held counts the holds on the syncer (holdSyncer): while any, run starts none;
	// active: run has a syncer started and not yet stopped.
	held   int
	active bool
}

// SyncStatus is what the syncer last did, for `flotilla status`.
type SyncStatus struct {
	Running      bool
	Connected    bool
	LastError    string
	LastErrorAt  time.Time
	MasterFile   string
	LastEventAt  time.Time // master timestamp of the last transaction received
	LastEventRcv time.Time // when it was received
	Reconnects   uint64
	// CorruptEvents counts events whose checksum failed on arrival (each one was
	// fetched again, never stored).
	CorruptEvents uint64
	// PendingBytes were received from the master and are being proposed.
	PendingBytes uint64
	// Busy: events have arrived that are not committed yet (a batch or an open
	// transaction); when not busy and connected, the group holds all the master sent.
	Busy bool
	// SemiSync: the connection is the master's semi-sync replica; Acks counts the
	// ACKs sent and LastAckLatency is the time from receipt of the last one sent
	// after its proposal's commit (transactions held already are acknowledged at
	// once, and not timed).
	SemiSync       bool
	Acks           uint64
	LastAckLatency time.Duration
	// Selection says why the automatic source selection found no candidate to
	// switch to ("" when it has not run or switched).
	Selection string
}

func newShard(m *Manager, u *placement.Upstream) *Shard {
	return &Shard{m: m, gid: u.GroupID, upstream: *u, stopc: make(chan struct{}), kick: make(chan struct{}, 1),
		log: m.log.With("upstream", u.Name, "group", u.GroupID)}
}

// Upstream returns the upstream this group relays.
func (s *Shard) Upstream() placement.Upstream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upstream
}

func (s *Shard) setUpstream(u *placement.Upstream, st *placement.State) {
	members := slices.Clone(st.Assignments[u.GroupID])
	addrs, rids := map[uint64]string{}, map[uint64]uint64{}
	for _, id := range members {
		if n, ok := st.Nodes[id]; ok {
			addrs[id] = n.RaftAddr
		}
		rids[id] = st.ReplicaID(u.GroupID, id)
	}
	known := map[uint64]uint64{}
	for node, rid := range st.ReplicaIDs[u.GroupID] {
		// Every earlier incarnation of the node's replica too.
		for r := rid; ; r -= 1 << placement.NodeIDBits {
			known[r] = node
			if r < 1<<placement.NodeIDBits {
				break
			}
		}
	}
	s.mu.Lock()
	kick := s.upstream.Paused != u.Paused || s.upstream.Source != u.Source
	s.upstream = *u
	if !slices.Equal(s.members, members) || !maps.Equal(s.addrs, addrs) || !maps.Equal(s.rids, rids) || !maps.Equal(s.known, known) {
		s.settledAt = time.Time{}
		s.memberGen++
		kick = true // a leader makes the change at once, not at run's next idle wake
	}
	s.members, s.addrs, s.rids, s.known = members, addrs, rids, known
	s.mu.Unlock()
	if kick {
		s.poke()
	}
}

// poke wakes run to look at the upstream's settings again.
func (s *Shard) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// GroupID is the raft cluster id of the group.
func (s *Shard) GroupID() uint64 { return s.gid }

// Leader returns the group's leader as this node knows it.
func (s *Shard) Leader() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderID, s.hasLead
}

// IsLeader reports whether this node leads the group (and so serves its replicas).
func (s *Shard) IsLeader() bool {
	id, ok := s.Leader()
	return ok && id == s.m.nodeID
}

// RaftMembers returns the group's voting members as this replica knows them (nil
// while it knows nothing yet).
func (s *Shard) RaftMembers() []uint64 { return s.m.RaftMembers()[s.gid] }

// RaftMembers returns the voting members (node ids) of every group this node hosts,
// from one pass over dragonboat's cluster list: callers describing all groups ask
// once, not once per group.
func (m *Manager) RaftMembers() map[uint64][]uint64 {
	out := map[uint64][]uint64{}
	for _, ci := range m.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}).ClusterInfoList {
		if ci.Pending {
			continue
		}
		ids := make([]uint64, 0, len(ci.Nodes))
		for rid := range ci.Nodes {
			ids = append(ids, placement.NodeOfReplica(rid))
		}
		slices.Sort(ids)
		out[ci.ClusterID] = ids
	}
	return out
}

// Status returns the syncer's status.
func (s *Shard) Status() SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Group returns the local state machine, for readers.
func (s *Shard) Group() (*statemachine.Group, bool) { return s.m.store.Group(s.gid) }

func (s *Shard) stop() { s.once.Do(func() { close(s.stopc) }) }

func (s *Shard) updateStatus(f func(*SyncStatus)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// run follows leadership: the syncer runs only while this replica leads the group and
// the upstream is not paused. Leadership arrives as events (the node's leadership
// table); the slow tick only backs them up.
func (s *Shard) run(ctx context.Context) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	var running *syncerRun
	var applied uint64 // the group's applied index at the last look
	defer func() {
		if running != nil {
			s.stopSyncer(running)
		}
	}()
	for {
		id, changed := s.m.leaders.Leader(s.gid)
		s.mu.Lock()
		if id != s.leaderID {
			s.settledAt = time.Time{} // a new leader checks the membership at once
			s.memberGen++
		}
		s.leaderID, s.hasLead = id, id != 0
		paused, source, held := s.upstream.Paused, s.upstream.Source, s.held > 0
		check := s.settledAt.IsZero() || time.Since(s.settledAt) >= membershipRecheck
		gen := s.memberGen
		s.mu.Unlock()
		// Membership changes wait for raft (seconds when a quorum is missing): they run
		// beside this loop, one at a time, so a lost leadership still stops the syncer
		// at once.
		if id == s.m.nodeID && check && s.reconciling.CompareAndSwap(false, true) {
			go func() {
				defer s.reconciling.Store(false)
				at := time.Now()
				if s.reconcileMembers(ctx) {
					s.mu.Lock()
					if s.memberGen == gen {
						s.settledAt = at
					}
					s.mu.Unlock()
				}
			}()
		}
		s.boundLog(ctx)
		should := id == s.m.nodeID && !paused && !held
		if running != nil && (running.source != source || running.ended()) {
			if running.source != source {
				s.log.Info("source changed: restarting the syncer", "from", running.source, "to", source)
			}
			running = s.stopSyncer(running)
		}
		if should && running == nil {
			running = s.startSyncerUnlessHeld(ctx, source)
		} else if !should && running != nil {
			s.log.Info("stopping syncer", "leader", id, "paused", paused, "held", held)
			running = s.stopSyncer(running)
		}
		var ended <-chan struct{}
		if running != nil {
			ended = running.done
		}
		// Every change of leader, settings or hold wakes the loop; the timer is for
		// what moves without telling it: a log to bound while the group applies,
		// a membership change pending, a syncer that could not start.
		wait := idleRecheck
		if g, ok := s.m.store.Group(s.gid); ok {
			if tail, _ := g.Tail(); tail.Applied != applied {
				applied, wait = tail.Applied, time.Second
			}
		}
		s.mu.Lock()
		unsettled := id == s.m.nodeID && s.settledAt.IsZero()
		s.mu.Unlock()
		if unsettled || s.reconciling.Load() || s.compacting.Load() || should && running == nil {
			wait = time.Second
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.stopc:
			return
		case <-ended: // it returned by itself (a switch): start it again
		case <-changed:
		case <-s.kick:
		case <-t.C:
		}
	}
}

// idleRecheck is how often run looks at a group in which nothing moves (see run): a
// second for each of a thousand idle groups was a tenth of an idle node's CPU.
const idleRecheck = 10 * time.Second

// membershipRecheck is how often a leader checks a settled group's membership again,
// in case anything changed it unseen.
const membershipRecheck = 5 * time.Minute

// reconcileMembers, on the leader, makes the group's raft membership match its
// assignment, one change at a time, and reports whether it already did (nothing to
// change, nothing waiting). It removes first (a replica the metadata records
// for a node no longer assigned, or an old incarnation of a node assigned again,
// which must go before its successor can take its address), then adds. It removes
// only replica ids the metadata knows: a leader whose copy of the metadata lags must
// never take out a member it has not heard of yet. A leader that is itself no longer
// assigned hands its leadership to an assigned member first. The placement
// controller only unassigns a node once the others have caught up.
func (s *Shard) reconcileMembers(ctx context.Context) bool {
	s.mu.Lock()
	want, addrs, rids, known := s.members, s.addrs, s.rids, s.known
	s.mu.Unlock()
	if len(want) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := s.m.nh.SyncGetClusterMembership(ctx, s.gid)
	if err != nil {
		s.log.Debug("read group membership", "err", err)
		return false
	}
	if !slices.Contains(want, s.m.nodeID) {
		for _, id := range want {
			if _, ok := m.Nodes[rids[id]]; ok && s.m.caughtUp != nil && s.m.caughtUp(ctx, s.gid, id) {
				if err := s.m.nh.RequestLeaderTransfer(s.gid, rids[id]); err != nil {
					s.log.Warn("hand leadership over before leaving", "to", id, "err", err)
				} else {
					s.log.Info("group moved off this node: handing leadership over", "to", id)
				}
				return false
			}
		}
		// No voter to hand over to yet: fall through, so observers are promoted.
	}
	settled := slices.Contains(want, s.m.nodeID)
	wantRids := map[uint64]bool{}
	for _, id := range want {
		wantRids[rids[id]] = true
	}
	for _, members := range []map[uint64]string{m.Nodes, m.Observers} {
		for rid := range members {
			if wantRids[rid] || rid == s.rid {
				continue
			}
			if _, ok := known[rid]; !ok {
				settled = false
				continue // not in this leader's metadata yet
			}
			if err := s.m.nh.SyncRequestDeleteNode(ctx, s.gid, rid, m.ConfigChangeID); err != nil {
				s.log.Warn("remove a member from the group", "replica", rid, "err", err)
				return false
			}
			s.log.Info("removed a member from the group's raft membership", "node", placement.NodeOfReplica(rid), "replica", rid)
			return false
		}
	}
	// A new member joins as a non-voting observer and is promoted to voter once it has
	// caught up: adding a voter that still needs a snapshot would raise the quorum
	// before the newcomer can help reach it.
	for _, id := range want {
		rid := rids[id]
		if _, ok := m.Nodes[rid]; ok {
			continue
		}
		settled = false
		addr, ok := addrs[id]
		if !ok {
			continue
		}
		if _, observing := m.Observers[rid]; !observing {
			if err := s.m.nh.SyncRequestAddObserver(ctx, s.gid, rid, addr, m.ConfigChangeID); err != nil {
				s.log.Warn("add a member to the group as an observer", "node", id, "replica", rid, "err", err)
				continue
			}
			s.log.Info("added a member to the group as an observer; it votes once caught up", "node", id, "replica", rid, "raft", addr)
			return false
		}
		if s.m.caughtUp == nil || !s.m.caughtUp(ctx, s.gid, id) {
			continue
		}
		if err := s.m.nh.SyncRequestAddNode(ctx, s.gid, rid, addr, m.ConfigChangeID); err != nil {
			s.log.Warn("promote a caught-up observer to voter", "node", id, "replica", rid, "err", err)
			continue
		}
		s.log.Info("promoted a caught-up member to voter", "node", id, "replica", rid)
		return false
	}
	return settled
}

// syncerRun is a running syncer goroutine.
type syncerRun struct {
	source string // the master it pulls from
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *Shard) startSyncer(ctx context.Context, source string) *syncerRun {
	r := &syncerRun{source: source, done: make(chan struct{})}
	var sctx context.Context
	sctx, r.cancel = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		go s.runRetention(sctx)
		s.runSyncer(sctx)
	}()
	return r
}

// startSyncerUnlessHeld starts the syncer unless a hold (holdSyncer) came meanwhile,
// deciding under the lock the hold takes, so a hold never misses a starting syncer.
func (s *Shard) startSyncerUnlessHeld(ctx context.Context, source string) *syncerRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held > 0 {
		return nil
	}
	s.log.Info("leading the group: starting the syncer")
	s.active = true
	return s.startSyncer(ctx, source)
}

// stopSyncer stops r and waits for it; a hold waits for this.
func (s *Shard) stopSyncer(r *syncerRun) *syncerRun {
	r.stop()
	s.mu.Lock()
	s.active = false
	s.mu.Unlock()
	return nil
}

// ended reports whether the syncer returned.
func (r *syncerRun) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *syncerRun) stop() {
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// runSyncer pulls from the master until ctx ends, reconnecting with backoff. Every
// attempt starts from the group's committed state, so nothing is lost or repeated.
func (s *Shard) runSyncer(ctx context.Context) {
	s.updateStatus(func(st *SyncStatus) { st.Running = true })
	defer s.updateStatus(func(st *SyncStatus) { st.Running, st.Connected, st.Busy, st.PendingBytes = false, false, false, 0 })
	backoff := 200 * time.Millisecond
	var downSince time.Time // since when the master has been unreachable (zero: it is not)
	for ctx.Err() == nil {
		began := time.Now()
		delivered, err := s.syncOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if !errors.Is(err, errSourceDown) {
			if !downSince.IsZero() {
				s.updateStatus(func(st *SyncStatus) { st.Selection = "" })
			}
			downSince = time.Time{}
		} else if downSince.IsZero() {
			downSince = began
		}
		if u := s.Upstream(); !downSince.IsZero() && len(u.Candidates) > 0 && time.Since(downSince) >= u.DownAfter() {
			if s.selectSource(ctx, u, time.Since(downSince)) {
				return // run restarts the syncer on the new source
			}
		}
		s.log.Warn("binlog stream from master ended; reconnecting", "err", err, "retry_in", backoff)
		s.m.metrics.SyncerError(s.Upstream().Name)
		s.updateStatus(func(st *SyncStatus) {
			st.Connected = false
			st.LastError, st.LastErrorAt = errString(err), time.Now()
			st.Reconnects++
			if errors.Is(err, ErrCorruptEvent) {
				st.CorruptEvents++
			}
		})
		if delivered || time.Since(began) > time.Minute {
			// The connection worked: this is a new failure, not the same one again.
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// propose submits a command to the group and waits for its result.
func (s *Shard) propose(ctx context.Context, cmd []byte) (sm.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := raftprop.SyncPropose(ctx, s.m.nh, s.gid, cmd)
	if err != nil {
		return res, fmt.Errorf("propose to group %d: %w", s.gid, err)
	}
	return res, nil
}

// claimEpoch fences off any earlier syncer of this group and returns the new epoch.
func (s *Shard) claimEpoch(ctx context.Context) (uint64, error) {
	res, err := s.propose(ctx, statemachine.EncodeClaimEpoch())
	if err != nil {
		return 0, err
	}
	if res.Value != statemachine.ResultOK || len(res.Data) != 8 {
		return 0, fmt.Errorf("group %d refused a new epoch: %s", s.gid, res.Data)
	}
	return binary.BigEndian.Uint64(res.Data), nil
}

// readState is a linearizable read of the group's tail.
func (s *Shard) readState(ctx context.Context) (statemachine.StateView, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := s.m.nh.SyncRead(ctx, s.gid, statemachine.StateQuery{})
	if err != nil {
		return statemachine.StateView{}, fmt.Errorf("read state of group %d: %w", s.gid, err)
	}
	view, ok := v.(statemachine.StateView)
	if !ok {
		return statemachine.StateView{}, errors.New("unexpected state answer")
	}
	return view, nil
}
